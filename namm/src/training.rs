//! The NAMM objective's bookkeeping, shared by the coordinator (which plans and scores) and
//! the workers (which evaluate): prompt names, the training and held-out pools, each
//! generation's draw and its shards, and a candidate's fitness (spec §10).

use rand::Rng;

use crate::spec::{FitnessKind, NammSpec};

/// The key of `ItemResult.extra` a worker reports a prompt's kept cache fraction under (at the
/// end of the pass), and the coordinator reads it from.
pub const KEPT_FRACTION: &str = "kept_fraction";
/// The largest kept fraction right after any policy invocation: what a budget caps.
pub const KEPT_AT_INVOCATIONS: &str = "kept_at_invocations";
/// The gold answer's mean log-probability per token, teacher-forced after the prompt.
pub const ANSWER_LOGPROB: &str = "answer_logprob";

/// The name of prompt `index` of `task` (a canonical task spec): `"<task>#<index>"`.
pub fn item_id(task: &str, index: u64) -> String {
    format!("{task}#{index}")
}

/// Splits an item id into its task spec and prompt index.
pub fn parse_item_id(id: &str) -> Result<(&str, u64), String> {
    let (task, index) = id
        .rsplit_once('#')
        .ok_or_else(|| format!("item id {id:?} is not <task spec>#<index>"))?;
    let index = index
        .parse()
        .map_err(|_| format!("item id {id:?}: `{index}` is not a prompt index"))?;
    Ok((task, index))
}

/// Draws the training prompts of one generation: for every task `prompts_per_task` distinct
/// indices of `0..pool_size`, uniformly without replacement (every candidate sees these).
pub fn draw_prompts(spec: &NammSpec, tasks: &[String], rng: &mut impl Rng) -> Vec<Vec<u64>> {
    tasks
        .iter()
        .map(|_| {
            rand::seq::index::sample(rng, spec.pool_size, spec.prompts_per_task)
                .into_iter()
                .map(|i| i as u64)
                .collect()
        })
        .collect()
}

/// The held-out prompt indices of every task: right after the training pool.
pub fn heldout_indices(spec: &NammSpec) -> Vec<u64> {
    let start = spec.pool_size as u64;
    (start..start + spec.heldout_size as u64).collect()
}

/// Every prompt that needs a full-cache reference score: the training pool and the held-out
/// prompts of each task.
pub fn pool_indices(spec: &NammSpec) -> Vec<u64> {
    (0..(spec.pool_size + spec.heldout_size) as u64).collect()
}

/// Cuts each task's prompts into shards of at most `shard_size` item ids; a shard holds one
/// task only. Task order, then prompt order.
pub fn shards(tasks: &[String], indices: &[Vec<u64>], shard_size: usize) -> Vec<Vec<String>> {
    tasks
        .iter()
        .zip(indices)
        .flat_map(|(task, idx)| {
            idx.chunks(shard_size.max(1))
                .map(|c| c.iter().map(|&i| item_id(task, i)).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A benchmark shard's fitness: the mean score of its items (NaN for an empty shard: nothing
/// was measured).
pub fn shard_fitness(scores: &[f64]) -> f64 {
    if scores.is_empty() {
        return f64::NAN;
    }
    scores.iter().sum::<f64>() / scores.len() as f64
}

/// One prompt's outcome under one parameter vector.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemScore<'a> {
    pub item_id: &'a str,
    /// The task metric in [0, 1] (for a likelihood unit, exp of `logprob`); NaN when the
    /// evaluation failed.
    pub score: f64,
    /// The gold answer's mean log-probability per token; NaN when not measured.
    pub logprob: f64,
    pub kept_fraction: f64,
}

/// The full cache's outcome on one prompt, from the reference pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reference {
    pub score: f64,
    /// NaN when the run does not measure likelihoods.
    pub logprob: f64,
}

/// One task's aggregate for one parameter vector.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskResult {
    pub task: String,
    /// 100 × the mean metric.
    pub score: f64,
    /// 100 × the full cache's mean metric on the same prompts.
    pub reference: f64,
    /// score / max(reference, 100 / prompts): the fitness term of the task.
    pub normalised: f64,
    pub kept_fraction: f64,
    pub prompts: usize,
}

/// A parameter vector's result over all its prompts.
#[derive(Debug, Clone, PartialEq)]
pub struct Fitness {
    /// Mean over tasks of the normalised scores; 1.0 = as good as the full cache.
    pub fitness: f64,
    pub kept_fraction: f64,
    pub tasks: Vec<TaskResult>,
}

/// The fitness of one parameter vector from its per-prompt results, by `kind`:
///
/// * [`FitnessKind::Metric`] (spec §10 step 4): for each task, its mean score over the full
///   cache's mean score on the same prompts, then the mean over tasks. Where the full cache
///   scores (almost) nothing on the sampled prompts the paper divides by 1e-7, which turns one
///   lucky answer into a fitness of 10⁶ and lets that generation's noise steer the whole
///   update. Here the reference is floored at one prompt's worth of score, 1/n for n prompts:
///   "as if the full cache had answered one of them". Above the floor this is exactly the
///   paper's ratio; a fitness above 1 still means "better than the full cache".
/// * [`FitnessKind::Likelihood`]: for each task, exp of the mean over its prompts of
///   (ℓ − ℓ_full), where ℓ is the mean log-probability per token of the gold answer
///   teacher-forced after the prompt under the evicted cache and ℓ_full the full cache's on
///   the same prompt; then the mean over tasks. It is the factor by which eviction changes the
///   gold answer's per-token probability (geometric mean over prompts): 1.0 = as the full
///   cache, continuous in the candidate, so a handful of prompts already ranks candidates
///   that a 0/1 metric would tie.
/// * [`FitnessKind::Retained`]: as `Likelihood` with each prompt's ℓ − ℓ_full capped at 0, so
///   at most 1.0 per task. Where the full cache's own answers go wrong (passkey, whose answers
///   loop on "the pass key is…"), an evicted cache can raise the gold answer's likelihood far
///   above the full cache's, and under the plain mean that gain pays for losing answers on
///   another task; capped, a candidate is credited only for keeping what the full cache knew.
///
/// Tasks appear in the order of `tasks`; a prompt whose reference is missing or whose measure
/// is NaN makes the fitness NaN (ranked last), never a silent zero.
pub fn fitness(
    kind: FitnessKind,
    tasks: &[String],
    items: &[ItemScore<'_>],
    reference: impl Fn(&str) -> Option<Reference>,
) -> Fitness {
    // Per task: Σ score, Σ reference score, Σ (ℓ − ℓ_full), Σ kept, prompts.
    let mut per_task: Vec<[f64; 5]> = vec![[0.0; 5]; tasks.len()];
    let mut broken = false;
    for item in items {
        let task = parse_item_id(item.item_id).ok().map(|(t, _)| t);
        let Some(t) = task.and_then(|t| tasks.iter().position(|x| x == t)) else {
            broken = true;
            continue;
        };
        let Some(r) = reference(item.item_id) else {
            broken = true;
            continue;
        };
        let acc = &mut per_task[t];
        acc[0] += item.score;
        acc[1] += r.score;
        let gain = item.logprob - r.logprob;
        // NaN stays NaN (f64::min would turn it into 0).
        let capped = kind == FitnessKind::Retained && gain > 0.0;
        acc[2] += if capped { 0.0 } else { gain };
        acc[3] += item.kept_fraction;
        acc[4] += 1.0;
    }
    let results: Vec<TaskResult> = tasks
        .iter()
        .zip(per_task)
        .map(|(task, [score, reference, gain, kept, n])| {
            let n_f = n.max(1.0);
            let (score, reference) = (score / n_f, reference / n_f);
            let normalised = match kind {
                _ if n == 0.0 => f64::NAN,
                FitnessKind::Metric => score / reference.max(1.0 / n_f),
                FitnessKind::Likelihood | FitnessKind::Retained => (gain / n_f).exp(),
            };
            TaskResult {
                task: task.clone(),
                score: 100.0 * score,
                reference: 100.0 * reference,
                normalised,
                kept_fraction: kept / n_f,
                prompts: n as usize,
            }
        })
        .collect();
    let mean = |f: fn(&TaskResult) -> f64| {
        results.iter().map(f).sum::<f64>() / results.len().max(1) as f64
    };
    let fitness = if broken || results.is_empty() {
        f64::NAN
    } else {
        mean(|r| r.normalised)
    };
    Fitness {
        fitness,
        kept_fraction: mean(|r| r.kept_fraction),
        tasks: results,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use std::collections::BTreeMap;

    #[test]
    fn item_ids_round_trip_even_with_hashes_in_the_task() {
        let id = item_id("longbench:path=/data/a#b.jsonl", 17);
        assert_eq!(
            parse_item_id(&id).unwrap(),
            ("longbench:path=/data/a#b.jsonl", 17)
        );
        assert!(parse_item_id("passkey:len=512").is_err());
        assert!(parse_item_id("passkey#x").unwrap_err().contains("`x`"));
    }

    #[test]
    fn draws_are_distinct_in_the_pool_and_seeded() {
        let spec = NammSpec {
            pool_size: 10,
            prompts_per_task: 10,
            ..NammSpec::default()
        };
        let tasks = vec!["a".to_string(), "b".to_string()];
        let draw = draw_prompts(&spec, &tasks, &mut ChaCha8Rng::seed_from_u64(3));
        for d in &draw {
            let mut s = d.clone();
            s.sort();
            assert_eq!(s, (0..10).collect::<Vec<u64>>());
        }
        let spec = NammSpec {
            pool_size: 64,
            prompts_per_task: 8,
            ..NammSpec::default()
        };
        let a = draw_prompts(&spec, &tasks, &mut ChaCha8Rng::seed_from_u64(3));
        let b = draw_prompts(&spec, &tasks, &mut ChaCha8Rng::seed_from_u64(3));
        let c = draw_prompts(&spec, &tasks, &mut ChaCha8Rng::seed_from_u64(4));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.iter().flatten().all(|&i| i < 64));
    }

    #[test]
    fn shards_hold_one_task_each() {
        let tasks = vec!["a".to_string(), "b".to_string()];
        let s = shards(&tasks, &[vec![1, 2, 3], vec![9]], 2);
        assert_eq!(
            s,
            vec![vec!["a#1", "a#2"], vec!["a#3"], vec!["b#9"]]
                .into_iter()
                .map(|v| v.into_iter().map(String::from).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        );
    }

    fn reference(pairs: &[(&str, f64)]) -> impl Fn(&str) -> Option<Reference> {
        let map: BTreeMap<String, f64> = pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        move |id| {
            map.get(id).map(|&score| Reference {
                score,
                logprob: score.ln(),
            })
        }
    }

    fn items<'a>(pairs: &[(&'a str, f64)]) -> Vec<ItemScore<'a>> {
        pairs
            .iter()
            .map(|&(item_id, score)| ItemScore {
                item_id,
                score,
                logprob: score.ln(),
                kept_fraction: 0.5,
            })
            .collect()
    }

    #[test]
    fn likelihood_fitness_is_the_geometric_mean_gain_over_the_full_cache() {
        let tasks = vec!["a".to_string(), "b".to_string()];
        // The items' logprobs are ln(score), the references' ln(reference).
        let refs = reference(&[("a#0", 0.5), ("a#1", 0.25), ("b#0", 0.8)]);
        let f = fitness(
            FitnessKind::Likelihood,
            &tasks,
            &items(&[("a#0", 1.0), ("a#1", 0.0625), ("b#0", 0.8)]),
            &refs,
        );
        // Task a: exp(mean(ln 2, ln 0.25)) = sqrt(0.5); task b: exactly the full cache.
        assert!((f.tasks[0].normalised - 0.5f64.sqrt()).abs() < 1e-12);
        assert!((f.tasks[1].normalised - 1.0).abs() < 1e-12);
        assert!((f.fitness - (0.5f64.sqrt() + 1.0) / 2.0).abs() < 1e-12);
        // An unmeasured likelihood (NaN) is a failure, not a zero.
        let mut broken = items(&[("a#0", 1.0), ("a#1", 0.5), ("b#0", 0.8)]);
        broken[1].logprob = f64::NAN;
        assert!(fitness(FitnessKind::Likelihood, &tasks, &broken, &refs)
            .fitness
            .is_nan());
    }

    #[test]
    fn retained_fitness_gives_no_credit_above_the_full_cache() {
        let tasks = vec!["a".to_string(), "b".to_string()];
        let refs = reference(&[("a#0", 0.5), ("a#1", 0.25), ("b#0", 0.8)]);
        let scored = items(&[("a#0", 1.0), ("a#1", 0.0625), ("b#0", 0.4)]);
        let f = fitness(FitnessKind::Retained, &tasks, &scored, &refs);
        // Task a: a#0's gain ln 2 counts as 0, a#1 keeps ln 0.25: exp(ln 0.25 / 2) = 0.5.
        assert!((f.tasks[0].normalised - 0.5).abs() < 1e-12);
        assert!((f.tasks[1].normalised - 0.5).abs() < 1e-12);
        // The uncapped fitness lets a#0's gain offset a#1's loss.
        let plain = fitness(FitnessKind::Likelihood, &tasks, &scored, &refs);
        assert!(plain.tasks[0].normalised > f.tasks[0].normalised);
        let mut broken = scored.clone();
        broken[0].logprob = f64::NAN;
        assert!(fitness(FitnessKind::Retained, &tasks, &broken, &refs)
            .fitness
            .is_nan());
    }

    #[test]
    fn fitness_is_the_mean_of_per_task_ratios() {
        let tasks = vec!["a".to_string(), "b".to_string()];
        let refs = reference(&[("a#0", 1.0), ("a#1", 0.0), ("b#0", 1.0), ("b#1", 1.0)]);
        // Task a: 1.0 / 0.5 = 2; task b: 0.5 / 1.0 = 0.5; mean 1.25.
        let f = fitness(
            FitnessKind::Metric,
            &tasks,
            &items(&[("a#0", 1.0), ("a#1", 1.0), ("b#0", 1.0), ("b#1", 0.0)]),
            &refs,
        );
        assert_eq!(f.fitness, 1.25);
        assert_eq!(f.tasks[0].score, 100.0);
        assert_eq!(f.tasks[0].reference, 50.0);
        assert_eq!(f.tasks[1].normalised, 0.5);
        assert_eq!(f.kept_fraction, 0.5);
        // The full cache itself scores exactly 1.
        let f = fitness(
            FitnessKind::Metric,
            &tasks,
            &items(&[("a#0", 1.0), ("a#1", 0.0), ("b#0", 1.0), ("b#1", 1.0)]),
            &refs,
        );
        assert_eq!(f.fitness, 1.0);
    }

    #[test]
    fn a_reference_of_zero_is_floored_at_one_prompt() {
        let tasks = vec!["a".to_string()];
        let refs = reference(&[("a#0", 0.0), ("a#1", 0.0), ("a#2", 0.0), ("a#3", 0.0)]);
        let f = fitness(
            FitnessKind::Metric,
            &tasks,
            &items(&[("a#0", 1.0), ("a#1", 0.0), ("a#2", 0.0), ("a#3", 0.0)]),
            &refs,
        );
        // Score 0.25 over a floor of 1/4: one answer = as good as "one answer by the full cache".
        assert_eq!(f.fitness, 1.0);
        let f = fitness(
            FitnessKind::Metric,
            &tasks,
            &items(&[("a#0", 1.0), ("a#1", 1.0), ("a#2", 0.0), ("a#3", 0.0)]),
            &refs,
        );
        assert_eq!(f.fitness, 2.0);
        let none = fitness(
            FitnessKind::Metric,
            &tasks,
            &items(&[("a#0", 0.0), ("a#1", 0.0)]),
            &refs,
        );
        assert_eq!(none.fitness, 0.0);
    }

    #[test]
    fn missing_references_unknown_tasks_and_failures_give_nan() {
        let tasks = vec!["a".to_string()];
        let refs = reference(&[("a#0", 1.0)]);
        assert!(
            fitness(FitnessKind::Metric, &tasks, &items(&[("a#1", 1.0)]), &refs)
                .fitness
                .is_nan()
        );
        assert!(
            fitness(FitnessKind::Metric, &tasks, &items(&[("z#0", 1.0)]), &refs)
                .fitness
                .is_nan()
        );
        assert!(fitness(
            FitnessKind::Metric,
            &tasks,
            &items(&[("a#0", f64::NAN)]),
            &refs
        )
        .fitness
        .is_nan());
        assert!(fitness(FitnessKind::Metric, &tasks, &[], &refs)
            .fitness
            .is_nan());
    }
}
