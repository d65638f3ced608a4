//! `namm-coord`: the coordinator binary.

use clap::{Parser, Subcommand};
use namm_coord::progress::AboveBars;
use namm_coord::server::{serve, ServeOptions, TlsFiles};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "namm-coord",
    version,
    about = "The namm coordinator: CMA-ES over gRPC with pull-based workers and a sled history"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the coordinator, resuming every unfinished run in the database. Without --run,
    /// a database that holds no run gets the default NAMM run (examples/runs/namm-surprisal.toml:
    /// SmolLM2-135M; passkey and multi-key needle-in-a-haystack at 1024 tokens; budget 0.25;
    /// sep-CMA-ES, population 8; ~3 minutes a generation on one 2-core worker) and one local
    /// worker process that loads --model; stop with Ctrl-C and start again to resume it.
    Start {
        /// Address to serve gRPC on.
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        /// sled database directory (created if missing).
        #[arg(long, default_value = "./namm-db")]
        db: PathBuf,
        /// Run spec (TOML) to submit at start; skipped when the database already holds a run
        /// with the same spec. Repeatable.
        #[arg(long = "run", value_name = "FILE.toml")]
        runs: Vec<PathBuf>,
        /// Do not submit the default NAMM run when no --run is given.
        #[arg(long)]
        no_default_run: bool,
        /// Workers to start with the coordinator: `namm-worker` processes loading --model when
        /// an LLM run is in flight, in-process benchmark workers otherwise [default: 1 when an
        /// LLM run is in flight, else 0].
        #[arg(long, value_name = "N")]
        local_workers: Option<u32>,
        /// The model local workers of LLM runs load.
        #[arg(
            long,
            env = "NAMM_MODEL",
            default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf",
            value_name = "PATH"
        )]
        model: PathBuf,
        /// A lease not renewed by a heartbeat for this long goes back to the queue.
        #[arg(long, default_value_t = 10_000, value_name = "MS", value_parser = clap::value_parser!(u64).range(100..=86_400_000))]
        lease_ttl_ms: u64,
        /// Longest a unit stays with one worker, heartbeats or not (at least 1 s: a unit takes
        /// seconds to evaluate).
        #[arg(long, default_value_t = 3_600_000, value_name = "MS", value_parser = clap::value_parser!(u64).range(1000..=604_800_000))]
        max_lease_ms: u64,
        /// Exit once no run is in flight (for scripts and tests).
        #[arg(long)]
        exit_when_done: bool,
        /// Shared secret every client must send (`authorization: Bearer TOKEN`).
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
        /// Serve a non-loopback address without a token (trusted networks only).
        #[arg(long)]
        insecure: bool,
        /// TLS certificate chain (PEM); with --tls-key, serves gRPC over TLS.
        #[arg(long, value_name = "PEM", requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// TLS private key (PEM) of --tls-cert.
        #[arg(long, value_name = "PEM", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Serve Prometheus metrics over plain HTTP at http://ADDR/metrics.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<SocketAddr>,
    },
    /// Copy a database to a new directory, consistently: directly when no coordinator has it
    /// open, else through the coordinator serving it (which pauses writes meanwhile). The
    /// copy is a database of its own: `--db COPY` restores it.
    Backup {
        /// The database to copy.
        #[arg(long, default_value = "./namm-db")]
        db: PathBuf,
        /// A new or empty directory for the copy (on the coordinator's machine).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// The coordinator serving --db, if one does.
        #[arg(long, default_value = "127.0.0.1:50051", value_name = "HOST:PORT")]
        coordinator: String,
        /// Its shared secret.
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
        /// Its CA (or self-signed certificate) for TLS.
        #[arg(long, value_name = "PEM")]
        tls_ca: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // On a terminal `start` shows a progress line per run; log lines go above the bars.
    let bars = (matches!(cli.command, Command::Start { .. }) && std::io::stderr().is_terminal())
        .then(indicatif::MultiProgress::new);
    match &bars {
        Some(bars) => {
            let bars = bars.clone();
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(move || AboveBars::new(bars.clone()))
                .init();
        }
        None => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    match cli.command {
        Command::Start {
            listen,
            db,
            runs,
            no_default_run,
            local_workers,
            model,
            lease_ttl_ms,
            max_lease_ms,
            exit_when_done,
            token,
            token_file,
            insecure,
            tls_cert,
            tls_key,
            metrics,
        } => {
            let token = namm_worker::auth::resolve_token(token, token_file.as_deref())?;
            if lease_ttl_ms < 100 {
                anyhow::bail!("--lease-ttl-ms {lease_ttl_ms}: must be at least 100");
            }
            serve(ServeOptions {
                listen,
                db,
                runs,
                local_workers,
                default_run: !no_default_run,
                model,
                lease_ttl: Duration::from_millis(lease_ttl_ms),
                max_lease: Duration::from_millis(max_lease_ms),
                exit_when_done,
                token,
                insecure,
                tls: tls_cert
                    .zip(tls_key)
                    .map(|(cert, key)| TlsFiles { cert, key }),
                metrics,
                progress: bars,
            })
            .await
        }
        Command::Backup {
            db,
            to,
            coordinator,
            token,
            token_file,
            tls_ca,
        } => {
            let auth = namm_worker::auth::ClientAuth {
                token: namm_worker::auth::resolve_token(token, token_file.as_deref())?,
                tls_ca,
                timeouts: namm_worker::auth::Timeouts {
                    connect: Duration::from_secs(5),
                    request: Duration::from_secs(3600),
                },
            };
            let s = namm_coord::backup::backup(&db, &to, &coordinator, &auth).await?;
            println!(
                "copied {} runs ({} generations, {} bytes of sled) to {}",
                s.runs,
                s.generations,
                s.bytes,
                to.display()
            );
            Ok(())
        }
    }
}
