//! `namm`: the user's tool. One file per command group; `main` only parses and dispatches.

/// Like print!/println!, but a closed stdout (`namm history 1 | head`) ends the program quietly
/// instead of panicking.
macro_rules! out {
    ($($t:tt)*) => { $crate::output::emit(&format!($($t)*)) };
}
macro_rules! outln {
    () => { $crate::output::emit("\n") };
    ($($t:tt)*) => { $crate::output::emit(&format!("{}\n", format!($($t)*))) };
}

mod bench;
mod eval;
mod generate;
mod history;
mod output;
mod plot;
mod replay;
mod runs;
mod source;
mod watch;
mod workers;

use clap::{Parser, Subcommand};
use output::Format;
use source::Source;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "namm",
    version,
    about = "Evolve and evaluate Neural Attention Memory Models: drive a namm cluster, query its history, compare memory policies on a local model"
)]
struct Cli {
    /// Coordinator to talk to [default: 127.0.0.1:50051].
    #[arg(
        long,
        global = true,
        env = "NAMM_COORDINATOR",
        value_name = "HOST:PORT",
        conflicts_with = "db"
    )]
    coordinator: Option<String>,
    /// Read a stopped coordinator's database instead (read-only: the CLI opens a copy).
    #[arg(long, global = true, value_name = "PATH")]
    db: Option<PathBuf>,
    /// Shared secret of the coordinator (sent as `authorization: Bearer TOKEN`).
    #[arg(
        long,
        global = true,
        env = "NAMM_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,
    /// Read the token from the first line of this file.
    #[arg(long, global = true, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Connect over TLS, trusting the CA (or self-signed certificate) in this PEM file.
    #[arg(long, global = true, value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// Longest wait for a connection to the coordinator, in seconds.
    #[arg(long, global = true, default_value = "5", value_name = "SECS", value_parser = namm_worker::auth::parse_timeout)]
    connect_timeout: std::time::Duration,
    /// Longest wait for the coordinator's answer to one request, in seconds (`watch` waits
    /// this long for the stream to open, then follows it for as long as the run lasts).
    #[arg(long, global = true, default_value = "30", value_name = "SECS", value_parser = namm_worker::auth::parse_timeout)]
    request_timeout: std::time::Duration,
    /// Print JSON for scripts.
    #[arg(long, global = true, conflicts_with = "csv")]
    json: bool,
    /// Print CSV for scripts.
    #[arg(long, global = true)]
    csv: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Cluster(ClusterCommand),
    /// Compare memory policies on long-context tasks with a local model.
    Eval(eval::EvalArgs),
    /// Generate text from a prompt with a local model under a memory policy, streamed as it
    /// is decoded; the cache it kept and the speed on stderr (or in --json).
    Generate(generate::GenerateArgs),
    /// Engine throughput at several batch sizes (prefill with attention taps, decode), and
    /// one device's agreement with another (--parity cpu on a GPU).
    Bench(bench::BenchArgs),
    /// Run the NAMM policy on recorded attention (the golden-vector JSON schema) and print
    /// what this implementation computes, in the same schema.
    Replay(replay::ReplayArgs),
}

/// Commands that talk to a coordinator (or read its database).
#[derive(Subcommand)]
enum ClusterCommand {
    /// Submit a run spec (TOML) to the coordinator.
    Submit { file: PathBuf },
    /// List runs.
    Runs,
    /// Finished generations of a run.
    History {
        /// Run id, as `namm runs` lists it.
        run: u64,
    },
    /// One generation: every candidate's fitness and evaluations.
    Show {
        /// Run id, as `namm runs` lists it.
        run: u64,
        generation: u32,
    },
    /// The best parameters found so far, and the current mean; with --export, a NAMM run's
    /// policy as a parameter file for `namm eval --policy namm:FILE`.
    Best {
        /// Run id, as `namm runs` lists it.
        run: u64,
        /// Write θ, the frozen normalisation statistics and metadata (model sha256, tasks,
        /// generation) to this safetensors file instead of printing.
        #[arg(long, value_name = "FILE.safetensors")]
        export: Option<PathBuf>,
        /// Which vector --export writes.
        #[arg(long, value_enum, default_value = "mean")]
        which: history::Which,
    },
    /// Workers the coordinator knows.
    Workers,
    /// Stop a running run.
    Cancel {
        /// Run id, as `namm runs` lists it.
        run: u64,
    },
    /// Follow a run generation by generation until it ends.
    Watch {
        /// Run id, as `namm runs` lists it.
        run: u64,
        /// Replay finished generations from this one first.
        #[arg(long, value_name = "GEN")]
        from: Option<u32>,
    },
    /// Draw a run's fitness per generation (and a NAMM run's kept cache fraction) to a PNG or
    /// SVG file.
    Plot(plot::PlotArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Local evaluations are long: their progress lines are worth showing by default.
    let default_level = match cli.command {
        Command::Eval(_) | Command::Bench(_) => "info",
        Command::Generate(_) => "warn",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_level.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let format = Format::from_flags(cli.json, cli.csv);
    let command = match cli.command {
        Command::Replay(args) => return replay::run(&args),
        Command::Eval(args) => return eval::run(&args, format),
        Command::Generate(args) => return generate::run(&args, format),
        Command::Bench(args) => return bench::run(&args, format),
        Command::Cluster(command) => command,
    };
    let auth = namm_worker::auth::ClientAuth {
        token: namm_worker::auth::resolve_token(cli.token, cli.token_file.as_deref())?,
        tls_ca: cli.tls_ca,
        timeouts: namm_worker::auth::Timeouts {
            connect: cli.connect_timeout,
            request: cli.request_timeout,
        },
    };
    let mut source = Source::open(cli.coordinator.as_deref(), cli.db.as_deref(), &auth).await?;
    use ClusterCommand as C;
    match command {
        C::Submit { file } => runs::submit(&mut source, &file, format).await,
        C::Runs => runs::list(&mut source, format).await,
        C::Cancel { run } => runs::cancel(&mut source, run, format).await,
        C::History { run } => history::history(&mut source, run, format).await,
        C::Show { run, generation } => history::show(&mut source, run, generation, format).await,
        C::Best { run, export, which } => {
            history::best(&mut source, run, export.as_deref(), which, format).await
        }
        C::Workers => workers::list(&mut source, format).await,
        C::Watch { run, from } => watch::watch(&mut source, run, from, format).await,
        C::Plot(args) => plot::run(&mut source, &args).await,
    }
}
