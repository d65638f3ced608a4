//! The bridge between the CMA-ES of `cmaes.rs` and the stored `StrategyState` message.

use crate::cmaes::{CmaesConfig, CmaesState, Covariance, EigenMode};
use namm::spec::{self, Eigen, RunSpec};
use namm_proto::StrategyState;

/// The CMA-ES configuration a run spec implies.
pub fn config_for(spec: &RunSpec) -> CmaesConfig {
    CmaesConfig {
        dim: spec.dim(),
        population: spec.population(),
        sigma0: spec.sigma0(),
        x0: spec.x0(),
        eigen: match spec.eigen() {
            Eigen::Exact => EigenMode::Exact,
            Eigen::Lazy => EigenMode::Lazy,
        },
        covariance: match spec.covariance() {
            spec::Covariance::Full => Covariance::Full,
            spec::Covariance::Diagonal => Covariance::Diagonal,
        },
        // A run warm-started from a file continues a search rather than starting one, as
        // the reference's `init_from` does.
        shift_first_gen: spec.strategy.init_from.is_none(),
    }
}

pub fn to_proto(s: CmaesState) -> StrategyState {
    StrategyState {
        generation: s.generation,
        mean: s.mean,
        sigma: s.sigma,
        c: s.c,
        p_sigma: s.p_sigma,
        p_c: s.p_c,
        best_member: s.best_member,
        best_fitness: s.best_fitness,
        shift_first_gen: s.shift_first_gen,
        decomposed_at: s.decomposed_at,
        b: s.b,
        d: s.d,
    }
}

pub fn from_proto(s: StrategyState) -> CmaesState {
    CmaesState {
        generation: s.generation,
        mean: s.mean,
        sigma: s.sigma,
        c: s.c,
        p_sigma: s.p_sigma,
        p_c: s.p_c,
        best_member: s.best_member,
        best_fitness: s.best_fitness,
        shift_first_gen: s.shift_first_gen,
        decomposed_at: s.decomposed_at,
        b: s.b,
        d: s.d,
    }
}
