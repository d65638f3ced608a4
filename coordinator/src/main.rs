//! `namm-coord`: the coordinator binary.

use clap::{Parser, Subcommand};
use namm_coord::server::{serve, ServeOptions};
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
    /// Serve the coordinator, resuming every unfinished run in the database.
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
        /// Workers to run inside this process (standalone mode).
        #[arg(long, default_value_t = 0)]
        local_workers: u32,
        /// A lease not renewed by a heartbeat for this long goes back to the queue.
        #[arg(long, default_value_t = 10_000, value_name = "MS")]
        lease_ttl_ms: u64,
        /// Longest a unit stays with one worker, heartbeats or not.
        #[arg(long, default_value_t = 3_600_000, value_name = "MS")]
        max_lease_ms: u64,
        /// Exit once no run is in flight (for scripts and tests).
        #[arg(long)]
        exit_when_done: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Start {
            listen,
            db,
            runs,
            local_workers,
            lease_ttl_ms,
            max_lease_ms,
            exit_when_done,
        } => {
            if lease_ttl_ms < 100 {
                anyhow::bail!("--lease-ttl-ms {lease_ttl_ms}: must be at least 100");
            }
            serve(ServeOptions {
                listen,
                db,
                runs,
                local_workers,
                lease_ttl: Duration::from_millis(lease_ttl_ms),
                max_lease: Duration::from_millis(max_lease_ms),
                exit_when_done,
            })
            .await
        }
    }
}
