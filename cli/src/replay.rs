//! `namm replay FILE`: runs recorded policy inputs (golden-vector schema, `.json` or
//! `.json.gz`) through this implementation and prints what it computes, as JSON in the same
//! schema. The work is done by `namm::policy::replay`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use namm::policy::replay::{replay_file, Precision, ReplayOptions};
use namm::policy::NammParams;

#[derive(clap::Args, Debug, Clone)]
pub struct ReplayArgs {
    /// Recorded inputs in the golden-vector schema (`.json` or gzipped).
    pub file: PathBuf,
    /// Compute in f32, as production does, instead of the f64 reference path.
    #[arg(long)]
    pub f32: bool,
    /// Parameters and frozen statistics (`.safetensors`) replacing the recording's.
    #[arg(long, value_name = "FILE")]
    pub params: Option<PathBuf>,
    /// Indent the JSON output.
    #[arg(long)]
    pub pretty: bool,
    /// Write the JSON here instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

pub fn run(args: &ReplayArgs) -> anyhow::Result<()> {
    let precision = if args.f32 {
        Precision::F32
    } else {
        Precision::F64
    };
    let params = args
        .params
        .as_deref()
        .map(NammParams::load)
        .transpose()
        .context("loading --params")?;
    if let Some(p) = &params {
        let features = p.feature_set().map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            features.is_spectral(),
            "--params: the file's NAMM reads the {} features; a replay reproduces the \
             reference's, the spectrogram",
            features.name()
        );
    }
    let options = ReplayOptions { precision, params };
    let result = replay_file(&args.file, &options)
        .with_context(|| format!("replaying {}", args.file.display()))?;
    let text = if args.pretty {
        serde_json::to_string_pretty(&result)?
    } else {
        serde_json::to_string(&result)?
    };
    match &args.output {
        Some(path) => std::fs::write(path, text + "\n")
            .with_context(|| format!("writing {}", path.display()))?,
        None => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{text}").context("writing to standard output")?;
        }
    }
    Ok(())
}
