//! Token features of spec §4: the attention each cached token received, as an STFT magnitude
//! spectrum (n_fft 32, hop 16, periodic Hann window), smoothed by an EMA over frames with
//! carry-over between invocations, normalised, and prefixed by a sinusoidal age embedding.

use std::sync::OnceLock;

use super::real::Real;
use super::simd::{self, Vector, LANES};

pub const N_FFT: usize = 32;
pub const HOP: usize = 16;
/// One-sided spectrum bins of a 32-point real DFT.
pub const N_BINS: usize = N_FFT / 2 + 1;
pub const RECENCY_DIM: usize = 8;
pub const FEATURE_DIM: usize = RECENCY_DIM + N_BINS;
/// EMA coefficient per token; the per-frame coefficient is its 16th power.
pub const EMA_COEFF: f64 = 0.99;
/// Largest age the recency table covers (spec `max_position_id`); older tokens share its row.
pub const MAX_AGE: usize = 32768;
const RECENCY_MAX_FREQ: f64 = 50000.0;

/// `torch.hann_window(32, periodic=True)` as torch computes it in float32 (spec §4.2). Its
/// values differ from the correctly rounded `0.5 − 0.5·cos(2πk/32)` by up to 1 ulp, and the
/// golden vectors are only matched to 1e-12 with torch's exact values.
#[allow(clippy::excessive_precision)] // shortest f64 reprs of the f32 values, copied verbatim
pub const HANN_WINDOW: [f32; N_FFT] = [
    0.0_f32,
    0.00960734486579895_f32,
    0.03806024789810181_f32,
    0.08426520228385925_f32,
    0.1464466154575348_f32,
    0.22221490740776062_f32,
    0.30865830183029175_f32,
    0.4024548828601837_f32,
    0.5_f32,
    0.5975451469421387_f32,
    0.691341757774353_f32,
    0.7777851819992065_f32,
    0.8535534143447876_f32,
    0.9157348275184631_f32,
    0.961939811706543_f32,
    0.9903926849365234_f32,
    1.0_f32,
    0.9903926253318787_f32,
    0.9619397521018982_f32,
    0.9157347679138184_f32,
    0.853553295135498_f32,
    0.7777850031852722_f32,
    0.6913415789604187_f32,
    0.5975452065467834_f32,
    0.5_f32,
    0.40245479345321655_f32,
    0.3086581826210022_f32,
    0.22221478819847107_f32,
    0.14644649624824524_f32,
    0.08426520228385925_f32,
    0.03806021809577942_f32,
    0.00960734486579895_f32,
];

/// Row `age` of the recency table (spec §4.5), computed in f64 and rounded to f32 like the
/// reference's table; ages past [`MAX_AGE`] use the last row.
pub fn recency_row(age: usize) -> &'static [f32; RECENCY_DIM] {
    static TABLE: OnceLock<Vec<[f32; RECENCY_DIM]>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let half = RECENCY_DIM / 2;
        let freq: Vec<f64> = (0..half)
            .map(|i| 1.0 / RECENCY_MAX_FREQ.powf(i as f64 / half as f64))
            .collect();
        (0..=MAX_AGE)
            .map(|r| {
                std::array::from_fn(|c| {
                    let angle = r as f64 * freq[c % half];
                    (if c < half { angle.sin() } else { angle.cos() }) as f32
                })
            })
            .collect()
    });
    &table[age.min(MAX_AGE)]
}

/// What the 17 token statistics after the age embedding are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureSet {
    /// The paper's: the 17 bins of the EMA attention spectrogram (spec §4).
    #[default]
    Spectral,
    /// Bins 0–15 of the spectrogram, and in place of the Nyquist bin 16 the log of the
    /// attention a token received from the invocation's last [`WINDOW_QUERIES`] queries,
    /// max-pooled over [`WINDOW_KERNEL`] neighbouring tokens ([`window_feature`]). The EMA
    /// spreads its weight over the last ~100 queries and the Hann window gives an
    /// invocation's last queries the least, so the spectrogram cannot single out the end of
    /// the prompt (the question), which SnapKV's observation window does; the Nyquist bin
    /// (alternation between consecutive queries) is the one given up. Same parameter layout.
    Window,
    /// The window set, and in place of bin 15 the token's surprisal under the model, averaged
    /// over [`WINDOW_KERNEL`] neighbouring positions ([`surprisal_feature`]). An invocation
    /// before the question has no attention that points at what will be asked; what the model
    /// could not predict (a needle in a repetitive haystack, a name, a number) is what it
    /// cannot rebuild once evicted, while what it predicts well it largely can (the
    /// self-information criterion of Selective Context and LLMLingua). Same parameter layout.
    Surprisal,
}

impl FeatureSet {
    pub const NAMES: &'static str = "spectral, window, surprisal";

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "spectral" => Some(FeatureSet::Spectral),
            "window" => Some(FeatureSet::Window),
            "surprisal" => Some(FeatureSet::Surprisal),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            FeatureSet::Spectral => "spectral",
            FeatureSet::Window => "window",
            FeatureSet::Surprisal => "surprisal",
        }
    }

    pub fn is_spectral(&self) -> bool {
        *self == FeatureSet::Spectral
    }

    /// Whether bin 16 holds [`window_feature`].
    pub fn has_window(&self) -> bool {
        matches!(self, FeatureSet::Window | FeatureSet::Surprisal)
    }

    /// Whether bin 15 holds [`surprisal_feature`] (the engine must record surprisal).
    pub fn has_surprisal(&self) -> bool {
        *self == FeatureSet::Surprisal
    }
}

/// Queries of the observation window of [`FeatureSet::Window`] (SnapKV's default).
pub const WINDOW_QUERIES: usize = 32;
/// Tokens the window attention is max-pooled over (SnapKV's default kernel).
pub const WINDOW_KERNEL: usize = 7;
/// The statistic [`FeatureSet::Window`] puts in place of bin 16.
pub const WINDOW_BIN: usize = N_BINS - 1;

/// The statistic [`FeatureSet::Surprisal`] puts in place of bin 15.
pub const SURPRISAL_BIN: usize = N_BINS - 2;

/// Positions at the end of the sequence [`surprisal_feature`] protects.
pub const SURPRISAL_RECENT: usize = 16;

/// `out[j] = mean_{|p'−p_j| ≤ 3} surprisal[p']` for the token at absolute position `p_j`
/// (`positions`), over the sequence's positions whether they are still cached or not: a box
/// filter, so a span of surprising tokens (a key and its number) outranks a lone surprising
/// word in predictable text, and a token shares its neighbours' score (the `is:` before a
/// number). The last [`SURPRISAL_RECENT`] positions get the largest surprisal recorded: a
/// policy invoked while the model writes its answer must keep the chat template's tail and the
/// answer so far, which the model predicted itself (low surprisal).
/// `None` when `surprisal` does not cover a position.
pub fn surprisal_feature<T: Real>(
    surprisal: &[f32],
    positions: &[u32],
    out: &mut [T],
) -> Option<()> {
    let radius = WINDOW_KERNEL / 2;
    let recent = surprisal.len().saturating_sub(SURPRISAL_RECENT);
    let most = surprisal.iter().fold(0.0f32, |m, &v| m.max(v));
    for (o, &p) in out.iter_mut().zip(positions) {
        let p = p as usize;
        surprisal.get(p)?;
        let span = &surprisal[p.saturating_sub(radius)..(p + radius + 1).min(surprisal.len())];
        let mean = span.iter().map(|&v| v as f64).sum::<f64>() / span.len() as f64;
        *o = if p >= recent {
            T::from_f32(most)
        } else {
            T::from_f64(mean)
        };
    }
    Some(())
}

/// `out[j] = ln(1e-6 + max_{|j'−j| ≤ 3} Σ_{last 32 queries i} attn[i][j'])` for one head
/// (`attn` is `[n_new][n_tokens]`); the window's own tokens get ln(32 + 1e-6), the most any
/// token can receive, as SnapKV protects them.
pub fn window_feature<T: Real>(attn: &[T], n_new: usize, n_tokens: usize, out: &mut [T]) {
    debug_assert_eq!(attn.len(), n_new * n_tokens);
    debug_assert_eq!(out.len(), n_tokens);
    let w = WINDOW_QUERIES.min(n_new);
    let mut summed = vec![0.0f64; n_tokens];
    for row in attn[(n_new - w) * n_tokens..].chunks_exact(n_tokens) {
        for (s, &a) in summed.iter_mut().zip(row) {
            *s += a.to_f64();
        }
    }
    let radius = WINDOW_KERNEL / 2;
    let protected = n_tokens.saturating_sub(w);
    for (j, o) in out.iter_mut().enumerate() {
        let pooled = if j >= protected {
            w as f64
        } else {
            let (lo, hi) = (j.saturating_sub(radius), (j + radius + 1).min(n_tokens));
            summed[lo..hi].iter().fold(0.0f64, |m, &a| m.max(a))
        };
        *o = T::from_f64((pooled + 1e-6).ln());
    }
}

/// EMA weights `(1−α)·α^(F−1−f)` of the F frames of one invocation, α = 0.99^16.
pub fn frame_weights<T: Real>(frames: usize) -> Vec<T> {
    let alpha = EMA_COEFF.powi(HOP as i32);
    (0..frames)
        .map(|f| T::from_f64((1.0 - alpha) * alpha.powi((frames - 1 - f) as i32)))
        .collect()
}

/// Decay `γ^n` applied to the stored EMA state of surviving tokens.
pub fn carry_decay<T: Real>(n_new: usize) -> T {
    T::from_f64(EMA_COEFF.powi(n_new as i32))
}

/// Window and DFT twiddles, folded for the even/odd symmetries of a real 32-point DFT.
#[derive(Debug, Clone)]
pub struct Twiddles<T> {
    window: [T; N_FFT],
    /// `cos(2π·k·m/32)` for k = 0..=8, m = 0..16.
    cos: [[T; HOP]; 9],
    /// `sin(2π·k·m/32)` for k = 0..=8, m = 0..16.
    sin: [[T; HOP]; 9],
}

impl<T: Real> Default for Twiddles<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Real> Twiddles<T> {
    pub fn new() -> Self {
        // Exact zeros and ones at the quarter turns, as an FFT library's tables have them.
        let unit = |q: usize, sine: bool| -> f64 {
            let q = if sine { (q + 24) % 32 } else { q % 32 };
            match q {
                0 => 1.0,
                8 | 24 => 0.0,
                16 => -1.0,
                _ => (2.0 * std::f64::consts::PI * q as f64 / 32.0).cos(),
            }
        };
        Twiddles {
            window: HANN_WINDOW.map(T::from_f32),
            cos: std::array::from_fn(|k| std::array::from_fn(|m| T::from_f64(unit(k * m, false)))),
            sin: std::array::from_fn(|k| std::array::from_fn(|m| T::from_f64(unit(k * m, true)))),
        }
    }
}

/// One head's input to the spectrum kernel.
pub struct SpectrumInput<'a, T> {
    /// `[n_new][n_tokens]`: attention of the new queries (rows) over all cached keys.
    pub attn: &'a [T],
    /// `[HOP][n_tokens]`: the 16 samples preceding the first query for every token (the last
    /// 16 query columns of the previous invocation for surviving tokens, zeros otherwise).
    pub lead: &'a [T],
    pub n_tokens: usize,
    pub n_new: usize,
    /// Tokens that were cached before this invocation; the rest are new.
    pub n_old: usize,
    /// [`frame_weights`] for `n_new / HOP` frames.
    pub frame_weights: &'a [T],
}

/// EMA-smoothed STFT magnitudes of every token of one head, without carry-over:
/// `out[j][k] = Σ_f w_f·M[f, j]·|X_j[f, k]|` (spec §4.2–§4.3), `out` is `[n_tokens][17]`.
pub fn spectrum_ema<T: Real>(input: &SpectrumInput<'_, T>, tw: &Twiddles<T>, out: &mut [T]) {
    debug_assert_eq!(input.n_new % HOP, 0);
    debug_assert_eq!(input.attn.len(), input.n_new * input.n_tokens);
    debug_assert_eq!(input.lead.len(), HOP * input.n_tokens);
    debug_assert_eq!(out.len(), input.n_tokens * N_BINS);
    simd::dispatch(SpectrumKernel { input, tw, out })
}

struct SpectrumKernel<'a, 'b, T> {
    input: &'a SpectrumInput<'b, T>,
    tw: &'a Twiddles<T>,
    out: &'a mut [T],
}

impl<T: Real> simd::Kernel<T> for SpectrumKernel<'_, '_, T> {
    type Output = ();
    #[inline(always)]
    fn run<V: Vector<T>>(self) {
        spectrum_kernel::<T, V>(self.input, self.tw, self.out)
    }
}

/// Frames outermost: every frame streams its 32 attention rows left to right, which the
/// hardware prefetches, while the per-token accumulators (17 values per token) stay in L2.
/// (Token blocks outermost would walk the rows column-wise, one cache miss per row.)
#[inline(always)]
fn spectrum_kernel<T: Real, V: Vector<T>>(
    input: &SpectrumInput<'_, T>,
    tw: &Twiddles<T>,
    out: &mut [T],
) {
    let nt = input.n_tokens;
    let frames = input.n_new / HOP;
    let blocks = nt.div_ceil(LANES);
    let window: [V; N_FFT] = tw.window.map(V::splat);
    let cos: [[V; HOP]; 9] = tw.cos.map(|row| row.map(V::splat));
    let sin: [[V; HOP]; 9] = tw.sin.map(|row| row.map(V::splat));
    let mut acc = vec![[V::zero(); N_BINS]; blocks];
    for f in 0..frames {
        let rows: [&[T]; N_FFT] = std::array::from_fn(|m| {
            let t = f * HOP + m;
            if t < HOP {
                &input.lead[t * nt..(t + 1) * nt]
            } else {
                &input.attn[(t - HOP) * nt..(t - HOP + 1) * nt]
            }
        });
        let w = V::splat(input.frame_weights[f]);
        for (b, acc_b) in acc.iter_mut().enumerate() {
            let j0 = b * LANES;
            // Causal frame mask (spec §4.3): a new token only counts frames from the one
            // holding its own query on. Tokens are chronological, so the masked ones are a
            // suffix of the block; zeroing their samples zeroes their magnitudes.
            let width = LANES.min(nt - j0);
            let valid = (0..width)
                .find(|&l| {
                    let j = j0 + l;
                    j >= input.n_old && (j - input.n_old) / HOP > f
                })
                .unwrap_or(width);
            if valid == 0 {
                continue;
            }
            let x: [V; N_FFT] = std::array::from_fn(|m| {
                let row = &rows[m][j0..j0 + width];
                let v = match <&[T; LANES]>::try_from(row) {
                    Ok(full) if valid == LANES => V::load(full),
                    _ => {
                        let mut part = [T::ZERO; LANES];
                        part[..valid].copy_from_slice(&row[..valid]);
                        V::load(&part)
                    }
                };
                v * window[m]
            });
            let mag = dft_magnitudes(&x, &cos, &sin);
            for (a, m) in acc_b.iter_mut().zip(&mag) {
                *a = w.mul_add(*m, *a);
            }
        }
    }
    for (b, acc_b) in acc.iter().enumerate() {
        let j0 = b * LANES;
        let lanes: [[T; LANES]; N_BINS] = acc_b.map(V::to_array);
        for l in 0..LANES.min(nt - j0) {
            let row = &mut out[(j0 + l) * N_BINS..(j0 + l + 1) * N_BINS];
            for (k, o) in row.iter_mut().enumerate() {
                *o = lanes[k][l];
            }
        }
    }
}

/// |DFT| of 32 windowed samples per lane. Pairs `x[m] ± x[32−m]` give the cosine and sine
/// halves; splitting those sums into even and odd `m` yields bins k and 16−k together.
#[inline(always)]
fn dft_magnitudes<T: Real, V: Vector<T>>(
    x: &[V; N_FFT],
    cos: &[[V; HOP]; 9],
    sin: &[[V; HOP]; 9],
) -> [V; N_BINS] {
    let mut even = [V::zero(); HOP];
    let mut odd = [V::zero(); HOP];
    for m in 1..HOP {
        even[m] = x[m] + x[N_FFT - m];
        odd[m] = x[m] - x[N_FFT - m];
    }
    let mut mag = [V::zero(); N_BINS];
    for k in 0..=8 {
        let (c, s) = (&cos[k], &sin[k]);
        let (mut ce, mut co, mut se, mut so) = (V::zero(), V::zero(), V::zero(), V::zero());
        for m in (2..HOP).step_by(2) {
            ce = c[m].mul_add(even[m], ce);
            se = s[m].mul_add(odd[m], se);
        }
        for m in (1..HOP).step_by(2) {
            co = c[m].mul_add(even[m], co);
            so = s[m].mul_add(odd[m], so);
        }
        let base = if k % 2 == 0 {
            x[0] + x[HOP]
        } else {
            x[0] - x[HOP]
        } + ce;
        let (re_lo, im_lo) = (base + co, se + so);
        let (re_hi, im_hi) = (base - co, se - so);
        mag[N_FFT / 2 - k] = re_hi.mul_add(re_hi, im_hi * im_hi).sqrt();
        mag[k] = re_lo.mul_add(re_lo, im_lo * im_lo).sqrt();
    }
    mag
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::simd::Lanes;

    /// Direct evaluation of the one-sided DFT magnitude, the definition in spec §4.2.
    fn naive(samples: &[f64; N_FFT]) -> [f64; N_BINS] {
        let w = HANN_WINDOW;
        std::array::from_fn(|k| {
            let (mut re, mut im) = (0.0, 0.0);
            for m in 0..N_FFT {
                let a = -2.0 * std::f64::consts::PI * (k * m) as f64 / N_FFT as f64;
                re += w[m] as f64 * samples[m] * a.cos();
                im += w[m] as f64 * samples[m] * a.sin();
            }
            (re * re + im * im).sqrt()
        })
    }

    #[test]
    fn folded_dft_matches_the_definition() {
        let tw = Twiddles::<f64>::new();
        let mut x = [[0.0; LANES]; N_FFT];
        let mut raw = [[0.0; N_FFT]; LANES];
        for (l, r) in raw.iter_mut().enumerate() {
            for (m, v) in r.iter_mut().enumerate() {
                *v = ((l * 37 + m * 11) % 17) as f64 / 17.0 - 0.3;
                x[m][l] = *v * tw.window[m];
            }
        }
        let x = x.map(|r| Lanes::load(&r));
        let cos = tw.cos.map(|row| row.map(Lanes::splat));
        let sin = tw.sin.map(|row| row.map(Lanes::splat));
        let mag = dft_magnitudes(&x, &cos, &sin).map(Lanes::to_array);
        for (l, r) in raw.iter().enumerate() {
            let want = naive(r);
            for k in 0..N_BINS {
                assert!((mag[k][l] - want[k]).abs() < 1e-13, "bin {k} lane {l}");
            }
        }
    }

    #[test]
    fn the_window_feature_pools_the_last_queries_and_protects_their_tokens() {
        let (n_new, n) = (48, 60);
        let mut attn = vec![0.0f64; n_new * n];
        // Only the last 32 queries count: an earlier query's attention to token 5 is ignored.
        attn[3 * n + 5] = 1.0;
        for i in n_new - 32..n_new {
            attn[i * n + 10] = 0.5;
            attn[i * n + 20] = 0.25;
        }
        let mut out = vec![0.0; n];
        window_feature(&attn, n_new, n, &mut out);
        let ln = |x: f64| (x + 1e-6).ln();
        assert_eq!(out[5], ln(0.0));
        for j in 7..=13 {
            assert_eq!(out[j], ln(16.0), "token {j} is within 3 of token 10");
        }
        assert_eq!(out[14], ln(0.0));
        assert_eq!(out[17], ln(8.0));
        for j in n - 32..n {
            assert_eq!(out[j], ln(32.0), "the window's own token {j}");
        }
        assert_eq!(FeatureSet::parse("window"), Some(FeatureSet::Window));
        assert_eq!(
            FeatureSet::parse(FeatureSet::Spectral.name()),
            Some(FeatureSet::Spectral)
        );
        assert_eq!(FeatureSet::parse("fft"), None);
    }

    #[test]
    fn the_surprisal_feature_pools_over_neighbouring_positions() {
        let mut surprisal = vec![
            7.0f32, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.5, 0.0, 0.0, 0.0, 0.0,
        ];
        surprisal.resize(12 + SURPRISAL_RECENT, 0.0);
        // Cached tokens need not be contiguous: position 7 counts for its neighbours though
        // evicted; the spans are cut at the sequence's start.
        let positions = [0u32, 3, 4, 10, 11, 12, 27];
        let mut out = [0.0f64; 7];
        surprisal_feature(&surprisal, &positions, &mut out).unwrap();
        // Positions 12.. are the last 16: the most surprising token's value.
        assert_eq!(out, [7.0 / 4.0, 1.0, 0.5, 0.5, 0.0, 7.0, 7.0]);
        assert!(surprisal_feature(&surprisal, &[28], &mut out[..1]).is_none());
        assert_eq!(FeatureSet::parse("surprisal"), Some(FeatureSet::Surprisal));
        assert!(FeatureSet::Surprisal.has_window() && !FeatureSet::Window.has_surprisal());
    }

    #[test]
    fn recency_rows_start_with_zero_sines_and_unit_cosines() {
        assert_eq!(recency_row(0), &[0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
        assert_eq!(recency_row(1)[0], 1f64.sin() as f32);
        assert_eq!(recency_row(MAX_AGE + 5), recency_row(MAX_AGE));
    }
}
