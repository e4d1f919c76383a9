//! The observation log's promise: a model's state recovered from its checkpoint plus the
//! events logged after it is exactly the state that applying those events live gave, for every
//! policy kind (KSWIN's random state included), across reopenings of the store, folds into new
//! checkpoints and models that never fold.

use std::sync::Arc;

use visutility::config::{Config, Env, ModelRule};
use visutility::model::advance;
use visutility::policy::{Obs, bind_states};
use visutility::store::{ModelRecord, Store};

/// Every policy kind, on the metrics the events carry.
const RULES: &str = r#"
[[models]]
match = "*"

[[models.policies]]
kind = "static_threshold"
max_drift = 0.3
min_accuracy = 0.9

[[models.policies]]
kind = "drift_window"
window = 500
threshold = 0.3

[[models.policies]]
name = "errors"
kind = "adwin"
metric = "error"

[[models.policies]]
name = "ks"
kind = "kswin"
metric = "drift_score"
alpha = 0.005
window_size = 100
stat_size = 30
seed = 42

[[models.policies]]
kind = "page_hinkley"
metric = "value"

[[models.policies]]
name = "cu"
kind = "cusum"
metric = "value"

[[models.policies]]
name = "d"
kind = "ddm"
metric = "error"

[[models.policies]]
name = "e"
kind = "eddm"
metric = "error"

[[models.policies]]
name = "ha"
kind = "hddm_a"
metric = "error"

[[models.policies]]
name = "hw"
kind = "hddm_w"
metric = "error"
"#;

fn rule() -> Arc<ModelRule> {
    let config = Config::from_toml(RULES, &Env::default()).expect("valid rules");
    Arc::new(config.models[0].clone())
}

/// A deterministic stream with calm stretches and shifts, so detectors warn, fire and reset.
fn events(n: usize, seed: u64) -> Vec<Obs> {
    let mut s = seed;
    let mut next = move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|i| {
            let shifted = (i / 700) % 2 == 1;
            let drift = if shifted { 0.45 } else { 0.1 } + next() * 0.1;
            Obs {
                ts: 1_764_172_800.0 + i as f64 * 0.25,
                // Received a little after its own ts, as from a client that sends `ts`.
                received: 1_764_172_800.5 + i as f64 * 0.25,
                // Short decimals (as JSON senders write them) and full-precision values both.
                drift_score: Some((drift * 10_000.0).round() / 10_000.0),
                accuracy: (i % 3 != 0).then(|| 0.85 + next() * 0.1),
                error: Some(next() < if shifted { 0.4 } else { 0.05 }),
                value: Some(if shifted { 3.0 } else { 1.0 } + next()),
                metrics: Vec::new(),
                meta: None,
            }
        })
        .collect()
}

fn fresh(rule: &ModelRule) -> ModelRecord {
    ModelRecord {
        policies: bind_states(&rule.policies, Vec::new()),
        ..ModelRecord::default()
    }
}

/// What a model actor does with a batch: apply, log, fold when told.
fn apply(
    store: &Store,
    id: &Arc<str>,
    rule: &ModelRule,
    rec: &mut ModelRecord,
    ckpt: &mut u64,
    batch: &[Obs],
) -> bool {
    let first = rec.events + 1;
    advance(rec, Some(rule), batch, |_| {});
    let fold = store.append(id, first, batch, *ckpt).expect("append");
    if fold {
        *ckpt = store.checkpoint(id, rec).expect("checkpoint");
    }
    fold
}

/// What loading does: the checkpoint, the logged events replayed on top.
fn load(store: &Store, id: &str, rule: &ModelRule) -> (ModelRecord, u64) {
    let l = store.load_model_state(id).expect("load");
    assert!(!l.gap, "the log does not follow on from the checkpoint");
    let mut rec = l.record.unwrap_or_default();
    rec.policies = bind_states(&rule.policies, std::mem::take(&mut rec.policies));
    advance(&mut rec, Some(rule), &l.events, |_| {});
    (rec, l.checkpoint_bytes)
}

#[test]
fn replayed_state_equals_the_live_state_for_every_policy_kind() {
    let rule = rule();
    let evs = events(6_000, 7);
    let mut live = fresh(&rule);
    advance(&mut live, Some(&rule), &evs, |_| {});
    assert!(live.decisions > 0, "the stream must make policies fire");

    let dir = tempfile::tempdir().unwrap();
    let busy: Arc<str> = "busy".into();
    // A model that is never folded: its state lives in the log alone.
    let quiet: Arc<str> = "quiet".into();
    let mut quiet_live = fresh(&rule);
    let mut folds = 0;
    let mut at = 0;
    // Reopen the store after every chunk: the model then carries on from what was durable.
    for chunk in [1_234usize, 2_000, 777, 1_989] {
        let store = Store::open(dir.path(), 50).unwrap();
        let (mut rec, mut ckpt) = load(&store, &busy, &rule);
        if at == 0 {
            rec = fresh(&rule);
        }
        assert_eq!(rec.events, at as u64);
        let end = at + chunk;
        let mut i = at;
        let mut size = 1;
        while i < end {
            let j = (i + size).min(end);
            if apply(&store, &busy, &rule, &mut rec, &mut ckpt, &evs[i..j]) {
                folds += 1;
            }
            size = size % 37 + 1;
            i = j;
        }
        let first = quiet_live.events + 1;
        let q = &evs[at..at + 3];
        advance(&mut quiet_live, Some(&rule), q, |_| {});
        store.append(&quiet, first, q, u64::MAX / 8).unwrap();
        store.flush_sync().unwrap();
        at = end;
    }
    assert!(
        folds >= 2,
        "the test must cross folds into checkpoints ({folds})"
    );

    let store = Store::open(dir.path(), 50).unwrap();
    let (rec, _) = load(&store, &busy, &rule);
    assert_eq!(rec.events, evs.len() as u64);
    assert_eq!(
        rec.policies, live.policies,
        "policy states differ after replay"
    );
    assert_eq!(rec, live, "the model's record differs after replay");
    let (q, ckpt) = load(&store, &quiet, &rule);
    assert_eq!(ckpt, 0, "the quiet model was never checkpointed");
    assert_eq!(q, quiet_live);
    eprintln!(
        "replay: {} events, {folds} folds, {} decisions; state identical after 4 reopenings",
        rec.events, rec.decisions
    );
}

#[test]
fn a_fold_in_the_middle_of_a_reopen_cycle_is_never_applied_twice() {
    // A checkpoint written, then the store closed before anything else: the log still holds
    // the events the checkpoint covers, and loading must skip them.
    let rule = rule();
    let evs = events(600, 3);
    let dir = tempfile::tempdir().unwrap();
    let id: Arc<str> = "m".into();
    let mut live = fresh(&rule);
    {
        let store = Store::open(dir.path(), 50).unwrap();
        let mut ckpt = 0;
        apply(&store, &id, &rule, &mut live, &mut ckpt, &evs[..400]);
        store.checkpoint(&id, &live).unwrap();
        store.flush_sync().unwrap();
    }
    {
        let store = Store::open(dir.path(), 50).unwrap();
        let (mut rec, mut ckpt) = load(&store, &id, &rule);
        assert_eq!(rec, live);
        apply(&store, &id, &rule, &mut rec, &mut ckpt, &evs[400..]);
        store.flush_sync().unwrap();
        advance(&mut live, Some(&rule), &evs[400..], |_| {});
        assert_eq!(rec, live);
    }
    let store = Store::open(dir.path(), 50).unwrap();
    let (rec, _) = load(&store, &id, &rule);
    assert_eq!(rec, live);
}
