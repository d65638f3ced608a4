//! `submit`, `runs`, `cancel`.

use crate::output::{print_json, run_json, runs_table, Format};
use crate::source::{rpc, Source};
use anyhow::Context;
use namm_proto::{CancelRunRequest, SubmitRunRequest};
use std::path::Path;

pub async fn submit(source: &mut Source, file: &Path, format: Format) -> anyhow::Result<()> {
    let spec_toml = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read run spec {}", file.display()))?;
    let client = source.remote("submit")?;
    let run = rpc(client.submit_run(SubmitRunRequest { spec_toml }).await)
        .with_context(|| format!("run spec {} was refused", file.display()))?
        .run
        .context("coordinator answered without a run")?;
    match format {
        Format::Json => print_json(&run_json(&run)),
        Format::Csv => out!("{}", runs_table(&[run], format).render(format)),
        Format::Table => outln!("submitted run {} ({})", run.run_id, run.name),
    }
    Ok(())
}

pub async fn list(source: &mut Source, format: Format) -> anyhow::Result<()> {
    let runs = source.list_runs().await?;
    match format {
        Format::Json => print_json(&serde_json::Value::Array(
            runs.iter().map(run_json).collect(),
        )),
        _ => out!("{}", runs_table(&runs, format).render(format)),
    }
    Ok(())
}

pub async fn cancel(source: &mut Source, run_id: u64, format: Format) -> anyhow::Result<()> {
    let client = source.remote("cancel")?;
    let run = rpc(client.cancel_run(CancelRunRequest { run_id }).await)?
        .run
        .context("coordinator answered without a run")?;
    match format {
        Format::Json => print_json(&run_json(&run)),
        Format::Csv => out!("{}", runs_table(&[run], format).render(format)),
        Format::Table => outln!("run {} cancelled: {}", run.run_id, run.stop_reason),
    }
    Ok(())
}
