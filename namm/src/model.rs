//! A llama-architecture LLM loaded from GGUF, written as separable pieces (embedding,
//! per-layer q/k/v with RoPE, attention output, MLP, head) so that the engine can run
//! attention itself over a cache a memory policy prunes. [`Model::forward_full`] is the
//! plain causal forward without any cache.
//!
//! Numerically it follows candle-transformers' `quantized_llama` (same GGUF tensors, the
//! interleaved RoPE of GGUF llama files, RMSNorm, SwiGLU), so that with
//! [`WeightFormat::Gguf`] the logits match it; positions go up to the model's context length
//! (`llama.context_length`), not `quantized_llama`'s fixed 4096.

mod config;
mod error;
mod linear;

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{gguf_file, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use candle_transformers::quantized_nn::RmsNorm;

pub use config::LlamaConfig;
pub use error::{ModelError, Result};
pub use linear::{Linear, WeightFormat};

/// One transformer block.
#[derive(Debug, Clone)]
pub struct Layer {
    attn_norm: RmsNorm,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: RmsNorm,
    gate: Linear,
    up: Linear,
    down: Linear,
}

#[derive(Debug, Clone)]
pub struct Model {
    config: LlamaConfig,
    format: WeightFormat,
    device: Device,
    /// `[vocab, hidden]`, f32.
    embed: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    output: Linear,
    /// `[context, head_dim / 2]` RoPE tables for every valid position.
    cos: Tensor,
    sin: Tensor,
    weight_bytes: usize,
}

impl Model {
    /// Loads a llama-architecture GGUF file onto `device`, holding the matrices in `format`.
    pub fn load(path: impl AsRef<Path>, device: &Device, format: WeightFormat) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|source| ModelError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = BufReader::new(file);
        let content = gguf_file::Content::read(&mut reader).map_err(|e| ModelError::BadGguf {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut config = LlamaConfig::from_metadata(path, &content.metadata)?;
        let mut gguf = Gguf {
            path: path.to_path_buf(),
            content,
            reader,
            device: device.clone(),
        };
        let embed_q = gguf.tensor("token_embd.weight", &[0, config.hidden])?;
        config.vocab = embed_q.shape().dims()[0];
        let (c, h, d) = (config.hidden, config.n_heads, config.head_dim);
        let kv = config.n_kv_heads * d;
        let embed = embed_q.dequantize(device)?;
        let output = if gguf.content.tensor_infos.contains_key("output.weight") {
            let w = gguf.tensor("output.weight", &[config.vocab, c])?;
            Linear::new(Arc::new(w), format, None)?
        } else {
            Linear::new(Arc::new(embed_q), format, Some(&embed))?
        };
        let eps = config.rms_eps;
        let mut layers = Vec::with_capacity(config.n_layers);
        for i in 0..config.n_layers {
            let mut lin = |name: &str, dims: [usize; 2]| -> Result<Linear> {
                let t = gguf.tensor(&format!("blk.{i}.{name}.weight"), &dims)?;
                Ok(Linear::new(Arc::new(t), format, None)?)
            };
            let (wq, wk, wv, wo) = (
                lin("attn_q", [h * d, c])?,
                lin("attn_k", [kv, c])?,
                lin("attn_v", [kv, c])?,
                lin("attn_output", [c, h * d])?,
            );
            let (gate, up, down) = (
                lin("ffn_gate", [config.intermediate, c])?,
                lin("ffn_up", [config.intermediate, c])?,
                lin("ffn_down", [c, config.intermediate])?,
            );
            let mut norm = |name: &str| -> Result<RmsNorm> {
                let t = gguf.tensor(&format!("blk.{i}.{name}.weight"), &[c])?;
                Ok(RmsNorm::from_qtensor(t, eps)?)
            };
            let (attn_norm, ffn_norm) = (norm("attn_norm")?, norm("ffn_norm")?);
            layers.push(Layer {
                attn_norm,
                wq,
                wk,
                wv,
                wo,
                ffn_norm,
                gate,
                up,
                down,
            });
        }
        let norm = gguf.tensor("output_norm.weight", &[c])?;
        let norm = RmsNorm::from_qtensor(norm, eps)?;
        let (cos, sin) = rope_tables(&config, device)?;
        let weight_bytes = output.bytes()
            + embed.elem_count() * 4
            + layers
                .iter()
                .map(|l| {
                    [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down]
                        .iter()
                        .map(|w| w.bytes())
                        .sum::<usize>()
                })
                .sum::<usize>();
        Ok(Self {
            config,
            format,
            device: device.clone(),
            embed,
            layers,
            norm,
            output,
            cos,
            sin,
            weight_bytes,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    pub fn format(&self) -> WeightFormat {
        self.format
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Bytes held by the embedding table and the matrices (norms and RoPE tables excluded).
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    /// Token embeddings, `[ids.len(), hidden]`.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.config.vocab) {
            return Err(ModelError::TokenOutOfRange {
                id,
                vocab: self.config.vocab,
            });
        }
        let ids = Tensor::new(ids, &self.device)?;
        Ok(self.embed.index_select(&ids, 0)?)
    }

    /// RMSNorm then the q/k/v projections of `layer` for rows `x: [c, hidden]` at absolute
    /// positions `pos0..pos0 + c`, RoPE applied: q `[Hq, c, D]`, k and v `[H, c, D]`.
    pub fn qkv(&self, layer: usize, x: &Tensor, pos0: usize) -> Result<(Tensor, Tensor, Tensor)> {
        let l = &self.layers[layer];
        let cfg = &self.config;
        let c = x.dim(0)?;
        let xn = l.attn_norm.forward(x)?;
        let heads = |t: Tensor, n: usize| -> candle_core::Result<Tensor> {
            t.reshape((c, n, cfg.head_dim))?
                .transpose(0, 1)?
                .contiguous()
        };
        let q = heads(l.wq.forward(&xn)?, cfg.n_heads)?;
        let k = heads(l.wk.forward(&xn)?, cfg.n_kv_heads)?;
        let v = heads(l.wv.forward(&xn)?, cfg.n_kv_heads)?;
        Ok((self.rope(&q, pos0)?, self.rope(&k, pos0)?, v))
    }

    /// Interleaved RoPE (pairs 2i, 2i+1, as GGUF llama files need) for `x: [heads, c, D]`
    /// at absolute positions `pos0..pos0 + c`.
    pub fn rope(&self, x: &Tensor, pos0: usize) -> Result<Tensor> {
        let c = x.dim(1)?;
        if pos0 + c > self.config.context_length {
            return Err(ModelError::ContextExceeded {
                position: pos0 + c - 1,
                context: self.config.context_length,
            });
        }
        let cos = self.cos.narrow(0, pos0, c)?;
        let sin = self.sin.narrow(0, pos0, c)?;
        Ok(candle_nn::rotary_emb::rope_i(&x.unsqueeze(0)?, &cos, &sin)?.squeeze(0)?)
    }

    /// `residual + W_o · y` for the attention output `y: [Hq, c, D]`.
    pub fn attn_residual(&self, layer: usize, residual: &Tensor, y: &Tensor) -> Result<Tensor> {
        let c = y.dim(1)?;
        let y = y.transpose(0, 1)?.reshape((c, self.config.hidden))?;
        Ok((self.layers[layer].wo.forward(&y)? + residual)?)
    }

    /// `x + down(silu(gate(n)) · up(n))` with `n = RMSNorm(x)`.
    pub fn mlp_residual(&self, layer: usize, x: &Tensor) -> Result<Tensor> {
        let l = &self.layers[layer];
        let n = l.ffn_norm.forward(x)?;
        let h = (candle_nn::ops::silu(&l.gate.forward(&n)?)? * l.up.forward(&n)?)?;
        Ok((l.down.forward(&h)? + x)?)
    }

    /// Logits `[vocab]` of the last row of the final hidden states `x: [c, hidden]`.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let last = x.narrow(0, x.dim(0)? - 1, 1)?;
        let h = self.norm.forward(&last)?;
        Ok(self.output.forward(&h)?.squeeze(0)?)
    }

    /// Plain causal forward of `ids` at positions `0..len` without a cache; logits of the
    /// last token.
    pub fn forward_full(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let cfg = &self.config;
        let (c, g, d) = (ids.len(), cfg.group_size(), cfg.head_dim);
        // Rows g·c + i of the grouped queries: query i sees keys 0..=i.
        let mask: Vec<f32> = (0..g * c)
            .flat_map(|r| (0..c).map(move |j| if j > r % c { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let mask = Tensor::from_vec(mask, (g * c, c), &self.device)?;
        let mut x = self.embed(ids)?;
        for layer in 0..cfg.n_layers {
            let (q, k, v) = self.qkv(layer, &x, 0)?;
            let q = q.reshape((cfg.n_kv_heads, g * c, d))?;
            let att = (q.matmul(&k.t()?)? / (d as f64).sqrt())?;
            let att = candle_nn::ops::softmax_last_dim(&att.broadcast_add(&mask)?)?;
            let y = att.matmul(&v)?.reshape((cfg.n_heads, c, d))?;
            x = self.attn_residual(layer, &x, &y)?;
            x = self.mlp_residual(layer, &x)?;
        }
        Ok(self.logits(&x)?.to_vec1()?)
    }
}

/// cos/sin of `p · base^(−2i/D)` for every position, computed exactly like
/// `quantized_llama` (f32 products, then cos/sin) so RoPE agrees bit for bit.
fn rope_tables(cfg: &LlamaConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let d = cfg.head_dim;
    let theta: Vec<f32> = (0..d)
        .step_by(2)
        .map(|i| 1f32 / cfg.rope_freq_base.powf(i as f32 / d as f32))
        .collect();
    let theta = Tensor::new(theta.as_slice(), device)?.reshape((1, d / 2))?;
    let pos = Tensor::arange(0, cfg.context_length as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((cfg.context_length, 1))?;
    let angles = pos.broadcast_mul(&theta)?;
    Ok((angles.cos()?, angles.sin()?))
}

/// A GGUF file being read: tensors come out checked against the shapes the config implies.
struct Gguf {
    path: PathBuf,
    content: gguf_file::Content,
    reader: BufReader<File>,
    device: Device,
}

impl Gguf {
    /// `dims`: expected shape in candle's order (`[out, in]` for matrices); 0 = any.
    fn tensor(&mut self, name: &str, dims: &[usize]) -> Result<QTensor> {
        let bad = |reason: String| ModelError::BadTensor {
            path: self.path.clone(),
            name: name.to_string(),
            reason,
        };
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| bad("missing".to_string()))?;
        let found = info.shape.dims();
        let ok =
            found.len() == dims.len() && found.iter().zip(dims).all(|(f, e)| *e == 0 || f == e);
        if !ok {
            return Err(bad(format!("shape {found:?}, expected {dims:?} (0 = any)")));
        }
        let t = self
            .content
            .tensor(&mut self.reader, name, &self.device)
            .map_err(|e| bad(e.to_string()))?;
        Ok(t)
    }
}
