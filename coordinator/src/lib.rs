//! The namm coordinator: runs CMA-ES, leases work units to pull-based workers, persists every
//! generation in sled.

pub mod cmaes;
