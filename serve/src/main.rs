//! `namm-serve`: an OpenAI-compatible HTTP server for a local GGUF model whose KV cache a
//! memory policy manages (a NAMM, or any baseline `namm eval` knows). Requests in flight run
//! as rows of one batch on one engine thread; see `scheduler`.

mod http;
mod metrics;
mod openai;
mod request;
mod scheduler;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use namm::evaluate::{parse_device, Evaluator};
use namm::model::{ModelSource, WeightFormat, DEFAULT_FORMAT, DEFAULT_MODEL_PATH};
use namm::policy::parse_policy;
use namm_proto::bearer::BearerToken;
use tokio::sync::mpsc;

use crate::http::App;
use crate::metrics::Metrics;
use crate::request::Defaults;
use crate::scheduler::{Scheduler, Shutdown};

#[derive(Parser, Debug)]
#[command(
    name = "namm-serve",
    version,
    about = "Serve a local GGUF model over the OpenAI API (POST /v1/chat/completions, POST /v1/completions, GET /v1/models; GET /health, GET /metrics) with a memory policy managing its KV cache",
    after_long_help = "A request may pick another memory policy with the extra field \
\"memory_policy\" (any baseline spec, or namm:default; a NAMM file only if it is the server's \
own --policy). `usage` carries OpenAI's counts plus kept_fraction, peak_kv_bytes, \
full_kv_bytes and memory_policy. SIGTERM or Ctrl-C: stop accepting, let requests in flight \
finish for --shutdown-grace seconds, cancel the rest (each is logged)."
)]
struct Args {
    /// The llama GGUF model, or `random:SHAPE[:seed=N]` (tests and speed checks only)
    #[arg(long, env = "NAMM_MODEL", default_value = DEFAULT_MODEL_PATH)]
    model: PathBuf,
    /// The memory policy of requests that do not choose one (`namm:default`,
    /// `snapkv:budget=0.25`, `full`, ...; see `namm eval --help`)
    #[arg(long, default_value = "full")]
    policy: String,
    /// Address to listen on; anything but loopback needs --token or --insecure
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Shared secret clients send as `authorization: Bearer TOKEN` (all routes but /health)
    #[arg(
        long,
        env = "NAMM_SERVE_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// Read the token from the first line of this file
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Listen on a non-loopback address without a token (trusted networks only)
    #[arg(long)]
    insecure: bool,
    /// Requests generated at once, as rows of one batch
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
    max_concurrent: u32,
    /// Requests waiting for a row; beyond it a request gets 503
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_queue: u32,
    /// Largest request body; larger ones get 413
    #[arg(long, default_value_t = 4 << 20, value_parser = clap::value_parser!(u64).range(1024..=1 << 30))]
    max_body_bytes: u64,
    /// Tokens generated for a request that gives no max_tokens (the context bounds it too)
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_tokens: u32,
    /// Temperature of a request that gives none (OpenAI's default, 1); 0 is greedy
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Prompt tokens a joining request feeds per batch step, so that the rows already
    /// decoding keep going while it prefills
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    prefill_slice: u32,
    /// Seconds requests in flight may take to finish after SIGTERM before they are cancelled
    #[arg(long, default_value_t = 30)]
    shutdown_grace: u64,
    /// How the weights are held (as `namm eval --format`)
    #[arg(long, default_value = DEFAULT_FORMAT)]
    format: WeightFormat,
    /// cpu, cuda or cuda:N (cuda needs a build with the `cuda` feature)
    #[arg(long, default_value = "cpu")]
    device: String,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Args::parse()).await {
        eprintln!("namm-serve: {e:#}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<()> {
    let token = token(&args)?;
    if token.is_none() && !args.listen.ip().is_loopback() && !args.insecure {
        anyhow::bail!(
            "--listen {}: serving a non-loopback address needs --token (or --insecure on a trusted network)",
            args.listen
        );
    }
    parse_policy(&args.policy).with_context(|| format!("--policy {}", args.policy))?;
    namm::engine::Sampling {
        temperature: args.temperature,
        ..namm::engine::Sampling::GREEDY
    }
    .check()
    .map_err(|e| anyhow::anyhow!("--temperature: {e}"))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}", args.listen))?;
    let source = ModelSource::from_arg(&args.model).context("--model")?;
    let device = parse_device(&args.device).context("--device")?;
    tracing::info!(model = %source, format = %args.format, "loading the model");
    let evaluator = Arc::new(Evaluator::load_source(&source, &device, args.format)?);
    let model_id = model_id(&source);

    let metrics = Arc::new(Metrics::new());
    let shutdown = Arc::new(Shutdown::default());
    let (jobs, queue) = mpsc::channel(args.max_queue as usize);
    let scheduler = Scheduler {
        evaluator: Arc::clone(&evaluator),
        jobs: queue,
        max_concurrent: args.max_concurrent as usize,
        prefill_slice: args.prefill_slice as usize,
        metrics: Arc::clone(&metrics),
        shutdown: Arc::clone(&shutdown),
    };
    let engine = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || scheduler.run())
        .context("starting the engine thread")?;
    let app = Arc::new(App {
        evaluator,
        jobs,
        defaults: Defaults {
            model: model_id.clone(),
            policy: args.policy.clone(),
            temperature: args.temperature,
            max_tokens: args.max_tokens as usize,
        },
        metrics: Arc::clone(&metrics),
        token,
        shutdown: Arc::clone(&shutdown),
        max_queue: args.max_queue as usize,
        started: http::now(),
        next_id: AtomicU64::new(0),
    });
    let router = http::router(app, args.max_body_bytes as usize);
    tracing::info!(listen = %listener.local_addr()?, model = %model_id, policy = %args.policy, "serving");
    let grace = Duration::from_secs(args.shutdown_grace);
    let stopping = {
        let metrics = Arc::clone(&metrics);
        async move {
            stop_signal().await;
            tracing::warn!(
                in_flight = metrics.in_flight.get(),
                queued = metrics.queued.get(),
                "shutting down: no new requests; those in flight may finish within {grace:?}, then are cancelled"
            );
            shutdown.begin(grace);
        }
    };
    axum::serve(listener, router)
        .with_graceful_shutdown(stopping)
        .await
        .context("serving HTTP")?;
    engine
        .join()
        .map_err(|_| anyhow::anyhow!("the engine thread panicked"))?;
    tracing::info!(cancelled = metrics.cancelled.get(), "stopped");
    Ok(())
}

fn token(args: &Args) -> Result<Option<BearerToken>> {
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("--token-file {}", file.display()))?;
            Some(text.lines().next().unwrap_or("").trim().to_string())
        }
        (None, None) => None,
    };
    match token {
        Some(t) if t.is_empty() => anyhow::bail!("--token/--token-file: the token is empty"),
        Some(t) => Ok(Some(BearerToken::new(&t))),
        None => Ok(None),
    }
}

/// What `/v1/models` lists and requests name: the GGUF's file name without `.gguf`.
fn model_id(source: &ModelSource) -> String {
    match source {
        ModelSource::File(path) => path.file_stem().map_or_else(
            || path.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        ),
        ModelSource::Random(m) => m.to_string(),
    }
}

async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
