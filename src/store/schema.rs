//! Opening the store: the schema version (in sled's `meta` tree and as a file beside the
//! database, read before sled opens anything), the migrations from older schemas (one file
//! per version in `migrations/`), and the ids that older stores may hold and no entry point
//! accepts now.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use super::flusher::spawn_flusher;
use super::handles::{Handles, check_damage};
use super::stats::Counters;
use super::{Shared, Store, StoreError, SyncShared, lock, valid_id, wal};

/// The schema this build writes. See `migrations/`.
pub const SCHEMA_VERSION: u32 = 2;

const SCHEMA_KEY: &[u8] = b"schema_version";

/// The schema version again, as text in a file beside the database, so that a store from a
/// newer release is recognised and refused before sled opens it: opening a sled database
/// writes to it (a fresh snapshot), and a refused store must stay untouched. Its presence also
/// says that a database was created here and made durable: a missing or empty sled
/// configuration next to it is damage, never a new store.
const SCHEMA_FILE: &str = "schema_version";

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
                undecodable: Mutex::default(),
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

    /// The schema version recorded in the database (after [`Store::open`], this build's).
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let h = self.handles()?;
        let meta = self.sled(h.db.open_tree("meta"))?;
        Ok(match self.sled(meta.get(SCHEMA_KEY))? {
            Some(v) if v.len() == 4 => u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
            _ => 0,
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ModelRecord;

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
}
