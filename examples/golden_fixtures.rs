//! Wrote the golden fixtures in `tests/fixtures/golden/` (see the README there): every kind of
//! record the store writes, as the bytes this build writes for it, with the listing of its
//! fields beside it.
//!
//! Run once per new encoding, into an empty directory; it never overwrites a file:
//!
//! ```sh
//! cargo run --example golden_fixtures -- target/golden
//! ```
//!
//! The fixtures of an encoding that has been released are never written again: a changed
//! encoding gets a new version (a record version byte, a log segment format, a schema
//! version) and new fixtures beside the old ones, which the build must keep reading.
//!
//! Records are written through a real [`Store`] and read back from sled as raw bytes, so the
//! fixtures are what the store puts on disk, not what a separate encoder would.

#[path = "../tests/it/golden/fields.rs"]
mod fields;

use std::collections::VecDeque;
use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use visutility::policy::detect::DetectorParams;
use visutility::policy::detect::Signal;
use visutility::policy::detect::adwin::AdwinParams;
use visutility::policy::detect::cusum::CusumParams;
use visutility::policy::detect::ddm::DdmParams;
use visutility::policy::detect::eddm::EddmParams;
use visutility::policy::detect::hddm_a::HddmAParams;
use visutility::policy::detect::hddm_w::HddmWParams;
use visutility::policy::detect::kswin::KswinParams;
use visutility::policy::detect::page_hinkley::{PageHinkleyParams, PhMode};
use visutility::policy::{Action, Direction, Obs, PolicyKind, PolicySpec, PolicyState, StateKind};
use visutility::store::wal::Wal;
use visutility::store::{
    DecisionEntry, DecisionOutcome, DecisionRecord, ExplainEntry, GroupLeader, Job, JobState,
    ModelRecord, RunnerRecord, Store,
};

/// 2025-11-26T16:00:00Z: the time every record is built around.
const T0: f64 = 1_764_172_800.0;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

fn main() -> Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: golden_fixtures OUT_DIR (an empty directory)")?,
    );
    fs::create_dir_all(&out)?;
    let work = tempfile::tempdir()?;
    let state = work.path().join("state");

    // Every record through a real store.
    let checkpoints = checkpoints();
    let jobs = jobs();
    let runners = runners();
    let explained = explain_entries();
    {
        let store = Store::open(&state, 100)?;
        for (name, rec) in &checkpoints {
            store.checkpoint(name, rec)?;
        }
        for (_, job) in &jobs {
            store.save_job(job)?;
        }
        for (name, rec) in &runners {
            store.save_runner(name, rec)?;
        }
        for (seq, (_, entry)) in (1u64..).zip(&explained) {
            store.put_explain_entry("fraud-v3", seq, entry)?;
        }
        store.flush_sync()?;
    }
    let db = open_sled(&state.join("db"))?;
    let models = db.open_tree("models")?;
    for (name, rec) in &checkpoints {
        let bytes = models
            .get(name.as_bytes())?
            .ok_or("checkpoint not stored")?;
        write_record(&out, &format!("checkpoint-{name}.v1"), &bytes, rec)?;
    }
    let job_tree = db.open_tree("jobs")?;
    for (name, job) in &jobs {
        let bytes = job_tree
            .get(job.job_id.to_be_bytes())?
            .ok_or("job not stored")?;
        write_record(&out, &format!("job-{name}.v1"), &bytes, job)?;
    }
    let runner_tree = db.open_tree("runner")?;
    for (name, rec) in &runners {
        let bytes = runner_tree
            .get(name.as_bytes())?
            .ok_or("runner record not stored")?;
        write_record(&out, &format!("runner-{name}.v1"), &bytes, rec)?;
    }
    let explain_tree = db.open_tree("explain")?;
    for (seq, (name, entry)) in (1u64..).zip(&explained) {
        // The key: the model id, a zero byte, the entry's number big-endian.
        let mut key = b"fraud-v3\0".to_vec();
        key.extend_from_slice(&seq.to_be_bytes());
        let bytes = explain_tree
            .get(&key)?
            .ok_or("decision log entry not stored")?;
        write_record(&out, &format!("explain-{name}.v1"), &bytes, entry)?;
    }
    let meta = db.open_tree("meta")?;
    let version = meta.get(b"schema_version")?.ok_or("no schema version")?;
    write_new(&out.join("meta-schema_version.v2.bin"), &version)?;
    write_new(
        &out.join("schema_version-file.v2.txt"),
        &fs::read(state.join("schema_version"))?,
    )?;
    drop(db);

    // The observation log: one segment, two frames, two models.
    let wal_dir = work.path().join("wal");
    let (mut wal, _) = Wal::open(&wal_dir)?;
    let (a, b) = wal_events();
    let fraud: Arc<str> = "fraud-v3".into();
    let m2: Arc<str> = "m2".into();
    let mut file = None;
    wal.append(&fraud, 1, &a[..4]);
    wal.append(&m2, 41, &b);
    let (n, create, frame) = wal.take_frame().ok_or("no frame")?;
    Wal::write_frame(&wal_dir, &mut file, n, create, &frame)?;
    wal.append(&fraud, 5, &a[4..]);
    let (n, create, frame) = wal.take_frame().ok_or("no frame")?;
    Wal::write_frame(&wal_dir, &mut file, n, create, &frame)?;
    drop(file);
    // Recovery must give back exactly these events.
    let (back, _) = Wal::open(&wal_dir)?;
    for (id, want) in [("fraud-v3", &a), ("m2", &b)] {
        let tail = back
            .tails
            .get(id)
            .ok_or("a model's events were not recovered")?;
        let got = visutility::store::wal::decode_events(&tail.bytes).ok_or("bad tail")?;
        let differ = fields::diff(&fields::obs_fields(id, want), &fields::obs_fields(id, &got));
        if !differ.is_empty() {
            return Err(format!("{id}: the log does not give back its events:\n{differ}").into());
        }
    }
    let segment = fs::read(wal.segment_path(1))?;
    write_new(&out.join("wal-segment.v1.wal"), &segment)?;
    let mut listing = fields::obs_fields("fraud-v3", &a);
    listing.extend(fields::obs_fields("m2", &b));
    write_new(
        &out.join("wal-segment.v1.fields"),
        (listing.join("\n") + "\n").as_bytes(),
    )?;
    println!("golden fixtures written to {}", out.display());
    Ok(())
}

/// sled's lock on a store just dropped can outlive it by a flush round.
fn open_sled(path: &Path) -> Result<sled::Db> {
    for _ in 0..100 {
        match sled::open(path) {
            Ok(db) => return Ok(db),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
    Ok(sled::open(path)?)
}

fn write_record<T: Serialize + serde::de::DeserializeOwned>(
    out: &Path,
    name: &str,
    bytes: &[u8],
    value: &T,
) -> Result<()> {
    // The store's own encoder, for the record: the bytes read back must be those.
    if visutility::store::encode_record(value)? != bytes {
        return Err(format!("{name}: the stored bytes are not the encoder's").into());
    }
    // And they must decode to the very value, field by field.
    let listing = fields::fields(value);
    let back: T = visutility::store::decode_record(bytes)?;
    let differ = fields::diff(&listing, &fields::fields(&back));
    if !differ.is_empty() {
        return Err(format!("{name}: the record does not decode to itself:\n{differ}").into());
    }
    write_new(&out.join(format!("{name}.bin")), bytes)?;
    write_new(
        &out.join(format!("{name}.fields")),
        (listing.join("\n") + "\n").as_bytes(),
    )
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| format!("{}: {e} (fixtures are never overwritten)", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

/// A deterministic stream of numbers in [0, 1).
fn lcg(seed: u64) -> impl FnMut() -> f64 {
    let mut s = seed;
    move || {
        s = s
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (s >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// 400 events, calm then shifted after the 250th, on the metric `metric` reads.
fn stream(metric: &str, seed: u64) -> Vec<Obs> {
    let mut next = lcg(seed);
    (0..400)
        .map(|i| {
            let shifted = i >= 250;
            let u = next();
            let ts = T0 + i as f64;
            let mut obs = Obs {
                ts,
                received: ts,
                ..Obs::default()
            };
            match metric {
                "error" => obs.error = Some(u < if shifted { 0.6 } else { 0.1 }),
                "value" => obs.value = Some((if shifted { 3.0 } else { 1.0 }) + u - 0.5),
                _ => obs.drift_score = Some((if shifted { 0.5 } else { 0.1 }) + u * 0.1),
            }
            obs
        })
        .collect()
}

fn spec(name: &str, metric: &str, kind: PolicyKind) -> PolicySpec {
    PolicySpec {
        name: name.into(),
        kind,
        metric: metric.into(),
        action: Action::Full,
        for_events: 1,
    }
}

/// A checkpoint holding one policy's state after the stream `metric` gives, with the model's
/// counters as the daemon keeps them.
fn checkpoint_after(spec: &PolicySpec, seed: u64) -> ModelRecord {
    let events = stream(&spec.metric, seed);
    let mut state = PolicyState::new(spec);
    let mut rec = ModelRecord {
        first_seen: T0,
        ..ModelRecord::default()
    };
    for obs in &events {
        rec.events += 1;
        rec.last_seen = obs.received;
        if let Some(fire) = state.observe(spec, obs)
            && fire.signal == Signal::Drift
            && let Some(action) = fire.action
        {
            rec.decisions += 1;
            rec.last_decision = Some(DecisionRecord {
                at: obs.ts,
                policy: spec.name.clone(),
                action,
                reason: fire.reason.to_string(),
            });
        }
    }
    rec.policies = vec![state];
    rec
}

fn checkpoints() -> Vec<(String, ModelRecord)> {
    let detectors = [
        (
            "adwin",
            "error",
            DetectorParams::Adwin(AdwinParams {
                clock: 16,
                ..AdwinParams::default()
            }),
        ),
        (
            "page_hinkley",
            "value",
            DetectorParams::PageHinkley(PageHinkleyParams {
                threshold: 20.0,
                mode: PhMode::Up,
                ..PageHinkleyParams::default()
            }),
        ),
        (
            "kswin",
            "drift_score",
            DetectorParams::Kswin(KswinParams {
                window_size: 60,
                stat_size: 20,
                seed: Some(42),
                ..KswinParams::default()
            }),
        ),
        ("ddm", "error", DetectorParams::Ddm(DdmParams::default())),
        ("eddm", "error", DetectorParams::Eddm(EddmParams::default())),
        (
            "hddm_a",
            "error",
            DetectorParams::HddmA(HddmAParams {
                two_sided_test: true,
                ..HddmAParams::default()
            }),
        ),
        (
            "hddm_w",
            "error",
            DetectorParams::HddmW(HddmWParams::default()),
        ),
        (
            "cusum",
            "value",
            DetectorParams::Cusum(CusumParams {
                target: Some(1.0),
                warm_start: 50,
                ..CusumParams::default()
            }),
        ),
    ];
    let mut out = vec![("full".to_owned(), full_checkpoint())];
    out.push((
        "static_threshold".into(),
        checkpoint_after(
            &spec(
                "static_threshold",
                "drift_score",
                PolicyKind::StaticThreshold {
                    max_drift: Some(0.3),
                    min_accuracy: None,
                    max: None,
                    min: None,
                },
            ),
            1,
        ),
    ));
    out.push((
        "drift_window".into(),
        checkpoint_after(
            &spec(
                "drift_window",
                "drift_score",
                PolicyKind::DriftWindow {
                    window: 20,
                    threshold: 0.3,
                    direction: Direction::Above,
                },
            ),
            2,
        ),
    ));
    for (i, (kind, metric, params)) in detectors.into_iter().enumerate() {
        let rec = checkpoint_after(
            &spec(kind, metric, PolicyKind::Detector(params)),
            10 + i as u64,
        );
        out.push((kind.to_owned(), rec));
    }
    out
}

/// A checkpoint with every field of the record set: counters, the last decision, warm-up,
/// sparklines, and the two policies whose state has public fields, written out by hand.
fn full_checkpoint() -> ModelRecord {
    ModelRecord {
        events: 1_234_567,
        first_seen: T0 - 86_400.5,
        last_seen: T0 + 0.125,
        decisions: 3,
        last_decision: Some(DecisionRecord {
            at: T0 - 60.0,
            policy: "accuracy".into(),
            action: Action::FineTune,
            reason: "accuracy 0.85 < min_accuracy 0.9".into(),
        }),
        policies: vec![
            PolicyState {
                name: "static_threshold".into(),
                streak: 2,
                kind: StateKind::StaticThreshold,
                values_rejected: Default::default(),
            },
            PolicyState {
                name: "window".into(),
                streak: 0,
                kind: StateKind::DriftWindow {
                    values: VecDeque::from([0.1, 0.25, -0.0, 1e-9, 0.30000000000000004]),
                    sum: 0.650000001,
                    pushes: 1_000_005,
                },
                values_rejected: Default::default(),
            },
        ],
        warmup_left: 7,
        recent_drift: VecDeque::from([0.1, 0.2, 0.35]),
        recent_accuracy: VecDeque::from([0.95, 0.9, 0.85, f32::MIN_POSITIVE]),
        probation: Default::default(),
    }
}

fn jobs() -> Vec<(String, Job)> {
    let base = |id: u64, action: Action| Job {
        job_id: id,
        model_id: "fraud-v3".into(),
        action,
        policy: "window".into(),
        reason: "mean of the last 20 drift_score values 0.412000 > threshold 0.3".into(),
        decision: r#"{"model_id":"fraud-v3","policy":"window","action":"full"}"#.into(),
        state: JobState::Queued,
        attempts: 0,
        created: T0,
        started: None,
        ended: None,
        exit_code: None,
        signal: None,
        pgid: None,
        leader: None,
        command: Vec::new(),
        note: String::new(),
        stdout_tail: String::new(),
        stderr_tail: String::new(),
        transitions: vec![(JobState::Queued, T0)],
        retry_of: None,
    };
    let command = vec![
        "/usr/lib/visutility/hooks/full-retrain".to_owned(),
        "--model".to_owned(),
        "fraud-v3".to_owned(),
    ];
    let leader = GroupLeader {
        boot_id: "0f3c5a4e-7b1d-4c2a-9e8f-123456789abc".into(),
        start_ticks: 987_654,
    };
    let queued = base(1, Action::Full);
    let running = Job {
        state: JobState::Running,
        attempts: 1,
        started: Some(T0 + 1.5),
        pgid: Some(4242),
        leader: Some(leader.clone()),
        command: command.clone(),
        transitions: vec![(JobState::Queued, T0), (JobState::Running, T0 + 1.5)],
        ..base(2, Action::FineTune)
    };
    let succeeded = Job {
        state: JobState::Succeeded,
        attempts: 1,
        started: Some(T0 + 1.5),
        ended: Some(T0 + 300.25),
        exit_code: Some(0),
        command: command.clone(),
        stdout_tail: "retrained: auc 0.97\n".into(),
        transitions: vec![
            (JobState::Queued, T0),
            (JobState::Running, T0 + 1.5),
            (JobState::Succeeded, T0 + 300.25),
        ],
        ..base(3, Action::Full)
    };
    let failed = Job {
        state: JobState::Failed,
        attempts: 3,
        started: Some(T0 + 2.0),
        ended: Some(T0 + 9.0),
        exit_code: Some(-1),
        signal: Some(9),
        command: command.clone(),
        note: "timed out after 7200 s; the process group was killed".into(),
        stderr_tail: "Traceback (most recent call last):\n  ...\n".into(),
        transitions: vec![
            (JobState::Queued, T0),
            (JobState::Running, T0 + 2.0),
            (JobState::Failed, T0 + 9.0),
        ],
        ..base(4, Action::Full)
    };
    let interrupted = Job {
        state: JobState::Interrupted,
        attempts: 1,
        started: Some(T0 + 2.0),
        ended: Some(T0 + 5.0),
        pgid: Some(777),
        leader: Some(leader),
        command: command.clone(),
        note: "the daemon stopped while the hook ran".into(),
        transitions: vec![
            (JobState::Queued, T0),
            (JobState::Running, T0 + 2.0),
            (JobState::Interrupted, T0 + 5.0),
        ],
        ..base(5, Action::FineTune)
    };
    let superseded = Job {
        state: JobState::Superseded,
        ended: Some(T0 + 0.5),
        note: "a full retrain superseded it".into(),
        transitions: vec![(JobState::Queued, T0), (JobState::Superseded, T0 + 0.5)],
        ..base(6, Action::FineTune)
    };
    let skipped = Job {
        state: JobState::Skipped,
        ended: Some(T0),
        note: "no escalate hook is configured".into(),
        transitions: vec![(JobState::Queued, T0), (JobState::Skipped, T0)],
        retry_of: Some(5),
        ..base(7, Action::Escalate)
    };
    [
        queued,
        running,
        succeeded,
        failed,
        interrupted,
        superseded,
        skipped,
    ]
    .into_iter()
    .map(|j| (j.state.as_str().to_owned(), j))
    .collect()
}

fn runners() -> Vec<(String, RunnerRecord)> {
    vec![
        ("fresh".into(), RunnerRecord::default()),
        (
            "full".into(),
            RunnerRecord {
                cooldown_until: T0 + 3600.5,
                paused: true,
                budget_day: 20_418,
                budget_used: 3,
                escalated_day: 20_417,
                last_success: Some((T0 - 60.25, "window".into(), Action::Escalate)),
            },
        ),
    ]
}

/// A decision log entry for each outcome, between them every field set and unset: a trigger
/// (no statistic, no event), decisions coalesced, an event with `meta`, notes.
fn explain_entries() -> Vec<(String, ExplainEntry)> {
    let base = |outcome: DecisionOutcome| {
        DecisionEntry {
        first_at: T0,
        at: T0,
        count: 1,
        policy: "window".into(),
        action: Action::Full,
        statistic: Some(0.412),
        threshold: Some(0.3),
        reason: "mean of the last 20 drift_score values 0.412000 > threshold 0.3".into(),
        event: Some(
            r#"{"drift_score":0.55,"meta":{"batch":"2025-11-26/17","region":"eu"},"model_id":"fraud-v3","ts":1764172800.0}"#
                .into(),
        ),
        outcome,
        note: String::new(),
    }
    };
    let trigger = DecisionEntry {
        policy: "manual".into(),
        action: Action::FineTune,
        statistic: None,
        threshold: None,
        reason: "triggered by an operator".into(),
        event: None,
        ..base(DecisionOutcome::Job(42))
    };
    let cooldown = DecisionEntry {
        first_at: T0 + 1.5,
        at: T0 + 3599.75,
        count: 1_999,
        ..base(DecisionOutcome::Cooldown)
    };
    let loop_guard = DecisionEntry {
        note: "the policy fired again 120 s after its retrain succeeded (job 41); escalated already in this window".into(),
        // A detector's statistic is negative zero here, its threshold a 17-digit float.
        statistic: Some(-0.0),
        threshold: Some(0.1 + 0.2),
        ..base(DecisionOutcome::LoopGuard)
    };
    let error = DecisionEntry {
        note: "cannot record the job: state store i/o failed".into(),
        ..base(DecisionOutcome::Error)
    };
    vec![
        ("job".into(), trigger),
        ("absorbed".into(), base(DecisionOutcome::Absorbed(u64::MAX))),
        ("paused".into(), base(DecisionOutcome::Paused)),
        ("cooldown".into(), cooldown),
        ("loop_guard".into(), loop_guard),
        ("no_hook".into(), base(DecisionOutcome::NoHook)),
        ("budget".into(), base(DecisionOutcome::Budget)),
        ("warmup".into(), base(DecisionOutcome::Warmup)),
        ("trigger_limit".into(), base(DecisionOutcome::TriggerLimit)),
        ("error".into(), error),
    ]
    .into_iter()
    .map(|(name, e)| (name, ExplainEntry::Decision(e)))
    .collect()
}

/// The events of the log fixture: together they set every bit of an event's mask, and numbers
/// take both encodings (a short decimal, the raw eight bytes).
fn wal_events() -> (Vec<Obs>, Vec<Obs>) {
    let at = |ts: f64| Obs {
        ts,
        received: ts,
        ..Obs::default()
    };
    let fraud = vec![
        // Nothing but a time (mask 0).
        at(T0),
        // drift_score and accuracy; received 12 ms after ts (a zigzag delta).
        Obs {
            drift_score: Some(0.12),
            accuracy: Some(0.93),
            received: T0 + 1.0 + 0.012,
            ..at(T0 + 1.0)
        },
        // error false; received before ts (a negative delta).
        Obs {
            error: Some(false),
            received: T0 + 2.0 - 0.25,
            ..at(T0 + 2.0)
        },
        // error true; a value that is no short decimal (raw), a negative zero (raw).
        Obs {
            error: Some(true),
            value: Some(0.1 + 0.2),
            drift_score: Some(-0.0),
            ..at(T0 + 3.0)
        },
        // Custom metrics: a decimal, a raw number, a negative one.
        Obs {
            metrics: vec![
                ("latency_ms".into(), 12.5),
                ("p".into(), 1.0 / 3.0),
                ("delta".into(), -42.0),
            ],
            ..at(T0 + 4.0)
        },
        // received not a whole number of ms after ts: written raw.
        Obs {
            value: Some(4.2),
            received: T0 + 5.0 + 0.0005,
            ..at(T0 + 5.0)
        },
        // A ts that is no short decimal.
        at(T0 + 6.0 + 1.0 / 7.0),
        // Every field at once.
        Obs {
            drift_score: Some(0.5),
            accuracy: Some(0.75),
            error: Some(true),
            value: Some(-1e-7),
            metrics: vec![("queue".into(), 3.0)],
            received: T0 + 7.0 + 1.5,
            ..at(T0 + 7.0)
        },
    ];
    let m2 = vec![
        Obs {
            accuracy: Some(0.5),
            ..at(T0 + 10.0)
        },
        Obs {
            error: Some(false),
            ..at(T0 + 11.0)
        },
        Obs {
            value: Some(1e300),
            ..at(T0 + 12.0)
        },
    ];
    (fraud, m2)
}
