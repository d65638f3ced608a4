use std::collections::HashMap;
use std::time::Instant;

use candle_core::Tensor;

use super::cache::LayerCache;
use super::stats::InvocationStats;
use super::{decode, softmax};
use super::{EngineError, Result, CHUNK, POLICY_PERIOD};
use crate::model::{surprisal, Model, Span, WeightFormat};
use crate::policy::{LayerView, MemoryPolicy, PolicyInputs};

/// What predicts the next token of a sequence: the final hidden state of its last token, or
/// that state's logits when they were computed anyway (a decode step), which saves the
/// output projection a second time.
#[derive(Debug, Clone)]
enum Predictor {
    Hidden(Vec<f32>),
    Logits(Vec<f32>),
}

/// Attention rows of one chunk for one layer, `[H][rows][cols]`, cols = N when it ran.
#[derive(Debug, Clone)]
struct AttnChunk {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

/// The state of one sequence: per-layer KV caches, the absolute token count T, and the
/// attention buffered since the previous policy invocation (spec §2).
///
/// [`Session::fork`] makes a deep copy: a prefix prefilled once (before T reaches 512 the
/// cache is the same for every policy) can be forked for each candidate policy.
#[derive(Debug)]
pub struct Session<'m> {
    model: &'m Model,
    caches: Vec<LayerCache>,
    /// Per layer, the chunks since the previous invocation; empty unless recording.
    pending: Vec<Vec<AttnChunk>>,
    record_attention: bool,
    /// `[T]`: every token's surprisal, while every chunk so far was recorded (`None` once
    /// one was fed without it, or when the session was created without it).
    surprisal: Option<Vec<f32>>,
    /// What predicts the token after the last one fed, while surprisal is recorded.
    predictor: Option<Predictor>,
    tokens_seen: usize,
    since_invocation: usize,
    invocations: Vec<InvocationStats>,
    peak_kv_bytes: usize,
    policy_secs: f64,
}

impl<'m> Session<'m> {
    /// An empty sequence. With `inputs.attention` the attention of every chunk is kept until
    /// the next invocation; policies that need it can only run on such sessions.
    pub fn new(model: &'m Model, inputs: PolicyInputs) -> Result<Self> {
        let cfg = model.config();
        let caches = (0..cfg.n_layers)
            .map(|_| {
                LayerCache::new(
                    cfg.n_kv_heads,
                    cfg.head_dim,
                    cfg.context_length,
                    model.device(),
                )
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            model,
            caches,
            pending: vec![Vec::new(); cfg.n_layers],
            record_attention: inputs.attention,
            surprisal: inputs.surprisal.then(Vec::new),
            predictor: None,
            tokens_seen: 0,
            since_invocation: 0,
            invocations: Vec::new(),
            peak_kv_bytes: 0,
            policy_secs: 0.0,
        })
    }

    /// A copy sharing no storage with `self`: what one fork appends never shows in another.
    pub fn fork(&self) -> Result<Self> {
        Ok(Self {
            model: self.model,
            caches: self
                .caches
                .iter()
                .map(LayerCache::deep_clone)
                .collect::<candle_core::Result<Vec<_>>>()?,
            pending: self.pending.clone(),
            record_attention: self.record_attention,
            surprisal: self.surprisal.clone(),
            predictor: self.predictor.clone(),
            tokens_seen: self.tokens_seen,
            since_invocation: self.since_invocation,
            invocations: self.invocations.clone(),
            peak_kv_bytes: self.peak_kv_bytes,
            policy_secs: self.policy_secs,
        })
    }

    pub fn model(&self) -> &'m Model {
        self.model
    }

    /// Tokens processed so far, T (also the position the next token gets).
    pub fn tokens_seen(&self) -> usize {
        self.tokens_seen
    }

    /// Tokens each KV head of every layer holds now.
    pub fn kept_per_layer(&self) -> Vec<usize> {
        self.caches.iter().map(LayerCache::len).collect()
    }

    /// `[layer][head][token]` absolute positions of the cached tokens.
    pub fn positions(&self) -> Vec<Vec<Vec<u32>>> {
        self.caches.iter().map(|c| c.positions().to_vec()).collect()
    }

    pub fn invocations(&self) -> &[InvocationStats] {
        &self.invocations
    }

    pub fn peak_kv_bytes(&self) -> usize {
        self.peak_kv_bytes
    }

    /// Seconds spent in policy invocations (building the views, `select`, compaction).
    pub fn policy_secs(&self) -> f64 {
        self.policy_secs
    }

    /// Feeds a shared prefix that must end before the next invocation point (T stays below
    /// the next multiple of 512), so that no policy is involved; logits of its last token.
    pub fn feed_prefix(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let end = self.tokens_seen + ids.len();
        if end / POLICY_PERIOD != self.tokens_seen / POLICY_PERIOD {
            return Err(EngineError::PrefixReachesInvocation {
                tokens_seen: self.tokens_seen,
                len: ids.len(),
            });
        }
        let mut logits = feed_rows(&mut [self], &[ids], &mut [None])?;
        Ok(logits.remove(0))
    }

    /// Feeds tokens in chunks aligned to absolute multiples of 128, invoking `policy` on
    /// every layer whenever T reaches a multiple of 512; logits `[vocab]` of the last token.
    pub fn feed(&mut self, ids: &[u32], policy: &mut dyn MemoryPolicy) -> Result<Vec<f32>> {
        let mut logits = feed_rows(&mut [self], &[ids], &mut [Some(policy)])?;
        Ok(logits.remove(0))
    }

    /// [`Session::feed`] for several sessions as rows of one batch: `ids[i]` to `rows[i]` under
    /// `policies[i]`; logits of each row's last token. Each row's cache, invocations and
    /// logits are exactly those it gets fed alone.
    pub fn feed_batch(
        rows: &mut [&mut Session<'m>],
        ids: &[&[u32]],
        policies: &mut [&mut dyn MemoryPolicy],
    ) -> Result<Vec<Vec<f32>>> {
        let mut policies: Vec<Option<&mut dyn MemoryPolicy>> = policies
            .iter_mut()
            .map(|p| Some(&mut **p as &mut dyn MemoryPolicy))
            .collect();
        feed_rows(rows, ids, &mut policies)
    }

    /// Attention of this sequence's new rows at `layer` over its own cache, which they join:
    /// `y: [Hq, c, D]`. Records the attention rows when the session does.
    fn attend_layer(
        &mut self,
        layer: usize,
        (q, k, v): (Tensor, Tensor, Tensor),
        masks: &mut HashMap<(usize, usize), Tensor>,
    ) -> Result<Tensor> {
        let model = self.model;
        let cfg = model.config();
        let (c, pos0) = (q.dim(1)?, self.tokens_seen);
        let (h, g, d) = (cfg.n_kv_heads, cfg.group_size(), cfg.head_dim);
        let cache = &mut self.caches[layer];
        cache.append(&k, &v, pos0)?;
        let n = cache.len();
        let decoded = if c == 1 && !exact_attention(model) {
            let dims = decode::Dims {
                heads: h,
                group: g,
                head_dim: d,
                n,
            };
            decode::attend(
                &q,
                &cache.keys()?,
                &cache.values()?,
                dims,
                self.record_attention,
            )?
        } else {
            None
        };
        Ok(match decoded {
            Some((y, probs)) => {
                if self.record_attention {
                    let mean = probs
                        .chunks_exact(g * n)
                        .flat_map(|rows| {
                            (0..n).map(move |j| {
                                (0..g).map(|gi| rows[gi * n + j]).sum::<f32>() / g as f32
                            })
                        })
                        .collect();
                    self.pending[layer].push(AttnChunk {
                        rows: 1,
                        cols: n,
                        data: mean,
                    });
                }
                Tensor::from_vec(y, (cfg.n_heads, 1, d), model.device())?
            }
            None => {
                let (y, mean) = self.attend_chunk(&q, layer, g, c, masks)?;
                if let Some(data) = mean {
                    self.pending[layer].push(AttnChunk {
                        rows: c,
                        cols: n,
                        data,
                    });
                }
                y
            }
        })
    }

    /// Attention of chunk queries `q: [Hq, c, D]` over the layer's cache (the chunk already
    /// appended) with batched matmuls: `y: [Hq, c, D]`, and the probabilities averaged over
    /// each KV head's query heads `[H][c][N]` when recording.
    fn attend_chunk(
        &self,
        q: &Tensor,
        layer: usize,
        g: usize,
        c: usize,
        masks: &mut HashMap<(usize, usize), Tensor>,
    ) -> Result<(Tensor, Option<Vec<f32>>)> {
        let cfg = self.model.config();
        let (h, d) = (cfg.n_kv_heads, cfg.head_dim);
        let cache = &self.caches[layer];
        let n = cache.len();
        // Query head h·G + g reads KV head h (HF repeat_kv order), so [Hq, c, D] is
        // [H, G·c, D] with rows g·c + i: one batched matmul per KV head, no K/V copies.
        let q = q.reshape((h, g * c, d))?;
        let device = self.model.device();
        let (att, mean) = if !exact_attention(self.model) {
            // Scaling q instead of the scores is exact for power-of-4 head dims (64).
            let q = (q * (1.0 / (d as f64).sqrt()))?;
            let mut p = q
                .matmul(&cache.keys()?.t()?)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            softmax::causal_softmax(&mut p, n, c);
            let mean = self.record_attention.then(|| group_mean(&p, h, g, c, n));
            (Tensor::from_vec(p, (h, g * c, n), device)?, mean)
        } else {
            let mut att = (q.matmul(&cache.keys()?.t()?)? / (d as f64).sqrt())?;
            if c > 1 {
                let mask = match masks.get(&(c, n)) {
                    Some(m) => m.clone(),
                    None => {
                        let m = causal_mask(g, c, n, device)?;
                        masks.insert((c, n), m.clone());
                        m
                    }
                };
                att = att.broadcast_add(&mask)?;
            }
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let mean = if self.record_attention {
                let mean = (att.reshape((h, g, c, n))?.sum(1)? / g as f64)?;
                Some(mean.flatten_all()?.to_vec1()?)
            } else {
                None
            };
            (att, mean)
        };
        let y = att.matmul(&cache.values()?)?.reshape((cfg.n_heads, c, d))?;
        Ok((y, mean))
    }

    /// Extends the surprisal record with the tokens `ids` of the chunk whose final hidden
    /// states are `hidden: [len, hidden]` (`last_logits`: those of its last row, when the
    /// caller computed them), or ends the record when `wanted` is false (the policy of this
    /// chunk does not read it; a later one could not trust a gap).
    fn record_surprisal(
        &mut self,
        hidden: &Tensor,
        ids: &[u32],
        last_logits: Option<&[f32]>,
        wanted: bool,
    ) -> Result<()> {
        let Some(record) = self.surprisal.as_mut().filter(|_| wanted) else {
            self.surprisal = None;
            self.predictor = None;
            return Ok(());
        };
        let c = ids.len();
        let mut rows = Vec::with_capacity(2);
        let targets = match self.predictor.take() {
            Some(Predictor::Hidden(prev)) => {
                rows.push(Tensor::from_vec(
                    prev,
                    (1, hidden.dim(1)?),
                    hidden.device(),
                )?);
                ids
            }
            Some(Predictor::Logits(logits)) => {
                record.push(surprisal(&logits, ids[0]));
                &ids[1..]
            }
            None => {
                record.push((self.model.config().vocab as f32).ln());
                &ids[1..]
            }
        };
        if c > 1 {
            rows.push(hidden.narrow(0, 0, c - 1)?);
        }
        if !targets.is_empty() {
            record.extend(
                self.model
                    .surprisal_rows(&Tensor::cat(&rows, 0)?, targets)?,
            );
        }
        self.predictor = Some(match last_logits {
            Some(l) => Predictor::Logits(l.to_vec()),
            None => Predictor::Hidden(hidden.narrow(0, c - 1, 1)?.flatten_all()?.to_vec1()?),
        });
        Ok(())
    }

    /// One policy invocation (spec §2.3) on every layer, then compaction of each layer's cache
    /// to the returned tokens.
    fn invoke(&mut self, policy: &mut dyn MemoryPolicy) -> Result<()> {
        let start = Instant::now();
        let inputs = policy.inputs();
        let heads = self.model.config().n_kv_heads;
        let n_new = self.since_invocation;
        let mut kept_per_layer = Vec::with_capacity(self.caches.len());
        for (layer, cache) in self.caches.iter_mut().enumerate() {
            let n = cache.len();
            let attn = if inputs.attention {
                assemble_attention(&self.pending[layer], heads, n_new, n)
            } else {
                Vec::new()
            };
            let positions: Vec<u32> = cache.positions().concat();
            let key_norms = if inputs.key_norms {
                cache.key_norms()?
            } else {
                Vec::new()
            };
            let view = LayerView {
                layer,
                n_heads: heads,
                n_tokens: n,
                n_new,
                attn: &attn,
                positions: &positions,
                key_norms: &key_norms,
                surprisal: match &self.surprisal {
                    Some(s) if inputs.surprisal => s,
                    _ => &[],
                },
                tokens_seen: self.tokens_seen,
            };
            if let Some(kept) = policy.select(&view) {
                check_selection(&kept, heads, n).map_err(|reason| EngineError::BadSelection {
                    policy: policy.name(),
                    layer,
                    reason,
                })?;
                cache.gather(&kept)?;
            }
            kept_per_layer.push(cache.len());
        }
        for p in &mut self.pending {
            p.clear();
        }
        self.since_invocation = 0;
        self.invocations.push(InvocationStats {
            tokens_seen: self.tokens_seen,
            kept_per_layer,
        });
        self.policy_secs += start.elapsed().as_secs_f64();
        Ok(())
    }
}

/// Feeds `ids[i]` to `rows[i]` for every row at once, each in chunks aligned to absolute
/// multiples of 128 and with its own policy invoked whenever its T reaches a multiple of 512
/// (`None`: the row must not reach one); logits `[vocab]` of each row's last token.
///
/// Every step runs one chunk of every row that has tokens left as one batch through the
/// model ([`forward_rows`]); rows of single tokens and rows of longer chunks go in separate
/// batches, so every row gets exactly the numbers it gets when fed alone.
pub(crate) fn feed_rows(
    rows: &mut [&mut Session<'_>],
    ids: &[&[u32]],
    policies: &mut [Option<&mut dyn MemoryPolicy>],
) -> Result<Vec<Vec<f32>>> {
    if rows.len() != ids.len() || rows.len() != policies.len() {
        return Err(EngineError::BatchShape {
            reason: format!(
                "{} sessions, {} token lists, {} policies",
                rows.len(),
                ids.len(),
                policies.len()
            ),
        });
    }
    if rows.iter().any(|r| !std::ptr::eq(r.model, rows[0].model)) {
        return Err(EngineError::BatchShape {
            reason: "the sessions belong to different models".into(),
        });
    }
    for ((session, ids), policy) in rows.iter().zip(ids).zip(policies.iter()) {
        if ids.is_empty() {
            return Err(EngineError::EmptyInput);
        }
        let context = session.model.config().context_length;
        if session.tokens_seen + ids.len() > context {
            return Err(EngineError::Model(
                crate::model::ModelError::ContextExceeded {
                    position: session.tokens_seen + ids.len() - 1,
                    context,
                },
            ));
        }
        if let Some(p) = policy.as_deref() {
            if p.inputs().attention && !session.record_attention {
                return Err(EngineError::AttentionNotRecorded { policy: p.name() });
            }
            if p.inputs().surprisal && session.surprisal.is_none() {
                return Err(EngineError::SurprisalNotRecorded { policy: p.name() });
            }
        }
    }
    let mut rest: Vec<&[u32]> = ids.to_vec();
    let mut logits: Vec<Option<Vec<f32>>> = vec![None; rows.len()];
    loop {
        let mut chunks: Vec<(usize, &[u32])> = Vec::new();
        for (i, r) in rest.iter_mut().enumerate() {
            if !r.is_empty() {
                let room = CHUNK - rows[i].tokens_seen % CHUNK;
                let (chunk, tail) = r.split_at(room.min(r.len()));
                chunks.push((i, chunk));
                *r = tail;
            }
        }
        if chunks.is_empty() {
            break;
        }
        let (single, longer): (Vec<_>, Vec<_>) =
            chunks.into_iter().partition(|(_, c)| c.len() == 1);
        for group in [single, longer] {
            if group.is_empty() {
                continue;
            }
            let members: Vec<usize> = group.iter().map(|(i, _)| *i).collect();
            let group_ids: Vec<&[u32]> = group.iter().map(|(_, c)| *c).collect();
            let mut sessions: Vec<&mut Session<'_>> = rows
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| members.contains(i))
                .map(|(_, s)| &mut **s)
                .collect();
            let hidden = forward_rows(&mut sessions, &group_ids)?;
            let model = sessions[0].model;
            // Logits only where a row's input ends with this chunk.
            let mut ends = Vec::new();
            let mut lasts = Vec::new();
            let mut row0 = 0;
            for (i, c) in &group {
                row0 += c.len();
                if rest[*i].is_empty() {
                    ends.push(*i);
                    lasts.push(hidden.narrow(0, row0 - 1, 1)?);
                }
            }
            if !lasts.is_empty() {
                let out = model
                    .logits_rows(&Tensor::cat(&lasts, 0)?)?
                    .to_vec2::<f32>()?;
                for (i, l) in ends.into_iter().zip(out) {
                    logits[i] = Some(l);
                }
            }
            let mut row0 = 0;
            for (i, c) in &group {
                let wanted = policies[*i].as_deref().is_none_or(|p| p.inputs().surprisal);
                let rows_i = hidden.narrow(0, row0, c.len())?;
                rows[*i].record_surprisal(&rows_i, c, logits[*i].as_deref(), wanted)?;
                row0 += c.len();
            }
            for i in members {
                let session = &mut *rows[i];
                if session.tokens_seen.is_multiple_of(POLICY_PERIOD) {
                    let p =
                        policies[i]
                            .as_deref_mut()
                            .ok_or(EngineError::PrefixReachesInvocation {
                                tokens_seen: session.tokens_seen,
                                len: 0,
                            })?;
                    session.invoke(p)?;
                }
            }
        }
    }
    logits
        .into_iter()
        .map(|l| l.ok_or(EngineError::EmptyInput))
        .collect()
}

/// Runs one span of tokens per session (`ids[i]` at positions T_i.. of `rows[i]`, within one
/// 128-token chunk) through every layer as one batch: projections and MLP on all rows at
/// once, attention of each row over its own cache, which its K/V join. Returns the final
/// hidden states of all rows, `[Σ len, hidden]`, in row order.
fn forward_rows(rows: &mut [&mut Session<'_>], ids: &[&[u32]]) -> Result<Tensor> {
    let model = rows[0].model;
    let cfg = model.config();
    let spans: Vec<Span> = rows
        .iter()
        .zip(ids)
        .map(|(s, ids)| Span {
            len: ids.len(),
            pos0: s.tokens_seen,
        })
        .collect();
    let mut masks = HashMap::new();
    let mut x = model.embed(&ids.concat())?;
    for layer in 0..cfg.n_layers {
        let qkv = model.qkv_rows(layer, &x, &spans)?;
        let ys = rows
            .iter_mut()
            .zip(qkv)
            .map(|(s, qkv)| s.attend_layer(layer, qkv, &mut masks))
            .collect::<Result<Vec<_>>>()?;
        x = model.attn_residual_rows(layer, &x, &ys)?;
        x = model.mlp_residual_rows(layer, &x, &spans)?;
    }
    for (s, span) in rows.iter_mut().zip(&spans) {
        s.tokens_seen += span.len;
        s.since_invocation += span.len;
        let live: usize = s.caches.iter().map(LayerCache::live_bytes).sum();
        s.peak_kv_bytes = s.peak_kv_bytes.max(live);
    }
    Ok(x)
}

/// Additive mask `[G·c, N]` for chunk rows g·c + i: key j is hidden iff it is a chunk token
/// after query i (j > N − c + i); every cached older token stays visible.
fn causal_mask(g: usize, c: usize, n: usize, device: &candle_core::Device) -> Result<Tensor> {
    let old = n - c;
    let mut m = vec![0f32; g * c * n];
    for gi in 0..g {
        for i in 0..c {
            let row = &mut m[(gi * c + i) * n..(gi * c + i + 1) * n];
            row[old + i + 1..].fill(f32::NEG_INFINITY);
        }
    }
    Ok(Tensor::from_vec(m, (g * c, n), device)?)
}

/// With GGUF weights as stored, attention runs on candle's ops exactly as `quantized_llama`
/// does: the quantised matmuls round activations to 8 bits, so even last-bit differences in
/// attention flip roundings and move logits by tenths. The other formats (and CPU only) use
/// the faster direct decode attention and vectorised softmax.
fn exact_attention(model: &Model) -> bool {
    model.format() == WeightFormat::Gguf || !model.device().is_cpu()
}

/// `[H][c][N]`: the mean over each KV head's G query heads of `p: [H][G·c][N]`.
fn group_mean(p: &[f32], h: usize, g: usize, c: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; h * c * n];
    for head in 0..h {
        let dst = &mut out[head * c * n..(head + 1) * c * n];
        for gi in 0..g {
            let src = &p[(head * g + gi) * c * n..(head * g + gi + 1) * c * n];
            for (o, x) in dst.iter_mut().zip(src) {
                *o += x;
            }
        }
        for o in dst.iter_mut() {
            *o /= g as f32;
        }
    }
    out
}

/// `[H][n_new][N]` from the buffered chunks, earlier chunks right-padded with zeros.
fn assemble_attention(chunks: &[AttnChunk], heads: usize, n_new: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; heads * n_new * n];
    let mut row0 = 0;
    for ch in chunks {
        for h in 0..heads {
            for r in 0..ch.rows {
                let src = &ch.data[(h * ch.rows + r) * ch.cols..][..ch.cols];
                out[(h * n_new + row0 + r) * n..][..ch.cols].copy_from_slice(src);
            }
        }
        row0 += ch.rows;
    }
    out
}

fn check_selection(kept: &[Vec<usize>], heads: usize, n: usize) -> std::result::Result<(), String> {
    if kept.len() != heads {
        return Err(format!("{} index lists for {heads} KV heads", kept.len()));
    }
    let count = kept[0].len();
    for (h, idx) in kept.iter().enumerate() {
        if idx.len() != count {
            return Err(format!(
                "head {h} keeps {} tokens, head 0 keeps {count}",
                idx.len()
            ));
        }
        if let Some(&bad) = idx.iter().find(|&&i| i >= n) {
            return Err(format!(
                "head {h}: index {bad} out of range for {n} cached tokens"
            ));
        }
        if idx.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!("head {h}: indices are not strictly ascending"));
        }
    }
    Ok(())
}
