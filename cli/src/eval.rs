//! `namm eval`: every memory policy on the same prompts of one or more tasks, side by side.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use namm::evaluate::{parse_device, EvalOptions, Evaluator, PrefixReuse, TaskEvaluation};
use namm::model::{ModelSource, WeightFormat, DEFAULT_FORMAT, DEFAULT_MODEL_PATH};
use namm::policy::{parse_policy, MemoryPolicy};
use namm::tasks::TaskSpec;
use serde::Serialize;

use crate::output::Format;

const SPEC_HELP: &str = "\
TASK SPECS  NAME[:KEY=VALUE,...]; len is the templated prompt's length in model tokens
  passkey            len (1024), depth (random, or 0..1), seed
  niah-multikey      len (1024), keys (4: the asked needle + 3 distractors), depth, seed
  kv-retrieval       len (1024) or pairs (a fixed count), depth, seed
  variable-tracking  len (1024), chains (1), hops (4), seed
  common-words       len (1024), top (10), freq, ufreq, seed
  longbench          path (a LongBench-format JSONL file, required), task (dataset name),
                     budget (middle-truncate to this many tokens), chat (true/false)
  A task's seed= replaces --seed. Example: --task passkey:len=1536,depth=0.5

POLICY SPECS  NAME[:KEY=VALUE,...]
  full                                   keep every token
  namm:PATH.safetensors | namm:default   an evolved NAMM (namm:default reads
                                         assets/namm-smollm2-135m.safetensors)
  streaming[:budget=B,sinks=4]           attention sinks + recent window (StreamingLLM)
  h2o[:budget=B,recent=0.5]              accumulated attention + recent (H2O)
  snapkv[:budget=B,window=32,kernel=7]   observation-window attention (SnapKV)
  tova[:budget=B]                        last query's attention (TOVA)
  knorm[:budget=B,recent=0]              lowest key L2 norm kept
  random[:budget=B,seed=0]               uniform random eviction
  B is a fraction of the tokens seen when it has a '.' (0.25), else a token count (512);
  it defaults to 0.25. Policies run every 512 tokens (T = 512, 1024, ...).

COLUMNS  score: 100 x mean per-sample score; kept: mean fraction of the sequence's tokens
  the cache holds at the end; peak KV: largest live K/V size (f32); prefill and decode
  tokens per second (the shared prompt prefix's time counted for every policy); answer
  logp (--answer-likelihood): mean log-probability per token of the gold answer, teacher-forced
  under the policy, '-' without the flag.";

/// Runs memory policies on the same task prompts and compares score, cache size and speed.
#[derive(Debug, Clone, clap::Args)]
#[command(after_long_help = SPEC_HELP)]
pub struct EvalArgs {
    /// The llama GGUF model (relative paths from the working directory; the default also
    /// from the repository), or `random:SHAPE[:seed=N]` (SHAPE smollm2-135m or tiny): a model
    /// of that shape with seeded random weights, synthesised in memory (speed checks only)
    #[arg(long, env = "NAMM_MODEL", default_value = DEFAULT_MODEL_PATH)]
    pub model: PathBuf,
    /// A task spec, e.g. `passkey:len=1024` (repeatable; see the syntax below)
    #[arg(long = "task", value_name = "SPEC", default_value = "passkey", value_parser = parse_task)]
    pub tasks: Vec<TaskSpec>,
    /// Samples per task (indices 0..N); a LongBench file must hold at least N records
    #[arg(long, default_value_t = 10, value_parser = parse_samples)]
    pub samples: usize,
    /// Seed of the task generators
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A memory policy spec, e.g. `h2o:budget=0.25` (repeatable; see the syntax below)
    #[arg(long = "policy", value_name = "SPEC", default_value = "full", value_parser = check_policy)]
    pub policies: Vec<String>,
    /// cpu, cuda or cuda:N (cuda needs a build with the `cuda` feature)
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// How the weights are held: int8+gguf (the file's own Q4_1/Q8_0 blocks against
    /// activations quantised to 8 bits, AVX-512 VNNI integer products: the fastest on CPU,
    /// ~1.3 bytes per weight), f32+gguf (f32 prefill, the file's blocks for decode, ~4.6
    /// bytes per weight; the default before int8+gguf), gguf (as stored, candle's kernels:
    /// exactly candle's quantized_llama numbers, ~10x slower), f32, q8_0 or f32+q8_0
    #[arg(long, default_value = DEFAULT_FORMAT, value_parser = parse_format)]
    pub format: WeightFormat,
    /// Run up to N policies of a sample as rows of one batch (same results; the weights are
    /// read once per decode step for all rows: for GPUs, and CPUs with short prompts)
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    pub batch: u32,
    /// Prefill every policy's prompt from scratch instead of sharing the part before the
    /// first policy invocation (same results, slower)
    #[arg(long)]
    pub no_prefix_reuse: bool,
    /// Also teacher-force each sample's gold answer under every policy (no decoding) and report
    /// its mean log-probability per token: the likelihood fitness's measure (column `answer logp`,
    /// `answer_logprob` in --json). One more pass over each prompt per policy
    #[arg(long)]
    pub answer_likelihood: bool,
}

fn parse_task(s: &str) -> std::result::Result<TaskSpec, String> {
    s.parse::<TaskSpec>().map_err(|e| e.to_string())
}

pub fn parse_format(s: &str) -> std::result::Result<WeightFormat, String> {
    s.parse::<WeightFormat>()
}

/// A policy spec that parses (the policy itself is built again for the run: they hold state).
pub fn check_policy(s: &str) -> std::result::Result<String, String> {
    parse_policy(s)
        .map(|_| s.to_string())
        .map_err(|e| format!("{e:#}"))
}

fn parse_samples(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_SAMPLES).contains(&n) => Ok(n),
        _ => Err(format!("{s:?}: give a count from 1 to {MAX_SAMPLES}")),
    }
}

const MAX_SAMPLES: usize = 1_000_000;

/// Refuses, before any prompt is built, a task whose prompts cannot fit the model's context.
fn check_lengths(tasks: &[TaskSpec], context: usize) -> Result<()> {
    for spec in tasks {
        if let Some(len) = spec.prompt_len().filter(|&len| len > context) {
            anyhow::bail!(
                "--task {spec}: prompts of {len} tokens do not fit the model's context of \
                 {context} tokens"
            );
        }
    }
    Ok(())
}

/// The samples of `task`, refusing a file with fewer records than asked for.
fn task_samples_of(
    evaluator: &Evaluator,
    task: &namm::tasks::Task,
    seed: u64,
    count: usize,
) -> Result<Vec<namm::tasks::Sample>> {
    let samples = evaluator.samples(task, seed, count)?;
    if samples.len() < count {
        anyhow::bail!(
            "--task {}: holds {} samples, fewer than --samples {count}",
            task.spec(),
            samples.len()
        );
    }
    Ok(samples)
}

/// The JSON document `--json` prints.
#[derive(Debug, Serialize)]
struct Report<'a> {
    model: String,
    format: String,
    device: &'a str,
    seed: u64,
    samples: usize,
    prefix_reuse: PrefixReuse,
    results: Vec<&'a namm::evaluate::PolicyEvaluation>,
}

/// `--json` prints one object per (task, policy) with its per-sample results; `--csv` is
/// refused (the per-sample results do not fit a table).
pub fn run(args: &EvalArgs, format: Format) -> Result<()> {
    if format == Format::Csv {
        anyhow::bail!("namm eval prints a table or, with --json, JSON; --csv is not supported");
    }

    let mut policies: Vec<Box<dyn MemoryPolicy>> = args
        .policies
        .iter()
        .map(|spec| parse_policy(spec).with_context(|| format!("--policy {spec}")))
        .collect::<Result<_>>()?;
    let tasks = args
        .tasks
        .iter()
        .map(|spec| spec.load().with_context(|| format!("--task {spec}")))
        .collect::<Result<Vec<_>>>()?;
    let device = parse_device(&args.device).context("--device")?;
    let source = ModelSource::from_arg(&args.model).context("--model")?;
    tracing::info!(model = %source, format = %args.format, device = %args.device, "loading the model");
    let evaluator = Evaluator::load_source(&source, &device, args.format)?;
    check_lengths(&args.tasks, evaluator.model().config().context_length)?;

    let mut task_samples = Vec::with_capacity(tasks.len());
    for task in &tasks {
        task_samples.push(task_samples_of(&evaluator, task, args.seed, args.samples)?);
    }
    let total: usize = task_samples.iter().map(Vec::len).sum::<usize>() * policies.len();
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(total as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} generations, eta {eta}  {msg}",
            )
            .expect("a valid progress template")
            .progress_chars("=> "),
        );
        bar
    });

    let opts = EvalOptions {
        prefix_reuse: !args.no_prefix_reuse,
        batch: args.batch as usize,
        answer_likelihood: args.answer_likelihood,
    };
    let mut evaluations: Vec<TaskEvaluation> = Vec::with_capacity(tasks.len());
    let mut done = 0usize;
    for (task, samples) in tasks.iter().zip(&task_samples) {
        let name = task.spec().to_string();
        let mut on_result = |r: &namm::evaluate::SampleResult| {
            done += 1;
            let line = format!(
                "{} {}: score {:.2}, kept {:.3}, {} prompt tokens",
                r.id, r.policy, r.score, r.kept_fraction, r.prompt_tokens
            );
            match &bar {
                Some(bar) => {
                    bar.set_message(line);
                    bar.inc(1);
                }
                None => tracing::info!("[{done}/{total}] {line}"),
            }
        };
        evaluations.push(evaluator.evaluate(
            &name,
            samples,
            &mut policies,
            &opts,
            &mut on_result,
        )?);
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }

    let mut reuse = PrefixReuse::default();
    for e in &evaluations {
        reuse.add(&e.prefix_reuse);
    }
    if format == Format::Json {
        let report = Report {
            model: source.to_string(),
            format: args.format.to_string(),
            device: &args.device,
            seed: args.seed,
            samples: args.samples,
            prefix_reuse: reuse,
            results: evaluations.iter().flat_map(|e| &e.policies).collect(),
        };
        outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&evaluations);
        if reuse.samples > 0 {
            outln!(
                "shared prefix: {} tokens over {} prompts prefilled once ({:.1} s), saving {:.1} s",
                reuse.prefix_tokens,
                reuse.samples,
                reuse.prefix_secs,
                reuse.saved_secs
            );
        }
    }
    Ok(())
}

fn print_table(evaluations: &[TaskEvaluation]) {
    let rows: Vec<[String; 9]> = evaluations
        .iter()
        .flat_map(|e| &e.policies)
        .map(|p| {
            [
                p.task.clone(),
                p.policy.clone(),
                p.samples.to_string(),
                format!("{:.1}", p.score),
                format!("{:.3}", p.mean_kept_fraction),
                format!("{:.2}", p.peak_kv_mib),
                format!("{:.0}", p.prefill_tokens_per_sec),
                format!("{:.1}", p.decode_tokens_per_sec),
                p.mean_answer_logprob
                    .map_or_else(|| "-".to_string(), |l| format!("{l:.3}")),
            ]
        })
        .collect();
    let header = [
        "task",
        "policy",
        "samples",
        "score",
        "kept",
        "peak KV MiB",
        "prefill tok/s",
        "decode tok/s",
        "answer logp",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[&str]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i < 2 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        outln!("{}", parts.join("  ").trim_end());
    };
    line(&header);
    for row in &rows {
        line(&row.iter().map(String::as_str).collect::<Vec<_>>());
    }
}
