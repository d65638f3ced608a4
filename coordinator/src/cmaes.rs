//! Temporary stand-in with the contract of branch `cmaes` (a crude ES), replaced by that branch on merge.
use rand::Rng;
use rand_distr::StandardNormal;
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EigenMode {
    #[default]
    Exact,
    Lazy,
}
#[derive(Clone, Debug, PartialEq)]
pub struct CmaesConfig {
    pub dim: usize,
    pub population: usize,
    pub sigma0: f64,
    pub x0: Vec<f64>,
    pub eigen: EigenMode,
}
#[derive(Clone, Debug, PartialEq)]
pub struct CmaesState {
    pub generation: u64,
    pub mean: Vec<f64>,
    pub sigma: f64,
    pub c: Vec<f64>,
    pub p_sigma: Vec<f64>,
    pub p_c: Vec<f64>,
    pub best_member: Vec<f64>,
    pub best_fitness: f64,
    pub shift_first_gen: bool,
    pub decomposed_at: Option<u64>,
    pub b: Vec<f64>,
    pub d: Vec<f64>,
}
#[derive(Debug, thiserror::Error)]
pub enum CmaesError {
    #[error("bad config {field} = {value}: {reason}")]
    Config {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
}
#[derive(Clone, Debug)]
pub struct Cmaes {
    s: CmaesState,
    lambda: usize,
    pending: Vec<Vec<f64>>,
}
impl Cmaes {
    pub fn new(cfg: &CmaesConfig) -> Result<Self, CmaesError> {
        if cfg.x0.len() != cfg.dim {
            return Err(CmaesError::Config {
                field: "x0",
                value: cfg.x0.len().to_string(),
                reason: "len",
            });
        }
        let n = cfg.dim;
        Ok(Self {
            lambda: cfg.population,
            pending: vec![],
            s: CmaesState {
                generation: 0,
                mean: cfg.x0.clone(),
                sigma: cfg.sigma0,
                c: vec![0.0; n * n],
                p_sigma: vec![0.0; n],
                p_c: vec![0.0; n],
                best_member: vec![0.0; n],
                best_fitness: f64::MIN,
                shift_first_gen: true,
                decomposed_at: None,
                b: vec![],
                d: vec![],
            },
        })
    }
    pub fn default_population(dim: usize) -> usize {
        4 + (3.0 * (dim as f64).ln()).floor() as usize
    }
    pub fn mean(&self) -> &[f64] {
        &self.s.mean
    }
    pub fn sigma(&self) -> f64 {
        self.s.sigma
    }
    pub fn generation(&self) -> u64 {
        self.s.generation
    }
    pub fn best(&self) -> (&[f64], f64) {
        (&self.s.best_member, self.s.best_fitness)
    }
    pub fn ask<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Vec<Vec<f64>> {
        let pop: Vec<Vec<f64>> = (0..self.lambda)
            .map(|_| {
                self.s
                    .mean
                    .iter()
                    .map(|m| m + self.s.sigma * rng.sample::<f64, _>(StandardNormal))
                    .collect()
            })
            .collect();
        self.pending = pop.clone();
        pop
    }
    pub fn tell(&mut self, fitness: &[f64]) -> Result<(), CmaesError> {
        let mut idx: Vec<usize> = (0..fitness.len()).collect();
        idx.sort_by(|&a, &b| {
            fitness[b]
                .partial_cmp(&fitness[a])
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let mu = (self.lambda / 2).max(1);
        let n = self.s.mean.len();
        let mut m = vec![0.0; n];
        for &i in &idx[..mu] {
            for j in 0..n {
                m[j] += self.pending[i][j] / mu as f64;
            }
        }
        if fitness[idx[0]] > self.s.best_fitness {
            self.s.best_fitness = fitness[idx[0]];
            self.s.best_member = self.pending[idx[0]].clone();
        }
        self.s.mean = m;
        self.s.sigma *= 0.93;
        self.s.generation += 1;
        Ok(())
    }
    pub fn state(&self) -> CmaesState {
        self.s.clone()
    }
    pub fn from_state(cfg: &CmaesConfig, s: CmaesState) -> Result<Self, CmaesError> {
        Ok(Self {
            s,
            lambda: cfg.population,
            pending: vec![],
        })
    }
}
