//! Strategy constants of NAMM.md §9.1 (`memory_evolution/cma_es.py:get_cma_defaults` and the
//! constructor), computed in float64.

use serde::{Deserialize, Serialize};

use super::Covariance;

/// Every constant the strategy derives from (λ, n). The reference computes them in float32;
/// here they are float64, which the golden trace accepts with rtol 1e-5.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StrategyParams {
    pub dim: usize,
    pub population: usize,
    /// μ = max(1, ⌊λ/2⌋) (elite ratio 0.5).
    pub elite: usize,
    /// Active weights w_i over all λ ranks; the negative tail sums to −α⁻.
    pub weights: Vec<f64>,
    /// w_i for i < μ, 0 after (sums to 1): the recombination weights of the mean.
    pub weights_truncated: Vec<f64>,
    pub mu_eff: f64,
    pub mu_eff_minus: f64,
    /// The learning rates of the rank-one and rank-μ updates of C; with a diagonal C they
    /// are the separable rates of [`separable_rates`], and α⁻ (hence `weights`) follows them.
    pub c_1: f64,
    pub c_mu: f64,
    pub c_sigma: f64,
    pub d_sigma: f64,
    pub c_c: f64,
    pub c_m: f64,
    /// χ_n, the expected norm of an n-dimensional standard normal vector.
    pub chi_n: f64,
    /// Generations a lazy decomposition may be reused (see
    /// [`StrategyParams::with_covariance`]); a diagonal C is never decomposed.
    pub lazy_gap: f64,
}

impl StrategyParams {
    /// The reference's constants, those of a full C.
    pub fn new(population: usize, dim: usize) -> Self {
        Self::with_covariance(population, dim, Covariance::Full)
    }

    /// Requires `dim >= 1` and `population >= 2` (checked by the caller).
    pub fn with_covariance(population: usize, dim: usize, covariance: Covariance) -> Self {
        let lam = population;
        let n = dim as f64;
        let elite = (lam / 2).max(1);
        let lam_f = lam as f64;
        let w_prime: Vec<f64> = (0..lam)
            .map(|i| ((lam_f + 1.0) / 2.0).ln() - ((i + 1) as f64).ln())
            .collect();
        let (head, tail) = w_prime.split_at(elite);
        let mu_eff = squared_sum_ratio(head);
        let mu_eff_minus = squared_sum_ratio(tail);

        let n_c = n.min(40000.0);
        let c_1 = 2.0 / ((n_c + 1.3).powi(2) + mu_eff);
        let c_mu = (1.0 - c_1 - 1e-8)
            .min(2.0 * (mu_eff - 2.0 + 1.0 / mu_eff) / ((n_c + 2.0).powi(2) + mu_eff));
        let (c_1, c_mu) = match covariance {
            Covariance::Full => (c_1, c_mu),
            Covariance::Diagonal => separable_rates(c_1, c_mu, n),
        };
        // The last bound keeps C positive definite under the active update; with a diagonal C
        // it keeps every variance positive for the same reason (a rescaled y_(i) has
        // y_j²/C_jj ≤ ‖C^{-1/2}y_(i)‖² = n in every coordinate j).
        let alpha_minus = (1.0 + c_1 / c_mu)
            .min(1.0 + 2.0 * mu_eff_minus / (mu_eff + 2.0))
            .min((1.0 - c_1 - c_mu) / (n * c_mu));
        let positive_sum: f64 = w_prime.iter().filter(|w| **w > 0.0).sum();
        let negative_sum: f64 = w_prime.iter().filter(|w| **w < 0.0).map(|w| w.abs()).sum();
        let weights: Vec<f64> = w_prime
            .iter()
            .map(|&w| {
                if w >= 0.0 {
                    w / positive_sum
                } else {
                    alpha_minus * w / negative_sum
                }
            })
            .collect();
        let weights_truncated = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| if i < elite { w } else { 0.0 })
            .collect();

        let c_sigma = (mu_eff + 2.0) / (n + mu_eff + 5.0);
        let d_sigma = 1.0 + 2.0 * (((mu_eff - 1.0) / (n + 1.0)).sqrt() - 1.0).max(0.0) + c_sigma;
        let c_c = (4.0 + mu_eff / n) / (n + 4.0 + 2.0 * mu_eff / n);
        let chi_n = n.sqrt() * (1.0 - 1.0 / (4.0 * n) + 1.0 / (21.0 * n_c * n_c));
        // pycma's default gap between O(n³) decompositions, counted in tells: CMA-ES/pycma
        // cma/evolution_strategy.py (CMAEvolutionStrategy.__init__ creating the sampler)
        // `GaussFullSampler(..., lazy_update_gap=1. / (self.sp.c1 + self.sp.cmu + 1e-23) / self.N / 10)`,
        // applied in cma/sampler.py GaussFullSampler.update_now, which skips while
        // `count_tell < last_update + lazy_update_gap`. pycma's teaching version
        // cma/purecma.py uses a 5x longer gap (`lazy_gap_evals = 0.5 * N * lam * (c1 + cmu)**-1
        // / N**2` evaluations, i.e. 0.5/(c1+cmu)/N generations); the production rule is the
        // one `cma.fmin` runs, so the comparison against pycma is like for like.
        let lazy_gap = 1.0 / (c_1 + c_mu + 1e-23) / n / 10.0;

        Self {
            dim,
            population,
            elite,
            weights,
            weights_truncated,
            mu_eff,
            mu_eff_minus,
            c_1,
            c_mu,
            c_sigma,
            d_sigma,
            c_c,
            c_m: 1.0,
            chi_n,
            lazy_gap,
        }
    }

    /// Σ w_i over all λ weights, negative ones included (the decay term of the C update).
    pub fn weights_sum(&self) -> f64 {
        self.weights.iter().sum()
    }
}

/// sep-CMA-ES's rates (Ros & Hansen 2008): a diagonal C has n free entries instead of
/// n(n+1)/2, so it can learn (n + 2)/3 times faster; c_μ ≤ 1 − c₁ keeps the decay factor of
/// C non-negative. pycma's `CMA_diagonal=True` uses its own formulas for the
/// same purpose (`c1_sep = 1/(n + 2√n + μ_eff/n)`, a multiplicative update); these are the
/// paper's.
fn separable_rates(c_1: f64, c_mu: f64, n: f64) -> (f64, f64) {
    let factor = (n + 2.0) / 3.0;
    let c_1 = c_1 * factor;
    (c_1, (1.0 - c_1).min(c_mu * factor))
}

fn squared_sum_ratio(w: &[f64]) -> f64 {
    let sum: f64 = w.iter().sum();
    let sum_sq: f64 = w.iter().map(|x| x * x).sum();
    sum * sum / sum_sq
}
