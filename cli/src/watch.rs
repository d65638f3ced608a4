//! `watch`: one line per finished generation until the run ends.

use crate::output::{
    csv_line, generation_header, generation_json, generation_row, is_running, Format,
};
use crate::source::{rpc, Source};
use namm_proto::WatchRunRequest;
use tokio_stream::StreamExt;

pub async fn watch(
    source: &mut Source,
    run_id: u64,
    from: Option<u32>,
    format: Format,
) -> anyhow::Result<()> {
    let client = source.remote("watch")?;
    let mut stream = rpc(client
        .watch_run(WatchRunRequest {
            run_id,
            from_generation: from,
        })
        .await)?;
    match format {
        Format::Csv => out!(
            "{}",
            csv_line(generation_header().into_iter().map(String::from))
        ),
        Format::Table => outln!(
            "{}",
            fixed(generation_header().into_iter().map(String::from))
        ),
        Format::Json => {}
    }
    let mut last_run = None;
    let mut waiting = String::new();
    while let Some(ev) = stream.next().await {
        let ev = ev.map_err(|s| anyhow::anyhow!("coordinator: {:?}: {}", s.code(), s.message()))?;
        // On stderr, so that stdout's rows stay uniform for scripts.
        if let Some(run) = ev.run.as_ref().filter(|r| r.waiting != waiting) {
            waiting.clone_from(&run.waiting);
            match waiting.as_str() {
                "" => eprintln!("run {run_id}: a worker that can take it is connected"),
                w => eprintln!("run {run_id} waiting: {w}"),
            }
        }
        if let Some(g) = &ev.generation {
            match format {
                // One JSON object per line, so a script can follow the stream.
                Format::Json => outln!("{}", generation_json(g)),
                Format::Csv => out!("{}", csv_line(generation_row(g, format).into_iter())),
                Format::Table => outln!("{}", fixed(generation_row(g, format).into_iter())),
            }
        }
        last_run = ev.run;
    }
    if let (Some(run), Format::Table) = (last_run, format) {
        if !is_running(&run) {
            outln!(
                "run {} {}: {}",
                run.run_id,
                crate::output::status_name(run.status),
                run.stop_reason
            );
        }
    }
    Ok(())
}

/// Rows arrive one at a time, so the columns get fixed widths instead of fitted ones.
fn fixed(cells: impl Iterator<Item = String>) -> String {
    cells
        .map(|c| format!("{c:<13}"))
        .collect::<String>()
        .trim_end()
        .to_string()
}
