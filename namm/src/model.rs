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
mod int8;
mod linear;
mod q4;
mod q8;
mod random;
mod source;

use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{gguf_file, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use candle_transformers::quantized_nn::RmsNorm;

use crate::engine::softmax::exp;

pub use config::LlamaConfig;
pub use error::{ModelError, Result};
pub use linear::{Linear, WeightFormat, DEFAULT_FORMAT};
pub use random::{RandomModel, RandomModelError, RandomShape, RANDOM_PREFIX};
pub use source::{ModelSource, DEFAULT_MODEL_PATH};

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
        Self::load_source(
            &ModelSource::File(path.as_ref().to_path_buf()),
            device,
            format,
        )
    }

    /// Loads a model from any source: a GGUF file, or a synthesised `random:SHAPE` one.
    pub fn load_source(
        source: &ModelSource,
        device: &Device,
        format: WeightFormat,
    ) -> Result<Self> {
        let (content, reader) = source.open()?;
        Self::from_gguf(&source.label(), content, reader, device, format)
    }

    /// The model in `content`, its tensors read from `reader`; `path` names it in errors.
    pub fn from_gguf<R: Read + Seek>(
        path: &Path,
        content: gguf_file::Content,
        reader: R,
        device: &Device,
        format: WeightFormat,
    ) -> Result<Self> {
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
        let span = Span {
            len: x.dim(0)?,
            pos0,
        };
        let mut out = self.qkv_rows(layer, x, &[span])?;
        Ok(out.remove(0))
    }

    /// [`Model::qkv`] for several sequences at once: `x` holds their rows one span after
    /// another; the projections run as one product (see [`Span`]), RoPE per span.
    pub fn qkv_rows(
        &self,
        layer: usize,
        x: &Tensor,
        spans: &[Span],
    ) -> Result<Vec<(Tensor, Tensor, Tensor)>> {
        let l = &self.layers[layer];
        let cfg = &self.config;
        let xn = l.attn_norm.forward(x)?;
        let (q, k, v) = (
            linear(&l.wq, &xn, spans)?,
            linear(&l.wk, &xn, spans)?,
            linear(&l.wv, &xn, spans)?,
        );
        let mut out = Vec::with_capacity(spans.len());
        let mut row0 = 0;
        for s in spans {
            let heads = |t: &Tensor, n: usize| -> candle_core::Result<Tensor> {
                t.narrow(0, row0, s.len)?
                    .reshape((s.len, n, cfg.head_dim))?
                    .transpose(0, 1)?
                    .contiguous()
            };
            out.push((
                self.rope(&heads(&q, cfg.n_heads)?, s.pos0)?,
                self.rope(&heads(&k, cfg.n_kv_heads)?, s.pos0)?,
                heads(&v, cfg.n_kv_heads)?,
            ));
            row0 += s.len;
        }
        Ok(out)
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
        self.attn_residual_rows(layer, residual, std::slice::from_ref(y))
    }

    /// [`Model::attn_residual`] for the spans of several sequences, `ys[i]: [Hq, c_i, D]`.
    pub fn attn_residual_rows(
        &self,
        layer: usize,
        residual: &Tensor,
        ys: &[Tensor],
    ) -> Result<Tensor> {
        let mut spans = Vec::with_capacity(ys.len());
        let mut rows = Vec::with_capacity(ys.len());
        for y in ys {
            let c = y.dim(1)?;
            spans.push(Span { len: c, pos0: 0 });
            rows.push(y.transpose(0, 1)?.reshape((c, self.config.hidden))?);
        }
        let y = if rows.len() == 1 {
            rows.remove(0)
        } else {
            Tensor::cat(&rows, 0)?
        };
        Ok((linear(&self.layers[layer].wo, &y, &spans)? + residual)?)
    }

    /// `x + down(silu(gate(n)) · up(n))` with `n = RMSNorm(x)`.
    pub fn mlp_residual(&self, layer: usize, x: &Tensor) -> Result<Tensor> {
        let span = Span {
            len: x.dim(0)?,
            pos0: 0,
        };
        self.mlp_residual_rows(layer, x, &[span])
    }

    /// [`Model::mlp_residual`] for the rows of several sequences, laid out as `spans` say.
    pub fn mlp_residual_rows(&self, layer: usize, x: &Tensor, spans: &[Span]) -> Result<Tensor> {
        let l = &self.layers[layer];
        let n = l.ffn_norm.forward(x)?;
        let h = (candle_nn::ops::silu(&linear(&l.gate, &n, spans)?)? * linear(&l.up, &n, spans)?)?;
        Ok((linear(&l.down, &h, spans)? + x)?)
    }

    /// Logits `[vocab]` of the last row of the final hidden states `x: [c, hidden]`.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let last = x.narrow(0, x.dim(0)? - 1, 1)?;
        Ok(self.logits_rows(&last)?.squeeze(0)?)
    }

    /// Logits `[rows, vocab]` of final hidden states `[rows, hidden]`, each row computed as
    /// [`Model::logits`] computes one.
    pub fn logits_rows(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.norm.forward(x)?;
        Ok(self.output.forward_each(&h)?)
    }

    /// Surprisal `−ln p(targets[i] | row i)` in nats of each row of final hidden states
    /// `x: [rows, hidden]`, the output projection run on all rows at once as prefill runs a
    /// chunk's projections (several times faster than [`Model::logits_rows`]' row-by-row
    /// kernels, whose activation quantisation can move a surprisal by ~0.1 nats).
    pub fn surprisal_rows(&self, x: &Tensor, targets: &[u32]) -> Result<Vec<f32>> {
        let logits = self
            .output
            .forward(&self.norm.forward(x)?)?
            .to_vec2::<f32>()?;
        Ok(logits
            .iter()
            .zip(targets)
            .map(|(row, &t)| surprisal(row, t))
            .collect())
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

/// Where one sequence's rows lie in a batch: `len` rows at absolute positions
/// `pos0..pos0 + len`.
///
/// Every row of a batch gets exactly the numbers it gets alone. A batch of single-token spans
/// (decode steps) runs every product row by row with the weights read once for all rows: the
/// gain of batching on a CPU, where decoding streams the weights. Spans of chunks run as one
/// matrix product on a GPU; on a CPU, one product per span, as the gemm's blocking depends on
/// the row count (prefill is compute-bound there, so little is lost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub len: usize,
    pub pos0: usize,
}

impl Span {
    /// Whether every span is a single token.
    pub fn all_single(spans: &[Span]) -> bool {
        spans.iter().all(|s| s.len == 1)
    }
}

/// `x · Wᵀ` for rows laid out as `spans` say (see [`Span`]).
fn linear(w: &Linear, x: &Tensor, spans: &[Span]) -> candle_core::Result<Tensor> {
    if Span::all_single(spans) {
        return w.forward_each(x);
    }
    if spans.len() == 1 || !x.device().is_cpu() {
        return w.forward(x);
    }
    let mut parts = Vec::with_capacity(spans.len());
    let mut row0 = 0;
    for s in spans {
        parts.push(w.forward(&x.narrow(0, row0, s.len)?)?);
        row0 += s.len;
    }
    Tensor::cat(&parts, 0)
}

/// The device named by `spec`: `cpu`, or `cuda:N` (`cuda` = `cuda:0`), which needs the
/// crate's `cuda` feature and a GPU.
pub fn parse_device(spec: &str) -> Result<Device> {
    let bad = |reason: String| ModelError::BadDevice {
        spec: spec.to_string(),
        reason,
    };
    match spec {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).map_err(|e| bad(e.to_string())),
        _ => {
            let Some(n) = spec.strip_prefix("cuda:") else {
                return Err(bad("expected cpu or cuda:N".to_string()));
            };
            let ordinal = n
                .parse::<usize>()
                .map_err(|_| bad(format!("GPU ordinal {n:?} is not a number")))?;
            Device::new_cuda(ordinal).map_err(|e| bad(e.to_string()))
        }
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
struct Gguf<R> {
    path: PathBuf,
    content: gguf_file::Content,
    reader: R,
    device: Device,
}

impl<R: Read + Seek> Gguf<R> {
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

/// `−ln softmax(logits)[target]` in nats: the engine's f32 exp (a polynomial the compiler
/// vectorises; libm's f64 exp over the vocabulary of every prompt row was ~6 % of a NAMM
/// evaluation) summed in 16 lanes, then in f64.
pub fn surprisal(logits: &[f32], target: u32) -> f32 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut lanes = [0f32; 16];
    let chunks = logits.chunks_exact(16);
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&v| exp(v - max) as f64)
        .sum();
    for chunk in chunks {
        for (l, &v) in lanes.iter_mut().zip(chunk) {
            *l += exp(v - max);
        }
    }
    let sum = lanes.iter().map(|&l| l as f64).sum::<f64>() + tail;
    (sum.ln() + (max - logits[target as usize]) as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn surprisal_is_the_f64_log_softmax() {
        for vocab in [49152, 1001, 7] {
            let logits: Vec<f32> = (0..vocab)
                .map(|i| ((i * 7919 % 2003) as f32 - 1001.0) / 40.0)
                .collect();
            for target in [0, vocab / 3, vocab - 1] {
                let want = -crate::engine::log_softmax_at(&logits, target as u32);
                let got = surprisal(&logits, target as u32) as f64;
                assert!((got - want).abs() < 1e-4, "vocab {vocab}: {got} vs {want}");
            }
        }
    }
}
