//! Turns task samples and memory policies into scored results: the one place that renders a
//! sample's prompt with the chat template, tokenizes it as the model expects, generates
//! greedily under each policy, decodes, scores, and measures the cache. `namm eval` and the
//! workers' (candidate, shard) work units both run through [`Evaluator`].
//!
//! Several policies on one prompt share its beginning: before T first reaches 512 no policy
//! has run, so the cache is the same for all of them. That prefix is prefilled once and the
//! session forked for each policy ([`EvalOptions::prefix_reuse`]).

mod error;
mod results;

use std::path::Path;
use std::time::Instant;

use candle_core::quantized::gguf_file::Value;
use candle_core::Device;

pub use error::{EvalError, Result};
pub use results::{PolicyEvaluation, PrefixReuse, SampleResult, TaskEvaluation};

use crate::engine::{
    AnswerScore, BatchRow, Engine, Generation, Session, StopReason, CHUNK, POLICY_PERIOD,
};
use crate::model::{Model, ModelSource, WeightFormat};
use crate::policy::{MemoryPolicy, PolicyInputs};
use crate::tasks::{Sample, Task};
use crate::tokenizer::{read_gguf_content, Tokenizer};

const ADD_BOS_KEY: &str = "tokenizer.ggml.add_bos_token";

/// How an evaluation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalOptions {
    /// Prefill the part of each prompt that is the same for every policy once and fork it
    /// (only where more than one policy runs). The results are identical either way.
    pub prefix_reuse: bool,
    /// Policies of one sample run as rows of one batch, this many at a time (1: one after
    /// another). The results are identical either way.
    pub batch: usize,
    /// Also teacher-force each sample's gold answer under every policy and record its mean
    /// log-probability per token (the likelihood fitness's measure), one more pass per policy.
    pub answer_likelihood: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            prefix_reuse: true,
            batch: 1,
            answer_likelihood: false,
        }
    }
}

/// A model and its tokenizer, loaded once for any number of samples and policies.
#[derive(Debug)]
pub struct Evaluator {
    model: Model,
    tokenizer: Tokenizer,
    add_bos: bool,
}

impl Evaluator {
    /// Loads the GGUF file at `path` onto `device`: the model in `format`, its tokenizer and
    /// whether prompts start with BOS.
    pub fn load(path: &Path, device: &Device, format: WeightFormat) -> Result<Self> {
        Self::load_source(&ModelSource::File(path.to_path_buf()), device, format)
    }

    /// [`Evaluator::load`] for any model source, a synthesised `random:SHAPE` one included.
    pub fn load_source(
        source: &ModelSource,
        device: &Device,
        format: WeightFormat,
    ) -> Result<Self> {
        let path = source.label();
        let model_err = |source| EvalError::Model {
            path: path.clone(),
            source: Box::new(source),
        };
        match source {
            ModelSource::File(file) => {
                if file.is_dir() {
                    return Err(EvalError::ModelIsDirectory { path });
                }
                if !file.is_file() {
                    return Err(EvalError::ModelMissing { path });
                }
                // Checks the header against the file length: a truncated download is named
                // here, before any tensor is read.
                let content = read_gguf_content(file).map_err(|source| EvalError::ModelFile {
                    path: path.clone(),
                    source,
                })?;
                let (tokenizer, add_bos) = tokenizer_of(&path, &content)?;
                let model = Model::load(file, device, format).map_err(model_err)?;
                Ok(Self::new(model, tokenizer, add_bos))
            }
            ModelSource::Random(_) => {
                let (content, reader) = source.open().map_err(model_err)?;
                let (tokenizer, add_bos) = tokenizer_of(&path, &content)?;
                let model =
                    Model::from_gguf(&path, content, reader, device, format).map_err(model_err)?;
                Ok(Self::new(model, tokenizer, add_bos))
            }
        }
    }

    pub fn new(model: Model, tokenizer: Tokenizer, add_bos: bool) -> Self {
        Self {
            model,
            tokenizer,
            add_bos,
        }
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Whether prompts get a BOS token in front.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// The samples of `task` at `indices`, built with this model's tokenizer and template.
    pub fn samples_at(
        &self,
        task: &Task,
        seed: u64,
        indices: impl IntoIterator<Item = u64>,
    ) -> Result<Vec<Sample>> {
        let template = |user: &str| self.tokenizer.chat_prompt(user);
        indices
            .into_iter()
            .map(|index| {
                task.sample(seed, index, &self.tokenizer, &template)
                    .map_err(|source| EvalError::Task {
                        task: task.spec().to_string(),
                        index,
                        source: Box::new(source),
                    })
            })
            .collect()
    }

    /// The first `count` samples of `task` (all of them if a LongBench file has fewer).
    pub fn samples(&self, task: &Task, seed: u64, count: usize) -> Result<Vec<Sample>> {
        let count = task.len().map_or(count, |len| len.min(count));
        self.samples_at(task, seed, 0..count as u64)
    }

    /// The text fed to the model for `sample`.
    pub fn prompt_text(&self, sample: &Sample) -> String {
        sample.prompt(&|user: &str| self.tokenizer.chat_prompt(user))
    }

    /// Token ids of `text` as the model expects them: control tokens of the template parsed
    /// to their ids, BOS in front if the GGUF asks for it.
    pub fn prompt_ids(&self, sample_id: &str, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if self.add_bos {
            ids.extend(self.tokenizer.bos_id());
        }
        let encoded = self
            .tokenizer
            .encode(text, true)
            .map_err(|source| EvalError::Encode {
                sample: sample_id.to_string(),
                source,
            })?;
        ids.extend(encoded);
        if ids.is_empty() {
            return Err(EvalError::EmptyPrompt {
                sample: sample_id.to_string(),
            });
        }
        let context = self.model.config().context_length;
        if ids.len() > context {
            return Err(EvalError::PromptTooLong {
                sample: sample_id.to_string(),
                tokens: ids.len(),
                context,
            });
        }
        Ok(ids)
    }

    /// Every policy on every sample of one task; `on_result` sees each generation as it ends.
    pub fn evaluate(
        &self,
        task: &str,
        samples: &[Sample],
        policies: &mut [Box<dyn MemoryPolicy>],
        opts: &EvalOptions,
        on_result: &mut dyn FnMut(&SampleResult),
    ) -> Result<TaskEvaluation> {
        if policies.is_empty() {
            return Err(EvalError::NoPolicies);
        }
        let mut per_policy: Vec<Vec<SampleResult>> = vec![Vec::new(); policies.len()];
        let mut prefix_reuse = PrefixReuse::default();
        for sample in samples {
            let (results, reuse) = self.evaluate_sample(sample, policies, opts, on_result)?;
            prefix_reuse.add(&reuse);
            for (acc, result) in per_policy.iter_mut().zip(results) {
                acc.push(result);
            }
        }
        let policies = policies
            .iter()
            .zip(per_policy)
            .map(|(p, results)| PolicyEvaluation::from_results(task.to_string(), p.name(), results))
            .collect();
        Ok(TaskEvaluation {
            task: task.to_string(),
            policies,
            prefix_reuse,
        })
    }

    /// One sample under every policy, in order; the shared prefix is prefilled once when
    /// `opts.prefix_reuse` is set and more than one policy runs.
    pub fn evaluate_sample(
        &self,
        sample: &Sample,
        policies: &mut [Box<dyn MemoryPolicy>],
        opts: &EvalOptions,
        on_result: &mut dyn FnMut(&SampleResult),
    ) -> Result<(Vec<SampleResult>, PrefixReuse)> {
        let share = (opts.prefix_reuse && policies.len() > 1).then(|| {
            policies
                .iter()
                .fold(PolicyInputs::default(), |acc, p| acc.union(p.inputs()))
        });
        let prepared = self.prepare(sample.clone(), share)?;
        let mut reuse = PrefixReuse::default();
        if prepared.prefix.is_some() {
            reuse.samples = 1;
            reuse.prefix_tokens = prepared.prefix_len;
            reuse.prefix_secs = prepared.prefix_secs;
        }
        let mut results = Vec::with_capacity(policies.len());
        for group in policies.chunks_mut(opts.batch.max(1)) {
            let rows = group
                .iter_mut()
                .map(|p| (&prepared, p.as_mut() as &mut dyn MemoryPolicy))
                .collect();
            let (batch, fork_secs) = self.run_batch(rows)?;
            reuse.fork_secs += fork_secs;
            for (mut result, policy) in batch.into_iter().zip(group.iter_mut()) {
                if opts.answer_likelihood {
                    let answer = self.score_answer(&prepared, policy.as_mut())?;
                    result.answer_logprob = Some(answer.mean_logprob());
                }
                on_result(&result);
                results.push(result);
            }
        }
        if prepared.prefix.is_some() {
            reuse.saved_secs = (policies.len() - 1) as f64 * reuse.prefix_secs - reuse.fork_secs;
        }
        Ok((results, reuse))
    }

    /// Renders and tokenizes `sample` and, when `share` names the inputs the policies to come
    /// need, prefills the part of the prompt every policy processes identically, so each run
    /// of [`Evaluator::run_prepared`] forks it instead of computing it again.
    pub fn prepare(&self, sample: Sample, share: Option<PolicyInputs>) -> Result<Prepared<'_>> {
        let prompt = self.prompt_text(&sample);
        let ids = self.prompt_ids(&sample.id, &prompt)?;
        let prefix_len = if share.is_some() {
            shared_prefix_len(ids.len())
        } else {
            0
        };
        let mut prefix = None;
        let mut prefix_secs = 0.0;
        if let (Some(inputs), true) = (share, prefix_len > 0) {
            let prefix_err = |source| EvalError::Prefix {
                sample: sample.id.clone(),
                tokens: prefix_len,
                source: Box::new(source),
            };
            let start = Instant::now();
            let mut session = Session::new(&self.model, inputs).map_err(prefix_err)?;
            session
                .feed_prefix(&ids[..prefix_len])
                .map_err(prefix_err)?;
            prefix_secs = start.elapsed().as_secs_f64();
            prefix = Some(session);
        }
        Ok(Prepared {
            sample,
            prompt,
            ids,
            prefix_len: if prefix.is_some() { prefix_len } else { 0 },
            prefix,
            prefix_secs,
        })
    }

    /// Token ids of the first gold answer as the model would write it right after the
    /// prompt: a space in front when the prompt ends in a word ("The pass key is" → " 71432").
    pub fn answer_ids(&self, prepared: &Prepared<'_>) -> Result<Vec<u32>> {
        let sample = &prepared.sample;
        let answer = sample
            .answers
            .first()
            .filter(|a| !a.trim().is_empty())
            .ok_or_else(|| EvalError::NoAnswer {
                sample: sample.id.clone(),
            })?;
        let ends_in_word = prepared
            .prompt
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || c == ':' || c == '.' || c == ',');
        let text = if ends_in_word {
            format!(" {}", answer.trim())
        } else {
            answer.trim().to_string()
        };
        self.tokenizer
            .encode(&text, false)
            .map_err(|source| EvalError::Encode {
                sample: sample.id.clone(),
                source,
            })
    }

    /// How likely the model finds the first gold answer after a prepared sample's prompt under
    /// `policy` (teacher-forced, nothing decoded; see [`Engine::score_answer`]).
    pub fn score_answer(
        &self,
        prepared: &Prepared<'_>,
        policy: &mut dyn MemoryPolicy,
    ) -> Result<AnswerScore> {
        let answer = self.answer_ids(prepared)?;
        if answer.is_empty() {
            return Err(EvalError::NoAnswer {
                sample: prepared.sample.id.clone(),
            });
        }
        let name = policy.name();
        Engine::new(&self.model)
            .score_answer(
                prepared.prefix.as_ref(),
                &prepared.ids[prepared.prefix_len..],
                &answer,
                policy,
            )
            .map_err(|source| EvalError::ScoreAnswer {
                sample: prepared.sample.id.clone(),
                policy: name,
                source: Box::new(source),
            })
    }

    /// Generates the answer to a prepared sample under `policy` and scores it. Also returns
    /// the seconds spent forking the shared prefix (0 without one).
    pub fn run_prepared(
        &self,
        prepared: &Prepared<'_>,
        policy: &mut dyn MemoryPolicy,
    ) -> Result<(SampleResult, f64)> {
        let (mut results, fork_secs) = self.run_batch(vec![(prepared, policy)])?;
        Ok((results.remove(0), fork_secs))
    }

    /// [`Evaluator::run_prepared`] for several (sample, policy) rows as one batch (see
    /// [`Engine::generate_batch`]): the same results, rows in order. Also returns the seconds
    /// spent forking shared prefixes.
    pub fn run_batch(
        &self,
        rows: Vec<(&Prepared<'_>, &mut dyn MemoryPolicy)>,
    ) -> Result<(Vec<SampleResult>, f64)> {
        let engine = Engine::new(&self.model);
        let names: Vec<String> = rows.iter().map(|(_, p)| p.name()).collect();
        let prepared: Vec<&Prepared<'_>> = rows.iter().map(|(p, _)| *p).collect();
        let start = Instant::now();
        let batch = rows
            .into_iter()
            .map(|(p, policy)| BatchRow {
                prefix: p.prefix.as_ref(),
                rest: &p.ids[p.prefix_len..],
                policy,
                max_new_tokens: p.sample.max_new_tokens,
            })
            .collect();
        let generations = engine
            .generate_batch(batch, self.tokenizer.stop_ids())
            .map_err(|source| EvalError::Generate {
                sample: join(prepared.iter().map(|p| p.sample.id.as_str())),
                policy: join(names.iter().map(String::as_str)),
                source: Box::new(source),
            })?;
        let mut fork_secs = 0.0;
        if prepared.iter().any(|p| p.prefix.is_some()) {
            let model_secs: f64 = generations
                .iter()
                .map(|g| g.stats.prefill_secs + g.stats.decode_secs)
                .sum();
            fork_secs = (start.elapsed().as_secs_f64() - model_secs).max(0.0);
        }
        let results = prepared
            .iter()
            .zip(names)
            .zip(&generations)
            .map(|((p, name), g)| self.result(&p.sample, &p.prompt, name, g, p.prefix_secs))
            .collect::<Result<Vec<_>>>()?;
        Ok((results, fork_secs))
    }

    fn result(
        &self,
        sample: &Sample,
        prompt: &str,
        policy: String,
        generation: &Generation,
        prefix_secs: f64,
    ) -> Result<SampleResult> {
        let mut tokens = generation.tokens.as_slice();
        if let StopReason::StopToken(_) = generation.stop_reason {
            tokens = &tokens[..tokens.len() - 1];
        }
        let prediction =
            self.tokenizer
                .decode(tokens, true)
                .map_err(|source| EvalError::Decode {
                    sample: sample.id.clone(),
                    policy: policy.clone(),
                    source,
                })?;
        let s = &generation.stats;
        let prefill_secs = s.prefill_secs + prefix_secs;
        Ok(SampleResult {
            policy,
            index: sample.index,
            id: sample.id.clone(),
            prompt: prompt.to_string(),
            answers: sample.answers.clone(),
            score: sample.score(&prediction),
            prediction,
            kept_fraction: s.mean_kept_fraction,
            kept_after_invocations: s
                .invocations
                .iter()
                .map(|inv| {
                    let kept: usize = inv.kept_per_layer.iter().sum();
                    kept as f64 / (inv.kept_per_layer.len() * inv.tokens_seen) as f64
                })
                .collect(),
            prompt_tokens: s.prompt_tokens,
            generated_tokens: s.generated_tokens,
            tokens_seen: s.tokens_seen,
            peak_kv_bytes: s.peak_kv_bytes,
            prefill_tokens_per_sec: results::rate(s.prompt_tokens, prefill_secs),
            decode_tokens_per_sec: s.decode_tokens_per_sec(),
            stop_reason: match generation.stop_reason {
                StopReason::StopToken(id) => format!("stop token {id}"),
                StopReason::MaxTokens => "max tokens".into(),
                StopReason::ContextFull => "context full".into(),
            },
            prefill_secs,
            decode_secs: s.decode_secs,
            policy_secs: s.policy_secs,
            decode_steps: s.decode_steps,
            answer_logprob: None,
        })
    }
}

/// Distinct values joined with commas, for errors that concern a whole batch.
fn join<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for i in items {
        if !seen.contains(&i) {
            seen.push(i);
        }
    }
    seen.join(", ")
}

/// The tokenizer in a GGUF header and whether prompts start with BOS
/// (`tokenizer.ggml.add_bos_token`, absent meaning no, as llama.cpp decides for byte-level BPE
/// vocabularies; SmolLM2 says false, its ChatML prompts open with `<|im_start|>` instead).
fn tokenizer_of(
    path: &Path,
    content: &candle_core::quantized::gguf_file::Content,
) -> Result<(Tokenizer, bool)> {
    let tokenizer = Tokenizer::from_gguf(content).map_err(|source| EvalError::Tokenizer {
        path: path.to_path_buf(),
        source,
    })?;
    let add_bos = match content.metadata.get(ADD_BOS_KEY) {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(EvalError::BadMetadata {
                path: path.to_path_buf(),
                key: ADD_BOS_KEY,
                found: format!("{other:?}"),
            })
        }
    };
    Ok((tokenizer, add_bos))
}

/// A sample ready to run: its rendered prompt, token ids and, optionally, the prefilled
/// prefix that every policy shares.
pub struct Prepared<'m> {
    pub sample: Sample,
    pub prompt: String,
    pub ids: Vec<u32>,
    prefix_len: usize,
    prefix: Option<Session<'m>>,
    prefix_secs: f64,
}

impl Prepared<'_> {
    /// Prompt tokens prefilled once for all policies (0 without a shared prefix).
    pub fn prefix_len(&self) -> usize {
        self.prefix_len
    }

    /// Seconds the shared prefix took to prefill (0 without one).
    pub fn prefix_secs(&self) -> f64 {
        self.prefix_secs
    }
}

/// Tokens of a `len`-token prompt that every policy processes identically: whole 128-token
/// chunks (so the chunking, and with it every number, is that of an unshared prefill) that end
/// before the first invocation at T = 512 and leave at least one token for each policy to feed.
pub fn shared_prefix_len(len: usize) -> usize {
    let below_invocation = (POLICY_PERIOD - 1) / CHUNK * CHUNK;
    (len.saturating_sub(1) / CHUNK * CHUNK).min(below_invocation)
}

/// A device from `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(spec: &str) -> Result<Device> {
    let bad = |reason: String| EvalError::Device {
        spec: spec.to_string(),
        reason,
    };
    match spec.trim() {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).map_err(|e| bad(e.to_string())),
        other => {
            let ordinal = other
                .strip_prefix("cuda:")
                .ok_or_else(|| bad("expected cpu, cuda or cuda:N".into()))?;
            let ordinal: usize = ordinal
                .parse()
                .map_err(|_| bad(format!("`{ordinal}` is not a GPU index")))?;
            Device::new_cuda(ordinal).map_err(|e| bad(e.to_string()))
        }
    }
}
