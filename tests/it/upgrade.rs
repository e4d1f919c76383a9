//! Upgrades: a store written before schema versioning (schema 0, the fixture
//! `tests/fixtures/store-schema0`) opens, is migrated to this build's schema, and keeps its
//! models, runner state and jobs; a store from a newer version (`tests/fixtures/store-schema99`)
//! is refused with a clear error and a non-zero exit, and not one byte of it changes.
//!
//! A schema-1 store (`tests/fixtures/store-schema1`, written by the last schema-1 release) is
//! migrated in place to schema 2 (migrations/0002_observation_log.md) and keeps every model's
//! state, job, cooldown and pause; a cut after any step of that migration leaves a store that
//! one of the two releases opens.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use visutility::store::{SCHEMA_VERSION, Store, StoreError};

use crate::support::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// Every file under `dir` with its length and a hash of its bytes (FNV-1a).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (usize, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let bytes = fs::read(e.path()).unwrap();
                let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                    (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
                });
                out.insert(
                    e.path().strip_prefix(dir).unwrap().to_owned(),
                    (bytes.len(), hash),
                );
            }
        }
    }
    out
}

#[test]
fn a_schema_0_store_is_migrated_and_keeps_its_state() {
    let b = Daemon::builder();
    copy_dir(&fixture("store-schema0"), &b.path("state"));
    let mut d = b.start();
    d.wait_log_count("the migration to be logged", 1, |l| {
        l.contains("state store migrated") && l.contains("schema_version=1")
    });
    let a = d
        .model("legacy-a")
        .unwrap_or_else(|| d.fail("legacy-a is missing"));
    assert_eq!(a["events"], json!(7), "{a}");
    assert_eq!(a["paused"], json!(false), "{a}");
    let b2 = d
        .model("team/legacy:b")
        .unwrap_or_else(|| d.fail("team/legacy:b is missing"));
    assert_eq!(b2["events"], json!(3), "{b2}");
    assert_eq!(b2["paused"], json!(true), "{b2}");
    let jobs = d.history(None);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["state"], json!("succeeded"), "{jobs:?}");
    assert_eq!(jobs[0]["model_id"], json!("legacy-a"), "{jobs:?}");
    // It keeps counting where it was.
    let mut c = d.connect();
    c.send_line(&plain_event("legacy-a"));
    assert_flush(&c.flush(), 1, 0);
    d.sigterm();
    assert!(d.wait_exit().success());
    let s = Store::open(&d.state_dir, 100).unwrap();
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    // The checkpoint plus the events logged after it (folded at the next start).
    let l = s.load_model_state("legacy-a").unwrap();
    assert_eq!(l.record.unwrap().events + l.events.len() as u64, 8);
}

#[test]
fn a_store_from_a_newer_version_is_refused_untouched() {
    let b = Daemon::builder();
    copy_dir(&fixture("store-schema99"), &b.path("state"));
    let before = snapshot(&b.path("state"));
    assert!(!before.is_empty());
    let mut d = b.spawn_only();
    let status = d.wait_exit();
    let logs = d.logs();
    assert!(
        !status.success(),
        "the daemon ran on a newer store: {status:?}\n{logs}"
    );
    assert!(
        logs.contains("schema version 99") && logs.contains("newer"),
        "the error does not say why:\n{logs}"
    );
    assert_eq!(
        snapshot(&d.state_dir),
        before,
        "the refused store was modified"
    );
    // The library refuses it the same way.
    match Store::open(&d.state_dir, 100) {
        Err(StoreError::TooNew { found: 99, .. }) => {}
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("a newer store was opened"),
    }
    assert_eq!(
        snapshot(&d.state_dir),
        before,
        "the refused store was modified"
    );
    eprintln!(
        "upgrade: newer store refused with {status:?}; {} files unchanged",
        before.len()
    );
}

// ---------------------------------------------------------------------------
// Schema 1 -> 2
// ---------------------------------------------------------------------------

fn schema1(name: &str) -> PathBuf {
    fixture("store-schema1").join(name)
}

fn schema1_json(name: &str) -> Value {
    let path = schema1(name);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fixture's config with the hooks replaced: the same cooldown and the very same
/// `[[models]]` rules and policies (copied from its `config.toml`), so the stored policy
/// states bind to the policies they were written by.
fn schema1_body(hook: &Hook) -> String {
    let config = fs::read_to_string(schema1("config.toml")).unwrap();
    let models = &config[config
        .find("[[models]]")
        .expect("the fixture config has [[models]]")..];
    let cmd = hook.command_toml(&[]);
    format!(
        "[hooks]\ncooldown_s = 86400\nfull = {{ command = {cmd}, timeout_s = 60 }}\nfine_tune = {{ command = {cmd}, timeout_s = 60 }}\n\n{models}"
    )
}

fn schema_file(state_dir: &Path) -> String {
    fs::read_to_string(state_dir.join("schema_version")).unwrap()
}

/// The schema version sled records in `meta/schema_version`: what the schema-1 release checks
/// after the schema file. Read from a copy of the database, so the store under test is not
/// touched (opening a sled database writes to it).
fn sled_schema(state_dir: &Path) -> u32 {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&state_dir.join("db"), &tmp.path().join("db"));
    let db = sled::Config::new()
        .path(tmp.path().join("db"))
        .open()
        .unwrap();
    let meta = db.open_tree("meta").unwrap();
    let v = meta
        .get(b"schema_version")
        .unwrap()
        .expect("sled has no schema_version key");
    u32::from_be_bytes(v.as_ref().try_into().expect("a 4-byte version"))
}

/// `actual` has every key of `expected` with the same value (extra keys are fine); with
/// `tol` > 0, numbers may differ by that much (f64 formatting).
fn assert_json_covers(expected: &Value, actual: &Value, tol: f64, at: &str) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, v) in e {
                let a = a
                    .get(k)
                    .unwrap_or_else(|| panic!("{at}.{k} is missing in {actual}"));
                assert_json_covers(v, a, tol, &format!("{at}.{k}"));
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            assert_eq!(e.len(), a.len(), "{at}: {expected} vs {actual}");
            for (i, (v, w)) in e.iter().zip(a).enumerate() {
                assert_json_covers(v, w, tol, &format!("{at}[{i}]"));
            }
        }
        (Value::Number(e), Value::Number(a)) if tol > 0.0 => {
            let (e, a) = (e.as_f64().unwrap(), a.as_f64().unwrap());
            assert!((e - a).abs() <= tol, "{at}: expected {e}, found {a}");
        }
        _ => assert_eq!(expected, actual, "{at}"),
    }
}

/// The runner records as JSON, by model.
fn runners_json(s: &Store) -> BTreeMap<String, Value> {
    s.runners()
        .map(|r| {
            let (id, rec) = r.unwrap();
            (id, serde_json::to_value(rec).unwrap())
        })
        .collect()
}

/// A store holds the fixture's models (checkpoint plus logged events), jobs and runner
/// records.
fn assert_holds_the_schema1_fixture(s: &Store) {
    let expected = schema1_json("expected.json");
    for (id, m) in expected["models"].as_object().unwrap() {
        let l = s.load_model_state(id).unwrap();
        let rec = l
            .record
            .unwrap_or_else(|| panic!("model {id} has no checkpoint"));
        assert_eq!(
            Some(rec.events + l.events.len() as u64),
            m["events"].as_u64(),
            "events of {id}"
        );
        assert_eq!(Some(rec.decisions), m["decisions"].as_u64(), "{id}");
        assert_eq!(Some(rec.first_seen), m["first_seen"].as_f64(), "{id}");
    }
    let runners = runners_json(s);
    assert_eq!(
        runners.keys().collect::<Vec<_>>(),
        expected["runners"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>()
    );
    for (id, r) in expected["runners"].as_object().unwrap() {
        assert_json_covers(r, &runners[id], 1e-6, &format!("runners.{id}"));
    }
    let jobs = s.jobs(None, 100).unwrap();
    let mut ids: Vec<u64> = jobs.iter().map(|j| j.job_id).collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2], "{jobs:?}");
}

#[test]
fn a_schema_1_store_is_migrated_in_place_and_keeps_every_model_job_and_cooldown() {
    let expected = schema1_json("expected.json");
    let models_before = schema1_json("models.json");
    let history_before = schema1_json("history.json");
    assert_eq!(expected["schema_version"], json!(1));

    let b = Daemon::builder();
    let hook = b.recording_hook("hook", 0);
    let b = b.body(schema1_body(&hook));
    copy_dir(&schema1("state"), &b.path("state"));
    assert_eq!(schema_file(&b.path("state")).trim(), "1");
    let mut d = b.start();
    d.wait_log_count("the migration to schema 2 to be logged", 1, |l| {
        l.contains("state store migrated") && l.contains("schema_version=2")
    });

    // Every model as the schema-1 build showed it (its README: `decision_counts` and
    // `restarts` count from the daemon's start), policy states included: they were kept, not
    // reset.
    let models = d.models_json();
    let models = models.as_array().unwrap();
    assert_eq!(models.len(), 3, "{models:?}");
    for before in models_before.as_array().unwrap() {
        let id = before["model_id"].as_str().unwrap();
        let now = models
            .iter()
            .find(|m| m["model_id"] == id)
            .unwrap_or_else(|| d.fail(format!("model {id} is missing: {models:?}")));
        let mut before = before.clone();
        let obj = before.as_object_mut().unwrap();
        obj.remove("decision_counts");
        obj.remove("restarts");
        // Issue 13.4: what the schema-1 build showed as a policy's `state` is now its
        // `summary` (`state` became named numbers).
        for p in obj
            .get_mut("policies")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let p = p.as_object_mut().unwrap();
            if let Some(text) = p.remove("state") {
                p.insert("summary".into(), text);
            }
        }
        assert_json_covers(&before, now, 0.0, id);
        let sum = &expected["models"][id];
        for k in ["events", "paused", "decisions"] {
            assert_eq!(now[k], sum[k], "{id}.{k}: {now}");
        }
        for k in ["first_seen", "last_seen"] {
            assert_eq!(now[k].as_f64(), sum[k].as_f64(), "{id}.{k}: {now}");
        }
    }

    // The decision log came after schema 1 (and 2), without a migration: every model has
    // an empty one.
    for id in ["alpha", "beta", "gamma"] {
        assert_eq!(d.cli_json(&["explain", id]), json!([]), "{id}");
    }

    // The same jobs.
    let jobs = d.history(None);
    let before = history_before.as_array().unwrap();
    assert_eq!(jobs.len(), before.len(), "{jobs:?}");
    for job in before {
        let now = jobs
            .iter()
            .find(|j| j["job_id"] == job["job_id"])
            .unwrap_or_else(|| d.fail(format!("job {} is missing: {jobs:?}", job["job_id"])));
        assert_json_covers(job, now, 0.0, &format!("job {}", job["job_id"]));
    }
    for job in expected["jobs"].as_array().unwrap() {
        let now = jobs.iter().find(|j| j["job_id"] == job["job_id"]).unwrap();
        assert_json_covers(job, now, 1e-6, &format!("job {}", job["job_id"]));
    }

    // The runner records (cooldowns, pause, loop guard) as the schema-1 build left them.
    d.sigterm();
    let st = d.wait_exit();
    assert!(st.success(), "{st:?}\n{}", d.logs());
    {
        let s = Store::open(&d.state_dir, 100).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(SCHEMA_VERSION, 2);
        let runners = runners_json(&s);
        for (id, r) in expected["runners"].as_object().unwrap() {
            let now = runners
                .get(id)
                .unwrap_or_else(|| panic!("no runner record for {id}: {runners:?}"));
            assert_json_covers(r, now, 1e-6, &format!("runners.{id}"));
        }
        assert!(
            runners["alpha"]["cooldown_until"].as_f64().unwrap() > 1.7e9,
            "{runners:?}"
        );
        assert_eq!(runners["gamma"]["paused"], json!(true));
        assert_holds_the_schema1_fixture(&s);
    }

    // It keeps counting where it was, through the log, across a SIGKILL.
    d.restart();
    let mut c = d.connect();
    c.send_line(
        &json!({"model_id": "alpha", "ts": 1764173100, "drift_score": 0.1, "accuracy": 0.95,
                "error": 0, "value": 1.05})
        .to_string(),
    );
    assert_flush(&c.flush(), 1, 0);
    drop(c);
    d.kill_and_restart();
    // A model with logged events loads (and replays them) just after the daemon is ready.
    let events = d.wait_for("alpha to show its logged event", || {
        let n = d.events_of("alpha");
        (n > 300).then_some(n)
    });
    assert_eq!(events, 301);
    // Loaded and replayed on top of the schema-1 checkpoint: the policies went on from their
    // persisted state (a reset one would show `window 1/50`, `width 1`, `warming up 1/50`).
    let alpha = d.model("alpha").unwrap();
    let state = |name: &str| {
        alpha["policies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| d.fail(format!("alpha has no policy {name}: {alpha}")))["summary"]
            .clone()
    };
    assert_eq!(
        state("drift_window"),
        json!("window 50/50, mean 0.1000 (threshold 0.3)"),
        "{alpha}"
    );
    assert_eq!(state("errors"), json!("width 151, mean 0.000"), "{alpha}");
    assert!(
        !state("cu").as_str().unwrap().starts_with("warming up"),
        "{alpha}"
    );
    assert_eq!(d.events_of("beta"), 120);
    assert_eq!(d.model("gamma").unwrap()["paused"], json!(true));
    assert_eq!(d.history(None).len(), 2);
    assert_eq!(
        hook.started(),
        0,
        "a hook ran after the upgrade: {:?}",
        hook.runs()
    );
    let migrated = d
        .log_lines()
        .iter()
        .filter(|l| l.contains("state store migrated"))
        .count();
    assert_eq!(migrated, 1, "migrated more than once:\n{}", d.logs());

    assert_eq!(schema_file(&d.state_dir).trim(), "2");
    assert!(d.state_dir.join("wal").is_dir());
}

#[test]
fn a_cut_during_the_schema_1_to_2_migration_leaves_a_store_one_release_opens() {
    let sb = Sandbox::new();

    // (a) Cut after step 1: the log's directory exists, nothing else changed. Both releases
    // open it (the schema-1 one ignores `wal/`); this one migrates it.
    let a = sb.path("cut-after-1");
    copy_dir(&schema1("state"), &a);
    fs::create_dir(a.join("wal")).unwrap();
    assert_eq!(sled_schema(&a), 1);
    assert_eq!(schema_file(&a).trim(), "1");
    {
        let s = Store::open(&a, 100).unwrap();
        assert_eq!(s.schema_version().unwrap(), 2);
        assert_holds_the_schema1_fixture(&s);
    }
    assert_eq!(sled_schema(&a), 2);
    assert_eq!(schema_file(&a).trim(), "2");

    // (b) Cut after step 2: sled says 2, the schema file still says 1.
    let b = sb.path("cut-after-2");
    copy_dir(&schema1("state"), &b);
    assert_eq!(sled_schema(&b), 1, "the fixture is not a schema-1 store");
    drop(Store::open(&b, 100).unwrap());
    fs::write(b.join("schema_version"), "1\n").unwrap();
    // The schema-1 release reads the file (1, fine), then sled's key: 2 is newer than it
    // knows, so it refuses the store rather than dropping logged events.
    assert_eq!(sled_schema(&b), 2);
    {
        let s = Store::open(&b, 100).unwrap();
        assert_eq!(s.schema_version().unwrap(), 2);
        let l = s.load_model_state("alpha").unwrap();
        assert_eq!(l.record.unwrap().events + l.events.len() as u64, 300);
        assert_holds_the_schema1_fixture(&s);
    }
    assert_eq!(schema_file(&b).trim(), "2");
    assert!(b.join("wal").is_dir());

    // And the daemon runs on it with every model.
    let bd = Daemon::builder();
    copy_dir(&b, &bd.path("state"));
    fs::write(bd.path("state").join("schema_version"), "1\n").unwrap();
    let mut d = bd.start();
    assert_eq!(d.events_of("alpha"), 300);
    assert_eq!(d.events_of("beta"), 120);
    assert_eq!(d.events_of("gamma"), 40);
    d.sigterm();
    assert!(d.wait_exit().success(), "{}", d.logs());
    assert_eq!(schema_file(&d.state_dir).trim(), "2");
}
