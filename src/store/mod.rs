//! The state store: the only module that knows sled, bincode and the observation log.
//!
//! A model's state is a checkpoint in sled plus the events it applied since, in the
//! observation log ([`wal`]) beside the database; jobs and runner records live in sled alone.
//! One sled database under `state_dir/db`, with a handful of trees (sled's space use grows
//! badly with many trees, so never one per model):
//!
//! | tree     | key                    | value                                  |
//! |----------|------------------------|----------------------------------------|
//! | `meta`   | `schema_version`       | u32, big-endian                         |
//! | `models` | model id (UTF-8)       | [`ModelRecord`]: the model's checkpoint |
//! | `jobs`   | job id (u64 big-endian)| [`Job`]: the hook runner's journal      |
//! | `runner` | model id (UTF-8)       | [`RunnerRecord`]: cooldown, pause        |
//! | `explain`| model id, 0, u64 BE seq| [`ExplainEntry`]: the decision log       |
//! | `receipts`| job id (u64 big-endian)| a retrain hook's receipt (JSON text)   |
//! | `probation`| job id (u64 big-endian)| [`ProbationRecord`]: a retrain's probation |
//!
//! A model's checkpoint carries its probation state (`probation::ModelProbation`) as an
//! extension after the record (`codec::encode_model`), which readers that predate it ignore.
//!
//! Every value is a version byte followed by its bincode 2 payload (standard config, serde), so
//! a record format can change without a flag day: readers dispatch on the byte. The schema
//! version covers the layout as a whole (it is also written as text to `schema_version` beside
//! the database, read before sled opens anything); `migrations/` has one file per version, and
//! [`Store::open`] applies pending migrations and refuses a database from a newer version.
//!
//! # Durability
//!
//! Nothing is durable until fsync'ed: sled 0.34 syncs its log with `sync_file_range`, which
//! persists neither a grown file's metadata nor the disk's cache. So one flusher thread does
//! every flush (group commit: one round serves every flush waiting when it starts): it writes
//! the log's pending frame and `fdatasync`s it, flushes sled and `fsync`s its file and
//! directory, and only then answers. With nothing written it sleeps without a timer. A failed
//! fsync is never retried into a success (fsyncgate): the flushes waiting on it get the error,
//! the log moves to a new segment holding every tail again, and the next round must succeed
//! on its own.
//!
//! # Files
//!
//! - this file: the [`Store`] handle, its shared state, its errors, and the checked access to
//!   sled every other part goes through (a latched sled error fails the store until reopened);
//! - `handles`: the sled database and its trees, opened with relaxed timers, made durable;
//! - `schema`: [`Store::open`], the schema version and its file, migrations;
//! - `codec`: the version byte and bincode payload of every value;
//! - [`records`]: the record types; `models`: checkpoints plus the log ([`wal`]), folding,
//!   forgetting; `jobs`: the job journal; `runner`: the hook runner's per-model records;
//!   `explain`: the models' decision logs;
//! - `flusher`: the flusher thread and its group commit, and the reopen after a failure;
//! - `stats`: the counters behind `status` and the metrics.

mod codec;
mod explain;
mod flusher;
mod handles;
mod jobs;
mod models;
pub mod records;
mod runner;
mod schema;
mod stats;
pub mod wal;

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

pub use codec::{decode_record, encode_record};
pub use models::LoadedModel;
pub use records::{
    DecisionEntry, DecisionOutcome, DecisionRecord, ExplainEntry, GroupLeader, Job, JobState,
    ModelRecord, ProbationRecord, ProbationState, RunnerRecord,
};
pub use schema::SCHEMA_VERSION;
pub use stats::StoreStats;
pub use wal::Recovery;

use codec::{decode, encode};
use handles::{Handles, TreeId};
use stats::Counters;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot open the state store at {path} (if it is damaged beyond repair: stop the daemon, move the state directory aside, start again with an empty one, see the README's \"Durability\" section)"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error(
        "the state store at {path} is damaged: {what}; refusing to start on it rather than as a new, empty store (to start fresh and keep the damaged copy: stop the daemon, `mv {state_dir} {state_dir}.damaged`, start again; see the README's \"Durability\" section)"
    )]
    Damaged {
        path: PathBuf,
        state_dir: PathBuf,
        what: String,
    },
    #[error(
        "the state store at {path} has schema version {found}, newer than this build's {supported}; refusing to touch it (install a newer visutility or restore a backup)"
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("cannot read or write the schema version file {path}")]
    SchemaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state store i/o failed")]
    Sled(#[from] sled::Error),
    #[error("the observation log failed")]
    Wal(#[from] wal::WalError),
    #[error("cannot make the state store durable ({path})")]
    Sync {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode a record")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("cannot decode the record at {key}")]
    Decode {
        key: String,
        #[source]
        source: bincode::error::DecodeError,
    },
    #[error("record at {key} has unknown version {version}")]
    UnknownRecordVersion { key: String, version: u8 },
    #[error("the logged events of model {0} do not decode")]
    BadTail(String),
    #[error("the state store is failing writes (injected fault)")]
    Injected,
    #[error("the state store failed and is not used until it can be reopened ({0})")]
    Failed(String),
    #[error("the state store's flush failed: {0}")]
    Flush(String),
}

impl StoreError {
    /// The stored bytes are there but do not decode (a damaged record, or one from a format
    /// this build does not know): reading them again fails again.
    pub fn is_undecodable(&self) -> bool {
        matches!(
            self,
            StoreError::Decode { .. }
                | StoreError::UnknownRecordVersion { .. }
                | StoreError::BadTail(_)
        )
    }
}

/// A handle on the store; cheap to clone (every clone shares one database and one log).
///
/// # Failures of the disk
///
/// Once sled meets an I/O error (a full disk, a read-only remount), it latches it: every later
/// operation on that database fails, and some reads spin forever inside sled instead of
/// failing. So the store stops touching a database as soon as sled reports an error (it checks
/// sled's latched error before every access), answers every call with
/// [`StoreError::Failed`] meanwhile, and its flusher thread reopens the database once a second
/// until that works again. Writes not yet known to be durable are kept in `pending` and replayed
/// into the reopened database, so nothing that was written and not yet flushed is lost by the
/// reopen: a later successful flush covers it. The log keeps every model's events since its
/// checkpoint in memory, so a failed log write is repaired the same way.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

struct Shared {
    /// `None` only while a reopen is in progress or failed.
    handles: RwLock<Option<Handles>>,
    path: PathBuf,
    flush_every: Duration,
    /// Test seam: while set, writes and flushes fail, as with a full or read-only disk.
    fault: AtomicBool,
    /// sled latched an I/O error: the database is not touched until reopened.
    failed: AtomicBool,
    /// The last write or flush error, cleared by the next successful flush (for `status`).
    last_error: Mutex<Option<String>>,
    /// sled writes since the last successful flush, latest per key, numbered by `seq`, so that
    /// a reopen after a disk failure can replay them. A value here is the very buffer sled
    /// holds (an `IVec` shares it), not a copy.
    pending: Mutex<Pending>,
    seq: AtomicU64,
    /// `seq` covered by the last successful sled flush.
    flushed_seq: AtomicU64,
    /// The observation log's memory: tails and the next frame.
    wal: Mutex<wal::Wal>,
    /// The current segment's open file; only the flusher touches it.
    wal_file: Mutex<Option<(u64, File)>>,
    sync: Arc<SyncShared>,
    stats: Counters,
    recovery: Recovery,
    /// Models whose stored state did not decode, until a checkpoint replaces it or the model
    /// is forgotten.
    undecodable: Mutex<BTreeSet<String>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        lock(&self.sync.state).stop = true;
        self.sync.wake.notify_all();
    }
}

/// The flusher's inbox. Kept apart from [`Shared`] so the flusher can wait on it without
/// keeping the store alive.
#[derive(Default)]
struct SyncShared {
    state: Mutex<SyncState>,
    wake: Condvar,
    /// Set with `state.dirty_since` (under its lock) and cleared with it by the flusher before
    /// it takes the log's frame: a writer that finds it set after its write knows that a
    /// round still to take the frame is due, and skips the lock. (If the flusher had taken the
    /// frame before the write, which holds the log's lock after it, the writer would see the
    /// flag cleared.) Clear is always safe: the writer then takes the lock.
    dirty: AtomicBool,
}

#[derive(Default)]
struct SyncState {
    /// Something was written and not flushed since this moment.
    dirty_since: Option<Instant>,
    /// Flushes waiting for the next round.
    waiters: Vec<Waiter>,
    stop: bool,
}

/// Told the outcome of the flush round that served it.
type Waiter = Box<dyn FnOnce(Result<(), String>) + Send>;

/// (tree, key) -> (write number, value or `None` for a removal).
type Pending = HashMap<(TreeId, Vec<u8>), (u64, Option<sled::IVec>)>;

impl Store {
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The background flush interval (`daemon.flush_interval_ms`).
    pub fn flush_interval(&self) -> Duration {
        self.shared.flush_every
    }

    /// Switches the injected write fault on or off (tests and the fault suite).
    pub fn set_fault(&self, on: bool) {
        self.shared.fault.store(on, Ordering::SeqCst);
        tracing::warn!(on, "state store fault injection switched");
    }

    /// Why the store is failing writes, or `None` when the last flush worked.
    pub fn health(&self) -> Option<String> {
        lock(&self.shared.last_error).clone()
    }

    fn check_fault(&self) -> Result<(), StoreError> {
        if self.shared.fault.load(Ordering::Relaxed) {
            Err(self.record(StoreError::Injected))
        } else {
            Ok(())
        }
    }

    /// The live handles, unless sled latched an error (then the database is not touched).
    fn handles(&self) -> Result<Handles, StoreError> {
        let guard = self
            .shared
            .handles
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let h = match guard.as_ref() {
            Some(h) if !self.shared.failed.load(Ordering::SeqCst) => h,
            _ => return Err(StoreError::Failed(self.health().unwrap_or_default())),
        };
        if let Err(e) = h.config.global_error() {
            drop(guard);
            return Err(self.fail(e));
        }
        Ok(h.clone())
    }

    /// Records a sled error; an I/O error latches the store as failed until it is reopened.
    fn fail(&self, e: sled::Error) -> StoreError {
        if matches!(e, sled::Error::Io(_) | sled::Error::ReportableBug(_))
            && !self.shared.failed.swap(true, Ordering::SeqCst)
        {
            tracing::error!(error = %e, path = %self.shared.path.display(), "the state store failed; serving what it can and reopening it once the disk works again");
            // The flusher waits for work; wake it so it starts reopening.
            self.mark_dirty();
        }
        self.record(StoreError::Sled(e))
    }

    /// Keeps the error for `status`; the flusher then tries a round every interval until one
    /// works, which clears it (a mended disk shows as healthy without waiting for a write).
    fn record(&self, e: StoreError) -> StoreError {
        *lock(&self.shared.last_error) = Some(chain(&e));
        self.mark_dirty();
        e
    }

    fn sled<T>(&self, r: sled::Result<T>) -> Result<T, StoreError> {
        r.map_err(|e| self.fail(e))
    }

    /// Something was written: the flusher makes it durable within the flush interval. Only
    /// the first write after a flush wakes it.
    fn mark_dirty(&self) {
        let sync = &self.shared.sync;
        if sync.dirty.load(Ordering::Acquire) {
            return;
        }
        let mut st = lock(&sync.state);
        sync.dirty.store(true, Ordering::Release);
        if st.dirty_since.is_none() {
            st.dirty_since = Some(Instant::now());
            drop(st);
            sync.wake.notify_one();
        }
    }

    /// The stored bytes under `key`.
    fn get_bytes(&self, tree: TreeId, key: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
        let h = self.handles()?;
        self.sled(h.tree(tree).get(key))
    }

    fn get<T: serde::de::DeserializeOwned>(
        &self,
        tree: TreeId,
        key: &[u8],
    ) -> Result<Option<(T, usize)>, StoreError> {
        let h = self.handles()?;
        match self.sled(h.tree(tree).get(key))? {
            Some(v) => Ok(Some((decode(&String::from_utf8_lossy(key), &v)?, v.len()))),
            None => Ok(None),
        }
    }

    fn put<T: serde::Serialize>(
        &self,
        tree: TreeId,
        key: &[u8],
        value: &T,
    ) -> Result<u64, StoreError> {
        self.put_bytes(tree, key, encode(value)?)
    }

    /// Writes an encoded value (see [`Store::put`]).
    fn put_bytes(&self, tree: TreeId, key: &[u8], bytes: Vec<u8>) -> Result<u64, StoreError> {
        self.check_fault()?;
        let bytes = sled::IVec::from(bytes);
        let len = bytes.len() as u64;
        let h = self.handles()?;
        self.sled(h.tree(tree).insert(key, bytes.clone()))?;
        self.remember(tree, key, Some(bytes));
        let counter = match tree {
            TreeId::Models => &self.shared.stats.checkpoint_bytes,
            _ => &self.shared.stats.record_bytes,
        };
        counter.fetch_add(len, Ordering::Relaxed);
        Ok(len)
    }

    /// Keeps a write until a flush makes it durable. Called after the write reached sled, so
    /// a flush that started after this number was taken covers it.
    fn remember(&self, tree: TreeId, key: &[u8], value: Option<sled::IVec>) {
        let mut pending = lock(&self.shared.pending);
        let seq = self.shared.seq.fetch_add(1, Ordering::SeqCst) + 1;
        pending.insert((tree, key.to_vec()), (seq, value));
        drop(pending);
        self.mark_dirty();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An error with its sources, for logs and `status`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Whether a stored key is a model id every entry point would accept.
fn valid_id(key: &[u8]) -> bool {
    std::str::from_utf8(key).is_ok_and(|s| crate::protocol::validate_model_id(s).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injected_fault_fails_writes_and_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 100).unwrap();
        s.set_fault(true);
        assert!(s.checkpoint("m", &ModelRecord::default()).is_err());
        assert!(s.flush_sync().is_err());
        s.set_fault(false);
        s.checkpoint("m", &ModelRecord::default()).unwrap();
        s.flush_sync().unwrap();
    }
}
