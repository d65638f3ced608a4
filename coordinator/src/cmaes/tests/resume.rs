//! The coordinator's crash recovery: state() after a tell, from_state, and a fresh RNG seeded
//! for the generation must give the population the uninterrupted strategy gives.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{config, diagonal_config, new_es};
use crate::cmaes::{Cmaes, CmaesConfig, EigenMode};

fn bits(pop: &[Vec<f64>]) -> Vec<u64> {
    pop.iter().flatten().map(|v| v.to_bits()).collect()
}

fn shifted_sphere(x: &[f64]) -> f64 {
    -x.iter()
        .enumerate()
        .map(|(i, v)| (v - 0.1 * i as f64).powi(2))
        .sum::<f64>()
}

/// Per-generation RNG, as the coordinator seeds it (run seed, generation).
fn rng_for(generation: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(0x5eed ^ generation.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn step(es: &mut Cmaes) -> Vec<Vec<f64>> {
    let pop = es.ask(&mut rng_for(es.generation()));
    let f: Vec<f64> = pop.iter().map(|x| shifted_sphere(x)).collect();
    es.tell(&f).expect("tell");
    pop
}

/// Restores from the state after every generation in turn and checks that the restored
/// object continues bit for bit like the uninterrupted one.
fn check_resume(cfg: &CmaesConfig, generations: u64) {
    let mut uninterrupted = new_es(cfg);
    for _ in 0..generations {
        let saved = uninterrupted.state();
        let mut restored = Cmaes::from_state(cfg, saved.clone()).expect("restore");
        assert_eq!(restored.state(), saved, "state round trip");
        let expected = step(&mut uninterrupted);
        let got = step(&mut restored);
        assert_eq!(
            bits(&got),
            bits(&expected),
            "population at generation {}",
            saved.generation
        );
        assert_eq!(
            restored.state(),
            uninterrupted.state(),
            "state after generation {}",
            saved.generation
        );
    }
}

#[test]
fn exact_mode_resumes_bitwise() {
    check_resume(&config(12, 8, 0.4, 0.3, EigenMode::Exact), 8);
}

#[test]
fn lazy_mode_resumes_bitwise_between_decompositions() {
    let n = 200;
    check_resume(
        &config(n, Cmaes::default_population(n), 0.4, 0.3, EigenMode::Lazy),
        8,
    );
}

#[test]
fn diagonal_mode_resumes_bitwise() {
    let n = 200;
    check_resume(
        &diagonal_config(n, Cmaes::default_population(n), 0.4, 0.3),
        8,
    );
}

/// The contract's literal sequence: new → ask → tell → state → from_state → ask.
#[test]
fn new_ask_tell_state_from_state_ask_matches_uninterrupted() {
    let cfg = config(30, 12, 0.5, -0.2, EigenMode::Exact);
    let mut a = new_es(&cfg);
    let pop = a.ask(&mut ChaCha8Rng::seed_from_u64(1));
    let f: Vec<f64> = pop.iter().map(|x| shifted_sphere(x)).collect();
    a.tell(&f).expect("tell");
    let mut b = Cmaes::from_state(&cfg, a.state()).expect("restore");
    let pa = a.ask(&mut ChaCha8Rng::seed_from_u64(2));
    let pb = b.ask(&mut ChaCha8Rng::seed_from_u64(2));
    assert_eq!(bits(&pa), bits(&pb));
}

/// A state persisted between ask and tell (the generation in flight) re-asks the same
/// population, in every mode.
#[test]
fn state_taken_mid_generation_re_asks_the_same_population() {
    let configs = [
        config(200, 19, 0.4, 0.3, EigenMode::Exact),
        config(200, 19, 0.4, 0.3, EigenMode::Lazy),
        diagonal_config(200, 19, 0.4, 0.3),
    ];
    for cfg in configs {
        let mut es = new_es(&cfg);
        for _ in 0..4 {
            step(&mut es);
        }
        let pop = es.ask(&mut rng_for(4));
        let mut restored = Cmaes::from_state(&cfg, es.state()).expect("restore");
        let label = (cfg.covariance, cfg.eigen);
        assert_eq!(
            bits(&restored.ask(&mut rng_for(4))),
            bits(&pop),
            "{label:?}"
        );
    }
}
