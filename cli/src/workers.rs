//! `workers`.

use crate::output::{print_json, worker_json, Format, Table};
use crate::source::{rpc, Source};
use namm_proto::ListWorkersRequest;

pub async fn list(source: &mut Source, format: Format) -> anyhow::Result<()> {
    let client = source.remote("workers")?;
    let workers = rpc(client.list_workers(ListWorkersRequest {}).await)?.workers;
    if format == Format::Json {
        print_json(&serde_json::Value::Array(
            workers.iter().map(worker_json).collect(),
        ));
        return Ok(());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut t = Table::new(vec![
        "WORKER",
        "NAME",
        "DEVICE",
        "MODEL",
        "THREADS",
        "SLOTS",
        "BATCH",
        "LEASES",
        "DONE",
        "ALIVE",
        "SEEN_S_AGO",
        "PEER",
    ]);
    for w in &workers {
        t.row(vec![
            w.worker_id.clone(),
            w.name.clone(),
            w.device.clone(),
            // The first 12 hex digits name a model well enough in a table; --json has them all.
            if w.model_sha256.is_empty() {
                "-".into()
            } else {
                w.model_sha256
                    .iter()
                    .map(|m| m.chars().take(12).collect::<String>())
                    .collect::<Vec<_>>()
                    .join(",")
            },
            w.threads.to_string(),
            w.slots.to_string(),
            w.max_batch.max(1).to_string(),
            w.active_leases.to_string(),
            w.units_completed.to_string(),
            if w.alive { "yes" } else { "no" }.into(),
            format!("{:.1}", (now - w.last_seen_unix_ms).max(0) as f64 / 1000.0),
            w.peer.clone(),
        ]);
    }
    out!("{}", t.render(format));
    Ok(())
}
