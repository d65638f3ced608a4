//! Explicit 16-lane vectors for the hot kernels, and runtime selection of the widest
//! instruction set the CPU has. The workspace builds for the baseline x86-64 target, and the
//! compiler's auto-vectoriser picks the wrong loop in these kernels (gathering across rows
//! instead of loading along lanes), so the kernels are written once against [`Vector`] and
//! instantiated with AVX-512 or AVX2 registers for f32, or with plain arrays ([`Lanes`]) for
//! f64 and for CPUs without AVX2.

use std::ops::{Add, Mul, Sub};

use super::real::Real;

/// Width of every [`Vector`].
pub const LANES: usize = 16;

/// 16 values of `T` operated on together.
pub trait Vector<T: Real>:
    Copy + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self>
{
    fn zero() -> Self;
    fn splat(v: T) -> Self;
    fn load(src: &[T; LANES]) -> Self;
    fn store(self, dst: &mut [T; LANES]);
    /// `self·a + b`.
    fn mul_add(self, a: Self, b: Self) -> Self;
    fn sqrt(self) -> Self;
    fn max(self, other: Self) -> Self;
    /// [`Real::exp_nonpositive`] per lane.
    fn exp_nonpositive(self) -> Self;

    fn to_array(self) -> [T; LANES] {
        let mut a = [T::ZERO; LANES];
        self.store(&mut a);
        a
    }

    fn reduce_sum(self) -> T {
        self.to_array().iter().fold(T::ZERO, |a, &b| a + b)
    }

    fn reduce_max(self) -> T {
        self.to_array()
            .iter()
            .fold(T::NEG_INFINITY, |a, &b| a.max_fast(b))
    }
}

/// Portable lanes: a plain array, every operation a loop (f64, and CPUs without AVX2).
#[derive(Debug, Clone, Copy)]
pub struct Lanes<T>([T; LANES]);

impl<T: Real> Add for Lanes<T> {
    type Output = Self;
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        Lanes(std::array::from_fn(|l| self.0[l] + o.0[l]))
    }
}

impl<T: Real> Sub for Lanes<T> {
    type Output = Self;
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        Lanes(std::array::from_fn(|l| self.0[l] - o.0[l]))
    }
}

impl<T: Real> Mul for Lanes<T> {
    type Output = Self;
    #[inline(always)]
    fn mul(self, o: Self) -> Self {
        Lanes(std::array::from_fn(|l| self.0[l] * o.0[l]))
    }
}

impl<T: Real> Vector<T> for Lanes<T> {
    #[inline(always)]
    fn zero() -> Self {
        Lanes([T::ZERO; LANES])
    }
    #[inline(always)]
    fn splat(v: T) -> Self {
        Lanes([v; LANES])
    }
    #[inline(always)]
    fn load(src: &[T; LANES]) -> Self {
        Lanes(*src)
    }
    #[inline(always)]
    fn store(self, dst: &mut [T; LANES]) {
        *dst = self.0;
    }
    #[inline(always)]
    fn mul_add(self, a: Self, b: Self) -> Self {
        Lanes(std::array::from_fn(|l| self.0[l].mul_add(a.0[l], b.0[l])))
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        Lanes(self.0.map(T::sqrt))
    }
    #[inline(always)]
    fn max(self, o: Self) -> Self {
        Lanes(std::array::from_fn(|l| self.0[l].max_fast(o.0[l])))
    }
    #[inline(always)]
    fn exp_nonpositive(self) -> Self {
        Lanes(self.0.map(T::exp_nonpositive))
    }
}

/// A hot loop nest, generic over the vector type; `run` must be `#[inline(always)]` so that
/// it is compiled inside the feature-enabled wrappers below.
pub trait Kernel<T: Real> {
    type Output;
    fn run<V: Vector<T>>(self) -> Self::Output;
}

/// Runs `kernel` with the best vectors for `T` on this CPU.
#[inline]
pub fn dispatch<T: Real, K: Kernel<T>>(kernel: K) -> K::Output {
    T::dispatch(kernel)
}

/// Runs `kernel` with portable lanes, compiled with AVX-512 or AVX2 when available (the
/// auto-vectoriser then does what it can).
#[inline]
pub fn dispatch_portable<T: Real, K: Kernel<T>>(kernel: K) -> K::Output {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F, checked just above.
            return unsafe { x86::run_avx512::<T, Lanes<T>, K>(kernel) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA, checked just above.
            return unsafe { x86::run_avx2::<T, Lanes<T>, K>(kernel) };
        }
    }
    kernel.run::<Lanes<T>>()
}

/// f32 kernels with AVX-512 or AVX2 registers where the CPU has them.
#[inline]
pub fn dispatch_f32<K: Kernel<f32>>(kernel: K) -> K::Output {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F, checked just above; `F32x16` is only built
            // here.
            return unsafe { x86::run_avx512::<f32, x86::F32x16, K>(kernel) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA, checked just above; `F32x8x2` is only
            // built here.
            return unsafe { x86::run_avx2::<f32, x86::F32x8x2, K>(kernel) };
        }
    }
    kernel.run::<Lanes<f32>>()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The vector types wrap `std::arch` registers. Their methods are `#[inline(always)]`
    //! and only ever run inside `run_avx512` / `run_avx2`, which the dispatchers call after
    //! checking the CPU features; that is what makes the intrinsics sound to call.
    use std::arch::x86_64::*;
    use std::ops::{Add, Mul, Sub};

    use super::{Kernel, Vector, LANES};
    use crate::policy::real::Real;

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn run_avx512<T: Real, V: Vector<T>, K: Kernel<T>>(kernel: K) -> K::Output {
        kernel.run::<V>()
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn run_avx2<T: Real, V: Vector<T>, K: Kernel<T>>(kernel: K) -> K::Output {
        kernel.run::<V>()
    }

    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const SHIFTER: f32 = 12_582_912.0;
    const EXP_POLY: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        5e-1,
    ];

    /// 16 f32 in one AVX-512 register.
    #[derive(Clone, Copy)]
    pub struct F32x16(__m512);

    macro_rules! binop {
        ($ty:ident, $trait:ident, $method:ident, $body:expr) => {
            impl $trait for $ty {
                type Output = Self;
                #[inline(always)]
                fn $method(self, o: Self) -> Self {
                    // SAFETY: see the module comment.
                    unsafe { $body(self, o) }
                }
            }
        };
    }

    binop!(F32x16, Add, add, |a: F32x16, b: F32x16| F32x16(
        _mm512_add_ps(a.0, b.0)
    ));
    binop!(F32x16, Sub, sub, |a: F32x16, b: F32x16| F32x16(
        _mm512_sub_ps(a.0, b.0)
    ));
    binop!(F32x16, Mul, mul, |a: F32x16, b: F32x16| F32x16(
        _mm512_mul_ps(a.0, b.0)
    ));

    impl Vector<f32> for F32x16 {
        #[inline(always)]
        fn zero() -> Self {
            // SAFETY: see the module comment.
            unsafe { F32x16(_mm512_setzero_ps()) }
        }
        #[inline(always)]
        fn splat(v: f32) -> Self {
            // SAFETY: see the module comment.
            unsafe { F32x16(_mm512_set1_ps(v)) }
        }
        #[inline(always)]
        fn load(src: &[f32; LANES]) -> Self {
            // SAFETY: see the module comment; `src` holds 16 readable f32.
            unsafe { F32x16(_mm512_loadu_ps(src.as_ptr())) }
        }
        #[inline(always)]
        fn store(self, dst: &mut [f32; LANES]) {
            // SAFETY: see the module comment; `dst` holds 16 writable f32.
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), self.0) }
        }
        #[inline(always)]
        fn mul_add(self, a: Self, b: Self) -> Self {
            // SAFETY: see the module comment.
            unsafe { F32x16(_mm512_fmadd_ps(self.0, a.0, b.0)) }
        }
        #[inline(always)]
        fn sqrt(self) -> Self {
            // SAFETY: see the module comment.
            unsafe { F32x16(_mm512_sqrt_ps(self.0)) }
        }
        #[inline(always)]
        fn max(self, o: Self) -> Self {
            // SAFETY: see the module comment.
            unsafe { F32x16(_mm512_max_ps(self.0, o.0)) }
        }
        #[inline(always)]
        fn exp_nonpositive(self) -> Self {
            // The same steps as `real::exp_f32`, lane-parallel.
            // SAFETY: see the module comment.
            unsafe {
                let x = _mm512_max_ps(self.0, _mm512_set1_ps(-87.0));
                let shifter = _mm512_set1_ps(SHIFTER);
                let t = _mm512_fmadd_ps(x, _mm512_set1_ps(LOG2E), shifter);
                let k = _mm512_sub_ps(t, shifter);
                let r = _mm512_fnmadd_ps(k, _mm512_set1_ps(LN2_HI), x);
                let r = _mm512_fnmadd_ps(k, _mm512_set1_ps(LN2_LO), r);
                let mut p = _mm512_set1_ps(EXP_POLY[0]);
                for c in &EXP_POLY[1..] {
                    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
                }
                let r2 = _mm512_mul_ps(r, r);
                let er = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0));
                let bits = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_castps_si512(shifter));
                let scale = _mm512_slli_epi32::<23>(_mm512_add_epi32(bits, _mm512_set1_epi32(127)));
                F32x16(_mm512_mul_ps(er, _mm512_castsi512_ps(scale)))
            }
        }
    }

    /// 16 f32 in two AVX2 registers.
    #[derive(Clone, Copy)]
    pub struct F32x8x2(__m256, __m256);

    binop!(F32x8x2, Add, add, |a: F32x8x2, b: F32x8x2| F32x8x2(
        _mm256_add_ps(a.0, b.0),
        _mm256_add_ps(a.1, b.1)
    ));
    binop!(F32x8x2, Sub, sub, |a: F32x8x2, b: F32x8x2| F32x8x2(
        _mm256_sub_ps(a.0, b.0),
        _mm256_sub_ps(a.1, b.1)
    ));
    binop!(F32x8x2, Mul, mul, |a: F32x8x2, b: F32x8x2| F32x8x2(
        _mm256_mul_ps(a.0, b.0),
        _mm256_mul_ps(a.1, b.1)
    ));

    /// `exp_f32` on 8 lanes.
    #[inline(always)]
    unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
        let shifter = _mm256_set1_ps(SHIFTER);
        let t = _mm256_fmadd_ps(x, _mm256_set1_ps(LOG2E), shifter);
        let k = _mm256_sub_ps(t, shifter);
        let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_set1_ps(EXP_POLY[0]);
        for c in &EXP_POLY[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
        }
        let r2 = _mm256_mul_ps(r, r);
        let er = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
        let bits = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_castps_si256(shifter));
        let scale = _mm256_slli_epi32::<23>(_mm256_add_epi32(bits, _mm256_set1_epi32(127)));
        _mm256_mul_ps(er, _mm256_castsi256_ps(scale))
    }

    impl Vector<f32> for F32x8x2 {
        #[inline(always)]
        fn zero() -> Self {
            // SAFETY: see the module comment.
            unsafe { F32x8x2(_mm256_setzero_ps(), _mm256_setzero_ps()) }
        }
        #[inline(always)]
        fn splat(v: f32) -> Self {
            // SAFETY: see the module comment.
            unsafe { F32x8x2(_mm256_set1_ps(v), _mm256_set1_ps(v)) }
        }
        #[inline(always)]
        fn load(src: &[f32; LANES]) -> Self {
            // SAFETY: see the module comment; `src` holds 16 readable f32.
            unsafe {
                F32x8x2(
                    _mm256_loadu_ps(src.as_ptr()),
                    _mm256_loadu_ps(src.as_ptr().add(8)),
                )
            }
        }
        #[inline(always)]
        fn store(self, dst: &mut [f32; LANES]) {
            // SAFETY: see the module comment; `dst` holds 16 writable f32.
            unsafe {
                _mm256_storeu_ps(dst.as_mut_ptr(), self.0);
                _mm256_storeu_ps(dst.as_mut_ptr().add(8), self.1);
            }
        }
        #[inline(always)]
        fn mul_add(self, a: Self, b: Self) -> Self {
            // SAFETY: see the module comment.
            unsafe {
                F32x8x2(
                    _mm256_fmadd_ps(self.0, a.0, b.0),
                    _mm256_fmadd_ps(self.1, a.1, b.1),
                )
            }
        }
        #[inline(always)]
        fn sqrt(self) -> Self {
            // SAFETY: see the module comment.
            unsafe { F32x8x2(_mm256_sqrt_ps(self.0), _mm256_sqrt_ps(self.1)) }
        }
        #[inline(always)]
        fn max(self, o: Self) -> Self {
            // SAFETY: see the module comment.
            unsafe { F32x8x2(_mm256_max_ps(self.0, o.0), _mm256_max_ps(self.1, o.1)) }
        }
        #[inline(always)]
        fn exp_nonpositive(self) -> Self {
            // SAFETY: see the module comment.
            unsafe { F32x8x2(exp8(self.0), exp8(self.1)) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Probe<'a>(&'a [f32; LANES]);

    impl Kernel<f32> for Probe<'_> {
        type Output = [f32; LANES];
        #[inline(always)]
        fn run<V: Vector<f32>>(self) -> [f32; LANES] {
            let x = V::load(self.0);
            let y = x.mul_add(V::splat(2.0), V::splat(-1.0)).max(V::zero());
            (y.sqrt() + (x - V::splat(6.0)).exp_nonpositive() * x).to_array()
        }
    }

    #[test]
    fn every_vector_type_computes_the_same() {
        let x: [f32; LANES] = std::array::from_fn(|l| l as f32 * 0.37);
        let want = Probe(&x).run::<Lanes<f32>>();
        let mut results = vec![dispatch_f32(Probe(&x)), dispatch_portable(Probe(&x))];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: AVX2 and FMA are present, checked just above.
            results.push(unsafe { x86::run_avx2::<f32, x86::F32x8x2, _>(Probe(&x)) });
        }
        for got in results {
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{g} vs {w}");
            }
        }
    }
}
