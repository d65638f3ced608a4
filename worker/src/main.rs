//! `namm-worker`: the worker daemon.

use anyhow::Context;
use clap::Parser;
use namm::model::{ModelSource, WeightFormat, DEFAULT_FORMAT};
use namm_worker::auth::{parse_timeout, resolve_token, ClientAuth, Timeouts};
use namm_worker::llm::Llm;
use namm_worker::WorkerConfig;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "namm-worker",
    version,
    about = "A namm worker: leases work units from a coordinator, evaluates them, reports"
)]
struct Cli {
    /// Coordinator address.
    #[arg(long, default_value = "127.0.0.1:50051", value_name = "HOST:PORT")]
    coordinator: String,
    /// Name shown in `namm workers` (default: host name and process id).
    #[arg(long)]
    name: Option<String>,
    /// Batches leased and evaluated at once (each on its own thread).
    #[arg(long, default_value_t = 1)]
    slots: u32,
    /// Candidates one batch may hold: NAMM units of the same prompts run as rows of one batch
    /// through the model (every row keeps its own cache; results equal one at a time). The
    /// coordinator hands out up to slots × N units per lease. Meant for GPUs; on a small CPU
    /// it speeds up decoding of short prompts only (README, "GPU build").
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    batch: u32,
    /// Add this much time to every evaluation (emulates a slow objective in tests and demos).
    #[arg(long, default_value_t = 0, value_name = "MS", hide = true)]
    eval_delay_ms: u64,
    /// Shared secret of the coordinator (sent as `authorization: Bearer TOKEN`).
    #[arg(
        long,
        env = "NAMM_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// Read the token from the first line of this file.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Connect over TLS, trusting the CA (or self-signed certificate) in this PEM file.
    #[arg(long, value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// GGUF model to evaluate NAMM units on. Its sha256 is sent at registration and the
    /// coordinator hands this worker only the runs made for that model. Without it the
    /// worker takes benchmark units only. `random:SHAPE[:seed=N]` (SHAPE smollm2-135m or
    /// tiny) synthesises a model of that shape with seeded random weights in memory, for
    /// speed checks without the download; its sha256 is logged at start.
    #[arg(long, env = "NAMM_MODEL", value_name = "PATH")]
    model: Option<String>,
    /// How the model's weights are held in memory (as `namm eval --format`): int8+gguf (the
    /// file's blocks in 8-bit integer products; the fastest on a CPU), f32+gguf, gguf (as
    /// stored, candle's kernels), f32, q8_0 or f32+q8_0.
    #[arg(long, default_value = DEFAULT_FORMAT, value_parser = parse_format)]
    format: WeightFormat,
    /// Where the model runs: cpu, cuda or cuda:N (cuda needs a build with the `cuda`
    /// feature). Reported at registration; `namm workers` shows it.
    #[arg(long, default_value = "cpu", requires = "model")]
    device: String,
    /// Prompts whose tokens and shared prefix (the cache before the first policy call at token
    /// 512, identical for every candidate) are kept for the next candidates; ~70 MB each.
    #[arg(long, default_value_t = 32, value_name = "N")]
    prompt_cache: usize,
    /// Longest wait for a connection to the coordinator, in seconds.
    #[arg(long, default_value = "5", value_name = "SECS", value_parser = parse_timeout)]
    connect_timeout: Duration,
    /// Longest wait for the coordinator's answer to one call, in seconds (a lease waits up to
    /// 5 s for work; a report that ends a generation waits for its tell); a call that times
    /// out counts as an unreachable coordinator and is retried.
    #[arg(long, default_value = "120", value_name = "SECS", value_parser = parse_timeout)]
    request_timeout: Duration,
    /// Stop when process PID, which started this one, exits (local workers of `namm-coord`;
    /// the pid is given, not read at start, so a parent gone before then is noticed too).
    #[arg(long, hide = true, value_name = "PID")]
    exit_with_parent: Option<u32>,
}

fn parse_format(s: &str) -> Result<WeightFormat, String> {
    s.parse::<WeightFormat>().map_err(|e| e.to_string())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if cli.slots == 0 || cli.slots > 1024 {
        anyhow::bail!("--slots {}: must be between 1 and 1024", cli.slots);
    }
    let auth = ClientAuth {
        token: resolve_token(cli.token, cli.token_file.as_deref())?,
        tls_ca: cli.tls_ca,
        timeouts: Timeouts {
            connect: cli.connect_timeout,
            request: cli.request_timeout,
        },
    };
    // A bad address fails before the model loads, not seconds later.
    auth.endpoint(&cli.coordinator)
        .with_context(|| format!("--coordinator {:?}", cli.coordinator))?;
    let llm = match &cli.model {
        Some(spec) => {
            let started = std::time::Instant::now();
            let source: ModelSource = spec.parse().with_context(|| format!("--model {spec}"))?;
            let llm = Llm::load(&source, &cli.device, cli.format, cli.prompt_cache)?;
            tracing::info!(model = %source, sha256 = %llm.sha256(), format = %cli.format, device = %llm.device(), secs = started.elapsed().as_secs_f64(), "model loaded");
            Some(Arc::new(llm))
        }
        None => None,
    };
    let cfg = WorkerConfig {
        coordinator: cli.coordinator,
        name: cli.name.unwrap_or_else(namm_worker::default_name),
        slots: cli.slots,
        max_batch: cli.batch as usize,
        eval_delay: Duration::from_millis(cli.eval_delay_ms),
        auth,
        llm,
    };
    let parent = cli.exit_with_parent;
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(namm_worker::run(cfg, async move {
        tokio::select! {
            _ = stop_signal() => tracing::info!("signal received; handing back the units in hand"),
            _ = parent_exit(parent.unwrap_or(0)), if parent.is_some() => tracing::warn!("the coordinator that started this worker is gone; stopping"),
        }
    }));
    // An evaluation of a handed-back unit may still be running on a blocking thread; its
    // result is no longer wanted, so the process does not wait for it.
    rt.shutdown_timeout(Duration::from_millis(500));
    result
}

/// Completes once this process's parent has exited: a killed coordinator cannot stop its
/// local workers itself, and each holds a model in memory.
async fn parent_exit(parent: u32) {
    #[cfg(unix)]
    {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            if std::os::unix::process::parent_id() != parent {
                return;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = parent;
        std::future::pending::<()>().await;
    }
}

async fn stop_signal() {
    #[cfg(unix)]
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        return;
    }
    let _ = tokio::signal::ctrl_c().await;
}
