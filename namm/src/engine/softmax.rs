//! Causally masked softmax of a prefill chunk's attention scores on CPU. At long contexts
//! the exponentials dominate prefill; libm's scalar `expf` does not vectorise, this one does.

/// In place over `scores: [H][G·c][N]` (rows g·c + i): row i of the chunk keeps the first
/// `N − c + i + 1` keys (every cached token and the chunk up to itself) and gets zeros after.
pub(crate) fn causal_softmax(scores: &mut [f32], n: usize, c: usize) {
    let rows = scores.len() / n;
    let base = scores.as_mut_ptr() as usize;
    let avx2 = avx2_fma();
    candle_core::utils::barrier_pool().execute_chunked(rows, |range| {
        for r in range {
            // SAFETY: execute_chunked hands out disjoint row ranges of `scores`, which
            // outlives the call.
            let row = unsafe { std::slice::from_raw_parts_mut((base as *mut f32).add(r * n), n) };
            let visible = n - c + r % c + 1;
            if avx2 {
                // SAFETY: avx2 and fma were detected at run time.
                unsafe { row_avx2(row, visible) }
            } else {
                softmax_row(row, visible)
            }
        }
    });
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
unsafe fn row_avx2(row: &mut [f32], visible: usize) {
    softmax_row(row, visible)
}

#[inline(always)]
fn softmax_row(row: &mut [f32], visible: usize) {
    let (live, masked) = row.split_at_mut(visible);
    masked.fill(0.0);
    let max = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for x in live.iter_mut() {
        *x = exp(*x - max);
    }
    let mut sums = [0f32; 16];
    let chunks = live.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for ch in chunks {
        for (s, x) in sums.iter_mut().zip(ch) {
            *s += x;
        }
    }
    let inv = 1.0 / (sums.iter().sum::<f32>() + tail);
    for x in live.iter_mut() {
        *x *= inv;
    }
}

/// e^x for x ≤ 0 (Cephes' expf: range reduction by ln 2, degree-6 polynomial, relative error
/// ~1e-7); below −87 the result is clamped to e^−87 (~1.6e−38) rather than underflowing.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let x = x.max(-87.0);
    let fx = (x * LOG2E + 0.5).floor();
    let r = x - fx * C1 - fx * C2;
    let p = 1.987_569_2e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 0.166_666_65;
    let p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((fx as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_close_to_libm() {
        for i in 0..=10_000 {
            let x = -87.0 * i as f32 / 10_000.0;
            let (got, want) = (exp(x), x.exp());
            assert!((got - want).abs() <= 3e-7 * want, "{x}: {got} vs {want}");
        }
    }

    #[test]
    fn rows_are_causal_distributions() {
        let (n, c) = (7, 3);
        let mut s: Vec<f32> = (0..2 * c * n).map(|i| (i % 5) as f32 - 2.0).collect();
        causal_softmax(&mut s, n, c);
        for (r, row) in s.chunks(n).enumerate() {
            let visible = n - c + r % c + 1;
            assert!(row[visible..].iter().all(|&p| p == 0.0));
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }
}
