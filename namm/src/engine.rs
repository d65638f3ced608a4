//! The evaluation engine (spec §2, §7): chunked prefill, greedy decoding, and a per-layer KV
//! cache in which every KV head keeps its own tokens, pruned by a [`MemoryPolicy`] every 512
//! absolute tokens.

mod cache;
mod decode;
mod session;
mod softmax;
mod stats;

use std::time::Instant;

pub use session::Session;
pub use stats::{GenerationStats, InvocationStats};

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

/// Runs generations on one model, one sequence at a time.
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
        policy.reset();
        let session = Session::new(self.model, policy.inputs())?;
        run(session, prompt, policy, opts)
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
        policy.reset();
        run(prefix.fork()?, rest, policy, opts)
    }
}

fn run(
    mut session: Session<'_>,
    rest: &[u32],
    policy: &mut dyn MemoryPolicy,
    opts: &GenerateOptions,
) -> Result<Generation> {
    let policy_secs0 = session.policy_secs();
    let start = Instant::now();
    let mut logits = session.feed(rest, policy)?;
    let prefill_secs = start.elapsed().as_secs_f64();
    let prompt_tokens = session.tokens_seen();
    let context = session.model().config().context_length;

    let start = Instant::now();
    let mut tokens = Vec::new();
    let mut decode_steps = 0;
    let stop_reason = loop {
        let next = argmax(&logits);
        tokens.push(next);
        if opts.stop_tokens.contains(&next) {
            break StopReason::StopToken(next);
        }
        if tokens.len() >= opts.max_new_tokens {
            break StopReason::MaxTokens;
        }
        if session.tokens_seen() >= context {
            break StopReason::ContextFull;
        }
        logits = session.feed(&[next], policy)?;
        decode_steps += 1;
    };
    let decode_secs = start.elapsed().as_secs_f64();

    let kept_per_layer = session.kept_per_layer();
    let seen = session.tokens_seen();
    let mean_kept_fraction = kept_per_layer
        .iter()
        .map(|&k| k as f64 / seen as f64)
        .sum::<f64>()
        / kept_per_layer.len() as f64;
    let stats = GenerationStats {
        prompt_tokens,
        generated_tokens: tokens.len(),
        tokens_seen: seen,
        invocations: session.invocations().to_vec(),
        kept_per_layer,
        mean_kept_fraction,
        peak_kv_bytes: session.peak_kv_bytes(),
        prefill_tokens: rest.len(),
        prefill_secs,
        decode_steps,
        decode_secs,
        policy_secs: session.policy_secs() - policy_secs0,
    };
    Ok(Generation {
        tokens,
        stop_reason,
        stats,
    })
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
