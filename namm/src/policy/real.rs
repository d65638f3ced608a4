//! The float type the NAMM maths is generic over: `f64` reproduces the golden vectors, `f32`
//! is the production path. One implementation, two instantiations.

use std::fmt::Debug;
use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Neg, Sub, SubAssign};

use super::simd::{self, Kernel};

pub trait Real:
    Copy
    + Debug
    + Default
    + Send
    + Sync
    + 'static
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
{
    const ZERO: Self;
    const ONE: Self;
    const NEG_INFINITY: Self;
    const INFINITY: Self;
    fn from_f64(v: f64) -> Self;
    fn from_f32(v: f32) -> Self;
    fn to_f64(self) -> f64;
    fn sqrt(self) -> Self;
    /// `self·a + b` with one rounding. A single instruction inside the AVX2/AVX-512 kernels
    /// (see `simd`); only a CPU without FMA would pay for a software fallback.
    fn mul_add(self, a: Self, b: Self) -> Self;
    /// `exp(x)` for the softmax, where `x ≤ 0`. `f32` uses a vectorisable polynomial
    /// (relative error ~1e-7, the f32 rounding level); `f64` the exact libm value, because the
    /// f64 path exists to match the reference to 1e-10.
    fn exp_nonpositive(self) -> Self;
    /// Runs a vector kernel with the best vector type for `Self` on this CPU.
    fn dispatch<K: Kernel<Self>>(kernel: K) -> K::Output;
    /// The larger of two values, in a form the compiler can vectorise (no NaN special case).
    #[inline(always)]
    fn max_fast(self, other: Self) -> Self {
        if other > self {
            other
        } else {
            self
        }
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INFINITY: Self = f64::NEG_INFINITY;
    const INFINITY: Self = f64::INFINITY;
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v as f64
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        f64::mul_add(self, a, b)
    }
    #[inline(always)]
    fn exp_nonpositive(self) -> Self {
        f64::exp(self)
    }
    #[inline]
    fn dispatch<K: Kernel<Self>>(kernel: K) -> K::Output {
        simd::dispatch_portable(kernel)
    }
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INFINITY: Self = f32::NEG_INFINITY;
    const INFINITY: Self = f32::INFINITY;
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        f32::mul_add(self, a, b)
    }
    #[inline(always)]
    fn exp_nonpositive(self) -> Self {
        exp_f32(self)
    }
    #[inline]
    fn dispatch<K: Kernel<Self>>(kernel: K) -> K::Output {
        simd::dispatch_f32(kernel)
    }
}

/// Branch-free `exp` for `x ≤ 0` (Cephes-style: `x = k·ln2 + r`, degree-6 polynomial for
/// `e^r` on |r| ≤ ln2/2, `2^k` assembled in the exponent bits). Inputs below −87 return a
/// tiny positive value instead of a denormal, which is harmless in a softmax.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2^23: adding it rounds to the nearest integer and leaves that integer in the low
    // mantissa bits, without a float-to-int instruction the baseline target may lack.
    const SHIFTER: f32 = 12_582_912.0;
    let x = if x < -87.0 { -87.0 } else { x };
    let t = x * LOG2E + SHIFTER;
    let k = t - SHIFTER;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let er = p * r * r + r + 1.0;
    let bits = (t.to_bits() as i32).wrapping_sub(SHIFTER.to_bits() as i32);
    let scale = f32::from_bits(((bits + 127) as u32) << 23);
    er * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f32_matches_libm_on_the_softmax_range() {
        let mut worst = 0.0f64;
        for i in 0..=86_900 {
            let x = -(i as f32) * 1e-3;
            let exact = (x as f64).exp();
            let rel = ((exp_f32(x) as f64) - exact).abs() / exact;
            worst = worst.max(rel);
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(f32::NEG_INFINITY) < 1e-37);
    }
}
