use clap::{Parser, Subcommand};

mod eval;

/// namm: evolve and evaluate Neural Attention Memory Models.
#[derive(Debug, Parser)]
#[command(name = "namm", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Compare memory policies on long-context tasks with a local model
    Eval(eval::EvalArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Eval(args) => eval::run(&args),
    }
}
