//! The NAMM policy behind the engine's trait: state carried across invocations, the f32
//! production path against the f64 path, parameter files, statistics accumulation.

use namm::policy::{
    parse_policy, BamLayout, Budget, FeatureSet, Invocation, LayerView, MemoryPolicy, NammCore,
    NammParams, NammPolicy, NormMode,
};
use namm::stats::NormStats;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Causal softmax attention of `n_new` new queries over `n` keys, `[heads][n_new][n]`.
fn attention(rng: &mut ChaCha8Rng, heads: usize, n: usize, n_new: usize) -> Vec<f32> {
    let n_old = n - n_new;
    let mut a = vec![0.0f32; heads * n_new * n];
    for h in 0..heads {
        for i in 0..n_new {
            let row = &mut a[(h * n_new + i) * n..(h * n_new + i + 1) * n];
            let visible = n_old + i + 1;
            let logits: Vec<f32> = (0..visible).map(|_| rng.random_range(-3.0..3.0)).collect();
            let sum: f32 = logits.iter().map(|l| l.exp()).sum();
            for (r, l) in row.iter_mut().zip(&logits) {
                *r = l.exp() / sum;
            }
        }
    }
    a
}

/// Appends the next `n_new` positions to every head's cached positions and draws the
/// invocation's attention; returns it with the positions flattened head-major.
fn next_invocation(
    rng: &mut ChaCha8Rng,
    pos: &mut [Vec<u32>],
    seen: &mut usize,
    n_new: usize,
) -> (Vec<f32>, Vec<u32>) {
    for p in pos.iter_mut() {
        p.extend(*seen as u32..(*seen + n_new) as u32);
    }
    *seen += n_new;
    let attn = attention(rng, pos.len(), pos[0].len(), n_new);
    (attn, pos.concat())
}

fn random_params(seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..BamLayout::I1.param_count())
        .map(|_| rng.random_range(-0.4..0.4))
        .collect()
}

fn frozen() -> NormMode {
    NormMode::Frozen(NormStats::new(vec![0.01; 17], vec![1e-4; 17], 100.0).unwrap())
}

/// Three invocations on two layers through the trait, fed like the engine feeds it, and the
/// same through the f64 core: identical kept sets, scores within f32 rounding.
#[test]
fn trait_path_in_f32_selects_like_the_f64_core_across_invocations() {
    let params = random_params(7);
    let mut policy = NammPolicy::new(params.clone(), frozen()).unwrap();
    let mut core = NammCore::<f64>::new(&params, frozen()).unwrap();
    let heads = 3;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut held = [0usize; 2];
    let mut positions: Vec<Vec<Vec<u32>>> = vec![vec![Vec::new(); heads]; 2];
    let mut evicted_somewhere = false;
    for t in 0..3 {
        let n_new = 64;
        for layer in 0..2 {
            let n = held[layer] + n_new;
            let attn = attention(&mut rng, heads, n, n_new);
            let pos: Vec<u32> = positions[layer]
                .iter()
                .flat_map(|p| {
                    p.iter()
                        .copied()
                        .chain((t * 64) as u32..(t * 64 + 64) as u32)
                })
                .collect();
            let view = LayerView {
                layer,
                n_heads: heads,
                n_tokens: n,
                n_new,
                attn: &attn,
                positions: &pos,
                key_norms: &[],
                surprisal: &[],
                tokens_seen: (t + 1) * 64,
            };
            let kept = policy
                .select(&view)
                .unwrap_or_else(|| vec![(0..n).collect(); heads]);
            let attn64: Vec<f64> = attn.iter().map(|&v| v as f64).collect();
            let kept64 = core
                .invoke(&Invocation {
                    layer,
                    n_heads: heads,
                    n_tokens: n,
                    n_new,
                    attn: &attn64,
                    positions: &pos,
                    surprisal: &[],
                })
                .unwrap();
            assert_eq!(kept, kept64, "invocation {t} layer {layer}");
            let k = kept[0].len();
            assert!(kept
                .iter()
                .all(|h| h.len() == k && h.last() == Some(&(n - 1))));
            evicted_somewhere |= k < n;
            held[layer] = k;
            positions[layer] = kept
                .iter()
                .enumerate()
                .map(|(h, idx)| idx.iter().map(|&j| pos[h * n + j]).collect())
                .collect();
            let s32 = policy.core().scores();
            let s64 = core.scores();
            for (a, b) in s32.iter().zip(s64) {
                assert!(
                    (*a as f64 - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{a} vs {b}"
                );
            }
        }
    }
    assert!(evicted_somewhere, "random θ should evict something");
}

#[test]
fn zero_parameters_keep_everything_and_accumulate_statistics() {
    let mut policy = NammPolicy::new(vec![0.0; 4172], NormMode::accumulate()).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (heads, n) = (3, 48);
    let attn = attention(&mut rng, heads, n, n);
    let pos: Vec<u32> = (0..heads).flat_map(|_| 0..n as u32).collect();
    let view = LayerView {
        layer: 0,
        n_heads: heads,
        n_tokens: n,
        n_new: n,
        attn: &attn,
        positions: &pos,
        key_norms: &[],
        surprisal: &[],
        tokens_seen: n,
    };
    assert_eq!(policy.select(&view), None);
    assert_eq!(policy.norm_stats().count, (heads * n) as f64);
    assert!(policy.norm_stats().mean.iter().all(|&m| m > 0.0));
    assert_eq!(policy.select(&LayerView { layer: 1, ..view }), None);
    assert_eq!(policy.norm_stats().count, (2 * heads * n) as f64);
}

#[test]
fn malformed_views_keep_everything_without_panicking() {
    let mut policy = NammPolicy::random(BamLayout::I1, 0.2, 1);
    let attn = vec![0.1f32; 3 * 20 * 20];
    let pos: Vec<u32> = (0..60).collect();
    let view = LayerView {
        layer: 0,
        n_heads: 3,
        n_tokens: 20,
        n_new: 20,
        attn: &attn,
        positions: &pos,
        key_norms: &[],
        surprisal: &[],
        tokens_seen: 20,
    };
    // n = 20 is not a multiple of 16.
    assert_eq!(policy.select(&view), None);
    // Attention of the wrong size.
    let short = LayerView {
        n_new: 16,
        attn: &attn[..10],
        ..view
    };
    assert_eq!(policy.select(&short), None);
}

#[test]
fn parameter_files_build_the_same_policy() {
    let params = random_params(9);
    let stats = NormStats::new(vec![0.02; 17], vec![2e-4; 17], 10.0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("best.safetensors");
    NammParams {
        params: params.clone(),
        stats: stats.clone(),
        metadata: Default::default(),
    }
    .save(&path)
    .unwrap();
    let mut from_file = parse_policy(&format!("namm:{}", path.display())).unwrap();
    let mut direct = NammPolicy::new(params, NormMode::Frozen(stats)).unwrap();
    assert!(from_file.name().starts_with("namm:") && from_file.inputs().attention);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let attn = attention(&mut rng, 2, 32, 32);
    let pos: Vec<u32> = (0..2).flat_map(|_| 0..32u32).collect();
    let view = LayerView {
        layer: 0,
        n_heads: 2,
        n_tokens: 32,
        n_new: 32,
        attn: &attn,
        positions: &pos,
        key_norms: &[],
        surprisal: &[],
        tokens_seen: 32,
    };
    assert_eq!(from_file.select(&view), direct.select(&view));
}

#[test]
fn heads_on_threads_compute_exactly_what_one_thread_computes() {
    let params = random_params(11);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (heads, n) = (3, 512);
    let attn = attention(&mut rng, heads, n, n);
    let pos: Vec<u32> = (0..heads).flat_map(|_| 0..n as u32).collect();
    let inv = Invocation {
        layer: 0,
        n_heads: heads,
        n_tokens: n,
        n_new: n,
        attn: &attn,
        positions: &pos,
        surprisal: &[],
    };
    let mut serial = NammCore::<f32>::new(&params, frozen()).unwrap();
    serial.set_threads(1);
    let mut parallel = NammCore::<f32>::new(&params, frozen()).unwrap();
    parallel.set_threads(4);
    assert_eq!(serial.invoke(&inv).unwrap(), parallel.invoke(&inv).unwrap());
    assert_eq!(serial.scores(), parallel.scores());
    assert_eq!(serial.features(), parallel.features());
}

/// The shipped trained NAMM (`assets/namm-smollm2-135m.safetensors`) loads as `namm:default`,
/// with frozen statistics, where it came from and the budget it applies.
#[test]
fn the_shipped_namm_loads_as_default() {
    let path = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../",
        "assets/namm-smollm2-135m.safetensors"
    ));
    let file = NammParams::load(path).unwrap();
    assert_eq!(file.params.len(), namm::policy::PARAM_COUNT);
    assert!(file.params.iter().all(|v| v.is_finite()));
    assert!(
        file.params.iter().any(|&v| v != 0.0),
        "an evolved θ, not zeros"
    );
    assert!(
        file.stats.count > 0.0,
        "statistics frozen from a reference pass"
    );
    assert_eq!(
        file.metadata.get("model_sha256").map(String::as_str),
        Some(namm::spec::DEFAULT_MODEL_SHA256)
    );
    assert!(
        file.budget().unwrap().is_some(),
        "the shipped NAMM records the budget it was trained at"
    );
    let recipe = namm::spec::RunSpec::default_namm().namm.unwrap();
    assert_eq!(
        file.feature_set().unwrap(),
        recipe.features,
        "the shipped NAMM was trained with the default recipe's features"
    );
    let policy = parse_policy("namm:default").unwrap();
    assert!(policy.name().starts_with("namm:"), "{}", policy.name());
    assert!(policy.name().contains(",budget="), "{}", policy.name());
    assert!(policy.inputs().attention);
}

/// The hand-set start of the window feature set (`assets/namm-window-start.safetensors`)
/// ranks tokens by SnapKV's score, so at the same budget it keeps what SnapKV keeps (up to
/// rounding: SnapKV sums in f32, the feature in f64), across invocations; the spectral NAMM
/// with the same θ reads the Nyquist bin instead and keeps something else.
#[test]
fn the_window_start_keeps_what_snapkv_keeps() {
    let path = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../assets/namm-window-start.safetensors"
    ));
    let file = NammParams::load(path).unwrap();
    assert_eq!(file.feature_set().unwrap(), FeatureSet::Window);
    let mut namm = NammPolicy::from_file_with_budget(path, Some(Budget::Fraction(0.25))).unwrap();
    assert_eq!(namm.feature_set(), FeatureSet::Window);
    let mut spectral = NammPolicy::new(file.params.clone(), NormMode::accumulate())
        .unwrap()
        .with_budget(Some(Budget::Fraction(0.25)));
    let mut snapkv = parse_policy("snapkv:budget=0.25").unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (heads, n_new) = (3, 512);
    let (mut n_old, mut seen, mut pos) = (0usize, 0usize, vec![Vec::<u32>::new(); heads]);
    let (mut agree, mut total, mut differs) = (0usize, 0usize, false);
    for _ in 0..3 {
        let n = n_old + n_new;
        let (attn, flat) = next_invocation(&mut rng, &mut pos, &mut seen, n_new);
        let view = LayerView {
            layer: 0,
            n_heads: heads,
            n_tokens: n,
            n_new,
            attn: &attn,
            positions: &flat,
            key_norms: &[],
            surprisal: &[],
            tokens_seen: seen,
        };
        let ours = namm.select(&view).expect("the budget evicts");
        let theirs = snapkv.select(&view).expect("the budget evicts");
        let other = spectral.select(&view).expect("the budget evicts");
        differs |= other != ours;
        for (a, b) in ours.iter().zip(&theirs) {
            assert_eq!(a.len(), b.len());
            agree += a.iter().filter(|j| b.binary_search(j).is_ok()).count();
            total += a.len();
        }
        // Everyone continues from the window NAMM's selection (SnapKV and the spectral NAMM
        // are stateless or keep their own state aligned with what they were given).
        n_old = ours[0].len();
        for (p, kept) in pos.iter_mut().zip(&ours) {
            *p = kept.iter().map(|&j| p[j]).collect();
        }
        spectral.reset();
    }
    assert!(
        agree * 1000 >= total * 995,
        "{agree} of {total} kept tokens agree"
    );
    assert!(differs, "the spectral features must rank differently");
}

/// The hand-set start of the surprisal feature set (`assets/namm-surprisal-start.safetensors`)
/// keeps every token of a surprising span (a needle in predictable filler) and the newest
/// tokens, across invocations and whatever attention the heads paid; SnapKV's ranking (the
/// window start) under the same attention loses needle tokens.
#[test]
fn the_surprisal_start_keeps_surprising_spans_and_the_newest_tokens() {
    let path = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../assets/namm-surprisal-start.safetensors"
    ));
    let file = NammParams::load(path).unwrap();
    assert_eq!(file.feature_set().unwrap(), FeatureSet::Surprisal);
    let budget = Some(Budget::Fraction(0.25));
    let mut namm = NammPolicy::from_file_with_budget(path, budget).unwrap();
    assert!(namm.inputs().surprisal && namm.inputs().attention);
    let mut snapkv = parse_policy("snapkv:budget=0.25").unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let (heads, n_new) = (3, 512);
    // Needles of 7 tokens at 5 nats in filler at 0.05, four per 512 tokens.
    let needles: Vec<usize> = (0..2)
        .flat_map(|c| [40, 170, 300, 420].map(|s| c * 512 + s))
        .flat_map(|s| s..s + 7)
        .collect();
    let record: Vec<f32> = (0..1024)
        .map(|p| if needles.contains(&p) { 5.0 } else { 0.05 })
        .collect();
    let (mut seen, mut pos) = (0usize, vec![Vec::<u32>::new(); heads]);
    let mut snapkv_lost = 0;
    for _ in 0..2 {
        let n = pos[0].len() + n_new;
        let (attn, flat) = next_invocation(&mut rng, &mut pos, &mut seen, n_new);
        let view = LayerView {
            layer: 0,
            n_heads: heads,
            n_tokens: n,
            n_new,
            attn: &attn,
            positions: &flat,
            key_norms: &[],
            surprisal: &record[..seen],
            tokens_seen: seen,
        };
        let ours = namm.select(&view).expect("the budget evicts");
        let theirs = snapkv.select(&view).expect("the budget evicts");
        for (h, (p, kept)) in pos.iter_mut().zip(&ours).enumerate() {
            assert!(
                kept.len() <= seen / 4,
                "head {h} keeps {} of {seen}",
                kept.len()
            );
            *p = kept.iter().map(|&j| p[j]).collect();
            for want in needles
                .iter()
                .filter(|&&q| q < seen)
                .chain(&[seen - 16, seen - 1])
            {
                assert!(p.contains(&(*want as u32)), "head {h} lost position {want}");
            }
            let snap: Vec<u32> = theirs[h].iter().map(|&j| flat[h * n + j]).collect();
            snapkv_lost += needles
                .iter()
                .filter(|&&q| q < seen && !snap.contains(&(q as u32)))
                .count();
        }
    }
    assert!(
        snapkv_lost > 0,
        "SnapKV's ranking must lose needle tokens here"
    );
}
