//! The worker loop: register with the coordinator, heartbeat, lease units, evaluate them,
//! report. It never gives up on the coordinator: when it is unreachable the loop backs off and
//! retries, and when it comes back (possibly restarted, having forgotten this worker) the
//! worker registers again and carries on.

mod evaluate;

pub use evaluate::{evaluate, shard_fitness};

use namm_proto::worker_service_client::WorkerServiceClient;
use namm_proto::{HeartbeatRequest, LeaseRequest, RegisterRequest, ReportRequest, WorkUnit};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// HOST:PORT (or a full http:// URL) of the coordinator.
    pub coordinator: String,
    pub name: String,
    /// Units leased and evaluated at once.
    pub slots: u32,
    /// Extra time spent on every evaluation, to emulate a slow objective in tests and demos.
    pub eval_delay: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            coordinator: "127.0.0.1:50051".into(),
            name: default_name(),
            slots: 1,
            eval_delay: Duration::ZERO,
        }
    }
}

pub fn default_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{}", std::process::id())
}

const MAX_MESSAGE_BYTES: usize = 256 << 20;
const LEASE_WAIT_MS: u32 = 2_000;
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Why a session with the coordinator ended.
enum SessionEnd {
    Shutdown,
    /// The coordinator does not know this worker (it restarted): register again.
    Forgotten,
    /// The coordinator is unreachable: back off and retry.
    Unreachable(tonic::Status),
}

/// Runs the worker until `shutdown` completes.
pub async fn run(cfg: WorkerConfig, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let url = if cfg.coordinator.contains("://") {
        cfg.coordinator.clone()
    } else {
        format!("http://{}", cfg.coordinator)
    };
    let endpoint = match Endpoint::from_shared(url.clone()) {
        Ok(e) => e.connect_timeout(Duration::from_secs(2)).tcp_nodelay(true),
        Err(e) => {
            tracing::error!(coordinator = %url, error = %e, "invalid coordinator address");
            return;
        }
    };
    let client = WorkerServiceClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let mut backoff = BACKOFF_START;
    loop {
        let end = tokio::select! {
            _ = &mut shutdown => SessionEnd::Shutdown,
            end = session(&cfg, client.clone(), &mut backoff) => end,
        };
        match end {
            SessionEnd::Shutdown => return,
            SessionEnd::Forgotten => {
                tracing::warn!("coordinator forgot this worker; registering again");
                backoff = BACKOFF_START;
            }
            SessionEnd::Unreachable(status) => {
                tracing::warn!(coordinator = %url, error = %status.message(), retry_in_ms = backoff.as_millis() as u64, "coordinator unreachable");
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

async fn session(
    cfg: &WorkerConfig,
    mut client: WorkerServiceClient<Channel>,
    backoff: &mut Duration,
) -> SessionEnd {
    let reg = match client
        .register(RegisterRequest {
            name: cfg.name.clone(),
            device: "cpu".into(),
            threads: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            model_sha256: Vec::new(),
            version: env!("CARGO_PKG_VERSION").into(),
            slots: cfg.slots,
            max_batch: 1,
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return SessionEnd::Unreachable(s),
    };
    let worker_id = reg.worker_id;
    *backoff = BACKOFF_START;
    tracing::info!(worker = %worker_id, name = %cfg.name, "registered with the coordinator");

    let forgotten = Arc::new(AtomicBool::new(false));
    let heartbeat = {
        let mut client = client.clone();
        let worker_id = worker_id.clone();
        let forgotten = forgotten.clone();
        let every = Duration::from_millis(u64::from(reg.heartbeat_interval_ms.max(50)));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let r = client
                    .heartbeat(HeartbeatRequest {
                        worker_id: worker_id.clone(),
                    })
                    .await;
                if let Err(s) = r {
                    if s.code() == Code::NotFound {
                        forgotten.store(true, Ordering::SeqCst);
                        return;
                    }
                }
            }
        })
    };
    let _stop_heartbeat = AbortOnDrop(heartbeat);

    loop {
        if forgotten.load(Ordering::SeqCst) {
            return SessionEnd::Forgotten;
        }
        let units = match client
            .lease(LeaseRequest {
                worker_id: worker_id.clone(),
                slots: cfg.slots.max(1),
                wait_ms: LEASE_WAIT_MS,
            })
            .await
        {
            Ok(r) => r.into_inner().units,
            Err(s) if s.code() == Code::NotFound => return SessionEnd::Forgotten,
            Err(s) => return SessionEnd::Unreachable(s),
        };
        let mut tasks = Vec::with_capacity(units.len());
        for unit in units {
            let client = client.clone();
            let worker_id = worker_id.clone();
            let delay = cfg.eval_delay;
            tasks.push(tokio::spawn(async move {
                evaluate_and_report(client, worker_id, unit, delay).await
            }));
        }
        for t in tasks {
            match t.await {
                Ok(Some(end)) => return end,
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "evaluation task failed"),
            }
        }
    }
}

async fn evaluate_and_report(
    mut client: WorkerServiceClient<Channel>,
    worker_id: String,
    unit: WorkUnit,
    delay: Duration,
) -> Option<SessionEnd> {
    let started = Instant::now();
    let unit_id = unit.unit_id.clone();
    let lease_id = unit.lease_id.clone();
    let key = unit.key;
    let items = match tokio::task::spawn_blocking(move || {
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        evaluate(&unit)
    })
    .await
    {
        Ok(items) => items,
        Err(e) => {
            tracing::error!(unit = %unit_id, error = %e, "evaluation panicked; the lease will expire");
            return None;
        }
    };
    let eval_seconds = started.elapsed().as_secs_f64();
    let fitness = shard_fitness(&items);
    let r = client
        .report(ReportRequest {
            worker_id,
            lease_id,
            key,
            items,
            eval_seconds,
            fitness,
        })
        .await;
    match r {
        Ok(resp) => {
            let resp = resp.into_inner();
            if resp.accepted {
                tracing::debug!(unit = %unit_id, eval_seconds, "reported");
            } else {
                tracing::info!(unit = %unit_id, note = %resp.note, "report not needed");
            }
            None
        }
        Err(s) if s.code() == Code::NotFound && s.message().contains("worker_id") => {
            Some(SessionEnd::Forgotten)
        }
        Err(s)
            if matches!(
                s.code(),
                Code::Unavailable | Code::Unknown | Code::Cancelled
            ) =>
        {
            Some(SessionEnd::Unreachable(s))
        }
        Err(s) => {
            tracing::warn!(unit = %unit_id, code = ?s.code(), error = %s.message(), "report rejected");
            None
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
