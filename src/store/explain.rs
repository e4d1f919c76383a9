//! The models' decision logs (what `explain` shows): one `explain` tree for every model
//! (sled's space use grows badly with many trees), keyed by the model id, a zero byte (no
//! valid model id holds one) and the entry's sequence number (u64 big-endian), so that a
//! prefix scan gives one model's entries in order. Its bound (the last 100 entries of each
//! model) and what goes in it are the hook runner's (`command::decision_log`); this file
//! reads and writes entries, prunes and forgets.
//!
//! The tree came without a schema version bump: a store of the build before opens with an
//! empty log for every model, and that build ignores the tree.

use std::sync::atomic::Ordering;

use super::codec::decode;
use super::handles::TreeId;
use super::{ExplainEntry, Store, StoreError};

/// `model_id`, then the zero byte that ends it.
fn prefix(model_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(model_id.len() + 9);
    k.extend_from_slice(model_id.as_bytes());
    k.push(0);
    k
}

fn key(model_id: &str, seq: u64) -> Vec<u8> {
    let mut k = prefix(model_id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The sequence number at the end of a key of `model_id`'s prefix.
fn seq_of(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

impl Store {
    /// Writes entry `seq` of the model's log (a new one, or the running one again).
    pub fn put_explain_entry(
        &self,
        model_id: &str,
        seq: u64,
        entry: &ExplainEntry,
    ) -> Result<(), StoreError> {
        self.put(TreeId::Explain, &key(model_id, seq), entry)?;
        self.shared
            .stats
            .explain_records
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The highest sequence number in the model's log (0 for an empty one).
    pub fn last_explain_seq(&self, model_id: &str) -> Result<u64, StoreError> {
        let h = self.handles()?;
        match h.explain.scan_prefix(prefix(model_id)).next_back() {
            Some(kv) => Ok(self.sled(kv).map(|(k, _)| seq_of(&k).unwrap_or(0))?),
            None => Ok(0),
        }
    }

    /// The model's entries, newest (highest sequence number) first, at most `limit`. An
    /// entry that does not decode (damaged, or of a kind a newer build wrote) is passed
    /// over with a warning: the rest of the log still explains.
    pub fn explain_entries(
        &self,
        model_id: &str,
        limit: usize,
    ) -> Result<Vec<(u64, ExplainEntry)>, StoreError> {
        let h = self.handles()?;
        let mut out = Vec::new();
        for kv in h.explain.scan_prefix(prefix(model_id)).rev() {
            if out.len() >= limit {
                break;
            }
            let (k, v) = self.sled(kv)?;
            let Some(seq) = seq_of(&k) else { continue };
            match decode(&format!("explain/{model_id}/{seq}"), &v) {
                Ok(entry) => out.push((seq, entry)),
                Err(error) => {
                    tracing::warn!(model_id, seq, error = %error, "skipping a decision log entry that does not decode")
                }
            }
        }
        Ok(out)
    }

    /// Removes the model's entries numbered below `below`; returns how many went.
    pub fn prune_explain(&self, model_id: &str, below: u64) -> Result<usize, StoreError> {
        if below == 0 {
            return Ok(0);
        }
        let h = self.handles()?;
        let keys = h
            .explain
            .range(key(model_id, 0)..key(model_id, below))
            .keys()
            .collect::<Result<Vec<_>, _>>();
        self.remove_explain_keys(&h.explain, self.sled(keys)?)
    }

    /// Removes the model's whole log (`forget`).
    pub(super) fn forget_explain(&self, model_id: &str) -> Result<usize, StoreError> {
        let h = self.handles()?;
        let keys = h
            .explain
            .scan_prefix(prefix(model_id))
            .keys()
            .collect::<Result<Vec<_>, _>>();
        self.remove_explain_keys(&h.explain, self.sled(keys)?)
    }

    fn remove_explain_keys(
        &self,
        tree: &sled::Tree,
        keys: Vec<sled::IVec>,
    ) -> Result<usize, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        self.check_fault()?;
        for k in &keys {
            self.sled(tree.remove(k))?;
            self.remember(TreeId::Explain, k, None);
        }
        Ok(keys.len())
    }
}

#[cfg(test)]
mod tests {
    use crate::policy::Action;
    use crate::store::{DecisionEntry, DecisionOutcome, ExplainEntry, Store};

    fn entry(count: u64) -> ExplainEntry {
        ExplainEntry::Decision(DecisionEntry {
            first_at: 1.0,
            at: 2.0,
            count,
            policy: "p".into(),
            action: Action::Full,
            statistic: Some(0.7),
            threshold: Some(0.5),
            reason: "r".into(),
            event: None,
            outcome: DecisionOutcome::Cooldown,
            note: String::new(),
        })
    }

    #[test]
    fn a_models_entries_newest_first_apart_from_a_model_whose_id_extends_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), 100).unwrap();
        assert_eq!(s.last_explain_seq("m").unwrap(), 0);
        for seq in 1..=5 {
            s.put_explain_entry("m", seq, &entry(seq)).unwrap();
        }
        // "m" is a prefix of "m0": the zero byte after an id keeps their entries apart.
        s.put_explain_entry("m0", 9, &entry(9)).unwrap();
        s.put_explain_entry("l", 7, &entry(7)).unwrap();
        assert_eq!(s.last_explain_seq("m").unwrap(), 5);
        let seqs: Vec<u64> = s
            .explain_entries("m", 3)
            .unwrap()
            .iter()
            .map(|(q, _)| *q)
            .collect();
        assert_eq!(seqs, [5, 4, 3]);
        // An entry written again under its number replaces it.
        s.put_explain_entry("m", 5, &entry(50)).unwrap();
        assert_eq!(s.explain_entries("m", 1).unwrap()[0].1, entry(50));
        assert_eq!(s.prune_explain("m", 3).unwrap(), 2);
        assert_eq!(s.explain_entries("m", 100).unwrap().len(), 3);
        assert_eq!(s.stats().explain_records_written, 8);
        s.forget_model("m").unwrap();
        assert!(s.explain_entries("m", 100).unwrap().is_empty());
        assert_eq!(s.last_explain_seq("m0").unwrap(), 9);
        assert_eq!(s.explain_entries("l", 100).unwrap().len(), 1);
    }
}
