//! A damaged store is refused loudly, never opened as a new empty one; a damaged record of
//! one model leaves the others working and the model recoverable.
//!
//! sled starts a new, empty database, silently, when its configuration file is missing or
//! empty, or its data file is gone. Once `state_dir/schema_version` says a store was created
//! here, the daemon refuses such a store with a message naming the file and the way out (move
//! the state directory aside), and changes none of it. A write torn by a power cut at the end
//! of the observation log is not damage: what follows the last whole frame is dropped and
//! reported.
//!
//! A model whose stored state does not decode cannot load, but takes no other model with it:
//! `status` names it, a metric counts it, and `reset` or `forget` (which do not read it) make it
//! usable again.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use visutility::store::{Store, StoreError};

use crate::support::*;

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

/// A store written by a daemon (events for `m1`, flushed, stopped with SIGTERM), moved into a
/// fresh sandbox whose builder is returned, so the next start can be `spawn_only`.
fn stopped_store() -> DaemonBuilder {
    let mut d = Daemon::start_default();
    let events: Vec<String> = (0..20).map(|i| drift_event("m1", 0.1, i)).collect();
    d.push_events(&events);
    assert_eq!(d.events_of("m1"), 20);
    d.sigterm();
    let st = d.wait_exit();
    assert!(st.success(), "{st:?}\n{}", d.logs());
    assert_eq!(
        fs::read_to_string(d.state_dir.join("schema_version"))
            .unwrap()
            .trim(),
        "2"
    );
    let b = Daemon::builder();
    fs::rename(&d.state_dir, b.path("state")).unwrap();
    b
}

/// Starts on the damaged store: it must exit non-zero, say that the store is damaged, name
/// `file` and the way out, and leave every byte of the state directory as it was. Then
/// follows that way out (the state directory moved aside) and starts on an empty store.
fn assert_refused_then_fresh_start(b: DaemonBuilder, file: &Path) {
    let state = b.path("state");
    let before = snapshot(&state);
    assert!(!before.is_empty());
    let mut d = b.spawn_only();
    let status = d.wait_exit();
    let logs = d.logs();
    assert!(
        !status.success(),
        "the daemon ran on a damaged store: {status:?}\n{logs}"
    );
    assert!(
        logs.contains("damaged"),
        "the error does not say the store is damaged:\n{logs}"
    );
    assert!(
        logs.contains(&file.display().to_string()),
        "the error does not name {}:\n{logs}",
        file.display()
    );
    assert!(
        logs.contains("mv"),
        "the error does not say how to move the store aside:\n{logs}"
    );
    assert_eq!(snapshot(&state), before, "the refused store was modified");
    assert!(
        !logs.contains(": ready "),
        "the daemon said it was ready on a damaged store:\n{logs}"
    );

    // The library refuses it the same way, touching nothing either.
    match Store::open(&state, 100) {
        Err(e @ StoreError::Damaged { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&file.display().to_string()), "{text}");
        }
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("a damaged store was opened"),
    }
    assert_eq!(snapshot(&state), before, "the refused store was modified");

    // The documented way out: move the state directory aside and start again.
    let aside = state.with_file_name("state.damaged");
    fs::rename(&state, &aside).unwrap();
    d.restart();
    let models = d.models_json();
    assert_eq!(models.as_array().unwrap().len(), 0, "{models}");
    assert_eq!(d.status_json()["models"], serde_json::json!(0));
    // The new store works, and the damaged copy is kept as it was.
    d.push_events(&[plain_event("m2")]);
    assert_eq!(d.events_of("m2"), 1);
    assert_eq!(snapshot(&aside), before);
}

#[test]
fn an_emptied_sled_configuration_is_refused_not_opened_as_a_new_store() {
    let b = stopped_store();
    let conf = b.path("state").join("db").join("conf");
    assert!(fs::metadata(&conf).unwrap().len() > 0);
    fs::File::create(&conf).unwrap(); // truncates to 0 bytes
    assert_eq!(fs::metadata(&conf).unwrap().len(), 0);
    assert_refused_then_fresh_start(b, &conf);
}

#[test]
fn a_missing_sled_data_file_is_refused_not_opened_as_a_new_store() {
    let b = stopped_store();
    let data = b.path("state").join("db").join("db");
    assert!(fs::metadata(&data).unwrap().len() > 0);
    fs::remove_file(&data).unwrap();
    assert_refused_then_fresh_start(b, &data);
}

/// `visutility_store_recovered_torn_bytes` in the exposition.
fn torn_bytes_metric(d: &Daemon) -> f64 {
    let text = d.cli_ok(&["metrics"]);
    let line = text
        .lines()
        .find(|l| l.starts_with("visutility_store_recovered_torn_bytes "))
        .unwrap_or_else(|| d.fail(format!("no torn-bytes metric in:\n{text}")));
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| d.fail(format!("bad metric line {line:?}")))
}

/// Waits until `model` shows at least `n` events (a model with logged events is loaded, and
/// replays them, just after the daemon is ready), and returns what it shows.
fn events_at_least(d: &Daemon, model: &str, n: u64) -> u64 {
    d.wait_for(&format!("{model} to show {n} events"), || {
        let e = d.events_of(model);
        (e >= n).then_some(e)
    })
}

#[test]
fn a_torn_log_tail_is_recovered_up_to_the_last_whole_frame_and_reported() {
    let mut d = Daemon::start_default();
    let events: Vec<String> = (0..50).map(|i| drift_event("torn", 0.1, i)).collect();
    d.push_events(&events);
    let mut c = d.connect();
    assert_flush(&c.flush(), 0, 0);
    drop(c);
    d.kill();

    let wal = d.state_dir.join("wal");
    let mut segments: Vec<PathBuf> = fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segments.sort();
    let newest = segments
        .last()
        .unwrap_or_else(|| d.fail(format!("no log segment in {}", wal.display())))
        .clone();
    let len = fs::metadata(&newest).unwrap().len();
    assert!(
        len > 16,
        "{} holds no frame ({len} bytes)",
        newest.display()
    );
    // The first 37 bytes of a write that a power cut tore.
    let garbage: Vec<u8> = (0..37u8).map(|i| 0xa5 ^ i.wrapping_mul(29)).collect();
    fs::OpenOptions::new()
        .append(true)
        .open(&newest)
        .unwrap()
        .write_all(&garbage)
        .unwrap();

    d.restart();
    assert_eq!(events_at_least(&d, "torn", 50), 50);
    let status = d.status_json();
    assert_eq!(
        status["store"]["recovery"]["torn_bytes"],
        serde_json::json!(37),
        "{status}"
    );
    assert_eq!(torn_bytes_metric(&d), 37.0);
    assert!(
        d.log_lines()
            .iter()
            .any(|l| l.contains("torn") && l.contains("torn_bytes=37")),
        "the torn tail was not logged:\n{}",
        d.logs()
    );

    // Later writes go where the next start reads them, never after the torn bytes.
    d.push_events(&[drift_event("torn", 0.1, 50)]);
    d.kill_and_restart();
    assert_eq!(events_at_least(&d, "torn", 51), 51);
    // The fold at the first restart let the torn segment go (deleted in the flush round that
    // acknowledged the event above), so this start found nothing torn.
    assert_eq!(
        d.status_json()["store"]["recovery"]["torn_bytes"],
        serde_json::json!(0)
    );
}

/// A drift window that does not fire, so a model's state shows in its `fill`.
const WINDOW_BODY: &str = r#"
[hooks]
cooldown_s = 0
retries = 0
full = { command = ["/bin/true"], timeout_s = 60 }
fine_tune = { command = ["/bin/true"], timeout_s = 60 }

[[models]]
match = "*"

[[models.policies]]
kind = "drift_window"
window = 50
threshold = 1000000.0
"#;

/// The fill of the model's drift window, per `models --json`.
fn window_fill(d: &Daemon, model: &str) -> f64 {
    let m = d
        .model(model)
        .unwrap_or_else(|| d.fail(format!("{model} is not listed")));
    m["policies"][0]["state"]["fill"]
        .as_f64()
        .unwrap_or_else(|| d.fail(format!("no window fill in {m}")))
}

/// `visutility_store_undecodable_models` in the exposition.
fn undecodable_metric(d: &Daemon) -> f64 {
    let text = d.cli_ok(&["metrics"]);
    text.lines()
        .find_map(|l| l.strip_prefix("visutility_store_undecodable_models "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| d.fail(format!("no undecodable-models metric in:\n{text}")))
}

/// Waits until `status --json` names exactly `models` as undecodable.
fn wait_undecodable(d: &Daemon, models: &[&str]) {
    let want = serde_json::json!(models);
    d.wait_for(&format!("status to name {want} as undecodable"), || {
        (d.status_json()["store"]["undecodable_models"] == want).then_some(())
    });
}

/// A stopped daemon whose store holds `good` and `bad` (20 events each, in checkpoints; `bad`
/// paused), with the checkpoint of `bad` then cut short in sled, opened directly: its version
/// byte and the first bytes of its payload are left, so the record is there and no longer
/// decodes.
fn daemon_with_an_undecodable_model() -> Daemon {
    let mut d = Daemon::builder().body(WINDOW_BODY).start();
    for m in ["good", "bad"] {
        let events: Vec<String> = (0..20).map(|i| drift_event(m, 0.1, i)).collect();
        d.push_events(&events);
    }
    d.cli_ok(&["pause", "bad"]);
    // At the next start the models whose events are logged load and fold them into
    // checkpoints; the stop after it leaves nothing else of them.
    d.sigterm();
    assert!(d.wait_exit().success(), "{}", d.logs());
    d.restart();
    for m in ["good", "bad"] {
        assert_eq!(events_at_least(&d, m, 20), 20);
    }
    d.sigterm();
    assert!(d.wait_exit().success(), "{}", d.logs());

    let db = sled::open(d.state_dir.join("db")).unwrap();
    let models = db.open_tree("models").unwrap();
    let stored = models
        .get(b"bad")
        .unwrap()
        .unwrap_or_else(|| d.fail("bad has no checkpoint to damage"));
    assert_eq!(stored[0], 1, "not a record of version 1");
    assert!(stored.len() > 8);
    models.insert(b"bad", &stored[..4]).unwrap();
    db.flush().unwrap();
    drop((models, db));
    d
}

#[test]
fn a_model_whose_state_does_not_decode_is_named_and_a_reset_starts_it_afresh() {
    let mut d = daemon_with_an_undecodable_model();
    d.restart();
    // The other model works.
    assert_eq!(events_at_least(&d, "good", 20), 20);
    d.push_events(&[drift_event("good", 0.1, 20)]);
    assert_eq!(d.events_of("good"), 21);
    // The damaged one is named, counted and logged.
    wait_undecodable(&d, &["bad"]);
    assert_eq!(undecodable_metric(&d), 1.0);
    let table = d.cli_ok(&["status"]);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("undecodable models: bad ")),
        "the status table does not name the damaged model:\n{table}"
    );
    assert!(
        d.log_lines()
            .iter()
            .any(|l| l.contains("does not decode") && l.contains("model_id=bad")),
        "the damaged model was not logged:\n{}",
        d.logs()
    );

    // A reset does not read the damaged state: it starts the model afresh and keeps its pause.
    d.cli_ok(&["reset", "bad"]);
    wait_undecodable(&d, &[]);
    assert_eq!(undecodable_metric(&d), 0.0);
    assert!(!d.cli_ok(&["status"]).contains("undecodable"));
    assert_eq!(d.events_of("bad"), 0);
    assert_eq!(window_fill(&d, "bad"), 0.0);
    assert_eq!(d.status_json()["paused"], serde_json::json!(["bad"]));
    let events: Vec<String> = (0..3).map(|i| drift_event("bad", 0.2, i)).collect();
    d.push_events(&events);
    assert_eq!(d.events_of("bad"), 3);
    assert_eq!(window_fill(&d, "bad"), 3.0);

    // The fresh state is the stored one: it loads after a restart, nothing undecodable left.
    d.sigterm();
    assert!(d.wait_exit().success(), "{}", d.logs());
    d.restart();
    assert_eq!(events_at_least(&d, "bad", 3), 3);
    assert_eq!(window_fill(&d, "bad"), 3.0);
    assert_eq!(d.events_of("good"), 21);
    assert_eq!(
        d.status_json()["store"]["undecodable_models"],
        serde_json::json!([])
    );
}

#[test]
fn a_model_whose_state_does_not_decode_can_be_forgotten() {
    let mut d = daemon_with_an_undecodable_model();
    d.restart();
    assert_eq!(events_at_least(&d, "good", 20), 20);
    wait_undecodable(&d, &["bad"]);

    d.cli_ok(&["forget", "bad"]);
    wait_undecodable(&d, &[]);
    assert_eq!(undecodable_metric(&d), 0.0);
    assert!(d.model("bad").is_none(), "{}", d.models_json());
    assert_eq!(d.status_json()["paused"], serde_json::json!([]));
    // Its id is new again.
    let events: Vec<String> = (0..2).map(|i| drift_event("bad", 0.2, i)).collect();
    d.push_events(&events);
    assert_eq!(d.events_of("bad"), 2);
    assert_eq!(window_fill(&d, "bad"), 2.0);

    d.sigterm();
    assert!(d.wait_exit().success(), "{}", d.logs());
    d.restart();
    assert_eq!(events_at_least(&d, "bad", 2), 2);
    assert_eq!(d.events_of("good"), 20);
    assert_eq!(
        d.status_json()["store"]["undecodable_models"],
        serde_json::json!([])
    );
}
