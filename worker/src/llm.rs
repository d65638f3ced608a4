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
use namm::evaluate::{Evaluator, Prepared};
use namm::model::{ModelSource, WeightFormat};
use namm::policy::{FullCache, MemoryPolicy, NammPolicy, NormMode, PolicyInputs, PARAM_COUNT};
use namm::stats::NormStats;
use namm::tasks::{Task, TaskSpec};
use namm::training::{parse_item_id, KEPT_FRACTION};
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

/// What a unit runs: its policy, and whether it accumulates normalisation statistics (the
/// first reference pass).
struct Plan {
    policy: PlanPolicy,
    accumulates: bool,
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
        let sha256 = source.sha256().with_context(|| format!("--model {source}"))?;
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
        let mut items: Vec<Vec<Option<ItemResult>>> =
            units.iter().map(|(u, _)| vec![None; u.item_ids.len()]).collect();
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
        let kind = unit.key.map(|k| k.kind()).unwrap_or_default();
        // Reference units run θ = 0, which keeps every token: the full cache. The first pass
        // has no statistics yet and runs the NAMM to accumulate them; later passes (new tasks
        // of a stage) skip its work.
        let policy = match (&obj.norm_stats, kind) {
            (None, UnitKind::Reference) => PlanPolicy::Namm(Box::new(
                NammPolicy::new(vec![0.0; PARAM_COUNT], NormMode::accumulate())
                    .map_err(|e| e.to_string())?,
            )),
            (Some(_), UnitKind::Reference) => PlanPolicy::Full(FullCache),
            (None, _) => return Err("a candidate unit came without frozen statistics".into()),
            (Some(s), _) => {
                if unit.params.len() != PARAM_COUNT {
                    return Err(format!(
                        "params has {} values; a NAMM has {PARAM_COUNT}",
                        unit.params.len()
                    ));
                }
                let stats = NormStats::new(s.mean.clone(), s.var.clone(), s.count)
                    .map_err(|e| format!("objective.norm_stats: {e}"))?;
                let params = unit.params.iter().map(|&v| v as f32).collect();
                PlanPolicy::Namm(Box::new(
                    NammPolicy::new(params, NormMode::Frozen(stats)).map_err(|e| e.to_string())?,
                ))
            }
        };
        Ok(Plan {
            accumulates: obj.norm_stats.is_none() && kind == UnitKind::Reference,
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
        let policies: Vec<(&Prepared<'_>, &mut dyn MemoryPolicy)> = plans
            .iter_mut()
            .enumerate()
            .filter(|(ui, _)| rows.iter().any(|(r, _)| r == ui))
            .filter_map(|(_, p)| p.as_mut().ok())
            .map(|p| (&*prepared, p.policy.as_dyn()))
            .collect();
        let results = match self.evaluator.run_batch(policies) {
            Ok((r, _)) => r,
            Err(e) => {
                let msg = e.to_string();
                return rows.iter().map(|_| Err(anyhow::anyhow!("{msg}"))).collect();
            }
        };
        // Rows come back in unit order; the caller's rows are in unit order too.
        results
            .into_iter()
            .enumerate()
            .map(|(k, r)| {
                // The model's own compute for this prompt in this unit: a prefix taken from
                // the cache, or computed for an earlier row of the batch, is not counted again.
                let reused = if cached || k > 0 {
                    prepared.prefix_secs()
                } else {
                    0.0
                };
                let forward_secs = r.prefill_secs + r.decode_secs - r.policy_secs - reused;
                let extra = HashMap::from([
                    ("forward_secs".to_string(), forward_secs),
                    ("prefix_cached".to_string(), f64::from(u8::from(cached || k > 0))),
                    (KEPT_FRACTION.to_string(), r.kept_fraction),
                    ("prompt_tokens".to_string(), r.prompt_tokens as f64),
                    ("generated_tokens".to_string(), r.generated_tokens as f64),
                    ("prefill_secs".to_string(), r.prefill_secs),
                    ("decode_secs".to_string(), r.decode_secs),
                    ("policy_secs".to_string(), r.policy_secs),
                    ("batch_rows".to_string(), rows.len() as f64),
                ]);
                tracing::debug!(item = %item_id, score = r.score, kept = r.kept_fraction, prediction = %r.prediction, "prompt done");
                Ok(ItemResult {
                    item_id: item_id.to_string(),
                    score: r.score,
                    extra,
                })
            })
            .collect()
    }

    /// The cached preparation of a prompt, made on first use. Prefixes are prefilled with the
    /// attention taps a NAMM needs, whatever policy asks first, so every later candidate can
    /// share them.
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
