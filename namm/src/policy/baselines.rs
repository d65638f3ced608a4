//! Baseline eviction policies users compare NAMM against, behind the same trait and the same
//! 512-token schedule. Each keeps a budget of K tokens per head (every head of a layer the
//! same K), chosen per head by a score with some tokens protected; the newest token is always
//! kept. Ties go to the older token.
//!
//! * `full`: keeps everything.
//! * `streaming` (StreamingLLM): the first `sinks` cached tokens plus the most recent ones.
//! * `h2o` (Heavy-Hitter Oracle): attention each cached token has received, summed over every
//!   query since it entered the cache, plus a recent window (`recent` × K tokens, default ½).
//! * `snapkv`: attention from the last `window` queries (default 32), max-pooled over
//!   `kernel` (default 7) neighbouring keys, plus the window's own tokens.
//! * `tova`: attention of the newest query.
//! * `knorm` (the L2-norm baseline of Devoto et al. 2024): keeps the keys with the SMALLEST L2
//!   norm, which that paper finds are the ones later queries attend to most. No recent window
//!   by default, as in the paper (`recent` × K tokens can be protected).
//! * `random`: a seeded random subset; the draw depends on (seed, layer, tokens seen), so it
//!   is reproducible and independent of the order layers are visited.

use std::fmt;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::select::top_k;
use super::{LayerView, MemoryPolicy, PolicyInputs};

/// How many tokens a budget-driven policy keeps per head.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// A fraction in (0, 1] of the tokens the sequence has seen so far.
    Fraction(f64),
    /// A fixed token count (≥ 1).
    Tokens(usize),
}

impl Budget {
    /// K for a layer holding `n` tokens after `tokens_seen` tokens: at least 1, at most n.
    pub fn tokens(&self, tokens_seen: usize, n: usize) -> usize {
        let k = match *self {
            Budget::Fraction(f) => (f * tokens_seen as f64).ceil() as usize,
            Budget::Tokens(t) => t,
        };
        k.clamp(1, n.max(1))
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Budget::Fraction(x) => write!(f, "{x:?}"),
            Budget::Tokens(t) => write!(f, "{t}"),
        }
    }
}

/// Keeps every token.
#[derive(Debug, Default, Clone)]
pub struct FullCache;

impl MemoryPolicy for FullCache {
    fn name(&self) -> String {
        "full".into()
    }
    fn inputs(&self) -> PolicyInputs {
        PolicyInputs::default()
    }
    fn reset(&mut self) {}
    fn select(&mut self, _view: &LayerView<'_>) -> Option<Vec<Vec<usize>>> {
        None
    }
}

/// The scoring rule of a budget-driven baseline.
#[derive(Debug, Clone, PartialEq)]
pub enum BaselineKind {
    Streaming { sinks: usize },
    H2o { recent: f64 },
    SnapKv { window: usize, kernel: usize },
    Tova,
    KNorm { recent: f64 },
    Random { seed: u64 },
}

/// A budget-driven baseline; owns per-layer state only for `h2o` (accumulated attention).
#[derive(Debug, Clone)]
pub struct Baseline {
    kind: BaselineKind,
    budget: Budget,
    /// `h2o`: per layer, `[H][N]` attention accumulated by every cached token.
    accumulated: Vec<Option<Vec<f32>>>,
}

impl Baseline {
    pub fn new(kind: BaselineKind, budget: Budget) -> Self {
        Baseline {
            kind,
            budget,
            accumulated: Vec::new(),
        }
    }

    pub fn kind(&self) -> &BaselineKind {
        &self.kind
    }

    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// Ranking scores `[H][N]` (higher = keep; protected tokens +∞), or why the view is
    /// unusable.
    fn scores(&mut self, v: &LayerView<'_>, k: usize) -> Result<Vec<f32>, String> {
        let (heads, n, n_new) = (v.n_heads, v.n_tokens, v.n_new);
        let needs_attn = matches!(
            self.kind,
            BaselineKind::H2o { .. } | BaselineKind::SnapKv { .. } | BaselineKind::Tova
        );
        if needs_attn && (v.attn.len() != heads * n_new * n || n_new == 0) {
            return Err(format!(
                "attention has {} values, expected H·n·N = {}",
                v.attn.len(),
                heads * n_new * n
            ));
        }
        let attn_row = |h: usize, i: usize| &v.attn[(h * n_new + i) * n..(h * n_new + i + 1) * n];
        let protect_last = |s: &mut [f32], count: usize| {
            let from = n.saturating_sub(count);
            s[from..].iter_mut().for_each(|x| *x = f32::INFINITY);
        };
        let mut scores = vec![0.0f32; heads * n];
        match &self.kind {
            BaselineKind::Streaming { sinks } => {
                for s in scores.chunks_exact_mut(n) {
                    for (j, x) in s.iter_mut().enumerate() {
                        *x = if j < *sinks { f32::INFINITY } else { j as f32 };
                    }
                }
            }
            BaselineKind::H2o { recent } => {
                let n_old = n - n_new;
                let layer = v.layer;
                if self.accumulated.len() <= layer {
                    self.accumulated.resize(layer + 1, None);
                }
                let acc = match self.accumulated[layer].take() {
                    Some(a) if a.len() == heads * n_old => a,
                    Some(a) => {
                        return Err(format!(
                            "h2o holds {} accumulated values for layer {layer}, the view has \
                             {heads} heads × {n_old} old tokens",
                            a.len()
                        ))
                    }
                    // A new sequence, or state dropped after a rejected view: no history.
                    None => vec![0.0; heads * n_old],
                };
                for h in 0..heads {
                    let s = &mut scores[h * n..(h + 1) * n];
                    s[..n_old].copy_from_slice(&acc[h * n_old..(h + 1) * n_old]);
                    for i in 0..n_new {
                        for (x, &a) in s.iter_mut().zip(attn_row(h, i)) {
                            *x += a;
                        }
                    }
                }
                self.accumulated[layer] = Some(scores.clone());
                let window = (recent * k as f64).round() as usize;
                scores
                    .chunks_exact_mut(n)
                    .for_each(|s| protect_last(s, window));
            }
            BaselineKind::SnapKv { window, kernel } => {
                let w = (*window).min(n_new);
                let radius = kernel / 2;
                let mut summed = vec![0.0f32; n];
                for h in 0..heads {
                    summed.iter_mut().for_each(|x| *x = 0.0);
                    for i in n_new - w..n_new {
                        for (x, &a) in summed.iter_mut().zip(attn_row(h, i)) {
                            *x += a;
                        }
                    }
                    let s = &mut scores[h * n..(h + 1) * n];
                    for (j, x) in s.iter_mut().enumerate() {
                        let lo = j.saturating_sub(radius);
                        let hi = (j + radius + 1).min(n);
                        *x = summed[lo..hi]
                            .iter()
                            .fold(f32::NEG_INFINITY, |m, &a| m.max(a));
                    }
                    protect_last(s, w);
                }
            }
            BaselineKind::Tova => {
                for h in 0..heads {
                    scores[h * n..(h + 1) * n].copy_from_slice(attn_row(h, n_new - 1));
                }
            }
            BaselineKind::KNorm { recent } => {
                if v.key_norms.len() != heads * n {
                    return Err(format!(
                        "key norms have {} values, expected H·N = {}",
                        v.key_norms.len(),
                        heads * n
                    ));
                }
                for (x, &norm) in scores.iter_mut().zip(v.key_norms) {
                    *x = -norm;
                }
                let window = (recent * k as f64).round() as usize;
                scores
                    .chunks_exact_mut(n)
                    .for_each(|s| protect_last(s, window));
            }
            BaselineKind::Random { seed } => {
                let stream = ((v.layer as u64) << 40) ^ v.tokens_seen as u64;
                let mut rng =
                    ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ stream);
                scores.iter_mut().for_each(|x| *x = rng.random::<f32>());
            }
        }
        Ok(scores)
    }
}

impl MemoryPolicy for Baseline {
    fn name(&self) -> String {
        let b = self.budget;
        match &self.kind {
            BaselineKind::Streaming { sinks } => format!("streaming:budget={b},sinks={sinks}"),
            BaselineKind::H2o { recent } => format!("h2o:budget={b},recent={recent:?}"),
            BaselineKind::SnapKv { window, kernel } => {
                format!("snapkv:budget={b},window={window},kernel={kernel}")
            }
            BaselineKind::Tova => format!("tova:budget={b}"),
            BaselineKind::KNorm { recent } => format!("knorm:budget={b},recent={recent:?}"),
            BaselineKind::Random { seed } => format!("random:budget={b},seed={seed}"),
        }
    }

    fn inputs(&self) -> PolicyInputs {
        PolicyInputs {
            attention: matches!(
                self.kind,
                BaselineKind::H2o { .. } | BaselineKind::SnapKv { .. } | BaselineKind::Tova
            ),
            key_norms: matches!(self.kind, BaselineKind::KNorm { .. }),
            surprisal: false,
        }
    }

    fn reset(&mut self) {
        self.accumulated.clear();
    }

    fn select(&mut self, view: &LayerView<'_>) -> Option<Vec<Vec<usize>>> {
        let n = view.n_tokens;
        if n == 0 || view.n_new > n {
            return None;
        }
        let k = self.budget.tokens(view.tokens_seen, n);
        let scores = match self.scores(view, k) {
            Ok(s) => s,
            Err(reason) => {
                tracing::error!(policy = %self.name(), layer = view.layer, %reason, "baseline invocation rejected, cache kept whole");
                return None;
            }
        };
        if k >= n {
            return None;
        }
        let kept: Vec<Vec<usize>> = scores.chunks_exact(n).map(|s| top_k(s, k)).collect();
        if let Some(Some(acc)) = self.accumulated.get_mut(view.layer) {
            let filtered = kept
                .iter()
                .enumerate()
                .flat_map(|(h, idx)| idx.iter().map(move |&j| (h, j)))
                .map(|(h, j)| acc[h * n + j])
                .collect();
            *acc = filtered;
        }
        Some(kept)
    }
}
