//! The strategy actually optimises: sphere and Rosenbrock in dimension 10 reach f < 1e-8 with
//! a full C; with a diagonal C, sphere, the ellipsoid (condition 1e6) and Rosenbrock do at
//! n = 10..100.

use namm::objective::Benchmark;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{config, diagonal_config, new_es};
use crate::cmaes::{Cmaes, CmaesConfig, EigenMode};

fn sphere(x: &[f64]) -> f64 {
    Benchmark::Sphere.value(x)
}

fn rosenbrock(x: &[f64]) -> f64 {
    Benchmark::Rosenbrock.value(x)
}

/// Generations until the best f of a population drops to 1e-8, or None.
pub(super) fn generations_to_target(
    f: impl Fn(&[f64]) -> f64,
    cfg: &CmaesConfig,
    seed: u64,
    max_generations: u64,
) -> Option<u64> {
    let mut es = new_es(cfg);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    while es.generation() < max_generations {
        let pop = es.ask(&mut rng);
        let fitness: Vec<f64> = pop.iter().map(|x| -f(x)).collect();
        es.tell(&fitness).expect("tell");
        if -es.best().1 <= 1e-8 {
            return Some(es.generation());
        }
    }
    None
}

fn full(dim: usize, x0: f64, mode: EigenMode) -> CmaesConfig {
    config(dim, Cmaes::default_population(dim), 0.5, x0, mode)
}

#[test]
fn sphere_10_reaches_target_in_both_modes() {
    for mode in [EigenMode::Exact, EigenMode::Lazy] {
        let gens = generations_to_target(sphere, &full(10, 1.0, mode), 1, 1000);
        println!("sphere-10 {mode:?}: {gens:?} generations");
        assert!(gens.is_some(), "sphere-10 {mode:?} did not reach 1e-8");
    }
}

#[test]
fn rosenbrock_10_reaches_target_in_both_modes() {
    for mode in [EigenMode::Exact, EigenMode::Lazy] {
        let gens = generations_to_target(rosenbrock, &full(10, 0.0, mode), 1, 5000);
        println!("rosenbrock-10 {mode:?}: {gens:?} generations");
        assert!(gens.is_some(), "rosenbrock-10 {mode:?} did not reach 1e-8");
    }
}

/// At n = 100 the lazy gap exceeds one generation, so this exercises stale decompositions.
#[test]
fn lazy_sphere_100_reaches_target() {
    let gens = generations_to_target(sphere, &full(100, 1.0, EigenMode::Lazy), 5, 5000);
    println!("sphere-100 Lazy: {gens:?} generations");
    assert!(gens.is_some(), "sphere-100 Lazy did not reach 1e-8");
}

/// A diagonal C on `bench` from x0 = 3·1, σ0 = 2 at each n, within `evals_per_dim`·n
/// evaluations (Rosenbrock's local minimum makes a seed fail now and then, hence the seeds
/// to choose from).
fn diagonal_reaches_target(bench: Benchmark, dims: &[usize], evals_per_dim: u64) {
    for &n in dims {
        let lam = Cmaes::default_population(n);
        let cfg = diagonal_config(n, lam, 2.0, 3.0);
        let max_generations = evals_per_dim * n as u64 / lam as u64;
        let gens = (1..=3).find_map(|seed| {
            generations_to_target(|x| bench.value(x), &cfg, seed, max_generations)
        });
        println!("{bench}-{n} diagonal: {gens:?} generations");
        assert!(gens.is_some(), "{bench}-{n} diagonal did not reach 1e-8");
    }
}

#[test]
fn diagonal_sphere_reaches_target() {
    diagonal_reaches_target(Benchmark::Sphere, &[10, 30, 100], 500);
}

/// Separable, so a diagonal C learns all of the ellipsoid's scaling (~300·n evaluations).
#[test]
fn diagonal_ellipsoid_reaches_target() {
    diagonal_reaches_target(Benchmark::Ellipsoid, &[10, 30, 100], 2000);
}

/// Not separable: a diagonal C cannot follow the valley's rotation and needs ~4000·n (n = 100)
/// to ~9000·n (n = 10) evaluations.
#[test]
fn diagonal_rosenbrock_reaches_target() {
    diagonal_reaches_target(Benchmark::Rosenbrock, &[10, 30, 100], 20_000);
}
