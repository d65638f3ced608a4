//! The coordinator's handle on its database, and what happens when a write fails.
//!
//! sled 0.34 refuses every operation after one failed log write (a full disk, a file-size
//! limit) until the database is opened again, so a coordinator that only logged the error
//! stalled for good. Here a failed write marks the store unwritable; the coordinator then
//! leases nothing and refuses reports with a reason its workers retry on, and
//! [`LiveStore::reopen`], called with backoff, opens the database afresh so that the runs can
//! be rebuilt from what it holds. Reads go on meanwhile on the old handle, except those
//! sled must write for (it compacts pages as it reads them).

use crate::error::CoordError;
use crate::store::{Store, StoreError};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

/// The first retry comes this soon after a failure; each failed retry doubles the wait.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LAST_RETRY: Duration = Duration::from_secs(30);
/// How long a reopen waits for requests still holding the old handle.
const REOPEN_PATIENCE: Duration = Duration::from_secs(5);

pub struct LiveStore {
    path: PathBuf,
    /// None only while a reopen is between closing the old handle and opening the new one.
    store: RwLock<Option<Store>>,
    failure: Mutex<Option<WriteFailure>>,
}

/// Why the database cannot be written, since when, and when to try again.
#[derive(Debug, Clone)]
pub struct WriteFailure {
    pub reason: String,
    pub since: Instant,
    pub retries: u32,
    pub next_try: Instant,
}

impl WriteFailure {
    /// What `namm runs` and a refused report say.
    pub fn describe(&self) -> String {
        format!(
            "the database cannot be written ({}) for {} s; retrying by itself ({} retries so far)",
            self.reason,
            self.since.elapsed().as_secs(),
            self.retries
        )
    }
}

impl LiveStore {
    pub fn new(store: Store) -> Self {
        Self {
            path: store.path().to_path_buf(),
            store: RwLock::new(Some(store)),
            failure: Mutex::new(None),
        }
    }

    /// The open store (a cheap clone sharing its trees). Hold it only for one request: a
    /// reopen waits until every clone of the old handle is gone.
    pub fn get(&self) -> Result<Store, CoordError> {
        self.store
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| CoordError::Unwritable(self.describe_failure()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn failure(&self) -> Option<WriteFailure> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn describe_failure(&self) -> String {
        self.failure().map_or_else(
            || "the database is being reopened".to_string(),
            |f| f.describe(),
        )
    }

    /// Err(Unwritable) while a write failure is not yet recovered from.
    pub fn writable(&self) -> Result<(), CoordError> {
        match self.failure() {
            Some(f) => Err(CoordError::Unwritable(f.describe())),
            None => Ok(()),
        }
    }

    /// Passes `result` through; a store error in it marks the database unwritable (the first
    /// one is logged) and becomes [`CoordError::Unwritable`].
    pub fn written<T>(&self, result: Result<T, CoordError>) -> Result<T, CoordError> {
        let Err(CoordError::Store(e)) = result else {
            return result;
        };
        if !is_write_failure(&e) {
            return Err(CoordError::Store(e));
        }
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        let f = failure.get_or_insert_with(|| {
            tracing::error!(error = %e, "a database write failed; no work is handed out until \
                            it can be written again (retrying by itself)");
            WriteFailure {
                reason: e.to_string(),
                since: Instant::now(),
                retries: 0,
                next_try: Instant::now() + FIRST_RETRY,
            }
        });
        Err(CoordError::Unwritable(f.describe()))
    }

    /// Whether a failure waits for a retry whose time has come.
    pub fn retry_due(&self) -> bool {
        self.failure().is_some_and(|f| f.next_try <= Instant::now())
    }

    /// Closes the database and opens it again: sled keeps a failed write's error until then.
    /// Only once the database file could grow: opening writes, and the old handle, which
    /// still serves reads, cannot be had back. Requests that come meanwhile wait for the new
    /// handle; those that hold a clone of the old one (which keeps its file locked) are
    /// given [`REOPEN_PATIENCE`] to finish.
    pub fn reopen(&self) -> Result<(), StoreError> {
        room_to_grow(&self.path)?;
        let mut slot = self.store.write().unwrap_or_else(|e| e.into_inner());
        *slot = None;
        let deadline = Instant::now() + REOPEN_PATIENCE;
        let store = loop {
            match Store::open(&self.path) {
                Err(StoreError::InUse { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                opened => break opened?,
            }
        };
        *slot = Some(store);
        Ok(())
    }

    /// A retry failed: the next one waits twice as long (up to [`LAST_RETRY`]).
    pub fn retry_failed(&self, reason: String) {
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = failure.as_mut() {
            f.retries += 1;
            f.reason = reason;
            let wait = FIRST_RETRY
                .saturating_mul(1 << f.retries.min(5))
                .min(LAST_RETRY);
            f.next_try = Instant::now() + wait;
        }
    }

    /// The database takes writes again.
    pub fn recovered(&self) {
        if let Some(f) = self
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            tracing::info!(
                after_s = f.since.elapsed().as_secs(),
                retries = f.retries,
                "the database takes writes again; runs resumed from it"
            );
        }
    }
}

/// How much the database file must be able to grow before it is reopened: two of sled's
/// 512 KiB log segments.
const ROOM_TO_GROW: usize = 1 << 20;

/// Writes [`ROOM_TO_GROW`] bytes beside the database, at the offset where its file ends (a
/// sparse file: it takes only that much space), as the file's next segments would be: this
/// fails on a full disk and past a file-size limit alike.
fn room_to_grow(dir: &Path) -> Result<(), StoreError> {
    use std::io::{Seek, SeekFrom, Write};
    let end = std::fs::metadata(dir.join("db")).map_or(0, |m| m.len());
    let probe = dir.join("write-probe");
    let written = std::fs::File::create(&probe).and_then(|mut f| {
        f.seek(SeekFrom::Start(end))?;
        f.write_all(&vec![0u8; ROOM_TO_GROW])?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&probe);
    written.map_err(|source| StoreError::NoRoom {
        path: probe.display().to_string(),
        source,
    })
}

/// Errors of writing (I/O: no space, file too large, …), as opposed to what the data says.
fn is_write_failure(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Sled(_)
            | StoreError::StateFile { .. }
            | StoreError::Open { .. }
            | StoreError::NoRoom { .. }
    )
}
