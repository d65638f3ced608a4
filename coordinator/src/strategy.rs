//! The bridge between the CMA-ES of `cmaes.rs` and the stored `StrategyState` message.

use crate::cmaes::{CmaesConfig, CmaesState, EigenMode};
use namm::spec::RunSpec;
use namm_proto::StrategyState;

/// The CMA-ES configuration a run spec implies.
pub fn config_for(spec: &RunSpec) -> CmaesConfig {
    CmaesConfig {
        dim: spec.objective.dim,
        population: spec.population(),
        sigma0: spec.strategy.sigma0,
        x0: spec.x0(),
        // Exact is the reference's behaviour; benchmark dimensions make it cheap.
        eigen: EigenMode::Exact,
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
