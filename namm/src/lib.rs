//! Neural Attention Memory Models (Sakana AI, ICLR 2025): the science half of namm.
//!
//! Everything without the `engine` feature is plain Rust the coordinator can use (run specs,
//! benchmark objectives, the policy maths, tasks, metrics, statistics merging); `engine` adds
//! the candle LLM whose KV cache a [`policy::MemoryPolicy`] prunes. No networking, no database.

pub mod digest;
pub mod metrics;
pub mod objective;
pub mod policy;
pub mod spec;
pub mod stats;
pub mod tasks;
pub mod training;

#[cfg(feature = "engine")]
pub mod engine;
#[cfg(feature = "engine")]
pub mod evaluate;
#[cfg(feature = "engine")]
pub mod model;
#[cfg(feature = "engine")]
pub mod tokenizer;
