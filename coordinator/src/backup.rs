//! `namm-coord backup`: a consistent copy of a database, taken directly when it is closed and
//! through the coordinator serving it when it is open.

use std::path::Path;

use anyhow::Context;
use namm_proto::run_service_client::RunServiceClient;
use namm_proto::BackupRequest;
use namm_worker::auth::ClientAuth;

use crate::store::{Snapshot, Store, StoreError};

pub async fn backup(
    db: &Path,
    to: &Path,
    coordinator: &str,
    auth: &ClientAuth,
) -> anyhow::Result<Snapshot> {
    if !db.join("db").exists() && !db.join("conf").exists() {
        anyhow::bail!(
            "--db {}: not a namm database (no sled files there)",
            db.display()
        );
    }
    let to = std::path::absolute(to).with_context(|| format!("--to {}", to.display()))?;
    match Store::open(db) {
        Ok(store) => Ok(store.snapshot(&to)?),
        Err(StoreError::InUse { .. }) => through_coordinator(db, &to, coordinator, auth).await,
        Err(e) => Err(e).with_context(|| format!("--db {}", db.display())),
    }
}

async fn through_coordinator(
    db: &Path,
    to: &Path,
    addr: &str,
    auth: &ClientAuth,
) -> anyhow::Result<Snapshot> {
    let db = std::path::absolute(db).with_context(|| format!("--db {}", db.display()))?;
    let channel = auth
        .endpoint(addr)
        .with_context(|| format!("--coordinator {addr:?}"))?
        .connect()
        .await
        .with_context(|| {
            format!(
                "the database {} is open in a coordinator, which --coordinator {addr} does not reach",
                db.display()
            )
        })?;
    let reply = RunServiceClient::new(auth.wrap(channel))
        .backup(BackupRequest {
            db: db.display().to_string(),
            to: to.display().to_string(),
        })
        .await
        .map_err(|s| {
            anyhow::anyhow!(
                "the coordinator at {addr} refused the backup: {}",
                s.message()
            )
        })?
        .into_inner();
    Ok(Snapshot {
        runs: reply.runs as usize,
        generations: reply.generations,
        bytes: reply.bytes,
    })
}
