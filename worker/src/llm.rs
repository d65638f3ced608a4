//! Evaluating NAMM work units on the worker's LLM.
//!
//! A generation's candidates all run on the same prompts, and before the first policy
//! invocation (token 512) their caches are identical. So the worker keeps, per prompt, the
//! generated sample, its token ids and the prefilled shared prefix, and every later candidate
//! forks that prefix instead of computing it again (bounded by `--prompt-cache`, least
//! recently used first out).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use namm::evaluate::{Evaluator, Prepared};
use namm::model::WeightFormat;
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
    path: PathBuf,
    device: String,
    cache: Mutex<PromptCache>,
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
            .field("path", &self.path)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

impl Llm {
    /// Loads the GGUF model at `path` onto `device` (`cpu`, `cuda`, `cuda:N`) and hashes it,
    /// to match run specs to it.
    pub fn load(
        path: &Path,
        device: &str,
        format: WeightFormat,
        prompt_cache: usize,
    ) -> anyhow::Result<Llm> {
        let sha256 = namm::digest::file_sha256(path)
            .with_context(|| format!("--model {}", path.display()))?;
        let dev =
            namm::evaluate::parse_device(device).with_context(|| format!("--device {device}"))?;
        let evaluator = Evaluator::load(path, &dev, format)
            .with_context(|| format!("--model {}", path.display()))?;
        Ok(Llm {
            evaluator: Box::leak(Box::new(evaluator)),
            sha256,
            path: path.to_path_buf(),
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

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The device spec the model runs on, as reported at registration.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Runs every item of a NAMM unit. A unit it cannot run at all (other model, wrong θ
    /// length, bad statistics) is an error; a prompt that fails gets a NaN score flagged with
    /// `extra["error"] = 1`, ranked last by the strategy, and the others still run.
    pub fn evaluate(&self, unit: &WorkUnit, obj: &NammObjective) -> Result<UnitOutcome, String> {
        if obj.model_sha256 != self.sha256 {
            return Err(format!(
                "unit wants model sha256 {} but this worker holds {} ({})",
                obj.model_sha256,
                self.sha256,
                self.path.display()
            ));
        }
        let kind = unit.key.map(|k| k.kind()).unwrap_or_default();
        // Reference units run θ = 0, which keeps every token: the full cache. The first pass
        // has no statistics yet and runs the NAMM to accumulate them; later passes (new tasks
        // of a stage) skip its work.
        let mut namm = match (&obj.norm_stats, kind) {
            (None, UnitKind::Reference) => Some(
                NammPolicy::new(vec![0.0; PARAM_COUNT], NormMode::accumulate())
                    .map_err(|e| e.to_string())?,
            ),
            (Some(_), UnitKind::Reference) => None,
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
                Some(NammPolicy::new(params, NormMode::Frozen(stats)).map_err(|e| e.to_string())?)
            }
        };
        let mut full = FullCache;
        let items = unit
            .item_ids
            .iter()
            .map(|id| {
                let policy: &mut dyn MemoryPolicy = match namm.as_mut() {
                    Some(p) => p,
                    None => &mut full,
                };
                match self.run_item(obj.task_seed, id, policy) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(unit = %unit.unit_id, item = %id, error = %format!("{e:#}"), "prompt failed");
                        ItemResult {
                            item_id: id.clone(),
                            score: f64::NAN,
                            extra: HashMap::from([("error".to_string(), 1.0)]),
                        }
                    }
                }
            })
            .collect();
        let norm_stats = match (&obj.norm_stats, kind, &namm) {
            (None, UnitKind::Reference, Some(p)) => Some(p.norm_stats().clone()),
            _ => None,
        };
        Ok(UnitOutcome { items, norm_stats })
    }

    fn run_item(
        &self,
        task_seed: u64,
        item_id: &str,
        policy: &mut dyn MemoryPolicy,
    ) -> anyhow::Result<ItemResult> {
        let (prepared, cached) = self.prepared(task_seed, item_id)?;
        let (r, _) = self.evaluator.run_prepared(&prepared, policy)?;
        // The model's own compute for this prompt in this unit: a prefix taken from the cache
        // was computed (and counted) by an earlier unit.
        let reused = if cached { prepared.prefix_secs() } else { 0.0 };
        let forward_secs = r.prefill_secs + r.decode_secs - r.policy_secs - reused;
        let extra = HashMap::from([
            ("forward_secs".to_string(), forward_secs),
            ("prefix_cached".to_string(), f64::from(u8::from(cached))),
            (KEPT_FRACTION.to_string(), r.kept_fraction),
            ("prompt_tokens".to_string(), r.prompt_tokens as f64),
            ("generated_tokens".to_string(), r.generated_tokens as f64),
            ("prefill_secs".to_string(), r.prefill_secs),
            ("decode_secs".to_string(), r.decode_secs),
            ("policy_secs".to_string(), r.policy_secs),
        ]);
        tracing::debug!(item = %item_id, score = r.score, kept = r.kept_fraction, prediction = %r.prediction, "prompt done");
        Ok(ItemResult {
            item_id: item_id.to_string(),
            score: r.score,
            extra,
        })
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
