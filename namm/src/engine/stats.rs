/// The cache after one policy invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct InvocationStats {
    /// T at the invocation (a multiple of 512).
    pub tokens_seen: usize,
    /// Tokens each KV head of layer ℓ keeps after the invocation, per layer.
    pub kept_per_layer: Vec<usize>,
}

/// Accounting of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationStats {
    /// Tokens of the prompt, shared prefix included.
    pub prompt_tokens: usize,
    /// Tokens produced (a stop token included).
    pub generated_tokens: usize,
    /// T at the end: every token the model processed (prompt + generated tokens fed back;
    /// the last generated token is never fed).
    pub tokens_seen: usize,
    /// One entry per policy invocation, in order.
    pub invocations: Vec<InvocationStats>,
    /// Tokens each KV head of layer ℓ holds at the end, per layer.
    pub kept_per_layer: Vec<usize>,
    /// Mean over layers ℓ of `kept_per_layer[ℓ] / tokens_seen`, at the end of the generation:
    /// the fraction of the sequence's tokens the cache still holds (1.0 for a full cache).
    pub mean_kept_fraction: f64,
    /// Largest number of bytes the live K and V entries (f32, all layers) reached; measured
    /// after every forward chunk, i.e. before an invocation compacts the cache.
    pub peak_kv_bytes: usize,
    /// Tokens processed by the prefill of this call (a forked prefix's tokens excluded).
    pub prefill_tokens: usize,
    pub prefill_secs: f64,
    /// Single-token forward steps of the decoding loop.
    pub decode_steps: usize,
    pub decode_secs: f64,
    /// Seconds spent in policy invocations (views, `select`, compaction), included in the
    /// prefill and decode times.
    pub policy_secs: f64,
}

impl GenerationStats {
    pub fn prefill_tokens_per_sec(&self) -> f64 {
        rate(self.prefill_tokens, self.prefill_secs)
    }

    pub fn decode_tokens_per_sec(&self) -> f64 {
        rate(self.decode_steps, self.decode_secs)
    }
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}
