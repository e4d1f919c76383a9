//! The flusher thread and its group commit: every fsync the store does happens here (the
//! log's pending frame, then sled, then the log segments every durable checkpoint let go),
//! and a database that sled latched as failed is reopened here and its unflushed writes
//! replayed into it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError, Weak};
use std::time::{Duration, Instant};

use super::handles::Handles;
use super::{Pending, Shared, Store, StoreError, SyncShared, Waiter, chain, lock, wal};

/// With more segments than this before the current one, the tails in the oldest are copied
/// forward (models that stopped sending would otherwise keep old segments forever).
const MAX_OLD_SEGMENTS: usize = 4;

impl Store {
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
///
/// After a round that worked it *lingers*: it keeps the store marked dirty for one more
/// interval, so writers in that interval find the mark set and neither take the lock nor
/// wake it (under a steady load that was one wake-up of this thread, and a futex call on the
/// writer's, per round), and at its end it runs a round only if something was written
/// meanwhile; if nothing was, it clears the mark and sleeps until woken. The mark is cleared
/// before that check, under the lock: a write the check misses sees the mark clear and wakes
/// it as usual. A write is still durable within the interval.
pub(super) fn spawn_flusher(shared: Weak<Shared>, sync: Arc<SyncShared>) {
    let spawned =
        std::thread::Builder::new()
            .name("store-flusher".into())
            .spawn(move || {
                let mut last_reopen = Instant::now();
                let mut lingering = false;
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
                                Some(t) if t.elapsed() >= every => {
                                    if std::mem::take(&mut lingering) {
                                        sync.dirty.store(false, Ordering::Release);
                                        st.dirty_since = None;
                                        if !shared.upgrade().is_some_and(|s| has_work(&s)) {
                                            continue;
                                        }
                                    }
                                    break;
                                }
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
                    if result.is_ok() {
                        let mut st = lock(&sync.state);
                        if st.dirty_since.is_none() {
                            st.dirty_since = Some(Instant::now());
                            sync.dirty.store(true, Ordering::Release);
                            lingering = true;
                        }
                    }
                    for w in waiters {
                        w(result.clone());
                    }
                }
            });
    if let Err(error) = spawned {
        tracing::error!(error = %error, "cannot start the state store's flusher thread");
    }
}

/// Whether a flush round has anything to do: events waiting for a frame, sled writes not yet
/// flushed, or an error to retry.
/// The log's and the pending map's locks order this check after any write the writer's flag
/// test did not see (writers number their sled writes under the pending map's lock).
fn has_work(s: &Shared) -> bool {
    if lock(&s.wal).has_pending() {
        return true;
    }
    let unflushed = {
        let _pending = lock(&s.pending);
        s.seq.load(Ordering::SeqCst) > s.flushed_seq.load(Ordering::SeqCst)
    };
    unflushed || lock(&s.last_error).is_some()
}

/// Forgets the writes a flush made durable (numbered up to `upto`). The map gives back its
/// room once mostly empty: a burst of writes from every model would otherwise keep a table
/// sized for all of them.
pub(super) fn retire(pending: &mut Pending, upto: u64) {
    pending.retain(|_, (seq, _)| *seq > upto);
    if pending.capacity() > 4096 && pending.len() * 4 < pending.capacity() {
        pending.shrink_to_fit();
    }
}
