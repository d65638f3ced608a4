//! `namm bench`: throughput of the instrumented engine at several batch sizes, and the
//! agreement of one device with another (a GPU against the CPU) on the same model.

use std::time::Instant;

use anyhow::{Context, Result};
use namm::engine::Session;
use namm::evaluate::parse_device;
use namm::model::{Model, ModelSource, WeightFormat, DEFAULT_FORMAT};
use namm::policy::{FullCache, MemoryPolicy, NammPolicy, NormMode, PolicyInputs, PARAM_COUNT};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::output::Format;

/// Prefill and decode throughput of the engine with the attention taps a NAMM needs, rows of
/// one batch at a time; with --parity, logits and kept tokens of this device against another.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// A GGUF file, or `random:SHAPE[:seed=N]` (smollm2-135m or tiny) synthesised in memory
    #[arg(long, env = "NAMM_MODEL", default_value = "random:smollm2-135m")]
    pub model: String,
    /// cpu, cuda or cuda:N
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Weight format (see `namm eval --help`)
    #[arg(long, default_value = DEFAULT_FORMAT, value_parser = parse_format)]
    pub format: WeightFormat,
    /// Prompt tokens per row
    #[arg(long, default_value_t = 2048)]
    pub tokens: usize,
    /// Greedy decode steps after the prompt
    #[arg(long, default_value_t = 16)]
    pub decode: usize,
    /// Batch sizes to measure, comma separated
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub batch: Vec<usize>,
    /// Do not record the attention a NAMM reads (the engine as a plain LLM, for comparisons
    /// with other engines)
    #[arg(long)]
    pub no_taps: bool,
    /// Also run one row on this device (e.g. cpu) and compare: max |Δ| of the logits with the
    /// full cache, then the kept token sets under a NAMM with seeded random parameters
    #[arg(long, value_name = "DEVICE")]
    pub parity: Option<String>,
    /// Format of the --parity model [default: f32, the same arithmetic on any device]
    #[arg(long, value_parser = parse_format)]
    pub parity_format: Option<WeightFormat>,
}

fn parse_format(s: &str) -> std::result::Result<WeightFormat, String> {
    s.parse::<WeightFormat>()
}

#[derive(Debug, Serialize)]
struct Throughput {
    batch: usize,
    attention_taps: bool,
    tokens: usize,
    prefill_secs: f64,
    prefill_tokens_per_sec: f64,
    decode_steps: usize,
    decode_secs: f64,
    decode_tokens_per_sec: f64,
}

#[derive(Debug, Serialize)]
struct Parity {
    device: String,
    against: String,
    format: String,
    tokens: usize,
    /// Over the prompt's last logits and every decode step's, full cache.
    max_abs_logit_diff: f32,
    max_abs_logit: f32,
    same_greedy_tokens: bool,
    /// Under the random NAMM: cached (layer, head, position) entries on one device only.
    kept_entries: usize,
    kept_entries_differing: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    model: String,
    device: String,
    format: String,
    throughput: Vec<Throughput>,
    parity: Option<Parity>,
}

pub fn run(args: &BenchArgs, format: Format) -> Result<()> {
    if args.tokens == 0 {
        anyhow::bail!("--tokens 0: a prompt needs at least one token");
    }
    if let Some(b) = args.batch.iter().find(|&&b| b == 0 || b > 256) {
        anyhow::bail!("--batch {b}: batch sizes go from 1 to 256");
    }
    let source: ModelSource = args.model.parse().context("--model")?;
    let device = parse_device(&args.device).context("--device")?;
    let model = Model::load_source(&source, &device, args.format)
        .with_context(|| format!("--model {source}"))?;
    let context = model.config().context_length;
    if args.tokens + args.decode > context {
        anyhow::bail!(
            "--tokens {} + --decode {} exceed the model's context length {context}",
            args.tokens,
            args.decode
        );
    }
    let mut throughput = Vec::new();
    for &b in &args.batch {
        let t = measure(&model, b, args.tokens, args.decode, !args.no_taps)?;
        if format == Format::Table {
            outln!(
                "batch {:>3}: prefill {:>8.0} tok/s ({:.2} s), decode {:>7.1} tok/s ({} steps, {:.2} s)",
                t.batch,
                t.prefill_tokens_per_sec,
                t.prefill_secs,
                t.decode_tokens_per_sec,
                t.decode_steps,
                t.decode_secs
            );
        }
        throughput.push(t);
    }
    let parity = match &args.parity {
        None => None,
        Some(other) => {
            let pf = args.parity_format.unwrap_or(WeightFormat::F32);
            let other_dev = parse_device(other).context("--parity")?;
            let here = Model::load_source(&source, &device, pf)?;
            let there = Model::load_source(&source, &other_dev, pf)?;
            let p = parity(&here, &there, args, other, pf)?;
            if format == Format::Table {
                outln!(
                    "parity {} vs {} ({}): max |Δ logit| {:.3e} (max |logit| {:.2}), same greedy tokens: {}, kept entries differing {} of {}",
                    p.device,
                    p.against,
                    p.format,
                    p.max_abs_logit_diff,
                    p.max_abs_logit,
                    p.same_greedy_tokens,
                    p.kept_entries_differing,
                    p.kept_entries
                );
            }
            Some(p)
        }
    };
    if format != Format::Table {
        let report = Report {
            model: source.to_string(),
            device: args.device.clone(),
            format: args.format.to_string(),
            throughput,
            parity,
        };
        outln!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

/// Row `r`'s prompt: token ids spread over the vocabulary, different per row.
fn prompt(model: &Model, tokens: usize, row: usize) -> Vec<u32> {
    let vocab = model.config().vocab;
    (0..tokens)
        .map(|i| ((i + 1000 * row) * 7919 % (vocab - 3) + 3) as u32)
        .collect()
}

/// What a NAMM reads: the attention of every chunk (`attention` false: none).
fn taps(attention: bool) -> PolicyInputs {
    PolicyInputs {
        attention,
        key_norms: false,
        surprisal: false,
    }
}

/// `batch` rows of `tokens` prompt tokens through the full cache, with the attention of every
/// chunk recorded if `attention`, then `decode` greedy steps.
fn measure(
    model: &Model,
    batch: usize,
    tokens: usize,
    decode: usize,
    attention: bool,
) -> Result<Throughput> {
    let prompts: Vec<Vec<u32>> = (0..batch).map(|r| prompt(model, tokens, r)).collect();
    let mut sessions = (0..batch)
        .map(|_| Session::new(model, taps(attention)))
        .collect::<namm::engine::Result<Vec<_>>>()?;
    let mut policies: Vec<FullCache> = vec![FullCache; batch];
    let mut rows: Vec<&mut Session> = sessions.iter_mut().collect();
    let mut pols: Vec<&mut dyn MemoryPolicy> = policies
        .iter_mut()
        .map(|p| p as &mut dyn MemoryPolicy)
        .collect();
    let ids: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let start = Instant::now();
    let mut logits = Session::feed_batch(&mut rows, &ids, &mut pols)?;
    let prefill_secs = start.elapsed().as_secs_f64();
    let start = Instant::now();
    for _ in 0..decode {
        let next: Vec<[u32; 1]> = logits.iter().map(|l| [namm::engine::argmax(l)]).collect();
        let next: Vec<&[u32]> = next.iter().map(|t| t.as_slice()).collect();
        logits = Session::feed_batch(&mut rows, &next, &mut pols)?;
    }
    let decode_secs = start.elapsed().as_secs_f64();
    Ok(Throughput {
        batch,
        attention_taps: attention,
        tokens,
        prefill_secs,
        prefill_tokens_per_sec: (batch * tokens) as f64 / prefill_secs,
        decode_steps: decode,
        decode_secs,
        decode_tokens_per_sec: (batch * decode) as f64 / decode_secs.max(1e-9),
    })
}

fn random_namm() -> Result<NammPolicy> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let params = (0..PARAM_COUNT)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    Ok(NammPolicy::new(params, NormMode::accumulate())?)
}

/// One prompt on both models: logits with the full cache (prompt and greedy steps, the second
/// model fed the first one's tokens), then the kept token sets under a random NAMM.
fn parity(
    here: &Model,
    there: &Model,
    args: &BenchArgs,
    other: &str,
    format: WeightFormat,
) -> Result<Parity> {
    let ids = prompt(here, args.tokens, 0);
    let mut full = FullCache;
    let mut a = Session::new(here, taps(true))?;
    let mut b = Session::new(there, taps(true))?;
    let (mut la, mut lb) = (a.feed(&ids, &mut full)?, b.feed(&ids, &mut full)?);
    let (mut diff, mut max, mut same) = (0f32, 0f32, true);
    for step in 0..=args.decode {
        for (x, y) in la.iter().zip(&lb) {
            diff = diff.max((x - y).abs());
            max = max.max(x.abs());
        }
        let (ta, tb) = (namm::engine::argmax(&la), namm::engine::argmax(&lb));
        same &= ta == tb;
        if step < args.decode {
            la = a.feed(&[ta], &mut full)?;
            lb = b.feed(&[ta], &mut full)?;
        }
    }
    let (mut na, mut nb) = (random_namm()?, random_namm()?);
    let mut a = Session::new(here, na.inputs())?;
    let mut b = Session::new(there, nb.inputs())?;
    a.feed(&ids, &mut na)?;
    b.feed(&ids, &mut nb)?;
    let (pa, pb) = (a.positions(), b.positions());
    let (mut entries, mut differing) = (0, 0);
    for (la, lb) in pa.iter().zip(&pb) {
        for (ha, hb) in la.iter().zip(lb) {
            entries += ha.len().max(hb.len());
            differing += ha.iter().filter(|p| hb.binary_search(p).is_err()).count()
                + hb.iter().filter(|p| ha.binary_search(p).is_err()).count();
        }
    }
    Ok(Parity {
        device: args.device.clone(),
        against: other.to_string(),
        format: format.to_string(),
        tokens: args.tokens,
        max_abs_logit_diff: diff,
        max_abs_logit: max,
        same_greedy_tokens: same,
        kept_entries: entries,
        kept_entries_differing: differing,
    })
}
