//! Runtime selection of the widest vector instructions the CPU has. The workspace builds for
//! the baseline x86-64 target (SSE2), so the hot kernels are compiled a second and third time
//! with AVX2/AVX-512 enabled and picked once per call; the kernel bodies are plain Rust loops
//! over fixed-size lanes that the compiler vectorises for whichever target it compiles.

/// A hot loop nest; `run` must be `#[inline(always)]` so that it is compiled inside the
/// feature-enabled wrappers below rather than once for the baseline target.
pub trait Kernel {
    type Output;
    fn run(self) -> Self::Output;
}

/// Runs `kernel` compiled for the best instruction set available.
#[inline]
pub fn dispatch<K: Kernel>(kernel: K) -> K::Output {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F, checked just above.
            return unsafe { run_avx512(kernel) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA, checked just above.
            return unsafe { run_avx2(kernel) };
        }
    }
    kernel.run()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn run_avx512<K: Kernel>(kernel: K) -> K::Output {
    kernel.run()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<K: Kernel>(kernel: K) -> K::Output {
    kernel.run()
}
