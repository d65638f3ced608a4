//! The evaluation engine (spec §2, §7): chunked prefill, greedy decoding, and a per-layer KV
//! cache in which every KV head keeps its own tokens, pruned by a [`MemoryPolicy`] every 512
//! absolute tokens.

mod cache;
mod decode;
mod sampling;
mod session;
pub(crate) mod softmax;
mod stats;
mod stream;

use std::time::Instant;

pub use sampling::{Sampler, Sampling};
pub use session::Session;
pub use stats::{GenerationStats, InvocationStats};
pub use stream::{step, Step, Stream, StreamStats};

use crate::model::{Model, ModelError};
use crate::policy::MemoryPolicy;

/// Prefill chunk size; chunk boundaries are the absolute positions that are multiples of it.
pub const CHUNK: usize = 128;
/// The policy runs whenever the absolute token count T is a multiple of this.
pub const POLICY_PERIOD: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("no tokens to feed: the prompt is empty")]
    EmptyInput,
    #[error("policy {policy} at layer {layer} returned an invalid selection: {reason}")]
    BadSelection {
        policy: String,
        layer: usize,
        reason: String,
    },
    #[error("policy {policy} needs attention, but the session was created without recording it")]
    AttentionNotRecorded { policy: String },
    #[error(
        "policy {policy} needs every token's surprisal, but the session was created without \
         recording it or has fed tokens without it"
    )]
    SurprisalNotRecorded { policy: String },
    #[error("a batch needs one token list and one policy per session: {reason}")]
    BatchShape { reason: String },
    #[error(
        "a shared prefix of {len} tokens after T = {tokens_seen} reaches a policy invocation \
         (multiple of 512); feed it with a policy instead"
    )]
    PrefixReachesInvocation { tokens_seen: usize, len: usize },
}

pub type Result<T> = std::result::Result<T, EngineError>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateOptions {
    /// Most tokens to generate (a stop token included).
    pub max_new_tokens: usize,
    /// Generation stops after producing any of these (EOS, `<|im_end|>`).
    pub stop_tokens: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Produced this stop token (it is the last entry of [`Generation::tokens`]).
    StopToken(u32),
    /// Produced `max_new_tokens` tokens.
    MaxTokens,
    /// The next token would not fit the model's context length.
    ContextFull,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Generated token ids, a final stop token included.
    pub tokens: Vec<u32>,
    pub stop_reason: StopReason,
    pub stats: GenerationStats,
}

/// One row of a batch: a sequence that continues `prefix` (a fork of it; `None`: an empty
/// cache) with `rest` under its own `policy`, generating at most `max_new_tokens`.
pub struct BatchRow<'a, 'm> {
    pub prefix: Option<&'a Session<'m>>,
    pub rest: &'a [u32],
    pub policy: &'a mut dyn MemoryPolicy,
    pub max_new_tokens: usize,
}

/// How likely a sequence under a policy finds a given answer after its prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerScore {
    /// Σ log p(answer_t | prompt, answer_<t), natural log.
    pub logprob: f64,
    /// Answer tokens scored.
    pub tokens: usize,
    /// The cache accounting of the pass (no token is generated: `generated_tokens` is 0).
    pub stats: GenerationStats,
}

impl AnswerScore {
    /// Mean log-probability per answer token.
    pub fn mean_logprob(&self) -> f64 {
        self.logprob / self.tokens.max(1) as f64
    }
}

/// Runs greedy generations on one model, one sequence at a time or several as rows of one
/// batch.
#[derive(Debug, Clone, Copy)]
pub struct Engine<'m> {
    model: &'m Model,
}

impl<'m> Engine<'m> {
    pub fn new(model: &'m Model) -> Self {
        Self { model }
    }

    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// Greedy generation from `prompt` with a fresh cache; `policy` is reset first.
    pub fn generate(
        &self,
        prompt: &[u32],
        policy: &mut dyn MemoryPolicy,
        opts: &GenerateOptions,
    ) -> Result<Generation> {
        let row = BatchRow {
            prefix: None,
            rest: prompt,
            policy,
            max_new_tokens: opts.max_new_tokens,
        };
        Ok(self.generate_batch(vec![row], &opts.stop_tokens)?.remove(0))
    }

    /// Greedy generation continuing a shared prefix (fed with [`Session::feed_prefix`]) with
    /// `rest` of the prompt; the prefix stays untouched for the next candidate.
    pub fn generate_from(
        &self,
        prefix: &Session<'m>,
        rest: &[u32],
        policy: &mut dyn MemoryPolicy,
        opts: &GenerateOptions,
    ) -> Result<Generation> {
        let row = BatchRow {
            prefix: Some(prefix),
            rest,
            policy,
            max_new_tokens: opts.max_new_tokens,
        };
        Ok(self.generate_batch(vec![row], &opts.stop_tokens)?.remove(0))
    }

    /// Teacher-forces `answer` after `rest` (continuing a fork of `prefix`, or an empty cache)
    /// under `policy` and sums the log-probabilities the model gives its tokens. The answer
    /// goes in token by token, as a decoding loop would feed it, so the policy's invocations
    /// and every logit are those of a generation that produced exactly this answer.
    pub fn score_answer(
        &self,
        prefix: Option<&Session<'m>>,
        rest: &[u32],
        answer: &[u32],
        policy: &mut dyn MemoryPolicy,
    ) -> Result<AnswerScore> {
        if answer.is_empty() {
            return Err(EngineError::EmptyInput);
        }
        policy.reset();
        let mut session = match prefix {
            Some(p) => p.fork()?,
            None => Session::new(self.model, policy.inputs())?,
        };
        let policy_secs0 = session.policy_secs();
        let start = Instant::now();
        let mut logits = session.feed(rest, policy)?;
        let prefill_secs = start.elapsed().as_secs_f64();
        let prompt_tokens = session.tokens_seen();
        let decode = Instant::now();
        let mut logprob = 0.0;
        for (i, &token) in answer.iter().enumerate() {
            logprob += log_softmax_at(&logits, token);
            if i + 1 < answer.len() {
                logits = session.feed(&[token], policy)?;
            }
        }
        let kept_per_layer = session.kept_per_layer();
        let seen = session.tokens_seen();
        let stats = GenerationStats {
            prompt_tokens,
            generated_tokens: 0,
            tokens_seen: seen,
            invocations: session.invocations().to_vec(),
            mean_kept_fraction: mean_fraction(&kept_per_layer, seen),
            kept_per_layer,
            peak_kv_bytes: session.peak_kv_bytes(),
            prefill_tokens: rest.len(),
            prefill_secs,
            decode_steps: answer.len() - 1,
            decode_secs: decode.elapsed().as_secs_f64(),
            policy_secs: session.policy_secs() - policy_secs0,
        };
        Ok(AnswerScore {
            logprob,
            tokens: answer.len(),
            stats,
        })
    }

    /// Greedy generations of every row as one batch: each step feeds every unfinished row's
    /// next chunk (or token) through the model at once. Every row keeps its own cache and
    /// policy, so its generation is the one it gets alone; its timings are its share of the
    /// batch's (the step's wall time over the rows in it). Policies are reset first; every
    /// row stops after producing one of `stop_tokens`.
    pub fn generate_batch(
        &self,
        rows: Vec<BatchRow<'_, 'm>>,
        stop_tokens: &[u32],
    ) -> Result<Vec<Generation>> {
        let mut sessions = Vec::with_capacity(rows.len());
        let mut rests = Vec::with_capacity(rows.len());
        let mut policies = Vec::with_capacity(rows.len());
        let mut limits = Vec::with_capacity(rows.len());
        for row in rows {
            limits.push(row.max_new_tokens);
            row.policy.reset();
            sessions.push(match row.prefix {
                Some(p) => p.fork()?,
                None => Session::new(self.model, row.policy.inputs())?,
            });
            rests.push(row.rest);
            policies.push(row.policy);
        }
        run(sessions, &rests, &mut policies, &limits, stop_tokens)
    }
}

fn run(
    mut sessions: Vec<Session<'_>>,
    rests: &[&[u32]],
    policies: &mut [&mut dyn MemoryPolicy],
    max_new_tokens: &[usize],
    stop_tokens: &[u32],
) -> Result<Vec<Generation>> {
    let n = sessions.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    let policy_secs0: Vec<f64> = sessions.iter().map(Session::policy_secs).collect();
    let start = Instant::now();
    let mut logits = feed_some(&mut sessions, rests, policies, &(0..n).collect::<Vec<_>>())?;
    let prefill_secs = start.elapsed().as_secs_f64() / n as f64;
    let prompt_tokens: Vec<usize> = sessions.iter().map(Session::tokens_seen).collect();
    let context = sessions[0].model().config().context_length;

    let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut stops: Vec<Option<StopReason>> = vec![None; n];
    let mut decode_secs = vec![0.0; n];
    let mut decode_steps = vec![0; n];
    loop {
        let mut feeding = Vec::new();
        for i in 0..n {
            if stops[i].is_some() {
                continue;
            }
            let next = argmax(&logits[i]);
            tokens[i].push(next);
            stops[i] = if stop_tokens.contains(&next) {
                Some(StopReason::StopToken(next))
            } else if tokens[i].len() >= max_new_tokens[i] {
                Some(StopReason::MaxTokens)
            } else if sessions[i].tokens_seen() >= context {
                Some(StopReason::ContextFull)
            } else {
                feeding.push(i);
                None
            };
        }
        if feeding.is_empty() {
            break;
        }
        let step = Instant::now();
        let next: Vec<[u32; 1]> = feeding
            .iter()
            .map(|&i| [tokens[i][tokens[i].len() - 1]])
            .collect();
        let next: Vec<&[u32]> = next.iter().map(|t| t.as_slice()).collect();
        let out = feed_some(&mut sessions, &next, policies, &feeding)?;
        let share = step.elapsed().as_secs_f64() / feeding.len() as f64;
        for (i, l) in feeding.into_iter().zip(out) {
            logits[i] = l;
            decode_secs[i] += share;
            decode_steps[i] += 1;
        }
    }

    let mut out = Vec::with_capacity(n);
    for (i, session) in sessions.iter().enumerate() {
        let kept_per_layer = session.kept_per_layer();
        let seen = session.tokens_seen();
        let mean_kept_fraction = mean_fraction(&kept_per_layer, seen);
        let stats = GenerationStats {
            prompt_tokens: prompt_tokens[i],
            generated_tokens: tokens[i].len(),
            tokens_seen: seen,
            invocations: session.invocations().to_vec(),
            kept_per_layer,
            mean_kept_fraction,
            peak_kv_bytes: session.peak_kv_bytes(),
            prefill_tokens: rests[i].len(),
            prefill_secs,
            decode_steps: decode_steps[i],
            decode_secs: decode_secs[i],
            policy_secs: session.policy_secs() - policy_secs0[i],
        };
        out.push(Generation {
            tokens: std::mem::take(&mut tokens[i]),
            stop_reason: stops[i].unwrap_or(StopReason::MaxTokens),
            stats,
        });
    }
    Ok(out)
}

/// Feeds `ids[k]` to session `which[k]` under its policy, all as one batch.
fn feed_some(
    sessions: &mut [Session<'_>],
    ids: &[&[u32]],
    policies: &mut [&mut dyn MemoryPolicy],
    which: &[usize],
) -> Result<Vec<Vec<f32>>> {
    let mut rows: Vec<&mut Session<'_>> = sessions
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| which.contains(i))
        .map(|(_, s)| s)
        .collect();
    let mut pols: Vec<Option<&mut dyn MemoryPolicy>> = policies
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| which.contains(i))
        .map(|(_, p)| Some(&mut **p as &mut dyn MemoryPolicy))
        .collect();
    session::feed_rows(&mut rows, ids, &mut pols)
}

/// Mean over layers of the kept tokens over the tokens seen.
fn mean_fraction(kept_per_layer: &[usize], seen: usize) -> f64 {
    kept_per_layer
        .iter()
        .map(|&k| k as f64 / seen as f64)
        .sum::<f64>()
        / kept_per_layer.len() as f64
}

/// log softmax(logits)[token], computed in f64 around the largest logit; NaN for a token
/// outside the vocabulary.
pub fn log_softmax_at(logits: &[f32], token: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    logits
        .get(token as usize)
        .map_or(f64::NAN, |&v| v as f64 - max - sum.ln())
}

/// Index of the largest logit; the first one on ties.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}
