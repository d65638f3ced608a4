//! What an evaluation produces: one [`SampleResult`] per (sample, policy), aggregated into one
//! [`PolicyEvaluation`] per policy, and the accounting of the shared-prefix reuse.

use serde::{Deserialize, Serialize};

const MIB: f64 = 1024.0 * 1024.0;

/// One generation: a sample of a task answered under one policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleResult {
    /// The policy's canonical name (`MemoryPolicy::name`).
    pub policy: String,
    /// Index of the sample in its task.
    pub index: u64,
    /// Stable sample name, `<task>/<index>` for synthetic tasks.
    pub id: String,
    /// The full text fed to the model (template and answer prefix included).
    pub prompt: String,
    pub answers: Vec<String>,
    /// The generated text, special tokens left out.
    pub prediction: String,
    /// `sample.score(prediction)`, in [0, 1].
    pub score: f64,
    /// Mean over layers of the fraction of the sequence's tokens the cache holds at the end.
    pub kept_fraction: f64,
    /// The same fraction right after each policy invocation (T = 512, 1024, …).
    pub kept_after_invocations: Vec<f64>,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Every token the model processed (prompt and generated tokens fed back).
    pub tokens_seen: usize,
    pub peak_kv_bytes: usize,
    /// Prompt tokens per second, the shared prefix's time counted for every policy that used
    /// it: what the prompt would cost this policy alone.
    pub prefill_tokens_per_sec: f64,
    pub decode_tokens_per_sec: f64,
    /// `stop token <id>`, `max tokens` or `context full`.
    pub stop_reason: String,
    /// Seconds: prefill (shared prefix included), decoding, and the policy's share of both.
    pub prefill_secs: f64,
    pub decode_secs: f64,
    pub policy_secs: f64,
    /// Decode steps behind `decode_tokens_per_sec`.
    pub decode_steps: usize,
    /// With `EvalOptions::answer_likelihood`: the gold answer's mean log-probability per token,
    /// teacher-forced after the prompt under the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_logprob: Option<f64>,
}

/// The aggregate of one policy over the samples of one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyEvaluation {
    /// The task spec in canonical form.
    pub task: String,
    pub policy: String,
    pub samples: usize,
    /// Task score: 100 × the mean per-sample score.
    pub score: f64,
    pub mean_kept_fraction: f64,
    /// Largest live K/V size any sample reached, in MiB.
    pub peak_kv_mib: f64,
    /// Total prompt tokens over total prefill seconds (shared prefix counted per policy).
    pub prefill_tokens_per_sec: f64,
    /// Total decode steps over total decode seconds.
    pub decode_tokens_per_sec: f64,
    /// Mean over samples of `SampleResult::answer_logprob`, where every sample has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_answer_logprob: Option<f64>,
    pub results: Vec<SampleResult>,
}

impl PolicyEvaluation {
    pub fn from_results(task: String, policy: String, results: Vec<SampleResult>) -> Self {
        let n = results.len();
        let mean = |f: fn(&SampleResult) -> f64| {
            if n == 0 {
                0.0
            } else {
                results.iter().map(f).sum::<f64>() / n as f64
            }
        };
        let prompt_tokens: usize = results.iter().map(|r| r.prompt_tokens).sum();
        let prefill_secs: f64 = results.iter().map(|r| r.prefill_secs).sum();
        let decode_steps: usize = results.iter().map(|r| r.decode_steps).sum();
        let decode_secs: f64 = results.iter().map(|r| r.decode_secs).sum();
        Self {
            task,
            policy,
            samples: n,
            score: 100.0 * mean(|r| r.score),
            mean_kept_fraction: mean(|r| r.kept_fraction),
            peak_kv_mib: results.iter().map(|r| r.peak_kv_bytes).max().unwrap_or(0) as f64 / MIB,
            prefill_tokens_per_sec: rate(prompt_tokens, prefill_secs),
            decode_tokens_per_sec: rate(decode_steps, decode_secs),
            mean_answer_logprob: results
                .iter()
                .map(|r| r.answer_logprob)
                .sum::<Option<f64>>()
                .filter(|_| n > 0)
                .map(|sum| sum / n as f64),
            results,
        }
    }
}

/// How much prefill the shared prefix saved.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PrefixReuse {
    /// Samples whose prefix was computed once and forked for every policy.
    pub samples: usize,
    /// Prefix tokens computed once instead of once per policy, summed over samples.
    pub prefix_tokens: usize,
    /// Seconds spent computing the prefixes.
    pub prefix_secs: f64,
    /// Seconds spent copying the prefix cache for each policy.
    pub fork_secs: f64,
    /// Seconds saved: the prefix time every further policy did not spend, less the copies.
    pub saved_secs: f64,
}

impl PrefixReuse {
    pub fn add(&mut self, other: &PrefixReuse) {
        self.samples += other.samples;
        self.prefix_tokens += other.prefix_tokens;
        self.prefix_secs += other.prefix_secs;
        self.fork_secs += other.fork_secs;
        self.saved_secs += other.saved_secs;
    }
}

/// Every policy on the samples of one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvaluation {
    pub task: String,
    /// One entry per policy, in the order they were given.
    pub policies: Vec<PolicyEvaluation>,
    pub prefix_reuse: PrefixReuse,
}

pub(crate) fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}
