//! The engine on the real default GGUF: parity with candle's `quantized_llama`, the faster
//! weight formats, eviction correctness against a masked reference, the invocation schedule
//! of spec §2, long positions, forking a shared prefix, and loading errors.

mod common;
use common::model_path;

use std::sync::{Mutex, OnceLock};

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use namm::engine::{Engine, EngineError, GenerateOptions, Session, StopReason};
use namm::model::{Model, ModelError, WeightFormat};
use namm::policy::{FullCache, LayerView, MemoryPolicy, PolicyInputs};

fn model(format: WeightFormat) -> &'static Model {
    static MODELS: OnceLock<Mutex<Vec<(WeightFormat, &'static Model)>>> = OnceLock::new();
    let mut models = MODELS.get_or_init(Default::default).lock().unwrap();
    if let Some((_, m)) = models.iter().find(|(f, _)| *f == format) {
        return m;
    }
    let m: &'static Model = Box::leak(Box::new(
        Model::load(model_path(), &Device::Cpu, format).expect("loading the default model"),
    ));
    models.push((format, m));
    m
}

/// Real text: the llama.cpp token ids of the tokenizer fixture, concatenated and repeated.
fn prompt(len: usize) -> Vec<u32> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../spec/tokenizer/smollm2_llamacpp_ids.json"
    ))
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids: Vec<u32> = json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| {
            c["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
        })
        .collect();
    ids.iter().copied().cycle().take(len).collect()
}

/// A chat prompt: `<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n`.
fn chat(case: usize) -> Vec<u32> {
    let questions: [&[u32]; 3] = [
        // "What is 12345 + 678?"
        &[
            1780, 314, 216, 33, 34, 35, 36, 37, 1232, 216, 38, 39, 40, 47,
        ],
        // "Hello, world! This is SmolLM2."
        &[19556, 28, 905, 17, 669, 314, 3511, 308, 34519, 34, 30],
        // "The pass key is 71432. Remember it. 71432 is the pass key."
        &[
            504, 1301, 1646, 314, 216, 39, 33, 36, 35, 34, 30, 5258, 357, 30, 216, 39, 33, 36, 35,
            34, 314, 260, 1301, 1646, 30,
        ],
    ];
    let mut ids = vec![1, 4093, 198];
    ids.extend_from_slice(questions[case]);
    ids.extend_from_slice(&[2, 198, 1, 520, 9531, 198]);
    ids
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn argmax(v: &[f32]) -> usize {
    namm::engine::argmax(v) as usize
}

/// Keeps everything by returning every index explicitly.
struct KeepAllExplicit;
impl MemoryPolicy for KeepAllExplicit {
    fn name(&self) -> String {
        "keep-all".into()
    }
    fn inputs(&self) -> PolicyInputs {
        PolicyInputs {
            attention: true,
            key_norms: true,
            surprisal: false,
        }
    }
    fn reset(&mut self) {}
    fn select(&mut self, v: &LayerView<'_>) -> Option<Vec<Vec<usize>>> {
        Some(vec![(0..v.n_tokens).collect(); v.n_heads])
    }
}

/// Keeps the `window` most recent tokens of every head.
struct Recent {
    window: usize,
}
impl MemoryPolicy for Recent {
    fn name(&self) -> String {
        format!("recent:{}", self.window)
    }
    fn inputs(&self) -> PolicyInputs {
        PolicyInputs::default()
    }
    fn reset(&mut self) {}
    fn select(&mut self, v: &LayerView<'_>) -> Option<Vec<Vec<usize>>> {
        let start = v.n_tokens.saturating_sub(self.window);
        Some(vec![(start..v.n_tokens).collect(); v.n_heads])
    }
}

/// Drops, in head h of layer l, every token whose absolute position p has
/// (p + h + l) % 4 == 0: a different set per head and layer, the same count for all heads
/// when N is a multiple of 4.
fn dropped(p: u32, head: usize, layer: usize) -> bool {
    (p as usize + head + layer).is_multiple_of(4)
}

struct DropPattern;
impl MemoryPolicy for DropPattern {
    fn name(&self) -> String {
        "drop-pattern".into()
    }
    fn inputs(&self) -> PolicyInputs {
        PolicyInputs::default()
    }
    fn reset(&mut self) {}
    fn select(&mut self, v: &LayerView<'_>) -> Option<Vec<Vec<usize>>> {
        let n = v.n_tokens;
        Some(
            (0..v.n_heads)
                .map(|h| {
                    (0..n)
                        .filter(|&i| !dropped(v.positions[h * n + i], h, v.layer))
                        .collect()
                })
                .collect(),
        )
    }
}

#[test]
fn logits_match_candle_quantized_llama() {
    let path = model_path();
    let ours = model(WeightFormat::Gguf);
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut reference = candle_transformers::models::quantized_llama::ModelWeights::from_gguf(
        content,
        &mut file,
        &Device::Cpu,
    )
    .unwrap();
    let ids = prompt(300);
    let candle_logits = |r: &mut candle_transformers::models::quantized_llama::ModelWeights,
                         ids: &[u32],
                         pos: usize| {
        let t = Tensor::new(ids, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        r.forward(&t, pos)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };

    // 200 tokens: quantized_llama in one pass, ours in chunks [0,128) and [128,200).
    let want = candle_logits(&mut reference, &ids[..200], 0);
    let mut session = Session::new(ours, PolicyInputs::default()).unwrap();
    let got = session.feed(&ids[..200], &mut FullCache).unwrap();
    let d = max_abs_diff(&got, &want);
    eprintln!("200-token prompt: max |Δ| = {d}");
    assert!(d <= 1e-3, "200-token prompt: max |Δ| = {d}");
    // A decode step on top of the cache.
    let want = candle_logits(&mut reference, &ids[200..201], 200);
    let got = session.feed(&ids[200..201], &mut FullCache).unwrap();
    let d = max_abs_diff(&got, &want);
    eprintln!("decode step at position 200: max |Δ| = {d}");
    assert!(d <= 1e-3, "decode step at position 200: max |Δ| = {d}");

    // Chunk by chunk on both sides: [0,128), [128,256), then 44 tokens.
    reference.clear_kv_cache();
    let mut session = Session::new(ours, PolicyInputs::default()).unwrap();
    let mut want = Vec::new();
    for (start, end) in [(0, 128), (128, 256), (256, 300)] {
        want = candle_logits(&mut reference, &ids[start..end], start);
    }
    let got = session.feed(&ids[..300], &mut FullCache).unwrap();
    let d = max_abs_diff(&got, &want);
    eprintln!("3-chunk prompt: max |Δ| = {d}");
    assert!(d <= 1e-3, "3-chunk prompt: max |Δ| = {d}");
    // The plain forward without a cache agrees too.
    let plain = ours.forward_full(&ids[..300]).unwrap();
    let d = max_abs_diff(&plain, &want);
    eprintln!("forward_full: max |Δ| = {d}");
    assert!(d <= 1e-3, "forward_full: max |Δ| = {d}");
}

/// Top-1 minus top-2 logit.
fn margin(v: &[f32]) -> f32 {
    let best = argmax(v);
    let second = v
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != best)
        .fold(f32::NEG_INFINITY, |a, (_, &x)| a.max(x));
    v[best] - second
}

/// Faster formats against the GGUF-as-stored path (Q4_1 weights, activations quantised to
/// Q8_1 by candle's kernels). f32 holds the very same dequantised weights but keeps
/// activations exact; Q8_0 re-quantises the weights. Over 49152 logits of magnitude up to ~40
/// the largest difference measured was 1.25 (f32, f32+gguf), 2.11 (Q8_0), 1.70 (f32+Q8_0),
/// 1.54 (int8+gguf: its activations' scales are f32 where candle's Q8_1 rounds them to f16),
/// medians 0.6–0.9; after the AVX-512 decode attention (FMA products, another summation
/// order) 0.97 (f32), 1.51 (f32+gguf), 1.96 (Q8_0), 1.18 (f32+Q8_0), 1.31 (int8+gguf): these
/// maxima over 49152 logits × 48 steps move by ~0.3 with summation order alone, hence these
/// tolerances on max |Δ|.
fn format_tolerance(format: WeightFormat) -> f32 {
    match format {
        WeightFormat::F32 | WeightFormat::F32Gguf => 2.0,
        _ => 2.5,
    }
}

/// Greedy decoding must pick the reference's token at every step where the reference's top-1
/// leads by more than this (the only disagreements measured were near-ties, margins < 0.28).
const GREEDY_MARGIN: f32 = 0.5;

#[test]
fn faster_formats_agree_with_gguf_path() {
    let reference = model(WeightFormat::Gguf);
    let steps = 12;
    let mut prompts: Vec<Vec<u32>> = (0..3).map(chat).collect();
    prompts.push(prompt(200));
    // Both sides are teacher-forced with the reference's greedy tokens, so one near-tie does
    // not hide the later steps.
    let run = |m: &Model, ids: &[u32], forced: &[u32]| -> Vec<Vec<f32>> {
        let mut s = Session::new(m, PolicyInputs::default()).unwrap();
        let mut out = vec![s.feed(ids, &mut FullCache).unwrap()];
        for &t in forced {
            out.push(s.feed(&[t], &mut FullCache).unwrap());
        }
        out
    };
    let opts = GenerateOptions {
        max_new_tokens: steps,
        stop_tokens: vec![],
    };
    let mut checked = 0;
    for ids in &prompts {
        let greedy = Engine::new(reference)
            .generate(ids, &mut FullCache, &opts)
            .unwrap();
        let forced = &greedy.tokens[..steps - 1];
        let want = run(reference, ids, forced);
        for format in [
            WeightFormat::F32,
            WeightFormat::Q8_0,
            WeightFormat::F32Q8_0,
            WeightFormat::F32Gguf,
            WeightFormat::Int8Gguf,
        ] {
            let got = run(model(format), ids, forced);
            for (step, (g, w)) in got.iter().zip(&want).enumerate() {
                let d = max_abs_diff(g, w);
                let tol = format_tolerance(format);
                assert!(d <= tol, "{format}, step {step}: max |Δ| = {d} > {tol}");
                if margin(w) > GREEDY_MARGIN {
                    checked += 1;
                }
            }
        }
    }
    // Most steps are decided by a clear margin, so the greedy check is not vacuous.
    assert!(
        checked > prompts.len() * 3 * steps / 2,
        "only {checked} steps checked"
    );
}

#[test]
fn stop_tokens_end_generation() {
    let m = model(WeightFormat::F32);
    let engine = Engine::new(m);
    let free = engine
        .generate(
            &chat(0),
            &mut FullCache,
            &GenerateOptions {
                max_new_tokens: 8,
                stop_tokens: vec![],
            },
        )
        .unwrap();
    assert_eq!(free.stop_reason, StopReason::MaxTokens);
    assert_eq!(free.tokens.len(), 8);
    let stop = free.tokens[3];
    let first = free.tokens.iter().position(|&t| t == stop).unwrap();
    let stopped = engine
        .generate(
            &chat(0),
            &mut FullCache,
            &GenerateOptions {
                max_new_tokens: 8,
                stop_tokens: vec![stop],
            },
        )
        .unwrap();
    assert_eq!(stopped.stop_reason, StopReason::StopToken(stop));
    assert_eq!(stopped.tokens, free.tokens[..=first]);
    assert_eq!(stopped.stats.decode_steps, first);
    assert_eq!(stopped.stats.tokens_seen, chat(0).len() + first);
}

#[test]
fn explicit_keep_all_equals_none() {
    let m = model(WeightFormat::F32);
    let opts = GenerateOptions {
        max_new_tokens: 8,
        stop_tokens: vec![],
    };
    let ids = prompt(1030);
    let full = Engine::new(m)
        .generate(&ids, &mut FullCache, &opts)
        .unwrap();
    let all = Engine::new(m)
        .generate(&ids, &mut KeepAllExplicit, &opts)
        .unwrap();
    assert_eq!(full.tokens, all.tokens);
    assert_eq!(all.stats.invocations.len(), 2);
    assert!(all.stats.kept_per_layer.iter().all(|&k| k == 1037));
    assert_eq!(all.stats.mean_kept_fraction, 1.0);

    let mut a = Session::new(m, PolicyInputs::default()).unwrap();
    let mut b = Session::new(m, KeepAllExplicit.inputs()).unwrap();
    let la = a.feed(&ids, &mut FullCache).unwrap();
    let lb = b.feed(&ids, &mut KeepAllExplicit).unwrap();
    assert_eq!(la, lb, "logits must be bitwise identical");
}

/// Reference for eviction: the whole sequence recomputed without a cache, in plain loops,
/// where queries at positions ≥ `from` cannot see the keys `hidden(pos, head, layer)`.
fn masked_reference(
    m: &Model,
    ids: &[u32],
    from: usize,
    hidden: impl Fn(u32, usize, usize) -> bool,
) -> Vec<f32> {
    let cfg = m.config();
    let (hq, d, g) = (cfg.n_heads, cfg.head_dim, cfg.group_size());
    let t = ids.len();
    let mut x = m.embed(ids).unwrap();
    for layer in 0..cfg.n_layers {
        let (q, k, v) = m.qkv(layer, &x, 0).unwrap();
        let q: Vec<f32> = q.flatten_all().unwrap().to_vec1().unwrap();
        let k: Vec<f32> = k.flatten_all().unwrap().to_vec1().unwrap();
        let v: Vec<f32> = v.flatten_all().unwrap().to_vec1().unwrap();
        let mut y = vec![0f32; hq * t * d];
        for qh in 0..hq {
            let kh = qh / g;
            for i in 0..t {
                let qi = &q[(qh * t + i) * d..][..d];
                let visible: Vec<usize> = (0..=i)
                    .filter(|&j| i < from || j >= from || !hidden(j as u32, kh, layer))
                    .collect();
                let scores: Vec<f32> = visible
                    .iter()
                    .map(|&j| {
                        let kj = &k[(kh * t + j) * d..][..d];
                        qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() / (d as f32).sqrt()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f32 = e.iter().sum();
                let yi = &mut y[(qh * t + i) * d..][..d];
                for (&j, w) in visible.iter().zip(&e) {
                    let vj = &v[(kh * t + j) * d..][..d];
                    for (o, vv) in yi.iter_mut().zip(vj) {
                        *o += w / sum * vv;
                    }
                }
            }
        }
        let y = Tensor::from_vec(y, (hq, t, d), &Device::Cpu).unwrap();
        x = m.attn_residual(layer, &x, &y).unwrap();
        x = m.mlp_residual(layer, &x).unwrap();
    }
    m.logits(&x).unwrap().to_vec1().unwrap()
}

#[test]
fn eviction_matches_masked_reference() {
    let m = model(WeightFormat::F32);
    let ids = prompt(600);
    let mut session = Session::new(m, PolicyInputs::default()).unwrap();
    let got = session.feed(&ids, &mut DropPattern).unwrap();
    // Every head of every layer dropped exactly a quarter of the first 512 tokens.
    assert!(session.kept_per_layer().iter().all(|&k| k == 384 + 88));
    for (layer, heads) in session.positions().iter().enumerate() {
        for (h, pos) in heads.iter().enumerate() {
            assert!(pos.iter().all(|&p| p >= 512 || !dropped(p, h, layer)));
            assert!(pos.windows(2).all(|w| w[0] < w[1]));
        }
    }
    let want = masked_reference(m, &ids, 512, dropped);
    let d = max_abs_diff(&got, &want);
    assert!(
        d <= 2e-3,
        "evicted cache vs masked reference: max |Δ| = {d}"
    );
    // The eviction matters: the full cache gives clearly different logits.
    let full = Session::new(m, PolicyInputs::default())
        .unwrap()
        .feed(&ids, &mut FullCache)
        .unwrap();
    assert!(max_abs_diff(&full, &want) > 0.05);
}

#[derive(Debug, Clone, PartialEq)]
struct Seen {
    layer: usize,
    tokens_seen: usize,
    n_tokens: usize,
    n_new: usize,
}

/// Records every invocation, checks the attention it is handed, keeps every other token.
#[derive(Default)]
struct Recorder {
    seen: Vec<Seen>,
    resets: usize,
}
impl MemoryPolicy for Recorder {
    fn name(&self) -> String {
        "recorder".into()
    }
    fn inputs(&self) -> PolicyInputs {
        PolicyInputs {
            attention: true,
            key_norms: true,
            surprisal: false,
        }
    }
    fn reset(&mut self) {
        self.resets += 1;
    }
    fn select(&mut self, v: &LayerView<'_>) -> Option<Vec<Vec<usize>>> {
        let (h, n, nn) = (v.n_heads, v.n_tokens, v.n_new);
        assert_eq!(v.attn.len(), h * nn * n);
        assert_eq!(v.positions.len(), h * n);
        assert_eq!(v.key_norms.len(), h * n);
        assert!(v.key_norms.iter().all(|&x| x.is_finite() && x > 0.0));
        for head in 0..h {
            let pos = &v.positions[head * n..][..n];
            let expected: Vec<u32> = (v.tokens_seen - nn..v.tokens_seen)
                .map(|p| p as u32)
                .collect();
            assert_eq!(&pos[n - nn..], expected.as_slice(), "new tokens' positions");
            for i in 0..nn {
                let row = &v.attn[(head * nn + i) * n..][..n];
                let sum: f32 = row.iter().sum();
                assert!(
                    (sum - 1.0).abs() < 1e-4,
                    "layer {} row {i} sums to {sum}",
                    v.layer
                );
                assert!(
                    row[n - nn + i + 1..].iter().all(|&a| a == 0.0),
                    "row {i} attends to a later token"
                );
            }
        }
        self.seen.push(Seen {
            layer: v.layer,
            tokens_seen: v.tokens_seen,
            n_tokens: n,
            n_new: nn,
        });
        let keep: Vec<usize> = (0..n).filter(|i| i % 2 == 0 || *i == n - 1).collect();
        Some(vec![keep; h])
    }
}

#[test]
fn invocation_schedule_follows_spec() {
    let m = model(WeightFormat::F32);
    let layers = m.config().n_layers;
    let mut rec = Recorder::default();
    let opts = GenerateOptions {
        max_new_tokens: 245,
        stop_tokens: vec![],
    };
    let out = Engine::new(m)
        .generate(&prompt(1300), &mut rec, &opts)
        .unwrap();
    assert_eq!(rec.resets, 1);
    assert_eq!(out.stop_reason, StopReason::MaxTokens);
    assert_eq!(out.tokens.len(), 245);
    // 1300 prompt tokens + 244 generated tokens fed back.
    assert_eq!(out.stats.tokens_seen, 1544);
    let keep_half = |n: usize| n.div_ceil(2) + usize::from(n.is_multiple_of(2));
    let n1 = 512;
    let n2 = keep_half(n1) + 512;
    let n3 = keep_half(n2) + 512;
    let mut expected = Vec::new();
    for (t, n) in [(512, n1), (1024, n2), (1536, n3)] {
        for layer in 0..layers {
            expected.push(Seen {
                layer,
                tokens_seen: t,
                n_tokens: n,
                n_new: 512,
            });
        }
    }
    assert_eq!(rec.seen, expected);
    let invoked: Vec<usize> = out
        .stats
        .invocations
        .iter()
        .map(|i| i.tokens_seen)
        .collect();
    assert_eq!(invoked, [512, 1024, 1536]);
    assert!(out.stats.invocations[2]
        .kept_per_layer
        .iter()
        .all(|&k| k == keep_half(n3)));
    assert!(out
        .stats
        .kept_per_layer
        .iter()
        .all(|&k| k == keep_half(n3) + 8));
    let frac = (keep_half(n3) + 8) as f64 / 1544.0;
    assert!((out.stats.mean_kept_fraction - frac).abs() < 1e-12);
    let cfg = m.config();
    let per_token = 2 * cfg.n_kv_heads * cfg.head_dim * 4 * layers;
    // Largest live cache: just before the invocation at T = 1536 (N = n3).
    assert_eq!(out.stats.peak_kv_bytes, per_token * n3);
    assert_eq!(out.stats.decode_steps, 244);
}

#[test]
fn positions_up_to_the_context_length() {
    let m = model(WeightFormat::F32);
    let ctx = m.config().context_length;
    assert_eq!(ctx, 8192);
    let err = Session::new(m, PolicyInputs::default())
        .unwrap()
        .feed(&prompt(ctx + 1), &mut FullCache)
        .unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::Model(ModelError::ContextExceeded {
                position: 8192,
                context: 8192
            })
        ),
        "{err}"
    );

    let opts = GenerateOptions {
        max_new_tokens: 10,
        stop_tokens: vec![],
    };
    let ids = prompt(ctx - 1);
    let out = Engine::new(m)
        .generate(&ids[..ctx - 2], &mut Recent { window: 64 }, &opts)
        .unwrap();
    // Far past quantized_llama's 4096 limit the model still continues the repeating text it
    // is fed (the cache after the last prefill invocation, 64 + 510 tokens, spans more than
    // the 307-token period).
    assert_eq!(out.tokens[0], ids[ctx - 2]);
    // Two tokens fed back reach T = 8192, where the policy runs a last time; the third
    // would not fit.
    assert_eq!(out.stop_reason, StopReason::ContextFull);
    assert_eq!(out.tokens.len(), 3);
    assert_eq!(out.stats.tokens_seen, ctx);
    let invoked: Vec<usize> = out
        .stats
        .invocations
        .iter()
        .map(|i| i.tokens_seen)
        .collect();
    assert_eq!(
        invoked,
        (1..=ctx / 512).map(|k| k * 512).collect::<Vec<_>>()
    );
    assert!(out.stats.kept_per_layer.iter().all(|&k| k == 64));
}

#[test]
fn forked_prefix_equals_fresh_generation() {
    let m = model(WeightFormat::F32);
    let ids = prompt(700);
    let opts = GenerateOptions {
        max_new_tokens: 6,
        stop_tokens: vec![],
    };
    let mut prefix = Session::new(
        m,
        PolicyInputs {
            attention: true,
            key_norms: true,
            surprisal: false,
        },
    )
    .unwrap();
    prefix.feed_prefix(&ids[..256]).unwrap();
    let engine = Engine::new(m);
    for policy in [
        &mut Recorder::default() as &mut dyn MemoryPolicy,
        &mut Recent { window: 100 },
    ] {
        let fresh = engine.generate(&ids, policy, &opts).unwrap();
        let forked = engine
            .generate_from(&prefix, &ids[256..], policy, &opts)
            .unwrap();
        assert_eq!(fresh.tokens, forked.tokens, "{}", policy.name());
        assert_eq!(fresh.stats.kept_per_layer, forked.stats.kept_per_layer);
        assert_eq!(fresh.stats.invocations, forked.stats.invocations);
        assert_eq!(forked.stats.prefill_tokens, 700 - 256);
        assert_eq!(forked.stats.prompt_tokens, 700);
    }
    assert_eq!(prefix.tokens_seen(), 256);
    assert!(prefix.kept_per_layer().iter().all(|&k| k == 256));
    let err = prefix.fork().unwrap().feed_prefix(&ids[..256]).unwrap_err();
    assert!(
        matches!(err, EngineError::PrefixReachesInvocation { .. }),
        "{err}"
    );
}

/// A policy that breaks the contract gets a named error, not a corrupted cache.
struct Broken;
impl MemoryPolicy for Broken {
    fn name(&self) -> String {
        "broken".into()
    }
    fn inputs(&self) -> PolicyInputs {
        PolicyInputs::default()
    }
    fn reset(&mut self) {}
    fn select(&mut self, v: &LayerView<'_>) -> Option<Vec<Vec<usize>>> {
        let mut kept = vec![vec![0, 1, 2]; v.n_heads];
        kept[1] = vec![0, 1];
        Some(kept)
    }
}

#[test]
fn invalid_selection_is_an_error() {
    let m = model(WeightFormat::F32);
    let err = Engine::new(m)
        .generate(
            &prompt(512),
            &mut Broken,
            &GenerateOptions {
                max_new_tokens: 1,
                stop_tokens: vec![],
            },
        )
        .unwrap_err();
    match err {
        EngineError::BadSelection {
            layer: 0,
            ref reason,
            ..
        } => {
            assert!(reason.contains("head 1 keeps 2 tokens"), "{reason}")
        }
        e => panic!("unexpected error {e}"),
    }
    let err = Engine::new(m).generate(
        &[],
        &mut FullCache,
        &GenerateOptions {
            max_new_tokens: 1,
            stop_tokens: vec![],
        },
    );
    assert!(matches!(err, Err(EngineError::EmptyInput)));
    let err = Session::new(m, PolicyInputs::default())
        .unwrap()
        .feed(&[49152], &mut FullCache)
        .unwrap_err();
    assert!(
        matches!(
            err,
            EngineError::Model(ModelError::TokenOutOfRange { id: 49152, .. })
        ),
        "{err}"
    );
    let err = Session::new(m, PolicyInputs::default())
        .unwrap()
        .feed(&prompt(10), &mut KeepAllExplicit)
        .unwrap_err();
    assert!(
        matches!(err, EngineError::AttentionNotRecorded { .. }),
        "{err}"
    );
}

#[test]
fn device_specs() {
    use namm::model::parse_device;
    assert!(parse_device("cpu").unwrap().is_cpu());
    for spec in ["gpu", "cuda:x", "cuda:-1", ""] {
        let err = parse_device(spec).unwrap_err();
        assert!(matches!(err, ModelError::BadDevice { .. }), "{spec}: {err}");
    }
    #[cfg(not(feature = "cuda"))]
    assert!(matches!(
        parse_device("cuda:0"),
        Err(ModelError::BadDevice { .. })
    ));
}

#[test]
fn bad_model_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let load = |p: &std::path::Path| Model::load(p, &Device::Cpu, WeightFormat::Gguf).map(|_| ());

    let missing = dir.path().join("missing.gguf");
    assert!(matches!(load(&missing), Err(ModelError::Open { .. })));

    let garbage = dir.path().join("garbage.gguf");
    std::fs::write(&garbage, b"definitely not a gguf file at all").unwrap();
    let err = load(&garbage).unwrap_err();
    assert!(matches!(err, ModelError::BadGguf { .. }), "{err}");

    let bytes = std::fs::read(model_path()).unwrap();
    let header_cut = dir.path().join("header_cut.gguf");
    std::fs::write(&header_cut, &bytes[..1000]).unwrap();
    let err = load(&header_cut).unwrap_err();
    assert!(matches!(err, ModelError::BadGguf { .. }), "{err}");

    let data_cut = dir.path().join("data_cut.gguf");
    std::fs::write(&data_cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = load(&data_cut).unwrap_err();
    assert!(matches!(err, ModelError::BadTensor { .. }), "{err}");

    // Rewritten metadata: another architecture, a missing key, no tensors.
    let mut file = std::fs::File::open(model_path()).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let write = |name: &str, edit: &dyn Fn(&mut Vec<(String, gguf_file::Value)>)| {
        let mut md: Vec<(String, gguf_file::Value)> = content
            .metadata
            .iter()
            .filter(|(k, _)| !k.starts_with("tokenizer."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        edit(&mut md);
        let refs: Vec<(&str, &gguf_file::Value)> =
            md.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let path = dir.path().join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        gguf_file::write(&mut f, &refs, &[]).unwrap();
        path
    };
    let gpt2 = write("gpt2.gguf", &|md| {
        for (k, v) in md.iter_mut() {
            if k == "general.architecture" {
                *v = gguf_file::Value::String("gpt2".into());
            }
        }
    });
    let err = load(&gpt2).unwrap_err();
    assert!(
        matches!(err, ModelError::UnsupportedArchitecture { ref found, .. } if found == "gpt2"),
        "{err}"
    );
    let no_ctx = write("no_ctx.gguf", &|md| {
        md.retain(|(k, _)| k != "llama.context_length")
    });
    let err = load(&no_ctx).unwrap_err();
    assert!(
        matches!(err, ModelError::MissingMetadata { ref key, .. } if key == "llama.context_length"),
        "{err}"
    );
    let no_tensors = write("no_tensors.gguf", &|_| {});
    let err = load(&no_tensors).unwrap_err();
    assert!(
        matches!(err, ModelError::BadTensor { ref name, .. } if name == "token_embd.weight"),
        "{err}"
    );
}

/// Keeps everything and records the surprisal it is shown at each invocation.
#[derive(Default)]
struct SurprisalProbe {
    seen: Vec<Vec<f32>>,
}
impl MemoryPolicy for SurprisalProbe {
    fn name(&self) -> String {
        "surprisal-probe".into()
    }
    fn inputs(&self) -> PolicyInputs {
        PolicyInputs {
            surprisal: true,
            ..PolicyInputs::default()
        }
    }
    fn reset(&mut self) {}
    fn select(&mut self, v: &LayerView<'_>) -> Option<Vec<Vec<usize>>> {
        if v.layer == 0 {
            self.seen.push(v.surprisal.to_vec());
        }
        None
    }
}

/// `−ln softmax(logits)[target]` in f64.
fn nats(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    sum.ln() + max - logits[target as usize] as f64
}

#[test]
fn surprisal_is_what_a_plain_forward_predicts() {
    let m = model(WeightFormat::Gguf);
    let ids = prompt(1030);
    // A shared prefix, then a feed, then decode steps: chunk edges at 128, 256, 300 and 512.
    let mut session = Session::new(m, SurprisalProbe::default().inputs()).unwrap();
    session.feed_prefix(&ids[..300]).unwrap();
    let mut probe = SurprisalProbe::default();
    session.feed(&ids[300..1020], &mut probe).unwrap();
    for &id in &ids[1020..1024] {
        session.feed(&[id], &mut probe).unwrap();
    }
    assert_eq!(probe.seen.len(), 2, "invocations at 512 and 1024");
    assert_eq!(probe.seen[0].len(), 512);
    let record = &probe.seen[1];
    assert_eq!(record.len(), 1024);
    assert_eq!(record[0], (m.config().vocab as f32).ln());
    assert_eq!(&record[..512], &probe.seen[0][..]);
    // The reference: a full-cache session fed up to t − 1, whose last logits predict token t
    // (its own chunk edges differ from the probe's).
    let mut reference = Session::new(m, PolicyInputs::default()).unwrap();
    let mut fed = 0;
    for t in [1, 127, 128, 129, 299, 300, 511, 512, 1019, 1020, 1023] {
        let logits = reference.feed(&ids[fed..t], &mut FullCache).unwrap();
        fed = t;
        let want = nats(&logits, ids[t]);
        let d = (record[t] as f64 - want).abs();
        // A single-token step and a chunk quantise activations differently (0.1 nats seen);
        // a misaligned record would be off by nats.
        assert!(d < 0.25, "position {t}: recorded {} vs {want}", record[t]);
    }
    // Repeated text is predicted: the tokens of the second copy are far less surprising.
    let mean = |r: &[f32]| r.iter().map(|&v| v as f64).sum::<f64>() / r.len() as f64;
    let period = prompt(4096)
        .windows(8)
        .skip(1)
        .position(|w| w == &ids[..8])
        .unwrap()
        + 1;
    assert!(period < 500, "the fixture repeats every {period} tokens");
    assert!(mean(&record[period + 8..2 * period]) < 0.5 * mean(&record[8..period]));
}

#[test]
fn a_policy_reading_surprisal_needs_it_recorded_from_the_start() {
    let m = model(WeightFormat::Gguf);
    let ids = prompt(520);
    let mut plain = Session::new(m, PolicyInputs::default()).unwrap();
    let err = plain
        .feed(&ids, &mut SurprisalProbe::default())
        .unwrap_err();
    assert!(
        matches!(err, EngineError::SurprisalNotRecorded { .. }),
        "{err}"
    );
    // A chunk fed under a policy that does not read it leaves a gap no later policy may use.
    let mut gap = Session::new(m, SurprisalProbe::default().inputs()).unwrap();
    gap.feed(&ids[..200], &mut FullCache).unwrap();
    let err = gap
        .feed(&ids[200..], &mut SurprisalProbe::default())
        .unwrap_err();
    assert!(err.to_string().contains("surprisal"), "{err}");
}
