//! Matrix × matrix in 8-bit integers for multi-token chunks (prefill): the GGUF's own weight
//! blocks (Q4_1, Q8_0) as unsigned bytes with a scale and an offset per block of 32, against
//! activations quantised per block of 32 like llama.cpp's. On a CPU with AVX-512 VNNI one
//! `vpdpbusd` does 64 multiply-adds where an f32 FMA does 16, and prefill is bound by these
//! products; elsewhere a scalar loop computes exactly the same numbers, slowly.

use super::q8::BLOCK;

/// Outputs per group: one 512-bit register of i32 sums.
const LANES: usize = 16;
/// Weight groups per tile (two registers of outputs).
const COLS: usize = 2;
/// Activation rows per tile; the last rows of a product go one at a time.
const ROWS: usize = 4;
/// Bytes of one group's weights for one block: 16 outputs × 32 inputs.
const GROUP_BLOCK_BYTES: usize = LANES * BLOCK;

/// `[rows, cols]` weights `w = d·u + m` with `u` an unsigned byte and `d`, `m` per block of 32
/// inputs, laid out for `vpdpbusd`: per group of 16 rows and block, 8 steps of 4 inputs, each
/// step 16 rows × 4 bytes (one register).
#[derive(Debug, Clone)]
pub struct Int8Matrix {
    rows: usize,
    cols: usize,
    u: Vec<u8>,
    /// Per group and block, the 16 rows' scales (then offsets): one register each.
    d: Vec<f32>,
    m: Vec<f32>,
}

/// Row-major activations quantised per block of 32: `x ≈ d·q`, `q` in −127..=127, with
/// `s = d·Σq` per block for the weights' offsets.
#[derive(Debug, Clone)]
pub struct Int8Rows {
    rows: usize,
    cols: usize,
    q: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
}

fn f16_at(b: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

impl Int8Matrix {
    /// `block(i)` gives block i (row-major order) as 32 bytes, scale and offset. `None`
    /// unless cols is a multiple of 32 and rows of 32 (whole tiles of outputs).
    fn pack(
        rows: usize,
        cols: usize,
        block: impl Fn(usize) -> ([u8; BLOCK], f32, f32),
    ) -> Option<Self> {
        if rows == 0 || !cols.is_multiple_of(BLOCK) || !rows.is_multiple_of(LANES * COLS) {
            return None;
        }
        let nb = cols / BLOCK;
        let mut m = Self {
            rows,
            cols,
            u: vec![0; rows * cols],
            d: vec![0.0; rows * nb],
            m: vec![0.0; rows * nb],
        };
        for r in 0..rows {
            let (g, lane) = (r / LANES, r % LANES);
            for b in 0..nb {
                let (u, d, off) = block(r * nb + b);
                let at = (g * nb + b) * LANES + lane;
                m.d[at] = d;
                m.m[at] = off;
                let base = (g * nb + b) * GROUP_BLOCK_BYTES;
                for (k, v) in u.into_iter().enumerate() {
                    m.u[base + (k / 4) * LANES * 4 + lane * 4 + k % 4] = v;
                }
            }
        }
        Some(m)
    }

    /// From the raw bytes of a GGUF Q4_1 tensor `[rows, cols]`: the stored weights, exactly.
    pub fn from_q4_1_bytes(raw: &[u8], rows: usize, cols: usize) -> Option<Self> {
        const BYTES: usize = 4 + BLOCK / 2;
        if raw.len() != rows * cols / BLOCK * BYTES {
            return None;
        }
        Self::pack(rows, cols, |i| {
            let b = &raw[i * BYTES..(i + 1) * BYTES];
            // Element j in the low nibble of byte j, element j + 16 in its high nibble.
            let u = std::array::from_fn(|k| {
                let byte = b[4 + k % 16];
                if k < 16 {
                    byte & 0x0f
                } else {
                    byte >> 4
                }
            });
            (u, f16_at(&b[0..2]), f16_at(&b[2..4]))
        })
    }

    /// From the raw bytes of a GGUF Q8_0 tensor: `d·q` stored as `d·(q + 128) − 128·d`.
    pub fn from_q8_0_bytes(raw: &[u8], rows: usize, cols: usize) -> Option<Self> {
        const BYTES: usize = 2 + BLOCK;
        if raw.len() != rows * cols / BLOCK * BYTES {
            return None;
        }
        Self::pack(rows, cols, |i| {
            let b = &raw[i * BYTES..(i + 1) * BYTES];
            let u = std::array::from_fn(|k| (b[2 + k] as i8 as i16 + 128) as u8);
            let d = f16_at(&b[0..2]);
            (u, d, -128.0 * d)
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn bytes(&self) -> usize {
        self.u.len() + (self.d.len() + self.m.len()) * 4
    }

    /// `x · Wᵀ`: `[x.rows, self.rows]`, row-major. Every output is
    /// `Σ_b (d_w·d_x·Σ u·q + m_w·s_x)` accumulated over blocks in order, whatever the kernel
    /// and the other rows: a row gets the same numbers alone (a decode step) as in a chunk.
    pub fn matmul(&self, x: &Int8Rows) -> Vec<f32> {
        assert_eq!(x.cols, self.cols, "inner dimensions");
        let mut y = vec![0f32; x.rows * self.rows];
        let out = y.as_mut_ptr() as usize;
        let tiles = self.rows / (LANES * COLS);
        let vnni = has_vnni();
        candle_core::utils::barrier_pool().execute_chunked(tiles, |range| {
            for t in range {
                let mut r0 = 0;
                while r0 < x.rows {
                    let n = if x.rows - r0 >= ROWS { ROWS } else { 1 };
                    // SAFETY: every (tile, r0) pair writes its own n × 32 outputs of `y`,
                    // which outlives the call; the features were detected.
                    unsafe { tile(self, x, t * COLS, r0, n, out as *mut f32, vnni) };
                    r0 += n;
                }
            }
        });
        y
    }
}

fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The block's quantised values, scale and scaled sum: round half to even, as the SIMD
/// conversion does, so that both give the same bytes.
fn quantize_block(x: &[f32], q: &mut [i8]) -> (f32, f32) {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (q, v) in q.iter_mut().zip(x) {
        *q = (v * id).round_ties_even() as i8;
        sum += *q as i32;
    }
    (d, d * sum as f32)
}

impl Int8Rows {
    /// `x`: row-major `[rows, cols]`, cols a multiple of 32.
    pub fn quantize(x: &[f32], cols: usize) -> Self {
        assert!(cols.is_multiple_of(BLOCK) && x.len().is_multiple_of(cols));
        let (rows, nb) = (x.len() / cols, cols / BLOCK);
        let mut r = Self {
            rows,
            cols,
            q: vec![0; rows * cols],
            d: vec![0.0; rows * nb],
            s: vec![0.0; rows * nb],
        };
        let simd = has_vnni();
        let blocks = x.chunks_exact(BLOCK).zip(r.q.chunks_exact_mut(BLOCK));
        for ((x, q), (d, s)) in blocks.zip(r.d.iter_mut().zip(r.s.iter_mut())) {
            (*d, *s) = match simd {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the features were detected; both slices hold one block.
                true => unsafe { quantize_block_avx512(x, q) },
                _ => quantize_block(x, q),
            };
        }
        r
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_block_avx512(x: &[f32], q: &mut [i8]) -> (f32, f32) {
    use std::arch::x86_64::*;
    let (a, b) = (
        _mm512_loadu_ps(x.as_ptr()),
        _mm512_loadu_ps(x.as_ptr().add(16)),
    );
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
    let d = amax / 127.0;
    let id = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
    let qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, id));
    let qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, id));
    _mm_storeu_si128(q.as_mut_ptr() as *mut __m128i, _mm512_cvtepi32_epi8(qa));
    _mm_storeu_si128(
        q.as_mut_ptr().add(16) as *mut __m128i,
        _mm512_cvtepi32_epi8(qb),
    );
    let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb));
    (d, d * sum as f32)
}

/// `n` (4 or 1) rows × 32 outputs starting at row `r0` and weight group `g0`, written to `y`
/// (`[x.rows, m.rows]`).
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
unsafe fn tile(
    m: &Int8Matrix,
    x: &Int8Rows,
    g0: usize,
    r0: usize,
    n: usize,
    y: *mut f32,
    vnni: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if vnni {
        return match n {
            ROWS => tile_vnni::<ROWS>(m, x, g0, r0, y),
            _ => tile_vnni::<1>(m, x, g0, r0, y),
        };
    }
    tile_scalar(m, x, g0, r0, n, y)
}

unsafe fn tile_scalar(m: &Int8Matrix, x: &Int8Rows, g0: usize, r0: usize, n: usize, y: *mut f32) {
    let nb = m.cols / BLOCK;
    for r in r0..r0 + n {
        for g in g0..g0 + COLS {
            for lane in 0..LANES {
                let mut acc = 0f32;
                for b in 0..nb {
                    let base = (g * nb + b) * GROUP_BLOCK_BYTES + lane * 4;
                    let dot: i32 = (0..BLOCK)
                        .map(|k| {
                            let u = m.u[base + (k / 4) * LANES * 4 + k % 4] as i32;
                            u * x.q[r * m.cols + b * BLOCK + k] as i32
                        })
                        .sum();
                    let at = (g * nb + b) * LANES + lane;
                    let xb = r * nb + b;
                    acc = (dot as f32).mul_add(m.d[at] * x.d[xb], acc);
                    acc = m.m[at].mul_add(x.s[xb], acc);
                }
                *y.add(r * m.rows + g * LANES + lane) = acc;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_vnni<const R: usize>(
    m: &Int8Matrix,
    x: &Int8Rows,
    g0: usize,
    r0: usize,
    y: *mut f32,
) {
    use std::arch::x86_64::*;
    let nb = m.cols / BLOCK;
    let mut acc = [[_mm512_setzero_ps(); COLS]; R];
    for b in 0..nb {
        let mut dots = [[_mm512_setzero_si512(); COLS]; R];
        for step in 0..BLOCK / 4 {
            let w: [__m512i; COLS] = std::array::from_fn(|c| {
                let at = ((g0 + c) * nb + b) * GROUP_BLOCK_BYTES + step * LANES * 4;
                _mm512_loadu_si512(m.u.as_ptr().add(at) as *const _)
            });
            for (r, dots) in dots.iter_mut().enumerate() {
                let at = (r0 + r) * m.cols + b * BLOCK + step * 4;
                let xq = _mm512_set1_epi32((x.q.as_ptr().add(at) as *const i32).read_unaligned());
                for c in 0..COLS {
                    dots[c] = _mm512_dpbusd_epi32(dots[c], w[c], xq);
                }
            }
        }
        let at = |c: usize| ((g0 + c) * nb + b) * LANES;
        let d: [__m512; COLS] = std::array::from_fn(|c| _mm512_loadu_ps(m.d.as_ptr().add(at(c))));
        let o: [__m512; COLS] = std::array::from_fn(|c| _mm512_loadu_ps(m.m.as_ptr().add(at(c))));
        for r in 0..R {
            let xb = (r0 + r) * nb + b;
            let (dx, sx) = (_mm512_set1_ps(x.d[xb]), _mm512_set1_ps(x.s[xb]));
            for c in 0..COLS {
                let p = _mm512_cvtepi32_ps(dots[r][c]);
                acc[r][c] = _mm512_fmadd_ps(p, _mm512_mul_ps(d[c], dx), acc[r][c]);
                acc[r][c] = _mm512_fmadd_ps(o[c], sx, acc[r][c]);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        for (c, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(y.add((r0 + r) * m.rows + (g0 + c) * LANES), *acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::q4::tests::q4_1_bytes;
    use super::*;

    fn weights(rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i % 13) as f32))
            .collect()
    }

    fn q8_0_bytes(w: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for x in w.chunks_exact(BLOCK) {
            let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = half::f16::from_f32(amax / 127.0);
            out.extend_from_slice(&d.to_bits().to_le_bytes());
            out.extend(x.iter().map(|v| (v / d.to_f32()).round() as i8 as u8));
        }
        out
    }

    /// The stored weight (row r, column c) from the packed layout.
    fn weight(m: &Int8Matrix, r: usize, c: usize) -> f64 {
        let nb = m.cols / BLOCK;
        let (g, lane, b, k) = (r / LANES, r % LANES, c / BLOCK, c % BLOCK);
        let base = (g * nb + b) * GROUP_BLOCK_BYTES + lane * 4;
        let u = m.u[base + (k / 4) * LANES * 4 + k % 4] as f64;
        let at = (g * nb + b) * LANES + lane;
        m.d[at] as f64 * u + m.m[at] as f64
    }

    /// Against the product of the stored weights and the quantised activations in f64; the
    /// SIMD kernel against the scalar one, bit for bit.
    fn check(m: &Int8Matrix, w: &[f32], n: usize) {
        let (rows, cols) = (m.rows, m.cols);
        let x: Vec<f32> = (0..n * cols)
            .map(|i| ((i * 31 % 17) as f32 - 8.0) / 3.0 * if i % 97 == 0 { 20.0 } else { 1.0 })
            .collect();
        let xq = Int8Rows::quantize(&x, cols);
        let y = m.matmul(&xq);
        assert_eq!(y.len(), n * rows);
        let nb = cols / BLOCK;
        for t in 0..n {
            let xdeq = |c: usize| xq.q[t * cols + c] as f64 * xq.d[t * nb + c / BLOCK] as f64;
            for r in 0..rows {
                let terms = (0..cols).map(|c| weight(m, r, c) * xdeq(c));
                let want: f64 = terms.clone().sum();
                let size: f64 = terms.map(f64::abs).sum::<f64>() + 1.0;
                let got = y[t * rows + r] as f64;
                assert!(
                    (got - want).abs() <= 1e-5 * size,
                    "({t}, {r}): {got} vs {want}"
                );
                // The stored weights are the file's: within rounding of what was quantised.
                let plain: f64 = (0..cols).map(|c| w[r * cols + c] as f64 * xdeq(c)).sum();
                assert!(
                    (plain - want).abs() <= 0.1 * size,
                    "({t}, {r}) far from W·x"
                );
            }
        }
        let mut scalar = vec![0f32; n * rows];
        for tile in 0..rows / (LANES * COLS) {
            for r0 in 0..n {
                unsafe { tile_scalar(m, &xq, tile * COLS, r0, 1, scalar.as_mut_ptr()) };
            }
        }
        assert_eq!(scalar, y, "the kernels disagree");
    }

    #[test]
    fn products_match_the_stored_weights() {
        let (rows, cols) = (64, 96);
        let w = weights(rows, cols);
        let q4 = Int8Matrix::from_q4_1_bytes(&q4_1_bytes(&w), rows, cols).unwrap();
        let q8 = Int8Matrix::from_q8_0_bytes(&q8_0_bytes(&w), rows, cols).unwrap();
        for n in [1, 4, 7] {
            check(&q4, &w, n);
            check(&q8, &w, n);
        }
    }

    #[test]
    fn the_quantisers_agree() {
        let x: Vec<f32> = (0..32 * 40)
            .map(|i| ((i * 7919 % 1013) as f32 - 506.0) / (1.0 + (i / 32) as f32) * 0.37)
            .chain([0.5, -0.5, 1.5, -2.5].into_iter().cycle().take(32))
            .chain(std::iter::repeat_n(0.0, 32))
            .collect();
        let got = Int8Rows::quantize(&x, 64);
        for (i, block) in x.chunks_exact(BLOCK).enumerate() {
            let mut q = [0i8; BLOCK];
            let (d, s) = quantize_block(block, &mut q);
            assert_eq!(&got.q[i * BLOCK..(i + 1) * BLOCK], &q, "block {i}");
            assert_eq!((got.d[i], got.s[i]), (d, s), "block {i}");
        }
    }

    #[test]
    fn shapes_without_whole_tiles_are_refused() {
        let w = weights(48, 64);
        assert!(Int8Matrix::from_q4_1_bytes(&q4_1_bytes(&w), 48, 64).is_none());
        assert!(Int8Matrix::from_q8_0_bytes(&q8_0_bytes(&w[..32 * 64]), 32, 60).is_none());
    }
}
