use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;

use super::error::{ModelError, Result};

/// Shape and hyper-parameters of a llama-architecture model, read from GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub n_layers: usize,
    /// Query heads Hq.
    pub n_heads: usize,
    /// KV heads H; Hq is a multiple of H (grouped-query attention).
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub rms_eps: f64,
    pub rope_freq_base: f32,
    /// Positions `0..context_length` are valid.
    pub context_length: usize,
}

impl LlamaConfig {
    /// Query heads that share one KV head, G = Hq / H.
    pub fn group_size(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }

    pub(crate) fn from_metadata(path: &Path, md: &HashMap<String, Value>) -> Result<Self> {
        let arch = match md.get("general.architecture") {
            Some(Value::String(s)) => s.clone(),
            Some(v) => return Err(bad(path, "general.architecture", v, "not a string")),
            None => return Err(missing(path, "general.architecture")),
        };
        if arch != "llama" {
            return Err(ModelError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                found: arch,
            });
        }
        let n_heads = get_usize(path, md, "llama.attention.head_count")?;
        let n_kv_heads = get_usize(path, md, "llama.attention.head_count_kv")?;
        let hidden = get_usize(path, md, "llama.embedding_length")?;
        if n_heads == 0 || hidden % n_heads != 0 {
            return Err(bad(
                path,
                "llama.attention.head_count",
                &Value::U64(n_heads as u64),
                &format!("must divide llama.embedding_length = {hidden}"),
            ));
        }
        if n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(bad(
                path,
                "llama.attention.head_count_kv",
                &Value::U64(n_kv_heads as u64),
                &format!("must divide llama.attention.head_count = {n_heads}"),
            ));
        }
        let head_dim = hidden / n_heads;
        let rope_dim = if md.contains_key("llama.rope.dimension_count") {
            get_usize(path, md, "llama.rope.dimension_count")?
        } else {
            head_dim
        };
        if rope_dim != head_dim {
            return Err(bad(
                path,
                "llama.rope.dimension_count",
                &Value::U64(rope_dim as u64),
                &format!("partial rotary embeddings are not supported (head dim {head_dim})"),
            ));
        }
        let rope_freq_base = match md.get("llama.rope.freq_base") {
            None => 10000.0,
            Some(v) => v
                .to_f32()
                .map_err(|_| bad(path, "llama.rope.freq_base", v, "not an f32"))?,
        };
        let rms_eps = match md.get("llama.attention.layer_norm_rms_epsilon") {
            None => return Err(missing(path, "llama.attention.layer_norm_rms_epsilon")),
            Some(v) => v.to_f32().map_err(|_| {
                bad(
                    path,
                    "llama.attention.layer_norm_rms_epsilon",
                    v,
                    "not an f32",
                )
            })? as f64,
        };
        Ok(Self {
            n_layers: get_usize(path, md, "llama.block_count")?,
            n_heads,
            n_kv_heads,
            head_dim,
            hidden,
            intermediate: get_usize(path, md, "llama.feed_forward_length")?,
            // The vocabulary size comes from the embedding tensor; the loader fills it in.
            vocab: 0,
            rms_eps,
            rope_freq_base,
            context_length: get_usize(path, md, "llama.context_length")?,
        })
    }
}

fn get_usize(path: &Path, md: &HashMap<String, Value>, key: &str) -> Result<usize> {
    let v = md.get(key).ok_or_else(|| missing(path, key))?;
    let n = match v {
        Value::U8(x) => *x as u64,
        Value::U16(x) => *x as u64,
        Value::U32(x) => *x as u64,
        Value::U64(x) => *x,
        Value::I8(x) if *x >= 0 => *x as u64,
        Value::I16(x) if *x >= 0 => *x as u64,
        Value::I32(x) if *x >= 0 => *x as u64,
        Value::I64(x) if *x >= 0 => *x as u64,
        _ => return Err(bad(path, key, v, "not a non-negative integer")),
    };
    if n == 0 {
        return Err(bad(path, key, v, "must be positive"));
    }
    usize::try_from(n).map_err(|_| bad(path, key, v, "too large"))
}

fn missing(path: &Path, key: &str) -> ModelError {
    ModelError::MissingMetadata {
        path: path.to_path_buf(),
        key: key.to_string(),
    }
}

fn bad(path: &Path, key: &str, value: &Value, reason: &str) -> ModelError {
    ModelError::BadMetadata {
        path: path.to_path_buf(),
        key: key.to_string(),
        value: format!("{value:?}"),
        reason: reason.to_string(),
    }
}
