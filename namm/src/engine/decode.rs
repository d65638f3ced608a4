//! Attention of a single new token (a decode step) on CPU, read straight from the cache
//! storage: batched matmuls of one query row per head spend more time packing the cache
//! than multiplying, and a decode step is latency-bound.
//!
//! Over a long cache the step is bound by reading the keys and values, so each task takes
//! one KV head's span of the cache and reads it once for all G query heads of its group
//! (split-softmax: each span keeps its own maximum and sum, merged at the end), and spans
//! keep every thread busy when there are fewer KV heads than threads.

use candle_core::{CpuStorage, Storage, Tensor};

use super::softmax::exp;

/// Fewest cached tokens a span gets: shorter spans cost more in merging than they gain.
const MIN_SPAN: usize = 256;
/// Most spans per KV head.
const MAX_SPANS: usize = 8;

/// Shapes of one decode step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    /// KV heads H.
    pub heads: usize,
    /// Query heads per KV head G.
    pub group: usize,
    pub head_dim: usize,
    /// Cached tokens N (the new one included).
    pub n: usize,
}

/// What one task (a KV head's span) leaves for the merge, per query head of the group: the
/// span's maximum score, Σ exp(score − maximum), and Σ exp(score − maximum)·value.
struct Partial {
    max: Vec<f32>,
    sum: Vec<f32>,
    y: Vec<f32>,
}

/// `q: [Hq, 1, D]`, `k`/`v`: the `[H, N, D]` cache views (rows of a `[H, cap, D]` buffer).
/// Returns `y: [Hq][D]` and, if `probs`, the softmax rows `[Hq][N]`; `None` when the
/// tensors are not f32 CPU tensors laid out as expected.
pub(crate) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    dims: Dims,
    probs: bool,
) -> candle_core::Result<Option<(Vec<f32>, Vec<f32>)>> {
    let Dims {
        heads,
        group,
        head_dim: d,
        n,
    } = dims;
    let q = q.flatten_all()?.to_vec1::<f32>()?;
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(kd)), Storage::Cpu(CpuStorage::F32(vd))) = (&*ks, &*vs)
    else {
        return Ok(None);
    };
    let (kst, vst) = (kl.stride(), vl.stride());
    if kst.len() != 3 || kst[1] != d || kst[2] != 1 || vst.len() != 3 || vst[1] != d || vst[2] != 1
    {
        return Ok(None);
    }
    let (k0, khs, v0, vhs) = (kl.start_offset(), kst[0], vl.start_offset(), vst[0]);
    let hq = heads * group;
    let scale = 1.0 / (d as f32).sqrt();
    let spans = (n / MIN_SPAN).clamp(1, MAX_SPANS);
    let span_len = n.div_ceil(spans);
    let mut p = vec![0f32; hq * n];
    let mut partials: Vec<Partial> = (0..heads * spans)
        .map(|_| Partial {
            max: vec![f32::NEG_INFINITY; group],
            sum: vec![0.0; group],
            y: vec![0.0; group * d],
        })
        .collect();
    let (pp, parts) = (p.as_mut_ptr() as usize, partials.as_mut_ptr() as usize);
    let avx2 = cfg!(target_arch = "x86_64") && avx2_fma();
    let avx512 = cfg!(target_arch = "x86_64") && avx512() && avx512_fits(dims);
    candle_core::utils::barrier_pool().execute_chunked(heads * spans, |range| {
        for t in range {
            let (h, s) = (t / spans, t % spans);
            let (lo, hi) = (s * span_len, ((s + 1) * span_len).min(n));
            if lo >= hi {
                continue;
            }
            let keys = &kd[k0 + h * khs + lo * d..][..(hi - lo) * d];
            let vals = &vd[v0 + h * vhs + lo * d..][..(hi - lo) * d];
            let qs = &q[h * group * d..][..group * d];
            // SAFETY: execute_chunked hands out disjoint task ranges: task t alone writes
            // partials[t] and columns lo..hi of the group's rows of `p`; both outlive the call.
            let part = unsafe { &mut *(parts as *mut Partial).add(t) };
            let rows: Vec<&mut [f32]> = (0..group)
                .map(|g| unsafe {
                    std::slice::from_raw_parts_mut(
                        (pp as *mut f32).add((h * group + g) * n + lo),
                        hi - lo,
                    )
                })
                .collect();
            if avx512 {
                // SAFETY: avx512f was detected at run time and the shape is one it handles.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    span_avx512(qs, keys, vals, scale, rows, part)
                }
            } else if avx2 {
                // SAFETY: avx2 and fma were detected at run time.
                unsafe { span_avx2(qs, keys, vals, scale, rows, part) }
            } else {
                span(qs, keys, vals, scale, rows, part)
            }
        }
    });
    let mut y = vec![0f32; hq * d];
    for (qh, yrow) in y.chunks_exact_mut(d).enumerate() {
        let (h, g) = (qh / group, qh % group);
        let mine = &partials[h * spans..(h + 1) * spans];
        let max = mine
            .iter()
            .fold(f32::NEG_INFINITY, |m, pt| m.max(pt.max[g]));
        let weights: Vec<f32> = mine.iter().map(|pt| exp(pt.max[g] - max)).collect();
        let total: f32 = mine.iter().zip(&weights).map(|(pt, w)| pt.sum[g] * w).sum();
        for (pt, w) in mine.iter().zip(&weights) {
            for (o, x) in yrow.iter_mut().zip(&pt.y[g * d..(g + 1) * d]) {
                *o += x * w / total;
            }
        }
        if probs {
            let row = &mut p[qh * n..(qh + 1) * n];
            for (s, w) in row.chunks_mut(span_len).zip(&weights) {
                let f = w / total;
                s.iter_mut().for_each(|x| *x *= f);
            }
        }
    }
    if !probs {
        p.clear();
    }
    Ok(Some((y, p)))
}

fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
unsafe fn span_avx2(
    qs: &[f32],
    keys: &[f32],
    vals: &[f32],
    scale: f32,
    rows: Vec<&mut [f32]>,
    part: &mut Partial,
) {
    span(qs, keys, vals, scale, rows, part)
}

fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether [`span_avx512`] keeps this shape in registers: D = 64 or 128, G of 1 to 4.
fn avx512_fits(dims: Dims) -> bool {
    matches!(dims.head_dim, 64 | 128) && (1..=4).contains(&dims.group)
}

/// [`span`] with the G·D weighted-value sums held in registers and the products in FMAs:
/// dispatched on (D/16, G), which [`avx512_fits`] has checked.
#[cfg(target_arch = "x86_64")]
unsafe fn span_avx512(
    qs: &[f32],
    keys: &[f32],
    vals: &[f32],
    scale: f32,
    rows: Vec<&mut [f32]>,
    part: &mut Partial,
) {
    let (c, g) = (qs.len() / rows.len() / 16, rows.len());
    match (c, g) {
        (4, 1) => span_regs::<4, 1>(qs, keys, vals, scale, rows, part),
        (4, 2) => span_regs::<4, 2>(qs, keys, vals, scale, rows, part),
        (4, 3) => span_regs::<4, 3>(qs, keys, vals, scale, rows, part),
        (4, 4) => span_regs::<4, 4>(qs, keys, vals, scale, rows, part),
        (8, 1) => span_regs::<8, 1>(qs, keys, vals, scale, rows, part),
        (8, 2) => span_regs::<8, 2>(qs, keys, vals, scale, rows, part),
        (8, 3) => span_regs::<8, 3>(qs, keys, vals, scale, rows, part),
        _ => span_regs::<8, 4>(qs, keys, vals, scale, rows, part),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn span_regs<const C: usize, const G: usize>(
    qs: &[f32],
    keys: &[f32],
    vals: &[f32],
    scale: f32,
    mut rows: Vec<&mut [f32]>,
    part: &mut Partial,
) {
    use std::arch::x86_64::*;
    let d = C * 16;
    let load = |x: &[f32], at: usize| _mm512_loadu_ps(x.as_ptr().add(at));
    let q: [[__m512; C]; G] =
        std::array::from_fn(|g| std::array::from_fn(|c| load(qs, g * d + c * 16)));
    let n = keys.len() / d;
    // 16 keys at a time: their 16 product vectors are summed lane-wise in one shuffle tree.
    for j0 in (0..n - n % 16).step_by(16) {
        for (g, q) in q.iter().enumerate() {
            let a: [__m512; 16] = std::array::from_fn(|i| {
                let at = (j0 + i) * d;
                let mut a = _mm512_mul_ps(q[0], load(keys, at));
                for c in 1..C {
                    a = _mm512_fmadd_ps(q[c], load(keys, at + c * 16), a);
                }
                a
            });
            let s = _mm512_mul_ps(sum_lanes_16(a), _mm512_set1_ps(scale));
            _mm512_storeu_ps(rows[g].as_mut_ptr().add(j0), s);
        }
    }
    for j in n - n % 16..n {
        let k: [__m512; C] = std::array::from_fn(|c| load(keys, j * d + c * 16));
        for (g, q) in q.iter().enumerate() {
            let mut a = _mm512_mul_ps(q[0], k[0]);
            for c in 1..C {
                a = _mm512_fmadd_ps(q[c], k[c], a);
            }
            rows[g][j] = _mm512_reduce_add_ps(a) * scale;
        }
    }
    exponentiate(&mut rows, part);
    let mut acc: [[__m512; C]; G] =
        std::array::from_fn(|g| std::array::from_fn(|c| load(&part.y, g * d + c * 16)));
    for j in 0..vals.len() / d {
        let v: [__m512; C] = std::array::from_fn(|c| load(vals, j * d + c * 16));
        for (g, acc) in acc.iter_mut().enumerate() {
            let w = _mm512_set1_ps(rows[g][j]);
            for c in 0..C {
                acc[c] = _mm512_fmadd_ps(w, v[c], acc[c]);
            }
        }
    }
    for (g, acc) in acc.iter().enumerate() {
        for (c, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(part.y.as_mut_ptr().add(g * d + c * 16), *acc);
        }
    }
}

/// `[Σ lanes of a[0], …, Σ lanes of a[15]]`: pairs of vectors are interleaved and added four
/// times (within 128-bit lanes, then across them), 45 instructions where 16 separate
/// horizontal sums take ~130.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sum_lanes_16(a: [std::arch::x86_64::__m512; 16]) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // Per 128-bit lane k, w[i] = [a2i(0+2), a2i+1(0+2), a2i(1+3), a2i+1(1+3)] of lane k.
    let w: [__m512; 8] = std::array::from_fn(|i| {
        let (x, y) = (a[2 * i], a[2 * i + 1]);
        _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y))
    });
    // x[i], lane k: the sums over lane k of a[4i], a[4i+1], a[4i+2], a[4i+3].
    let x: [__m512; 4] = std::array::from_fn(|i| {
        let (u, v) = (_mm512_castps_pd(w[2 * i]), _mm512_castps_pd(w[2 * i + 1]));
        _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(u, v)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(u, v)),
        )
    });
    // Add 128-bit lanes pairwise: (x0, x1) → [x0 k0+k1, x0 k2+k3, x1 k0+k1, x1 k2+k3].
    let pair = |u: __m512, v: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(u, v),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(u, v),
        )
    };
    pair(pair(x[0], x[1]), pair(x[2], x[3]))
}

/// Each row's scores → exp(score − row maximum), with the maximum and the sum into `part`.
#[inline(always)]
fn exponentiate(rows: &mut [&mut [f32]], part: &mut Partial) {
    for (g, row) in rows.iter_mut().enumerate() {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for s in row.iter_mut() {
            *s = exp(*s - max);
        }
        part.max[g] = max;
        part.sum[g] = sum(row);
    }
}

/// One KV head's span (`keys`/`vals`: `[S][D]`) against its G query rows `qs` (`[G][D]`):
/// the unnormalised exp(score − span maximum) into `rows[g]`, and the span's maximum, sum and
/// weighted values into `part`. Each key and value row is read once for all G queries.
/// Inlined into the caller so it is compiled for its features.
#[inline(always)]
fn span(
    qs: &[f32],
    keys: &[f32],
    vals: &[f32],
    scale: f32,
    mut rows: Vec<&mut [f32]>,
    part: &mut Partial,
) {
    let d = keys.len() / rows[0].len();
    for (j, key) in keys.chunks_exact(d).enumerate() {
        for (row, q) in rows.iter_mut().zip(qs.chunks_exact(d)) {
            row[j] = dot(q, key) * scale;
        }
    }
    exponentiate(&mut rows, part);
    for (j, val) in vals.chunks_exact(d).enumerate() {
        for (row, y) in rows.iter().zip(part.y.chunks_exact_mut(d)) {
            let w = row[j];
            for (o, x) in y.iter_mut().zip(val) {
                *o += w * x;
            }
        }
    }
}

/// Sum with 16 independent partial sums, so that it vectorises.
#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for ch in chunks {
        for (a, v) in acc.iter_mut().zip(ch) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Dot product with 16 independent partial sums, so that it vectorises.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Softmax attention of every query head, one at a time, in f64.
    fn reference(q: &[f32], k: &[f32], v: &[f32], dims: Dims) -> (Vec<f64>, Vec<f64>) {
        let Dims {
            group,
            head_dim: d,
            n,
            ..
        } = dims;
        let (mut y, mut p) = (Vec::new(), Vec::new());
        for (qh, qrow) in q.chunks_exact(d).enumerate() {
            let h = qh / group;
            let scores: Vec<f64> = (0..n)
                .map(|j| {
                    let key = &k[(h * n + j) * d..][..d];
                    qrow.iter()
                        .zip(key)
                        .map(|(a, b)| f64::from(a * b))
                        .sum::<f64>()
                        / (d as f64).sqrt()
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = e.iter().sum();
            let row: Vec<f64> = e.iter().map(|x| x / total).collect();
            for c in 0..d {
                y.push(
                    (0..n)
                        .map(|j| row[j] * f64::from(v[(h * n + j) * d + c]))
                        .sum(),
                );
            }
            p.extend(row);
        }
        (y, p)
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_shuffle_tree_sums_each_vector() {
        use std::arch::x86_64::*;
        if !avx512() {
            return;
        }
        let v: Vec<f32> = (0..256).map(|i| ((i * 37 % 101) as f32) * 0.25).collect();
        let mut out = [0f32; 16];
        // SAFETY: avx512f was detected; every load reads 16 floats of `v`.
        unsafe {
            let a = std::array::from_fn(|i| _mm512_loadu_ps(v.as_ptr().add(16 * i)));
            _mm512_storeu_ps(out.as_mut_ptr(), sum_lanes_16(a));
        }
        for (i, got) in out.iter().enumerate() {
            assert_eq!(
                *got,
                v[16 * i..16 * (i + 1)].iter().sum::<f32>(),
                "vector {i}"
            );
        }
    }

    #[test]
    fn spans_merge_to_the_softmax_of_the_whole_cache() {
        // The default model's shape, a larger head and group, and one no SIMD path keeps in
        // registers.
        let shapes = [(3, 3, 64), (2, 4, 128), (1, 5, 48)];
        for (n, (heads, group, head_dim)) in [1, 200, 700, 2500]
            .into_iter()
            .flat_map(|n| shapes.map(|s| (n, s)))
        {
            let dims = Dims {
                heads,
                group,
                head_dim,
                n,
            };
            let (hq, d) = (heads * group, head_dim);
            let noise = |len: usize, seed: u64| -> Vec<f32> {
                (0..len as u64)
                    .map(|i| {
                        let x = (i.wrapping_mul(2654435761).wrapping_add(seed * 97)) % 1000;
                        x as f32 / 250.0 - 2.0
                    })
                    .collect()
            };
            let (q, k, v) = (
                noise(hq * d, 1),
                noise(heads * n * d, 2),
                noise(heads * n * d, 3),
            );
            let dev = Device::Cpu;
            let qt = Tensor::from_vec(q.clone(), (hq, 1, d), &dev).unwrap();
            let kt = Tensor::from_vec(k.clone(), (heads, n, d), &dev).unwrap();
            let vt = Tensor::from_vec(v.clone(), (heads, n, d), &dev).unwrap();
            let (y, p) = attend(&qt, &kt, &vt, dims, true).unwrap().unwrap();
            let (want_y, want_p) = reference(&q, &k, &v, dims);
            let worst = |a: &[f32], b: &[f64]| {
                a.iter()
                    .zip(b)
                    .map(|(x, y)| (f64::from(*x) - y).abs())
                    .fold(0.0, f64::max)
            };
            assert!(
                worst(&y, &want_y) < 1e-5,
                "{dims:?}: y off by {}",
                worst(&y, &want_y)
            );
            assert!(
                worst(&p, &want_p) < 1e-6,
                "{dims:?}: p off by {}",
                worst(&p, &want_p)
            );
            for row in p.chunks_exact(n) {
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            }
        }
    }
}
