//! Prefill and decode speed of the engine on the default GGUF at prompt lengths 512–4096,
//! with a full cache and with a NAMM of random parameters (i1 layout, θ ~ N(0, 0.065²), the
//! CMA-ES starting spread), on 2 threads.
//!
//! `cargo bench -p namm --bench engine`; env `NAMM_BENCH_FORMATS` (comma-separated, default
//! the binaries' default format), `NAMM_BENCH_LENGTHS` (default `512,1024,2048,4096`), `NAMM_BENCH_DECODE`
//! (tokens generated per run, default 64), `NAMM_MODEL`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use candle_core::Device;
use namm::engine::{Engine, GenerateOptions};
use namm::model::{Model, WeightFormat, DEFAULT_FORMAT};
use namm::policy::{BamLayout, FullCache, MemoryPolicy, NammPolicy};

fn env_list<T: std::str::FromStr>(key: &str, default: &str) -> Vec<T>
where
    T::Err: std::fmt::Debug,
{
    std::env::var(key)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|e| panic!("{key}: {s:?}: {e:?}"))
        })
        .collect()
}

fn prompt(len: usize) -> Vec<u32> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../spec/tokenizer/smollm2_llamacpp_ids.json"
    ))
    .expect("tokenizer fixture");
    let json: serde_json::Value = serde_json::from_str(&text).expect("fixture JSON");
    let ids: Vec<u32> = json["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .flat_map(|c| {
            c["ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|v| v.as_u64().expect("id") as u32)
        })
        .collect();
    ids.iter().copied().cycle().take(len).collect()
}

fn main() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "2");
    }
    let path = common::model_path();
    let formats: Vec<WeightFormat> = env_list("NAMM_BENCH_FORMATS", DEFAULT_FORMAT);
    let lengths: Vec<usize> = env_list("NAMM_BENCH_LENGTHS", "512,1024,2048,4096");
    let decode: usize = std::env::var("NAMM_BENCH_DECODE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    println!(
        "threads: {}, decode tokens per run: {decode}",
        std::env::var("RAYON_NUM_THREADS").unwrap_or_default()
    );
    println!("| format | policy | prompt | prefill tok/s | decode tok/s | kept | policy % |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for format in formats {
        let t = Instant::now();
        let model = Model::load(&path, &Device::Cpu, format).expect("loading the model");
        eprintln!(
            "{format}: loaded in {:.1}s, {} MB of weights",
            t.elapsed().as_secs_f64(),
            model.weight_bytes() / 1_000_000
        );
        let engine = Engine::new(&model);
        let opts = GenerateOptions {
            max_new_tokens: decode,
            stop_tokens: vec![],
        };
        engine
            .generate(&prompt(200), &mut FullCache, &opts)
            .expect("warm-up");
        let mut policies: Vec<Box<dyn MemoryPolicy>> = vec![
            Box::new(FullCache),
            Box::new(NammPolicy::random(BamLayout::I1, 0.065, 0).with_label("namm:random")),
        ];
        for &len in &lengths {
            for policy in policies.iter_mut() {
                let g = engine
                    .generate(&prompt(len), policy.as_mut(), &opts)
                    .expect("generation");
                let s = &g.stats;
                println!(
                    "| {format} | {} | {len} | {:.0} | {:.1} | {:.2} | {:.1} |",
                    policy.name(),
                    s.prefill_tokens_per_sec(),
                    s.decode_tokens_per_sec(),
                    s.mean_kept_fraction,
                    100.0 * s.policy_secs / (s.prefill_secs + s.decode_secs),
                );
            }
        }
    }
}
