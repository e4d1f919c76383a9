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
//! version covers the layout as a whole; `migrations/` has one file per version, and
//! [`Store::open`] applies pending migrations and refuses a database from a newer version.

pub mod records;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use records::{DecisionRecord, Job, JobState, ModelRecord, RunnerRecord};

/// The schema this build writes. See `migrations/`.
pub const SCHEMA_VERSION: u32 = 1;

/// The version byte in front of every record this build writes.
const RECORD_VERSION: u8 = 1;

/// sled's page cache. Model records are read once, when a model's actor starts, and then only
/// written, so a large cache buys nothing but memory (sled's default is 1 GiB, which for 10,000
/// models with full windows kept every record in memory twice: once in its actor and once
/// here).
const CACHE_BYTES: u64 = 32 << 20;

/// Encoding buffers larger than this are not kept for the next record.
const KEEP_BUFFER_BYTES: usize = 1 << 20;

thread_local! {
    /// One encoding buffer per thread, reused: a record is encoded into it and sled copies the
    /// bytes into a value of exactly their size. Growing a fresh `Vec` per write cost a chain of
    /// reallocations per record and left holes in the heap.
    static ENCODE_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

const SCHEMA_KEY: &[u8] = b"schema_version";

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
}

/// A handle on the store; cheap to clone (sled handles are reference-counted).
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    models: sled::Tree,
    jobs: sled::Tree,
    runner: sled::Tree,
    /// Shared: every model's actor holds a clone of the store.
    path: Arc<Path>,
    /// Test seam: while set, writes and flushes fail, as with a full or read-only disk.
    fault: Arc<AtomicBool>,
}

impl Store {
    /// Opens (creating if needed) the database under `dir`, migrating it to
    /// [`SCHEMA_VERSION`]. `flush_every_ms` is sled's background flush interval.
    pub fn open(dir: &Path, flush_every_ms: u64) -> Result<Store, StoreError> {
        let path = dir.join("db");
        let db = sled::Config::new()
            .path(&path)
            .flush_every_ms(Some(flush_every_ms.max(1)))
            .mode(sled::Mode::LowSpace)
            .cache_capacity(CACHE_BYTES)
            .open()
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source,
            })?;
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
        let store = Store {
            models: db.open_tree("models")?,
            jobs: db.open_tree("jobs")?,
            runner: db.open_tree("runner")?,
            db,
            path: path.into(),
            fault: Arc::new(AtomicBool::new(false)),
        };
        store.migrate(&meta, found)?;
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
        self.db.flush()?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Switches the injected write fault on or off (tests and the fault suite).
    pub fn set_fault(&self, on: bool) {
        self.fault.store(on, Ordering::SeqCst);
    }

    fn check_fault(&self) -> Result<(), StoreError> {
        if self.fault.load(Ordering::Relaxed) {
            Err(StoreError::Injected)
        } else {
            Ok(())
        }
    }

    pub fn load_model(&self, model_id: &str) -> Result<Option<ModelRecord>, StoreError> {
        get(&self.models, model_id.as_bytes())
    }

    pub fn save_model(&self, model_id: &str, record: &ModelRecord) -> Result<(), StoreError> {
        self.check_fault()?;
        put(&self.models, model_id.as_bytes(), record)
    }

    /// Every persisted model, for the control socket's views of models not loaded yet.
    pub fn models(&self) -> impl Iterator<Item = Result<(String, ModelRecord), StoreError>> + '_ {
        self.models.iter().map(|kv| {
            let (k, v) = kv?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let rec = decode(&key, &v)?;
            Ok((key, rec))
        })
    }

    pub fn model_count(&self) -> usize {
        self.models.len()
    }

    pub fn load_runner(&self, model_id: &str) -> Result<Option<RunnerRecord>, StoreError> {
        get(&self.runner, model_id.as_bytes())
    }

    pub fn save_runner(&self, model_id: &str, record: &RunnerRecord) -> Result<(), StoreError> {
        self.check_fault()?;
        put(&self.runner, model_id.as_bytes(), record)
    }

    pub fn runners(&self) -> impl Iterator<Item = Result<(String, RunnerRecord), StoreError>> + '_ {
        self.runner.iter().map(|kv| {
            let (k, v) = kv?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let rec = decode(&key, &v)?;
            Ok((key, rec))
        })
    }

    /// A fresh job id, unique across restarts.
    pub fn next_job_id(&self) -> Result<u64, StoreError> {
        // sled's generate_id is monotonic and crash-safe; +1 keeps 0 free as "no job".
        Ok(self.db.generate_id()? + 1)
    }

    pub fn save_job(&self, job: &Job) -> Result<(), StoreError> {
        self.check_fault()?;
        put(&self.jobs, &job.job_id.to_be_bytes(), job)
    }

    pub fn load_job(&self, job_id: u64) -> Result<Option<Job>, StoreError> {
        get(&self.jobs, &job_id.to_be_bytes())
    }

    /// Jobs, newest first, optionally for one model, at most `limit`.
    pub fn jobs(&self, model_id: Option<&str>, limit: usize) -> Result<Vec<Job>, StoreError> {
        let mut out = Vec::new();
        for kv in self.jobs.iter().rev() {
            let (k, v) = kv?;
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
        let n = self.jobs.len();
        let mut removed = 0;
        if n > keep {
            for kv in self.jobs.iter().take(n - keep) {
                let (k, _) = kv?;
                self.jobs.remove(k)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Makes every write so far durable (fsync). Group commit comes from sled: concurrent
    /// callers share one flush.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.check_fault()?;
        self.db.flush_async().await?;
        Ok(())
    }

    /// The blocking flush, for shutdown paths that cannot await.
    pub fn flush_sync(&self) -> Result<(), StoreError> {
        self.check_fault()?;
        self.db.flush()?;
        Ok(())
    }

    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
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

fn get<T: serde::de::DeserializeOwned>(
    tree: &sled::Tree,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    match tree.get(key)? {
        Some(v) => Ok(Some(decode(&String::from_utf8_lossy(key), &v)?)),
        None => Ok(None),
    }
}

fn put<T: serde::Serialize>(tree: &sled::Tree, key: &[u8], value: &T) -> Result<(), StoreError> {
    ENCODE_BUF.with_borrow_mut(|buf| {
        buf.clear();
        buf.push(RECORD_VERSION);
        let done =
            bincode::serde::encode_into_std_write(value, &mut *buf, bincode::config::standard())
                .map_err(StoreError::from)
                .and_then(|_| Ok(tree.insert(key, &buf[..]).map(drop)?));
        if buf.capacity() > KEEP_BUFFER_BYTES {
            *buf = Vec::new();
        }
        done
    })
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
            let meta = s.db.open_tree("meta").unwrap();
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
