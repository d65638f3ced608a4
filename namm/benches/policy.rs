//! NAMM policy cost per layer and invocation: n = 512 new tokens, H = 3 KV heads (SmolLM2),
//! N = 1024 / 2048 / 4096 cached tokens. Prints the median of several runs for the whole
//! invocation (random θ) on one thread and with one thread per head, for θ = 0 (BAM's
//! attention is skipped: features + selection only), and for the f64 path.
//! `cargo bench -p namm --no-default-features --bench policy`

use std::time::{Duration, Instant};

use namm::policy::{BamLayout, Invocation, NammCore, NormMode, Real};
use namm::stats::NormStats;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const HEADS: usize = 3;
const N_NEW: usize = 512;
const RUNS: usize = 5;

fn attention(n: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(n as u64);
    let n_old = n - N_NEW;
    let mut a = vec![0.0f32; HEADS * N_NEW * n];
    for row_idx in 0..HEADS * N_NEW {
        let i = row_idx % N_NEW;
        let row = &mut a[row_idx * n..(row_idx + 1) * n];
        let visible = n_old + i + 1;
        let mut sum = 0.0;
        for r in &mut row[..visible] {
            *r = rng.random_range(0.0f32..1.0).powi(8);
            sum += *r;
        }
        row[..visible].iter_mut().for_each(|r| *r /= sum);
    }
    a
}

fn median_ms<T: Real>(core: &mut NammCore<T>, attn: &[T], pos: &[u32], n: usize) -> f64 {
    let mut times: Vec<Duration> = (0..=RUNS)
        .map(|_| {
            core.reset();
            let start = Instant::now();
            let kept = core
                .invoke(&Invocation {
                    layer: 0,
                    n_heads: HEADS,
                    n_tokens: n,
                    n_new: N_NEW,
                    attn,
                    positions: pos,
                    surprisal: &[],
                })
                .expect("valid invocation");
            let t = start.elapsed();
            std::hint::black_box(kept);
            t
        })
        .skip(1)
        .collect();
    times.sort();
    times[RUNS / 2].as_secs_f64() * 1e3
}

fn main() {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let layout = BamLayout::I1;
    let theta: Vec<f32> = (0..layout.param_count())
        .map(|_| rng.random_range(-0.2..0.2))
        .collect();
    let stats = NormStats::new(vec![0.001; 17], vec![1e-6; 17], 1.0).expect("valid stats");
    println!("NAMM policy, one layer, H = {HEADS}, n = {N_NEW} (median of {RUNS}, ms)");
    println!(
        "{:>6} {:>16} {:>18} {:>18} {:>14}",
        "N", "f32 θ 1 thread", "f32 θ thread/head", "f32 θ=0 1 thread", "f64 θ 1 thread"
    );
    for n in [1024, 2048, 4096] {
        let attn = attention(n);
        let attn64: Vec<f64> = attn.iter().map(|&v| v as f64).collect();
        let pos: Vec<u32> = (0..HEADS).flat_map(|_| 0..n as u32).collect();
        let mut serial = NammCore::<f32>::new(&theta, NormMode::Frozen(stats.clone())).expect("θ");
        serial.set_threads(1);
        let mut parallel =
            NammCore::<f32>::new(&theta, NormMode::Frozen(stats.clone())).expect("θ");
        parallel.set_threads(HEADS);
        let mut zero =
            NammCore::<f32>::new(&vec![0.0f32; theta.len()], NormMode::Frozen(stats.clone()))
                .expect("θ");
        zero.set_threads(1);
        let mut wide = NammCore::<f64>::new(&theta, NormMode::Frozen(stats.clone())).expect("θ");
        wide.set_threads(1);
        println!(
            "{n:>6} {:>16.2} {:>18.2} {:>18.2} {:>14.2}",
            median_ms(&mut serial, &attn, &pos, n),
            median_ms(&mut parallel, &attn, &pos, n),
            median_ms(&mut zero, &attn, &pos, n),
            median_ms(&mut wide, &attn64, &pos, n),
        );
    }
}
