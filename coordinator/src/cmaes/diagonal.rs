//! The stages of `ask` and `tell` for a diagonal C (sep-CMA-ES, Ros & Hansen 2008), which
//! replace the full model's matrix products by element-wise ones: B = I, so D = √diag(C),
//! y = z ⊙ D and C^{-1/2}·v = v / D; the covariance update keeps only the diagonal of the
//! full update. Everything else (paths, h_σ, σ, the active-weight rule) is the full model's,
//! with the separable learning rates of [`super::StrategyParams`].
//!
//! A diagonal C is never shifted at generation 0 (see [`super::CmaesConfig::shift_first_gen`]).

use super::{candidates, rescaled_negative};

/// D = √diag(C), with a non-positive variance replaced by 1e-20 before the root, as the
/// full model treats its eigenvalues.
pub(super) fn axis_lengths(c: &[f64]) -> Vec<f64> {
    c.iter()
        .map(|&v| if v <= 0.0 { 1e-20 } else { v }.sqrt())
        .collect()
}

/// x = m + σ·y with y = z ⊙ D row by row, both λ×n row-major.
pub(super) fn sample(d: &[f64], z: &[f64], mean: &[f64], sigma: f64) -> (Vec<f64>, Vec<f64>) {
    let mut y = z.to_vec();
    for row in y.chunks_exact_mut(d.len()) {
        for (v, dj) in row.iter_mut().zip(d) {
            *v *= dj;
        }
    }
    (candidates(&y, mean, sigma), y)
}

/// C^{-1/2}·v = v / D.
pub(super) fn inv_sqrt_times(d: &[f64], v: &[f64]) -> Vec<f64> {
    v.iter().zip(d).map(|(vj, dj)| vj / dj).collect()
}

/// w°_i (NAMM.md §9.4 step 6) with ‖C^{-1/2}y_(i)‖² = Σ_j (y_(i)j / D_j)².
pub(super) fn active_weights(weights: &[f64], ys: &[f64], d: &[f64]) -> Vec<f64> {
    let n = d.len();
    weights
        .iter()
        .zip(ys.chunks_exact(n))
        .map(|(&w, row)| {
            if w < 0.0 {
                let sq: f64 = row.iter().zip(d).map(|(v, dj)| (v / dj).powi(2)).sum();
                rescaled_negative(w, n, sq)
            } else {
                w
            }
        })
        .collect()
}

/// diag C ← decay·diag C + c₁·p_c² + Σ_i coefs_i·y_(i)², element-wise: the diagonal of the
/// full model's update.
pub(super) fn update_covariance(
    c: &mut [f64],
    decay: f64,
    coefs: &[f64],
    ys: &[f64],
    c_1: f64,
    p_c: &[f64],
) {
    for (cj, pj) in c.iter_mut().zip(p_c) {
        *cj = decay * *cj + c_1 * pj * pj;
    }
    for (row, w) in ys.chunks_exact(c.len()).zip(coefs) {
        for (cj, v) in c.iter_mut().zip(row) {
            *cj += w * v * v;
        }
    }
}
