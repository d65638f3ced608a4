//! The lease book: the queue of units waiting for a worker, the units out on lease and the
//! workers that hold them.

use crate::metrics::Counters;
use namm_proto::{UnitKey, WorkerInfo};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

pub struct Lease {
    pub key: UnitKey,
    pub worker_id: String,
    pub deadline: Instant,
    /// Heartbeats never push `deadline` past this: a worker that heartbeats but never
    /// finishes (a hung evaluation) loses the unit eventually.
    pub hard_deadline: Instant,
}

pub struct Worker {
    pub info: WorkerInfo,
    pub last_seen: Instant,
}

pub struct LeaseBook {
    /// Prefix of every id this coordinator hands out, so ids of a previous coordinator
    /// lifetime can never be mistaken for current ones.
    boot: String,
    next_id: u64,
    pub ttl: Duration,
    max_lease: Duration,
    queue: VecDeque<UnitKey>,
    leases: HashMap<String, Lease>,
    leased: HashMap<UnitKey, String>,
    workers: HashMap<String, Worker>,
    /// Units put back in the queue by an expiry or a hand-back, to count re-leases.
    returned: HashSet<UnitKey>,
    pub counters: Counters,
}

impl LeaseBook {
    pub fn new(ttl: Duration, max_lease: Duration) -> LeaseBook {
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        LeaseBook {
            boot: format!("{:x}", boot ^ u64::from(std::process::id())),
            next_id: 0,
            ttl,
            max_lease,
            queue: VecDeque::new(),
            leases: HashMap::new(),
            leased: HashMap::new(),
            workers: HashMap::new(),
            returned: HashSet::new(),
            counters: Counters::default(),
        }
    }

    fn fresh_id(&mut self, kind: &str) -> String {
        self.next_id += 1;
        format!("{kind}-{}-{}", self.boot, self.next_id)
    }

    pub fn register(&mut self, mut info: WorkerInfo) -> String {
        let id = self.fresh_id("w");
        info.worker_id = id.clone();
        self.workers.insert(
            id.clone(),
            Worker {
                info,
                last_seen: Instant::now(),
            },
        );
        id
    }

    /// Marks a worker alive and pushes its leases' deadlines out. None if it is unknown.
    pub fn heartbeat(&mut self, worker_id: &str) -> Option<u32> {
        let now = Instant::now();
        let worker = self.workers.get_mut(worker_id)?;
        worker.last_seen = now;
        let mut active = 0;
        for lease in self
            .leases
            .values_mut()
            .filter(|l| l.worker_id == worker_id)
        {
            lease.deadline = (now + self.ttl).min(lease.hard_deadline);
            active += 1;
        }
        Some(active)
    }

    pub fn worker(&self, worker_id: &str) -> Option<&WorkerInfo> {
        self.workers.get(worker_id).map(|w| &w.info)
    }

    pub fn knows_worker(&self, worker_id: &str) -> bool {
        self.workers.contains_key(worker_id)
    }

    pub fn enqueue(&mut self, units: impl IntoIterator<Item = UnitKey>) {
        self.queue.extend(units);
    }

    /// Hands out up to `slots` batches of queued units that `usable` still wants done (the
    /// others leave the queue) and this worker can evaluate (`eligible`; the others stay
    /// queued, in order, for another worker); returns (unit, lease id, deadline).
    ///
    /// A batch is a unit and up to `batch - 1` more of the same generation, kind and shard
    /// (other candidates on the same prompts), taken from anywhere in the queue: a worker runs
    /// them as rows of one batch and shares the prompts' prefill.
    pub fn take(
        &mut self,
        worker_id: &str,
        slots: usize,
        batch: usize,
        mut usable: impl FnMut(&UnitKey) -> bool,
        mut eligible: impl FnMut(&UnitKey) -> bool,
    ) -> Vec<(UnitKey, String, Instant)> {
        let mut out = Vec::new();
        let now = Instant::now();
        let deadline = now + self.ttl;
        let hard_deadline = now + self.max_lease.max(self.ttl);
        let mut skipped = Vec::new();
        let mut batches = 0;
        while batches < slots {
            let Some(key) = self.queue.pop_front() else {
                break;
            };
            if self.leased.contains_key(&key) || !usable(&key) {
                continue;
            }
            if !eligible(&key) {
                skipped.push(key);
                continue;
            }
            let mut keys = vec![key];
            let mut i = 0;
            while keys.len() < batch.max(1) && i < self.queue.len() {
                let k = self.queue[i];
                let same = (k.run_id, k.generation, k.kind, k.shard)
                    == (key.run_id, key.generation, key.kind, key.shard);
                if same && !self.leased.contains_key(&k) && usable(&k) && eligible(&k) {
                    self.queue.remove(i);
                    keys.push(k);
                } else {
                    i += 1;
                }
            }
            for key in keys {
                let lease_id = self.fresh_id("l");
                self.leases.insert(
                    lease_id.clone(),
                    Lease {
                        key,
                        worker_id: worker_id.to_string(),
                        deadline,
                        hard_deadline,
                    },
                );
                self.leased.insert(key, lease_id.clone());
                self.counters.units_leased += 1;
                if self.returned.remove(&key) {
                    self.counters.units_re_leased += 1;
                }
                out.push((key, lease_id, deadline));
            }
            batches += 1;
        }
        for key in skipped.into_iter().rev() {
            self.queue.push_front(key);
        }
        if let Some(w) = self.workers.get_mut(worker_id) {
            w.last_seen = Instant::now();
        }
        out
    }

    /// How many workers hold a lease of run `run_id` now.
    pub fn workers_on(&self, run_id: u64) -> usize {
        let mut ids: Vec<&str> = self
            .leases
            .values()
            .filter(|l| l.key.run_id == run_id)
            .map(|l| l.worker_id.as_str())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    }

    pub fn lease(&self, lease_id: &str) -> Option<&Lease> {
        self.leases.get(lease_id)
    }

    /// Ends a lease whose unit is done (or no longer wanted).
    pub fn release(&mut self, lease_id: &str) {
        if let Some(lease) = self.leases.remove(lease_id) {
            self.leased.remove(&lease.key);
        }
    }

    /// Puts the unit of a lease that `worker_id` holds back at the front of the queue. False
    /// when the lease is not live or belongs to another worker (nothing changes then).
    pub fn hand_back(&mut self, worker_id: &str, lease_id: &str) -> bool {
        if self
            .leases
            .get(lease_id)
            .is_none_or(|l| l.worker_id != worker_id)
        {
            return false;
        }
        let Some(lease) = self.leases.remove(lease_id) else {
            return false;
        };
        self.leased.remove(&lease.key);
        tracing::info!(lease = %lease_id, worker = %worker_id, unit = %crate::run::unit_id(&lease.key), "unit handed back; it goes out again first");
        self.counters.units_released += 1;
        self.returned.insert(lease.key);
        self.queue.push_front(lease.key);
        true
    }

    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    pub fn leases_len(&self) -> usize {
        self.leases.len()
    }

    pub fn completed_by(&mut self, worker_id: &str) {
        if let Some(w) = self.workers.get_mut(worker_id) {
            w.info.units_completed += 1;
        }
    }

    /// Returns the units of expired leases to the front of the queue, so they go out again
    /// before anything else. Returns how many went back.
    pub fn expire(&mut self, now: Instant) -> usize {
        let expired: Vec<String> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        // Workers silent for long are dropped from the listing; a live one that was dropped
        // gets NotFound on its next call and registers again.
        let forget_after = (self.ttl * 10).max(Duration::from_secs(60));
        self.workers
            .retain(|_, w| now.saturating_duration_since(w.last_seen) < forget_after);
        for id in &expired {
            if let Some(lease) = self.leases.remove(id) {
                self.leased.remove(&lease.key);
                tracing::warn!(lease = %id, worker = %lease.worker_id, unit = %crate::run::unit_id(&lease.key), "lease expired; unit goes back to the queue");
                self.counters.units_expired += 1;
                self.returned.insert(lease.key);
                self.queue.push_front(lease.key);
            }
        }
        expired.len()
    }

    /// Drops every queued or leased unit of a run (cancelled or finished).
    pub fn forget_run(&mut self, run_id: u64) {
        self.queue.retain(|k| k.run_id != run_id);
        self.returned.retain(|k| k.run_id != run_id);
        let gone: Vec<String> = self
            .leases
            .iter()
            .filter(|(_, l)| l.key.run_id == run_id)
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.release(&id);
        }
    }

    /// Whether a worker heard from within one TTL holds the model with this sha256.
    pub fn serves_model(&self, sha256: &str) -> bool {
        let now = Instant::now();
        self.workers.values().any(|w| {
            now.duration_since(w.last_seen) < self.ttl
                && w.info.model_sha256.iter().any(|m| m == sha256)
        })
    }

    /// (workers heard from within one TTL, workers known).
    pub fn worker_counts(&self) -> (usize, usize) {
        let now = Instant::now();
        let alive = self
            .workers
            .values()
            .filter(|w| now.duration_since(w.last_seen) < self.ttl)
            .count();
        (alive, self.workers.len())
    }

    pub fn workers(&self) -> Vec<WorkerInfo> {
        let now = Instant::now();
        let mut out: Vec<WorkerInfo> = self
            .workers
            .values()
            .map(|w| {
                let mut info = w.info.clone();
                let ago = now.duration_since(w.last_seen);
                info.last_seen_unix_ms =
                    crate::run::now_unix_ms() - i64::try_from(ago.as_millis()).unwrap_or(i64::MAX);
                info.alive = ago < self.ttl;
                info.active_leases = self
                    .leases
                    .values()
                    .filter(|l| l.worker_id == info.worker_id)
                    .count() as u32;
                info
            })
            .collect();
        out.sort_by_key(|w| w.registered_unix_ms);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(candidate: u32) -> UnitKey {
        UnitKey {
            run_id: 1,
            generation: 0,
            candidate,
            shard: 0,
            kind: 0,
        }
    }

    fn book_with_worker(ttl: Duration) -> (LeaseBook, String) {
        let mut book = LeaseBook::new(ttl, Duration::from_secs(3600));
        let w = book.register(WorkerInfo::default());
        (book, w)
    }

    #[test]
    fn expired_leases_go_back_to_the_front_of_the_queue() {
        let (mut book, w) = book_with_worker(Duration::from_secs(1));
        book.enqueue((0..4).map(key));
        let first = book.take(&w, 2, 1, |_| true, |_| true);
        assert_eq!(
            first.iter().map(|t| t.0.candidate).collect::<Vec<_>>(),
            [0, 1]
        );
        assert_eq!(book.expire(Instant::now()), 0);
        assert_eq!(book.expire(Instant::now() + Duration::from_secs(2)), 2);
        assert!(
            book.lease(&first[0].1).is_none(),
            "expired lease still active"
        );
        let again: Vec<u32> = book
            .take(&w, 4, 1, |_| true, |_| true)
            .iter()
            .map(|t| t.0.candidate)
            .collect();
        assert_eq!(again.len(), 4);
        assert_eq!(&again[2..], [2, 3]);
        assert!(again[..2].contains(&0) && again[..2].contains(&1));
    }

    #[test]
    fn heartbeats_extend_leases_and_unknown_workers_are_refused() {
        let (mut book, w) = book_with_worker(Duration::from_millis(300));
        book.enqueue([key(0)]);
        let taken = book.take(&w, 1, 1, |_| true, |_| true);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(book.heartbeat(&w), Some(1));
        // Past the original deadline but within the extended one.
        assert_eq!(book.expire(Instant::now() + Duration::from_millis(150)), 0);
        assert!(book.lease(&taken[0].1).is_some());
        assert_eq!(book.heartbeat("w-unknown"), None);
        // Long silence: the lease goes back and the worker is forgotten.
        assert_eq!(book.expire(Instant::now() + Duration::from_secs(61)), 1);
        assert!(book.workers().is_empty());
        assert_eq!(book.heartbeat(&w), None);
    }

    #[test]
    fn heartbeats_do_not_extend_a_lease_past_its_hard_deadline() {
        let mut book = LeaseBook::new(Duration::from_millis(100), Duration::from_millis(150));
        let w = book.register(WorkerInfo::default());
        book.enqueue([key(0)]);
        book.take(&w, 1, 1, |_| true, |_| true);
        std::thread::sleep(Duration::from_millis(80));
        book.heartbeat(&w);
        assert_eq!(book.expire(Instant::now() + Duration::from_millis(90)), 1);
    }

    #[test]
    fn a_handed_back_unit_goes_out_first_and_counts_as_re_leased() {
        let (mut book, w) = book_with_worker(Duration::from_secs(10));
        let other = book.register(WorkerInfo::default());
        book.enqueue((0..3).map(key));
        let taken = book.take(&w, 2, 1, |_| true, |_| true);
        assert!(
            !book.hand_back(&other, &taken[1].1),
            "another worker's lease"
        );
        assert!(!book.hand_back(&w, "l-nope"));
        assert!(book.hand_back(&w, &taken[1].1));
        assert!(!book.hand_back(&w, &taken[1].1), "twice");
        let next = book.take(&other, 1, 1, |_| true, |_| true);
        assert_eq!(next[0].0.candidate, 1);
        assert_eq!(book.counters.units_released, 1);
        assert_eq!(book.counters.units_re_leased, 1);
        assert_eq!(book.counters.units_leased, 3);
    }

    #[test]
    fn a_unit_is_never_leased_twice_and_unwanted_units_are_dropped() {
        let (mut book, w) = book_with_worker(Duration::from_secs(10));
        book.enqueue([key(0), key(0), key(1), key(2)]);
        let taken: Vec<u32> = book
            .take(&w, 10, 1, |k| k.candidate != 2, |_| true)
            .iter()
            .map(|t| t.0.candidate)
            .collect();
        assert_eq!(taken, [0, 1]);
        assert!(book.take(&w, 10, 1, |_| true, |_| true).is_empty());
    }

    #[test]
    fn units_a_worker_cannot_evaluate_stay_queued_in_order() {
        let mut book = LeaseBook::new(Duration::from_secs(5), Duration::from_secs(60));
        let w = book.register(WorkerInfo::default());
        book.enqueue((0..4).map(key));
        let taken = book.take(&w, 10, 1, |_| true, |k| k.candidate % 2 == 1);
        let got: Vec<u32> = taken.iter().map(|t| t.0.candidate).collect();
        assert_eq!(got, vec![1, 3]);
        assert_eq!(book.queue_len(), 2);
        let rest: Vec<u32> = book
            .take(&w, 10, 1, |_| true, |_| true)
            .iter()
            .map(|t| t.0.candidate)
            .collect();
        assert_eq!(rest, vec![0, 2]);
        book.forget_run(1);
        assert_eq!(book.workers()[0].active_leases, 0);
    }

    #[test]
    fn a_batch_is_candidates_of_one_shard() {
        let (mut book, w) = book_with_worker(Duration::from_secs(5));
        // Candidate-major, as a generation is laid out: c0s0 c0s1 c1s0 c1s1 c2s0 c2s1.
        let unit = |c: u32, s: u32| UnitKey { shard: s, ..key(c) };
        book.enqueue((0..3).flat_map(|c| (0..2).map(move |s| unit(c, s))));
        let got = |taken: Vec<(UnitKey, String, Instant)>| -> Vec<(u32, u32)> {
            taken.iter().map(|t| (t.0.candidate, t.0.shard)).collect()
        };
        let first = got(book.take(&w, 1, 2, |_| true, |k| k.candidate != 1));
        assert_eq!(
            first,
            [(0, 0), (2, 0)],
            "one batch: shard 0 of candidates 0 and 2"
        );
        let second = got(book.take(&w, 2, 8, |_| true, |_| true));
        assert_eq!(
            second,
            [(0, 1), (1, 1), (2, 1), (1, 0)],
            "two batches, by shard"
        );
        assert_eq!(book.queue_len(), 0);
    }
}
