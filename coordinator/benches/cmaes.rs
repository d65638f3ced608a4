//! ask+tell per generation at λ = 32 for n = 1000 and the NAMM size n = 4172, exact and
//! lazy eigendecomposition. At n = 4172 a lazy generation either decomposes (~the exact
//! cost) or reuses B and D, so criterion times the reusing generations and a one-shot run of
//! a whole lazy cycle gives the amortised cost; a single decomposition of a dense matrix is
//! also timed once (both printed before the criterion groups).
//!
//! `CARGO_TARGET_DIR=/work/target cargo bench -p namm-coord --bench cmaes`

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode};
use namm_coord::cmaes::{symmetric_eigen, Cmaes, CmaesConfig, Covariance, EigenMode};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const POPULATION: usize = 32;

fn config(n: usize, eigen: EigenMode) -> CmaesConfig {
    CmaesConfig {
        dim: n,
        population: POPULATION,
        sigma0: 0.065,
        x0: vec![0.0; n],
        eigen,
        covariance: Covariance::Full,
        shift_first_gen: true,
    }
}

fn strategy(n: usize, eigen: EigenMode) -> Cmaes {
    Cmaes::new(&config(n, eigen)).expect("valid config")
}

/// One generation on a shifted sphere (the fitness itself is O(λn), negligible).
fn generation(es: &mut Cmaes, rng: &mut ChaCha8Rng) {
    let pop = es.ask(rng);
    let fitness: Vec<f64> = pop
        .iter()
        .map(|x| -x.iter().map(|v| (v - 0.5).powi(2)).sum::<f64>())
        .collect();
    es.tell(&fitness).expect("tell");
}

fn secs(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

/// Timings too slow for criterion's ten samples, each taken once at n = 4172.
fn one_shot_timings() {
    let n = 4172;
    let mut rng = ChaCha8Rng::seed_from_u64(7);

    // A dense SPD matrix with a spread spectrum.
    let a: Vec<f64> = (0..n * n).map(|_| rng.random_range(-1.0..1.0)).collect();
    let mut dense = vec![0.0; n * n];
    faer::linalg::matmul::matmul(
        faer::MatMut::from_row_major_slice_mut(&mut dense, n, n),
        faer::Accum::Replace,
        faer::MatRef::from_row_major_slice(&a, n, n),
        faer::MatRef::from_row_major_slice(&a, n, n).transpose(),
        1.0 / n as f64,
        faer::Par::Seq,
    );
    drop(a);
    let start = Instant::now();
    symmetric_eigen(&dense, n).expect("eigen");
    println!(
        "one-shot n={n}: one eigendecomposition of a dense random SPD matrix: {:.2} s",
        secs(start)
    );
    drop(dense);

    // One whole lazy cycle: the generation that decomposes plus the ones that reuse it,
    // i.e. the amortised cost of a lazy generation.
    let mut es = strategy(n, EigenMode::Lazy);
    let cycle = es.params().lazy_gap.ceil() as u32;
    let start = Instant::now();
    for _ in 0..cycle {
        generation(&mut es, &mut rng);
    }
    let total = secs(start);
    println!(
        "one-shot n={n}, λ={POPULATION}: lazy cycle of {cycle} generations (1 decomposition): \
         {total:.2} s = {:.3} s per generation",
        total / f64::from(cycle)
    );
}

fn ask_tell(c: &mut Criterion) {
    let mut group = c.benchmark_group("cmaes_ask_tell_lambda32");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    for n in [1000, 4172] {
        for mode in [EigenMode::Exact, EigenMode::Lazy] {
            let cfg = config(n, mode);
            let mut es = Cmaes::new(&cfg).expect("valid config");
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            if n == 1000 {
                // Lazy here averages over many of its ~6-generation cycles.
                group.warm_up_time(Duration::from_secs(2));
                group.measurement_time(Duration::from_secs(15));
                group.bench_function(BenchmarkId::new(format!("{mode:?}"), n), |b| {
                    b.iter(|| generation(&mut es, &mut rng))
                });
            } else if mode == EigenMode::Exact {
                // ~15-25 s a generation: ten samples of one iteration, criterion's minimum.
                group.warm_up_time(Duration::from_millis(1));
                group.measurement_time(Duration::from_secs(10));
                group.bench_function(BenchmarkId::new("Exact", n), |b| {
                    b.iter(|| generation(&mut es, &mut rng))
                });
            } else {
                // Generations that reuse B and D (the amortised cost is printed by the
                // one-shot cycle above). The first generation decomposes outside the timing;
                // the strategy is rewound before it would decompose again.
                generation(&mut es, &mut rng);
                let saved = es.state();
                let reuse_until = saved.generation + es.params().lazy_gap.ceil() as u64 - 2;
                group.warm_up_time(Duration::from_millis(1));
                group.measurement_time(Duration::from_secs(5));
                group.bench_function(BenchmarkId::new("LazyReuse", n), |b| {
                    b.iter_custom(|iters| {
                        let mut timed = Duration::ZERO;
                        for _ in 0..iters {
                            if es.generation() >= reuse_until {
                                es = Cmaes::from_state(&cfg, saved.clone()).expect("restore");
                            }
                            let start = Instant::now();
                            generation(&mut es, &mut rng);
                            timed += start.elapsed();
                        }
                        timed
                    })
                });
            }
        }
    }
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    one_shot_timings();
    ask_tell(&mut criterion);
    criterion.final_summary();
}
