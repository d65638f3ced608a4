//! Matrix × vector with 4-bit weights in GGUF's Q4_1 blocks (32 values `d·q + m`, q in
//! 0..16) for single-token decode steps, against a vector quantised to 8 bits. candle has no
//! SIMD kernel for Q4_1; decode streams every weight once per token, so 4 bits instead of 8
//! halve the memory traffic that bounds it.

use super::q8::{par_rows, Q8Vector, BLOCK};

/// `[rows, cols]` weights, cols a multiple of 32.
#[derive(Debug, Clone)]
pub struct Q4Matrix {
    rows: usize,
    cols: usize,
    /// Per block 16 bytes: element j in the low nibble of byte j, element j + 16 in its high
    /// nibble (GGUF's order).
    qs: Vec<u8>,
    d: Vec<f32>,
    m: Vec<f32>,
}

/// Bytes of one GGUF Q4_1 block: f16 d, f16 m, 16 bytes of nibbles.
const Q4_1_BYTES: usize = 20;

fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

impl Q4Matrix {
    /// From the raw bytes of a GGUF Q4_1 tensor `[rows, cols]`: the stored weights, exactly.
    pub fn from_q4_1_bytes(raw: &[u8], rows: usize, cols: usize) -> Option<Self> {
        let nb = rows * cols / BLOCK;
        if !cols.is_multiple_of(BLOCK) || raw.len() != nb * Q4_1_BYTES {
            return None;
        }
        let mut m = Self {
            rows,
            cols,
            qs: Vec::with_capacity(nb * 16),
            d: Vec::with_capacity(nb),
            m: Vec::with_capacity(nb),
        };
        for b in raw.chunks_exact(Q4_1_BYTES) {
            m.d.push(f16_to_f32(u16::from_le_bytes([b[0], b[1]])));
            m.m.push(f16_to_f32(u16::from_le_bytes([b[2], b[3]])));
            m.qs.extend_from_slice(&b[4..]);
        }
        Some(m)
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn bytes(&self) -> usize {
        self.qs.len() + (self.d.len() + self.m.len()) * 4
    }

    /// `y[r][b] = (W · xs[b])[r]` for vectors quantised with [`Q8Vector::quantize`], `y`:
    /// `[rows][xs.len()]`; each product is the same whatever the other vectors.
    pub fn gemv_many(&self, xs: &[Q8Vector], y: &mut [f32]) {
        let nb = self.cols / BLOCK;
        par_rows(&mut y[..self.rows * xs.len()], xs.len(), |r, out| {
            let blocks = r * nb..(r + 1) * nb;
            let qs = &self.qs[r * nb * 16..(r + 1) * nb * 16];
            for (o, x) in out.iter_mut().zip(xs) {
                let offsets: f32 = self.m[blocks.clone()]
                    .iter()
                    .zip(&x.scaled_sums)
                    .map(|(m, s)| m * s)
                    .sum();
                *o = dot(qs, &self.d[blocks.clone()], &x.qs, &x.scales) + offsets;
            }
        });
    }
}

/// Σ_b d_w[b]·d_x[b]·Σ_j q[b,j]·x[b,j] (the offsets m are added by the caller).
fn dot(qs: &[u8], dw: &[f32], x: &[i8], dx: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the features were just detected; slices have matching lengths.
            return unsafe { dot_avx2(qs, dw, x, dx) };
        }
    }
    dot_scalar(qs, dw, x, dx)
}

fn dot_scalar(qs: &[u8], dw: &[f32], x: &[i8], dx: &[f32]) -> f32 {
    qs.chunks_exact(16)
        .zip(x.chunks_exact(BLOCK))
        .zip(dw.iter().zip(dx))
        .map(|((q, x), (a, b))| {
            let s: i32 = (0..16)
                .map(|j| (q[j] & 0x0f) as i32 * x[j] as i32 + (q[j] >> 4) as i32 * x[j + 16] as i32)
                .sum();
            s as f32 * a * b
        })
        .sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(qs: &[u8], dw: &[f32], x: &[i8], dx: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let ones = _mm256_set1_epi16(1);
    let low = _mm_set1_epi8(0x0f);
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let nb = dw.len();
    let mut b = 0;
    while b < nb {
        let packed = _mm_loadu_si128(qs.as_ptr().add(b * 16) as *const __m128i);
        let lo = _mm_and_si128(packed, low);
        let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), low);
        let q = _mm256_set_m128i(hi, lo);
        let xv = _mm256_loadu_si256(x.as_ptr().add(b * BLOCK) as *const __m256i);
        // q is unsigned (0..15), x signed: maddubs takes them as they are.
        let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(q, xv), ones));
        let s = _mm256_set1_ps(dw[b] * dx[b]);
        if b % 2 == 0 {
            acc0 = _mm256_fmadd_ps(p, s, acc0);
        } else {
            acc1 = _mm256_fmadd_ps(p, s, acc1);
        }
        b += 1;
    }
    let acc = _mm256_add_ps(acc0, acc1);
    let hi = _mm256_extractf128_ps(acc, 1);
    let s = _mm_add_ps(_mm256_castps256_ps128(acc), hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// GGUF Q4_1 bytes of row-major weights (min and range per block, f16).
    pub(in crate::model) fn q4_1_bytes(w: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for x in w.chunks_exact(BLOCK) {
            let min = x.iter().copied().fold(f32::INFINITY, f32::min);
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let d = half::f16::from_f32((max - min) / 15.0);
            let m = half::f16::from_f32(min);
            let level = |v: f32| (((v - m.to_f32()) / d.to_f32()).round().clamp(0.0, 15.0)) as u8;
            out.extend_from_slice(&d.to_bits().to_le_bytes());
            out.extend_from_slice(&m.to_bits().to_le_bytes());
            out.extend((0..16).map(|j| level(x[j]) | level(x[j + 16]) << 4));
        }
        out
    }

    #[test]
    fn gemv_matches_dequantised_product() {
        let (rows, cols) = (70, 96);
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i % 13) as f32))
            .collect();
        let x: Vec<f32> = (0..cols)
            .map(|i| ((i * 31 % 17) as f32 - 8.0) / 3.0)
            .collect();
        let m = Q4Matrix::from_q4_1_bytes(&q4_1_bytes(&w), rows, cols).unwrap();
        let xq = Q8Vector::quantize(&x);
        let mut y = vec![0f32; rows];
        m.gemv_many(std::slice::from_ref(&xq), &mut y);
        for r in 0..rows {
            let deq: Vec<f32> = (0..cols)
                .map(|c| {
                    let b = r * cols / BLOCK + c / BLOCK;
                    let byte = m.qs[b * 16 + c % 16];
                    let q = if c % BLOCK < 16 {
                        byte & 0x0f
                    } else {
                        byte >> 4
                    };
                    q as f32 * m.d[b] + m.m[b]
                })
                .collect();
            // The kernel's arithmetic: stored weights times the 8-bit input, exactly.
            let xdeq = |c: usize| xq.qs[c] as f64 * xq.scales[c / BLOCK] as f64;
            let want: f64 = (0..cols).map(|c| deq[c] as f64 * xdeq(c)).sum();
            let magnitude: f64 = (0..cols).map(|c| (deq[c] as f64 * xdeq(c)).abs()).sum();
            assert!(
                (y[r] as f64 - want).abs() <= 1e-5 * magnitude,
                "row {r}: {} vs {want}",
                y[r]
            );
        }
    }
}
