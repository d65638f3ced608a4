//! Matrix × vector with 8-bit weights for single-token decode steps: weights in blocks of 32
//! int8 values with one f32 scale each (Q8_0 with the scale pre-widened), the vector
//! quantised the same way, integer dot products per block. candle's Q8_0 kernel converts an
//! f16 scale per block and runs one row per call; decode is bound by this product.

pub(crate) const BLOCK: usize = 32;

/// `row(r, &mut y[r·width..(r+1)·width])` for every weight row r, split across candle's
/// spinning CPU worker pool (the caller takes part): a decode step runs ~200 small products,
/// too short for rayon's wake-ups. A row's `width` outputs are the same weights against
/// `width` vectors, so a batch of decode steps streams the weights once.
pub(crate) fn par_rows(y: &mut [f32], width: usize, row: impl Fn(usize, &mut [f32]) + Sync) {
    let out = y.as_mut_ptr() as usize;
    candle_core::utils::barrier_pool().execute_chunked(y.len() / width.max(1), |range| {
        for r in range {
            // SAFETY: execute_chunked hands out disjoint ranges of rows, and `y` outlives the
            // call, so every element is written by exactly one thread.
            let dst =
                unsafe { std::slice::from_raw_parts_mut((out as *mut f32).add(r * width), width) };
            row(r, dst);
        }
    });
}

/// `[rows, cols]` weights, cols a multiple of 32.
#[derive(Debug, Clone)]
pub struct Q8Matrix {
    rows: usize,
    cols: usize,
    qs: Vec<i8>,
    scales: Vec<f32>,
}

/// A vector quantised for the 8-bit and 4-bit matrix × vector kernels: blocks of 32 int8
/// values with one f32 scale each.
#[derive(Debug, Clone, Default)]
pub struct Q8Vector {
    pub(crate) qs: Vec<i8>,
    pub(crate) scales: Vec<f32>,
    /// Per block, scale × sum of the block's quantised values (for the Q4_1 offsets).
    pub(crate) scaled_sums: Vec<f32>,
}

pub(crate) fn quantize_block(x: &[f32], q: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (q, v) in q.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
    }
    d
}

impl Q8Vector {
    pub fn quantize(x: &[f32]) -> Self {
        let mut qs = vec![0i8; x.len()];
        let scales: Vec<f32> = x
            .chunks_exact(BLOCK)
            .zip(qs.chunks_exact_mut(BLOCK))
            .map(|(x, q)| quantize_block(x, q))
            .collect();
        let scaled_sums = qs
            .chunks_exact(BLOCK)
            .zip(&scales)
            .map(|(q, d)| d * q.iter().map(|&v| v as i32).sum::<i32>() as f32)
            .collect();
        Self {
            qs,
            scales,
            scaled_sums,
        }
    }
}

impl Q8Matrix {
    /// `w`: row-major `[rows, cols]`; `None` unless cols is a multiple of 32.
    pub fn quantize(w: &[f32], rows: usize, cols: usize) -> Option<Self> {
        if !cols.is_multiple_of(BLOCK) || w.len() != rows * cols {
            return None;
        }
        let mut qs = vec![0i8; w.len()];
        let scales = w
            .chunks_exact(BLOCK)
            .zip(qs.chunks_exact_mut(BLOCK))
            .map(|(x, q)| quantize_block(x, q))
            .collect();
        Some(Self {
            rows,
            cols,
            qs,
            scales,
        })
    }

    /// From the raw bytes of a GGUF Q8_0 tensor `[rows, cols]` (per block an f16 scale and
    /// 32 int8 values): the stored weights, exactly.
    pub fn from_q8_0_bytes(raw: &[u8], rows: usize, cols: usize) -> Option<Self> {
        const BYTES: usize = 2 + BLOCK;
        let nb = rows * cols / BLOCK;
        if !cols.is_multiple_of(BLOCK) || raw.len() != nb * BYTES {
            return None;
        }
        let mut qs = Vec::with_capacity(rows * cols);
        let mut scales = Vec::with_capacity(nb);
        for b in raw.chunks_exact(BYTES) {
            scales.push(half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32());
            qs.extend(b[2..].iter().map(|&v| v as i8));
        }
        Some(Self {
            rows,
            cols,
            qs,
            scales,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn bytes(&self) -> usize {
        self.qs.len() + self.scales.len() * 4
    }

    /// `y[r][b] = (W · xs[b])[r]` for vectors quantised with [`Q8Vector::quantize`], `y`:
    /// `[rows][xs.len()]`; each product is the same whatever the other vectors.
    pub fn gemv_many(&self, xs: &[Q8Vector], y: &mut [f32]) {
        let nb = self.cols / BLOCK;
        par_rows(&mut y[..self.rows * xs.len()], xs.len(), |r, out| {
            let w = &self.qs[r * self.cols..(r + 1) * self.cols];
            for (o, x) in out.iter_mut().zip(xs) {
                *o = dot(w, &self.scales[r * nb..(r + 1) * nb], &x.qs, &x.scales);
            }
        });
    }
}

fn dot(w: &[i8], ws: &[f32], x: &[i8], xs: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the features were just detected; slices have matching lengths.
            return unsafe { dot_avx2(w, ws, x, xs) };
        }
    }
    dot_scalar(w, ws, x, xs)
}

fn dot_scalar(w: &[i8], ws: &[f32], x: &[i8], xs: &[f32]) -> f32 {
    w.chunks_exact(BLOCK)
        .zip(x.chunks_exact(BLOCK))
        .zip(ws.iter().zip(xs))
        .map(|((w, x), (a, b))| {
            let s: i32 = w.iter().zip(x).map(|(&p, &q)| p as i32 * q as i32).sum();
            s as f32 * a * b
        })
        .sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(w: &[i8], ws: &[f32], x: &[i8], xs: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let ones = _mm256_set1_epi16(1);
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let nb = ws.len();
    let block = |b: usize| -> __m256 {
        let wv = _mm256_loadu_si256(w.as_ptr().add(b * BLOCK) as *const __m256i);
        let xv = _mm256_loadu_si256(x.as_ptr().add(b * BLOCK) as *const __m256i);
        // maddubs multiplies unsigned by signed bytes: move x's sign onto w.
        let ax = _mm256_sign_epi8(xv, xv);
        let sw = _mm256_sign_epi8(wv, xv);
        let p16 = _mm256_maddubs_epi16(ax, sw);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones))
    };
    let mut b = 0;
    while b + 1 < nb {
        acc0 = _mm256_fmadd_ps(block(b), _mm256_set1_ps(ws[b] * xs[b]), acc0);
        acc1 = _mm256_fmadd_ps(block(b + 1), _mm256_set1_ps(ws[b + 1] * xs[b + 1]), acc1);
        b += 2;
    }
    if b < nb {
        acc0 = _mm256_fmadd_ps(block(b), _mm256_set1_ps(ws[b] * xs[b]), acc0);
    }
    let acc = _mm256_add_ps(acc0, acc1);
    let hi = _mm256_extractf128_ps(acc, 1);
    let s = _mm_add_ps(_mm256_castps256_ps128(acc), hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemv_matches_dequantised_product() {
        let (rows, cols) = (70, 96);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i % 13) as f32))
            .collect();
        let x: Vec<f32> = (0..cols)
            .map(|i| ((i * 31 % 17) as f32 - 8.0) / 3.0)
            .collect();
        let m = Q8Matrix::quantize(&w, rows, cols).unwrap();
        let xq = Q8Vector::quantize(&x);
        let mut y = vec![0f32; rows];
        m.gemv_many(std::slice::from_ref(&xq), &mut y);
        for r in 0..rows {
            let exact: f32 = (0..cols).map(|c| w[r * cols + c] * x[c]).sum();
            let scalar = dot_scalar(
                &m.qs[r * cols..(r + 1) * cols],
                &m.scales[r * 3..(r + 1) * 3],
                &xq.qs,
                &xq.scales,
            );
            assert!(
                (y[r] - scalar).abs() <= 1e-3 * scalar.abs().max(1.0),
                "row {r}"
            );
            // 8-bit weights and inputs: relative error ~2/127 of the magnitude summed.
            let magnitude: f32 = (0..cols).map(|c| (w[r * cols + c] * x[c]).abs()).sum();
            assert!((y[r] - exact).abs() <= 0.02 * magnitude, "row {r}");
        }
    }
}
