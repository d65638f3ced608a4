//! Memory policies: at every invocation (each 512 absolute tokens, spec §2) a policy decides,
//! per layer and per KV head, which cached tokens stay. The engine owns the cache; the policy
//! owns whatever per-layer state it needs, aligned with the cache, and filters it itself with
//! the indices it returns.

mod bam;
mod baselines;
mod error;
pub mod features;
mod gqa;
pub mod layout;
mod namm;
mod params_file;
mod parse;
mod real;
pub mod replay;
mod select;
mod simd;

pub use baselines::{Baseline, BaselineKind, Budget, FullCache};
pub use error::PolicyError;
pub use features::FeatureSet;
pub use gqa::gqa_mean;
pub use layout::{BamLayout, PARAM_COUNT};
pub use namm::{Invocation, NammCore, NammPolicy, NormMode};
pub use params_file::{NammParams, BUDGET_KEY, FEATURES_KEY};
pub use parse::{parse_budget, parse_policy, DEFAULT_NAMM_PATH, VALID_POLICIES};
pub use real::Real;
pub use select::{binary_select, capped_select, top_k};
pub use simd::SIMD_ENV;

/// What the engine hands a policy at one invocation, for one layer (spec §2.3). All slices
/// are row-major f32/u32 views of the engine's buffers.
#[derive(Debug, Clone, Copy)]
pub struct LayerView<'a> {
    /// Layer index, 0-based.
    pub layer: usize,
    /// KV heads H of the layer.
    pub n_heads: usize,
    /// Tokens cached per head right now, N (every head of a layer holds the same count);
    /// the last `n_new` of them are the tokens appended since the previous invocation.
    pub n_tokens: usize,
    /// Tokens appended since the previous invocation, n (512 in practice).
    pub n_new: usize,
    /// `[H][n_new][N]`: attention probabilities of the n new queries over all N keys,
    /// averaged over the query heads that share a KV head; causally masked entries are 0.
    /// Empty unless [`PolicyInputs::attention`] was requested.
    pub attn: &'a [f32],
    /// `[H][N]`: absolute position of every cached token, in cache (chronological) order.
    pub positions: &'a [u32],
    /// `[H][N]`: L2 norm of every cached (post-RoPE) key. Empty unless
    /// [`PolicyInputs::key_norms`] was requested.
    pub key_norms: &'a [f32],
    /// `[T]`, by absolute position: the surprisal `−ln p(token | the tokens before it)` in
    /// nats under this sequence's own (evicted) cache; position 0 gets ln(vocabulary size).
    /// Empty unless [`PolicyInputs::surprisal`] was requested.
    pub surprisal: &'a [f32],
    /// Total tokens the sequence has processed so far (the rotary offset T, spec §2).
    pub tokens_seen: usize,
}

/// Which optional inputs a policy needs; the engine skips the work for the others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyInputs {
    pub attention: bool,
    pub key_norms: bool,
    pub surprisal: bool,
}

impl PolicyInputs {
    /// What either `self` or `other` needs.
    pub fn union(self, other: PolicyInputs) -> PolicyInputs {
        PolicyInputs {
            attention: self.attention || other.attention,
            key_norms: self.key_norms || other.key_norms,
            surprisal: self.surprisal || other.surprisal,
        }
    }
}

/// A KV-cache eviction rule, applied by the engine at the spec §2 schedule.
pub trait MemoryPolicy: Send {
    /// Short name for tables and logs, e.g. `h2o:budget=0.25`.
    fn name(&self) -> String;
    /// The optional inputs [`MemoryPolicy::select`] reads.
    fn inputs(&self) -> PolicyInputs;
    /// Forget all per-sequence state: the next invocation starts a new sequence.
    fn reset(&mut self);
    /// Chooses the tokens each head of `view.layer` keeps. `None` keeps every token.
    /// `Some(kept)`: `kept[h]` holds ascending indices into `0..N`, the same count for every
    /// head. The policy filters its own per-layer state with these indices before returning.
    fn select(&mut self, view: &LayerView<'_>) -> Option<Vec<Vec<usize>>>;
}
