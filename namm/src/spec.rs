//! Run specs: the TOML a user submits to start an evolution. Every field has a default and an
//! unknown field is an error that names it, so a typo never silently runs the wrong experiment.

use crate::objective::Benchmark;
use serde::{Deserialize, Serialize};

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
    /// Shown in listings; defaults to "<objective>-<dim>".
    pub name: String,
    pub seed: u64,
    pub objective: ObjectiveSpec,
    pub strategy: StrategySpec,
    pub stop: StopSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectiveSpec {
    pub kind: Benchmark,
    pub dim: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StrategySpec {
    /// λ; `None` means CMA-ES's default 4 + ⌊3 ln n⌋.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub population: Option<usize>,
    pub sigma0: f64,
    pub x0: X0,
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
        }
    }
}

impl Default for ObjectiveSpec {
    fn default() -> Self {
        ObjectiveSpec {
            kind: Benchmark::Rosenbrock,
            dim: 10,
        }
    }
}

impl Default for StrategySpec {
    fn default() -> Self {
        StrategySpec {
            population: None,
            sigma0: 0.5,
            x0: X0::Scalar(0.0),
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

/// CMA-ES's default population size for dimension `dim`: 4 + ⌊3 ln n⌋.
pub fn default_population(dim: usize) -> usize {
    4 + (3.0 * (dim.max(1) as f64).ln()).floor() as usize
}

impl RunSpec {
    /// Parses and validates a run spec; the result has its name filled in.
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
        if spec.name.trim().is_empty() {
            spec.name = format!("{}-{}", spec.objective.kind, spec.objective.dim);
        }
        spec.validate()?;
        Ok(spec)
    }

    /// The spec with every default written out, as stored with the run.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a RunSpec always serialises to TOML")
    }

    pub fn population(&self) -> usize {
        self.strategy
            .population
            .unwrap_or_else(|| default_population(self.objective.dim))
    }

    /// The initial mean, expanded to `dim` coordinates.
    pub fn x0(&self) -> Vec<f64> {
        match &self.strategy.x0 {
            X0::Scalar(v) => vec![*v; self.objective.dim],
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
        let dim = self.objective.dim;
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
        let sigma0 = self.strategy.sigma0;
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
        Ok(())
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
        assert_eq!(spec.objective.kind, Benchmark::Rosenbrock);
        assert_eq!(spec.population(), 10);
        assert_eq!(spec.x0(), vec![0.0; 10]);
        assert_eq!(spec.stop.target_fitness, -1e-8);
    }

    #[test]
    fn empty_spec_is_all_defaults() {
        let spec = RunSpec::from_toml("").unwrap();
        assert_eq!(spec.name, "rosenbrock-10");
        assert_eq!(spec.population(), default_population(10));
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
    }

    #[test]
    fn invalid_values_name_field_and_value() {
        let cases = [
            ("[objective]\ndim = 0", "objective.dim"),
            ("[strategy]\npopulation = 1", "strategy.population"),
            ("[strategy]\nsigma0 = -1.0", "strategy.sigma0"),
            ("[strategy]\nx0 = [1.0, 2.0]", "strategy.x0"),
            ("[stop]\nmax_generations = 0", "stop.max_generations"),
            ("[stop]\ntarget_fitness = nan", "stop.target_fitness"),
            ("[objective]\ndim = 10001", "objective.dim"),
            (
                "[objective]\ndim = 10000\n[strategy]\npopulation = 5000",
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
    fn wrong_types_are_errors_not_panics() {
        assert!(RunSpec::from_toml("seed = \"one\"").is_err());
        assert!(RunSpec::from_toml("[objective]\ndim = -3").is_err());
        assert!(RunSpec::from_toml("this is not toml").is_err());
        assert!(RunSpec::from_toml("[strategy]\nx0 = \"zero\"").is_err());
    }
}
