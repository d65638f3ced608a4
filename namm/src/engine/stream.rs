//! Generation one step at a time, for callers that show tokens as they come (`namm generate`)
//! or admit and drop sequences between steps (`namm serve`): a [`Stream`] is one sequence with
//! its own cache, policy and sampler; [`step`] advances several as rows of one batch.

use std::time::Instant;

use super::sampling::{Sampler, Sampling};
use super::{Result, Session, StopReason};
use crate::model::Model;
use crate::policy::MemoryPolicy;

/// One sequence: its prompt fed in slices, then one sampled token per step.
pub struct Stream<'m> {
    session: Session<'m>,
    policy: Box<dyn MemoryPolicy>,
    sampler: Sampler,
    prompt: Vec<u32>,
    fed: usize,
    /// The token sampled at the previous step, fed at the next one.
    last: Option<u32>,
    generated: usize,
    max_new_tokens: usize,
    stop_tokens: Vec<u32>,
    stopped: Option<StopReason>,
    prefill_secs: f64,
    decode_secs: f64,
}

/// What one step did to a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// The token sampled at this step (none while the prompt is still being fed).
    pub token: Option<u32>,
    /// Set on the step that ends the stream; `token` is then its last token.
    pub stopped: Option<StopReason>,
}

/// Where a stream's cache stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Mean over layers of the cached tokens over the tokens seen (1.0: the full cache).
    pub kept_fraction: f64,
    /// Largest size the live K and V entries reached (f32, all layers).
    pub peak_kv_bytes: usize,
    /// What a full cache holds for the tokens seen.
    pub full_kv_bytes: usize,
    pub prefill_secs: f64,
    pub decode_secs: f64,
}

impl StreamStats {
    pub fn prefill_tokens_per_sec(&self) -> f64 {
        per_sec(self.prompt_tokens, self.prefill_secs)
    }

    pub fn decode_tokens_per_sec(&self) -> f64 {
        per_sec(self.generated_tokens.saturating_sub(1), self.decode_secs)
    }
}

fn per_sec(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

impl<'m> Stream<'m> {
    /// A stream of at most `max_new_tokens` tokens after `prompt` (not empty), ending early
    /// after any of `stop_tokens`.
    pub fn new(
        model: &'m Model,
        prompt: Vec<u32>,
        mut policy: Box<dyn MemoryPolicy>,
        sampling: Sampling,
        max_new_tokens: usize,
        stop_tokens: Vec<u32>,
    ) -> Result<Self> {
        if prompt.is_empty() {
            return Err(super::EngineError::EmptyInput);
        }
        policy.reset();
        Ok(Self {
            session: Session::new(model, policy.inputs())?,
            policy,
            sampler: Sampler::new(sampling),
            prompt,
            fed: 0,
            last: None,
            generated: 0,
            max_new_tokens: max_new_tokens.max(1),
            stop_tokens,
            stopped: None,
            prefill_secs: 0.0,
            decode_secs: 0.0,
        })
    }

    pub fn stopped(&self) -> Option<StopReason> {
        self.stopped
    }

    pub fn prefilling(&self) -> bool {
        self.fed < self.prompt.len()
    }

    pub fn policy_name(&self) -> String {
        self.policy.name()
    }

    pub fn stats(&self) -> StreamStats {
        let model = self.session.model();
        let cfg = model.config();
        let seen = self.session.tokens_seen().max(1);
        StreamStats {
            prompt_tokens: self.prompt.len(),
            generated_tokens: self.generated,
            kept_fraction: super::mean_fraction(&self.session.kept_per_layer(), seen),
            peak_kv_bytes: self.session.peak_kv_bytes(),
            full_kv_bytes: seen * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 2 * 4,
            prefill_secs: self.prefill_secs,
            decode_secs: self.decode_secs,
        }
    }

    /// The tokens this step feeds: the next slice of at most `slice` prompt tokens, or the
    /// token sampled last.
    fn input(&self, slice: usize) -> Vec<u32> {
        if self.prefilling() {
            let end = (self.fed + slice.max(1)).min(self.prompt.len());
            self.prompt[self.fed..end].to_vec()
        } else {
            self.last.into_iter().collect()
        }
    }

    /// Takes this step's logits; samples the next token once the prompt is in.
    fn advance(&mut self, fed: usize, logits: &[f32], secs: f64) -> Step {
        let prefilling = self.prefilling();
        if prefilling {
            self.fed += fed;
            self.prefill_secs += secs;
        } else {
            self.decode_secs += secs;
        }
        if self.prefilling() {
            return Step {
                token: None,
                stopped: None,
            };
        }
        let token = self.sampler.next(logits);
        self.generated += 1;
        let context = self.session.model().config().context_length;
        self.stopped = if self.stop_tokens.contains(&token) {
            Some(StopReason::StopToken(token))
        } else if self.generated >= self.max_new_tokens {
            Some(StopReason::MaxTokens)
        } else if self.session.tokens_seen() >= context {
            Some(StopReason::ContextFull)
        } else {
            None
        };
        self.last = Some(token);
        Step {
            token: Some(token),
            stopped: self.stopped,
        }
    }
}

/// Advances every stream that has not stopped by one step, as rows of one batch: a stream
/// still reading its prompt takes its next `slice` prompt tokens, the others their last
/// sampled token. Each row's tokens are those it gets stepped alone. One entry per stream
/// (a stopped one gets an empty step). The step's wall time is shared out over its rows.
pub fn step(streams: &mut [&mut Stream<'_>], slice: usize) -> Result<Vec<Step>> {
    let live: Vec<usize> = (0..streams.len())
        .filter(|&i| streams[i].stopped.is_none())
        .collect();
    let mut steps = vec![
        Step {
            token: None,
            stopped: None
        };
        streams.len()
    ];
    if live.is_empty() {
        return Ok(steps);
    }
    let inputs: Vec<Vec<u32>> = live.iter().map(|&i| streams[i].input(slice)).collect();
    let started = Instant::now();
    let logits = {
        let mut rows: Vec<&mut Stream<'_>> = Vec::with_capacity(live.len());
        for (i, s) in streams.iter_mut().enumerate() {
            if live.contains(&i) {
                rows.push(&mut **s);
            }
        }
        let (mut sessions, mut policies): (Vec<&mut Session<'_>>, Vec<&mut dyn MemoryPolicy>) =
            rows.into_iter()
                .map(|s| (&mut s.session, &mut *s.policy as &mut dyn MemoryPolicy))
                .unzip();
        let ids: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
        Session::feed_batch(&mut sessions, &ids, &mut policies)?
    };
    let share = started.elapsed().as_secs_f64() / live.len() as f64;
    for ((&i, input), logits) in live.iter().zip(&inputs).zip(&logits) {
        steps[i] = streams[i].advance(input.len(), logits, share);
    }
    Ok(steps)
}
