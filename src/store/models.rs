//! Model state: a checkpoint in the `models` tree plus the events logged after it in the
//! observation log; when a model folds its log into a new checkpoint; forgetting a model.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::policy::Obs;

use super::codec::decode;
use super::handles::TreeId;
use super::{ModelRecord, Store, StoreError, lock, valid_id, wal};

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

impl Store {
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

    pub(super) fn records<'s, T: serde::de::DeserializeOwned + 's>(
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
}

#[cfg(test)]
mod tests {
    use super::super::{ModelRecord, Store};

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
}
