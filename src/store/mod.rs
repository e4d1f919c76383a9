//! The state store: the only module that knows sled and bincode.
//!
//! One sled database under `state_dir`, with a handful of trees (sled's space use grows badly
//! with many trees, so never one per model):
//!
//! | tree     | key                    | value                                  |
//! |----------|------------------------|----------------------------------------|
//! | `meta`   | `schema_version`       | u32, big-endian                         |
//! | `models` | model id (UTF-8)       | [`ModelRecord`]: policy state, counters |
//! | `jobs`   | job id (u64 big-endian)| [`Job`]: the hook runner's journal      |
//! | `runner` | model id (UTF-8)       | [`RunnerRecord`]: cooldown, pause        |
//!
//! Every value is a version byte followed by its bincode 2 payload (standard config, serde), so
//! a record format can change without a flag day: readers dispatch on the byte. The schema
//! version covers the layout as a whole (it is also written as text to `schema_version` beside
//! the database, read before sled opens anything); `migrations/` has one file per version, and
//! [`Store::open`] applies pending migrations and refuses a database from a newer version.

pub mod records;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

pub use records::{DecisionRecord, GroupLeader, Job, JobState, ModelRecord, RunnerRecord};

/// The schema this build writes. See `migrations/`.
pub const SCHEMA_VERSION: u32 = 1;

/// The version byte in front of every record this build writes.
const RECORD_VERSION: u8 = 1;

/// sled's page cache. Model records are read once, when a model's actor starts, and then only
/// written, so a large cache buys nothing but memory (sled's default is 1 GiB, which for 10,000
/// models with full windows kept every record in memory twice: once in its actor and once
/// here).
///
/// The bound is loose: sled counts page accesses in batches of 64 per shard of its LRU, over
/// 256 shards, so a page whose latest accesses are still queued is not evicted, and a burst
/// that touches every model once (a restart under traffic) leaves most of the pages it read or
/// wrote cached whatever this says. For 10,000 models loaded and written once, any capacity
/// from 1 to 32 MiB left the same resident memory (about 3 KiB a model in sled's nodes). The
/// cap matters only under steady traffic, where sled does evict; lowering it bought nothing
/// after a restart, so it stays where the throughput benchmark was measured.
const CACHE_BYTES: u64 = 32 << 20;

const SCHEMA_KEY: &[u8] = b"schema_version";

/// The schema version again, as text in a file beside the database, so that a store from a
/// newer release is recognised and refused before sled opens it: opening a sled database
/// writes to it (a fresh snapshot), and a refused store must stay untouched.
const SCHEMA_FILE: &str = "schema_version";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state store at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
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
    #[error("the state store is failing writes (injected fault)")]
    Injected,
    #[error("the state store failed and is not used until it can be reopened ({0})")]
    Failed(String),
}

/// A handle on the store; cheap to clone (every clone shares one database).
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
/// reopen: a later successful flush covers it.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

struct Shared {
    /// `None` only while a reopen is in progress or failed.
    handles: RwLock<Option<Handles>>,
    path: PathBuf,
    flush_every_ms: u64,
    /// Test seam: while set, writes and flushes fail, as with a full or read-only disk.
    fault: AtomicBool,
    /// sled latched an I/O error: the database is not touched until reopened.
    failed: AtomicBool,
    /// The last write or flush error, cleared by the next successful flush (for `status`).
    last_error: Mutex<Option<String>>,
    /// Writes since the last successful flush, latest per key, numbered by `seq`, so that a
    /// reopen after a disk failure can replay them. A value here is the very buffer sled
    /// holds (an `IVec` shares it), not a copy: after a restart, when every model writes its
    /// state at once, a copy per write was as large as all the models' windows together.
    pending: Mutex<Pending>,
    seq: AtomicU64,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum TreeId {
    Models,
    Jobs,
    Runner,
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
        let db = config.open().map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        Ok((config, db))
    }

    fn new(config: sled::Config, db: sled::Db) -> Result<Handles, StoreError> {
        Ok(Handles {
            models: db.open_tree("models")?,
            jobs: db.open_tree("jobs")?,
            runner: db.open_tree("runner")?,
            db,
            config,
        })
    }

    fn tree(&self, id: TreeId) -> &sled::Tree {
        match id {
            TreeId::Models => &self.models,
            TreeId::Jobs => &self.jobs,
            TreeId::Runner => &self.runner,
        }
    }
}

impl Store {
    /// Opens (creating if needed) the database under `dir`, migrating it to
    /// [`SCHEMA_VERSION`]. `flush_every_ms` is the background flush interval.
    pub fn open(dir: &Path, flush_every_ms: u64) -> Result<Store, StoreError> {
        let path = dir.join("db");
        let marker = dir.join(SCHEMA_FILE);
        match std::fs::read_to_string(&marker) {
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
            }
            // Stores written before the file existed are all schema 1 or older.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StoreError::SchemaFile {
                    path: marker,
                    source,
                });
            }
        }
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
        let handles = Handles::new(config, db)?;
        let store = Store {
            shared: Arc::new(Shared {
                handles: RwLock::new(Some(handles)),
                path,
                flush_every_ms: flush_every_ms.max(1),
                fault: AtomicBool::new(false),
                failed: AtomicBool::new(false),
                last_error: Mutex::new(None),
                pending: Mutex::new(HashMap::new()),
                seq: AtomicU64::new(0),
            }),
        };
        store.migrate(&meta, found)?;
        write_schema_file(&marker)?;
        spawn_flusher(Arc::downgrade(&store.shared));
        Ok(store)
    }

    /// Applies every migration from `from` up to [`SCHEMA_VERSION`], one version at a time,
    /// recording each step so that a crash mid-way resumes where it stopped.
    fn migrate(&self, meta: &sled::Tree, from: u32) -> Result<(), StoreError> {
        let mut v = from;
        while v < SCHEMA_VERSION {
            // Version 0 -> 1: nothing to rewrite, only the version key is new (see
            // migrations/0001_initial.md).
            v += 1;
            meta.insert(SCHEMA_KEY, &v.to_be_bytes())?;
            tracing::info!(schema_version = v, "state store migrated");
        }
        if from == SCHEMA_VERSION {
            meta.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes())?;
        }
        self.handles()?.db.flush()?;
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
        }
        self.record(StoreError::Sled(e))
    }

    fn record(&self, e: StoreError) -> StoreError {
        *lock(&self.shared.last_error) = Some(chain(&e));
        e
    }

    fn sled<T>(&self, r: sled::Result<T>) -> Result<T, StoreError> {
        r.map_err(|e| self.fail(e))
    }

    fn get<T: serde::de::DeserializeOwned>(
        &self,
        tree: TreeId,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        let h = self.handles()?;
        match self.sled(h.tree(tree).get(key))? {
            Some(v) => Ok(Some(decode(&String::from_utf8_lossy(key), &v)?)),
            None => Ok(None),
        }
    }

    fn put<T: serde::Serialize>(
        &self,
        tree: TreeId,
        key: &[u8],
        value: &T,
    ) -> Result<(), StoreError> {
        self.check_fault()?;
        let bytes = sled::IVec::from(encode(value)?);
        let h = self.handles()?;
        self.sled(h.tree(tree).insert(key, bytes.clone()))?;
        self.remember(tree, key, Some(bytes));
        Ok(())
    }

    /// Keeps a write until a flush makes it durable. Called after the write reached sled, so
    /// a flush that started after this number was taken covers it.
    fn remember(&self, tree: TreeId, key: &[u8], value: Option<sled::IVec>) {
        let mut pending = lock(&self.shared.pending);
        let seq = self.shared.seq.fetch_add(1, Ordering::SeqCst) + 1;
        pending.insert((tree, key.to_vec()), (seq, value));
    }

    pub fn load_model(&self, model_id: &str) -> Result<Option<ModelRecord>, StoreError> {
        self.get(TreeId::Models, model_id.as_bytes())
    }

    pub fn save_model(&self, model_id: &str, record: &ModelRecord) -> Result<(), StoreError> {
        self.put(TreeId::Models, model_id.as_bytes(), record)
    }

    /// Every persisted model, for the control socket's views of models not loaded yet.
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
            .chain(iter.into_iter().flatten().map(move |kv| {
                let (k, v) = self.sled(kv)?;
                let key = String::from_utf8_lossy(&k).into_owned();
                let rec = decode(&key, &v)?;
                Ok((key, rec))
            }))
    }

    pub fn model_count(&self) -> usize {
        self.handles().map(|h| h.models.len()).unwrap_or(0)
    }

    pub fn load_runner(&self, model_id: &str) -> Result<Option<RunnerRecord>, StoreError> {
        self.get(TreeId::Runner, model_id.as_bytes())
    }

    pub fn save_runner(&self, model_id: &str, record: &RunnerRecord) -> Result<(), StoreError> {
        self.put(TreeId::Runner, model_id.as_bytes(), record)
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
    }

    pub fn load_job(&self, job_id: u64) -> Result<Option<Job>, StoreError> {
        self.get(TreeId::Jobs, &job_id.to_be_bytes())
    }

    /// Jobs, newest first, optionally for one model, at most `limit`.
    pub fn jobs(&self, model_id: Option<&str>, limit: usize) -> Result<Vec<Job>, StoreError> {
        let h = self.handles()?;
        let mut out = Vec::new();
        for kv in h.jobs.iter().rev() {
            let (k, v) = self.sled(kv)?;
            let job: Job = decode(&format!("jobs/{k:?}"), &v)?;
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

    /// Makes every write so far durable (fsync). Group commit comes from sled: concurrent
    /// callers share one flush.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.check_fault()?;
        let h = self.handles()?;
        let upto = self.shared.seq.load(Ordering::SeqCst);
        let r = h.db.flush_async().await;
        self.flushed(r, upto)
    }

    /// The blocking flush, for shutdown paths that cannot await.
    pub fn flush_sync(&self) -> Result<(), StoreError> {
        self.check_fault()?;
        let h = self.handles()?;
        let upto = self.shared.seq.load(Ordering::SeqCst);
        let r = h.db.flush();
        self.flushed(r, upto)
    }

    fn flushed(&self, r: sled::Result<usize>, upto: u64) -> Result<(), StoreError> {
        self.sled(r)?;
        retire(&mut lock(&self.shared.pending), upto);
        let was = lock(&self.shared.last_error).take();
        if let Some(error) = was {
            tracing::info!(previous_error = %error, "the state store flushes again");
        }
        Ok(())
    }

    pub fn size_on_disk(&self) -> u64 {
        self.handles()
            .ok()
            .and_then(|h| h.db.size_on_disk().ok())
            .unwrap_or(0)
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
        let h = Handles::new(config, db)?;
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
        h.config.global_error()?;
        *slot = Some(h);
        self.shared.failed.store(false, Ordering::SeqCst);
        drop(slot);
        retire(&mut lock(&self.shared.pending), upto);
        *lock(&self.shared.last_error) = None;
        tracing::info!(path = %self.shared.path.display(), "the state store was reopened and works again");
        Ok(())
    }
}

/// The store's flusher: flushes every `flush_every_ms` (so a write is durable within that
/// interval even without a flush barrier), and reopens a failed store once a second. It stops
/// when the last handle on the store is dropped.
fn spawn_flusher(shared: Weak<Shared>) {
    let spawned = std::thread::Builder::new()
        .name("store-flusher".into())
        .spawn(move || {
            let mut last_reopen = std::time::Instant::now();
            loop {
                let every = match shared.upgrade() {
                    Some(s) => Duration::from_millis(s.flush_every_ms),
                    None => return,
                };
                std::thread::sleep(every);
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                let store = Store { shared };
                if store.shared.failed.load(Ordering::SeqCst) {
                    if last_reopen.elapsed() >= Duration::from_secs(1) {
                        last_reopen = std::time::Instant::now();
                        if let Err(error) = store.reopen() {
                            let error = chain(&error);
                            tracing::warn!(error = %error, "the state store still fails");
                            *lock(&store.shared.last_error) = Some(error);
                        }
                    }
                } else if !store.shared.fault.load(Ordering::Relaxed)
                    && let Err(error) = store.flush_sync()
                {
                    tracing::error!(error = %chain(&error), "background flush of the state store failed");
                }
            }
        });
    if let Err(error) = spawned {
        tracing::error!(error = %error, "cannot start the state store's flusher thread");
    }
}

/// Writes [`SCHEMA_FILE`] atomically (temp file, fsync, rename), unless it is current.
fn write_schema_file(path: &Path) -> Result<(), StoreError> {
    let text = format!("{SCHEMA_VERSION}\n");
    if std::fs::read_to_string(path).is_ok_and(|t| t == text) {
        return Ok(());
    }
    let err = |source| StoreError::SchemaFile {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    std::io::Write::write_all(&mut f, text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
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
            s.save_model("m1", &rec).unwrap();
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
            s.save_model("m1", &ModelRecord::default()).unwrap();
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
        assert!(s.save_model("m", &ModelRecord::default()).is_err());
        assert!(s.flush_sync().is_err());
        s.set_fault(false);
        s.save_model("m", &ModelRecord::default()).unwrap();
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
