//! `namm generate`: one answer from a local model under a memory policy, streamed as it is
//! decoded, with what the policy saved.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use anyhow::{Context, Result};
use namm::engine::{step, Sampling, StopReason, Stream};
use namm::evaluate::{parse_device, Evaluator};
use namm::model::{ModelSource, WeightFormat, DEFAULT_FORMAT, DEFAULT_MODEL_PATH};
use namm::policy::parse_policy;
use namm::tokenizer::TextStream;
use serde::Serialize;

use crate::output::Format;

/// Generates text from a prompt with a local model under a memory policy.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    /// The llama GGUF model, or `random:SHAPE[:seed=N]` (speed checks only)
    #[arg(long, env = "NAMM_MODEL", default_value = DEFAULT_MODEL_PATH)]
    pub model: PathBuf,
    /// The memory policy (any spec `namm eval --policy` takes, e.g. `namm:default` or
    /// `snapkv:budget=0.25`)
    #[arg(long, value_name = "SPEC", default_value = "full", value_parser = crate::eval::check_policy)]
    pub policy: String,
    /// The prompt; without it and --prompt-file the prompt is read from stdin
    #[arg(long, conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from this file
    #[arg(long, value_name = "FILE")]
    pub prompt_file: Option<PathBuf>,
    /// Wrap the prompt as a user turn of the GGUF's chat template (the default for models
    /// that have one)
    #[arg(long, overrides_with = "no_chat")]
    pub chat: bool,
    /// Feed the prompt as it is, without the chat template
    #[arg(long)]
    pub no_chat: bool,
    /// A system turn instead of the template's default one (with the chat template)
    #[arg(long)]
    pub system: Option<String>,
    /// Most tokens to generate (the model's context bounds it too)
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_tokens: u32,
    /// Sampling temperature; 0 is greedy decoding
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling: draw from the most likely tokens whose probabilities sum to this
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Seed of the draws (with a temperature above 0)
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// How the weights are held (as `namm eval --format`)
    #[arg(long, default_value = DEFAULT_FORMAT, value_parser = crate::eval::parse_format)]
    pub format: WeightFormat,
    /// cpu, cuda or cuda:N (cuda needs a build with the `cuda` feature)
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// What `--json` prints, and the figures the stderr summary shows.
#[derive(Debug, Serialize)]
struct Report {
    text: String,
    policy: String,
    finish_reason: &'static str,
    prompt_tokens: usize,
    generated_tokens: usize,
    kept_fraction: f64,
    peak_kv_bytes: usize,
    full_kv_bytes: usize,
    prefill_tokens_per_sec: f64,
    decode_tokens_per_sec: f64,
}

pub fn run(args: &GenerateArgs, format: Format) -> Result<()> {
    if format == Format::Csv {
        anyhow::bail!("namm generate prints text or, with --json, JSON; --csv is not supported");
    }
    let sampling = Sampling {
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
    };
    sampling
        .check()
        .map_err(|e| anyhow::anyhow!("--temperature/--top-p: {e}"))?;
    let policy = parse_policy(&args.policy).with_context(|| format!("--policy {}", args.policy))?;
    let text = prompt_text(args)?;
    let device = parse_device(&args.device).context("--device")?;
    let source = ModelSource::from_arg(&args.model).context("--model")?;
    tracing::info!(model = %source, format = %args.format, "loading the model");
    let evaluator = Evaluator::load_source(&source, &device, args.format)?;
    let tokenizer = evaluator.tokenizer();
    let chat = !args.no_chat && (args.chat || tokenizer.chat_template().present);
    let rendered = match (chat, &args.system) {
        (true, Some(system)) => tokenizer.chat_prompt_with_system(system, &text),
        (true, None) => tokenizer.chat_prompt(&text),
        (false, _) => text,
    };
    let ids = evaluator.prompt_ids("prompt", &rendered)?;
    let mut stream = Stream::new(
        evaluator.model(),
        ids,
        policy,
        sampling,
        args.max_tokens as usize,
        tokenizer.stop_ids().to_vec(),
    )?;
    let show = format != Format::Json;
    let mut pieces = TextStream::new(true);
    let mut answer = String::new();
    let stopped = loop {
        let done = step(&mut [&mut stream], usize::MAX)?.remove(0);
        if let Some(token) = done.token {
            let piece = pieces.push(tokenizer, token)?;
            if show {
                out!("{piece}");
            }
            answer.push_str(&piece);
        }
        if let Some(reason) = done.stopped {
            break reason;
        }
    };
    let tail = pieces.finish();
    answer.push_str(&tail);
    if show {
        outln!("{tail}");
    }
    let stats = stream.stats();
    let report = Report {
        text: answer,
        policy: stream.policy_name(),
        finish_reason: finish_reason(stopped),
        prompt_tokens: stats.prompt_tokens,
        generated_tokens: stats.generated_tokens,
        kept_fraction: stats.kept_fraction,
        peak_kv_bytes: stats.peak_kv_bytes,
        full_kv_bytes: stats.full_kv_bytes,
        prefill_tokens_per_sec: stats.prefill_tokens_per_sec(),
        decode_tokens_per_sec: stats.decode_tokens_per_sec(),
    };
    if show {
        eprintln!(
            "{}: {} prompt tokens, {} generated ({}); kept {:.3} of the cache, peak KV {:.2} MiB \
             of {:.2} MiB for the full cache; prefill {:.0} tok/s, decode {:.1} tok/s",
            report.policy,
            report.prompt_tokens,
            report.generated_tokens,
            report.finish_reason,
            report.kept_fraction,
            mib(report.peak_kv_bytes),
            mib(report.full_kv_bytes),
            report.prefill_tokens_per_sec,
            report.decode_tokens_per_sec
        );
    } else {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

/// OpenAI's names: `stop` for a stop token, `length` for a token or context limit.
pub fn finish_reason(reason: StopReason) -> &'static str {
    match reason {
        StopReason::StopToken(_) => "stop",
        StopReason::MaxTokens | StopReason::ContextFull => "length",
    }
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn prompt_text(args: &GenerateArgs) -> Result<String> {
    let text = match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(file)) => std::fs::read_to_string(file)
            .with_context(|| format!("--prompt-file {}", file.display()))?,
        (None, None) => {
            if std::io::stdin().is_terminal() {
                eprintln!("reading the prompt from stdin (end it with Ctrl-D)");
            }
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the prompt from stdin")?;
            text
        }
    };
    if text.trim().is_empty() {
        anyhow::bail!(
            "the prompt is empty: give --prompt TEXT, --prompt-file FILE or text on stdin"
        );
    }
    Ok(text)
}
