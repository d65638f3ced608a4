//! CMA-ES exactly as NAMM.md §9 specifies it (`memory_evolution/cma_es.py:CMA_ES`), in float64.
//!
//! Fitness is "higher is better". Decisions where the reference is undefined or unusable:
//! - non-finite fitness (NaN, ±inf) ranks below every finite value instead of erroring, so
//!   one broken evaluation cannot stall a generation;
//! - ties rank by a stable sort (lower population index first) where the reference's sort is
//!   unstable, so a run is reproducible;
//! - the reference's constructor draws and discards one population; here the population is
//!   only drawn by `ask`, whose normals the caller's RNG supplies;
//! - `best_fitness` starts at `f64::MIN` (the float64 analogue of −float32max) and only a
//!   finite fitness can become the best.
//!
//! [`Covariance::Diagonal`] replaces the reference's full C by sep-CMA-ES's diagonal one
//! (see `diagonal.rs`), the only way to keep the NAMM size's state and generations O(n).
//!
//! With a full C, [`EigenMode::Exact`] decomposes C at every `ask` (parity with the reference);
//! [`EigenMode::Lazy`] reuses the last decomposition for pycma's gap of
//! `1/(c₁+c_μ)/n/10` generations (see [`StrategyParams::lazy_gap`]), which at the NAMM size
//! (n = 4172, λ = 32) is ~26 generations.

mod diagonal;
mod eigen;
mod error;
mod params;
mod state;
#[cfg(test)]
mod tests;

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

pub use eigen::{symmetric_eigen, SymmetricEigen};
pub use error::CmaesError;
pub use params::StrategyParams;
pub use state::CmaesState;

/// When `ask` recomputes the eigendecomposition of C.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EigenMode {
    /// Every generation, as the reference does.
    #[default]
    Exact,
    /// Only once pycma's lazy gap of generations has passed since the last one.
    Lazy,
}

/// The covariance model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Covariance {
    /// A full n×n C, as the reference has (NAMM.md §9).
    #[default]
    Full,
    /// sep-CMA-ES (Ros & Hansen 2008): only the n variances, B = I. Learns scalings, not
    /// rotations, in O(n) memory and O(λn) per generation; the eigen mode does not apply.
    Diagonal,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CmaesConfig {
    /// n, the number of parameters.
    pub dim: usize,
    /// λ, candidates per generation (see [`Cmaes::default_population`]).
    pub population: usize,
    /// Initial step size σ₀ (the reference uses 0.065).
    pub sigma0: f64,
    /// Initial mean m₀, `dim` values.
    pub x0: Vec<f64>,
    pub eigen: EigenMode,
    pub covariance: Covariance,
    /// Whether the generation-0 decomposition adds NAMM.md §9.3's 1e-6 to every entry of C:
    /// the reference does it for fresh runs and not for runs warm-started from a file. A
    /// diagonal C ignores it: the shift is C + 1e-6·11ᵀ, a correlation a diagonal model cannot
    /// hold, and a quirk of the reference rather than part of the algorithm.
    pub shift_first_gen: bool,
}

impl CmaesConfig {
    fn validate(&self) -> Result<(), CmaesError> {
        let bad = |field, value: String, reason| {
            Err(CmaesError::Config {
                field,
                value,
                reason,
            })
        };
        if self.dim == 0 {
            return bad("dim", "0".into(), "must be > 0");
        }
        if self.population < 2 {
            return bad("population", self.population.to_string(), "must be >= 2");
        }
        if !(self.sigma0.is_finite() && self.sigma0 > 0.0) {
            return bad("sigma0", self.sigma0.to_string(), "must be finite and > 0");
        }
        if self.x0.len() != self.dim {
            return bad(
                "x0",
                format!("{} values", self.x0.len()),
                "length must equal dim",
            );
        }
        if let Some((i, x)) = self.x0.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return bad("x0", format!("[{i}] = {x}"), "must be finite");
        }
        Ok(())
    }
}

/// B (eigenvectors as columns, n×n row-major) and D (ascending axis lengths, √ of the
/// eigenvalues) of the C of generation `at`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Decomposition {
    at: u64,
    pub(crate) b: Vec<f64>,
    pub(crate) d: Vec<f64>,
}

/// Whether the row-major n×n matrix `c` is exactly the identity (a fresh strategy's C).
fn is_identity(c: &[f64], n: usize) -> bool {
    c.iter()
        .enumerate()
        .all(|(k, &v)| v == if k / n == k % n { 1.0 } else { 0.0 })
}

/// The eigendecomposition of I + s·11ᵀ in closed form: 1 + n·s along u = 1/√n, 1 on u⊥
/// (D ascending, as the numerical path gives it). B is the Householder reflection that maps
/// the last basis vector to u (symmetric, orthogonal, last column u). A fresh lazy-mode strategy needs it at generation 0, where a numerical
/// decomposition of a 4172 × 4172 matrix takes ~20 s; any orthonormal basis of the
/// degenerate eigenspace gives the same sampling distribution. Exact mode keeps the
/// numerical path, for parity with the reference.
pub(crate) fn identity_plus_constant(n: usize, s: f64, at: u64) -> Decomposition {
    let mut d = vec![1.0; n];
    d[n - 1] = (1.0 + n as f64 * s).sqrt();
    if n == 1 {
        return Decomposition {
            at,
            b: vec![1.0],
            d,
        };
    }
    let r = 1.0 / (n as f64).sqrt();
    // v = e_n − u; H = I − 2vvᵀ/(vᵀv) with vᵀv = 2 − 2/√n.
    let v = |i: usize| if i == n - 1 { 1.0 - r } else { -r };
    let scale = 1.0 / (1.0 - r);
    let mut b = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..n {
            let delta = if i == j { 1.0 } else { 0.0 };
            b[i * n + j] = delta - v(i) * v(j) * scale;
        }
    }
    Decomposition { at, b, d }
}

/// The population handed out by the last `ask`, row-major λ×n; `tell` needs y and x.
#[derive(Clone, Debug)]
struct Pending {
    x: Vec<f64>,
    y: Vec<f64>,
}

#[derive(Clone, Debug)]
pub struct Cmaes {
    params: StrategyParams,
    covariance: Covariance,
    eigen_mode: EigenMode,
    generation: u64,
    mean: Vec<f64>,
    sigma: f64,
    /// n×n row-major, or the n variances of a diagonal C.
    c: Vec<f64>,
    p_sigma: Vec<f64>,
    p_c: Vec<f64>,
    best_member: Vec<f64>,
    best_fitness: f64,
    shift_first_gen: bool,
    /// Full C only.
    decomposition: Option<Decomposition>,
    pending: Option<Pending>,
}

impl Cmaes {
    pub fn new(cfg: &CmaesConfig) -> Result<Self, CmaesError> {
        cfg.validate()?;
        let n = cfg.dim;
        let c = match cfg.covariance {
            Covariance::Full => {
                let mut c = vec![0.0; n * n];
                for i in 0..n {
                    c[i * n + i] = 1.0;
                }
                c
            }
            Covariance::Diagonal => vec![1.0; n],
        };
        Ok(Self {
            params: StrategyParams::with_covariance(cfg.population, n, cfg.covariance),
            covariance: cfg.covariance,
            eigen_mode: cfg.eigen,
            generation: 0,
            mean: cfg.x0.clone(),
            sigma: cfg.sigma0,
            c,
            p_sigma: vec![0.0; n],
            p_c: vec![0.0; n],
            best_member: cfg.x0.clone(),
            best_fitness: f64::MIN,
            shift_first_gen: cfg.shift_first_gen,
            decomposition: None,
            pending: None,
        })
    }

    /// 4 + ⌊3 ln n⌋, the usual CMA-ES default.
    pub fn default_population(dim: usize) -> usize {
        4 + (3.0 * (dim.max(1) as f64).ln()).floor() as usize
    }

    pub fn params(&self) -> &StrategyParams {
        &self.params
    }

    pub fn eigen_mode(&self) -> EigenMode {
        self.eigen_mode
    }

    pub fn covariance(&self) -> Covariance {
        self.covariance
    }

    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    /// Number of completed tells.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn best(&self) -> (&[f64], f64) {
        (&self.best_member, self.best_fitness)
    }

    /// Draws λ×n standard normals row by row from `rng` and samples the population from
    /// them; a pure function of the state and the draws.
    pub fn ask<R: rand::Rng + ?Sized>(&mut self, rng: &mut R) -> Vec<Vec<f64>> {
        let z: Vec<f64> = (0..self.params.population * self.params.dim)
            .map(|_| rng.sample(StandardNormal))
            .collect();
        self.ask_with_normals(&z)
    }

    /// Samples the population `x = m + σ·z·diag(D)·Bᵀ` (B = I for a diagonal C) from the given
    /// normals (λ×n, row-major). Panics if `z` does not hold λ·n values (a caller bug, not
    /// user input).
    pub fn ask_with_normals(&mut self, z: &[f64]) -> Vec<Vec<f64>> {
        let (lam, n) = (self.params.population, self.params.dim);
        assert_eq!(
            z.len(),
            lam * n,
            "ask_with_normals: z must hold λ·n normals"
        );
        let (x, y) = match self.covariance {
            Covariance::Full => {
                self.refresh_decomposition();
                let dec = self
                    .decomposition
                    .as_ref()
                    .expect("refresh_decomposition always leaves a decomposition");
                sample(&dec.b, &dec.d, z, &self.mean, self.sigma)
            }
            Covariance::Diagonal => {
                let d = diagonal::axis_lengths(&self.c);
                diagonal::sample(&d, z, &self.mean, self.sigma)
            }
        };
        let rows = x.chunks_exact(n).map(<[f64]>::to_vec).collect();
        self.pending = Some(Pending { x, y });
        rows
    }

    /// Updates the strategy with the fitness of the last asked population (higher is
    /// better; NaN and ±inf rank last). On error nothing changes and the population stays
    /// pending.
    pub fn tell(&mut self, fitness: &[f64]) -> Result<(), CmaesError> {
        let (lam, n) = (self.params.population, self.params.dim);
        let Some(pending) = self.pending.as_ref() else {
            return Err(CmaesError::TellWithoutAsk {
                generation: self.generation,
            });
        };
        if fitness.len() != lam {
            return Err(CmaesError::FitnessLength {
                got: fitness.len(),
                expected: lam,
            });
        }
        let p = &self.params;
        let shape = Shape::at_ask(self.covariance, self.decomposition.as_ref(), &self.c);
        self.generation += 1;
        let order = rank_descending(fitness);
        let mut ys = vec![0.0; lam * n];
        for (dst, &src) in ys.chunks_exact_mut(n).zip(&order) {
            dst.copy_from_slice(&pending.y[src * n..(src + 1) * n]);
        }

        let mut y_w = vec![0.0; n];
        for (row, &w) in ys.chunks_exact(n).zip(&p.weights_truncated) {
            if w != 0.0 {
                for (acc, v) in y_w.iter_mut().zip(row) {
                    *acc += w * v;
                }
            }
        }
        for (m, v) in self.mean.iter_mut().zip(&y_w) {
            *m += p.c_m * self.sigma * v;
        }

        let whitened = shape.inv_sqrt_times(&y_w);
        let ps_coef = (p.c_sigma * (2.0 - p.c_sigma) * p.mu_eff).sqrt();
        for (ps, v) in self.p_sigma.iter_mut().zip(&whitened) {
            *ps = (1.0 - p.c_sigma) * *ps + ps_coef * v;
        }
        let ps_norm = norm(&self.p_sigma);
        let g = self.generation as f64;
        let h_sigma = if ps_norm / (1.0 - (1.0 - p.c_sigma).powf(2.0 * g)).sqrt()
            < (1.4 + 2.0 / (n as f64 + 1.0)) * p.chi_n
        {
            1.0
        } else {
            0.0
        };
        let pc_coef = h_sigma * (p.c_c * (2.0 - p.c_c) * p.mu_eff).sqrt();
        for (pc, v) in self.p_c.iter_mut().zip(&y_w) {
            *pc = (1.0 - p.c_c) * *pc + pc_coef * v;
        }

        let w_circ = shape.active_weights(&p.weights, &ys);
        let delta = (1.0 - h_sigma) * p.c_c * (2.0 - p.c_c);
        let decay = 1.0 + p.c_1 * delta - p.c_1 - p.c_mu * p.weights_sum();
        let coefs: Vec<f64> = w_circ.iter().map(|w| p.c_mu * w).collect();
        shape.update_covariance(&mut self.c, decay, &coefs, &ys, p.c_1, &self.p_c);

        self.sigma *= ((p.c_sigma / p.d_sigma) * (ps_norm / p.chi_n - 1.0)).exp();

        let top = order[0];
        if fitness[top].is_finite() && fitness[top] > self.best_fitness {
            self.best_fitness = fitness[top];
            self.best_member
                .copy_from_slice(&pending.x[top * n..(top + 1) * n]);
        }
        self.pending = None;
        Ok(())
    }

    pub fn state(&self) -> CmaesState {
        let lazy = match (&self.decomposition, self.eigen_mode) {
            (Some(dec), EigenMode::Lazy) => Some(dec),
            _ => None,
        };
        CmaesState {
            generation: self.generation,
            mean: self.mean.clone(),
            sigma: self.sigma,
            c: self.c.clone(),
            p_sigma: self.p_sigma.clone(),
            p_c: self.p_c.clone(),
            best_member: self.best_member.clone(),
            best_fitness: self.best_fitness,
            shift_first_gen: self.shift_first_gen,
            decomposed_at: lazy.map(|d| d.at),
            b: lazy.map(|d| d.b.clone()).unwrap_or_default(),
            d: lazy.map(|d| d.d.clone()).unwrap_or_default(),
        }
    }

    /// Rebuilds a strategy from `state()`. `cfg` supplies dim, population, the covariance
    /// model and the eigen mode; its x0, sigma0 and shift_first_gen are superseded by the
    /// state. In exact mode a persisted decomposition is ignored (the next `ask` recomputes
    /// it).
    pub fn from_state(cfg: &CmaesConfig, s: CmaesState) -> Result<Self, CmaesError> {
        cfg.validate()?;
        s.validate(cfg.dim, cfg.covariance)?;
        let decomposition = match (cfg.eigen, s.decomposed_at) {
            (EigenMode::Lazy, Some(at)) => Some(Decomposition { at, b: s.b, d: s.d }),
            _ => None,
        };
        Ok(Self {
            params: StrategyParams::with_covariance(cfg.population, cfg.dim, cfg.covariance),
            covariance: cfg.covariance,
            eigen_mode: cfg.eigen,
            generation: s.generation,
            mean: s.mean,
            sigma: s.sigma,
            c: s.c,
            p_sigma: s.p_sigma,
            p_c: s.p_c,
            best_member: s.best_member,
            best_fitness: s.best_fitness,
            shift_first_gen: s.shift_first_gen,
            decomposition,
            pending: None,
        })
    }

    fn refresh_decomposition(&mut self) {
        let due = match (&self.decomposition, self.eigen_mode) {
            (None, _) | (Some(_), EigenMode::Exact) => true,
            (Some(dec), EigenMode::Lazy) => {
                (self.generation - dec.at) as f64 >= self.params.lazy_gap
            }
        };
        if due {
            self.decomposition = Some(self.decompose());
        }
    }

    /// NAMM.md §9.3 steps 1–2: C̃ = C (+1e-6 on every entry at generation 0), symmetrised,
    /// then B·diag(d²)·Bᵀ with d² ≤ 0 replaced by 1e-20 before the root.
    fn decompose(&self) -> Decomposition {
        let n = self.params.dim;
        if self.eigen_mode == EigenMode::Lazy && self.generation == 0 && is_identity(&self.c, n) {
            let shift = if self.shift_first_gen { 1e-6 } else { 0.0 };
            return identity_plus_constant(n, shift, self.generation);
        }
        let mut c = self.c.clone();
        if self.generation == 0 && self.shift_first_gen {
            for v in &mut c {
                *v += 1e-6;
            }
        }
        for i in 0..n {
            for j in 0..i {
                let v = (c[i * n + j] + c[j * n + i]) / 2.0;
                c[i * n + j] = v;
                c[j * n + i] = v;
            }
        }
        let eigen = symmetric_eigen(&c, n)
            .map_err(|err| format!("{err:?}"))
            .and_then(|e| {
                let finite = e
                    .eigenvalues
                    .iter()
                    .chain(&e.eigenvectors)
                    .all(|v| v.is_finite());
                if finite {
                    Ok(e)
                } else {
                    Err("non-finite eigenpairs (C holds NaN or inf)".to_string())
                }
            });
        match eigen {
            Ok(e) => Decomposition {
                at: self.generation,
                b: e.eigenvectors,
                d: e.eigenvalues
                    .iter()
                    .map(|&d2| if d2 <= 0.0 { 1e-20 } else { d2 }.sqrt())
                    .collect(),
            },
            Err(reason) => {
                // Keep sampling with the last good model rather than spreading NaN into
                // every candidate; a run that fails on its first decomposition samples
                // isotropically (B = I, D = 1).
                tracing::warn!(
                    generation = self.generation,
                    %reason,
                    "covariance eigendecomposition failed; reusing the previous one"
                );
                self.decomposition.clone().unwrap_or_else(|| {
                    let mut b = vec![0.0; n * n];
                    for i in 0..n {
                        b[i * n + i] = 1.0;
                    }
                    Decomposition {
                        at: self.generation,
                        b,
                        d: vec![1.0; n],
                    }
                })
            }
        }
    }
}

/// The shape of the distribution `ask` sampled from, which `tell` whitens with.
enum Shape<'a> {
    Full(&'a Decomposition),
    /// D = √diag(C).
    Diagonal(Vec<f64>),
}

impl<'a> Shape<'a> {
    /// C has not changed since `ask`, so a diagonal D recomputed from it is the ask-time one.
    fn at_ask(covariance: Covariance, dec: Option<&'a Decomposition>, c: &[f64]) -> Self {
        match covariance {
            Covariance::Full => Shape::Full(dec.expect("ask leaves a decomposition for tell")),
            Covariance::Diagonal => Shape::Diagonal(diagonal::axis_lengths(c)),
        }
    }

    fn inv_sqrt_times(&self, v: &[f64]) -> Vec<f64> {
        match self {
            Shape::Full(dec) => inv_sqrt_times(&dec.b, &dec.d, v),
            Shape::Diagonal(d) => diagonal::inv_sqrt_times(d, v),
        }
    }

    fn active_weights(&self, weights: &[f64], ys: &[f64]) -> Vec<f64> {
        match self {
            Shape::Full(dec) => active_weights(weights, ys, &dec.b, &dec.d),
            Shape::Diagonal(d) => diagonal::active_weights(weights, ys, d),
        }
    }

    fn update_covariance(
        &self,
        c: &mut [f64],
        decay: f64,
        coefs: &[f64],
        ys: &[f64],
        c_1: f64,
        p_c: &[f64],
    ) {
        match self {
            Shape::Full(_) => update_covariance(c, decay, coefs, ys, c_1, p_c),
            Shape::Diagonal(_) => diagonal::update_covariance(c, decay, coefs, ys, c_1, p_c),
        }
    }
}

/// x = m + σ·y, row by row (λ×n row-major).
fn candidates(y: &[f64], mean: &[f64], sigma: f64) -> Vec<f64> {
    let mut x = y.to_vec();
    for row in x.chunks_exact_mut(mean.len()) {
        for (v, m) in row.iter_mut().zip(mean) {
            *v = m + sigma * *v;
        }
    }
    x
}

/// x = m + σ·y with y = z·diag(D)·Bᵀ, both λ×n row-major.
fn sample(b: &[f64], d: &[f64], z: &[f64], mean: &[f64], sigma: f64) -> (Vec<f64>, Vec<f64>) {
    let n = d.len();
    let lam = z.len() / n;
    let mut zd = z.to_vec();
    for row in zd.chunks_exact_mut(n) {
        for (v, dj) in row.iter_mut().zip(d) {
            *v *= dj;
        }
    }
    let mut y = vec![0.0; lam * n];
    matmul(
        MatMut::from_row_major_slice_mut(&mut y, lam, n),
        Accum::Replace,
        MatRef::from_row_major_slice(&zd, lam, n),
        MatRef::from_row_major_slice(b, n, n).transpose(),
        1.0,
        Par::Seq,
    );
    (candidates(&y, mean, sigma), y)
}

/// C^{-1/2}·v = B·diag(1/D)·Bᵀ·v.
fn inv_sqrt_times(b: &[f64], d: &[f64], v: &[f64]) -> Vec<f64> {
    let n = d.len();
    let mut t = vec![0.0; n];
    for (row, vi) in b.chunks_exact(n).zip(v) {
        for (tj, bij) in t.iter_mut().zip(row) {
            *tj += bij * vi;
        }
    }
    for (tj, dj) in t.iter_mut().zip(d) {
        *tj /= dj;
    }
    b.chunks_exact(n)
        .map(|row| row.iter().zip(&t).map(|(a, b)| a * b).sum())
        .collect()
}

/// w°_i (NAMM.md §9.4 step 6): negative weights rescaled by n / (‖C^{-1/2} y_(i)‖² + 1e-20).
/// ‖B·diag(1/D)·Bᵀy‖ = ‖diag(1/D)·Bᵀy‖ because B is orthonormal, which saves one n²
/// product per member.
fn active_weights(weights: &[f64], ys: &[f64], b: &[f64], d: &[f64]) -> Vec<f64> {
    let n = d.len();
    let negative: Vec<usize> = (0..weights.len()).filter(|&i| weights[i] < 0.0).collect();
    let mut y_neg = Vec::with_capacity(negative.len() * n);
    for &i in &negative {
        y_neg.extend_from_slice(&ys[i * n..(i + 1) * n]);
    }
    let k = negative.len();
    let mut bt_y = vec![0.0; k * n];
    matmul(
        MatMut::from_row_major_slice_mut(&mut bt_y, k, n),
        Accum::Replace,
        MatRef::from_row_major_slice(&y_neg, k, n),
        MatRef::from_row_major_slice(b, n, n),
        1.0,
        Par::Seq,
    );
    let mut out = weights.to_vec();
    for (&i, row) in negative.iter().zip(bt_y.chunks_exact(n)) {
        let sq: f64 = row.iter().zip(d).map(|(v, dj)| (v / dj).powi(2)).sum();
        out[i] = rescaled_negative(weights[i], n, sq);
    }
    out
}

/// w · n / (‖C^{-1/2}y‖² + 1e-20): a negative weight's vector counts as if its squared
/// Mahalanobis norm were n, so an unusually long bad step cannot make C indefinite.
fn rescaled_negative(w: f64, n: usize, mahalanobis_sq: f64) -> f64 {
    w * n as f64 / (mahalanobis_sq + 1e-20)
}

/// C ← decay·C + c₁·p_c·p_cᵀ + Σ_i coefs_i·y_(i)·y_(i)ᵀ as one rank-(λ+1) product.
fn update_covariance(c: &mut [f64], decay: f64, coefs: &[f64], ys: &[f64], c_1: f64, p_c: &[f64]) {
    let n = p_c.len();
    let k = coefs.len() + 1;
    let mut scaled = Vec::with_capacity(k * n);
    let mut plain = Vec::with_capacity(k * n);
    for (row, w) in ys.chunks_exact(n).zip(coefs) {
        scaled.extend(row.iter().map(|v| w * v));
        plain.extend_from_slice(row);
    }
    scaled.extend(p_c.iter().map(|v| c_1 * v));
    plain.extend_from_slice(p_c);
    for v in c.iter_mut() {
        *v *= decay;
    }
    matmul(
        MatMut::from_row_major_slice_mut(c, n, n),
        Accum::Add,
        MatRef::from_row_major_slice(&scaled, k, n).transpose(),
        MatRef::from_row_major_slice(&plain, k, n),
        1.0,
        Par::Seq,
    );
}

/// Indices by descending fitness; non-finite values last; ties keep index order.
fn rank_descending(fitness: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..fitness.len()).collect();
    order.sort_by(|&a, &b| {
        let (fa, fb) = (fitness[a], fitness[b]);
        match (fa.is_finite(), fb.is_finite()) {
            (true, true) => fb.partial_cmp(&fa).unwrap_or(std::cmp::Ordering::Equal),
            (true, false) => std::cmp::Ordering::Less,
            (false, true) => std::cmp::Ordering::Greater,
            (false, false) => std::cmp::Ordering::Equal,
        }
    });
    order
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}
