//! Validation, ranking and error behaviour of the public API.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{config, new_es};
use crate::cmaes::{rank_descending, symmetric_eigen, Cmaes, CmaesError, EigenMode};

/// A named corruption applied to a copy of a good value.
type Mutation<T> = Box<dyn Fn(&mut T)>;

fn config_error(err: CmaesError) -> (&'static str, String) {
    match err {
        CmaesError::Config { field, value, .. } => (field, value),
        other => panic!("expected a config error, got {other}"),
    }
}

#[test]
fn new_rejects_each_bad_field_by_name_and_value() {
    let good = config(3, 6, 0.5, 0.0, EigenMode::Exact);
    let cases: Vec<(Mutation<super::CmaesConfig>, &str, &str)> = vec![
        (Box::new(|c| c.dim = 0), "dim", "0"),
        (Box::new(|c| c.population = 1), "population", "1"),
        (Box::new(|c| c.sigma0 = -0.1), "sigma0", "-0.1"),
        (Box::new(|c| c.sigma0 = f64::NAN), "sigma0", "NaN"),
        (Box::new(|c| c.x0 = vec![0.0; 2]), "x0", "2 values"),
        (Box::new(|c| c.x0[1] = f64::INFINITY), "x0", "[1] = inf"),
    ];
    for (mutate, field, value) in cases {
        let mut cfg = good.clone();
        mutate(&mut cfg);
        let err = Cmaes::new(&cfg).expect_err(field);
        let msg = err.to_string();
        assert_eq!(config_error(err), (field, value.to_string()));
        assert!(msg.contains(field) && msg.contains(value), "{msg}");
    }
    assert!(Cmaes::new(&good).is_ok());
}

#[test]
fn default_population_is_4_plus_floor_3_ln_n() {
    assert_eq!(Cmaes::default_population(1), 4);
    assert_eq!(Cmaes::default_population(10), 10);
    assert_eq!(Cmaes::default_population(40), 15);
    assert_eq!(Cmaes::default_population(4172), 29);
}

#[test]
fn tell_requires_a_pending_population_of_the_right_size() {
    let mut es = new_es(&config(4, 6, 0.3, 0.0, EigenMode::Exact));
    assert_eq!(
        es.tell(&[0.0; 6]),
        Err(CmaesError::TellWithoutAsk { generation: 0 })
    );
    es.ask(&mut ChaCha8Rng::seed_from_u64(3));
    assert_eq!(
        es.tell(&[0.0; 5]),
        Err(CmaesError::FitnessLength {
            got: 5,
            expected: 6
        })
    );
    assert_eq!(es.generation(), 0, "a rejected tell changes nothing");
    es.tell(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        .expect("the population is still pending");
    assert_eq!(es.generation(), 1);
    assert_eq!(
        es.tell(&[0.0; 6]),
        Err(CmaesError::TellWithoutAsk { generation: 1 })
    );
}

#[test]
fn non_finite_fitness_ranks_last_and_ties_keep_index_order() {
    let f = [
        1.0,
        f64::NAN,
        3.0,
        f64::NEG_INFINITY,
        f64::INFINITY,
        3.0,
        -0.0,
        0.0,
    ];
    assert_eq!(rank_descending(&f), vec![2, 5, 0, 6, 7, 1, 3, 4]);
}

#[test]
fn non_finite_fitness_never_becomes_the_best() {
    let mut es = new_es(&config(3, 4, 0.3, 0.5, EigenMode::Exact));
    es.ask(&mut ChaCha8Rng::seed_from_u64(1));
    es.tell(&[f64::NAN, f64::INFINITY, f64::NEG_INFINITY, f64::NAN])
        .expect("non-finite fitness is accepted");
    assert_eq!(es.best(), (&[0.5, 0.5, 0.5][..], f64::MIN));
    assert!(es.mean().iter().all(|v| v.is_finite()) && es.sigma().is_finite());

    let pop = es.ask(&mut ChaCha8Rng::seed_from_u64(2));
    es.tell(&[f64::NAN, -2.0, -1.0, f64::INFINITY])
        .expect("tell");
    assert_eq!(es.best(), (&pop[2][..], -1.0));
}

#[test]
fn from_state_rejects_corrupt_state_by_field() {
    let cfg = config(3, 4, 0.3, 0.0, EigenMode::Lazy);
    let good = new_es(&cfg).state();
    let cases: Vec<(Mutation<crate::cmaes::CmaesState>, &str)> = vec![
        (
            Box::new(|s| {
                s.c.pop();
            }),
            "c",
        ),
        (Box::new(|s| s.mean[0] = f64::NAN), "mean"),
        (Box::new(|s| s.p_sigma.push(0.0)), "p_sigma"),
        (Box::new(|s| s.sigma = 0.0), "sigma"),
        (
            Box::new(|s| s.best_fitness = f64::NEG_INFINITY),
            "best_fitness",
        ),
        (Box::new(|s| s.decomposed_at = Some(5)), "decomposed_at"),
        (
            Box::new(|s| {
                s.decomposed_at = Some(0);
                s.b = vec![0.0; 9];
                s.d = vec![1.0; 2];
            }),
            "d",
        ),
    ];
    for (mutate, field) in cases {
        let mut s = good.clone();
        mutate(&mut s);
        match Cmaes::from_state(&cfg, s) {
            Err(CmaesError::State { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected a state error, got {other:?}"),
        }
    }
    let mut wrong_dim = cfg.clone();
    wrong_dim.dim = 4;
    wrong_dim.x0 = vec![0.0; 4];
    assert!(matches!(
        Cmaes::from_state(&wrong_dim, good.clone()),
        Err(CmaesError::State { field: "mean", .. })
    ));
    assert!(Cmaes::from_state(&cfg, good).is_ok());
}

/// A random symmetric positive definite matrix, row-major.
fn random_spd(n: usize, seed: u64) -> Vec<f64> {
    use rand::Rng;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let a: Vec<f64> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut c = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            c[i * n + j] = (0..n).map(|k| a[i * n + k] * a[j * n + k]).sum::<f64>() / n as f64;
        }
        c[i * n + i] += 1e-3;
    }
    c
}

#[test]
fn eigendecomposition_is_bitwise_deterministic_and_ascending() {
    let n = 300;
    let c = random_spd(n, 7);
    let first = symmetric_eigen(&c, n).expect("eigen");
    for _ in 0..3 {
        let again = symmetric_eigen(&c, n).expect("eigen");
        let same_values = first
            .eigenvalues
            .iter()
            .zip(&again.eigenvalues)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        let same_vectors = first
            .eigenvectors
            .iter()
            .zip(&again.eigenvectors)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same_values && same_vectors,
            "decomposition differs between runs"
        );
    }
    assert!(first.eigenvalues.windows(2).all(|w| w[0] <= w[1]));
    // C·b_j = λ_j·b_j for every column.
    let b = &first.eigenvectors;
    for j in [0, n / 2, n - 1] {
        let lam = first.eigenvalues[j];
        for i in 0..n {
            let cb: f64 = (0..n).map(|k| c[i * n + k] * b[k * n + j]).sum();
            assert!(
                (cb - lam * b[i * n + j]).abs() < 1e-10,
                "column {j} row {i}"
            );
        }
    }
}

#[test]
fn first_generation_shift_adds_1e6_to_every_entry() {
    let n = 5;
    let mut es = new_es(&config(n, 6, 0.3, 0.0, EigenMode::Exact));
    es.ask_with_normals(&vec![0.0; 6 * n]);
    let d = &es.decomposition.as_ref().expect("decomposed").d;
    // I + 1e-6·11ᵀ has eigenvalues 1 (n−1 times) and 1 + n·1e-6.
    assert!(
        (d[n - 1] * d[n - 1] - (1.0 + n as f64 * 1e-6)).abs() < 1e-14,
        "{d:?}"
    );
    assert!(d[..n - 1].iter().all(|v| (v - 1.0).abs() < 1e-14), "{d:?}");

    let mut s = es.state();
    s.shift_first_gen = false;
    let mut resumed =
        Cmaes::from_state(&config(n, 6, 0.3, 0.0, EigenMode::Exact), s).expect("state");
    resumed.ask_with_normals(&vec![0.0; 6 * n]);
    let d = &resumed.decomposition.as_ref().expect("decomposed").d;
    assert!(d.iter().all(|v| *v == 1.0), "{d:?}");
}

#[test]
fn non_positive_eigenvalues_become_1e_minus_20_before_the_root() {
    let n = 2;
    let cfg = config(n, 4, 0.3, 0.0, EigenMode::Exact);
    let mut s = new_es(&cfg).state();
    s.generation = 1;
    s.c = vec![1.0, 0.0, 0.0, -4.0];
    let mut es = Cmaes::from_state(&cfg, s).expect("state");
    es.ask_with_normals(&[0.0; 8]);
    let d = &es.decomposition.as_ref().expect("decomposed").d;
    assert_eq!(d, &vec![1e-10, 1.0]);
}

#[test]
fn lazy_mode_reuses_the_decomposition_for_the_pycma_gap() {
    let n = 200;
    let lam = Cmaes::default_population(n);
    let mut lazy = new_es(&config(n, lam, 0.5, 1.0, EigenMode::Lazy));
    let gap = lazy.params().lazy_gap;
    assert!(gap > 2.0 && gap < 3.0, "gap {gap}");
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut decomposed_at = Vec::new();
    for _ in 0..9 {
        let pop = lazy.ask(&mut rng);
        decomposed_at.push(
            lazy.state()
                .decomposed_at
                .expect("lazy state keeps B and D"),
        );
        let f: Vec<f64> = pop
            .iter()
            .map(|x| -x.iter().map(|v| v * v).sum::<f64>())
            .collect();
        lazy.tell(&f).expect("tell");
    }
    assert_eq!(decomposed_at, vec![0, 0, 0, 3, 3, 3, 6, 6, 6]);

    let mut exact = new_es(&config(n, lam, 0.5, 1.0, EigenMode::Exact));
    exact.ask(&mut rng);
    assert_eq!(exact.state().decomposed_at, None);
    assert!(exact.state().b.is_empty());
}

#[test]
fn failed_decomposition_keeps_sampling_with_the_previous_one() {
    let n = 6;
    let mut es = new_es(&config(n, 6, 0.3, 0.0, EigenMode::Exact));
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let pop = es.ask(&mut rng);
    es.tell(&pop.iter().map(|x| -x[0].abs()).collect::<Vec<_>>())
        .expect("tell");
    let previous = es.decomposition.clone().expect("decomposed");
    es.c[n + 2] = f64::NAN;
    let pop = es.ask(&mut rng);
    assert_eq!(es.decomposition.as_ref(), Some(&previous));
    assert!(pop.iter().flatten().all(|v| v.is_finite()));
}

#[test]
fn failed_first_decomposition_samples_isotropically() {
    let n = 3;
    let mut es = new_es(&config(n, 4, 0.3, 0.0, EigenMode::Lazy));
    es.c[0] = f64::NAN;
    let z: Vec<f64> = (0..4 * n).map(|i| i as f64 / 10.0).collect();
    let pop = es.ask_with_normals(&z);
    let expected: Vec<f64> = z.iter().map(|v| 0.3 * v).collect();
    assert_eq!(pop.concat(), expected);
}

#[test]
fn the_closed_form_first_decomposition_reconstructs_the_shifted_identity() {
    for n in [1usize, 2, 7, 50] {
        let s = 1e-6;
        let dec = crate::cmaes::identity_plus_constant(n, s, 0);
        for i in 0..n {
            for j in 0..n {
                let c: f64 = (0..n)
                    .map(|k| dec.b[i * n + k] * dec.d[k] * dec.d[k] * dec.b[j * n + k])
                    .sum();
                let want = if i == j { 1.0 + s } else { s };
                assert!((c - want).abs() < 1e-14, "n={n} C[{i}][{j}] = {c}");
                let g: f64 = (0..n).map(|k| dec.b[k * n + i] * dec.b[k * n + j]).sum();
                let id = if i == j { 1.0 } else { 0.0 };
                assert!((g - id).abs() < 1e-14, "n={n} BᵀB[{i}][{j}] = {g}");
            }
        }
    }
}
