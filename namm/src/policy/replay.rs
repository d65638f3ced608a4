//! Replay of recorded policy inputs in the golden-vector schema (`spec/golden/README.md`):
//! runs every pass and invocation through this implementation and returns, in the same
//! schema, what it computes (`spec_ema_raw`, `features`, `scores`, `retained_idxs`,
//! `kept_positions`, and the normalisation statistics of accumulating passes).
//!
//! Passes are the top-level objects holding `invocations` (processed in key order), or the
//! file itself when it holds `invocations`. Per pass:
//! * θ: the pass's `params`; zeros when the pass name contains `zero_params`; otherwise the
//!   file's `params` or `params_random`.
//! * statistics: a pass whose name contains `running_norm` accumulates from empty (spec
//!   §4.4) and reports `norm_stats_after` and `norm_stats_after_merge`; any other pass
//!   normalises with the persistent set (`output_mean`, `output_var`, `output_num`) of its
//!   own `norm_stats`, else the file's `norm_stats`, else the merged set of the last
//!   accumulating pass before it.
//! * attention with more heads than KV heads is averaged per group (`common.kv_groups`, or
//!   the attention's head count over `common.n_kv_heads`).
//!
//! [`ReplayOptions::params`] replaces θ of every pass, and the statistics of every pass that
//! does not accumulate its own, with those of a parameter file.

use std::io::Read;
use std::path::Path;

use serde_json::{json, Map, Value};

use super::error::PolicyError;
use super::features::{FEATURE_DIM, N_BINS};
use super::gqa::gqa_mean;
use super::layout::PARAM_COUNT;
use super::namm::{Invocation, NammCore, NormMode};
use super::params_file::NammParams;
use super::real::Real;
use crate::stats::NormStats;

/// Float type of the replayed computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// The golden-parity path.
    #[default]
    F64,
    /// The production path (inputs rounded to f32).
    F32,
}

/// Reads a JSON file, gunzipping it when it starts with the gzip magic bytes.
pub fn read_json(path: &Path) -> Result<Value, PolicyError> {
    let io = |error| PolicyError::Io {
        path: path.to_path_buf(),
        error,
    };
    let raw = std::fs::read(path).map_err(io)?;
    let text = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut s = String::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_string(&mut s)
            .map_err(io)?;
        s
    } else {
        String::from_utf8(raw).map_err(|e| PolicyError::File {
            path: path.to_path_buf(),
            reason: format!("not UTF-8 text: {e}"),
        })?
    };
    serde_json::from_str(&text).map_err(|e| PolicyError::File {
        path: path.to_path_buf(),
        reason: format!("invalid JSON: {e}"),
    })
}

/// How to replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    pub precision: Precision,
    /// θ and frozen statistics that replace the recording's.
    pub params: Option<NammParams>,
}

/// How attention heads map to KV heads.
#[derive(Debug, Clone, Copy)]
enum Groups {
    /// Query heads per KV head.
    Size(usize),
    /// KV heads; the group size follows from the attention's head count.
    KvHeads(usize),
}

/// Replays the file at `path` (`.json` or gzipped).
pub fn replay_file(path: &Path, options: &ReplayOptions) -> Result<Value, PolicyError> {
    replay(&read_json(path)?, options)
}

/// Replays a parsed golden-schema document.
pub fn replay(doc: &Value, options: &ReplayOptions) -> Result<Value, PolicyError> {
    let top = doc
        .as_object()
        .ok_or_else(|| err("$", "the document is not a JSON object"))?;
    let common = top.get("common");
    let groups = match (
        common.and_then(|c| c.get("kv_groups")),
        common.and_then(|c| c.get("n_kv_heads")),
    ) {
        (Some(v), _) => Groups::Size(as_usize(v, "$.common.kv_groups")?),
        (None, Some(v)) => Groups::KvHeads(as_usize(v, "$.common.n_kv_heads")?),
        (None, None) => Groups::Size(1),
    };
    if top.contains_key("invocations") {
        let mut merged = None;
        return run_pass(doc, "", top, groups, options, &mut merged).map(Value::Object);
    }
    let mut names: Vec<&String> = top
        .iter()
        .filter(|(_, v)| v.get("invocations").is_some())
        .map(|(k, _)| k)
        .collect();
    if names.is_empty() {
        return Err(err("$", "no pass: no object holds `invocations`"));
    }
    names.sort();
    let mut out = Map::new();
    let mut merged = None;
    for name in names {
        let pass = run_pass(&top[name], name, top, groups, options, &mut merged)?;
        out.insert(name.clone(), Value::Object(pass));
    }
    Ok(Value::Object(out))
}

fn err(at: impl Into<String>, reason: impl Into<String>) -> PolicyError {
    PolicyError::Replay {
        at: at.into(),
        reason: reason.into(),
    }
}

fn run_pass(
    pass: &Value,
    name: &str,
    top: &Map<String, Value>,
    groups: Groups,
    options: &ReplayOptions,
    merged: &mut Option<NormStats>,
) -> Result<Map<String, Value>, PolicyError> {
    let at = if name.is_empty() {
        "$".to_string()
    } else {
        format!("$.{name}")
    };
    let params = match &options.params {
        Some(file) => file.params.iter().map(|&v| v as f64).collect(),
        None => pass_params(pass, name, top, &at)?,
    };
    let accumulate = name.contains("running_norm");
    let norm = if accumulate {
        NormMode::accumulate()
    } else if let Some(file) = &options.params {
        file.norm_mode()
    } else if let Some(s) = pass.get("norm_stats") {
        NormMode::Frozen(persistent_stats(s, &format!("{at}.norm_stats"))?)
    } else if let Some(s) = top.get("norm_stats") {
        NormMode::Frozen(persistent_stats(s, "$.norm_stats")?)
    } else if let Some(s) = merged.clone() {
        NormMode::Frozen(s)
    } else {
        return Err(err(
            at,
            "no normalisation statistics: neither `norm_stats` nor an earlier `running_norm` pass",
        ));
    };
    let invocations = pass["invocations"]
        .as_array()
        .ok_or_else(|| err(format!("{at}.invocations"), "not an array"))?;
    let (outputs, running) = match options.precision {
        Precision::F64 => replay_invocations::<f64>(&params, norm, invocations, groups, &at)?,
        Precision::F32 => replay_invocations::<f32>(&params, norm, invocations, groups, &at)?,
    };
    let mut out = Map::new();
    out.insert("invocations".into(), Value::Array(outputs));
    if accumulate {
        let persistent = NormStats::empty(N_BINS);
        let after_merge = persistent.merge(&running)?;
        out.insert("norm_stats_after".into(), stats_json(&running, &persistent));
        out.insert(
            "norm_stats_after_merge".into(),
            stats_json(&NormStats::empty(N_BINS), &after_merge),
        );
        *merged = Some(after_merge);
    }
    Ok(out)
}

fn pass_params(
    pass: &Value,
    name: &str,
    top: &Map<String, Value>,
    at: &str,
) -> Result<Vec<f64>, PolicyError> {
    if let Some(p) = pass.get("params") {
        return param_vec(p, &format!("{at}.params"));
    }
    let file_params = top
        .get("params")
        .map(|p| ("$.params", p))
        .or_else(|| top.get("params_random").map(|p| ("$.params_random", p)));
    if name.contains("zero_params") {
        let len = match file_params {
            Some((where_, p)) => param_vec(p, where_)?.len(),
            None => PARAM_COUNT,
        };
        return Ok(vec![0.0; len]);
    }
    match file_params {
        Some((where_, p)) => param_vec(p, where_),
        None => Err(err(
            at,
            "no parameters: no `params` in the pass or the file",
        )),
    }
}

/// θ as recorded (float64 in the golden files); the f32 path rounds it like production.
fn param_vec(v: &Value, at: &str) -> Result<Vec<f64>, PolicyError> {
    Ok(flatten(v, at)?.0)
}

fn persistent_stats(v: &Value, at: &str) -> Result<NormStats, PolicyError> {
    let field = |k: &str| -> Result<Vec<f64>, PolicyError> {
        let f = v.get(k).ok_or_else(|| err(at, format!("missing `{k}`")))?;
        Ok(flatten(f, &format!("{at}.{k}"))?.0)
    };
    let count = field("output_num")?;
    let stats = NormStats::new(
        field("output_mean")?,
        field("output_var")?,
        count.first().copied().unwrap_or(0.0),
    )?;
    if stats.dim() != N_BINS {
        return Err(err(
            at,
            format!("{} features, expected {N_BINS}", stats.dim()),
        ));
    }
    Ok(stats)
}

fn stats_json(running: &NormStats, persistent: &NormStats) -> Value {
    let num = |s: &NormStats| vec![s.count; s.dim()];
    json!({
        "online_new_output_mean": running.mean,
        "online_new_output_var": running.var,
        "online_new_output_num": num(running),
        "output_mean": persistent.mean,
        "output_var": persistent.var,
        "output_num": num(persistent),
    })
}

fn replay_invocations<T: Real>(
    params: &[f64],
    norm: NormMode,
    invocations: &[Value],
    groups: Groups,
    at: &str,
) -> Result<(Vec<Value>, NormStats), PolicyError> {
    let theta: Vec<T> = params.iter().map(|&v| T::from_f64(v)).collect();
    let mut core = NammCore::<T>::new(&theta, norm)?;
    // Per layer, per head: absolute positions of the tokens this replay kept.
    let mut kept_pos: Vec<Vec<Vec<u32>>> = Vec::new();
    let mut outputs = Vec::with_capacity(invocations.len());
    for (t, inv) in invocations.iter().enumerate() {
        let at = format!("{at}.invocations[{t}]");
        let n_new = as_usize(&inv["num_new_tokens"], &format!("{at}.num_new_tokens"))?;
        let (new_pos, _) = flatten(&inv["new_positions"], &format!("{at}.new_positions"))?;
        if new_pos.len() != n_new {
            return Err(err(
                &at,
                format!("{} new positions for {n_new} new tokens", new_pos.len()),
            ));
        }
        let new_pos: Vec<u32> = new_pos.iter().map(|&p| p as u32).collect();
        let inputs = inv["inputs"]
            .as_array()
            .ok_or_else(|| err(format!("{at}.inputs"), "not an array"))?;
        let mut layer_out = Vec::with_capacity(inputs.len());
        for (layer, input) in inputs.iter().enumerate() {
            let at = format!("{at}.inputs[{layer}]");
            let n_old = as_usize(&input["n_old"], &format!("{at}.n_old"))?;
            let (attn, shape) = flatten(&input["attn"], &format!("{at}.attn"))?;
            if shape.len() != 3 || shape[1] != n_new || shape[2] != n_old + n_new {
                return Err(err(
                    format!("{at}.attn"),
                    format!(
                        "shape {shape:?}, expected [heads, {n_new}, {}]",
                        n_old + n_new
                    ),
                ));
            }
            let attn: Vec<T> = attn.into_iter().map(T::from_f64).collect();
            let groups = match groups {
                Groups::Size(g) => g,
                Groups::KvHeads(h) if h > 0 && shape[0].is_multiple_of(h) => shape[0] / h,
                Groups::KvHeads(h) => {
                    return Err(err(
                        format!("{at}.attn"),
                        format!(
                            "{} attention heads do not group into {h} KV heads",
                            shape[0]
                        ),
                    ))
                }
            };
            let attn = gqa_mean(&attn, shape[0], groups)?;
            let heads = shape[0] / groups;
            let n = n_old + n_new;
            if layer >= kept_pos.len() {
                kept_pos.resize(layer + 1, Vec::new());
            }
            let store = &mut kept_pos[layer];
            if n_old == 0 {
                *store = vec![Vec::new(); heads];
            }
            if store.len() != heads || store.iter().any(|p| p.len() != n_old) {
                return Err(err(
                    format!("{at}.n_old"),
                    format!(
                        "the recording has {n_old} surviving tokens but this implementation kept {}",
                        store.first().map_or(0, Vec::len)
                    ),
                ));
            }
            let positions: Vec<u32> = store
                .iter()
                .flat_map(|p| p.iter().chain(&new_pos).copied())
                .collect();
            let kept = core.invoke(&Invocation {
                layer,
                n_heads: heads,
                n_tokens: n,
                n_new,
                attn: &attn,
                positions: &positions,
                surprisal: &[],
            })?;
            *store = kept
                .iter()
                .enumerate()
                .map(|(h, idx)| idx.iter().map(|&j| positions[h * n + j]).collect())
                .collect();
            layer_out.push(json!({
                "layer": layer,
                "n_all": n,
                "spec_ema_raw": nest3(core.spec_ema_raw(), heads, n, N_BINS),
                "features": nest3(core.features(), heads, n, FEATURE_DIM),
                "scores": core.scores().chunks(n).map(|r| r.iter().map(|v| v.to_f64()).collect::<Vec<_>>()).collect::<Vec<_>>(),
                "retained_idxs": kept,
                "kept_positions": store.clone(),
            }));
        }
        outputs.push(json!({
            "invocation": inv.get("invocation").cloned().unwrap_or(json!(t)),
            "num_new_tokens": n_new,
            "new_positions": new_pos,
            "outputs": layer_out,
        }));
    }
    Ok((outputs, core.norm().stats().clone()))
}

fn nest3<T: Real>(flat: &[T], a: usize, b: usize, c: usize) -> Vec<Vec<Vec<f64>>> {
    debug_assert_eq!(flat.len(), a * b * c);
    (0..a)
        .map(|i| {
            (0..b)
                .map(|j| {
                    flat[(i * b + j) * c..(i * b + j + 1) * c]
                        .iter()
                        .map(|v| v.to_f64())
                        .collect()
                })
                .collect()
        })
        .collect()
}

fn as_usize(v: &Value, at: &str) -> Result<usize, PolicyError> {
    v.as_u64()
        .map(|x| x as usize)
        .ok_or_else(|| err(at, format!("expected a non-negative integer, found {v}")))
}

/// A nested list of numbers as a flat row-major vector and its (rectangular) shape.
pub fn flatten(v: &Value, at: &str) -> Result<(Vec<f64>, Vec<usize>), PolicyError> {
    let mut shape = Vec::new();
    let mut probe = v;
    while let Value::Array(a) = probe {
        shape.push(a.len());
        match a.first() {
            Some(first) => probe = first,
            None => break,
        }
    }
    let mut flat = Vec::with_capacity(shape.iter().product());
    fill(v, &shape, &mut flat, at)?;
    Ok((flat, shape))
}

fn fill(v: &Value, shape: &[usize], out: &mut Vec<f64>, at: &str) -> Result<(), PolicyError> {
    match (v, shape.split_first()) {
        (Value::Array(a), Some((&len, rest))) if a.len() == len => {
            a.iter().try_for_each(|x| fill(x, rest, out, at))
        }
        (Value::Number(n), None) => {
            out.push(n.as_f64().unwrap_or(f64::NAN));
            Ok(())
        }
        _ => Err(err(at, "not a rectangular array of numbers")),
    }
}
