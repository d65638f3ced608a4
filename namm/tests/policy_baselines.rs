//! Baseline selections on small hand-made layer views, and policy-spec parsing.

use namm::policy::{parse_policy, Budget, LayerView, MemoryPolicy, PolicyError};

struct View {
    heads: usize,
    n: usize,
    n_new: usize,
    attn: Vec<f32>,
    positions: Vec<u32>,
    key_norms: Vec<f32>,
    seen: usize,
}

impl View {
    /// Uniform causal attention over `n` tokens of which `n_new` are new.
    fn new(heads: usize, n: usize, n_new: usize) -> View {
        let n_old = n - n_new;
        let mut attn = vec![0.0; heads * n_new * n];
        for h in 0..heads {
            for i in 0..n_new {
                let visible = n_old + i + 1;
                for j in 0..visible {
                    attn[(h * n_new + i) * n + j] = 1.0 / visible as f32;
                }
            }
        }
        View {
            heads,
            n,
            n_new,
            attn,
            positions: (0..heads).flat_map(|_| 0..n as u32).collect(),
            key_norms: vec![1.0; heads * n],
            seen: n,
        }
    }

    fn set_attn(&mut self, h: usize, i: usize, j: usize, v: f32) {
        self.attn[(h * self.n_new + i) * self.n + j] = v;
    }

    fn view(&self, layer: usize) -> LayerView<'_> {
        LayerView {
            layer,
            n_heads: self.heads,
            n_tokens: self.n,
            n_new: self.n_new,
            attn: &self.attn,
            positions: &self.positions,
            key_norms: &self.key_norms,
            surprisal: &[],
            tokens_seen: self.seen,
        }
    }
}

fn policy(spec: &str) -> Box<dyn MemoryPolicy> {
    parse_policy(spec).unwrap_or_else(|e| panic!("{spec}: {e}"))
}

#[test]
fn full_keeps_everything() {
    let v = View::new(2, 10, 4);
    assert_eq!(policy("full").select(&v.view(0)), None);
}

#[test]
fn streaming_keeps_sinks_and_the_most_recent_tokens() {
    let v = View::new(2, 10, 4);
    let mut p = policy("streaming:sinks=2,budget=5");
    assert!(!p.inputs().attention);
    let kept = p.select(&v.view(0)).unwrap();
    assert_eq!(kept, vec![vec![0, 1, 7, 8, 9]; 2]);
}

#[test]
fn budget_fraction_counts_tokens_seen() {
    let mut v = View::new(1, 40, 16);
    v.seen = 100;
    // 0.25 · 100 = 25 tokens, of which 4 sinks and 21 recent.
    let kept = policy("streaming:budget=0.25").select(&v.view(0)).unwrap();
    assert_eq!(kept[0].len(), 25);
    assert_eq!(&kept[0][..5], &[0, 1, 2, 3, 19]);
    assert_eq!(Budget::Fraction(0.5).tokens(10, 4), 4);
    assert_eq!(Budget::Tokens(0).tokens(10, 4), 1);
}

#[test]
fn h2o_keeps_heavy_hitters_accumulated_across_invocations() {
    // Invocation 1: six tokens; head 0 pours attention onto token 1, head 1 onto token 2.
    let mut v = View::new(2, 6, 6);
    for i in 2..6 {
        v.set_attn(0, i, 1, 0.9);
        v.set_attn(1, i, 2, 0.9);
    }
    let mut p = policy("h2o:budget=4,recent=0.5");
    assert!(p.inputs().attention);
    let kept = p.select(&v.view(3)).unwrap();
    // Recent window 2 (tokens 4, 5); heavy hitters: the 0.9 token, then the token with the
    // most uniform mass (token 0: attended by all six queries).
    assert_eq!(kept, vec![vec![0, 1, 4, 5], vec![0, 2, 4, 5]]);

    // Invocation 2: the four survivors plus two new tokens. The new queries favour the
    // survivor at index 3 (0.6 in total against 0.02 for the other old tokens), but index 1
    // carries its accumulated lead from invocation 1 (≈ 4.1 on head 0, ≈ 3.6 on head 1).
    // Without the carried sums the choice would be [0, 3, 4, 5].
    let mut v2 = View::new(2, 6, 2);
    v2.seen = 8;
    for h in 0..2 {
        for i in 0..2 {
            for j in 0..6 {
                v2.set_attn(h, i, j, if j <= 4 + i { 0.01 } else { 0.0 });
            }
            v2.set_attn(h, i, 3, 0.3);
        }
    }
    let kept = p.select(&v2.view(3)).unwrap();
    assert_eq!(kept, vec![vec![0, 1, 4, 5]; 2]);
    // After a reset the same view starts a new history.
    p.reset();
    let fresh = p.select(&v2.view(3)).unwrap();
    assert_eq!(fresh, vec![vec![0, 3, 4, 5]; 2]);
}

#[test]
fn snapkv_pools_the_observation_window_and_keeps_the_window() {
    let mut v = View::new(1, 10, 4);
    // Last two queries (the observation window) put a peak on token 3.
    v.set_attn(0, 2, 3, 0.5);
    v.set_attn(0, 3, 3, 0.5);
    let kept = policy("snapkv:budget=4,window=2,kernel=3")
        .select(&v.view(0))
        .unwrap();
    // Max-pooling over 3 keys spreads the peak to tokens 2, 3, 4; the two oldest of them win
    // the tie; the window's own tokens 8 and 9 are kept.
    assert_eq!(kept, vec![vec![2, 3, 8, 9]]);
}

#[test]
fn tova_follows_the_newest_query() {
    let mut v = View::new(2, 8, 4);
    v.set_attn(0, 3, 2, 0.6);
    v.set_attn(0, 3, 5, 0.5);
    v.set_attn(1, 3, 0, 0.6);
    v.set_attn(1, 3, 6, 0.5);
    // An earlier query's preference must not matter.
    v.set_attn(0, 0, 1, 0.99);
    let kept = policy("tova:budget=3").select(&v.view(0)).unwrap();
    assert_eq!(kept, vec![vec![2, 5, 7], vec![0, 6, 7]]);
}

#[test]
fn knorm_keeps_the_smallest_key_norms() {
    let mut v = View::new(2, 6, 2);
    v.key_norms = vec![
        5.0, 0.5, 3.0, 0.7, 9.0, 4.0, // head 0
        0.1, 8.0, 0.2, 6.0, 7.0, 9.0, // head 1
    ];
    let mut p = policy("knorm:budget=3");
    assert!(p.inputs().key_norms && !p.inputs().attention);
    let kept = p.select(&v.view(0)).unwrap();
    // The newest token is kept whatever its norm.
    assert_eq!(kept, vec![vec![1, 3, 5], vec![0, 2, 5]]);
}

#[test]
fn random_is_seeded_per_layer_and_keeps_the_budget() {
    let v = View::new(3, 64, 16);
    let a = policy("random:budget=16,seed=3")
        .select(&v.view(2))
        .unwrap();
    let b = policy("random:budget=16,seed=3")
        .select(&v.view(2))
        .unwrap();
    let c = policy("random:budget=16,seed=4")
        .select(&v.view(2))
        .unwrap();
    let d = policy("random:budget=16,seed=3")
        .select(&v.view(5))
        .unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_ne!(a, d);
    for head in &a {
        assert_eq!(head.len(), 16);
        assert_eq!(*head.last().unwrap(), 63);
        assert!(head.windows(2).all(|w| w[0] < w[1]));
    }
}

#[test]
fn a_budget_above_the_cache_keeps_everything() {
    let v = View::new(2, 10, 4);
    assert_eq!(policy("tova:budget=512").select(&v.view(0)), None);
    assert_eq!(policy("h2o:budget=1.0").select(&v.view(0)), None);
}

#[test]
fn a_view_without_the_needed_inputs_keeps_everything_without_panicking() {
    let mut v = View::new(2, 10, 4);
    v.attn.clear();
    v.key_norms.clear();
    assert_eq!(policy("tova:budget=2").select(&v.view(0)), None);
    assert_eq!(policy("knorm:budget=2").select(&v.view(0)), None);
}

#[test]
fn specs_round_trip_through_names() {
    for (spec, name) in [
        ("h2o:budget=0.25", "h2o:budget=0.25,recent=0.5"),
        (
            "streaming:sinks=4,budget=512",
            "streaming:budget=512,sinks=4",
        ),
        ("random:budget=0.5,seed=3", "random:budget=0.5,seed=3"),
        ("snapkv", "snapkv:budget=0.25,window=32,kernel=7"),
        ("knorm:budget=100", "knorm:budget=100,recent=0.0"),
        ("tova:budget=0.1", "tova:budget=0.1"),
        ("full", "full"),
    ] {
        assert_eq!(policy(spec).name(), name);
        assert_eq!(policy(name).name(), name);
    }
}

fn parse_err(spec: &str) -> String {
    match parse_policy(spec) {
        Ok(p) => panic!("{spec} parsed as {}", p.name()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_specs_name_the_field_and_value() {
    let e = parse_err("h2o:budget=1.5");
    assert!(
        e.contains("`1.5`") && e.contains("`budget`") && e.contains("h2o"),
        "{e}"
    );
    let e = parse_err("h2o:budget=0");
    assert!(e.contains("`0`") && e.contains("`budget`"), "{e}");
    let e = parse_err("h2o:window=3");
    assert!(
        e.contains("`window`") && e.contains("budget, recent"),
        "{e}"
    );
    let e = parse_err("lru:budget=3");
    assert!(
        e.contains("`lru`") && e.contains("streaming") && e.contains("snapkv"),
        "{e}"
    );
    let e = parse_err("snapkv:kernel=4");
    assert!(e.contains("`4`") && e.contains("`kernel`"), "{e}");
    let e = parse_err("streaming:sinks");
    assert!(e.contains("`sinks` is not key=value"), "{e}");
    let e = parse_err("random:seed=1,seed=2");
    assert!(e.contains("twice"), "{e}");
    let e = parse_err("namm:/nonexistent/best.safetensors");
    assert!(e.contains("/nonexistent/best.safetensors"), "{e}");
    assert!(parse_err("namm:").contains("namm:PATH"));
    assert!(parse_err("full:budget=3").contains("no parameters"));
    assert!(matches!(
        parse_policy("h2o:budget=x"),
        Err(PolicyError::BadValue { key: "budget", .. })
    ));
}

#[test]
fn namm_default_is_found_or_reported_as_missing() {
    match parse_policy("namm:default") {
        Ok(p) => assert!(p.name().contains("namm-smollm2-135m.safetensors")),
        Err(e) => assert!(
            e.to_string()
                .contains("assets/namm-smollm2-135m.safetensors"),
            "{e}"
        ),
    }
}
