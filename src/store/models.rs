//! Model state: a checkpoint in the `models` tree plus the events logged after it in the
//! observation log; when a model folds its log into a new checkpoint; forgetting a model.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::policy::Obs;

use super::codec::{decode, decode_model, encode_model};
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
        Ok(self.checkpoint_of(model_id)?.map(|(r, _)| r))
    }

    /// The model's checkpoint and its size; one that does not decode is noted as such.
    fn checkpoint_of(&self, model_id: &str) -> Result<Option<(ModelRecord, usize)>, StoreError> {
        let read = || -> Result<_, StoreError> {
            match self.get_bytes(TreeId::Models, model_id.as_bytes())? {
                Some(v) => Ok(Some((decode_model(model_id, &v)?, v.len()))),
                None => Ok(None),
            }
        };
        read().inspect_err(|e| self.note_undecodable(model_id, e))
    }

    /// The model's checkpoint and the events logged after it, for the model to replay.
    pub fn load_model_state(&self, model_id: &str) -> Result<LoadedModel, StoreError> {
        let (record, checkpoint_bytes) = match self.checkpoint_of(model_id)? {
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
        let Some(events) = wal::decode_events(&tail.bytes) else {
            drop(w);
            let e = StoreError::BadTail(model_id.to_owned());
            self.note_undecodable(model_id, &e);
            return Err(e);
        };
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
        let n = self.put_bytes(TreeId::Models, model_id.as_bytes(), encode_model(record)?)?;
        lock(&self.shared.wal).drop_tail(model_id);
        lock(&self.shared.undecodable).remove(model_id);
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
                let rec = decode(&key, &v).inspect_err(|e| {
                    if tree == TreeId::Models {
                        self.note_undecodable(&key, e);
                    }
                });
                Some(rec.map(|rec| (key, rec)))
            }))
    }

    /// Removes everything the store holds of a model except its jobs: its checkpoint, its
    /// runner record, its decision log and its logged events. The log is rewritten without them (every other
    /// tail goes to a new segment), so the next flush retires every segment that held them:
    /// after that flush, no crash brings the model back.
    pub fn forget_model(&self, model_id: &str) -> Result<(), StoreError> {
        self.remove_model(model_id, &[TreeId::Models, TreeId::Runner])?;
        self.forget_explain(model_id).map(drop)
    }

    /// Removes the model's checkpoint and logged events without reading them, as
    /// [`Store::forget_model`] does, but keeps its runner record (cooldown, pause): what a
    /// reset does to a state that does not decode, before it writes a fresh one.
    pub fn discard_model_state(&self, model_id: &str) -> Result<(), StoreError> {
        self.remove_model(model_id, &[TreeId::Models])
    }

    fn remove_model(&self, model_id: &str, trees: &[TreeId]) -> Result<(), StoreError> {
        self.check_fault()?;
        let h = self.handles()?;
        for &tree in trees {
            self.sled(h.tree(tree).remove(model_id.as_bytes()))?;
            self.remember(tree, model_id.as_bytes(), None);
        }
        let mut w = lock(&self.shared.wal);
        w.drop_tail(model_id);
        w.rewrite_all();
        drop(w);
        lock(&self.shared.undecodable).remove(model_id);
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

    /// Models with a checkpoint or logged events. The scan reads every checkpoint (it runs once,
    /// after the daemon is ready, on a thread of its own) and decodes it, so that one that does
    /// not decode is named by [`Store::undecodable_models`] before anything loads it.
    ///
    /// Models fold their logs into checkpoints meanwhile (those recovered at start do at
    /// once), and each counts once whichever side of the scan its fold fell on: the models
    /// with logged events are taken first, those the scan met are struck off, and each one
    /// left counts if the store still holds it (a tail, or a checkpoint the scan passed by).
    pub fn model_count(&self) -> usize {
        let mut logged: std::collections::HashSet<Arc<str>> =
            lock(&self.shared.wal).tails.keys().cloned().collect();
        let mut checkpointed = 0;
        if let Ok(h) = self.handles() {
            for kv in h.models.iter() {
                checkpointed += 1;
                let Ok((k, v)) = kv else { continue };
                let key = String::from_utf8_lossy(&k);
                logged.remove(&*key);
                if valid_id(&k)
                    && let Err(e) = decode::<ModelRecord>(&key, &v)
                {
                    self.note_undecodable(&key, &e);
                }
            }
        }
        let logged_only = logged.iter().filter(|id| self.contains_model(id)).count();
        checkpointed + logged_only
    }

    /// Models whose stored state does not decode (a checkpoint, or logged events), in order:
    /// they cannot load until an operator resets or forgets them, neither of which reads it.
    pub fn undecodable_models(&self) -> Vec<String> {
        lock(&self.shared.undecodable).iter().cloned().collect()
    }

    /// Remembers (and logs, once) a model whose state `error` could not decode.
    fn note_undecodable(&self, model_id: &str, error: &StoreError) {
        if error.is_undecodable() && lock(&self.shared.undecodable).insert(model_id.to_owned()) {
            tracing::error!(
                model_id = %model_id,
                error = %super::chain(error),
                "the model's stored state does not decode; it cannot load until `visutility reset` or `visutility forget` replaces it"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ModelRecord, RunnerRecord, Store};

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
    fn an_undecodable_checkpoint_is_noted_and_discarding_it_keeps_the_runner_record() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 100).unwrap();
        let paused = RunnerRecord {
            paused: true,
            ..RunnerRecord::default()
        };
        for m in ["good", "bad"] {
            s.checkpoint(m, &ModelRecord::default()).unwrap();
            s.save_runner(m, &paused).unwrap();
        }
        s.handles()
            .unwrap()
            .models
            .insert("bad", &[1u8, 0xff][..])
            .unwrap();
        assert!(s.undecodable_models().is_empty());
        // The scan after start finds it before anything loads it.
        assert_eq!(s.model_count(), 2);
        assert_eq!(s.undecodable_models(), ["bad"]);
        let e = s.load_model_state("bad").unwrap_err();
        assert!(e.is_undecodable(), "{e}");
        assert!(s.load_model_state("good").is_ok());

        s.discard_model_state("bad").unwrap();
        assert!(s.undecodable_models().is_empty());
        assert!(s.load_model("bad").unwrap().is_none());
        assert_eq!(s.load_runner("bad").unwrap(), Some(paused));
        // A checkpoint replaces a damaged one, and clears the note as well.
        s.handles()
            .unwrap()
            .models
            .insert("bad", &[9u8][..])
            .unwrap();
        assert!(s.load_model("bad").is_err());
        assert_eq!(s.undecodable_models(), ["bad"]);
        s.checkpoint("bad", &ModelRecord::default()).unwrap();
        assert!(s.undecodable_models().is_empty());
    }
}
