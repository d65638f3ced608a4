//! Replays spec/golden/cma_es_trace.json as spec/golden/README.md prescribes.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{config, new_es, rel_err};
use crate::cmaes::{
    rank_descending, sample, symmetric_eigen, Decomposition, EigenMode, Pending, StrategyParams,
};

const TRACE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../spec/golden/cma_es_trace.json"
);
const RTOL: f64 = 1e-5;

#[derive(Deserialize)]
struct Trace {
    constants: Constants,
    generations: Vec<Generation>,
    production_constants: BTreeMap<String, ProductionConstants>,
}

#[derive(Deserialize)]
struct Constants {
    pop_size: usize,
    param_size: usize,
    elite_pop_size: usize,
    weights: Vec<f64>,
    weights_truncated: Vec<f64>,
    mu_eff: f64,
    c_1: f64,
    c_mu: f64,
    c_sigma: f64,
    d_sigma: f64,
    c_c: f64,
    c_m: f64,
    expected_normal_mag: f64,
    init_sigma: f64,
}

#[derive(Deserialize)]
struct ProductionConstants {
    elite_pop_size: usize,
    weights: Vec<f64>,
    mu_eff: f64,
    c_1: f64,
    c_mu: f64,
    c_sigma: f64,
    d_sigma: f64,
    c_c: f64,
    expected_normal_mag: f64,
}

#[derive(Deserialize)]
#[allow(non_snake_case)]
struct Generation {
    generation: u64,
    state_before: RecordedState,
    z: Vec<Vec<f64>>,
    sample_B: Vec<Vec<f64>>,
    sample_D: Vec<f64>,
    y: Vec<Vec<f64>>,
    x: Vec<Vec<f64>>,
    fitness: Vec<f64>,
    sorted_order: Vec<f64>,
    state_after: RecordedState,
}

#[derive(Deserialize)]
#[allow(non_snake_case)]
struct RecordedState {
    g: f64,
    mean: Vec<f64>,
    sigma: f64,
    C: Vec<Vec<f64>>,
    evo_path_sigma: Vec<f64>,
    evo_path_c: Vec<f64>,
    best_member: Vec<f64>,
    best_fitness: f64,
}

fn load() -> Trace {
    let text = std::fs::read_to_string(TRACE).expect("read cma_es_trace.json");
    serde_json::from_str(&text).expect("parse cma_es_trace.json")
}

fn flat(m: &[Vec<f64>]) -> Vec<f64> {
    m.iter().flatten().copied().collect()
}

fn check(
    what: &str,
    gen: u64,
    ours: &[f64],
    recorded: &[f64],
    tol: f64,
    worst: &mut BTreeMap<String, f64>,
) {
    let e = rel_err(ours, recorded);
    assert!(e <= tol, "generation {gen}: {what} rel err {e:e} > {tol:e}");
    let w = worst.entry(what.to_string()).or_insert(0.0);
    *w = w.max(e);
}

fn check_scalar(what: &str, ours: f64, recorded: f64) {
    let e = (ours - recorded).abs() / recorded.abs().max(1e-30);
    assert!(
        e <= RTOL,
        "{what}: ours {ours:e} recorded {recorded:e} rel err {e:e}"
    );
}

#[test]
fn golden_constants_match() {
    let t = load();
    let c = &t.constants;
    let p = StrategyParams::new(c.pop_size, c.param_size);
    assert_eq!(p.elite, c.elite_pop_size);
    assert!(rel_err(&p.weights, &c.weights) <= RTOL);
    assert!(rel_err(&p.weights_truncated, &c.weights_truncated) <= RTOL);
    check_scalar("mu_eff", p.mu_eff, c.mu_eff);
    check_scalar("c_1", p.c_1, c.c_1);
    check_scalar("c_mu", p.c_mu, c.c_mu);
    check_scalar("c_sigma", p.c_sigma, c.c_sigma);
    check_scalar("d_sigma", p.d_sigma, c.d_sigma);
    check_scalar("c_c", p.c_c, c.c_c);
    check_scalar("c_m", p.c_m, c.c_m);
    check_scalar("chi_n", p.chi_n, c.expected_normal_mag);
    let truncated_sum: f64 = p.weights_truncated.iter().sum();
    assert!(
        (truncated_sum - 1.0).abs() < 1e-12,
        "truncated weights sum {truncated_sum}"
    );

    assert_eq!(t.production_constants.len(), 2);
    for (key, pc) in &t.production_constants {
        let (lam, n) = match key.as_str() {
            "pop32_n4172" => (32, 4172),
            "pop16_n2026" => (16, 2026),
            other => panic!("unexpected production constants key {other}"),
        };
        let p = StrategyParams::new(lam, n);
        assert_eq!(p.elite, pc.elite_pop_size, "{key}");
        for (i, (ours, rec)) in p.weights.iter().zip(&pc.weights).enumerate() {
            check_scalar(&format!("{key} weights[{i}]"), *ours, *rec);
        }
        check_scalar(&format!("{key} mu_eff"), p.mu_eff, pc.mu_eff);
        check_scalar(&format!("{key} c_1"), p.c_1, pc.c_1);
        check_scalar(&format!("{key} c_mu"), p.c_mu, pc.c_mu);
        check_scalar(&format!("{key} c_sigma"), p.c_sigma, pc.c_sigma);
        check_scalar(&format!("{key} d_sigma"), p.d_sigma, pc.d_sigma);
        check_scalar(&format!("{key} c_c"), p.c_c, pc.c_c);
        check_scalar(&format!("{key} chi_n"), p.chi_n, pc.expected_normal_mag);
    }
}

/// One strategy object runs through all five recorded generations (chained, so errors would
/// accumulate); at each, its own eigendecomposition is checked against C̃, the recorded
/// B/D/z must reproduce the recorded y and x, and tell with the recorded y and fitness must
/// land on the recorded state.
#[test]
fn golden_trace_replays_within_tolerance() {
    let t = load();
    let c = &t.constants;
    let (lam, n) = (c.pop_size, c.param_size);
    let x0 = &t.generations[0].state_before.mean;
    assert!(x0.iter().all(|v| *v == 0.0), "trace starts from m = 0");
    let mut es = new_es(&config(n, lam, c.init_sigma, 0.0, EigenMode::Exact));
    assert_eq!(es.best().1, f64::MIN);
    let mut worst = BTreeMap::new();

    for gen in &t.generations {
        let g = gen.generation;
        let before = &gen.state_before;
        assert_eq!(es.generation(), before.g as u64);
        check("before.mean", g, es.mean(), &before.mean, RTOL, &mut worst);
        check(
            "before.sigma",
            g,
            &[es.sigma()],
            &[before.sigma],
            RTOL,
            &mut worst,
        );
        check("before.C", g, &es.c, &flat(&before.C), RTOL, &mut worst);

        // Our own ask: decomposes C̃ (C + 1e-6 on every entry at g = 0, symmetrised).
        let z = flat(&gen.z);
        es.ask_with_normals(&z);
        let mut c_tilde = es.c.clone();
        if g == 0 {
            c_tilde.iter_mut().for_each(|v| *v += 1e-6);
        }
        let ours = es.decomposition.clone().expect("ask decomposed");
        assert!(
            ours.d.windows(2).all(|w| w[0] <= w[1]),
            "D not ascending: {:?}",
            ours.d
        );
        check("D", g, &ours.d, &gen.sample_D, RTOL, &mut worst);
        check(
            "B diag(D²) Bᵀ (ours)",
            g,
            &reconstruct(&ours.b, &ours.d),
            &c_tilde,
            1e-12,
            &mut worst,
        );
        let rec_b = flat(&gen.sample_B);
        check(
            "B diag(D²) Bᵀ (recorded)",
            g,
            &reconstruct(&rec_b, &gen.sample_D),
            &c_tilde,
            RTOL,
            &mut worst,
        );
        let fresh = symmetric_eigen(&c_tilde, n).expect("eigen");
        check(
            "eigenvalues (direct)",
            g,
            &fresh.eigenvalues,
            &gen.sample_D.iter().map(|d| d * d).collect::<Vec<_>>(),
            RTOL,
            &mut worst,
        );

        // Sampling with the recorded decomposition reproduces the recorded y and x.
        let (x, y) = sample(&rec_b, &gen.sample_D, &z, es.mean(), es.sigma());
        check("y", g, &y, &flat(&gen.y), RTOL, &mut worst);
        check("x", g, &x, &flat(&gen.x), RTOL, &mut worst);

        // Tell with the recorded y (and the recorded B, D behind C^{-1/2}).
        let rec_y = flat(&gen.y);
        let rec_x: Vec<f64> = rec_y
            .chunks_exact(n)
            .flat_map(|row| {
                row.iter()
                    .zip(es.mean())
                    .map(|(v, m)| m + es.sigma() * v)
                    .collect::<Vec<_>>()
            })
            .collect();
        es.decomposition = Some(Decomposition {
            at: es.generation,
            b: rec_b,
            d: gen.sample_D.clone(),
        });
        es.pending = Some(Pending {
            x: rec_x.clone(),
            y: rec_y,
        });
        let order = rank_descending(&gen.fitness);
        let recorded_order: Vec<usize> = gen.sorted_order.iter().map(|v| *v as usize).collect();
        assert_eq!(order, recorded_order, "generation {g}: ranking");
        es.tell(&gen.fitness).expect("tell");

        let after = &gen.state_after;
        assert_eq!(es.generation(), after.g as u64);
        check("after.mean", g, es.mean(), &after.mean, RTOL, &mut worst);
        check(
            "after.sigma",
            g,
            &[es.sigma()],
            &[after.sigma],
            RTOL,
            &mut worst,
        );
        check("after.C", g, &es.c, &flat(&after.C), RTOL, &mut worst);
        check(
            "after.p_sigma",
            g,
            &es.p_sigma,
            &after.evo_path_sigma,
            RTOL,
            &mut worst,
        );
        check("after.p_c", g, &es.p_c, &after.evo_path_c, RTOL, &mut worst);
        let (best_member, best_fitness) = es.best();
        check(
            "after.best_member",
            g,
            best_member,
            &after.best_member,
            RTOL,
            &mut worst,
        );
        assert_eq!(
            best_fitness, after.best_fitness,
            "generation {g}: best_fitness"
        );
        assert_eq!(rec_x.len(), lam * n);
    }
    for (what, e) in &worst {
        println!("golden max rel err {what}: {e:.3e}");
    }
}

/// B·diag(D²)·Bᵀ for row-major B.
fn reconstruct(b: &[f64], d: &[f64]) -> Vec<f64> {
    let n = d.len();
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            out[i * n + j] = (0..n)
                .map(|k| b[i * n + k] * d[k] * d[k] * b[j * n + k])
                .sum();
        }
    }
    out
}
