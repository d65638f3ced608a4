//! The golden replays with the vector kernels capped at `avx2` (via `NAMM_SIMD`), so the
//! code path of CPUs without AVX-512 is checked on machines that have it. The only test in
//! this binary: the level is read once per process, before any kernel runs.

mod policy_golden;

use namm::policy::replay::Precision;
use policy_golden::{check_f32, check_f64, replay_and_compare};

#[test]
fn golden_files_match_on_the_avx2_path() {
    std::env::set_var(namm::policy::SIMD_ENV, "avx2");
    for file in ["policy_i1_f64.json.gz", "policy_i1_gqa_f64.json"] {
        check_f64(&replay_and_compare(file, Precision::F64));
        check_f32(&replay_and_compare(file, Precision::F32));
    }
}
