//! Golden bytes: every kind of record the store writes, as a released build wrote it
//! (`tests/fixtures/golden/`, see its README), must decode with this build to the very values
//! it held, field by field, and encode back to the same bytes. A change that breaks this
//! breaks every store on disk: it needs a new record version and a migration instead.

mod fields;

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use visutility::policy::detect::{Detector, KINDS};
use visutility::policy::{Action, StateKind};
use visutility::store::wal::{Wal, decode_events};
use visutility::store::{
    DecisionOutcome, ExplainEntry, Job, JobState, ModelRecord, RunnerRecord, SCHEMA_VERSION, Store,
    decode_record, encode_record,
};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden")
}

fn read(name: &str) -> Vec<u8> {
    let path = dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn listing(name: &str) -> Vec<String> {
    String::from_utf8(read(name))
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Decodes `NAME.bin`, checks every field against `NAME.fields` and that encoding the value
/// again gives the same bytes (every record's encoding is canonical: bincode writes a value
/// one way only).
fn check<T: Serialize + DeserializeOwned>(name: &str) -> T {
    let bytes = read(&format!("{name}.bin"));
    let value: T =
        decode_record(&bytes).unwrap_or_else(|e| panic!("{name}.bin does not decode: {e} ({e:?})"));
    let want = listing(&format!("{name}.fields"));
    let got = fields::fields(&value);
    assert!(
        want == got,
        "{name}.bin decodes to other values than it was written with:\n{}",
        fields::diff(&want, &got)
    );
    assert_eq!(
        encode_record(&value).unwrap(),
        bytes,
        "{name}: encoding the decoded record again gives other bytes"
    );
    value
}

/// The fixture of each policy state kind. Exhaustive on purpose: a new detector does not
/// compile here until it has a fixture.
fn detector_fixture(d: &Detector) -> &'static str {
    match d {
        Detector::Adwin(_) => "adwin",
        Detector::PageHinkley(_) => "page_hinkley",
        Detector::Kswin(_) => "kswin",
        Detector::Ddm(_) => "ddm",
        Detector::Eddm(_) => "eddm",
        Detector::HddmA(_) => "hddm_a",
        Detector::HddmW(_) => "hddm_w",
        Detector::Cusum(_) => "cusum",
    }
}

#[test]
fn every_policy_state_kind_decodes_field_by_field_and_encodes_to_the_same_bytes() {
    let mut kinds = vec!["static_threshold", "drift_window"];
    kinds.extend_from_slice(KINDS);
    for kind in kinds {
        let rec: ModelRecord = check(&format!("checkpoint-{kind}.v1"));
        assert_eq!(rec.policies.len(), 1, "{kind}");
        assert_eq!(rec.policies[0].name, kind);
        let stored = match &rec.policies[0].kind {
            StateKind::StaticThreshold => "static_threshold",
            StateKind::DriftWindow { .. } => "drift_window",
            StateKind::Detector(d) => detector_fixture(d),
        };
        assert_eq!(stored, kind, "checkpoint-{kind} holds another kind's state");
        assert_eq!(rec.events, 400, "{kind}");
    }
}

#[test]
fn a_checkpoint_with_every_field_set_decodes_to_what_was_written() {
    let rec: ModelRecord = check("checkpoint-full.v1");
    assert_eq!(rec.events, 1_234_567);
    assert_eq!(rec.first_seen, 1_764_172_800.0 - 86_400.5);
    assert_eq!(rec.last_seen, 1_764_172_800.125);
    assert_eq!(rec.decisions, 3);
    let d = rec.last_decision.as_ref().unwrap();
    assert_eq!(
        (d.at, d.policy.as_str(), d.action),
        (1_764_172_740.0, "accuracy", Action::FineTune)
    );
    assert_eq!(rec.warmup_left, 7);
    assert_eq!(rec.policies[0].streak, 2);
    match &rec.policies[1].kind {
        StateKind::DriftWindow {
            values,
            sum,
            pushes,
        } => {
            assert_eq!(values.len(), 5);
            assert!(values[2] == 0.0 && values[2].is_sign_negative());
            assert_eq!(values[4], 0.1 + 0.2);
            assert_eq!((*sum, *pushes), (0.650000001, 1_000_005));
        }
        other => panic!("not a drift_window state: {other:?}"),
    }
    assert_eq!(rec.recent_drift, [0.1f32, 0.2, 0.35]);
    assert_eq!(rec.recent_accuracy[3], f32::MIN_POSITIVE);
}

/// The fixture of each job state. Exhaustive on purpose, like [`detector_fixture`].
fn job_fixture(s: JobState) -> &'static str {
    match s {
        JobState::Queued => "queued",
        JobState::Running => "running",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Interrupted => "interrupted",
        JobState::Superseded => "superseded",
        JobState::Skipped => "skipped",
    }
}

#[test]
fn a_job_in_every_state_decodes_field_by_field_and_encodes_to_the_same_bytes() {
    let states = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Interrupted,
        JobState::Superseded,
        JobState::Skipped,
    ];
    let mut actions = Vec::new();
    for (i, state) in states.into_iter().enumerate() {
        let name = job_fixture(state);
        let job: Job = check(&format!("job-{name}.v1"));
        assert_eq!(job.state, state);
        assert_eq!(job.job_id, i as u64 + 1);
        assert_eq!(job.model_id, "fraud-v3");
        assert_eq!(job.transitions.first().map(|t| t.0), Some(JobState::Queued));
        assert_eq!(job.transitions.last().map(|t| t.0), Some(state));
        assert_eq!(job.ended.is_some(), state.is_final(), "{name}");
        actions.push(job.action);
    }
    for a in [Action::Full, Action::FineTune, Action::Escalate] {
        assert!(actions.contains(&a), "no job fixture with action {a}");
    }
    let running: Job = check("job-running.v1");
    let leader = running.leader.unwrap();
    assert_eq!(running.pgid, Some(4242));
    assert_eq!(leader.start_ticks, 987_654);
    let skipped: Job = check("job-skipped.v1");
    assert_eq!(skipped.retry_of, Some(5));
}

#[test]
fn runner_records_decode_field_by_field_and_encode_to_the_same_bytes() {
    let fresh: RunnerRecord = check("runner-fresh.v1");
    assert_eq!(fresh, RunnerRecord::default());
    let full: RunnerRecord = check("runner-full.v1");
    assert!(full.paused);
    assert_eq!(full.cooldown_until, 1_764_172_800.0 + 3600.5);
    assert_eq!((full.budget_day, full.budget_used), (20_418, 3));
    assert_eq!(full.escalated_day, 20_417);
    assert_eq!(
        full.last_success,
        Some((
            1_764_172_800.0 - 60.25,
            "window".to_owned(),
            Action::Escalate
        ))
    );
}

/// The fixture of each decision outcome. Exhaustive on purpose, like [`detector_fixture`]:
/// an outcome added does not compile here until it has a fixture.
fn explain_fixture(o: DecisionOutcome) -> &'static str {
    match o {
        DecisionOutcome::Job(_) => "job",
        DecisionOutcome::Absorbed(_) => "absorbed",
        DecisionOutcome::Paused => "paused",
        DecisionOutcome::Cooldown => "cooldown",
        DecisionOutcome::LoopGuard => "loop_guard",
        DecisionOutcome::NoHook => "no_hook",
        DecisionOutcome::Budget => "budget",
        DecisionOutcome::Warmup => "warmup",
        DecisionOutcome::TriggerLimit => "trigger_limit",
        DecisionOutcome::Error => "error",
    }
}

#[test]
fn a_decision_log_entry_of_every_outcome_decodes_field_by_field_and_encodes_to_the_same_bytes() {
    let outcomes = [
        DecisionOutcome::Job(42),
        DecisionOutcome::Absorbed(u64::MAX),
        DecisionOutcome::Paused,
        DecisionOutcome::Cooldown,
        DecisionOutcome::LoopGuard,
        DecisionOutcome::NoHook,
        DecisionOutcome::Budget,
        DecisionOutcome::Warmup,
        DecisionOutcome::TriggerLimit,
        DecisionOutcome::Error,
    ];
    for outcome in outcomes {
        let name = explain_fixture(outcome);
        let ExplainEntry::Decision(d) = check::<ExplainEntry>(&format!("explain-{name}.v1"));
        assert_eq!(d.outcome, outcome, "{name}");
        assert_eq!(d.outcome.as_str(), name);
    }
    // A trigger: no statistic, no event.
    let ExplainEntry::Decision(trigger) = check::<ExplainEntry>("explain-job.v1");
    assert_eq!((trigger.statistic, trigger.event), (None, None));
    assert_eq!(trigger.action, Action::FineTune);
    // Decisions coalesced, with the event that tipped the first (its `meta` kept).
    let ExplainEntry::Decision(held) = check::<ExplainEntry>("explain-cooldown.v1");
    assert_eq!(held.count, 1_999);
    assert_eq!(held.at - held.first_at, 3_598.25);
    let event: serde_json::Value = serde_json::from_str(held.event.as_deref().unwrap()).unwrap();
    assert_eq!(event["meta"]["batch"], "2025-11-26/17");
    let ExplainEntry::Decision(guard) = check::<ExplainEntry>("explain-loop_guard.v1");
    assert!(guard.statistic.unwrap().is_sign_negative());
    assert!(!guard.note.is_empty());
}

#[test]
fn the_observation_log_segment_is_read_back_event_by_event_and_written_again_the_same() {
    let bytes = read("wal-segment.v1.wal");
    let tmp = tempfile::tempdir().unwrap();
    let wal_dir = tmp.path().join("wal");
    std::fs::create_dir(&wal_dir).unwrap();
    std::fs::write(wal_dir.join("0000000000000001.wal"), &bytes).unwrap();
    let (wal, recovery) = Wal::open(&wal_dir).unwrap();
    assert_eq!(
        (recovery.segments, recovery.frames, recovery.events),
        (1, 2, 11)
    );
    assert_eq!((recovery.models, recovery.torn_bytes), (2, 0));

    let fraud = &wal.tails["fraud-v3"];
    let m2 = &wal.tails["m2"];
    assert_eq!((fraud.start_seq, fraud.count), (1, 8));
    assert_eq!((m2.start_seq, m2.count), (41, 3));
    let a = decode_events(&fraud.bytes).expect("fraud-v3's events decode");
    let b = decode_events(&m2.bytes).expect("m2's events decode");
    let mut got = fields::obs_fields("fraud-v3", &a);
    got.extend(fields::obs_fields("m2", &b));
    let want = listing("wal-segment.v1.fields");
    assert!(
        want == got,
        "the log's events decode to other values than they were written with:\n{}",
        fields::diff(&want, &got)
    );
    // What the fixture covers of the event encoding: each optional field present and absent,
    // the time of receipt as a whole-ms delta (either sign) and raw, numbers in both forms.
    assert!(a.iter().any(|e| e.error == Some(true)) && a.iter().any(|e| e.error == Some(false)));
    assert!(a.iter().any(|e| e.received > e.ts) && a.iter().any(|e| e.received < e.ts));
    assert!(a.iter().any(|e| e.metrics.len() > 1));
    assert!(
        a.iter()
            .all(|e| e.meta.is_none() && e.received != 0.0 && e.ts.is_finite())
    );

    // The same appends, in the same frames, give the same bytes.
    let again = tmp.path().join("again");
    let (mut w, _) = Wal::open(&again).unwrap();
    let (fraud_id, m2_id) = ("fraud-v3".into(), "m2".into());
    let mut written = Vec::new();
    w.append(&fraud_id, 1, &a[..4]);
    w.append(&m2_id, 41, &b);
    written.extend(w.take_frame().unwrap().2);
    w.append(&fraud_id, 5, &a[4..]);
    written.extend(w.take_frame().unwrap().2);
    assert_eq!(
        written, bytes,
        "the log encodes the same events differently"
    );
}

#[test]
fn the_schema_version_is_written_as_the_fixtures_say_and_records_go_in_as_they_are() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let checkpoint: ModelRecord = check("checkpoint-full.v1");
    let job: Job = check("job-succeeded.v1");
    let runner: RunnerRecord = check("runner-full.v1");
    let entry: ExplainEntry = check("explain-cooldown.v1");
    {
        let store = Store::open(&state, 100).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        store.checkpoint("fraud-v3", &checkpoint).unwrap();
        store.save_job(&job).unwrap();
        store.save_runner("fraud-v3", &runner).unwrap();
        store.put_explain_entry("fraud-v3", 4, &entry).unwrap();
        store.flush_sync().unwrap();
    }
    assert_eq!(
        std::fs::read(state.join("schema_version")).unwrap(),
        read("schema_version-file.v2.txt")
    );
    assert_eq!(
        u32::from_be_bytes(read("meta-schema_version.v2.bin").try_into().unwrap()),
        SCHEMA_VERSION
    );
    // The trees, their keys and their values, as sled holds them.
    let db = open_sled(&state.join("db"));
    let get = |tree: &str, key: &[u8]| {
        db.open_tree(tree)
            .unwrap()
            .get(key)
            .unwrap()
            .unwrap_or_else(|| panic!("nothing at {tree}/{key:?}"))
            .to_vec()
    };
    assert_eq!(
        get("meta", b"schema_version"),
        read("meta-schema_version.v2.bin")
    );
    assert_eq!(get("models", b"fraud-v3"), read("checkpoint-full.v1.bin"));
    assert_eq!(
        get("jobs", &job.job_id.to_be_bytes()),
        read("job-succeeded.v1.bin")
    );
    assert_eq!(get("runner", b"fraud-v3"), read("runner-full.v1.bin"));
    // A decision log entry's key: the model id, a zero byte, its number big-endian.
    assert_eq!(
        get("explain", b"fraud-v3\0\0\0\0\0\0\0\0\x04"),
        read("explain-cooldown.v1.bin")
    );
}

/// sled's lock on a store just dropped can outlive it by a flush round of its flusher.
fn open_sled(path: &Path) -> sled::Db {
    crate::support::poll_until(crate::support::DEADLINE, || sled::open(path).ok())
        .unwrap_or_else(|| panic!("cannot open {} with sled", path.display()))
}
