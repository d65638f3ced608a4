//! Evaluating one work unit.

use crate::WorkerConfig;
use namm::objective::Benchmark;
use namm::stats::NormStats;
use namm_proto::{objective, ItemResult, NammObjective, WorkUnit};
use std::collections::HashMap;

/// What a unit produced: one result per item, and for the first reference pass of a NAMM run
/// the normalisation statistics accumulated on it.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitOutcome {
    pub items: Vec<ItemResult>,
    pub norm_stats: Option<NormStats>,
}

/// Evaluates units with what this worker has, one outcome per unit in order; the NAMM units
/// run their policies as rows of batches of at most `max_batch` on the worker's LLM. A unit
/// it cannot evaluate (unknown objective, wrong vector length, a model it does not hold) gets
/// NaN scores flagged with `extra["error"] = 1`, which the strategy ranks last, rather than
/// stalling the generation.
// Without the engine (the coordinator's in-process benchmark workers) `cfg` holds nothing used.
#[cfg_attr(not(feature = "engine"), allow(unused_variables))]
pub fn evaluate_units(units: &[WorkUnit], cfg: &WorkerConfig) -> Vec<UnitOutcome> {
    let namm: Vec<(usize, &NammObjective)> = units
        .iter()
        .enumerate()
        .filter_map(
            |(i, u)| match u.objective.as_ref().and_then(|o| o.kind.as_ref()) {
                Some(objective::Kind::Namm(obj)) => Some((i, obj)),
                _ => None,
            },
        )
        .collect();
    let mut outcomes: Vec<Option<UnitOutcome>> = vec![None; units.len()];
    #[cfg(feature = "engine")]
    let results: Vec<Result<UnitOutcome, String>> = match &cfg.llm {
        Some(llm) => {
            let batch: Vec<(&WorkUnit, &NammObjective)> =
                namm.iter().map(|&(i, obj)| (&units[i], obj)).collect();
            llm.evaluate(&batch, cfg.max_batch)
        }
        None => namm
            .iter()
            .map(|_| Err("this worker holds no model (start it with --model PATH)".into()))
            .collect(),
    };
    #[cfg(not(feature = "engine"))]
    let results: Vec<Result<UnitOutcome, String>> = namm
        .iter()
        .map(|_| Err("this worker was built without the LLM engine".into()))
        .collect();
    for (&(i, _), result) in namm.iter().zip(results) {
        outcomes[i] = Some(result.unwrap_or_else(|msg| {
            tracing::error!(unit = %units[i].unit_id, error = %msg, "cannot evaluate unit");
            UnitOutcome {
                items: failed_items(&units[i]),
                norm_stats: None,
            }
        }));
    }
    units
        .iter()
        .zip(outcomes)
        .map(|(unit, outcome)| {
            outcome.unwrap_or_else(|| UnitOutcome {
                items: evaluate(unit),
                norm_stats: None,
            })
        })
        .collect()
}

fn failed_items(unit: &WorkUnit) -> Vec<ItemResult> {
    unit.item_ids
        .iter()
        .map(|id| ItemResult {
            item_id: id.clone(),
            score: f64::NAN,
            extra: HashMap::from([("error".to_string(), 1.0)]),
        })
        .collect()
}

/// A benchmark unit: one result per item.
pub fn evaluate(unit: &WorkUnit) -> Vec<ItemResult> {
    let score = match unit.objective.as_ref().and_then(|o| o.kind.as_ref()) {
        Some(objective::Kind::Benchmark(b)) => match b.kind.parse::<Benchmark>() {
            Ok(bench) if unit.params.len() == b.dim as usize => Ok(bench.fitness(&unit.params)),
            Ok(_) => Err(format!(
                "params has {} values but objective.dim = {}",
                unit.params.len(),
                b.dim
            )),
            Err(e) => Err(e.to_string()),
        },
        Some(objective::Kind::Namm(_)) => Err("not a benchmark unit".to_string()),
        None => Err("unit has no objective".to_string()),
    };
    let (score, extra) = match score {
        Ok(s) => (s, HashMap::new()),
        Err(msg) => {
            tracing::error!(unit = %unit.unit_id, error = %msg, "cannot evaluate unit");
            (f64::NAN, HashMap::from([("error".to_string(), 1.0)]))
        }
    };
    unit.item_ids
        .iter()
        .map(|id| ItemResult {
            item_id: id.clone(),
            score,
            extra: extra.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use namm_proto::{BenchmarkObjective, Objective};

    fn unit(kind: &str, dim: u32, params: Vec<f64>) -> WorkUnit {
        WorkUnit {
            params,
            objective: Some(Objective {
                kind: Some(objective::Kind::Benchmark(BenchmarkObjective {
                    kind: kind.into(),
                    dim,
                })),
            }),
            item_ids: vec![kind.into()],
            ..Default::default()
        }
    }

    #[test]
    fn scores_are_negated_benchmark_values() {
        let items = evaluate(&unit("sphere", 2, vec![1.0, 2.0]));
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].item_id, "sphere");
        assert_eq!(items[0].score, -5.0);
    }

    #[test]
    fn bad_units_get_flagged_nan() {
        for u in [unit("sphere", 3, vec![1.0]), unit("cube", 1, vec![1.0])] {
            let items = evaluate(&u);
            assert!(items[0].score.is_nan());
            assert_eq!(items[0].extra.get("error"), Some(&1.0));
        }
    }
}
