//! Each model's decision log (what `explain` shows) as the hook runner keeps it, a plain
//! struct: which entry a decision joins, what to write to the store and when, and the bound.
//!
//! Flash wear is the point. A threshold policy over its limit decides with every batch while
//! its condition holds, and a cooldown holds each of those decisions: one record per decision
//! would write the same line thousands of times. So decisions of one policy and action that
//! come to the same outcome one after the other are one entry with a `count`, `first_at` and
//! `at` (the last). A model keeps one *running* entry per policy and action in memory: a new
//! record is written only when a decision does not join the running one (its outcome changed,
//! or it is the first), and the running entry's count and time are written again at most once
//! per interval (the store's flush interval) while decisions keep joining it, and once more
//! when a different entry replaces it or the daemon stops. A crash loses at most one
//! interval's count of a running entry, never an entry.
//!
//! Memory: a running entry that no decision joined for [`IDLE_S`] (its policy stopped firing)
//! leaves memory once written, and a model with none left is forgotten here until its next
//! decision, which reads its last number from the store again; so only models that decided
//! lately are held, whatever the fleet's size. A decision after that starts a new entry.
//!
//! Each model's entries are numbered from 1 on (the numbers go on from the stored log after a
//! restart, and start again after `forget`); entries are shown by number, never by time (the
//! wall clock may have jumped), and only the last [`KEEP`] of a model are kept: each new
//! entry deletes the ones it pushes out.
//!
//! Architecture invariant: no I/O, no clock (time is the `now` argument, boot clock seconds
//! for the interval); the [`super::CommandActor`] writes what this returns.

use std::collections::HashMap;

use crate::store::{DecisionEntry, ExplainEntry};

/// Entries kept per model.
pub const KEEP: u64 = 100;

/// Seconds without a decision joining it after which a running entry leaves memory.
pub const IDLE_S: f64 = 600.0;

/// What to write to the store: entry `seq` of the model's log, then delete its entries
/// numbered below `prune_below`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogWrite {
    pub model_id: String,
    pub seq: u64,
    pub entry: DecisionEntry,
    pub prune_below: Option<u64>,
}

/// Every model's running entries and last number; see the module doc.
#[derive(Debug)]
pub struct DecisionLog {
    /// How long a running entry's new count may wait in memory (seconds).
    interval: f64,
    models: HashMap<String, ModelLog>,
}

#[derive(Debug, Default)]
struct ModelLog {
    /// The highest number given out.
    last: u64,
    /// The running entry of each policy and action that decided since the model's log was
    /// loaded: a handful.
    running: Vec<Running>,
}

#[derive(Debug)]
struct Running {
    seq: u64,
    entry: DecisionEntry,
    /// Decisions joined it since it was last written.
    dirty: bool,
    /// When it was last written (boot clock).
    written: f64,
    /// When a decision last joined it, or started it (boot clock).
    joined: f64,
}

impl Running {
    fn write(&mut self, model_id: &str, now: f64) -> LogWrite {
        self.dirty = false;
        self.written = now;
        LogWrite {
            model_id: model_id.to_owned(),
            seq: self.seq,
            entry: self.entry.clone(),
            prune_below: None,
        }
    }
}

impl DecisionLog {
    /// A log whose running entries are written again at most every `interval_s` seconds.
    pub fn new(interval_s: f64) -> DecisionLog {
        DecisionLog {
            interval: interval_s.max(0.0),
            models: HashMap::new(),
        }
    }

    /// Whether the model's log is in memory.
    pub fn knows(&self, model_id: &str) -> bool {
        self.models.contains_key(model_id)
    }

    /// Puts a model's log in memory: the highest number its stored entries have.
    pub fn load(&mut self, model_id: &str, last_seq: u64) {
        self.models.entry(model_id.to_owned()).or_default().last = last_seq;
    }

    /// Records a decision made at `now` (boot clock): the entry it joins, or a new one.
    /// Returns what to write now, in order.
    pub fn record(&mut self, model_id: &str, entry: DecisionEntry, now: f64) -> Vec<LogWrite> {
        let log = self.models.entry(model_id.to_owned()).or_default();
        let same_key =
            |r: &Running| r.entry.policy == entry.policy && r.entry.action == entry.action;
        let pos = log.running.iter().position(same_key);
        if let Some(r) = pos.map(|i| &mut log.running[i])
            && r.entry.outcome == entry.outcome
        {
            r.entry.count += entry.count;
            r.entry.at = entry.at;
            r.dirty = true;
            r.joined = now;
            return Vec::new();
        }
        let mut writes = Vec::new();
        // The entry it replaces gets its last count.
        if let Some(i) = pos {
            let mut old = log.running.swap_remove(i);
            if old.dirty {
                writes.push(old.write(model_id, now));
            }
        }
        log.last += 1;
        let seq = log.last;
        let prune_below = seq.checked_sub(KEEP - 1).filter(|&b| b > 1);
        // A running entry pushed out of the bound is deleted: never written again.
        log.running
            .retain(|r| prune_below.is_none_or(|b| r.seq >= b));
        let mut new = Running {
            seq,
            entry,
            dirty: false,
            written: now,
            joined: now,
        };
        let mut write = new.write(model_id, now);
        write.prune_below = prune_below;
        writes.push(write);
        log.running.push(new);
        writes
    }

    /// The running entries whose new count has waited an interval by `now`, or all of them
    /// with `all` (the daemon stops). Running entries idle for [`IDLE_S`] leave memory.
    pub fn take_due(&mut self, now: f64, all: bool) -> Vec<LogWrite> {
        let mut writes = Vec::new();
        for (model_id, log) in &mut self.models {
            for r in &mut log.running {
                if r.dirty && (all || now >= r.written + self.interval) {
                    writes.push(r.write(model_id, now));
                }
            }
            log.running.retain(|r| r.dirty || now < r.joined + IDLE_S);
        }
        self.models.retain(|_, log| !log.running.is_empty());
        writes
    }

    /// When [`DecisionLog::take_due`] has something to do next (boot clock): a running
    /// entry's count to write, or an idle one to let go.
    pub fn next_due(&self) -> Option<f64> {
        self.models
            .values()
            .flat_map(|log| &log.running)
            .map(|r| {
                if r.dirty {
                    r.written + self.interval
                } else {
                    r.joined + IDLE_S
                }
            })
            .reduce(f64::min)
    }

    /// `forget`: the model's log is gone from the store; its numbers start again.
    pub fn forget(&mut self, model_id: &str) {
        self.models.remove(model_id);
    }

    /// Stored entries of a model (as [`crate::store::Store::explain_entries`] reads them)
    /// with the counts its running entries hold and have not written yet.
    pub fn overlay(&self, model_id: &str, entries: &mut [(u64, ExplainEntry)]) {
        let Some(log) = self.models.get(model_id) else {
            return;
        };
        for (seq, entry) in entries {
            if let Some(r) = log.running.iter().find(|r| r.seq == *seq && r.dirty) {
                *entry = ExplainEntry::Decision(r.entry.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Action;
    use crate::store::DecisionOutcome;

    fn decision(policy: &str, action: Action, outcome: DecisionOutcome, at: f64) -> DecisionEntry {
        DecisionEntry {
            first_at: at,
            at,
            count: 1,
            policy: policy.into(),
            action,
            statistic: Some(0.7),
            threshold: Some(0.5),
            reason: "mean above threshold".into(),
            event: Some(r#"{"ts":1}"#.into()),
            outcome,
            note: String::new(),
        }
    }

    /// What the store would hold after these writes: number -> entry.
    fn apply(store: &mut std::collections::BTreeMap<u64, DecisionEntry>, writes: Vec<LogWrite>) {
        for w in writes {
            store.insert(w.seq, w.entry);
            if let Some(b) = w.prune_below {
                store.retain(|&s, _| s >= b);
            }
        }
    }

    #[test]
    fn a_job_then_decisions_held_by_the_cooldown_are_two_entries_and_the_second_counts() {
        let mut log = DecisionLog::new(1.0);
        log.load("m", 0);
        let mut store = std::collections::BTreeMap::new();
        let w = log.record(
            "m",
            decision("p", Action::Full, DecisionOutcome::Job(7), 10.0),
            0.0,
        );
        assert_eq!(w.len(), 1);
        assert_eq!((w[0].seq, w[0].entry.outcome), (1, DecisionOutcome::Job(7)));
        apply(&mut store, w);
        let w = log.record(
            "m",
            decision("p", Action::Full, DecisionOutcome::Cooldown, 11.0),
            0.1,
        );
        assert_eq!(w.len(), 1, "a new entry is written at once");
        apply(&mut store, w);
        for i in 0..10 {
            let at = 12.0 + f64::from(i);
            let w = log.record(
                "m",
                decision("p", Action::Full, DecisionOutcome::Cooldown, at),
                0.2,
            );
            assert!(
                w.is_empty(),
                "joining the running entry writes nothing at once"
            );
        }
        assert_eq!(log.next_due(), Some(1.1));
        assert!(log.take_due(1.0, false).is_empty(), "not an interval yet");
        let w = log.take_due(1.1, false);
        assert_eq!(w.len(), 1);
        apply(&mut store, w);
        let held = &store[&2];
        assert_eq!((held.count, held.first_at, held.at), (11, 11.0, 21.0));
        assert_eq!(held.outcome, DecisionOutcome::Cooldown);
        assert_eq!(store[&1].count, 1);
        assert!(log.take_due(100.0, true).is_empty(), "nothing waits");
        // Idle (the cooldown's entry replaced the job's as the running one of its policy and
        // action): it leaves memory, and so does the model.
        assert_eq!(log.next_due(), Some(IDLE_S + 0.2));
        assert!(log.take_due(IDLE_S, false).is_empty());
        assert!(log.knows("m"));
        log.take_due(IDLE_S + 0.2, false);
        assert!(!log.knows("m"));
        assert_eq!(log.next_due(), None, "no timer for an idle log");
        // Its next decision, the numbers read from the store again, is a new entry.
        log.load("m", 2);
        let w = log.record(
            "m",
            decision("p", Action::Full, DecisionOutcome::Cooldown, 700.0),
            700.0,
        );
        assert_eq!((w[0].seq, w[0].entry.count), (3, 1));
    }

    #[test]
    fn two_thousand_decisions_under_a_cooldown_write_a_handful_of_records() {
        let mut log = DecisionLog::new(1.0);
        log.load("m", 0);
        let mut writes = log
            .record(
                "m",
                decision("p", Action::Full, DecisionOutcome::Job(1), 0.0),
                0.0,
            )
            .len();
        // 2,000 decisions over 2.5 s (one per event), the timer firing when due.
        for i in 0..2_000 {
            let now = f64::from(i) * 0.00125;
            writes += log
                .record(
                    "m",
                    decision("p", Action::Full, DecisionOutcome::Cooldown, now),
                    now,
                )
                .len();
            if log.next_due().is_some_and(|due| due <= now) {
                writes += log.take_due(now, false).len();
            }
        }
        let last = log.take_due(10.0, true);
        writes += last.len();
        assert_eq!(last[0].entry.count, 2_000);
        // The job's entry, the cooldown's, two interval updates and the last one at the stop.
        assert!(writes <= 5, "{writes} writes");
    }

    #[test]
    fn a_changed_outcome_starts_a_new_entry_and_the_replaced_one_gets_its_last_count() {
        let mut log = DecisionLog::new(60.0);
        log.load("m", 41);
        let mut store = std::collections::BTreeMap::new();
        for at in [1.0, 2.0, 3.0] {
            apply(
                &mut store,
                log.record(
                    "m",
                    decision("p", Action::Full, DecisionOutcome::Paused, at),
                    at,
                ),
            );
        }
        assert_eq!(store[&42].count, 1, "numbers go on from the stored log");
        let w = log.record(
            "m",
            decision("p", Action::Full, DecisionOutcome::Job(9), 4.0),
            4.0,
        );
        let seqs: Vec<(u64, u64)> = w.iter().map(|w| (w.seq, w.entry.count)).collect();
        assert_eq!(seqs, [(42, 3), (43, 1)]);
        apply(&mut store, w);
        // Another policy, and another action, keep running entries of their own: decisions
        // of two policies taking turns do not start a new entry each time.
        for at in [5.0, 6.0, 7.0] {
            apply(
                &mut store,
                log.record(
                    "m",
                    decision("q", Action::Full, DecisionOutcome::Cooldown, at),
                    at,
                ),
            );
            apply(
                &mut store,
                log.record(
                    "m",
                    decision("q", Action::FineTune, DecisionOutcome::Cooldown, at),
                    at,
                ),
            );
            apply(
                &mut store,
                log.record(
                    "m",
                    decision("p", Action::Full, DecisionOutcome::Cooldown, at),
                    at,
                ),
            );
        }
        assert_eq!(
            store.keys().copied().collect::<Vec<_>>(),
            [42, 43, 44, 45, 46]
        );
        // What `explain` reads: the store's entries with the running entries' counts.
        let mut read: Vec<(u64, ExplainEntry)> = store
            .iter()
            .rev()
            .map(|(s, e)| (*s, ExplainEntry::Decision(e.clone())))
            .collect();
        log.overlay("m", &mut read);
        let counts: Vec<(u64, u64)> = read
            .iter()
            .map(|(s, ExplainEntry::Decision(e))| (*s, e.count))
            .collect();
        assert_eq!(counts, [(46, 3), (45, 3), (44, 3), (43, 1), (42, 3)]);
        apply(&mut store, log.take_due(8.0, true));
        let counts: Vec<u64> = store.values().map(|e| e.count).collect();
        assert_eq!(counts, [3, 1, 3, 3, 3]);
    }

    #[test]
    fn the_bound_keeps_the_last_entries_and_forget_starts_the_numbers_again() {
        let mut log = DecisionLog::new(1.0);
        log.load("m", 0);
        let mut store = std::collections::BTreeMap::new();
        // A running entry with a count still to write, which the bound will push out.
        for at in [0.0, 1.0] {
            apply(
                &mut store,
                log.record(
                    "m",
                    decision("old", Action::Full, DecisionOutcome::Cooldown, at),
                    0.0,
                ),
            );
        }
        for i in 0..250u64 {
            let outcome = DecisionOutcome::Job(i);
            apply(
                &mut store,
                log.record("m", decision("p", Action::Full, outcome, i as f64), 0.0),
            );
        }
        assert_eq!(store.len() as u64, KEEP);
        assert_eq!(store.keys().next(), Some(&152));
        assert_eq!(store.keys().last(), Some(&251));
        // The pushed-out running entry is never written back.
        assert_eq!(log.take_due(100.0, true), Vec::new());
        log.forget("m");
        assert!(!log.knows("m"));
        log.load("m", 0);
        let w = log.record(
            "m",
            decision("p", Action::Full, DecisionOutcome::Paused, 0.0),
            0.0,
        );
        assert_eq!(w[0].seq, 1);
    }
}
