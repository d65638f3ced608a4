//! The diagonal covariance model: its stages are the full model's with B = I, its state is
//! O(n), it does not shift C at generation 0, and it learns at sep-CMA-ES's rates.

use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{config, diagonal_config, new_es, rel_err};
use crate::cmaes::{
    active_weights, diagonal, inv_sqrt_times, sample, update_covariance, Cmaes, CmaesError,
    Covariance, EigenMode, StrategyParams,
};
use crate::strategy::to_proto;

fn uniform(rng: &mut ChaCha8Rng, len: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..len).map(|_| rng.random_range(lo..hi)).collect()
}

fn identity(n: usize) -> Vec<f64> {
    (0..n * n)
        .map(|k| if k / n == k % n { 1.0 } else { 0.0 })
        .collect()
}

#[test]
fn stages_equal_the_full_models_with_b_identity() {
    let (lam, n) = (9, 7);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let c = uniform(&mut rng, n, 0.1, 4.0);
    let d = diagonal::axis_lengths(&c);
    let b = identity(n);
    let z = uniform(&mut rng, lam * n, -2.0, 2.0);
    let mean = uniform(&mut rng, n, -1.0, 1.0);

    let (x_diag, ys) = diagonal::sample(&d, &z, &mean, 0.3);
    let (x_full, y_full) = sample(&b, &d, &z, &mean, 0.3);
    assert!(rel_err(&x_diag, &x_full) < 1e-14 && rel_err(&ys, &y_full) < 1e-14);

    let v = uniform(&mut rng, n, -1.0, 1.0);
    let whitened = diagonal::inv_sqrt_times(&d, &v);
    assert!(rel_err(&whitened, &inv_sqrt_times(&b, &d, &v)) < 1e-14);

    let weights = StrategyParams::new(lam, n).weights;
    let w_diag = diagonal::active_weights(&weights, &ys, &d);
    assert!(rel_err(&w_diag, &active_weights(&weights, &ys, &b, &d)) < 1e-14);

    let p_c = uniform(&mut rng, n, -1.0, 1.0);
    let mut c_full: Vec<f64> = (0..n * n)
        .map(|k| if k / n == k % n { c[k / n] } else { 0.0 })
        .collect();
    let mut c_diag = c.clone();
    update_covariance(&mut c_full, 0.9, &w_diag, &ys, 0.05, &p_c);
    diagonal::update_covariance(&mut c_diag, 0.9, &w_diag, &ys, 0.05, &p_c);
    let full_diagonal: Vec<f64> = (0..n).map(|i| c_full[i * n + i]).collect();
    assert!(rel_err(&c_diag, &full_diagonal) < 1e-14);
}

#[test]
fn separable_rates_scale_by_n_plus_2_over_3_and_keep_variances_positive() {
    for (lam, n) in [(6, 2), (17, 100), (32, 4172)] {
        let full = StrategyParams::new(lam, n);
        let sep = StrategyParams::with_covariance(lam, n, Covariance::Diagonal);
        let factor = (n as f64 + 2.0) / 3.0;
        assert_eq!(sep.c_1, full.c_1 * factor, "c_1 at n = {n}");
        assert_eq!(
            sep.c_mu,
            (1.0 - sep.c_1).min(full.c_mu * factor),
            "c_mu at n = {n}"
        );
        assert_eq!(
            (sep.mu_eff, sep.c_sigma, sep.c_c),
            (full.mu_eff, full.c_sigma, full.c_c)
        );
        // A rescaled negative vector adds at least −n·|w|·C_jj to every variance, so the
        // active update keeps them positive iff (n − 1)·c_μ·Σ|w⁻| ≤ 1 − c₁ − c_μ.
        let negative: f64 = sep.weights.iter().filter(|w| **w < 0.0).map(|w| -w).sum();
        let bound = 1.0 - sep.c_1 - sep.c_mu;
        assert!(
            (n as f64 - 1.0) * sep.c_mu * negative <= bound + 1e-12,
            "n = {n}"
        );
        let positive: f64 = sep.weights.iter().filter(|w| **w > 0.0).sum();
        assert!((positive - 1.0).abs() < 1e-12);
    }
}

/// The reference's +1e-6 on every entry of C belongs to the full model; a diagonal C
/// samples m + σ·z exactly at generation 0.
#[test]
fn generation_zero_is_not_shifted() {
    let (lam, n) = (6, 5);
    let z: Vec<f64> = (0..lam * n).map(|i| i as f64 / 7.0 - 2.0).collect();
    let cfg = diagonal_config(n, lam, 0.3, 0.5);
    let pop = new_es(&cfg).ask_with_normals(&z);
    let expected: Vec<f64> = z.iter().map(|zi| 0.5 + 0.3 * zi).collect();
    assert_eq!(pop.concat(), expected);
}

/// At the NAMM size (n = 4172, λ = 32) a generation is O(λn) and the persisted state holds
/// five n-vectors: ~167 KB where a full C alone is 139 MB.
#[test]
fn state_is_o_n_at_the_namm_size() {
    let n = 4172;
    let mut es = new_es(&diagonal_config(n, 32, 0.065, 0.0));
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for _ in 0..3 {
        let pop = es.ask(&mut rng);
        let f: Vec<f64> = pop
            .iter()
            .map(|x| -x.iter().map(|v| (v - 0.5).powi(2)).sum::<f64>())
            .collect();
        es.tell(&f).expect("tell");
    }
    let state = es.state();
    assert_eq!(state.c.len(), n);
    assert!(state.decomposed_at.is_none() && state.b.is_empty() && state.d.is_empty());
    let bytes = to_proto(state).encoded_len();
    println!("diagonal StrategyState at n = {n}: {bytes} bytes");
    assert!(bytes <= 5 * 8 * n + 64, "{bytes} bytes");
}

#[test]
fn from_state_rejects_a_state_of_the_other_model() {
    let n = 3;
    let full_cfg = config(n, 4, 0.3, 0.0, EigenMode::Lazy);
    let diag_cfg = diagonal_config(n, 4, 0.3, 0.0);
    let field = |r: Result<Cmaes, CmaesError>| match r {
        Err(CmaesError::State { field, .. }) => field,
        other => panic!("expected a state error, got {other:?}"),
    };
    let diag_state = new_es(&diag_cfg).state();
    assert_eq!(field(Cmaes::from_state(&full_cfg, diag_state.clone())), "c");
    assert_eq!(
        field(Cmaes::from_state(&diag_cfg, new_es(&full_cfg).state())),
        "c"
    );
    let mut decomposed = diag_state.clone();
    decomposed.decomposed_at = Some(0);
    decomposed.b = identity(n);
    decomposed.d = vec![1.0; n];
    assert_eq!(
        field(Cmaes::from_state(&diag_cfg, decomposed)),
        "decomposed_at"
    );
    assert!(Cmaes::from_state(&diag_cfg, diag_state).is_ok());
}
