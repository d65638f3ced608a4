//! BAM, the backward attention memory network (spec §6): one attention head over a head's
//! cached tokens in which token i attends itself and every newer token, a residual and
//! multiplicative update of the features, and a linear read-out to one score per token.

use super::features::FEATURE_DIM;
use super::layout::BamLayout;
use super::real::Real;
use super::simd::{self, Vector, LANES};

/// Queries per block of the attention kernel: the key vectors loaded once serve all of them.
const QB: usize = 8;

/// θ unpacked into the matrices of spec §3, in the precision of the computation.
#[derive(Debug, Clone)]
pub struct BamWeights<T> {
    hidden: usize,
    /// Hidden width rounded up to [`LANES`]; the extra columns are zero and change nothing.
    padded: usize,
    /// `[FEATURE_DIM][3·hidden]`.
    w_qkv: Vec<T>,
    /// `[3·hidden]`, zeros without bias.
    b_qkv: Vec<T>,
    /// `[hidden][2·FEATURE_DIM]`.
    w_o: Vec<T>,
    /// `[2·FEATURE_DIM]`, zeros without bias.
    b_o: Vec<T>,
    w_s: Vec<T>,
    b_s: T,
    /// `W_o = 0` and `b_o = 0` (θ = 0, the statistics pass): the attention cannot change
    /// the scores, so it is skipped.
    attention_inert: bool,
}

impl<T: Real> BamWeights<T> {
    /// `params` must hold `layout.param_count()` values (checked by the caller); they are
    /// converted to `T` (θ is f32 in production, f64 in the golden vectors).
    pub fn new<P: Real>(layout: BamLayout, params: &[P]) -> Self {
        let o = layout.offsets();
        debug_assert_eq!(params.len(), o.total);
        let h = layout.hidden;
        let out = layout.out_dim();
        let conv = |s: &[P]| {
            s.iter()
                .map(|&v| T::from_f64(v.to_f64()))
                .collect::<Vec<T>>()
        };
        let block = |at: Option<usize>, len: usize| match at {
            Some(at) => conv(&params[at..at + len]),
            None => vec![T::ZERO; len],
        };
        let w_o = conv(&params[o.w_o..o.w_o + h * out]);
        let b_o = block(o.b_o, out);
        let attention_inert = w_o.iter().chain(&b_o).all(|&v| v == T::ZERO);
        BamWeights {
            hidden: h,
            padded: h.div_ceil(LANES) * LANES,
            w_qkv: conv(&params[o.w_qkv..o.w_qkv + FEATURE_DIM * 3 * h]),
            b_qkv: block(o.b_qkv, 3 * h),
            w_o,
            b_o,
            w_s: conv(&params[o.w_s..o.w_s + FEATURE_DIM]),
            b_s: T::from_f64(params[o.b_s].to_f64()),
            attention_inert,
        }
    }
}

/// Buffers reused across calls so the hot path does not allocate once warmed up. Queries
/// and keys are packed per block so that the kernels read them contiguously.
#[derive(Debug, Default)]
pub struct BamScratch<T> {
    /// `[⌈n/QB⌉][padded][QB]`: queries of each block of QB tokens, pre-scaled by 1/√hidden;
    /// missing tokens of the last block are zero.
    q: Vec<T>,
    /// `[n_pad/LANES][padded][LANES]`: keys of each block of LANES tokens; padding is zero.
    k: Vec<T>,
    /// `[n][padded]`.
    v: Vec<T>,
    /// `[QB][n_pad]`: logits, then unnormalised probabilities, of one query block.
    logits: Vec<T>,
    /// `[n][QB]`: the same probabilities transposed, for the value pass.
    probs: Vec<T>,
    /// `[n][padded]`: attention outputs.
    o: Vec<T>,
}

/// Scores of one head's `n` tokens from their features `x` (`[n][FEATURE_DIM]`).
pub fn bam_scores<T: Real>(
    w: &BamWeights<T>,
    x: &[T],
    n: usize,
    scratch: &mut BamScratch<T>,
    scores: &mut [T],
) {
    debug_assert_eq!(x.len(), n * FEATURE_DIM);
    debug_assert_eq!(scores.len(), n);
    if !w.attention_inert {
        project_qkv(w, x, n, scratch);
        let n_pad = n.div_ceil(LANES) * LANES;
        scratch.logits.clear();
        scratch.logits.resize(QB * n_pad, T::ZERO);
        scratch.probs.clear();
        scratch.probs.resize(n * QB, T::ZERO);
        scratch.o.clear();
        scratch.o.resize(n * w.padded, T::ZERO);
        simd::dispatch(AttendKernel {
            s: scratch,
            n,
            hp: w.padded,
        });
    }
    let half = FEATURE_DIM;
    let mut u = vec![T::ZERO; 2 * half];
    for (j, s) in scores.iter_mut().enumerate() {
        let xj = &x[j * FEATURE_DIM..(j + 1) * FEATURE_DIM];
        u.copy_from_slice(&w.b_o);
        if !w.attention_inert {
            let oj = &scratch.o[j * w.padded..j * w.padded + w.hidden];
            for (d, &od) in oj.iter().enumerate() {
                let row = &w.w_o[d * 2 * half..(d + 1) * 2 * half];
                for (uc, &wc) in u.iter_mut().zip(row) {
                    *uc += od * wc;
                }
            }
        }
        let mut acc = w.b_s;
        for c in 0..half {
            let updated = xj[c] * (T::ONE + u[half + c]) + u[c];
            acc += updated * w.w_s[c];
        }
        *s = acc;
    }
}

fn project_qkv<T: Real>(w: &BamWeights<T>, x: &[T], n: usize, s: &mut BamScratch<T>) {
    let (h, hp) = (w.hidden, w.padded);
    let n_pad = n.div_ceil(LANES) * LANES;
    let scale = T::from_f64(1.0 / (h as f64).sqrt());
    s.q.clear();
    s.q.resize(n.div_ceil(QB) * hp * QB, T::ZERO);
    s.k.clear();
    s.k.resize(n_pad * hp, T::ZERO);
    s.v.clear();
    s.v.resize(n * hp, T::ZERO);
    let mut row = vec![T::ZERO; 3 * h];
    for j in 0..n {
        row.copy_from_slice(&w.b_qkv);
        for (c, &xc) in x[j * FEATURE_DIM..(j + 1) * FEATURE_DIM].iter().enumerate() {
            for (r, &wv) in row.iter_mut().zip(&w.w_qkv[c * 3 * h..(c + 1) * 3 * h]) {
                *r += xc * wv;
            }
        }
        let (qb, qi) = (j / QB, j % QB);
        let (kb, kl) = (j / LANES, j % LANES);
        for d in 0..h {
            s.q[(qb * hp + d) * QB + qi] = row[d] * scale;
            s.k[(kb * hp + d) * LANES + kl] = row[h + d];
            s.v[j * hp + d] = row[2 * h + d];
        }
    }
}

struct AttendKernel<'a, T> {
    s: &'a mut BamScratch<T>,
    n: usize,
    hp: usize,
}

impl<T: Real> simd::Kernel<T> for AttendKernel<'_, T> {
    type Output = ();
    #[inline(always)]
    fn run<V: Vector<T>>(self) {
        attend::<T, V>(self.s, self.n, self.hp)
    }
}

/// Backward-masked softmax attention: `o_i = Σ_{j≥i} softmax_j(q_i·k_j)·v_j`, for blocks of
/// QB queries: logits against every key block from the queries' own on, a softmax per query,
/// then the probability-weighted sum of value rows.
#[inline(always)]
fn attend<T: Real, V: Vector<T>>(s: &mut BamScratch<T>, n: usize, hp: usize) {
    let n_pad = n.div_ceil(LANES) * LANES;
    let q: &[T] = &s.q;
    let k: &[T] = &s.k;
    let v: &[T] = &s.v;
    let logits: &mut [T] = &mut s.logits;
    let probs: &mut [T] = &mut s.probs;
    let o: &mut [T] = &mut s.o;
    for (qb, qblock) in q.chunks_exact(hp * QB).enumerate() {
        let i0 = qb * QB;
        let nq = QB.min(n - i0);
        let kb0 = i0 / LANES;
        for (kb, kblock) in k.chunks_exact(hp * LANES).enumerate().skip(kb0) {
            let mut acc = [V::zero(); QB];
            for (kd, qd) in kblock.chunks_exact(LANES).zip(qblock.chunks_exact(QB)) {
                let kd = V::load(kd.try_into().expect("LANES keys"));
                for (a, &qv) in acc.iter_mut().zip(qd) {
                    *a = V::splat(qv).mul_add(kd, *a);
                }
            }
            for (qi, a) in acc.iter().enumerate() {
                let at = qi * n_pad + kb * LANES;
                a.store(
                    (&mut logits[at..at + LANES])
                        .try_into()
                        .expect("LANES logits"),
                );
            }
        }
        let mut inv_sum = [T::ZERO; QB];
        for (qi, inv) in inv_sum.iter_mut().enumerate().take(nq) {
            let i = i0 + qi;
            let row = &mut logits[qi * n_pad..qi * n_pad + n];
            let max = row_max::<T, V>(&row[i..]);
            let mut sums = V::zero();
            let mut tail_sum = T::ZERO;
            let mut chunks = row[i..].chunks_exact_mut(LANES);
            for c in &mut chunks {
                let c: &mut [T; LANES] = c.try_into().expect("LANES logits");
                let e = (V::load(c) - V::splat(max)).exp_nonpositive();
                e.store(c);
                sums = sums + e;
            }
            for c in chunks.into_remainder() {
                *c = (*c - max).exp_nonpositive();
                tail_sum += *c;
            }
            *inv = T::ONE / (sums.reduce_sum() + tail_sum);
            // Keys older than the query are masked out.
            for j in i0..i {
                probs[j * QB + qi] = T::ZERO;
            }
            for (j, &p) in row.iter().enumerate().skip(i) {
                probs[j * QB + qi] = p;
            }
        }
        for qi in nq..QB {
            for j in i0..n {
                probs[j * QB + qi] = T::ZERO;
            }
        }
        for dc in (0..hp).step_by(LANES) {
            let mut acc = [V::zero(); QB];
            let rows = v[i0 * hp..n * hp].chunks_exact(hp);
            for (vrow, p) in rows.zip(probs[i0 * QB..n * QB].chunks_exact(QB)) {
                let vv = V::load(vrow[dc..dc + LANES].try_into().expect("LANES values"));
                for (a, &pj) in acc.iter_mut().zip(p) {
                    *a = V::splat(pj).mul_add(vv, *a);
                }
            }
            for (qi, a) in acc.iter().enumerate().take(nq) {
                let at = (i0 + qi) * hp + dc;
                let out = *a * V::splat(inv_sum[qi]);
                out.store((&mut o[at..at + LANES]).try_into().expect("LANES outputs"));
            }
        }
    }
}

#[inline(always)]
fn row_max<T: Real, V: Vector<T>>(xs: &[T]) -> T {
    let mut m = V::splat(T::NEG_INFINITY);
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        m = m.max(V::load(c.try_into().expect("LANES logits")));
    }
    chunks
        .remainder()
        .iter()
        .fold(m.reduce_max(), |a, &b| a.max_fast(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spec §6 written out directly, O(n²) memory, for comparison with the blocked kernel.
    fn reference(layout: BamLayout, params: &[f32], x: &[f64], n: usize) -> Vec<f64> {
        let o = layout.offsets();
        let h = layout.hidden;
        let p = |i: usize| params[i] as f64;
        let qkv: Vec<Vec<f64>> = (0..n)
            .map(|j| {
                (0..3 * h)
                    .map(|c| {
                        let mut acc = o.b_qkv.map_or(0.0, |b| p(b + c));
                        for f in 0..FEATURE_DIM {
                            acc += x[j * FEATURE_DIM + f] * p(o.w_qkv + f * 3 * h + c);
                        }
                        acc
                    })
                    .collect()
            })
            .collect();
        (0..n)
            .map(|i| {
                let logits: Vec<f64> = (i..n)
                    .map(|j| {
                        (0..h).map(|d| qkv[i][d] * qkv[j][h + d]).sum::<f64>() / (h as f64).sqrt()
                    })
                    .collect();
                let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                let att: Vec<f64> = (0..h)
                    .map(|d| (i..n).map(|j| e[j - i] * qkv[j][2 * h + d]).sum::<f64>() / sum)
                    .collect();
                let out = layout.out_dim();
                let u: Vec<f64> = (0..out)
                    .map(|c| {
                        o.b_o.map_or(0.0, |b| p(b + c))
                            + (0..h).map(|d| att[d] * p(o.w_o + d * out + c)).sum::<f64>()
                    })
                    .collect();
                let mut s = p(o.b_s);
                for c in 0..FEATURE_DIM {
                    let xc = x[i * FEATURE_DIM + c];
                    s += (xc * (1.0 + u[FEATURE_DIM + c]) + u[c]) * p(o.w_s + c);
                }
                s
            })
            .collect()
    }

    fn check(layout: BamLayout, n: usize) {
        let params: Vec<f32> = (0..layout.param_count())
            .map(|i| (((i * 7919) % 1000) as f32 / 1000.0 - 0.5) * 0.4)
            .collect();
        let x: Vec<f64> = (0..n * FEATURE_DIM)
            .map(|i| ((i * 104729) % 997) as f64 / 997.0 - 0.5)
            .collect();
        let want = reference(layout, &params, &x, n);
        let w = BamWeights::<f64>::new(layout, &params);
        let mut got = vec![0.0; n];
        bam_scores(&w, &x, n, &mut BamScratch::default(), &mut got);
        for (g, e) in got.iter().zip(&want) {
            assert!((g - e).abs() < 1e-12, "{g} vs {e}");
        }
        let w32 = BamWeights::<f32>::new(layout, &params);
        let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let mut got32 = vec![0.0f32; n];
        bam_scores(&w32, &x32, n, &mut BamScratch::default(), &mut got32);
        for (g, e) in got32.iter().zip(&want) {
            assert!((*g as f64 - e).abs() < 1e-4 * (1.0 + e.abs()), "{g} vs {e}");
        }
    }

    #[test]
    fn blocked_kernel_matches_the_definition() {
        for n in [1, 7, 16, 33, 70] {
            check(BamLayout::I1, n);
            check(BamLayout::BASE, n);
        }
    }

    #[test]
    fn zero_parameters_score_zero() {
        let w = BamWeights::<f32>::new(BamLayout::I1, &vec![0.0; 4172]);
        let x = vec![0.7f32; 5 * FEATURE_DIM];
        let mut s = vec![1.0f32; 5];
        bam_scores(&w, &x, 5, &mut BamScratch::default(), &mut s);
        assert_eq!(s, vec![0.0; 5]);
    }
}
