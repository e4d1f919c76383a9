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

pub mod records;
pub mod wal;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::policy::Obs;

pub use records::{DecisionRecord, GroupLeader, Job, JobState, ModelRecord, RunnerRecord};
pub use wal::Recovery;

/// The schema this build writes. See `migrations/`.
pub const SCHEMA_VERSION: u32 = 2;

/// The version byte in front of every record this build writes.
const RECORD_VERSION: u8 = 1;

/// sled's page cache. Since the observation log, sled holds only checkpoints (read once when a
/// model loads, written when its log outgrows it), jobs and runner records, so a large cache
/// buys nothing but memory. The bound is loose: sled counts page accesses in batches of 64 per
/// shard of its LRU, over 256 shards, so a burst that touches every model once (a restart under
/// traffic) leaves most of the pages it read or wrote cached whatever this says.
const CACHE_BYTES: u64 = 4 << 20;

const SCHEMA_KEY: &[u8] = b"schema_version";

/// The schema version again, as text in a file beside the database, so that a store from a
/// newer release is recognised and refused before sled opens it: opening a sled database
/// writes to it (a fresh snapshot), and a refused store must stay untouched. Its presence also
/// says that a database was created here and made durable: a missing or empty sled
/// configuration next to it is damage, never a new store.
const SCHEMA_FILE: &str = "schema_version";

/// A model's log is folded into a new checkpoint once it holds this many times the bytes of
/// the checkpoint (and at least [`FOLD_MIN_BYTES`]): writing a 4.6 KB checkpoint after about
/// 28 KB of log keeps the checkpoints' share of the bytes written per event near a sixth of
/// the log's, whatever the window size.
const FOLD_RATIO: u64 = 6;
const FOLD_MIN_BYTES: u64 = 4 << 10;
/// Over this many bytes of log held for all models together, every model appending with at
/// least [`FOLD_MIN_BYTES`] / 4 in its log folds: memory and replay time stay bounded with
/// many active models.
const TAIL_BUDGET: u64 = 8 << 20;
/// With more segments than this before the current one, the tails in the oldest are copied
/// forward (models that stopped sending would otherwise keep old segments forever).
const MAX_OLD_SEGMENTS: usize = 4;

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

#[derive(Default)]
struct Counters {
    wal_bytes: AtomicU64,
    checkpoint_bytes: AtomicU64,
    record_bytes: AtomicU64,
    checkpoints: AtomicU64,
    fsyncs: AtomicU64,
    flushes: AtomicU64,
    flush_errors: AtomicU64,
    segments_deleted: AtomicU64,
}

/// What the store has written and holds, for `status` and the metrics (base units).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StoreStats {
    /// Bytes handed to the file system by the store: log frames, checkpoints and other
    /// records (sled adds its own framing and rewrites on top of the last two).
    pub bytes_written: u64,
    pub wal_bytes_written: u64,
    pub checkpoint_bytes_written: u64,
    pub record_bytes_written: u64,
    pub checkpoints: u64,
    pub fsyncs: u64,
    pub flushes: u64,
    pub flush_errors: u64,
    /// Log segments on disk and their bytes.
    pub wal_segments: usize,
    pub wal_bytes: u64,
    /// Events held in memory for models since their checkpoints, and their encoded bytes.
    pub tail_events: u64,
    pub tail_bytes: u64,
    pub wal_segments_deleted: u64,
    /// What the last start recovered from the log.
    pub recovery: Recovery,
}

/// (tree, key) -> (write number, value or `None` for a removal).
type Pending = HashMap<(TreeId, Vec<u8>), (u64, Option<sled::IVec>)>;

#[derive(Clone)]
struct Handles {
    /// Shares sled's latched-error slot with the open database.
    config: sled::Config,
    db: sled::Db,
    models: sled::Tree,
    jobs: sled::Tree,
    runner: sled::Tree,
    /// sled's data file, fsync'ed after each of its flushes.
    data: Arc<File>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum TreeId {
    Models,
    Jobs,
    Runner,
}

/// A model's persisted state: its checkpoint and the events logged after it.
#[derive(Debug, Default)]
pub struct LoadedModel {
    pub record: Option<ModelRecord>,
    /// Bytes of the checkpoint as stored (what the next fold will cost).
    pub checkpoint_bytes: u64,
    /// Events after the checkpoint, in order; the first has `seq` = `record.events + 1`.
    pub events: Vec<Obs>,
    /// The log held events the checkpoint does not follow on from (lost in between): replayed
    /// anyway, but counted and logged.
    pub gap: bool,
    /// The events come from an earlier run: fold them into a checkpoint now.
    pub recovered: bool,
}

/// Timer slack for sled's I/O threads. sled 0.34.7 keeps seven pool threads that each wake
/// once a second to poll an empty queue (its src/threadpool.rs; nothing configures it), which
/// is most of an idle daemon's wakeups. Their one-second waits are the only timed waits they
/// do; with this slack the kernel may defer each wakeup until the CPU wakes anyway for
/// something else, so on an idle host they stop waking it on their own. Set only on the
/// thread that starts the pool (the threads inherit it), never on the daemon's own threads,
/// whose timers (hook timeouts, flush interval) keep their precision.
const SLED_TIMER_SLACK_NS: libc::c_ulong = 30_000_000_000;

fn relax_timers() {
    // SAFETY: PR_SET_TIMERSLACK takes a value and changes only the calling thread's slack.
    let rc = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, SLED_TIMER_SLACK_NS, 0, 0, 0) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot set timer slack for sled's threads");
    }
}

impl Handles {
    /// Opens the database without creating any tree.
    fn open_db(path: &Path) -> Result<(sled::Config, sled::Db), StoreError> {
        let config = sled::Config::new()
            .path(path)
            // The store's own flusher thread flushes, so it knows what is durable.
            .flush_every_ms(None)
            .mode(sled::Mode::LowSpace)
            .cache_capacity(CACHE_BYTES);
        // The lock of a store this process just closed can outlive it by a flush round (the
        // flusher thread may hold the last reference): wait a moment for it rather than fail.
        // Another process holding the store still fails, a second later.
        let mut tries = 0;
        let db = loop {
            match Self::open_relaxed(&config) {
                Err(sled::Error::Io(e))
                    if tries < 20 && e.to_string().contains("could not acquire lock") =>
                {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                r => {
                    break r.map_err(|source| StoreError::Open {
                        path: path.to_owned(),
                        source,
                    })?;
                }
            }
        };
        Ok((config, db))
    }

    /// Opens the database from a thread of its own with [`SLED_TIMER_SLACK_NS`] of timer
    /// slack, so that sled's I/O pool, which starts on the first task it is given (the open's
    /// recovery reads, or the flush below), inherits it. The thread does nothing else.
    fn open_relaxed(config: &sled::Config) -> sled::Result<sled::Db> {
        std::thread::scope(|s| {
            s.spawn(|| {
                relax_timers();
                let db = config.open()?;
                {
                    let mut first = std::pin::pin!(db.flush_async());
                    let _ = std::future::Future::poll(
                        first.as_mut(),
                        &mut std::task::Context::from_waker(std::task::Waker::noop()),
                    );
                }
                Ok(db)
            })
            .join()
            .unwrap_or_else(|_| {
                Err(sled::Error::ReportableBug(
                    "the thread opening the store panicked".into(),
                ))
            })
        })
    }

    fn new(config: sled::Config, db: sled::Db, path: &Path) -> Result<Handles, StoreError> {
        let data_path = path.join("db");
        let data = File::open(&data_path).map_err(|source| StoreError::Sync {
            path: data_path,
            source,
        })?;
        Ok(Handles {
            models: db.open_tree("models")?,
            jobs: db.open_tree("jobs")?,
            runner: db.open_tree("runner")?,
            db,
            config,
            data: Arc::new(data),
        })
    }

    fn tree(&self, id: TreeId) -> &sled::Tree {
        match id {
            TreeId::Models => &self.models,
            TreeId::Jobs => &self.jobs,
            TreeId::Runner => &self.runner,
        }
    }

    /// Makes what sled wrote durable: its data file (data and size) and its directory (its
    /// snapshots are created and renamed there).
    fn sync(&self, path: &Path) -> Result<u64, StoreError> {
        self.data.sync_data().map_err(|source| StoreError::Sync {
            path: path.join("db"),
            source,
        })?;
        wal::sync_dir(path)?;
        Ok(2)
    }
}

/// Checks that a store this directory has held is still there in a form sled will not take
/// for a new one (sled starts afresh, silently, on a missing or empty configuration file).
fn check_damage(dir: &Path, path: &Path) -> Result<(), StoreError> {
    let damaged = |what: String| StoreError::Damaged {
        path: path.to_owned(),
        state_dir: dir.to_owned(),
        what,
    };
    for name in ["conf", "db"] {
        let file = path.join(name);
        match std::fs::metadata(&file) {
            Ok(m) if m.len() > 0 => {}
            Ok(_) => return Err(damaged(format!("{} is empty", file.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(damaged(format!("{} is missing", file.display())));
            }
            Err(source) => return Err(StoreError::Sync { path: file, source }),
        }
    }
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the database under `dir`, migrating it to
    /// [`SCHEMA_VERSION`], and reads the observation log. `flush_every_ms` is the background
    /// flush interval.
    pub fn open(dir: &Path, flush_every_ms: u64) -> Result<Store, StoreError> {
        let path = dir.join("db");
        let marker = dir.join(SCHEMA_FILE);
        let known = match std::fs::read_to_string(&marker) {
            Ok(text) => {
                let found: u32 = text.trim().parse().map_err(|_| StoreError::SchemaFile {
                    path: marker.clone(),
                    source: std::io::Error::other(format!("not a version number: {text:?}")),
                })?;
                if found > SCHEMA_VERSION {
                    return Err(StoreError::TooNew {
                        path,
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
                true
            }
            // Stores written before the file existed are all schema 1 or older; a store
            // without it and without a database is new.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(source) => {
                return Err(StoreError::SchemaFile {
                    path: marker,
                    source,
                });
            }
        };
        if known {
            check_damage(dir, &path)?;
        }
        let fresh = !path.join("conf").exists();
        let (config, db) = Handles::open_db(&path)?;
        // Read the version before creating any tree, so a newer store is left untouched.
        let meta = db.open_tree("meta")?;
        let found = match meta.get(SCHEMA_KEY)? {
            Some(v) if v.len() == 4 => u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
            Some(_) => 0,
            // A brand-new database (no trees yet) starts at the current schema; an old one
            // without the key predates versioning.
            None if db.tree_names().len() <= 2 && db.is_empty() => SCHEMA_VERSION,
            None => 0,
        };
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path,
                found,
                supported: SCHEMA_VERSION,
            });
        }
        let handles = Handles::new(config, db, &path)?;
        let (wal, recovery) = wal::Wal::open(&dir.join("wal"))?;
        let sync = Arc::new(SyncShared::default());
        let store = Store {
            shared: Arc::new(Shared {
                handles: RwLock::new(Some(handles)),
                path,
                flush_every: Duration::from_millis(flush_every_ms.max(1)),
                fault: AtomicBool::new(false),
                failed: AtomicBool::new(false),
                last_error: Mutex::new(None),
                pending: Mutex::new(HashMap::new()),
                seq: AtomicU64::new(0),
                flushed_seq: AtomicU64::new(0),
                wal: Mutex::new(wal),
                wal_file: Mutex::new(None),
                sync: sync.clone(),
                stats: Counters::default(),
                recovery,
            }),
        };
        store.migrate(&meta, found)?;
        if fresh {
            // sled created its files without syncing them or their names: make the new
            // database durable before the schema file says that one exists here.
            let conf = store.shared.path.join("conf");
            File::open(&conf)
                .and_then(|f| f.sync_all())
                .map_err(|source| StoreError::Sync { path: conf, source })?;
            wal::sync_dir(dir)?;
        }
        write_schema_file(&marker)?;
        let r = &store.shared.recovery;
        if r.segments > 0 {
            tracing::info!(
                segments = r.segments,
                frames = r.frames,
                events = r.events,
                models = r.models,
                torn_bytes = r.torn_bytes,
                "observation log read"
            );
        }
        if r.torn_bytes > 0 {
            tracing::warn!(torn_bytes = r.torn_bytes, segments = ?r.torn_segments, "the observation log ended in a torn write (a power cut during a write that was never acknowledged); what followed the last whole frame was dropped");
        }
        store.skip_invalid_ids()?;
        spawn_flusher(Arc::downgrade(&store.shared), sync);
        Ok(store)
    }

    /// Stores written before model ids were checked everywhere may hold ids no entry point
    /// accepts now (empty, `../..`, terminal escapes, a leading `-`). They stay on disk but are
    /// never loaded, shown or handed to a hook: each is logged here, once, and [`Store::models`],
    /// [`Store::runners`], [`Store::jobs`] and [`Store::recovered_models`] pass over them.
    fn skip_invalid_ids(&self) -> Result<(), StoreError> {
        let h = self.handles()?;
        for (tree, name) in [(&h.models, "models"), (&h.runner, "runner")] {
            for key in tree.iter().keys() {
                let key = self.sled(key)?;
                if !valid_id(&key) {
                    tracing::error!(
                        tree = name,
                        model_id = %String::from_utf8_lossy(&key),
                        "skipping a stored record with an invalid model id: it is never loaded or shown"
                    );
                }
            }
        }
        let mut w = lock(&self.shared.wal);
        let bad: Vec<Arc<str>> = w
            .tails
            .keys()
            .filter(|k| !valid_id(k.as_bytes()))
            .cloned()
            .collect();
        for id in bad {
            tracing::error!(model_id = %id, "dropping logged events of an invalid model id");
            w.drop_tail(&id);
        }
        Ok(())
    }

    /// Applies every migration from `from` up to [`SCHEMA_VERSION`], one version at a time,
    /// recording each step so that a cut mid-way resumes where it stopped. The schema file is
    /// written after the last step, so until then a release that only knows an older schema
    /// refuses the store (from sled's key) and this one resumes it.
    fn migrate(&self, meta: &sled::Tree, from: u32) -> Result<(), StoreError> {
        let mut v = from;
        while v < SCHEMA_VERSION {
            // 0 -> 1: only the version key is new (migrations/0001_initial.md).
            // 1 -> 2: the observation log beside the database, created by `Store::open`
            // before this runs; no record is rewritten (migrations/0002_observation_log.md).
            v += 1;
            meta.insert(SCHEMA_KEY, &v.to_be_bytes())?;
            tracing::info!(schema_version = v, "state store migrated");
        }
        if from == SCHEMA_VERSION {
            meta.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
        }
        let h = self.handles()?;
        h.db.flush()?;
        h.sync(&self.shared.path)?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The schema version recorded in the database (after [`Store::open`], this build's).
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let h = self.handles()?;
        let meta = self.sled(h.db.open_tree("meta"))?;
        Ok(match self.sled(meta.get(SCHEMA_KEY))? {
            Some(v) if v.len() == 4 => u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
            _ => 0,
        })
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
        self.check_fault()?;
        let bytes = sled::IVec::from(encode(value)?);
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

    /// The model's checkpoint alone (no logged events): for views of models not loaded.
    pub fn load_model(&self, model_id: &str) -> Result<Option<ModelRecord>, StoreError> {
        Ok(self
            .get(TreeId::Models, model_id.as_bytes())?
            .map(|(r, _)| r))
    }

    /// The model's checkpoint and the events logged after it, for the model to replay.
    pub fn load_model_state(&self, model_id: &str) -> Result<LoadedModel, StoreError> {
        let (record, checkpoint_bytes) = match self.get(TreeId::Models, model_id.as_bytes())? {
            Some((r, n)) => (Some(r), n as u64),
            None => (None, 0),
        };
        let covered = record.as_ref().map_or(0, |r: &ModelRecord| r.events);
        let mut out = LoadedModel {
            record,
            checkpoint_bytes,
            ..LoadedModel::default()
        };
        let mut w = lock(&self.shared.wal);
        let Some(tail) = w.tails.get(model_id) else {
            return Ok(out);
        };
        if tail.next_seq() <= covered + 1 {
            // Everything logged is in the checkpoint already.
            w.drop_tail(model_id);
            return Ok(out);
        }
        let events = wal::decode_events(&tail.bytes)
            .ok_or_else(|| StoreError::BadTail(model_id.to_owned()))?;
        out.recovered = tail.recovered;
        let skip = (covered + 1).saturating_sub(tail.start_seq) as usize;
        out.gap = tail.start_seq > covered + 1;
        out.events = events.into_iter().skip(skip).collect();
        Ok(out)
    }

    /// Logs events a model applied (`first_seq` numbers the first: the model's event count
    /// before them, plus one). Returns whether the model should fold its log into a new
    /// checkpoint now, given the size of its last one.
    pub fn append(
        &self,
        model_id: &Arc<str>,
        first_seq: u64,
        events: &[Obs],
        checkpoint_bytes: u64,
    ) -> Result<bool, StoreError> {
        self.check_fault()?;
        if events.is_empty() {
            return Ok(false);
        }
        let mut w = lock(&self.shared.wal);
        let tail = w.append(model_id, first_seq, events);
        let over_budget = w.tail_bytes > TAIL_BUDGET;
        drop(w);
        self.mark_dirty();
        Ok(tail >= FOLD_MIN_BYTES.max(FOLD_RATIO * checkpoint_bytes)
            || (over_budget && tail >= FOLD_MIN_BYTES / 4))
    }

    /// Writes the model's state as its new checkpoint; its logged events are then no longer
    /// needed (their segments go once a flush made this durable). Returns the checkpoint's
    /// size in bytes.
    pub fn checkpoint(&self, model_id: &str, record: &ModelRecord) -> Result<u64, StoreError> {
        // Into sled first, then forget the tail: a flush that sees the tail gone covers the
        // checkpoint (see `retire`).
        let n = self.put(TreeId::Models, model_id.as_bytes(), record)?;
        lock(&self.shared.wal).drop_tail(model_id);
        self.shared
            .stats
            .checkpoints
            .fetch_add(1, Ordering::Relaxed);
        Ok(n)
    }

    /// Whether the model has events logged since its checkpoint.
    pub fn has_tail(&self, model_id: &str) -> bool {
        lock(&self.shared.wal)
            .tails
            .get(model_id)
            .is_some_and(|t| t.count > 0)
    }

    /// Models whose logged events come from an earlier run: the daemon loads them at start so
    /// each folds its events into a checkpoint and the old segments can go.
    pub fn recovered_models(&self) -> Vec<String> {
        let w = lock(&self.shared.wal);
        let mut ids: Vec<String> = w
            .tails
            .iter()
            .filter(|(k, t)| t.recovered && t.count > 0 && valid_id(k.as_bytes()))
            .map(|(k, _)| k.to_string())
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Every persisted model's checkpoint, for the control socket's views of models not loaded.
    pub fn models(&self) -> impl Iterator<Item = Result<(String, ModelRecord), StoreError>> + '_ {
        self.records(TreeId::Models)
    }

    fn records<'s, T: serde::de::DeserializeOwned + 's>(
        &'s self,
        tree: TreeId,
    ) -> impl Iterator<Item = Result<(String, T), StoreError>> + 's {
        let (iter, first) = match self.handles() {
            Ok(h) => (Some(h.tree(tree).iter()), None),
            Err(e) => (None, Some(Err(e))),
        };
        first
            .into_iter()
            .chain(iter.into_iter().flatten().filter_map(move |kv| {
                let (k, v) = match self.sled(kv) {
                    Ok(kv) => kv,
                    Err(e) => return Some(Err(e)),
                };
                // Logged once at open (`skip_invalid_ids`).
                if !valid_id(&k) {
                    return None;
                }
                let key = String::from_utf8_lossy(&k).into_owned();
                Some(decode(&key, &v).map(|rec| (key, rec)))
            }))
    }

    /// Removes everything the store holds of a model except its jobs: its checkpoint, its
    /// runner record and its logged events. The log is rewritten without them (every other
    /// tail goes to a new segment), so the next flush retires every segment that held them:
    /// after that flush, no crash brings the model back.
    pub fn forget_model(&self, model_id: &str) -> Result<(), StoreError> {
        self.check_fault()?;
        let h = self.handles()?;
        for tree in [TreeId::Models, TreeId::Runner] {
            self.sled(h.tree(tree).remove(model_id.as_bytes()))?;
            self.remember(tree, model_id.as_bytes(), None);
        }
        let mut w = lock(&self.shared.wal);
        w.drop_tail(model_id);
        w.rewrite_all();
        drop(w);
        self.mark_dirty();
        Ok(())
    }

    /// Whether the store holds anything of `model_id` (a checkpoint or logged events).
    pub fn contains_model(&self, model_id: &str) -> bool {
        lock(&self.shared.wal).tails.contains_key(model_id)
            || self
                .handles()
                .ok()
                .and_then(|h| h.models.contains_key(model_id.as_bytes()).ok())
                .unwrap_or(false)
    }

    /// Models with a checkpoint or logged events.
    pub fn model_count(&self) -> usize {
        let checkpointed = self.handles().map(|h| h.models.len()).unwrap_or(0);
        let w = lock(&self.shared.wal);
        let logged_only = w
            .tails
            .keys()
            .filter(|k| {
                self.handles()
                    .ok()
                    .and_then(|h| h.models.contains_key(k.as_bytes()).ok())
                    == Some(false)
            })
            .count();
        checkpointed + logged_only
    }

    pub fn load_runner(&self, model_id: &str) -> Result<Option<RunnerRecord>, StoreError> {
        Ok(self
            .get(TreeId::Runner, model_id.as_bytes())?
            .map(|(r, _)| r))
    }

    pub fn save_runner(&self, model_id: &str, record: &RunnerRecord) -> Result<(), StoreError> {
        self.put(TreeId::Runner, model_id.as_bytes(), record)
            .map(drop)
    }

    pub fn runners(&self) -> impl Iterator<Item = Result<(String, RunnerRecord), StoreError>> + '_ {
        self.records(TreeId::Runner)
    }

    /// A fresh job id, unique across restarts.
    pub fn next_job_id(&self) -> Result<u64, StoreError> {
        // sled's generate_id is monotonic and crash-safe; +1 keeps 0 free as "no job".
        let h = self.handles()?;
        Ok(self.sled(h.db.generate_id())? + 1)
    }

    pub fn save_job(&self, job: &Job) -> Result<(), StoreError> {
        self.put(TreeId::Jobs, &job.job_id.to_be_bytes(), job)
            .map(drop)
    }

    pub fn load_job(&self, job_id: u64) -> Result<Option<Job>, StoreError> {
        Ok(self
            .get(TreeId::Jobs, &job_id.to_be_bytes())?
            .map(|(j, _)| j))
    }

    /// Jobs, newest first, optionally for one model, at most `limit`.
    pub fn jobs(&self, model_id: Option<&str>, limit: usize) -> Result<Vec<Job>, StoreError> {
        let h = self.handles()?;
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        for kv in h.jobs.iter().rev() {
            let (k, v) = self.sled(kv)?;
            let job: Job = decode(&format!("jobs/{k:?}"), &v)?;
            if !valid_id(job.model_id.as_bytes()) {
                continue;
            }
            if model_id.is_none_or(|m| m == job.model_id) {
                out.push(job);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Keeps the newest `keep` jobs and deletes older ones, so the journal stays bounded.
    pub fn prune_jobs(&self, keep: usize) -> Result<usize, StoreError> {
        let h = self.handles()?;
        let n = h.jobs.len();
        let mut removed = 0;
        if n > keep {
            self.check_fault()?;
            for kv in h.jobs.iter().take(n - keep) {
                let (k, _) = self.sled(kv)?;
                self.sled(h.jobs.remove(&k))?;
                self.remember(TreeId::Jobs, &k, None);
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Makes every write so far durable (log fdatasync'ed, sled flushed and fsync'ed). Flushes
    /// waiting at the same moment share one round (group commit).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.check_fault()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.request_flush(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        match rx.await {
            Ok(r) => r.map_err(StoreError::Flush),
            Err(_) => Err(StoreError::Flush("the store's flusher stopped".into())),
        }
    }

    /// The blocking flush, for threads that cannot await (the hook runner, shutdown).
    pub fn flush_sync(&self) -> Result<(), StoreError> {
        self.check_fault()?;
        // A std channel: this may run on an actor's thread, inside a runtime, where tokio's
        // blocking receive refuses to block.
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.request_flush(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        match rx.recv() {
            Ok(r) => r.map_err(StoreError::Flush),
            Err(_) => Err(StoreError::Flush("the store's flusher stopped".into())),
        }
    }

    fn request_flush(&self, waiter: Waiter) {
        lock(&self.shared.sync.state).waiters.push(waiter);
        self.shared.sync.wake.notify_one();
    }

    /// One flush round, on the flusher thread: the log's pending frame, then sled, then the
    /// segments every durable checkpoint let go.
    fn flush_round(&self) -> Result<(), StoreError> {
        self.check_fault()?;
        let s = &self.shared;
        let (frame, needed) = {
            let mut w = lock(&s.wal);
            let old = w.segments.iter().filter(|(n, _)| *n < w.segment).count();
            if old > MAX_OLD_SEGMENTS {
                let oldest = w.segments.first().map_or(0, |(n, _)| *n);
                let copied = w.copy_forward(oldest);
                tracing::debug!(copied, "tails copied out of the oldest log segment");
            }
            let frame = w.take_frame();
            (frame, w.oldest_needed())
        };
        if let Some((n, create, bytes)) = frame {
            let dir = lock(&s.wal).dir.clone();
            let mut file = lock(&s.wal_file);
            if let Err(e) = wal::Wal::write_frame(&dir, &mut file, n, create, &bytes) {
                // fsyncgate: whether any of this frame (or earlier unsynced ones) reached the
                // disk is unknown, and a later fsync may lie. Start a new segment holding every
                // tail again, so the next round stands on its own.
                *file = None;
                drop(file);
                let ids = lock(&s.wal).rewrite_all();
                tracing::error!(error = %chain(&e), tails = ids, "writing the observation log failed; the unflushed events are written again to a new segment at the next flush");
                self.mark_dirty();
                return Err(self.record(StoreError::Wal(e)));
            }
            s.stats
                .wal_bytes
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            s.stats
                .fsyncs
                .fetch_add(1 + u64::from(create), Ordering::Relaxed);
        }
        let upto = s.seq.load(Ordering::SeqCst);
        if upto > s.flushed_seq.load(Ordering::SeqCst) {
            let h = self.handles()?;
            let r = h.db.flush();
            self.sled(r)?;
            let n = h.sync(&s.path).inspect_err(|e| {
                // A failed fsync of sled's file is a failed disk: reopen before trusting it.
                s.failed.store(true, Ordering::SeqCst);
                tracing::error!(error = %chain(e), "syncing the state store failed; reopening it");
            })?;
            s.stats.fsyncs.fetch_add(n, Ordering::Relaxed);
            s.flushed_seq.store(upto, Ordering::SeqCst);
            retire(&mut lock(&s.pending), upto);
        }
        self.retire_segments(needed)?;
        s.stats.flushes.fetch_add(1, Ordering::Relaxed);
        let was = lock(&s.last_error).take();
        if let Some(error) = was {
            tracing::info!(previous_error = %error, "the state store flushes again");
        }
        Ok(())
    }

    /// Deletes the log segments before `needed` (never the current one).
    fn retire_segments(&self, needed: u64) -> Result<(), StoreError> {
        let (dir, gone) = {
            let mut w = lock(&self.shared.wal);
            let cur = w.segment;
            let gone: Vec<u64> = w
                .segments
                .iter()
                .map(|(n, _)| *n)
                .filter(|n| *n < needed && *n < cur)
                .collect();
            w.segments.retain(|(n, _)| !gone.contains(n));
            (w.dir.clone(), gone)
        };
        if gone.is_empty() {
            return Ok(());
        }
        {
            let mut file = lock(&self.shared.wal_file);
            if file.as_ref().is_some_and(|(n, _)| gone.contains(n)) {
                *file = None;
            }
        }
        for n in &gone {
            let p = dir.join(format!("{n:016x}.wal"));
            if let Err(e) = std::fs::remove_file(&p)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %p.display(), error = %e, "cannot delete an old log segment");
            }
        }
        wal::sync_dir(&dir)?;
        self.shared
            .stats
            .segments_deleted
            .fetch_add(gone.len() as u64, Ordering::Relaxed);
        self.shared.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// What the store wrote and holds.
    pub fn stats(&self) -> StoreStats {
        let c = &self.shared.stats;
        let w = lock(&self.shared.wal);
        let wal = c.wal_bytes.load(Ordering::Relaxed);
        let ck = c.checkpoint_bytes.load(Ordering::Relaxed);
        let rec = c.record_bytes.load(Ordering::Relaxed);
        StoreStats {
            bytes_written: wal + ck + rec,
            wal_bytes_written: wal,
            checkpoint_bytes_written: ck,
            record_bytes_written: rec,
            checkpoints: c.checkpoints.load(Ordering::Relaxed),
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
            flushes: c.flushes.load(Ordering::Relaxed),
            flush_errors: c.flush_errors.load(Ordering::Relaxed),
            wal_segments: w.segments.len(),
            wal_bytes: w.segments.iter().map(|(_, n)| n).sum(),
            tail_events: w.tails.values().map(|t| t.count).sum(),
            tail_bytes: w.tail_bytes,
            wal_segments_deleted: c.segments_deleted.load(Ordering::Relaxed),
            recovery: self.shared.recovery.clone(),
        }
    }

    pub fn size_on_disk(&self) -> u64 {
        let sled = self
            .handles()
            .ok()
            .and_then(|h| h.db.size_on_disk().ok())
            .unwrap_or(0);
        let w = lock(&self.shared.wal);
        sled + w.segments.iter().map(|(_, n)| n).sum::<u64>()
    }

    /// After sled latched an error: drops the database, opens it again (sled recovers what
    /// reached the disk), replays every write not known to be durable, and flushes. On
    /// success the store serves normally again.
    fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self
            .shared
            .handles
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // The old database must be gone before sled can lock the files again.
        drop(slot.take());
        let (config, db) = Handles::open_db(&self.shared.path)?;
        let h = Handles::new(config, db, &self.shared.path)?;
        let upto = self.shared.seq.load(Ordering::SeqCst);
        {
            let pending = lock(&self.shared.pending);
            for ((tree, key), (_, value)) in pending.iter() {
                match value {
                    Some(v) => h.tree(*tree).insert(key.as_slice(), v.clone())?,
                    None => h.tree(*tree).remove(key.as_slice())?,
                };
            }
        }
        h.db.flush()?;
        h.sync(&self.shared.path)?;
        h.config.global_error()?;
        *slot = Some(h);
        self.shared.failed.store(false, Ordering::SeqCst);
        drop(slot);
        self.shared.flushed_seq.store(upto, Ordering::SeqCst);
        retire(&mut lock(&self.shared.pending), upto);
        *lock(&self.shared.last_error) = None;
        tracing::info!(path = %self.shared.path.display(), "the state store was reopened and works again");
        Ok(())
    }
}

/// The store's flusher: one round once something has been dirty for the flush interval (so a
/// write is durable within it even without a flush barrier), or at once when a flush is
/// waiting; with nothing to write it sleeps until woken. While the database is failed it
/// tries to reopen it once a second. It stops when the last handle on the store is dropped.
fn spawn_flusher(shared: Weak<Shared>, sync: Arc<SyncShared>) {
    let spawned =
        std::thread::Builder::new()
            .name("store-flusher".into())
            .spawn(move || {
                let mut last_reopen = Instant::now();
                loop {
                    let waiters = {
                        let mut st = lock(&sync.state);
                        loop {
                            if st.stop {
                                return;
                            }
                            let failed = shared
                                .upgrade()
                                .is_some_and(|s| s.failed.load(Ordering::SeqCst));
                            if failed {
                                if last_reopen.elapsed() >= Duration::from_secs(1) {
                                    break;
                                }
                                st = sync
                                    .wake
                                    .wait_timeout(st, Duration::from_secs(1))
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .0;
                                continue;
                            }
                            if !st.waiters.is_empty() {
                                break;
                            }
                            let Some(every) = shared.upgrade().map(|s| s.flush_every) else {
                                return;
                            };
                            match st.dirty_since {
                                Some(t) if t.elapsed() >= every => break,
                                Some(t) => {
                                    let left = every.saturating_sub(t.elapsed());
                                    st = sync
                                        .wake
                                        .wait_timeout(st, left)
                                        .unwrap_or_else(PoisonError::into_inner)
                                        .0;
                                }
                                None => {
                                    st = sync.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
                                }
                            }
                        }
                        st.dirty_since = None;
                        sync.dirty.store(false, Ordering::Release);
                        std::mem::take(&mut st.waiters)
                    };
                    let Some(shared) = shared.upgrade() else {
                        return;
                    };
                    let store = Store { shared };
                    if store.shared.failed.load(Ordering::SeqCst) {
                        last_reopen = Instant::now();
                        if let Err(error) = store.reopen() {
                            let error = chain(&error);
                            tracing::warn!(error = %error, "the state store still fails");
                            *lock(&store.shared.last_error) = Some(error.clone());
                            for w in waiters {
                                w(Err(error.clone()));
                            }
                            continue;
                        }
                    }
                    let result = if store.shared.fault.load(Ordering::Relaxed) {
                        Err(StoreError::Injected)
                    } else {
                        store.flush_round()
                    };
                    let result = result.map_err(|e| {
                    store
                        .shared
                        .stats
                        .flush_errors
                        .fetch_add(1, Ordering::Relaxed);
                    // Try again one interval later: a mended disk is noticed without waiting
                    // for the next write.
                    lock(&sync.state).dirty_since.get_or_insert_with(Instant::now);
                    let e = chain(&e);
                    if waiters.is_empty() {
                        tracing::error!(error = %e, "background flush of the state store failed");
                    }
                    e
                });
                    for w in waiters {
                        w(result.clone());
                    }
                }
            });
    if let Err(error) = spawned {
        tracing::error!(error = %error, "cannot start the state store's flusher thread");
    }
}

/// Writes [`SCHEMA_FILE`] atomically (exclusive temp file, fsync, rename, directory fsync),
/// unless it is current.
fn write_schema_file(path: &Path) -> Result<(), StoreError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let text = format!("{SCHEMA_VERSION}\n");
    if std::fs::read_to_string(path).is_ok_and(|t| t == text) {
        return Ok(());
    }
    let err = |source| StoreError::SchemaFile {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    // A leftover (or planted) temp file is removed, never followed.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent() {
        wal::sync_dir(dir)?;
    }
    Ok(())
}

/// Forgets the writes a flush made durable (numbered up to `upto`). The map gives back its
/// room once mostly empty: a burst of writes from every model would otherwise keep a table
/// sized for all of them.
fn retire(pending: &mut Pending, upto: u64) {
    pending.retain(|_, (seq, _)| *seq > upto);
    if pending.capacity() > 4096 && pending.len() * 4 < pending.capacity() {
        pending.shrink_to_fit();
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

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    let mut buf = Vec::with_capacity(64);
    buf.push(RECORD_VERSION);
    bincode::serde::encode_into_std_write(value, &mut buf, bincode::config::standard())?;
    Ok(buf)
}

/// Whether a stored key is a model id every entry point would accept.
fn valid_id(key: &[u8]) -> bool {
    std::str::from_utf8(key).is_ok_and(|s| crate::protocol::validate_model_id(s).is_ok())
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&RECORD_VERSION, payload)) => {
            bincode::serde::decode_from_slice(payload, bincode::config::standard())
                .map(|(v, _)| v)
                .map_err(|source| StoreError::Decode {
                    key: key.to_owned(),
                    source,
                })
        }
        Some((&version, _)) => Err(StoreError::UnknownRecordVersion {
            key: key.to_owned(),
            version,
        }),
        None => Err(StoreError::UnknownRecordVersion {
            key: key.to_owned(),
            version: 0,
        }),
    }
}

/// Encodes any serde value the way the store does, for byte-exact round-trip tests.
pub fn encode_record<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    encode(value)
}

/// Decodes what [`encode_record`] wrote.
pub fn decode_record<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    decode("record", bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let rec = ModelRecord {
            events: 42,
            ..ModelRecord::default()
        };
        {
            let s = Store::open(dir.path(), 100).unwrap();
            s.checkpoint("m1", &rec).unwrap();
            s.flush_sync().unwrap();
        }
        let s = Store::open(dir.path(), 100).unwrap();
        assert_eq!(s.load_model("m1").unwrap().unwrap().events, 42);
        assert!(s.load_model("m2").unwrap().is_none());
    }

    #[test]
    fn newer_schema_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), 100).unwrap();
            s.checkpoint("m1", &ModelRecord::default()).unwrap();
            let meta = s.handles().unwrap().db.open_tree("meta").unwrap();
            meta.insert(SCHEMA_KEY, &(SCHEMA_VERSION + 1).to_be_bytes())
                .unwrap();
            s.flush_sync().unwrap();
        }
        match Store::open(dir.path(), 100) {
            Err(StoreError::TooNew { found, .. }) => assert_eq!(found, SCHEMA_VERSION + 1),
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("a newer store was opened"),
        }
    }

    #[test]
    fn unknown_record_version_is_an_error_not_a_panic() {
        let r: Result<ModelRecord, _> = decode_record(&[99, 1, 2, 3]);
        assert!(matches!(
            r,
            Err(StoreError::UnknownRecordVersion { version: 99, .. })
        ));
        let r: Result<ModelRecord, _> = decode_record(&[RECORD_VERSION, 0xff]);
        assert!(matches!(r, Err(StoreError::Decode { .. })));
    }

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

    #[test]
    fn jobs_newest_first_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 100).unwrap();
        for i in 0..5 {
            let id = s.next_job_id().unwrap();
            let job = Job::new(
                id,
                if i % 2 == 0 { "a" } else { "b" },
                crate::policy::Action::Full,
                "p",
                "r",
                "{}".into(),
                0.0,
            );
            s.save_job(&job).unwrap();
        }
        let all = s.jobs(None, 10).unwrap();
        assert_eq!(all.len(), 5);
        assert!(all.windows(2).all(|w| w[0].job_id > w[1].job_id));
        assert_eq!(s.jobs(Some("a"), 10).unwrap().len(), 3);
        assert_eq!(s.prune_jobs(2).unwrap(), 3);
        assert_eq!(s.jobs(None, 10).unwrap().len(), 2);
    }
}
