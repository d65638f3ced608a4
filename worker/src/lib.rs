//! The worker loop: register with the coordinator, heartbeat, lease units, evaluate them,
//! report. It never gives up on the coordinator: when it is unreachable the loop backs off and
//! retries, and when it comes back (possibly restarted, having forgotten this worker) the
//! worker registers again and carries on. When it is told to stop it hands the units it
//! holds back to the coordinator, so they go out again at once instead of after a timeout.

pub mod auth;
mod evaluate;
#[cfg(feature = "engine")]
pub mod llm;

pub use evaluate::{evaluate, evaluate_units, UnitOutcome};

use anyhow::Context;
use auth::{AuthChannel, ClientAuth};
use namm_proto::worker_service_client::WorkerServiceClient;
use namm_proto::{
    HeartbeatRequest, LeaseRequest, RegisterRequest, ReleaseRequest, ReportRequest, WorkUnit,
};
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Code;

type Client = WorkerServiceClient<AuthChannel>;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// HOST:PORT (or a full http:// URL) of the coordinator.
    pub coordinator: String,
    pub name: String,
    /// Batches leased and evaluated at once.
    pub slots: u32,
    /// Units one batch may hold: candidates on the same prompts, run as rows of one batch
    /// through the model (told to the coordinator, which sizes leases by it).
    pub max_batch: usize,
    /// Extra time spent on every evaluation, to emulate a slow objective in tests and demos.
    pub eval_delay: Duration,
    pub auth: ClientAuth,
    /// The model NAMM units run on; without one the worker takes benchmark units only.
    #[cfg(feature = "engine")]
    pub llm: Option<Arc<llm::Llm>>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            coordinator: "127.0.0.1:50051".into(),
            name: default_name(),
            slots: 1,
            max_batch: 1,
            eval_delay: Duration::ZERO,
            auth: ClientAuth::default(),
            #[cfg(feature = "engine")]
            llm: None,
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
/// The coordinator refuses requests above 16 MiB; a report is far smaller.
const MAX_REQUEST_BYTES: usize = 16 << 20;
const LEASE_WAIT_MS: u32 = 2_000;
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How long a stopping worker waits for the coordinator to take its units back.
const HAND_BACK_TIMEOUT: Duration = Duration::from_secs(3);

/// The session's worker id and the leases it holds, for the hand-back at shutdown.
#[derive(Default)]
struct Held {
    worker_id: String,
    leases: BTreeSet<String>,
}

/// Why a session with the coordinator ended.
enum SessionEnd {
    Shutdown,
    /// The coordinator does not know this worker (it restarted): register again.
    Forgotten,
    /// The coordinator is unreachable: back off and retry.
    Unreachable(tonic::Status),
}

/// Runs the worker until `shutdown` completes; fails at once when the coordinator address
/// or TLS setup is unusable (an unreachable coordinator is retried, not an error).
pub async fn run(cfg: WorkerConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let url = cfg.coordinator.clone();
    let endpoint = cfg
        .auth
        .endpoint(&url)
        .with_context(|| format!("--coordinator {url:?}"))?;
    let client = WorkerServiceClient::new(cfg.auth.wrap(endpoint.connect_lazy()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_REQUEST_BYTES);
    let held = Arc::new(Mutex::new(Held::default()));
    let mut backoff = BACKOFF_START;
    loop {
        let end = tokio::select! {
            _ = &mut shutdown => SessionEnd::Shutdown,
            end = session(&cfg, client.clone(), &mut backoff, held.clone()) => end,
        };
        match end {
            SessionEnd::Shutdown => {
                hand_back(client.clone(), &held).await;
                return Ok(());
            }
            SessionEnd::Forgotten => {
                tracing::warn!("coordinator forgot this worker; registering again");
                backoff = BACKOFF_START;
            }
            SessionEnd::Unreachable(status) if status.code() == Code::Unauthenticated => {
                tracing::error!(coordinator = %url, error = %status.message(), retry_in_ms = backoff.as_millis() as u64, "coordinator refused this worker's token (check --token / NAMM_TOKEN / --token-file)");
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            SessionEnd::Unreachable(status) => {
                tracing::warn!(coordinator = %url, error = %status.message(), retry_in_ms = backoff.as_millis() as u64, "coordinator unreachable");
                tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Gives the units of an interrupted session back (the session's evaluation tasks are already
/// aborted, so none of them reports after this).
async fn hand_back(mut client: Client, held: &Mutex<Held>) {
    let (worker_id, lease_ids) = {
        let mut h = held.lock().unwrap_or_else(|e| e.into_inner());
        (h.worker_id.clone(), std::mem::take(&mut h.leases))
    };
    if lease_ids.is_empty() {
        tracing::info!("stopping; no unit in hand");
        return;
    }
    let n = lease_ids.len();
    let call = client.release(ReleaseRequest {
        worker_id,
        lease_ids: lease_ids.into_iter().collect(),
    });
    match tokio::time::timeout(HAND_BACK_TIMEOUT, call).await {
        Ok(Ok(r)) => tracing::info!(
            held = n,
            released = r.into_inner().released,
            "stopping; units handed back to the coordinator"
        ),
        Ok(Err(s)) => tracing::warn!(held = n, error = %s.message(), "stopping; hand-back refused, the units go out again when their leases expire"),
        Err(_) => tracing::warn!(held = n, "stopping; coordinator did not answer the hand-back, the units go out again when their leases expire"),
    }
}

fn device(cfg: &WorkerConfig) -> String {
    #[cfg(feature = "engine")]
    if let Some(llm) = &cfg.llm {
        return llm.device().to_string();
    }
    let _ = cfg;
    "cpu".into()
}

fn model_sha256(cfg: &WorkerConfig) -> Vec<String> {
    #[cfg(feature = "engine")]
    if let Some(llm) = &cfg.llm {
        return vec![llm.sha256().to_string()];
    }
    let _ = cfg;
    Vec::new()
}

async fn session(
    cfg: &WorkerConfig,
    mut client: Client,
    backoff: &mut Duration,
    held: Arc<Mutex<Held>>,
) -> SessionEnd {
    let reg = match client
        .register(RegisterRequest {
            name: cfg.name.clone(),
            device: device(cfg),
            threads: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            model_sha256: model_sha256(cfg),
            version: env!("CARGO_PKG_VERSION").into(),
            slots: cfg.slots,
            max_batch: cfg.max_batch.max(1) as u32,
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return SessionEnd::Unreachable(s),
    };
    let worker_id = reg.worker_id;
    *held.lock().unwrap_or_else(|e| e.into_inner()) = Held {
        worker_id: worker_id.clone(),
        leases: BTreeSet::new(),
    };
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
        held.lock()
            .unwrap_or_else(|e| e.into_inner())
            .leases
            .extend(units.iter().map(|u| u.lease_id.clone()));
        // Aborted when the session is dropped (shutdown), so no report races the hand-back.
        let mut tasks = Vec::new();
        for batch in batches(units, cfg.max_batch) {
            let client = client.clone();
            let worker_id = worker_id.clone();
            let cfg = cfg.clone();
            let held = held.clone();
            tasks.push(AbortOnDrop(tokio::spawn(async move {
                evaluate_and_report(client, worker_id, batch, cfg, &held).await
            })));
        }
        for mut t in tasks {
            match (&mut t.0).await {
                Ok(Some(end)) => return end,
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "evaluation task failed"),
            }
        }
    }
}

/// Leased units in batches: runs of units of the same generation, kind and shard (the
/// coordinator hands them out together), at most `max_batch` each.
fn batches(units: Vec<WorkUnit>, max_batch: usize) -> Vec<Vec<WorkUnit>> {
    let group = |u: &WorkUnit| u.key.map(|k| (k.run_id, k.generation, k.kind, k.shard));
    let mut out: Vec<Vec<WorkUnit>> = Vec::new();
    for unit in units {
        match out.last_mut() {
            Some(b)
                if b.len() < max_batch.max(1)
                    && group(&b[0]).is_some()
                    && group(&b[0]) == group(&unit) =>
            {
                b.push(unit)
            }
            _ => out.push(vec![unit]),
        }
    }
    out
}

/// Evaluates a batch of units and reports each; `Some` when the session must end.
async fn evaluate_and_report(
    mut client: Client,
    worker_id: String,
    units: Vec<WorkUnit>,
    cfg: WorkerConfig,
    held: &Mutex<Held>,
) -> Option<SessionEnd> {
    let started = Instant::now();
    let ids: Vec<String> = units.iter().map(|u| u.unit_id.clone()).collect();
    tracing::debug!(units = ?ids, "evaluating");
    let outcomes = match tokio::task::spawn_blocking({
        let units = units.clone();
        move || {
            if !cfg.eval_delay.is_zero() {
                std::thread::sleep(cfg.eval_delay);
            }
            evaluate_units(&units, &cfg)
        }
    })
    .await
    {
        Ok(outcomes) => outcomes,
        Err(e) => {
            tracing::error!(units = ?ids, error = %e, "evaluation panicked; the leases will expire");
            return None;
        }
    };
    // Each unit's share of the batch's time.
    let eval_seconds = started.elapsed().as_secs_f64() / units.len().max(1) as f64;
    let mut end = None;
    for (unit, outcome) in units.into_iter().zip(outcomes) {
        if end.is_none() {
            end = report(&mut client, &worker_id, unit.clone(), outcome, eval_seconds).await;
        }
        held.lock()
            .unwrap_or_else(|e| e.into_inner())
            .leases
            .remove(&unit.lease_id);
    }
    end
}

async fn report(
    client: &mut Client,
    worker_id: &str,
    unit: WorkUnit,
    outcome: UnitOutcome,
    eval_seconds: f64,
) -> Option<SessionEnd> {
    let unit_id = unit.unit_id;
    let lease_log = unit.lease_id.clone();
    let reporting = Instant::now();
    let request = ReportRequest {
        worker_id: worker_id.to_string(),
        lease_id: unit.lease_id,
        key: unit.key,
        items: outcome.items,
        eval_seconds,
        norm_stats: outcome.norm_stats.map(|s| namm_proto::NormStats {
            mean: s.mean,
            var: s.var,
            count: s.count,
        }),
    };
    let mut wait = REPORT_RETRY_FIRST;
    let r = loop {
        match client.report(request.clone()).await {
            // The coordinator cannot write its database now (a full disk) and recovers by
            // itself: the result is kept and offered again rather than computed again.
            Err(s) if s.code() == Code::ResourceExhausted => {
                tracing::warn!(unit = %unit_id, error = %s.message(), retry_in_s = wait.as_secs(), "the coordinator cannot record the result yet; keeping it");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(REPORT_RETRY_LAST);
            }
            r => break r,
        }
    };
    match r {
        Ok(resp) => {
            let resp = resp.into_inner();
            if resp.accepted {
                tracing::info!(
                    unit = %unit_id,
                    lease = %lease_log,
                    eval_ms = (eval_seconds * 1e3) as u64,
                    report_ms = reporting.elapsed().as_millis() as u64,
                    "unit done"
                );
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

/// Waits between offers of a result the coordinator could not record yet.
const REPORT_RETRY_FIRST: Duration = Duration::from_secs(1);
const REPORT_RETRY_LAST: Duration = Duration::from_secs(30);

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
