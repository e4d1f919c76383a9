//! The sled database and its trees: opening it (with relaxed timers for sled's I/O pool),
//! the trees the store uses, making what sled wrote durable, and the check that refuses a
//! damaged database instead of letting sled start a new one.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::{StoreError, wal};

/// sled's page cache. Since the observation log, sled holds only checkpoints (read once when a
/// model loads, written when its log outgrows it), jobs and runner records, so a large cache
/// buys nothing but memory. The bound is loose: sled counts page accesses in batches of 64 per
/// shard of its LRU, over 256 shards, so a burst that touches every model once (a restart under
/// traffic) leaves most of the pages it read or wrote cached whatever this says.
const CACHE_BYTES: u64 = 4 << 20;

#[derive(Clone)]
pub(super) struct Handles {
    /// Shares sled's latched-error slot with the open database.
    pub(super) config: sled::Config,
    pub(super) db: sled::Db,
    pub(super) models: sled::Tree,
    pub(super) jobs: sled::Tree,
    pub(super) runner: sled::Tree,
    /// Every model's decision log (`explain`).
    pub(super) explain: sled::Tree,
    /// Retrain hooks' receipts, by job id.
    pub(super) receipts: sled::Tree,
    /// Retrains' probations, by job id.
    pub(super) probation: sled::Tree,
    /// sled's data file, fsync'ed after each of its flushes.
    data: Arc<File>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum TreeId {
    Models,
    Jobs,
    Runner,
    Explain,
    Receipts,
    Probation,
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
    pub(super) fn open_db(path: &Path) -> Result<(sled::Config, sled::Db), StoreError> {
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

    pub(super) fn new(
        config: sled::Config,
        db: sled::Db,
        path: &Path,
    ) -> Result<Handles, StoreError> {
        let data_path = path.join("db");
        let data = File::open(&data_path).map_err(|source| StoreError::Sync {
            path: data_path,
            source,
        })?;
        Ok(Handles {
            models: db.open_tree("models")?,
            jobs: db.open_tree("jobs")?,
            runner: db.open_tree("runner")?,
            explain: db.open_tree("explain")?,
            receipts: db.open_tree("receipts")?,
            probation: db.open_tree("probation")?,
            db,
            config,
            data: Arc::new(data),
        })
    }

    pub(super) fn tree(&self, id: TreeId) -> &sled::Tree {
        match id {
            TreeId::Models => &self.models,
            TreeId::Jobs => &self.jobs,
            TreeId::Runner => &self.runner,
            TreeId::Explain => &self.explain,
            TreeId::Receipts => &self.receipts,
            TreeId::Probation => &self.probation,
        }
    }

    /// Makes what sled wrote durable: its data file (data and size) and its directory (its
    /// snapshots are created and renamed there).
    pub(super) fn sync(&self, path: &Path) -> Result<u64, StoreError> {
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
pub(super) fn check_damage(dir: &Path, path: &Path) -> Result<(), StoreError> {
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
