//! Attention of a single new token (a decode step) on CPU, read straight from the cache
//! storage: batched matmuls of one query row per head spend more time packing the cache
//! than multiplying, and a decode step is latency-bound.

use candle_core::{CpuStorage, Storage, Tensor};

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
    let mut y = vec![0f32; hq * d];
    let mut p = vec![0f32; hq * n];
    let (yp, pp) = (y.as_mut_ptr() as usize, p.as_mut_ptr() as usize);
    let avx2 = cfg!(target_arch = "x86_64") && avx2_fma();
    candle_core::utils::barrier_pool().execute_chunked(hq, |range| {
        for qh in range {
            let h = qh / group;
            let qrow = &q[qh * d..(qh + 1) * d];
            let keys = &kd[k0 + h * khs..][..n * d];
            let vals = &vd[v0 + h * vhs..][..n * d];
            // SAFETY: execute_chunked hands out disjoint head ranges; row qh of `p` and `y`
            // belongs to this iteration only, and both vectors outlive the call.
            let prow = unsafe { std::slice::from_raw_parts_mut((pp as *mut f32).add(qh * n), n) };
            let yrow = unsafe { std::slice::from_raw_parts_mut((yp as *mut f32).add(qh * d), d) };
            if avx2 {
                // SAFETY: avx2 and fma were detected at run time.
                unsafe { head_avx2(qrow, keys, vals, scale, prow, yrow) }
            } else {
                head(qrow, keys, vals, scale, prow, yrow)
            }
        }
    });
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
unsafe fn head_avx2(
    q: &[f32],
    keys: &[f32],
    vals: &[f32],
    scale: f32,
    p: &mut [f32],
    y: &mut [f32],
) {
    head(q, keys, vals, scale, p, y)
}

/// Softmax attention of one query row over `keys`/`vals` (`[N][D]`), probabilities into
/// `p`, output into `y` (zeroed). Inlined into the caller so it is compiled for its features.
#[inline(always)]
fn head(q: &[f32], keys: &[f32], vals: &[f32], scale: f32, p: &mut [f32], y: &mut [f32]) {
    let d = q.len();
    for (s, key) in p.iter_mut().zip(keys.chunks_exact(d)) {
        *s = dot(q, key) * scale;
    }
    let max = p.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for s in p.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    let inv = 1.0 / sum;
    for (s, val) in p.iter_mut().zip(vals.chunks_exact(d)) {
        *s *= inv;
        for (o, x) in y.iter_mut().zip(val) {
            *o += *s * x;
        }
    }
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
