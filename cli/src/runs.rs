//! `submit`, `runs`, `cancel`.

use crate::output::{print_json, run_json, runs_table, Format};
use crate::source::{rpc, Source};
use anyhow::Context;
use namm_proto::{CancelRunRequest, RunRecord, SubmitRunRequest};
use std::path::Path;

pub async fn submit(source: &mut Source, file: &Path, format: Format) -> anyhow::Result<()> {
    let spec_toml = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read run spec {}", file.display()))?;
    source.remote("submit")?;
    let twins = same_spec(source, &spec_toml).await?;
    let client = source.remote("submit")?;
    let answer = client.submit_run(SubmitRunRequest { spec_toml }).await;
    // The coordinator goes on building a large strategy (minutes for a full covariance of
    // thousands of dimensions) after the client stopped waiting: the run may yet appear.
    let timed_out = matches!(&answer, Err(s) if crate::source::timed_out(s));
    let run = rpc(answer)
        .with_context(|| {
            if timed_out {
                format!(
                    "run spec {} got no answer in time; a large strategy may still be being \
                     built: see `namm runs` before submitting it again (or raise --request-timeout)",
                    file.display()
                )
            } else {
                format!("run spec {} was refused", file.display())
            }
        })?
        .run
        .context("coordinator answered without a run")?;
    for twin in twins {
        eprintln!(
            "note: run {} ({}) has the same spec; run {} is a second one (`namm-coord start --run` \
             resumes a spec instead)",
            twin.run_id,
            crate::output::status_name(twin.status),
            run.run_id
        );
    }
    match format {
        Format::Json => print_json(&run_json(&run)),
        Format::Csv => out!("{}", runs_table(&[run], format).render(format)),
        Format::Table => outln!("submitted run {} ({})", run.run_id, run.name),
    }
    Ok(())
}

/// Runs already submitted with this spec (as canonical TOML, or as submitted for a spec with
/// `init_from`); none when the spec does not parse (the coordinator then says why).
async fn same_spec(source: &mut Source, spec_toml: &str) -> anyhow::Result<Vec<RunRecord>> {
    let Ok(spec) = namm::spec::RunSpec::from_toml(spec_toml) else {
        return Ok(Vec::new());
    };
    let canonical = spec.to_toml();
    Ok(source
        .list_runs()
        .await?
        .into_iter()
        .filter(|r| r.spec_toml == canonical || r.submitted_spec_toml == canonical)
        .collect())
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
