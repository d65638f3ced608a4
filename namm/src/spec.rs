//! Run specs: the TOML a user submits to start an evolution. Every field has a default and an
//! unknown field is an error that names it, so a typo never silently runs the wrong experiment.

use crate::objective::Benchmark;
use crate::policy::{Budget, FeatureSet, PARAM_COUNT};
use crate::tasks::TaskSpec;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Upper bounds that keep a run spec from asking the coordinator for absurd memory: the
/// covariance is dim² doubles (MAX_DIM: 800 MB), a generation population × dim doubles.
pub const MAX_DIM: usize = 10_000;
pub const MAX_POPULATION: usize = 100_000;
/// population × dim: 128 MiB of candidates per generation, well inside a gRPC message.
pub const MAX_GENERATION_VALUES: usize = 1 << 24;
pub const MAX_GENERATIONS: u32 = 100_000_000;
pub const MAX_NAME_BYTES: usize = 256;
/// Longest run spec text accepted (a NAMM spec with an explicit x0 is a few hundred KB).
pub const MAX_SPEC_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSpec {
    /// Shown in listings; defaults to "<objective>-<dim>" (benchmarks) or "namm" (NAMM runs).
    pub name: String,
    pub seed: u64,
    pub objective: ObjectiveSpec,
    pub strategy: StrategySpec,
    pub stop: StopSpec,
    /// The NAMM objective's settings; only with `objective.kind = "namm"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namm: Option<NammSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectiveSpec {
    pub kind: ObjectiveKind,
    /// Benchmarks: any dimension (default 10). NAMM: the parameter count of the policy,
    /// filled in (and checked if given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dim: Option<usize>,
}

/// What the candidates are scored on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum ObjectiveKind {
    /// A NAMM memory policy on an LLM and long-context tasks.
    Namm,
    Benchmark(Benchmark),
}

impl fmt::Display for ObjectiveKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectiveKind::Namm => f.write_str("namm"),
            ObjectiveKind::Benchmark(b) => f.write_str(b.name()),
        }
    }
}

impl TryFrom<String> for ObjectiveKind {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        if s == "namm" {
            return Ok(ObjectiveKind::Namm);
        }
        s.parse::<Benchmark>().map(ObjectiveKind::Benchmark).map_err(|_| {
            format!(
                "unknown objective kind {s:?} (expected namm, sphere, ellipsoid, rosenbrock or rastrigin)"
            )
        })
    }
}

impl From<ObjectiveKind> for String {
    fn from(k: ObjectiveKind) -> String {
        k.to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StrategySpec {
    /// λ; default 32 for NAMM runs (the paper's), CMA-ES's 4 + ⌊3 ln n⌋ for benchmarks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub population: Option<usize>,
    /// Default 0.065 for NAMM runs (the paper's), 0.5 for benchmarks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sigma0: Option<f64>,
    pub x0: X0,
    /// How often C is decomposed; default lazy for NAMM runs (an exact decomposition at
    /// n = 4172 takes ~19 s per generation), exact (the reference's) for benchmarks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eigen: Option<Eigen>,
    /// The covariance model: `full` (the paper's CMA-ES, default for benchmarks) or
    /// `diagonal` (sep-CMA-ES, O(n) state, default for NAMM runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub covariance: Option<Covariance>,
    /// An exported NAMM (`namm best --export`) the run starts from: its parameters become the
    /// initial mean and its frozen statistics the run's, so no statistics pass runs. Read
    /// once when the run is submitted; the stored spec then carries the mean as `x0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_from: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Covariance {
    /// A full n×n covariance, as the reference does (NAMM.md §9).
    Full,
    /// sep-CMA-ES (Ros & Hansen 2008): a diagonal covariance whose learning rates are scaled
    /// by (n + 2)/3, O(n) state and sampling.
    Diagonal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Eigen {
    /// Decompose C at every generation, as the reference does.
    Exact,
    /// Reuse the decomposition for pycma's gap of generations.
    Lazy,
}

/// The initial mean: one number for every coordinate, or the whole vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum X0 {
    Scalar(f64),
    Vector(Vec<f64>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StopSpec {
    pub max_generations: u32,
    /// Stop once the best fitness so far reaches it.
    pub target_fitness: f64,
}

/// A NAMM run: which model, which tasks, how many prompts (spec §10).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NammSpec {
    /// A label for the model (its file name); workers are matched on `model_sha256`.
    pub model: String,
    /// sha256 of the GGUF file (lowercase hex); only workers holding it get work.
    pub model_sha256: String,
    /// The training tasks of the first stage, as task specs (`passkey:len=1536`).
    pub tasks: Vec<String>,
    /// Later stages: from a generation on, a (larger) task list; the strategy state and the
    /// frozen statistics carry over.
    pub stages: Vec<StageSpec>,
    /// Seed of the task generators; prompt `i` of a task is the same in every run.
    pub task_seed: u64,
    /// Training prompts per task: indices 0..pool_size.
    pub pool_size: usize,
    /// Prompts drawn per task for each generation, without replacement; every candidate of a
    /// generation sees the same ones.
    pub prompts_per_task: usize,
    /// Held-out prompts per task: indices pool_size..pool_size + heldout_size.
    pub heldout_size: usize,
    /// Evaluate the CMA-ES mean on the held-out prompts every this many generations (0: never).
    pub heldout_every: u32,
    /// Prompts of one task per work unit.
    pub shard_size: usize,
    /// The memory budget candidates and the held-out mean run under: a fraction of the tokens
    /// seen (`0.25`) or a token count (`512`); absent: the paper's threshold alone decides.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetValue>,
    /// What a candidate's fitness measures (see [`FitnessKind`]).
    pub fitness: FitnessKind,
    /// The token statistics the NAMM reads: `spectral` (the paper's) or `window` (see
    /// [`FeatureSet`]); recorded in exported files.
    #[serde(skip_serializing_if = "FeatureSet::is_spectral")]
    pub features: FeatureSet,
}

/// A budget as TOML writes it: a float is a fraction of the tokens seen, an integer a count.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BudgetValue {
    Tokens(u64),
    Fraction(f64),
}

impl BudgetValue {
    /// The policy budget; `None` for a value no budget can take (checked by validation).
    pub fn budget(&self) -> Option<Budget> {
        match *self {
            BudgetValue::Tokens(t) if t >= 1 => usize::try_from(t).ok().map(Budget::Tokens),
            BudgetValue::Fraction(f) if f > 0.0 && f <= 1.0 => Some(Budget::Fraction(f)),
            _ => None,
        }
    }
}

/// A candidate's fitness (see `namm::training::fitness`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FitnessKind {
    /// The paper's: per task, the decoded answers' metric over the full cache's.
    #[default]
    Metric,
    /// Per task, exp of the mean over prompts of the gold answer's log-likelihood per token
    /// (teacher-forced after the prompt) minus the full cache's on the same prompt.
    Likelihood,
    /// As `likelihood`, with each prompt's difference capped at 0: the share of the full
    /// cache's gold-answer probability the evicted cache keeps, never credited above it.
    Retained,
}

impl FitnessKind {
    /// Whether candidates are measured by the gold answer's likelihood (no decoding loop).
    pub fn uses_likelihood(self) -> bool {
        matches!(self, FitnessKind::Likelihood | FitnessKind::Retained)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// The first generation of the stage (> the previous stage's).
    pub from_generation: u32,
    /// Every task trained on from that generation on.
    pub tasks: Vec<String>,
}

/// sha256 of the default model, `SmolLM2-135M-Instruct.Q4_1.gguf` (scripts/fetch-model.sh).
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const NAMM_POPULATION: usize = 32;
pub const NAMM_SIGMA0: f64 = 0.065;
/// Most prompts a NAMM generation may ask for (tasks × prompts per task), and most pool
/// prompts per task.
pub const MAX_PROMPTS: usize = 100_000;

impl Default for NammSpec {
    fn default() -> Self {
        NammSpec {
            model: DEFAULT_MODEL_FILE.into(),
            model_sha256: DEFAULT_MODEL_SHA256.into(),
            tasks: vec!["passkey:len=1024".into(), "niah-multikey:len=1024".into()],
            stages: Vec::new(),
            task_seed: 0,
            pool_size: 64,
            prompts_per_task: 4,
            heldout_size: 16,
            heldout_every: 5,
            shard_size: 4,
            budget: None,
            fitness: FitnessKind::Metric,
            features: FeatureSet::Spectral,
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    #[error("run spec is not valid TOML for namm: {0}")]
    Parse(String),
    #[error("run spec field `{field}` = {value}: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: String,
    },
}

impl Default for RunSpec {
    fn default() -> Self {
        RunSpec {
            name: String::new(),
            seed: 1,
            objective: ObjectiveSpec::default(),
            strategy: StrategySpec::default(),
            stop: StopSpec::default(),
            namm: None,
        }
    }
}

impl Default for ObjectiveSpec {
    fn default() -> Self {
        ObjectiveSpec {
            kind: ObjectiveKind::Namm,
            dim: None,
        }
    }
}

impl Default for StrategySpec {
    fn default() -> Self {
        StrategySpec {
            population: None,
            sigma0: None,
            x0: X0::Scalar(0.0),
            eigen: None,
            covariance: None,
            init_from: None,
        }
    }
}

impl Default for StopSpec {
    fn default() -> Self {
        StopSpec {
            max_generations: 5000,
            target_fitness: -1e-8,
        }
    }
}

/// The default NAMM run.
const DEFAULT_RECIPE: &str = include_str!("../../examples/runs/namm-surprisal.toml");

/// CMA-ES's default population size for dimension `dim`: 4 + ⌊3 ln n⌋.
pub fn default_population(dim: usize) -> usize {
    4 + (3.0 * (dim.max(1) as f64).ln()).floor() as usize
}

const BENCHMARK_DIM: usize = 10;
const BENCHMARK_SIGMA0: f64 = 0.5;

impl RunSpec {
    /// Parses and validates a run spec; the result has every objective-dependent default
    /// written in (name, dim, population, sigma0, eigen, the NAMM section, canonical task
    /// specs), so the stored TOML says exactly what ran.
    pub fn from_toml(text: &str) -> Result<RunSpec, SpecError> {
        if text.len() > MAX_SPEC_BYTES {
            return Err(SpecError::Invalid {
                field: "spec",
                value: format!("{} bytes", text.len()),
                reason: format!("a run spec is at most {MAX_SPEC_BYTES} bytes"),
            });
        }
        let mut spec: RunSpec =
            toml::from_str(text).map_err(|e| SpecError::Parse(e.to_string().trim().to_string()))?;
        spec.fill_defaults()?;
        spec.validate()?;
        Ok(spec)
    }

    fn fill_defaults(&mut self) -> Result<(), SpecError> {
        let namm = self.objective.kind == ObjectiveKind::Namm;
        if namm {
            if let Some(d) = self.objective.dim.filter(|&d| d != PARAM_COUNT) {
                return Err(SpecError::Invalid {
                    field: "objective.dim",
                    value: d.to_string(),
                    reason: format!(
                        "a NAMM has {PARAM_COUNT} parameters; leave dim out or set it to that"
                    ),
                });
            }
            let n = self.namm.get_or_insert_with(NammSpec::default);
            canonical_tasks(&mut n.tasks, "namm.tasks")?;
            for stage in n.stages.iter_mut() {
                canonical_tasks(&mut stage.tasks, "namm.stages.tasks")?;
            }
        } else if self.namm.is_some() {
            return Err(SpecError::Invalid {
                field: "namm",
                value: "a [namm] table".into(),
                reason: format!(
                    "only a run with objective.kind = \"namm\" takes one (this run's kind is {:?})",
                    self.objective.kind.to_string()
                ),
            });
        }
        let dim = *self
            .objective
            .dim
            .get_or_insert(if namm { PARAM_COUNT } else { BENCHMARK_DIM });
        self.strategy.population.get_or_insert(if namm {
            NAMM_POPULATION
        } else {
            default_population(dim)
        });
        self.strategy
            .sigma0
            .get_or_insert(if namm { NAMM_SIGMA0 } else { BENCHMARK_SIGMA0 });
        self.strategy
            .eigen
            .get_or_insert(if namm { Eigen::Lazy } else { Eigen::Exact });
        self.strategy.covariance.get_or_insert(if namm {
            Covariance::Diagonal
        } else {
            Covariance::Full
        });
        if self.name.trim().is_empty() {
            self.name = match self.objective.kind {
                ObjectiveKind::Namm => "namm".into(),
                kind => format!("{kind}-{dim}"),
            };
        }
        Ok(())
    }

    /// The run `namm-coord start` submits without `--run`: the recipe the shipped NAMM was
    /// trained with (`examples/runs/namm-surprisal.toml`). An empty spec is instead the paper's
    /// procedure (threshold selection, metric fitness, population 32).
    pub fn default_namm() -> RunSpec {
        RunSpec::from_toml(DEFAULT_RECIPE).expect("the default recipe is valid")
    }

    /// The spec with every default written out, as stored with the run.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a RunSpec always serialises to TOML")
    }

    pub fn dim(&self) -> usize {
        self.objective.dim.unwrap_or(BENCHMARK_DIM)
    }

    pub fn population(&self) -> usize {
        self.strategy
            .population
            .unwrap_or_else(|| default_population(self.dim()))
    }

    pub fn sigma0(&self) -> f64 {
        self.strategy.sigma0.unwrap_or(BENCHMARK_SIGMA0)
    }

    pub fn eigen(&self) -> Eigen {
        self.strategy.eigen.unwrap_or(Eigen::Exact)
    }

    pub fn covariance(&self) -> Covariance {
        self.strategy.covariance.unwrap_or(Covariance::Full)
    }

    /// The initial mean, expanded to `dim` coordinates.
    pub fn x0(&self) -> Vec<f64> {
        match &self.strategy.x0 {
            X0::Scalar(v) => vec![*v; self.dim()],
            X0::Vector(v) => v.clone(),
        }
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        let invalid = |field, value: String, reason: &str| SpecError::Invalid {
            field,
            value,
            reason: reason.to_string(),
        };
        if self.name.len() > MAX_NAME_BYTES || self.name.chars().any(char::is_control) {
            return Err(invalid(
                "name",
                format!("{:?}", self.name.chars().take(40).collect::<String>()),
                &format!("must be at most {MAX_NAME_BYTES} bytes without control characters"),
            ));
        }
        let dim = self.dim();
        if dim == 0 || dim > MAX_DIM {
            return Err(invalid(
                "objective.dim",
                dim.to_string(),
                &format!("must be between 1 and {MAX_DIM}"),
            ));
        }
        if let Some(p) = self.strategy.population {
            if !(2..=MAX_POPULATION).contains(&p) {
                return Err(invalid(
                    "strategy.population",
                    p.to_string(),
                    &format!("must be between 2 and {MAX_POPULATION}"),
                ));
            }
        }
        let population = self.population();
        if population.saturating_mul(dim) > MAX_GENERATION_VALUES {
            return Err(invalid(
                "strategy.population",
                population.to_string(),
                &format!(
                    "population × objective.dim = {population} × {dim} exceeds {MAX_GENERATION_VALUES} values per generation"
                ),
            ));
        }
        let sigma0 = self.sigma0();
        if !(sigma0.is_finite() && sigma0 > 0.0) {
            return Err(invalid(
                "strategy.sigma0",
                sigma0.to_string(),
                "must be a finite number > 0",
            ));
        }
        match &self.strategy.x0 {
            X0::Scalar(v) if !v.is_finite() => {
                return Err(invalid("strategy.x0", v.to_string(), "must be finite"));
            }
            X0::Vector(v) if v.len() != dim => {
                return Err(invalid(
                    "strategy.x0",
                    format!("a list of {} numbers", v.len()),
                    &format!("must be one number or a list of objective.dim = {dim} numbers"),
                ));
            }
            X0::Vector(v) => {
                if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
                    return Err(invalid(
                        "strategy.x0",
                        format!("{x} at index {i}"),
                        "must be finite",
                    ));
                }
            }
            X0::Scalar(_) => {}
        }
        if self.stop.max_generations == 0 || self.stop.max_generations > MAX_GENERATIONS {
            return Err(invalid(
                "stop.max_generations",
                self.stop.max_generations.to_string(),
                &format!("must be between 1 and {MAX_GENERATIONS}"),
            ));
        }
        if self.stop.target_fitness.is_nan() {
            return Err(invalid(
                "stop.target_fitness",
                "nan".into(),
                "must be a number (use -inf for no target)",
            ));
        }
        if let Some(n) = &self.namm {
            n.validate()?;
        }
        Ok(())
    }
}

/// Parses every task spec and writes it back in canonical form, so equal tasks compare equal
/// (prompt names and reference scores are keyed by it).
fn canonical_tasks(tasks: &mut [String], field: &'static str) -> Result<(), SpecError> {
    for t in tasks.iter_mut() {
        let spec: TaskSpec = t.parse().map_err(|e| SpecError::Invalid {
            field,
            value: format!("{t:?}"),
            reason: format!("{e}"),
        })?;
        *t = spec.to_string();
    }
    Ok(())
}

impl NammSpec {
    fn validate(&self) -> Result<(), SpecError> {
        let invalid = |field, value: String, reason: String| SpecError::Invalid {
            field,
            value,
            reason,
        };
        let sha = &self.model_sha256;
        if sha.len() != 64
            || !sha
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(invalid(
                "namm.model_sha256",
                format!("{sha:?}"),
                "must be 64 lowercase hex digits (`sha256sum MODEL.gguf`)".into(),
            ));
        }
        if self.tasks.is_empty() {
            return Err(invalid(
                "namm.tasks",
                "[]".into(),
                "needs at least one task spec, e.g. [\"passkey:len=1536\"]".into(),
            ));
        }
        for (name, field, v) in [
            ("pool_size", "namm.pool_size", self.pool_size),
            (
                "prompts_per_task",
                "namm.prompts_per_task",
                self.prompts_per_task,
            ),
            ("shard_size", "namm.shard_size", self.shard_size),
        ] {
            if v == 0 || v > MAX_PROMPTS {
                return Err(invalid(
                    field,
                    v.to_string(),
                    format!("{name} must be between 1 and {MAX_PROMPTS}"),
                ));
            }
        }
        if self.heldout_size > MAX_PROMPTS {
            return Err(invalid(
                "namm.heldout_size",
                self.heldout_size.to_string(),
                format!("must be at most {MAX_PROMPTS}"),
            ));
        }
        if self.prompts_per_task > self.pool_size {
            return Err(invalid(
                "namm.prompts_per_task",
                self.prompts_per_task.to_string(),
                format!(
                    "prompts are drawn without replacement from namm.pool_size = {} prompts",
                    self.pool_size
                ),
            ));
        }
        if let Some(b) = self.budget.filter(|b| b.budget().is_none()) {
            let value = match b {
                BudgetValue::Tokens(t) => t.to_string(),
                BudgetValue::Fraction(f) => f.to_string(),
            };
            return Err(invalid(
                "namm.budget",
                value,
                "must be a fraction in (0, 1] (e.g. 0.25) or a token count ≥ 1 (e.g. 512)".into(),
            ));
        }
        if self.heldout_every > 0 && self.heldout_size == 0 {
            return Err(invalid(
                "namm.heldout_every",
                self.heldout_every.to_string(),
                "needs namm.heldout_size > 0 (or set heldout_every = 0)".into(),
            ));
        }
        let mut previous = 0;
        for (i, stage) in self.stages.iter().enumerate() {
            if stage.from_generation <= previous {
                return Err(invalid(
                    "namm.stages.from_generation",
                    stage.from_generation.to_string(),
                    format!(
                        "stage {} must start after generation {previous} (stages are in order;                          generation 0 belongs to namm.tasks)",
                        i + 1
                    ),
                ));
            }
            previous = stage.from_generation;
            if stage.tasks.is_empty() {
                return Err(invalid(
                    "namm.stages.tasks",
                    "[]".into(),
                    format!("stage {} needs at least one task", i + 1),
                ));
            }
        }
        let most = self
            .stages
            .iter()
            .map(|s| s.tasks.len())
            .chain([self.tasks.len()])
            .max()
            .unwrap_or(0);
        if most.saturating_mul(self.prompts_per_task) > MAX_PROMPTS {
            return Err(invalid(
                "namm.prompts_per_task",
                self.prompts_per_task.to_string(),
                format!("tasks × prompts_per_task exceeds {MAX_PROMPTS} prompts per generation"),
            ));
        }
        Ok(())
    }

    /// The stage generation `g` belongs to (0 = `tasks`, i = `stages[i - 1]`).
    pub fn stage_of(&self, g: u32) -> u32 {
        self.stages
            .iter()
            .take_while(|s| s.from_generation <= g)
            .count() as u32
    }

    /// The tasks of stage `stage`.
    pub fn stage_tasks(&self, stage: u32) -> &[String] {
        match stage {
            0 => &self.tasks,
            i => self
                .stages
                .get(i as usize - 1)
                .map_or(&self.tasks[..], |s| &s.tasks[..]),
        }
    }

    /// The candidates' memory budget, if any.
    pub fn budget(&self) -> Option<Budget> {
        self.budget.and_then(|b| b.budget())
    }

    /// Whether generation `g` starts a stage (its tasks may need reference scores first).
    pub fn starts_stage(&self, g: u32) -> bool {
        g == 0 || self.stages.iter().any(|s| s.from_generation == g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
name = "rosenbrock-10"
seed = 1
[objective]
kind = "rosenbrock"
dim = 10
[strategy]
population = 10
sigma0 = 0.5
x0 = 0.0
[stop]
max_generations = 5000
target_fitness = -1e-8
"#;

    #[test]
    fn issue_example_parses() {
        let spec = RunSpec::from_toml(EXAMPLE).unwrap();
        assert_eq!(
            spec.objective.kind,
            ObjectiveKind::Benchmark(Benchmark::Rosenbrock)
        );
        assert_eq!(spec.eigen(), Eigen::Exact);
        assert_eq!(spec.sigma0(), 0.5);
        assert_eq!(spec.population(), 10);
        assert_eq!(spec.x0(), vec![0.0; 10]);
        assert_eq!(spec.stop.target_fitness, -1e-8);
    }

    #[test]
    fn the_default_run_is_the_budgeted_recipe() {
        let spec = RunSpec::default_namm();
        let namm = spec.namm.as_ref().unwrap();
        assert_eq!(namm.budget(), Some(Budget::Fraction(0.25)));
        assert_eq!(namm.fitness, FitnessKind::Retained);
        assert_eq!(namm.features, FeatureSet::Surprisal);
        assert_eq!(spec.covariance(), Covariance::Diagonal);
        assert!(spec.strategy.init_from.is_some());
        assert_eq!(spec.stop.target_fitness, f64::INFINITY);
        assert_eq!(RunSpec::from_toml(&spec.to_toml()).unwrap(), spec);
    }

    #[test]
    fn budgets_and_fitness_kinds_parse_and_bad_budgets_are_named() {
        let namm = |t: &str| RunSpec::from_toml(&format!("[namm]\n{t}")).map(|s| s.namm.unwrap());
        assert_eq!(
            namm("budget = 512").unwrap().budget(),
            Some(Budget::Tokens(512))
        );
        assert_eq!(
            namm("budget = 0.5").unwrap().budget(),
            Some(Budget::Fraction(0.5))
        );
        assert_eq!(namm("").unwrap().budget(), None);
        assert_eq!(
            namm("fitness = \"likelihood\"").unwrap().fitness,
            FitnessKind::Likelihood
        );
        for bad in ["budget = 0", "budget = 1.5", "budget = -0.1"] {
            let e = namm(bad).unwrap_err().to_string();
            assert!(e.contains("namm.budget"), "{bad}: {e}");
        }
        assert_eq!(
            namm("fitness = \"retained\"").unwrap().fitness,
            FitnessKind::Retained
        );
        assert!(namm("fitness = \"loss\"").is_err());
    }

    #[test]
    fn empty_spec_is_the_papers_namm_run() {
        let spec = RunSpec::from_toml("").unwrap();
        assert_eq!(spec.namm.as_ref().unwrap().budget(), None);
        assert_eq!(spec.namm.as_ref().unwrap().fitness, FitnessKind::Metric);
        assert_eq!(spec.name, "namm");
        assert_eq!(spec.objective.kind, ObjectiveKind::Namm);
        assert_eq!(spec.dim(), PARAM_COUNT);
        assert_eq!(spec.population(), 32);
        assert_eq!(spec.sigma0(), 0.065);
        assert_eq!(spec.eigen(), Eigen::Lazy);
        let namm = spec.namm.as_ref().unwrap();
        assert_eq!(namm.model_sha256, DEFAULT_MODEL_SHA256);
        assert_eq!(
            namm.tasks,
            vec![
                "passkey:len=1024,depth=random",
                "niah-multikey:len=1024,keys=4,depth=random"
            ]
        );
        // The stored canonical form parses back to the same run.
        assert_eq!(RunSpec::from_toml(&spec.to_toml()).unwrap(), spec);
    }

    #[test]
    fn benchmark_defaults_depend_on_the_dimension() {
        let spec = RunSpec::from_toml("[objective]\nkind = \"rosenbrock\"").unwrap();
        assert_eq!(spec.name, "rosenbrock-10");
        assert_eq!(spec.population(), default_population(10));
        assert!(spec.namm.is_none());
        assert_eq!(default_population(10), 10);
        assert_eq!(default_population(40), 15);
        assert_eq!(default_population(4172), 29);
    }

    #[test]
    fn canonical_toml_round_trips() {
        let spec = RunSpec::from_toml(
            "[strategy]\nx0 = [1.0, 2.0]\n[objective]\ndim = 2\nkind = \"sphere\"",
        )
        .unwrap();
        let again = RunSpec::from_toml(&spec.to_toml()).unwrap();
        assert_eq!(spec, again);
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = RunSpec::from_toml("[strategy]\nsigma = 0.3\n").unwrap_err();
        assert!(err.to_string().contains("sigma"), "{err}");
        let err = RunSpec::from_toml("nmae = \"x\"\n").unwrap_err();
        assert!(err.to_string().contains("nmae"), "{err}");
        let err = RunSpec::from_toml("[objective]\nkind = \"spere\"\n").unwrap_err();
        assert!(err.to_string().contains("spere"), "{err}");
        let err = RunSpec::from_toml("[namm]\npromts_per_task = 3\n").unwrap_err();
        assert!(err.to_string().contains("promts_per_task"), "{err}");
    }

    #[test]
    fn invalid_values_name_field_and_value() {
        let cases = [
            ("[objective]\ndim = 0", "objective.dim"),
            ("[objective]\nkind = \"namm\"\ndim = 12", "objective.dim"),
            ("[objective]\nkind = \"sphere\"\n[namm]\ntasks = []", "namm"),
            ("[namm]\ntasks = []", "namm.tasks"),
            ("[namm]\ntasks = [\"passkey:len=9\"]", "namm.tasks"),
            ("[namm]\nmodel_sha256 = \"abc\"", "namm.model_sha256"),
            ("[namm]\nprompts_per_task = 0", "namm.prompts_per_task"),
            (
                "[namm]\npool_size = 4\nprompts_per_task = 5",
                "namm.prompts_per_task",
            ),
            ("[namm]\nshard_size = 0", "namm.shard_size"),
            (
                "[namm]\nheldout_size = 0\nheldout_every = 2",
                "namm.heldout_every",
            ),
            (
                "[[namm.stages]]\nfrom_generation = 0\ntasks = [\"passkey\"]",
                "namm.stages.from_generation",
            ),
            (
                "[[namm.stages]]\nfrom_generation = 3\ntasks = []",
                "namm.stages.tasks",
            ),
            ("[strategy]\npopulation = 1", "strategy.population"),
            ("[strategy]\nsigma0 = -1.0", "strategy.sigma0"),
            ("[strategy]\nx0 = [1.0, 2.0]", "strategy.x0"),
            ("[stop]\nmax_generations = 0", "stop.max_generations"),
            ("[stop]\ntarget_fitness = nan", "stop.target_fitness"),
            (
                "[objective]\nkind = \"sphere\"\ndim = 10001",
                "objective.dim",
            ),
            (
                "[objective]\nkind = \"sphere\"\ndim = 10000\n[strategy]\npopulation = 5000",
                "strategy.population",
            ),
            (
                "[stop]\nmax_generations = 4000000000",
                "stop.max_generations",
            ),
            ("name = \"a\\u0000b\"", "name"),
        ];
        for (text, field) in cases {
            let err = RunSpec::from_toml(text).unwrap_err();
            assert!(err.to_string().contains(field), "{text}: {err}");
        }
        let err = RunSpec::from_toml("[strategy]\nsigma0 = -1.0").unwrap_err();
        assert!(err.to_string().contains("-1"), "{err}");
    }

    #[test]
    fn oversized_specs_and_names_are_refused() {
        let long = format!("name = \"{}\"", "x".repeat(MAX_NAME_BYTES + 1));
        assert!(RunSpec::from_toml(&long)
            .unwrap_err()
            .to_string()
            .contains("`name`"));
        let huge = format!("# {}\n", "x".repeat(MAX_SPEC_BYTES));
        let err = RunSpec::from_toml(&huge).unwrap_err().to_string();
        assert!(err.contains("`spec`") && err.contains("bytes"), "{err}");
    }

    #[test]
    fn stages_pick_their_tasks_by_generation() {
        let spec = RunSpec::from_toml(
            "[namm]\ntasks = [\"passkey:len=1024\"]\n[[namm.stages]]\nfrom_generation = 5\n\
             tasks = [\"passkey:len=1024\", \"niah-multikey:len=1024\"]\n",
        )
        .unwrap();
        let n = spec.namm.unwrap();
        assert_eq!(n.stage_of(0), 0);
        assert_eq!(n.stage_of(4), 0);
        assert_eq!(n.stage_of(5), 1);
        assert_eq!(n.stage_of(99), 1);
        assert_eq!(n.stage_tasks(1).len(), 2);
        assert_eq!(
            n.stage_tasks(1)[1],
            "niah-multikey:len=1024,keys=4,depth=random"
        );
        assert!(n.starts_stage(0) && n.starts_stage(5) && !n.starts_stage(4));
    }

    #[test]
    fn wrong_types_are_errors_not_panics() {
        assert!(RunSpec::from_toml("seed = \"one\"").is_err());
        assert!(RunSpec::from_toml("[objective]\ndim = -3").is_err());
        assert!(RunSpec::from_toml("[namm]\ntasks = \"passkey\"").is_err());
        assert!(RunSpec::from_toml("this is not toml").is_err());
        assert!(RunSpec::from_toml("[strategy]\nx0 = \"zero\"").is_err());
    }
}
