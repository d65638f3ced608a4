//! The two gRPC services over one [`Coordinator`].

use crate::coordinator::{not_found_run, Coordinator};
use crate::error::CoordError;
use namm_proto::run_service_server::RunService;
use namm_proto::worker_service_server::WorkerService;
use namm_proto::*;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// Longest a `Lease` call may wait for work before answering empty.
const MAX_LEASE_WAIT: Duration = Duration::from_secs(5);
/// How often a watch stream looks whether its run is waiting for a worker.
const WAITING_CHECK: Duration = Duration::from_secs(2);
/// Longest worker name, device or version string kept in the worker table.
const MAX_LABEL_BYTES: usize = 256;
const MAX_MODELS: usize = 64;
/// Rows one batch of a worker may hold: a lease hands out at most slots × max_batch units.
const MAX_BATCH: u32 = 256;

#[derive(Clone)]
pub struct Services(pub Arc<Coordinator>);

/// Runs a call that may compute or wait for a while (building a strategy, a tell, a backup, a
/// cancel waiting for a tell) on a blocking thread, so that the async threads keep answering
/// other RPCs meanwhile.
async fn blocking<T: Send + 'static>(
    coord: &Arc<Coordinator>,
    call: impl FnOnce(&Coordinator) -> Result<T, CoordError> + Send + 'static,
) -> Result<T, CoordError> {
    let coord = Arc::clone(coord);
    tokio::task::spawn_blocking(move || call(&coord))
        .await
        .map_err(|e| CoordError::Internal(format!("the call failed: {e}")))?
}

type Res<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl WorkerService for Services {
    async fn register(&self, req: Request<RegisterRequest>) -> Res<RegisterResponse> {
        let peer = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let r = req.into_inner();
        if r.name.trim().is_empty() {
            return Err(Status::invalid_argument("name is empty"));
        }
        for (field, value) in [
            ("name", &r.name),
            ("device", &r.device),
            ("version", &r.version),
        ] {
            if value.len() > MAX_LABEL_BYTES {
                return Err(Status::invalid_argument(format!(
                    "{field} is {} bytes; at most {MAX_LABEL_BYTES}",
                    value.len()
                )));
            }
        }
        if r.max_batch > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "max_batch is {}; at most {MAX_BATCH}",
                r.max_batch
            )));
        }
        if r.model_sha256.len() > MAX_MODELS {
            return Err(Status::invalid_argument(format!(
                "model_sha256 has {} entries; at most {MAX_MODELS}",
                r.model_sha256.len()
            )));
        }
        let worker_id = self.0.register(WorkerInfo {
            name: r.name,
            device: r.device,
            threads: r.threads,
            model_sha256: r.model_sha256,
            version: r.version,
            slots: r.slots,
            max_batch: r.max_batch,
            peer,
            ..Default::default()
        });
        let ttl = self.0.lease_ttl();
        Ok(Response::new(RegisterResponse {
            worker_id,
            heartbeat_interval_ms: (ttl.as_millis() / 4).max(50) as u32,
            lease_ttl_ms: ttl.as_millis() as u32,
        }))
    }

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Res<HeartbeatResponse> {
        let active_leases = self.0.heartbeat(&req.into_inner().worker_id)?;
        Ok(Response::new(HeartbeatResponse { active_leases }))
    }

    async fn lease(&self, req: Request<LeaseRequest>) -> Res<LeaseResponse> {
        let r = req.into_inner();
        let wait = Duration::from_millis(u64::from(r.wait_ms)).min(MAX_LEASE_WAIT);
        let units = self.0.lease(&r.worker_id, r.slots, wait).await?;
        Ok(Response::new(LeaseResponse { units }))
    }

    async fn report(&self, req: Request<ReportRequest>) -> Res<ReportResponse> {
        let r = req.into_inner();
        let worker = r.worker_id.clone();
        match blocking(&self.0, move |c| c.report(r)).await {
            Ok(resp) => Ok(Response::new(resp)),
            Err(e) => {
                tracing::warn!(%worker, error = %e, "report rejected");
                Err(e.into())
            }
        }
    }

    async fn release(&self, req: Request<ReleaseRequest>) -> Res<ReleaseResponse> {
        let r = req.into_inner();
        let released = self.0.release(&r.worker_id, &r.lease_ids)?;
        Ok(Response::new(ReleaseResponse { released }))
    }
}

#[tonic::async_trait]
impl RunService for Services {
    async fn submit_run(&self, req: Request<SubmitRunRequest>) -> Res<SubmitRunResponse> {
        let spec = req.into_inner().spec_toml;
        let run = blocking(&self.0, move |c| c.submit(&spec)).await?;
        Ok(Response::new(SubmitRunResponse { run: Some(run) }))
    }

    async fn list_runs(&self, _req: Request<ListRunsRequest>) -> Res<ListRunsResponse> {
        let runs = self.0.store()?.list_runs().map_err(CoordError::from)?;
        let runs = runs.into_iter().map(|r| self.0.annotated(r)).collect();
        Ok(Response::new(ListRunsResponse { runs }))
    }

    async fn get_run(&self, req: Request<GetRunRequest>) -> Res<GetRunResponse> {
        let id = req.into_inner().run_id;
        let run = self
            .0
            .store()?
            .get_run(id)
            .map_err(CoordError::from)?
            .ok_or_else(|| not_found_run(id))?;
        Ok(Response::new(GetRunResponse {
            run: Some(self.0.annotated(run)),
        }))
    }

    async fn list_generations(
        &self,
        req: Request<ListGenerationsRequest>,
    ) -> Res<ListGenerationsResponse> {
        let id = req.into_inner().run_id;
        let generations = crate::queries::history(&self.0.store()?, id)?;
        Ok(Response::new(ListGenerationsResponse { generations }))
    }

    async fn get_generation(
        &self,
        req: Request<GetGenerationRequest>,
    ) -> Res<GetGenerationResponse> {
        let r = req.into_inner();
        Ok(Response::new(crate::queries::generation(
            &self.0.store()?,
            r.run_id,
            r.generation,
        )?))
    }

    async fn list_workers(&self, _req: Request<ListWorkersRequest>) -> Res<ListWorkersResponse> {
        Ok(Response::new(ListWorkersResponse {
            workers: self.0.workers(),
        }))
    }

    async fn cancel_run(&self, req: Request<CancelRunRequest>) -> Res<CancelRunResponse> {
        let id = req.into_inner().run_id;
        // Waits for a tell of the run in progress to end.
        let run = blocking(&self.0, move |c| c.cancel(id)).await?;
        Ok(Response::new(CancelRunResponse { run: Some(run) }))
    }

    async fn backup(&self, req: Request<BackupRequest>) -> Res<BackupResponse> {
        let r = req.into_inner();
        let snapshot = blocking(&self.0, move |c| {
            c.backup(std::path::Path::new(&r.db), std::path::Path::new(&r.to))
        })
        .await?;
        Ok(Response::new(BackupResponse {
            runs: snapshot.runs as u64,
            generations: snapshot.generations,
            bytes: snapshot.bytes,
        }))
    }

    type WatchRunStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<WatchEvent, Status>> + Send + 'static>>;

    async fn watch_run(&self, req: Request<WatchRunRequest>) -> Res<Self::WatchRunStream> {
        let r = req.into_inner();
        let id = r.run_id;
        // Subscribe before reading history so no generation falls between the two.
        let mut live = self.0.subscribe();
        let mut closing = self.0.closing();
        let run = self
            .0
            .store()?
            .get_run(id)
            .map_err(CoordError::from)?
            .ok_or_else(|| not_found_run(id))?;
        let backlog = match r.from_generation {
            Some(from) => crate::queries::history(&self.0.store()?, id)?
                .into_iter()
                .filter(|g| g.generation >= from)
                .collect(),
            None => Vec::new(),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let coord = self.0.clone();
        tokio::spawn(async move {
            let mut next = r.from_generation.unwrap_or(run.generations_done);
            for g in backlog {
                next = g.generation + 1;
                let ev = WatchEvent {
                    generation: Some(g),
                    run: Some(run.clone()),
                };
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
            if run.status != RunStatus::Running as i32 {
                return;
            }
            // A run-only event whenever the run's waiting reason changes, the first at once.
            let mut waiting = String::new();
            let mut check = tokio::time::interval(WAITING_CHECK);
            loop {
                let received = tokio::select! {
                    r = live.recv() => r,
                    // The coordinator is stopping: end the stream so the server can drain.
                    _ = closing.wait_for(|c| *c) => return,
                    _ = check.tick() => {
                        match coord.waiting(id) {
                            Some(now) if now != waiting => {
                                let run = RunRecord { waiting: now, ..run.clone() };
                                Ok(WatchEvent { generation: None, run: Some(run) })
                            }
                            _ => continue,
                        }
                    }
                };
                match received {
                    Ok(mut ev) => {
                        let Some(run) = ev.run.take().filter(|r| r.run_id == id) else {
                            continue;
                        };
                        let run = RunRecord {
                            waiting: coord.waiting(id).unwrap_or_else(|| waiting.clone()),
                            ..run
                        };
                        waiting.clone_from(&run.waiting);
                        let running = run.status == RunStatus::Running as i32;
                        ev.run = Some(run);
                        let fresh = ev.generation.as_ref().is_none_or(|g| g.generation >= next);
                        if let Some(g) = &ev.generation {
                            next = next.max(g.generation + 1);
                        }
                        if fresh && tx.send(Ok(ev)).await.is_err() {
                            return;
                        }
                        if !running {
                            return;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(run = id, skipped = n, "watcher fell behind");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
