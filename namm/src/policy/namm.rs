//! The NAMM memory policy (spec §2.3–§8): per-layer state, features, BAM scores, selection.
//! [`NammCore`] is generic over the float type (f64 for golden parity, f32 in production);
//! [`NammPolicy`] is the f32 instantiation behind [`MemoryPolicy`].

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::bam::{bam_scores, BamScratch, BamWeights};
use super::baselines::Budget;
use super::error::PolicyError;
use super::features::{
    carry_decay, frame_weights, recency_row, spectrum_ema, surprisal_feature, window_feature,
    FeatureSet, SpectrumInput, Twiddles, FEATURE_DIM, HOP, N_BINS, RECENCY_DIM, SURPRISAL_BIN,
    WINDOW_BIN,
};
use super::layout::BamLayout;
use super::real::Real;
use super::select::capped_select;
use super::{LayerView, MemoryPolicy, PolicyInputs};
use crate::stats::NormStats;

/// Which statistics normalise the spectral features (spec §4.4).
#[derive(Debug, Clone, PartialEq)]
pub enum NormMode {
    /// Fixed μ, σ² (after the generation-0 pass; loaded with the parameters).
    Frozen(NormStats),
    /// The running set: every per-layer call first merges the statistics of its own raw
    /// spectra into it, then normalises with it (the reference's iteration-0 behaviour).
    Accumulate(NormStats),
}

impl NormMode {
    /// Accumulation from nothing.
    pub fn accumulate() -> Self {
        NormMode::Accumulate(NormStats::empty(N_BINS))
    }

    pub fn stats(&self) -> &NormStats {
        match self {
            NormMode::Frozen(s) | NormMode::Accumulate(s) => s,
        }
    }
}

/// One layer's inputs at one invocation, in the precision `T` of the computation.
#[derive(Debug, Clone, Copy)]
pub struct Invocation<'a, T> {
    pub layer: usize,
    pub n_heads: usize,
    pub n_tokens: usize,
    pub n_new: usize,
    /// `[H][n_new][n_tokens]`, already averaged over GQA groups.
    pub attn: &'a [T],
    /// `[H][n_tokens]` absolute positions.
    pub positions: &'a [u32],
    /// `[T]` surprisal by absolute position ([`super::LayerView::surprisal`]); read only by
    /// [`FeatureSet::Surprisal`].
    pub surprisal: &'a [f32],
}

/// What a layer remembers between invocations, aligned with its cache (spec §4.1, §4.3).
#[derive(Debug, Clone)]
struct LayerState<T> {
    n_heads: usize,
    n_tokens: usize,
    /// `[H][N][HOP]`: the last 16 attention columns each token received.
    prev: Vec<T>,
    /// `[H][N][N_BINS]`: un-normalised EMA of the spectra.
    ema: Vec<T>,
}

/// The NAMM computation in precision `T`, with the intermediate results of the last call
/// kept for inspection (replay, golden tests).
#[derive(Debug)]
pub struct NammCore<T: Real> {
    layout: BamLayout,
    feature_set: FeatureSet,
    weights: BamWeights<T>,
    norm: NormMode,
    twiddles: Twiddles<T>,
    layers: Vec<Option<LayerState<T>>>,
    spec: Vec<T>,
    /// `[H][N]` [`window_feature`] of the last call (when the feature set has it).
    window: Vec<T>,
    /// `[H][N]` [`surprisal_feature`] of the last call (when the feature set has it).
    surprise: Vec<T>,
    features: Vec<T>,
    scores: Vec<T>,
    /// One per head, so heads can run on separate threads.
    bam: Vec<BamScratch<T>>,
    /// 1: every head on the caller's thread; more: each head on its own thread.
    threads: usize,
}

impl<T: Real> NammCore<T> {
    /// `params` must match a known layout (4172 for i1, 2026 for the base config).
    pub fn new<P: Real>(params: &[P], norm: NormMode) -> Result<Self, PolicyError> {
        let layout =
            BamLayout::for_param_count(params.len()).ok_or_else(|| PolicyError::ParamCount {
                got: params.len(),
                expected: format!(
                    "{} (i1) or {} (base)",
                    BamLayout::I1.param_count(),
                    BamLayout::BASE.param_count()
                ),
            })?;
        Self::with_layout(layout, params, norm)
    }

    pub fn with_layout<P: Real>(
        layout: BamLayout,
        params: &[P],
        norm: NormMode,
    ) -> Result<Self, PolicyError> {
        if params.len() != layout.param_count() {
            return Err(PolicyError::ParamCount {
                got: params.len(),
                expected: layout.param_count().to_string(),
            });
        }
        if let Some((index, value)) = params
            .iter()
            .map(|v| v.to_f64())
            .enumerate()
            .find(|(_, v)| !v.is_finite())
        {
            return Err(PolicyError::NonFiniteParam { index, value });
        }
        let dim = norm.stats().dim();
        if dim != N_BINS {
            return Err(PolicyError::StatsDim {
                got: dim,
                expected: N_BINS,
            });
        }
        Ok(NammCore {
            layout,
            feature_set: FeatureSet::Spectral,
            weights: BamWeights::new(layout, params),
            norm,
            twiddles: Twiddles::new(),
            layers: Vec::new(),
            spec: Vec::new(),
            window: Vec::new(),
            surprise: Vec::new(),
            features: Vec::new(),
            scores: Vec::new(),
            bam: Vec::new(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        })
    }

    /// 1 keeps all work on the caller's thread; more lets each head run on its own thread
    /// (the default when the machine has several cores).
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.max(1);
    }

    /// Threads for a layer of `n` tokens: small layers are not worth a thread start.
    fn threads_for(&self, n: usize) -> usize {
        if n < PARALLEL_MIN_TOKENS {
            1
        } else {
            self.threads
        }
    }

    pub fn layout(&self) -> BamLayout {
        self.layout
    }

    pub fn with_feature_set(mut self, feature_set: FeatureSet) -> Self {
        self.feature_set = feature_set;
        self
    }

    pub fn feature_set(&self) -> FeatureSet {
        self.feature_set
    }

    /// The frozen statistics, or the running set including every call so far.
    pub fn norm(&self) -> &NormMode {
        &self.norm
    }

    /// Forgets every layer's state: the next invocation starts a new sequence.
    pub fn reset(&mut self) {
        self.layers.clear();
    }

    /// `[H][N][17]` EMA spectra of the last call, before normalisation (`spec_ema_raw`).
    pub fn spec_ema_raw(&self) -> &[T] {
        &self.spec
    }

    /// `[H][N][25]` features of the last call.
    pub fn features(&self) -> &[T] {
        &self.features
    }

    /// `[H][N]` BAM scores of the last call (before the newest token is forced).
    pub fn scores(&self) -> &[T] {
        &self.scores
    }

    /// Runs one invocation on one layer and returns, per head, the ascending indices of the
    /// tokens kept (the same count for every head). The layer's state is filtered with them.
    pub fn invoke(&mut self, inv: &Invocation<'_, T>) -> Result<Vec<Vec<usize>>, PolicyError> {
        self.invoke_capped(inv, None)
    }

    /// [`NammCore::invoke`] keeping at most `cap` tokens per head (see [`capped_select`]).
    pub fn invoke_capped(
        &mut self,
        inv: &Invocation<'_, T>,
        cap: Option<usize>,
    ) -> Result<Vec<Vec<usize>>, PolicyError> {
        let (h_count, n, n_new) = (inv.n_heads, inv.n_tokens, inv.n_new);
        check_shapes(inv)?;
        let n_old = n - n_new;
        if self.layers.len() <= inv.layer {
            self.layers.resize(inv.layer + 1, None);
        }
        let state = match self.layers[inv.layer].take() {
            _ if n_old == 0 => None,
            Some(s) if s.n_tokens == n_old && s.n_heads == h_count => Some(s),
            Some(s) => {
                return Err(PolicyError::Input {
                    field: "n_tokens",
                    reason: format!(
                        "layer {} holds state for {} heads × {} tokens but the view has {h_count} \
                         heads × {n} tokens of which {n_new} are new",
                        inv.layer, s.n_heads, s.n_tokens
                    ),
                });
            }
            None => {
                // Attached mid-sequence, or the previous call was rejected: the old tokens
                // have no recorded history, exactly like tokens of a new sequence.
                tracing::warn!(
                    layer = inv.layer,
                    n_old,
                    "NAMM has no state for cached tokens; treating their history as empty"
                );
                None
            }
        };

        let weights_f = frame_weights::<T>(n_new / HOP);
        let decay = carry_decay::<T>(n_new);
        self.spec.clear();
        self.spec.resize(h_count * n * N_BINS, T::ZERO);
        let mut next_prev = vec![T::ZERO; h_count * n * HOP];
        let twiddles = &self.twiddles;
        let threads = self.threads_for(n);
        let spectra = self
            .spec
            .chunks_exact_mut(n * N_BINS)
            .zip(next_prev.chunks_exact_mut(n * HOP))
            .enumerate();
        for_each_head(threads, spectra, |(h, (spec, prev))| {
            let attn = &inv.attn[h * n_new * n..(h + 1) * n_new * n];
            let mut lead = vec![T::ZERO; HOP * n];
            if let Some(s) = &state {
                for j in 0..n_old {
                    let p = &s.prev[(h * n_old + j) * HOP..(h * n_old + j + 1) * HOP];
                    for (m, &v) in p.iter().enumerate() {
                        lead[m * n + j] = v;
                    }
                }
            }
            let input = SpectrumInput {
                attn,
                lead: &lead,
                n_tokens: n,
                n_new,
                n_old,
                frame_weights: &weights_f,
            };
            spectrum_ema(&input, twiddles, spec);
            if let Some(s) = &state {
                let old = &s.ema[h * n_old * N_BINS..(h + 1) * n_old * N_BINS];
                for (r, &e) in spec.iter_mut().zip(old) {
                    *r += decay * e;
                }
            }
            for m in 0..HOP {
                let row = &attn[(n_new - HOP + m) * n..(n_new - HOP + m + 1) * n];
                for (j, &v) in row.iter().enumerate() {
                    prev[j * HOP + m] = v;
                }
            }
        });

        self.window.clear();
        self.surprise.clear();
        if self.feature_set.has_surprisal() {
            self.surprise.resize(h_count * n, T::ZERO);
            let heads = self
                .surprise
                .chunks_exact_mut(n)
                .zip(inv.positions.chunks_exact(n));
            for (out, pos) in heads {
                surprisal_feature(inv.surprisal, pos, out).ok_or_else(|| PolicyError::Input {
                    field: "surprisal",
                    reason: format!(
                        "the {} feature set reads every cached token's surprisal, but {} \
                         positions were recorded and position {} is cached",
                        self.feature_set.name(),
                        inv.surprisal.len(),
                        pos.iter().max().copied().unwrap_or(0)
                    ),
                })?;
            }
        }
        if self.feature_set.has_window() {
            self.window.resize(h_count * n, T::ZERO);
            let heads = self.window.chunks_exact_mut(n).enumerate();
            for_each_head(threads, heads, |(h, out)| {
                window_feature(&inv.attn[h * n_new * n..(h + 1) * n_new * n], n_new, n, out);
            });
        }
        let (spec, window, surprise) = (&self.spec, &self.window, &self.surprise);
        // The 17 statistics of token row r (head-major): the spectrum, bins 16 and 15 replaced
        // by the window and surprisal features when the set has them.
        let stat = move |r: usize, k: usize| match k {
            WINDOW_BIN if !window.is_empty() => window[r],
            SURPRISAL_BIN if !surprise.is_empty() => surprise[r],
            _ => spec[r * N_BINS + k],
        };
        if let NormMode::Accumulate(running) = &mut self.norm {
            let rows = (0..h_count * n).flat_map(|r| (0..N_BINS).map(move |k| stat(r, k).to_f64()));
            let batch = NormStats::from_rows(N_BINS, rows);
            *running = batch.merge(running)?;
        }
        let stats = self.norm.stats();
        let mean: Vec<T> = stats.mean.iter().map(|&m| T::from_f64(m)).collect();
        let scale: Vec<T> = stats.scale().iter().map(|&s| T::from_f64(s)).collect();

        self.features.clear();
        self.features.resize(h_count * n * FEATURE_DIM, T::ZERO);
        self.scores.clear();
        self.scores.resize(h_count * n, T::ZERO);
        if self.bam.len() < h_count {
            self.bam.resize_with(h_count, BamScratch::default);
        }
        let weights = &self.weights;
        let heads = self
            .features
            .chunks_exact_mut(n * FEATURE_DIM)
            .zip(self.scores.chunks_exact_mut(n))
            .zip(self.bam.iter_mut())
            .enumerate();
        for_each_head(threads, heads, |(h, ((features, scores), scratch))| {
            let pos = &inv.positions[h * n..(h + 1) * n];
            let newest = pos[n - 1];
            for (j, f) in features.chunks_exact_mut(FEATURE_DIM).enumerate() {
                let age = newest.saturating_sub(pos[j]) as usize;
                for (d, &r) in f[..RECENCY_DIM].iter_mut().zip(recency_row(age)) {
                    *d = T::from_f32(r);
                }
                for k in 0..N_BINS {
                    f[RECENCY_DIM + k] = (stat(h * n + j, k) - mean[k]) / scale[k];
                }
            }
            bam_scores(weights, features, n, scratch, scores);
        });

        let kept = capped_select(&self.scores, h_count, n, cap);
        let k = kept.first().map_or(0, Vec::len);
        let mut prev = Vec::with_capacity(h_count * k * HOP);
        let mut ema = Vec::with_capacity(h_count * k * N_BINS);
        for (h, idx) in kept.iter().enumerate() {
            for &j in idx {
                prev.extend_from_slice(&next_prev[(h * n + j) * HOP..(h * n + j + 1) * HOP]);
                ema.extend_from_slice(&self.spec[(h * n + j) * N_BINS..(h * n + j + 1) * N_BINS]);
            }
        }
        self.layers[inv.layer] = Some(LayerState {
            n_heads: h_count,
            n_tokens: k,
            prev,
            ema,
        });
        Ok(kept)
    }
}

/// Below this many cached tokens per head, heads are processed on the caller's thread.
const PARALLEL_MIN_TOKENS: usize = 256;

/// Runs `work` on every item (one per head): on the caller's thread when `threads` is 1,
/// otherwise on one scoped thread per item. With more heads than cores (3 on 2) the OS
/// shares the cores, which balances better than a fixed split of heads to threads.
fn for_each_head<I, F>(threads: usize, items: I, work: F)
where
    I: Iterator + Send,
    I::Item: Send,
    F: Fn(I::Item) + Sync,
{
    if threads <= 1 {
        items.for_each(work);
        return;
    }
    let work = &work;
    std::thread::scope(|scope| {
        for item in items {
            scope.spawn(move || work(item));
        }
    });
}

fn check_shapes<T>(inv: &Invocation<'_, T>) -> Result<(), PolicyError> {
    let bad = |field, reason: String| Err(PolicyError::Input { field, reason });
    if inv.n_heads == 0 {
        return bad("n_heads", "must be at least 1".into());
    }
    if inv.n_new == 0 || !inv.n_new.is_multiple_of(HOP) {
        return bad(
            "n_new",
            format!("{} is not a positive multiple of {HOP}", inv.n_new),
        );
    }
    if inv.n_new > inv.n_tokens {
        return bad(
            "n_new",
            format!("{} exceeds n_tokens {}", inv.n_new, inv.n_tokens),
        );
    }
    let want = inv.n_heads * inv.n_new * inv.n_tokens;
    if inv.attn.len() != want {
        return bad(
            "attn",
            format!("{} values, expected H·n·N = {want}", inv.attn.len()),
        );
    }
    if inv.positions.len() != inv.n_heads * inv.n_tokens {
        return bad(
            "positions",
            format!(
                "{} values, expected H·N = {}",
                inv.positions.len(),
                inv.n_heads * inv.n_tokens
            ),
        );
    }
    Ok(())
}

/// The production NAMM policy: f32 maths behind [`MemoryPolicy`].
#[derive(Debug)]
pub struct NammPolicy {
    core: NammCore<f32>,
    /// At most this many tokens per head stay after an invocation; `None`: the paper's
    /// threshold alone decides.
    budget: Option<Budget>,
    label: String,
}

impl NammPolicy {
    /// A policy with parameters θ (a known layout's length) and normalisation `stats`.
    pub fn new(params: Vec<f32>, stats: NormMode) -> Result<Self, PolicyError> {
        Ok(NammPolicy {
            core: NammCore::new(&params, stats)?,
            budget: None,
            label: "namm".into(),
        })
    }

    /// θ drawn i.i.d. from N(0, σ²) with a seeded RNG (benchmarks, smoke tests), statistics
    /// frozen at zero mean and unit variance.
    pub fn random(layout: BamLayout, sigma: f32, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let normal = Normal::new(0.0f32, sigma.abs()).expect("finite σ");
        let params: Vec<f32> = (0..layout.param_count())
            .map(|_| normal.sample(&mut rng))
            .collect();
        let stats = NormStats {
            mean: vec![0.0; N_BINS],
            var: (0..N_BINS).map(|_| rng.random_range(0.5..2.0)).collect(),
            count: 1.0,
        };
        NammPolicy {
            core: NammCore::with_layout(layout, &params, NormMode::Frozen(stats))
                .expect("finite random parameters of the layout's length"),
            budget: None,
            label: format!("namm:random(seed={seed})"),
        }
    }

    /// Sets the name shown in tables and logs.
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// Caps the tokens each head keeps at `budget` (None: the threshold alone).
    pub fn with_budget(mut self, budget: Option<Budget>) -> Self {
        self.budget = budget;
        self
    }

    pub fn budget(&self) -> Option<Budget> {
        self.budget
    }

    /// Which statistics follow the age embedding (the paper's spectrogram by default).
    pub fn with_feature_set(mut self, feature_set: FeatureSet) -> Self {
        self.core = self.core.with_feature_set(feature_set);
        self
    }

    pub fn feature_set(&self) -> FeatureSet {
        self.core.feature_set()
    }

    /// See [`NammCore::set_threads`].
    pub fn set_threads(&mut self, threads: usize) {
        self.core.set_threads(threads);
    }

    pub fn core(&self) -> &NammCore<f32> {
        &self.core
    }

    /// The normalisation statistics: frozen, or the running set accumulated so far.
    pub fn norm_stats(&self) -> &NormStats {
        self.core.norm().stats()
    }
}

impl MemoryPolicy for NammPolicy {
    fn name(&self) -> String {
        self.label.clone()
    }

    fn inputs(&self) -> PolicyInputs {
        PolicyInputs {
            attention: true,
            key_norms: false,
            surprisal: self.core.feature_set().has_surprisal(),
        }
    }

    fn reset(&mut self) {
        self.core.reset();
    }

    fn select(&mut self, view: &LayerView<'_>) -> Option<Vec<Vec<usize>>> {
        let inv = Invocation {
            layer: view.layer,
            n_heads: view.n_heads,
            n_tokens: view.n_tokens,
            n_new: view.n_new,
            attn: view.attn,
            positions: view.positions,
            surprisal: view.surprisal,
        };
        let cap = self
            .budget
            .map(|b| b.tokens(view.tokens_seen, view.n_tokens));
        match self.core.invoke_capped(&inv, cap) {
            Ok(kept) if kept.iter().all(|k| k.len() == view.n_tokens) => None,
            Ok(kept) => Some(kept),
            Err(e) => {
                // The trait has no error channel; keeping everything is the safe outcome,
                // and the layer starts afresh at its next invocation.
                tracing::error!(layer = view.layer, error = %e, "NAMM invocation rejected, cache kept whole");
                None
            }
        }
    }
}
