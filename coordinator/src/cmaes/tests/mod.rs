mod api;
mod convergence;
mod diagonal;
mod golden;
mod pycma;
mod resume;

use super::{Cmaes, CmaesConfig, Covariance, EigenMode};

/// max |a − b| / max |b|: the harness's normwise relative error (spec/golden/harness/check_cma.py).
fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "rel_err: length mismatch");
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    diff / (scale + 1e-30)
}

fn config(dim: usize, population: usize, sigma0: f64, x0: f64, eigen: EigenMode) -> CmaesConfig {
    CmaesConfig {
        dim,
        population,
        sigma0,
        x0: vec![x0; dim],
        eigen,
        covariance: Covariance::Full,
        shift_first_gen: true,
    }
}

/// A diagonal-covariance config; the eigen mode is irrelevant there and left at its default.
fn diagonal_config(dim: usize, population: usize, sigma0: f64, x0: f64) -> CmaesConfig {
    CmaesConfig {
        covariance: Covariance::Diagonal,
        ..config(dim, population, sigma0, x0, EigenMode::default())
    }
}

fn new_es(cfg: &CmaesConfig) -> Cmaes {
    Cmaes::new(cfg).expect("valid config")
}
