//! Evaluating NAMM work units on the worker's LLM.
//!
//! A generation's candidates all run on the same prompts, and before the first policy
//! invocation (token 512) their caches are identical. So the worker keeps, per prompt, the
//! generated sample, its token ids and the prefilled shared prefix, and every later candidate
//! forks that prefix instead of computing it again (bounded by `--prompt-cache`, least
//! recently used first out).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use namm::engine::{AnswerScore, InvocationStats};
use namm::evaluate::{Evaluator, Prepared, SampleResult};
use namm::model::{ModelSource, WeightFormat};
use namm::policy::{
    parse_budget, FeatureSet, FullCache, MemoryPolicy, NammPolicy, NormMode, PolicyInputs,
    PARAM_COUNT,
};
use namm::stats::NormStats;
use namm::tasks::{Task, TaskSpec};
use namm::training::{parse_item_id, ANSWER_LOGPROB, KEPT_AT_INVOCATIONS, KEPT_FRACTION};
use namm_proto::{ItemResult, NammObjective, UnitKind, WorkUnit};

use crate::evaluate::UnitOutcome;

/// The worker's model and what it keeps between units.
pub struct Llm {
    /// Leaked once per process: cached prefixes borrow the model for as long as it lives.
    evaluator: &'static Evaluator,
    sha256: String,
    source: ModelSource,
    device: String,
    cache: Mutex<PromptCache>,
}

/// A prompt of a unit: (task seed, item id).
type PromptKey<'a> = (u64, &'a str);

/// What a unit runs: its policy, whether it accumulates normalisation statistics (the first
/// reference pass), and what it measures on each prompt.
struct Plan {
    policy: PlanPolicy,
    accumulates: bool,
    decode: bool,
    answer_likelihood: bool,
}

enum PlanPolicy {
    Namm(Box<NammPolicy>),
    Full(FullCache),
}

impl PlanPolicy {
    fn as_dyn(&mut self) -> &mut dyn MemoryPolicy {
        match self {
            PlanPolicy::Namm(p) => p.as_mut(),
            PlanPolicy::Full(p) => p,
        }
    }
}

struct PromptCache {
    capacity: usize,
    prompts: HashMap<(u64, String), Arc<Prepared<'static>>>,
    /// Least recently used first.
    order: VecDeque<(u64, String)>,
    tasks: HashMap<String, Arc<Task>>,
}

impl std::fmt::Debug for Llm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llm")
            .field("source", &self.source)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

impl Llm {
    /// Loads the model (a GGUF file or `random:SHAPE`) onto `device` (`cpu`, `cuda`, `cuda:N`)
    /// and hashes its GGUF bytes, to match run specs to it.
    pub fn load(
        source: &ModelSource,
        device: &str,
        format: WeightFormat,
        prompt_cache: usize,
    ) -> anyhow::Result<Llm> {
        let sha256 = source
            .sha256()
            .with_context(|| format!("--model {source}"))?;
        let dev =
            namm::evaluate::parse_device(device).with_context(|| format!("--device {device}"))?;
        let evaluator = Evaluator::load_source(source, &dev, format)
            .with_context(|| format!("--model {source}"))?;
        Ok(Llm {
            evaluator: Box::leak(Box::new(evaluator)),
            sha256,
            source: source.clone(),
            device: device.trim().to_string(),
            cache: Mutex::new(PromptCache {
                capacity: prompt_cache,
                prompts: HashMap::new(),
                order: VecDeque::new(),
                tasks: HashMap::new(),
            }),
        })
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn source(&self) -> &ModelSource {
        &self.source
    }

    /// The device spec the model runs on, as reported at registration.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Runs every item of NAMM units, the units' policies on one prompt as rows of batches
    /// of at most `max_batch`. A unit it cannot run at all (other model, wrong θ length, bad
    /// statistics) is an error; a prompt that fails gets a NaN score flagged with
    /// `extra["error"] = 1`, ranked last by the strategy, and the others still run.
    pub fn evaluate(
        &self,
        units: &[(&WorkUnit, &NammObjective)],
        max_batch: usize,
    ) -> Vec<Result<UnitOutcome, String>> {
        let mut plans: Vec<Result<Plan, String>> =
            units.iter().map(|(u, obj)| self.plan(u, obj)).collect();
        let mut items: Vec<Vec<Option<ItemResult>>> = units
            .iter()
            .map(|(u, _)| vec![None; u.item_ids.len()])
            .collect();
        // Rows by prompt, prompts in the order the units list them.
        let mut prompts: Vec<(PromptKey, Vec<(usize, usize)>)> = Vec::new();
        for (ui, (unit, obj)) in units.iter().enumerate() {
            if plans[ui].is_err() {
                continue;
            }
            for (pos, id) in unit.item_ids.iter().enumerate() {
                let key = (obj.task_seed, id.as_str());
                match prompts.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, rows)) => rows.push((ui, pos)),
                    None => prompts.push((key, vec![(ui, pos)])),
                }
            }
        }
        for ((task_seed, id), rows) in prompts {
            for batch in rows.chunks(max_batch.max(1)) {
                let results = self.run_rows(task_seed, id, batch, &mut plans);
                for (&(ui, pos), r) in batch.iter().zip(results) {
                    items[ui][pos] = Some(r.unwrap_or_else(|e| {
                        tracing::error!(unit = %units[ui].0.unit_id, item = %id, error = %format!("{e:#}"), "prompt failed");
                        ItemResult {
                            item_id: id.to_string(),
                            score: f64::NAN,
                            extra: HashMap::from([("error".to_string(), 1.0)]),
                        }
                    }));
                }
            }
        }
        plans
            .into_iter()
            .zip(items)
            .map(|(plan, items)| {
                let plan = plan?;
                Ok(UnitOutcome {
                    items: items.into_iter().flatten().collect(),
                    norm_stats: match plan.policy {
                        PlanPolicy::Namm(p) if plan.accumulates => Some(p.norm_stats().clone()),
                        _ => None,
                    },
                })
            })
            .collect()
    }

    /// The policy a unit runs.
    fn plan(&self, unit: &WorkUnit, obj: &NammObjective) -> Result<Plan, String> {
        if obj.model_sha256 != self.sha256 {
            return Err(format!(
                "unit wants model sha256 {} but this worker holds {} ({})",
                obj.model_sha256, self.sha256, self.source
            ));
        }
        if !obj.decode && !obj.answer_likelihood {
            return Err("the unit measures nothing (objective.decode and \
                        objective.answer_likelihood are both false)"
                .into());
        }
        let kind = unit.key.map(|k| k.kind()).unwrap_or_default();
        let features = match obj.features.trim() {
            "" => FeatureSet::Spectral,
            f => FeatureSet::parse(f).ok_or_else(|| {
                format!(
                    "objective.features is {f:?}; expected one of {}",
                    FeatureSet::NAMES
                )
            })?,
        };
        // Reference units run the full cache; the first pass runs it as the NAMM with θ = 0
        // (which keeps every token) to accumulate the statistics.
        let policy = match (kind, obj.accumulate_stats, &obj.norm_stats) {
            (UnitKind::Reference, true, _) => PlanPolicy::Namm(Box::new(
                NammPolicy::new(vec![0.0; PARAM_COUNT], NormMode::accumulate())
                    .map_err(|e| e.to_string())?
                    .with_feature_set(features),
            )),
            (UnitKind::Reference, false, _) => PlanPolicy::Full(FullCache),
            (_, true, _) => return Err("only reference units accumulate statistics".into()),
            (_, false, None) => {
                return Err("a candidate unit came without frozen statistics".into())
            }
            (_, false, Some(s)) => {
                if unit.params.len() != PARAM_COUNT {
                    return Err(format!(
                        "params has {} values; a NAMM has {PARAM_COUNT}",
                        unit.params.len()
                    ));
                }
                let stats = NormStats::new(s.mean.clone(), s.var.clone(), s.count)
                    .map_err(|e| format!("objective.norm_stats: {e}"))?;
                let budget = match obj.budget.trim() {
                    "" => None,
                    b => Some(
                        parse_budget("namm", b).map_err(|e| format!("objective.budget: {e}"))?,
                    ),
                };
                let params = unit.params.iter().map(|&v| v as f32).collect();
                PlanPolicy::Namm(Box::new(
                    NammPolicy::new(params, NormMode::Frozen(stats))
                        .map_err(|e| e.to_string())?
                        .with_feature_set(features)
                        .with_budget(budget),
                ))
            }
        };
        Ok(Plan {
            accumulates: obj.accumulate_stats && kind == UnitKind::Reference,
            decode: obj.decode,
            answer_likelihood: obj.answer_likelihood,
            policy,
        })
    }

    /// One prompt under the policies of the units `rows` name (unit index, item position), as
    /// one batch; one result per row.
    fn run_rows(
        &self,
        task_seed: u64,
        item_id: &str,
        rows: &[(usize, usize)],
        plans: &mut [Result<Plan, String>],
    ) -> Vec<anyhow::Result<ItemResult>> {
        let (prepared, cached) = match self.prepared(task_seed, item_id) {
            Ok(p) => p,
            Err(e) => {
                let msg = format!("{e:#}");
                return rows.iter().map(|_| Err(anyhow::anyhow!("{msg}"))).collect();
            }
        };
        let mut selected: Vec<&mut Plan> = plans
            .iter_mut()
            .enumerate()
            .filter(|(ui, _)| rows.iter().any(|(r, _)| r == ui))
            .filter_map(|(_, p)| p.as_mut().ok())
            .collect();
        // Rows are in unit order, like the caller's.
        let mut decoded: Vec<Option<SampleResult>> = vec![None; selected.len()];
        let decoding: Vec<usize> = (0..selected.len())
            .filter(|&k| selected[k].decode)
            .collect();
        if !decoding.is_empty() {
            let batch = selected
                .iter_mut()
                .filter(|p| p.decode)
                .map(|p| (&*prepared, p.policy.as_dyn()))
                .collect();
            match self.evaluator.run_batch(batch) {
                Ok((results, _)) => {
                    for (&k, r) in decoding.iter().zip(results) {
                        decoded[k] = Some(r);
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    return rows.iter().map(|_| Err(anyhow::anyhow!("{msg}"))).collect();
                }
            }
        }
        selected
            .iter_mut()
            .zip(decoded)
            .enumerate()
            .map(|(k, (plan, decoded))| {
                let answer = if plan.answer_likelihood {
                    Some(
                        self.evaluator
                            .score_answer(&prepared, plan.policy.as_dyn())?,
                    )
                } else {
                    None
                };
                // The model's own compute for this prompt in this unit: a prefix taken from
                // the cache, or computed for an earlier row, is not counted again.
                let reused = cached || k > 0;
                let result = item_result(item_id, decoded, answer, &prepared, reused, rows.len());
                tracing::debug!(item = %item_id, score = result.score, "prompt done");
                Ok(result)
            })
            .collect()
    }

    /// The cached preparation of a prompt, made on first use. Prefixes are prefilled with the
    /// attention taps and the surprisal a NAMM needs, whatever policy asks first, so every
    /// later candidate can share them (a policy that needs neither does not pay for them past
    /// the prefix).
    /// Also says whether it came from the cache.
    fn prepared(
        &self,
        task_seed: u64,
        item_id: &str,
    ) -> anyhow::Result<(Arc<Prepared<'static>>, bool)> {
        let key = (task_seed, item_id.to_string());
        let task = {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(p) = cache.prompts.get(&key).cloned() {
                cache.order.retain(|k| k != &key);
                cache.order.push_back(key);
                return Ok((p, true));
            }
            let (task, _) = parse_item_id(item_id).map_err(anyhow::Error::msg)?;
            match cache.tasks.get(task) {
                Some(t) => t.clone(),
                None => {
                    let spec: TaskSpec = task.parse()?;
                    let t = Arc::new(spec.load()?);
                    cache.tasks.insert(task.to_string(), t.clone());
                    t
                }
            }
        };
        let (_, index) = parse_item_id(item_id).map_err(anyhow::Error::msg)?;
        let sample = self
            .evaluator
            .samples_at(&task, task_seed, [index])?
            .pop()
            .context("no sample generated")?;
        let inputs = PolicyInputs {
            attention: true,
            key_norms: false,
            surprisal: true,
        };
        let prepared = Arc::new(self.evaluator.prepare(sample, Some(inputs))?);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.capacity > 0 {
            while cache.prompts.len() >= cache.capacity {
                let Some(old) = cache.order.pop_front() else {
                    break;
                };
                cache.prompts.remove(&old);
            }
            cache.prompts.insert(key.clone(), prepared.clone());
            cache.order.push_back(key);
        }
        Ok((prepared, false))
    }
}

/// One prompt's report from what a unit measured: the decoded answer's metric and accounting,
/// and/or the gold answer's likelihood (whose probability is the score when nothing was
/// decoded).
fn item_result(
    item_id: &str,
    decoded: Option<SampleResult>,
    answer: Option<AnswerScore>,
    prepared: &Prepared<'_>,
    reused: bool,
    batch_rows: usize,
) -> ItemResult {
    let prefix_secs = prepared.prefix_secs();
    let mut extra = HashMap::from([
        ("prefix_cached".to_string(), f64::from(u8::from(reused))),
        ("batch_rows".to_string(), batch_rows as f64),
    ]);
    let (mut forward, mut prefill, mut decode, mut policy) = (0.0, 0.0, 0.0, 0.0);
    let mut score = f64::NAN;
    if let Some(a) = &answer {
        let s = &a.stats;
        score = a.mean_logprob().exp();
        extra.insert(ANSWER_LOGPROB.into(), a.mean_logprob());
        extra.insert("answer_tokens".into(), a.tokens as f64);
        extra.insert(KEPT_FRACTION.into(), s.mean_kept_fraction);
        extra.insert(
            KEPT_AT_INVOCATIONS.into(),
            max_invocation_kept(&s.invocations),
        );
        extra.insert("prompt_tokens".into(), s.prompt_tokens as f64);
        forward += s.prefill_secs + s.decode_secs - s.policy_secs;
        prefill += s.prefill_secs + prefix_secs;
        decode += s.decode_secs;
        policy += s.policy_secs;
    }
    if let Some(r) = &decoded {
        score = r.score;
        extra.insert(KEPT_FRACTION.into(), r.kept_fraction);
        let kept_max = r.kept_after_invocations.iter().copied().fold(0.0, f64::max);
        extra.insert(KEPT_AT_INVOCATIONS.into(), kept_max);
        extra.insert("prompt_tokens".into(), r.prompt_tokens as f64);
        extra.insert("generated_tokens".into(), r.generated_tokens as f64);
        forward += r.prefill_secs + r.decode_secs - r.policy_secs - prefix_secs;
        prefill += r.prefill_secs;
        decode += r.decode_secs;
        policy += r.policy_secs;
    }
    if !reused {
        forward += prefix_secs;
    }
    extra.extend([
        ("forward_secs".to_string(), forward),
        ("prefill_secs".to_string(), prefill),
        ("decode_secs".to_string(), decode),
        ("policy_secs".to_string(), policy),
    ]);
    ItemResult {
        item_id: item_id.to_string(),
        score,
        extra,
    }
}

/// The largest kept fraction right after any invocation (0 without one).
fn max_invocation_kept(invocations: &[InvocationStats]) -> f64 {
    invocations
        .iter()
        .map(|inv| {
            let kept: usize = inv.kept_per_layer.iter().sum();
            kept as f64 / (inv.kept_per_layer.len() * inv.tokens_seen) as f64
        })
        .fold(0.0, f64::max)
}
