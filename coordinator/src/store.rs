//! The sled database: every value is a prost-encoded message of namm.proto, every key is
//! big-endian so scans come out in (run, generation, candidate, shard) order.
//!
//! Trees: `runs` (run) -> RunRecord, `generations` (run, gen) -> GenerationRecord,
//! `evals` (run, gen, cand, shard[, kind]) -> EvalRecord, `meta` -> schema version and the next
//! run id.
//!
//! The CMA-ES state of a run (after its latest tell) is a file beside the trees,
//! `strategy/run-<run>-g<generation>.pb`: at n = 4172 it holds C and, in lazy mode, B, ~280 MB,
//! and sled keeps every overwritten value that large as a blob it does not reclaim (3.6 GB
//! after 12 generations of a NAMM run). The file of generation g + 1 is written and synced
//! before the transaction that records generation g as told, and older files are removed
//! after it, so one state per run stays on disk and the run record always names a state that
//! exists. Each file carries the sha256 of its contents (see `STATE_MAGIC`). Databases of
//! schema 1 kept the state in the `state` tree; it is still read.

use namm_proto::{EvalRecord, GenerationRecord, RunRecord, StrategyState, UnitKey};
use prost::Message;
use sha2::Digest;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

pub const SCHEMA_VERSION: u64 = 1;
/// A state file starts with this, then the sha256 of the encoded state, then the state: a
/// damaged file is named instead of resuming different numbers. (No protobuf message starts
/// with b'N', wire type 6, so files written without it still read.)
const STATE_MAGIC: &[u8] = b"NAMMSTv1";
const META_SCHEMA: &[u8] = b"schema_version";
const META_NEXT_RUN: &[u8] = b"next_run_id";
/// When a recovering coordinator last checked that the database takes writes.
const META_WRITE_PROBE: &[u8] = b"write_probe_unix_ms";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error("database is in use by another process (stop the coordinator first): {path}")]
    InUse { path: String },
    #[error(
        "database schema version {found} is not supported (this build reads {SCHEMA_VERSION})"
    )]
    Schema { found: u64 },
    #[error(
        "database {path} is damaged: {what}. Restore it from a copy (or move it aside to start \
         a new database); nothing was changed"
    )]
    Damaged { path: String, what: String },
    #[error("database: {0}")]
    Sled(#[from] sled::Error),
    #[error("backup target {path} is not empty: give a new or empty directory")]
    SnapshotTarget { path: String },
    #[error("strategy state file {path}: {source}")]
    StateFile {
        path: String,
        source: std::io::Error,
    },
    #[error("the database cannot grow ({path}): {source}")]
    NoRoom {
        path: String,
        source: std::io::Error,
    },
    #[error("corrupt {what} record at key {key}: {source}")]
    Decode {
        what: &'static str,
        key: String,
        source: prost::DecodeError,
    },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// What [`Store::snapshot`] copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub runs: usize,
    /// Finished generations over all runs.
    pub generations: u64,
    /// The copy's sled size on disk.
    pub bytes: u64,
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    path: std::path::PathBuf,
    strategy_dir: std::path::PathBuf,
    runs: sled::Tree,
    generations: sled::Tree,
    evals: sled::Tree,
    state: sled::Tree,
    meta: sled::Tree,
}

pub fn run_key(run: u64) -> [u8; 8] {
    run.to_be_bytes()
}

pub fn gen_key(run: u64, generation: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&run.to_be_bytes());
    k[8..].copy_from_slice(&generation.to_be_bytes());
    k
}

/// (run, generation, candidate, shard), and for reference and held-out units their kind as a
/// trailing byte: candidate keys keep the layout of schema 1, and a generation's prefix scan
/// still finds every kind.
pub fn eval_key(key: &UnitKey) -> Vec<u8> {
    let mut k = Vec::with_capacity(21);
    k.extend_from_slice(&gen_key(key.run_id, key.generation));
    k.extend_from_slice(&key.candidate.to_be_bytes());
    k.extend_from_slice(&key.shard.to_be_bytes());
    if key.kind != 0 {
        k.push(u8::try_from(key.kind).unwrap_or(u8::MAX));
    }
    k
}

fn decode<M: Message + Default>(what: &'static str, key: &[u8], bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|source| StoreError::Decode {
        what,
        key: hex_key(key),
        source,
    })
}

fn hex_key(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// Everything that changes when a generation is told, written atomically.
pub struct GenerationCommit<'a> {
    pub run: &'a RunRecord,
    pub finished: &'a GenerationRecord,
    /// The state after the tell: `run.generations_done` tells.
    pub state: &'a StrategyState,
    pub next: Option<&'a GenerationRecord>,
}

impl Store {
    /// Opens (or creates) the database at `path` and checks that its records add up
    /// ([`Store::check`]): damage is refused with a message naming it, never a panic (sled
    /// panics on some damaged files) and never a silently shorter history.
    pub fn open(path: &Path) -> Result<Store> {
        Self::open_with_states(path, None)
    }

    /// [`Store::open`] on a copy of a database made without its strategy states, which stay
    /// in `original`'s `strategy/` folder: they are only listed, never read or written.
    pub fn open_copy(copy: &Path, original: &Path) -> Result<Store> {
        Self::open_with_states(copy, Some(original.join("strategy")))
    }

    fn open_with_states(path: &Path, states: Option<std::path::PathBuf>) -> Result<Store> {
        let damaged = |what: String| StoreError::Damaged {
            path: path.display().to_string(),
            what,
        };
        let quiet = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let opened = std::panic::catch_unwind(|| {
            let mut store = Self::open_unchecked(path)?;
            if let Some(dir) = &states {
                store.strategy_dir.clone_from(dir);
            }
            store.check().map_err(|e| match e {
                StoreError::Damaged { .. } => e,
                other => damaged(other.to_string()),
            })?;
            Ok(store)
        });
        std::panic::set_hook(quiet);
        opened.unwrap_or_else(|panic| {
            let reason = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("sled failed reading it");
            Err(damaged(format!("sled: {reason}")))
        })
    }

    fn open_unchecked(path: &Path) -> Result<Store> {
        let db = sled::Config::new().path(path).open().map_err(|source| {
            let in_use = matches!(&source, sled::Error::Io(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                || source.to_string().contains("lock");
            if in_use {
                StoreError::InUse {
                    path: path.display().to_string(),
                }
            } else {
                StoreError::Open {
                    path: path.display().to_string(),
                    source,
                }
            }
        })?;
        let strategy_dir = path.join("strategy");
        std::fs::create_dir_all(&strategy_dir).map_err(|source| StoreError::StateFile {
            path: strategy_dir.display().to_string(),
            source,
        })?;
        let store = Store {
            path: path.to_path_buf(),
            strategy_dir,
            runs: db.open_tree("runs")?,
            generations: db.open_tree("generations")?,
            evals: db.open_tree("evals")?,
            state: db.open_tree("state")?,
            meta: db.open_tree("meta")?,
            db,
        };
        match store.meta.get(META_SCHEMA)? {
            Some(v) => {
                let found = be_u64(&v);
                if found != SCHEMA_VERSION {
                    return Err(StoreError::Schema { found });
                }
            }
            None => {
                store
                    .meta
                    .insert(META_SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
                store.flush()?;
            }
        }
        Ok(store)
    }

    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// The directory the store was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a copy of the whole store to `to` (a new or empty directory), a database in its
    /// own right: `--db` of it restores the history. Consistent as long as no one writes
    /// meanwhile (the coordinator holds its lock). The copy is opened and checked before
    /// this returns; the counts are of what it holds.
    pub fn snapshot(&self, to: &Path) -> Result<Snapshot> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| StoreError::StateFile { path, source }
        };
        if std::fs::read_dir(to).is_ok_and(|mut d| d.next().is_some()) {
            return Err(StoreError::SnapshotTarget {
                path: to.display().to_string(),
            });
        }
        {
            let copy = Self::open_unchecked(to)?;
            let pairs = [
                (&self.runs, &copy.runs),
                (&self.generations, &copy.generations),
                (&self.evals, &copy.evals),
                (&self.state, &copy.state),
                (&self.meta, &copy.meta),
            ];
            for (from, into) in pairs {
                for kv in from.iter() {
                    let (k, v) = kv?;
                    into.insert(k, v)?;
                }
            }
            copy.flush()?;
            for entry in std::fs::read_dir(&self.strategy_dir).map_err(io(&self.strategy_dir))? {
                let entry = entry.map_err(io(&self.strategy_dir))?;
                let name = entry.file_name();
                if name.to_string_lossy().ends_with(".pb") {
                    let target = copy.strategy_dir.join(&name);
                    std::fs::copy(entry.path(), &target).map_err(io(&target))?;
                }
            }
        }
        let copy = Self::open(to)?;
        let runs = copy.list_runs()?;
        let generations = runs.iter().map(|r| u64::from(r.generations_done)).sum();
        Ok(Snapshot {
            runs: runs.len(),
            generations,
            bytes: copy.db.size_on_disk()?,
        })
    }

    /// The records add up: every run's generations are there from 0 to its recorded head
    /// (the one in flight too while it runs), a running run's latest strategy state exists,
    /// and no generation or strategy file belongs to a run the database does not hold (what
    /// a lost or emptied `db` file leaves behind).
    fn check(&self) -> Result<()> {
        let damaged = |what: String| StoreError::Damaged {
            path: self.db_path(),
            what,
        };
        let runs = self.list_runs()?;
        let mut stored: BTreeMap<u64, BTreeSet<u32>> = BTreeMap::new();
        for key in self.generations.iter().keys() {
            let key = key?;
            let Ok(key12) = <[u8; 12]>::try_from(&key[..]) else {
                return Err(damaged(format!(
                    "generation key {} is malformed",
                    hex_key(&key)
                )));
            };
            let (run, generation) = key12.split_at(8);
            stored
                .entry(be_u64(run))
                .or_default()
                .insert(u32::from_be_bytes(
                    generation.try_into().unwrap_or_default(),
                ));
        }
        for run in &runs {
            let id = run.run_id;
            let have = stored.remove(&id).unwrap_or_default();
            let done = run.generations_done;
            let running = run.status == namm_proto::RunStatus::Running as i32;
            let head = if running { done + 1 } else { done };
            if let Some(g) = (0..head).find(|g| !have.contains(g)) {
                return Err(damaged(format!(
                    "run {id} records {done} finished generations, but generation {g} is missing"
                )));
            }
            if running && done > 0 && !self.has_state(id, done)? {
                return Err(damaged(format!(
                    "run {id}: the strategy state after generation {done} ({}) is missing",
                    self.state_path(id, done).display()
                )));
            }
        }
        if let Some(id) = stored.keys().next() {
            return Err(damaged(format!(
                "generations of run {id} are stored, but not the run itself"
            )));
        }
        let known: BTreeSet<u64> = runs.iter().map(|r| r.run_id).collect();
        if let Some((id, file)) = self
            .state_files()?
            .into_iter()
            .find(|(id, _)| !known.contains(id))
        {
            return Err(damaged(format!(
                "{file} holds the strategy of run {id}, which the database does not hold (was \
                 its `db` file lost or emptied?)"
            )));
        }
        Ok(())
    }

    /// The database directory as the user named it (the original of a copy).
    fn db_path(&self) -> String {
        self.strategy_dir
            .parent()
            .unwrap_or(&self.strategy_dir)
            .display()
            .to_string()
    }

    fn has_state(&self, run: u64, generation: u32) -> Result<bool> {
        Ok(self.state_path(run, generation).is_file() || self.state.contains_key(run_key(run))?)
    }

    /// (run, file name) of every state file under `strategy/`.
    fn state_files(&self) -> Result<Vec<(u64, String)>> {
        let io = |source| StoreError::StateFile {
            path: self.strategy_dir.display().to_string(),
            source,
        };
        let mut files = Vec::new();
        if !self.strategy_dir.is_dir() {
            return Ok(files);
        }
        for entry in std::fs::read_dir(&self.strategy_dir).map_err(io)? {
            let name = entry
                .map_err(io)?
                .file_name()
                .to_string_lossy()
                .into_owned();
            let run = name
                .strip_prefix("run-")
                .and_then(|rest| rest.split_once("-g"))
                .and_then(|(run, _)| run.parse::<u64>().ok());
            if let Some(run) = run {
                files.push((run, format!("strategy/{name}")));
            }
        }
        Ok(files)
    }

    /// Creates a run: its record and first in-flight generation, with a fresh run id,
    /// atomically and durably. Its initial strategy state is not stored: the spec determines it.
    pub fn create_run(&self, mut run: RunRecord, first: GenerationRecord) -> Result<RunRecord> {
        let result =
            (&self.meta, &self.runs, &self.generations).transaction(|(meta, runs, gens)| {
                let id = meta.get(META_NEXT_RUN)?.map(|v| be_u64(&v)).unwrap_or(1);
                meta.insert(META_NEXT_RUN, &(id + 1).to_be_bytes())?;
                let mut run = run.clone();
                run.run_id = id;
                let mut first = first.clone();
                first.run_id = id;
                runs.insert(&run_key(id), run.encode_to_vec())?;
                gens.insert(&gen_key(id, first.generation), first.encode_to_vec())?;
                Ok::<_, ConflictableTransactionError<()>>(id)
            });
        run.run_id = tx_result(result)?;
        self.flush()?;
        Ok(run)
    }

    pub fn commit_generation(&self, c: GenerationCommit<'_>) -> Result<()> {
        let id = c.run.run_id;
        self.put_state(id, c.run.generations_done, c.state)?;
        let result = (&self.runs, &self.generations).transaction(|(runs, gens)| {
            runs.insert(&run_key(id), c.run.encode_to_vec())?;
            gens.insert(
                &gen_key(id, c.finished.generation),
                c.finished.encode_to_vec(),
            )?;
            if let Some(next) = c.next {
                gens.insert(&gen_key(id, next.generation), next.encode_to_vec())?;
            }
            Ok::<_, ConflictableTransactionError<()>>(())
        });
        tx_result(result)?;
        self.flush()?;
        self.prune_states(id, c.run.generations_done)
    }

    fn state_path(&self, run: u64, generation: u32) -> std::path::PathBuf {
        self.strategy_dir
            .join(format!("run-{run}-g{generation}.pb"))
    }

    /// Writes the state after `generation` tells: a temporary file, synced, renamed, and the
    /// directory synced, so the file is whole or absent.
    fn put_state(&self, run: u64, generation: u32, state: &StrategyState) -> Result<()> {
        let path = self.state_path(run, generation);
        let io = |source| StoreError::StateFile {
            path: path.display().to_string(),
            source,
        };
        let tmp = path.with_extension("pb.tmp");
        {
            use std::io::Write;
            let payload = state.encode_to_vec();
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(STATE_MAGIC).map_err(io)?;
            f.write_all(&sha2::Sha256::digest(&payload)).map_err(io)?;
            f.write_all(&payload).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &path).map_err(io)?;
        std::fs::File::open(&self.strategy_dir)
            .and_then(|d| d.sync_all())
            .map_err(io)
    }

    /// Removes the run's state files other than the one of `keep` tells.
    fn prune_states(&self, run: u64, keep: u32) -> Result<()> {
        let prefix = format!("run-{run}-g");
        let io = |source| StoreError::StateFile {
            path: self.strategy_dir.display().to_string(),
            source,
        };
        for entry in std::fs::read_dir(&self.strategy_dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let generation = name
                .strip_prefix(&prefix)
                .and_then(|rest| rest.strip_suffix(".pb").or(rest.strip_suffix(".pb.tmp")))
                .and_then(|g| g.parse::<u32>().ok());
            if generation.is_some_and(|g| g != keep) {
                std::fs::remove_file(entry.path()).map_err(io)?;
            }
        }
        Ok(())
    }

    pub fn put_run(&self, run: &RunRecord) -> Result<()> {
        self.runs.insert(run_key(run.run_id), run.encode_to_vec())?;
        self.flush()
    }

    /// Writes and flushes a small record: whether the database takes writes (again).
    pub fn probe_write(&self) -> Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        self.meta
            .insert(META_WRITE_PROBE, &now.as_millis().to_be_bytes())?;
        self.flush()
    }

    pub fn put_eval(&self, eval: &EvalRecord) -> Result<()> {
        let key = eval.key.unwrap_or_default();
        self.evals.insert(eval_key(&key), eval.encode_to_vec())?;
        self.flush()
    }

    pub fn list_runs(&self) -> Result<Vec<RunRecord>> {
        self.runs
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode("run", &k, &v)
            })
            .collect()
    }

    pub fn get_run(&self, run: u64) -> Result<Option<RunRecord>> {
        let key = run_key(run);
        self.runs
            .get(key)?
            .map(|v| decode("run", &key, &v))
            .transpose()
    }

    /// The run's strategy state after `generation` tells, if stored (the state of a run that
    /// has told nothing yet is never stored: its spec determines it).
    pub fn get_state(&self, run: u64, generation: u32) -> Result<Option<StrategyState>> {
        let path = self.state_path(run, generation);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let damaged = |what: &str| StoreError::Damaged {
                    path: self.db_path(),
                    what: format!("{} {what}", path.display()),
                };
                let payload = match bytes.strip_prefix(STATE_MAGIC) {
                    Some(rest) if rest.len() >= 32 => {
                        let (sum, payload) = rest.split_at(32);
                        if sha2::Sha256::digest(payload)[..] != *sum {
                            return Err(damaged("does not match its checksum"));
                        }
                        payload
                    }
                    Some(_) => return Err(damaged("is cut short")),
                    // Written before the checksum was: no check possible.
                    None => &bytes[..],
                };
                return StrategyState::decode(payload).map(Some).map_err(|source| {
                    StoreError::Decode {
                        what: "strategy state",
                        key: path.display().to_string(),
                        source,
                    }
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StoreError::StateFile {
                    path: path.display().to_string(),
                    source,
                })
            }
        }
        // Schema 1 kept the latest state in the `state` tree.
        let key = run_key(run);
        let legacy: Option<StrategyState> = self
            .state
            .get(key)?
            .map(|v| decode("strategy state", &key, &v))
            .transpose()?;
        Ok(legacy.filter(|s| s.generation == u64::from(generation)))
    }

    pub fn get_generation(&self, run: u64, generation: u32) -> Result<Option<GenerationRecord>> {
        let key = gen_key(run, generation);
        self.generations
            .get(key)?
            .map(|v| decode("generation", &key, &v))
            .transpose()
    }

    /// Every generation record of a run, in order (the last one may be in flight).
    pub fn generations(&self, run: u64) -> Result<Vec<GenerationRecord>> {
        self.generations
            .scan_prefix(run_key(run))
            .map(|kv| {
                let (k, v) = kv?;
                decode("generation", &k, &v)
            })
            .collect()
    }

    /// The evaluations stored for one generation (every unit kind), ordered by (candidate,
    /// shard, kind).
    pub fn evals(&self, run: u64, generation: u32) -> Result<Vec<EvalRecord>> {
        self.evals
            .scan_prefix(gen_key(run, generation))
            .map(|kv| {
                let (k, v) = kv?;
                decode("evaluation", &k, &v)
            })
            .collect()
    }
}

fn be_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = bytes.len().min(8);
    b[..n].copy_from_slice(&bytes[..n]);
    u64::from_be_bytes(b)
}

fn tx_result<T>(r: std::result::Result<T, TransactionError<()>>) -> Result<T> {
    match r {
        Ok(v) => Ok(v),
        Err(TransactionError::Storage(e)) => Err(StoreError::Sled(e)),
        Err(TransactionError::Abort(())) => {
            unreachable!("no transaction in this module aborts")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use namm_proto::UnitKind;

    #[test]
    fn keys_sort_by_run_generation_candidate_shard() {
        let k = |run, generation, candidate, shard| {
            eval_key(&UnitKey {
                run_id: run,
                generation,
                candidate,
                shard,
                kind: 0,
            })
        };
        let reference = eval_key(&UnitKey {
            run_id: 1,
            generation: 0,
            candidate: 0,
            shard: 0,
            kind: UnitKind::Reference as i32,
        });
        // Another kind of the same (candidate, shard) is a distinct key in the generation.
        assert_ne!(reference, k(1, 0, 0, 0));
        assert!(reference.starts_with(&gen_key(1, 0)));
        let ordered = [
            k(1, 0, 0, 0),
            reference,
            k(1, 0, 0, 1),
            k(1, 0, 1, 0),
            k(1, 1, 0, 0),
            k(1, 256, 0, 0),
            k(2, 0, 0, 0),
        ];
        assert!(ordered.windows(2).all(|w| w[0] < w[1]));
        assert!(gen_key(1, 255) < gen_key(1, 256));
        assert!(run_key(255) < run_key(256));
    }

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunRecord {
            name: "r".into(),
            ..Default::default()
        };
        let state = StrategyState {
            sigma: 0.25,
            ..Default::default()
        };
        let first = GenerationRecord {
            population: vec![namm_proto::Vector {
                values: vec![1.0, f64::NAN],
            }],
            ..Default::default()
        };
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(
                store.create_run(run.clone(), first.clone()).unwrap().run_id,
                1
            );
            let mut second = store.create_run(run, first.clone()).unwrap();
            assert_eq!(second.run_id, 2);
            // Two tells: the state file of generation 2 replaces that of generation 1.
            for g in [1, 2] {
                let finished = GenerationRecord {
                    run_id: 2,
                    generation: g - 1,
                    ..first.clone()
                };
                second.generations_done = g;
                store
                    .commit_generation(GenerationCommit {
                        run: &second,
                        finished: &finished,
                        state: &StrategyState {
                            generation: u64::from(g),
                            ..state.clone()
                        },
                        next: None,
                    })
                    .unwrap();
            }
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.list_runs().unwrap().len(), 2);
        assert!(store.get_state(1, 0).unwrap().is_none(), "never stored");
        assert!(store.get_state(2, 1).unwrap().is_none(), "pruned");
        let latest = store.get_state(2, 2).unwrap().unwrap();
        assert_eq!((latest.sigma, latest.generation), (0.25, 2));
        let files = std::fs::read_dir(dir.path().join("strategy"))
            .unwrap()
            .count();
        assert_eq!(files, 1, "one state file per run");
        let g = store.get_generation(2, 0).unwrap().unwrap();
        assert_eq!(g.run_id, 2);
        assert_eq!(g.population[0].values[0], 1.0);
        assert!(g.population[0].values[1].is_nan());
        assert!(store.get_run(3).unwrap().is_none());
    }

    #[test]
    fn a_damaged_state_file_is_named_and_one_without_a_checksum_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let state = StrategyState {
            sigma: 0.5,
            generation: 3,
            ..Default::default()
        };
        store.put_state(1, 3, &state).unwrap();
        assert_eq!(store.get_state(1, 3).unwrap().unwrap(), state);
        let path = store.state_path(1, 3);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let e = store.get_state(1, 3).unwrap_err().to_string();
        assert!(e.contains("is damaged") && e.contains("checksum"), "{e}");
        std::fs::write(&path, state.encode_to_vec()).unwrap();
        assert_eq!(store.get_state(1, 3).unwrap().unwrap(), state);
    }
}
