//! The strategy actually optimises: sphere and Rosenbrock in dimension 10 reach f < 1e-8.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{config, new_es};
use crate::cmaes::{Cmaes, EigenMode};

fn sphere(x: &[f64]) -> f64 {
    x.iter().map(|v| v * v).sum()
}

fn rosenbrock(x: &[f64]) -> f64 {
    x.windows(2)
        .map(|w| 100.0 * (w[1] - w[0] * w[0]).powi(2) + (1.0 - w[0]).powi(2))
        .sum()
}

/// Generations until the best f of a population drops below 1e-8, or None.
fn generations_to_target(
    f: fn(&[f64]) -> f64,
    dim: usize,
    x0: f64,
    mode: EigenMode,
    seed: u64,
    max_generations: u64,
) -> Option<u64> {
    let mut es = new_es(&config(dim, Cmaes::default_population(dim), 0.5, x0, mode));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    while es.generation() < max_generations {
        let pop = es.ask(&mut rng);
        let fitness: Vec<f64> = pop.iter().map(|x| -f(x)).collect();
        es.tell(&fitness).expect("tell");
        if -es.best().1 < 1e-8 {
            return Some(es.generation());
        }
    }
    None
}

#[test]
fn sphere_10_reaches_target_in_both_modes() {
    for mode in [EigenMode::Exact, EigenMode::Lazy] {
        let gens = generations_to_target(sphere, 10, 1.0, mode, 1, 1000);
        println!("sphere-10 {mode:?}: {gens:?} generations");
        assert!(gens.is_some(), "sphere-10 {mode:?} did not reach 1e-8");
    }
}

#[test]
fn rosenbrock_10_reaches_target_in_both_modes() {
    for mode in [EigenMode::Exact, EigenMode::Lazy] {
        let gens = generations_to_target(rosenbrock, 10, 0.0, mode, 1, 5000);
        println!("rosenbrock-10 {mode:?}: {gens:?} generations");
        assert!(gens.is_some(), "rosenbrock-10 {mode:?} did not reach 1e-8");
    }
}

/// At n = 100 the lazy gap exceeds one generation, so this exercises stale decompositions.
#[test]
fn lazy_sphere_100_reaches_target() {
    let gens = generations_to_target(sphere, 100, 1.0, EigenMode::Lazy, 5, 5000);
    println!("sphere-100 Lazy: {gens:?} generations");
    assert!(gens.is_some(), "sphere-100 Lazy did not reach 1e-8");
}
