//! Where the CLI's answers come from: a live coordinator over gRPC, or (`--db`) a copy of a
//! stopped coordinator's sled database. sled has no read-only mode and writes on open, so the
//! CLI copies the directory to a temporary one and opens that: the original is never touched.

use anyhow::{bail, Context};
use namm_coord::store::Store;
use namm_proto::run_service_client::RunServiceClient;
use namm_proto::*;
use namm_worker::auth::{AuthChannel, ClientAuth};
use std::path::Path;

pub enum Source {
    Remote(RunServiceClient<AuthChannel>),
    Local {
        store: Store,
        _copy: tempfile::TempDir,
    },
}

const MAX_MESSAGE_BYTES: usize = 256 << 20;
/// The coordinator refuses requests above 16 MiB.
const MAX_REQUEST_BYTES: usize = 16 << 20;

impl Source {
    pub async fn open(
        coordinator: Option<&str>,
        db: Option<&Path>,
        auth: &ClientAuth,
    ) -> anyhow::Result<Source> {
        if let Some(db) = db {
            return Self::open_db(db);
        }
        let addr = coordinator.unwrap_or("127.0.0.1:50051");
        let channel = auth
            .endpoint(addr)
            .with_context(|| format!("--coordinator {addr:?}"))?
            .connect()
            .await
            .with_context(|| {
                format!(
                    "cannot reach the coordinator at {addr} (start one with `namm-coord start`, \
                     or pass --coordinator HOST:PORT, or --db DIR to read a stopped one's database)"
                )
            })?;
        Ok(Source::Remote(
            RunServiceClient::new(auth.wrap(channel))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_REQUEST_BYTES),
        ))
    }

    fn open_db(db: &Path) -> anyhow::Result<Source> {
        if !db.join("conf").exists() && !db.join("db").exists() {
            bail!(
                "--db {}: not a namm database (no sled files there)",
                db.display()
            );
        }
        let copy = tempfile::tempdir().context("cannot create a temporary directory")?;
        copy_dir(db, copy.path())
            .with_context(|| format!("cannot copy the database {}", db.display()))?;
        let store = Store::open_copy(copy.path(), db)
            .with_context(|| format!("cannot open the database {}", db.display()))?;
        Ok(Source::Local { store, _copy: copy })
    }

    fn needs_coordinator(&self, what: &str) -> anyhow::Result<()> {
        if matches!(self, Source::Local { .. }) {
            bail!("`{what}` needs a running coordinator (--coordinator), not --db");
        }
        Ok(())
    }

    pub fn remote(&mut self, what: &str) -> anyhow::Result<&mut RunServiceClient<AuthChannel>> {
        self.needs_coordinator(what)?;
        match self {
            Source::Remote(c) => Ok(c),
            Source::Local { .. } => unreachable!("checked by needs_coordinator"),
        }
    }

    pub async fn list_runs(&mut self) -> anyhow::Result<Vec<RunRecord>> {
        match self {
            Source::Remote(c) => Ok(rpc(c.list_runs(ListRunsRequest {}).await)?.runs),
            Source::Local { store, .. } => Ok(store.list_runs()?),
        }
    }

    pub async fn get_run(&mut self, run_id: u64) -> anyhow::Result<RunRecord> {
        match self {
            Source::Remote(c) => rpc(c.get_run(GetRunRequest { run_id }).await)?
                .run
                .context("coordinator answered without a run"),
            Source::Local { store, .. } => store
                .get_run(run_id)?
                .with_context(|| format!("run_id = {run_id} names no run")),
        }
    }

    pub async fn history(&mut self, run_id: u64) -> anyhow::Result<Vec<GenerationRecord>> {
        match self {
            Source::Remote(c) => {
                Ok(rpc(c.list_generations(ListGenerationsRequest { run_id }).await)?.generations)
            }
            Source::Local { store, .. } => Ok(namm_coord::queries::history(store, run_id)?),
        }
    }

    pub async fn generation(
        &mut self,
        run_id: u64,
        generation: u32,
    ) -> anyhow::Result<GetGenerationResponse> {
        match self {
            Source::Remote(c) => rpc(c
                .get_generation(GetGenerationRequest { run_id, generation })
                .await),
            Source::Local { store, .. } => {
                Ok(namm_coord::queries::generation(store, run_id, generation)?)
            }
        }
    }
}

/// Whether the client gave up waiting (`--request-timeout`), as tonic reports it.
pub fn timed_out(s: &tonic::Status) -> bool {
    s.code() == tonic::Code::Cancelled && s.message().contains("Timeout expired")
}

/// Unwraps a gRPC answer; an error status becomes "<code>: <message>" without tonic's
/// metadata dump.
pub fn rpc<T>(r: Result<tonic::Response<T>, tonic::Status>) -> anyhow::Result<T> {
    r.map(tonic::Response::into_inner).map_err(|s| {
        if timed_out(&s) {
            anyhow::anyhow!(
                "coordinator: no answer within --request-timeout; is it a namm coordinator, \
                 and is it overloaded?"
            )
        } else {
            anyhow::anyhow!("coordinator: {:?}: {}", s.code(), s.message())
        }
    })
}

/// Copies a database directory, without the strategy states (hundreds of MB for a NAMM run;
/// no query reads them).
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_name() == "strategy" {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
