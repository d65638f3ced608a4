//! The coordinator's state machine behind both gRPC services: runs in flight, the lease book
//! and the store, under one lock (every step is short; the store flushes inside it so an
//! acknowledged change is durable). A generation's tell, the one step that computes for
//! long, runs outside the lock on a run taken out of the map for it.

use crate::book::LeaseBook;
use crate::error::CoordError;
use crate::live_store::LiveStore;
use crate::run::{now_unix_ms, unit_id, ActiveRun, Told};
use crate::store::Store;
use namm::spec::RunSpec;
use namm_proto::{
    EvalRecord, ItemResult, ReportRequest, ReportResponse, RunRecord, RunStatus, UnitKind,
    WatchEvent, WorkUnit, WorkerInfo,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch, Notify};

/// A running run as a progress display shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunProgress {
    pub run_id: u64,
    pub name: String,
    pub phase: String,
    pub done: usize,
    pub total: usize,
    pub workers: usize,
    pub generations_done: u32,
}

pub struct Coordinator {
    db: LiveStore,
    inner: Mutex<Inner>,
    /// Signalled when a tell ends, for calls that wait until no run is being told.
    told: Condvar,
    /// Woken whenever units are queued, for long-polling leases.
    work: Notify,
    events: broadcast::Sender<WatchEvent>,
    /// How many runs are in flight, for `--exit-when-done`.
    active: watch::Sender<usize>,
    /// Set when the server shuts down, so long-polling leases answer at once.
    closing: watch::Sender<bool>,
}

struct Inner {
    runs: BTreeMap<u64, ActiveRun>,
    /// Runs taken out of `runs` while their generation is told, as a display shows them.
    telling: BTreeMap<u64, RunProgress>,
    book: LeaseBook,
}

impl Coordinator {
    /// Opens the coordinator on a database and resumes every unfinished run in it.
    pub fn open(
        store: Store,
        lease_ttl: Duration,
        max_lease: Duration,
    ) -> Result<Arc<Coordinator>, CoordError> {
        let mut inner = Inner {
            runs: BTreeMap::new(),
            telling: BTreeMap::new(),
            book: LeaseBook::new(lease_ttl, max_lease),
        };
        let (runs, told) = resume_runs(&store)?;
        for run in runs.values() {
            inner.book.enqueue(run.missing_units());
        }
        inner.runs = runs;
        let (events, _) = broadcast::channel(1024);
        let (active, _) = watch::channel(inner.runs.len());
        let coord = Arc::new(Coordinator {
            db: LiveStore::new(store),
            inner: Mutex::new(inner),
            told: Condvar::new(),
            work: Notify::new(),
            events,
            active,
            closing: watch::channel(false).0,
        });
        for t in told {
            coord.publish(t);
        }
        Ok(coord)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic inside the lock already aborted that request; the data stays consistent
        // because every mutation is written to the store before the in-memory state moves on.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lock, once no run is being told (what a backup or a cancel must not cut into).
    fn lock_between_tells(&self) -> MutexGuard<'_, Inner> {
        let mut inner = self.lock();
        while !inner.telling.is_empty() {
            inner = self.told.wait(inner).unwrap_or_else(|e| e.into_inner());
        }
        inner
    }

    /// The open store, for one request.
    pub fn store(&self) -> Result<Store, CoordError> {
        self.db.get()
    }

    /// After a failed database write, when the retry is due: reopens the database, checks
    /// that it takes a write, and rebuilds every running run from what it holds (what a
    /// restart would do), keeping the workers and their leases. Called periodically.
    pub fn recover(&self) {
        if !self.db.retry_due() {
            return;
        }
        let mut inner = self.lock();
        if !inner.telling.is_empty() {
            return;
        }
        let told = self.db.reopen().map_err(CoordError::from).and_then(|()| {
            let store = self.db.get()?;
            store.probe_write()?;
            let (runs, told) = resume_runs(&store)?;
            // Units leased before the failure stay leased: their workers report them now.
            for run in runs.values() {
                inner.book.enqueue(run.missing_units());
            }
            inner.runs = runs;
            Ok(told)
        });
        match told {
            Ok(told) => {
                self.active.send_replace(inner.runs.len());
                drop(inner);
                self.db.recovered();
                for t in told {
                    self.publish(t);
                }
                self.work.notify_waiters();
            }
            Err(e) => {
                tracing::warn!(error = %e, "the database still cannot be written; retrying later");
                self.db.retry_failed(e.to_string());
            }
        }
    }

    /// Stops handing out work: pending and future lease calls answer with no units, and
    /// watch streams end so the server can drain.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// The metrics of this moment.
    pub fn metrics(&self) -> crate::metrics::Snapshot {
        let inner = self.lock();
        let (workers_connected, workers_known) = inner.book.worker_counts();
        crate::metrics::Snapshot {
            counters: inner.book.counters.clone(),
            workers_connected,
            workers_known,
            leases_active: inner.book.leases_len(),
            queue_length: inner.book.queue_len(),
            runs: inner
                .runs
                .values()
                .map(|r| {
                    (
                        r.id(),
                        r.record.name.clone(),
                        r.generation(),
                        r.record.best_fitness,
                    )
                })
                .collect(),
        }
    }

    /// Hands back leases a worker will not finish; returns how many were live and its own.
    pub fn release(&self, worker_id: &str, lease_ids: &[String]) -> Result<u32, CoordError> {
        if lease_ids.len() > MAX_RELEASE {
            return Err(CoordError::InvalidArgument(format!(
                "lease_ids has {} entries; at most {MAX_RELEASE}",
                lease_ids.len()
            )));
        }
        let mut inner = self.lock();
        if !inner.book.knows_worker(worker_id) {
            return Err(unknown_worker(worker_id));
        }
        let released = lease_ids
            .iter()
            .filter(|id| inner.book.hand_back(worker_id, id))
            .count() as u32;
        drop(inner);
        if released > 0 {
            self.work.notify_waiters();
        }
        Ok(released)
    }

    /// sha256 of the models the LLM runs in flight need.
    pub fn running_models(&self) -> Vec<String> {
        let mut models: Vec<String> = self
            .lock()
            .runs
            .values()
            .filter_map(|r| r.model_sha256().map(String::from))
            .collect();
        models.sort();
        models.dedup();
        models
    }

    /// Why the running run `run_id` cannot progress now, or "" when nothing is known to
    /// stop it: its units need a model no live worker holds. None when a tell holds the lock:
    /// a query never waits on a strategy's arithmetic.
    pub fn waiting(&self, run_id: u64) -> Option<String> {
        let inner = match self.inner.try_lock() {
            Ok(inner) => inner,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        let running = inner.runs.get(&run_id).filter(|run| run.is_running());
        if let (Some(_), Some(failure)) = (running, self.db.failure()) {
            return Some(failure.describe());
        }
        let sha = running.and_then(|run| run.model_sha256());
        Some(match sha {
            Some(sha) if !inner.book.serves_model(sha) => format!("no worker has model {sha}"),
            _ => String::new(),
        })
    }

    /// `run` with its [`Coordinator::waiting`] reason filled in ("" when it is not known now).
    pub fn annotated(&self, mut run: RunRecord) -> RunRecord {
        run.waiting = self.waiting(run.run_id).unwrap_or_default();
        run
    }

    /// Logs each running run's waiting reason when it appears or clears; `last` holds what
    /// the previous call saw.
    pub fn log_waiting(&self, last: &mut HashMap<u64, String>) {
        let ids: Vec<u64> = self.lock().runs.keys().copied().collect();
        for id in ids {
            let Some(now) = self.waiting(id) else {
                continue;
            };
            let before = last.insert(id, now.clone()).unwrap_or_default();
            if now == before {
                continue;
            }
            if now.is_empty() {
                tracing::info!(run = id, "a worker that can take the run is connected");
            } else {
                tracing::warn!(run = id, "waiting: {now}");
            }
        }
    }

    pub fn lease_ttl(&self) -> Duration {
        self.lock().book.ttl
    }

    pub fn subscribe(&self) -> broadcast::Receiver<WatchEvent> {
        self.events.subscribe()
    }

    pub fn active_runs(&self) -> watch::Receiver<usize> {
        self.active.subscribe()
    }

    fn publish(&self, told: Told) {
        let _ = self.events.send(WatchEvent {
            generation: told.finished,
            run: Some(told.run),
        });
    }

    pub fn submit(&self, spec_toml: &str) -> Result<RunRecord, CoordError> {
        let spec = RunSpec::from_toml(spec_toml)
            .map_err(|e| CoordError::InvalidArgument(e.to_string()))?;
        self.db.writable()?;
        // Building a strategy of 4172 dimensions and drawing its first generation takes a
        // moment and touches no shared state: other calls need not wait for it.
        let run = self
            .db
            .written(self.store().and_then(|s| ActiveRun::create(&s, spec)))?;
        let mut inner = self.lock();
        let record = run.record.clone();
        tracing::info!(run = record.run_id, name = %record.name, "run submitted");
        inner.book.enqueue(run.missing_units());
        inner.runs.insert(record.run_id, run);
        self.active.send_replace(inner.runs.len());
        drop(inner);
        self.work.notify_waiters();
        Ok(record)
    }

    /// Each running run's phase, units done and total, and workers on it; None while the
    /// lock is busy (a tell), so a display never waits on the strategy.
    pub fn progress(&self) -> Option<Vec<RunProgress>> {
        let inner = self.inner.try_lock().ok()?;
        let mut shown: Vec<RunProgress> = inner
            .runs
            .values()
            .map(|run| progress_of(run, &inner.book))
            .chain(inner.telling.values().cloned())
            .collect();
        shown.sort_by_key(|p| p.run_id);
        Some(shown)
    }

    /// Copies the database to `to` while holding the lock, so that no report, tell or
    /// submission lands half in the copy; `db` must name the database this coordinator serves.
    pub fn backup(
        &self,
        db: &std::path::Path,
        to: &std::path::Path,
    ) -> Result<crate::store::Snapshot, CoordError> {
        let same =
            |a: &std::path::Path, b: &std::path::Path| match (a.canonicalize(), b.canonicalize()) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            };
        if !same(db, self.db.path()) {
            return Err(CoordError::FailedPrecondition(format!(
                "this coordinator serves the database {}, not {}",
                self.db.path().display(),
                db.display()
            )));
        }
        let _quiet = self.lock_between_tells();
        Ok(self.store()?.snapshot(to)?)
    }

    pub fn cancel(&self, run_id: u64) -> Result<RunRecord, CoordError> {
        self.db.writable()?;
        let mut inner = self.lock_between_tells();
        let Some(mut run) = inner.runs.remove(&run_id) else {
            return match self.store()?.get_run(run_id)? {
                Some(r) => Err(CoordError::FailedPrecondition(format!(
                    "run_id {run_id} is not running (status {})",
                    status_name(r.status)
                ))),
                None => Err(not_found_run(run_id)),
            };
        };
        run.record.status = RunStatus::Cancelled as i32;
        run.record.stop_reason = format!("cancelled at generation {}", run.generation());
        run.record.finished_unix_ms = now_unix_ms();
        if let Err(e) = self
            .db
            .written(self.store().and_then(|s| Ok(s.put_run(&run.record)?)))
        {
            inner.runs.insert(run_id, run);
            return Err(e);
        }
        inner.book.forget_run(run_id);
        self.active.send_replace(inner.runs.len());
        tracing::info!(run = run_id, "run cancelled");
        let _ = self.events.send(WatchEvent {
            generation: None,
            run: Some(run.record.clone()),
        });
        Ok(run.record)
    }

    pub fn register(&self, info: WorkerInfo) -> String {
        let mut inner = self.lock();
        let name = info.name.clone();
        let id = inner.book.register(WorkerInfo {
            registered_unix_ms: now_unix_ms(),
            ..info
        });
        tracing::info!(worker = %id, %name, "worker registered");
        id
    }

    pub fn heartbeat(&self, worker_id: &str) -> Result<u32, CoordError> {
        self.lock()
            .book
            .heartbeat(worker_id)
            .ok_or_else(|| unknown_worker(worker_id))
    }

    pub fn workers(&self) -> Vec<WorkerInfo> {
        self.lock().book.workers()
    }

    /// Hands out up to `slots` batches of units (as many as the worker registered as its
    /// `max_batch`), waiting up to `wait` for work to appear.
    pub async fn lease(
        &self,
        worker_id: &str,
        slots: u32,
        wait: Duration,
    ) -> Result<Vec<WorkUnit>, CoordError> {
        let slots = slots.clamp(1, 1024) as usize;
        let give_up = tokio::time::Instant::now() + wait;
        let mut closing = self.closing.subscribe();
        loop {
            if *closing.borrow() {
                return Ok(Vec::new());
            }
            let notified = self.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let units = self.try_lease(worker_id, slots)?;
            if !units.is_empty() {
                return Ok(units);
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(give_up) => return Ok(Vec::new()),
                _ = closing.changed() => {}
            }
        }
    }

    fn try_lease(&self, worker_id: &str, slots: usize) -> Result<Vec<WorkUnit>, CoordError> {
        let mut inner = self.lock();
        if !inner.book.knows_worker(worker_id) {
            return Err(unknown_worker(worker_id));
        }
        // Work done now could not be recorded.
        if self.db.failure().is_some() {
            return Ok(Vec::new());
        }
        let Inner { runs, book, .. } = &mut *inner;
        let (models, batch) = book
            .worker(worker_id)
            .map(|w| (w.model_sha256.clone(), w.max_batch.max(1) as usize))
            .unwrap_or_default();
        let taken = book.take(
            worker_id,
            slots,
            batch,
            |key| {
                runs.get(&key.run_id)
                    .is_some_and(|r| r.is_running() && r.knows(key) && !r.has_result(key))
            },
            // Units of an LLM run go only to workers that hold its model.
            |key| {
                runs.get(&key.run_id)
                    .and_then(|r| r.model_sha256())
                    .is_none_or(|sha| models.iter().any(|m| m == sha))
            },
        );
        let now = Instant::now();
        let now_ms = now_unix_ms();
        Ok(taken
            .into_iter()
            .filter_map(|(key, lease_id, deadline)| {
                let run = runs.get(&key.run_id)?;
                Some(WorkUnit {
                    key: Some(key),
                    unit_id: unit_id(&key),
                    params: run.params(&key),
                    objective: Some(run.objective(&key)),
                    item_ids: run.item_ids(&key),
                    lease_id,
                    deadline_unix_ms: now_ms
                        + deadline.saturating_duration_since(now).as_millis() as i64,
                })
            })
            .collect())
    }

    pub fn report(&self, req: ReportRequest) -> Result<ReportResponse, CoordError> {
        let result = self.try_report(req);
        if result.is_err() {
            self.lock().book.counters.reports_rejected += 1;
        }
        result
    }

    fn try_report(&self, req: ReportRequest) -> Result<ReportResponse, CoordError> {
        let key = req
            .key
            .ok_or_else(|| CoordError::InvalidArgument("key is missing".into()))?;
        if !(req.eval_seconds.is_finite() && req.eval_seconds >= 0.0) {
            return Err(CoordError::InvalidArgument(format!(
                "eval_seconds = {}: must be a finite number >= 0",
                req.eval_seconds
            )));
        }
        let ignored = |note: String| {
            tracing::debug!(unit = %unit_id(&key), %note, "report ignored");
            Ok(ReportResponse {
                accepted: false,
                note,
            })
        };
        self.db.writable()?;
        let mut inner = self.lock();
        if inner.telling.contains_key(&key.run_id) {
            return ignored(format!("generation {} is complete", key.generation));
        }
        let Some(run) = inner.runs.get(&key.run_id) else {
            return match self.store()?.get_run(key.run_id)? {
                Some(r) => ignored(format!(
                    "run {} is {}; report ignored",
                    key.run_id,
                    status_name(r.status)
                )),
                None => Err(CoordError::NotFound(format!(
                    "key.run_id = {} names no run",
                    key.run_id
                ))),
            };
        };
        if key.generation < run.generation() {
            return ignored(format!("generation {} is already complete", key.generation));
        }
        if key.generation > run.generation() {
            return Err(CoordError::FailedPrecondition(format!(
                "key.generation = {} but run {} is at generation {}",
                key.generation,
                key.run_id,
                run.generation()
            )));
        }
        if !run.knows(&key) {
            if key.kind() == UnitKind::Reference {
                return ignored(format!(
                    "the reference pass of generation {} is already complete",
                    key.generation
                ));
            }
            return Err(CoordError::InvalidArgument(format!(
                "key.candidate = {}, key.shard = {}, key.kind = {} name no unit of run {} \
                 generation {} (population {})",
                key.candidate,
                key.shard,
                key.kind,
                key.run_id,
                key.generation,
                run.population_size()
            )));
        }
        if run.has_result(&key) {
            return ignored(format!("unit {} already reported", unit_id(&key)));
        }
        if !inner.book.knows_worker(&req.worker_id) {
            return Err(unknown_worker(&req.worker_id));
        }
        match inner.book.lease(&req.lease_id) {
            Some(l) if l.key == key && l.worker_id == req.worker_id => {}
            Some(l) => {
                return Err(CoordError::FailedPrecondition(format!(
                    "lease_id {:?} belongs to unit {} of worker {}, not to unit {} of worker {}",
                    req.lease_id,
                    unit_id(&l.key),
                    l.worker_id,
                    unit_id(&key),
                    req.worker_id
                )))
            }
            None => {
                return Err(CoordError::FailedPrecondition(format!(
                    "lease_id {:?} is not an active lease (expired, or from before a restart); \
                     unit {} will be handed out again",
                    req.lease_id,
                    unit_id(&key)
                )))
            }
        }
        let run = inner.runs.get(&key.run_id).expect("checked above");
        run.validate_items(&key, &req.items)?;
        let worker_name = inner
            .book
            .workers()
            .into_iter()
            .find(|w| w.worker_id == req.worker_id)
            .map(|w| w.name)
            .unwrap_or_default();
        let eval = EvalRecord {
            key: Some(key),
            fitness: unit_fitness(&req.items),
            items: req.items,
            worker_id: req.worker_id.clone(),
            worker_name,
            eval_seconds: req.eval_seconds,
            received_unix_ms: now_unix_ms(),
            norm_stats: req.norm_stats,
        };
        self.db
            .written(self.store().and_then(|s| Ok(s.put_eval(&eval)?)))?;
        if !eval.fitness.is_finite() {
            tracing::warn!(unit = %unit_id(&key), worker = %req.worker_id, fitness = eval.fitness, "evaluation failed (non-finite fitness); recorded and ranked last");
            inner.book.counters.evaluations_failed += 1;
        }
        inner.book.release(&req.lease_id);
        inner.book.completed_by(&req.worker_id);
        inner.book.counters.units_completed += 1;
        inner.book.counters.latency.observe(eval.eval_seconds);
        let run = inner.runs.get_mut(&key.run_id).expect("checked above");
        if !run.record_result(eval) {
            return Ok(ReportResponse {
                accepted: true,
                note: String::new(),
            });
        }
        let mut run = inner.runs.remove(&key.run_id).expect("checked above");
        let mut shown = progress_of(&run, &inner.book);
        shown.phase = format!("{}, updating the strategy", shown.phase);
        inner.telling.insert(key.run_id, shown);
        drop(inner);
        let told = self.db.written(self.store().and_then(|s| run.advance(&s)));
        let mut inner = self.lock();
        inner.telling.remove(&key.run_id);
        self.told.notify_all();
        if run.is_running() {
            inner.book.enqueue(run.missing_units());
            inner.runs.insert(key.run_id, run);
        } else {
            tracing::info!(run = key.run_id, reason = %run.record.stop_reason, "run ended");
            inner.book.forget_run(key.run_id);
            self.active.send_replace(inner.runs.len());
        }
        drop(inner);
        // The report itself is stored: a tell that could not be written is redone when the
        // database is rebuilt from (`recover`), so the report stands.
        let told = told.unwrap_or_else(|e| {
            tracing::warn!(run = key.run_id, error = %e, "the generation could not be stored yet");
            None
        });
        if let Some(g) = told.as_ref().and_then(|t| t.finished.as_ref()) {
            tracing::info!(
                run = key.run_id,
                generation = g.generation,
                best = g.best_fitness,
                mean = g.mean_fitness,
                heldout = g.heldout.as_ref().map(|h| h.fitness),
                kept = g.mean_kept_fraction,
                sigma = g.sigma_after,
                secs = g.generation_seconds,
                "generation complete"
            );
        }
        if let Some(t) = told {
            self.publish(t);
        }
        self.work.notify_waiters();
        Ok(ReportResponse {
            accepted: true,
            note: String::new(),
        })
    }

    /// Puts the units of expired leases back in the queue.
    pub fn expire_leases(&self) {
        let n = self.lock().book.expire(Instant::now());
        if n > 0 {
            self.work.notify_waiters();
        }
    }
}

/// Most leases one `Release` call may name (a worker holds at most 1024 slots).
const MAX_RELEASE: usize = 1024;

pub fn status_name(status: i32) -> &'static str {
    match RunStatus::try_from(status).unwrap_or(RunStatus::Unspecified) {
        RunStatus::Unspecified => "unknown",
        RunStatus::Running => "running",
        RunStatus::Finished => "finished",
        RunStatus::Cancelled => "cancelled",
        RunStatus::Failed => "failed",
    }
}

pub fn not_found_run(run_id: u64) -> CoordError {
    CoordError::NotFound(format!("run_id = {run_id} names no run"))
}

/// A unit's fitness, computed here from its items rather than trusted from the worker:
/// `namm::training::shard_fitness`. Benchmark runs rank candidates by the mean of these; NAMM
/// runs score candidates from the items themselves (`namm::training::fitness`).
fn unit_fitness(items: &[ItemResult]) -> f64 {
    let scores: Vec<f64> = items.iter().map(|i| i.score).collect();
    let f = namm::training::shard_fitness(&scores);
    // proto3 does not store a field equal to its default, and -0.0 == 0.0: a stored -0.0 comes
    // back as +0.0 after a restart. Telling the strategy +0.0 from the start keeps a resumed run
    // bit for bit equal to an uninterrupted one.
    if f == 0.0 {
        0.0
    } else {
        f
    }
}

fn unknown_worker(worker_id: &str) -> CoordError {
    CoordError::NotFound(format!(
        "worker_id = {worker_id:?} is not registered (the coordinator may have restarted); register again"
    ))
}

fn progress_of(run: &ActiveRun, book: &LeaseBook) -> RunProgress {
    let (phase, done, total) = run.progress();
    RunProgress {
        run_id: run.id(),
        name: run.record.name.clone(),
        phase,
        done,
        total,
        workers: book.workers_on(run.id()),
        generations_done: run.record.generations_done,
    }
}

/// Every running run of `store`, resumed where it was, and what watchers should see of the
/// phases completed on the way: a crash (or a failed write) between a phase's last report and
/// its tell leaves the phase complete, and it is told here.
fn resume_runs(store: &Store) -> Result<(BTreeMap<u64, ActiveRun>, Vec<Told>), CoordError> {
    let mut runs = BTreeMap::new();
    let mut told = Vec::new();
    for record in store.list_runs()? {
        if record.status != RunStatus::Running as i32 {
            continue;
        }
        let id = record.run_id;
        let mut run = ActiveRun::resume(store, record)?;
        tracing::info!(
            run = id,
            generation = run.generation(),
            missing = run.missing_units().len(),
            "resumed run"
        );
        while run.is_running() && run.is_complete() {
            told.extend(run.advance(store)?);
        }
        if run.is_running() {
            runs.insert(id, run);
        }
    }
    Ok((runs, told))
}
