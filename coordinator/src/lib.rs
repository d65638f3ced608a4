//! The namm coordinator: runs CMA-ES, leases work units to pull-based workers, persists every
//! generation in sled.

pub mod auth;
pub mod backup;
pub mod book;
pub mod cmaes;
pub mod coordinator;
pub mod error;
pub mod live_store;
pub mod metrics;
pub mod progress;
pub mod queries;
pub mod run;
pub mod seed;
pub mod server;
pub mod service;
pub mod store;
pub mod strategy;
