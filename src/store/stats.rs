//! What the store has written and holds: its counters, for `status` and the metrics.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::{Recovery, Store, lock};

#[derive(Default)]
pub(super) struct Counters {
    pub(super) wal_bytes: AtomicU64,
    pub(super) checkpoint_bytes: AtomicU64,
    pub(super) record_bytes: AtomicU64,
    pub(super) checkpoints: AtomicU64,
    pub(super) fsyncs: AtomicU64,
    pub(super) flushes: AtomicU64,
    pub(super) flush_errors: AtomicU64,
    pub(super) segments_deleted: AtomicU64,
    pub(super) explain_records: AtomicU64,
}

/// What the store has written and holds, for `status` and the metrics (base units).
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
#[serde(default)]
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
    /// Decision log entries written (new ones, and running ones written again).
    pub explain_records_written: u64,
    /// What the last start recovered from the log.
    pub recovery: Recovery,
    /// Models whose stored state does not decode (see [`Store::undecodable_models`]).
    pub undecodable_models: Vec<String>,
}

impl Store {
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
            explain_records_written: c.explain_records.load(Ordering::Relaxed),
            recovery: self.shared.recovery.clone(),
            undecodable_models: self.undecodable_models(),
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
}
