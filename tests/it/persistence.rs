//! Durability: what a flush acknowledged survives SIGKILL; detector state and
//! jobs survive restarts.

use serde_json::json;

use crate::support::*;

/// drift_window of 10 with threshold 0.5 (fires `full`), recording hook.

#[test]
fn acknowledged_events_survive_sigkill() {
    let mut d = Daemon::start_default();
    let models = ["alpha", "beta", "team/gamma:v2"];
    let mut expected = [0u64; 3];

    for round in 0..3 {
        // several connections, interleaved models
        for conn in 0..2 {
            let mut c = d.connect();
            let mut lines = Vec::new();
            for i in 0..60 {
                let m = (i + conn + round) % 3;
                expected[m] += 1;
                lines.push(
                    json!({"model_id": models[m], "drift_score": 0.1, "value": i, "meta": {"round": round}})
                        .to_string(),
                );
            }
            c.send_lines(&lines);
            let reply = c.flush();
            assert_flush(&reply, 60, 0);
        }
        // kill right after the acknowledgement
        d.kill_and_restart();
        for (m, id) in models.iter().enumerate() {
            assert_eq!(
                d.events_of(id),
                expected[m],
                "model {id} after SIGKILL #{}",
                round + 1
            );
        }
    }

    // un-acknowledged events may or may not survive, but never more than were sent
    let before = d.events_of("alpha");
    {
        let mut c = d.connect();
        let lines: Vec<String> = (0..50).map(|_| plain_event("alpha")).collect();
        c.send_lines(&lines);
        d.kill();
    }
    d.restart();
    let after = d.events_of("alpha");
    assert!(
        after >= before && after <= before + 50,
        "events went from {before} to {after} with 50 unacknowledged"
    );

    // and the store keeps counting from there
    let mut c = d.connect();
    c.send_line(&plain_event("alpha"));
    c.flush();
    assert_eq!(d.events_of("alpha"), after + 1);
    let m = d.model("alpha").unwrap();
    assert!(
        m["last_seen"].as_f64().is_some_and(|t| t > 1.0e9),
        "last_seen: {m}"
    );
    assert_eq!(m["paused"], json!(false), "{m}");
}

/// What happens to the model between its 6th and 7th event.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pause {
    None,
    /// SIGKILL and restart.
    Restart,
    /// The model stays idle until its state is unloaded from memory.
    Unload,
}

/// Push 6 + 3 + 1 events of drift 1.0 through a drift_window of 10, with `pause` after the
/// first 6 were acknowledged. Whatever the pause, the window must fire exactly on the 10th
/// event.
fn drift_window_scenario(pause: Pause) {
    let restart = pause == Pause::Restart;
    let mut b = Daemon::builder();
    if pause == Pause::Unload {
        b = b.daemon_keys("model_idle_unload_s = 1");
    }
    let hook = b.recording_hook("hook", 0);
    let b = b.body(drift_window_body(&hook));
    let mut d = b.start();

    let mut c = d.connect();
    for seq in 1..=6 {
        c.send_line(&drift_event("m", 1.0, seq));
    }
    assert_flush(&c.flush(), 6, 0);
    drop(c);
    if restart {
        d.kill_and_restart();
        assert_eq!(d.events_of("m"), 6, "events after restart");
    }
    if pause == Pause::Unload {
        d.wait_for("the idle model to be unloaded", || {
            d.logs()
                .lines()
                .any(|l| l.contains("unloaded from memory") && l.contains("model_id=m"))
                .then_some(())
        });
        // Its view reads the stored state through, without loading it.
        let m = d.model("m").unwrap();
        assert_eq!(m["events"], json!(6), "{m}");
        assert!(
            m["policies"][0]["summary"]
                .as_str()
                .is_some_and(|s| s.starts_with("window 6/10")),
            "{m}"
        );
        assert!(
            !d.logs().contains("loaded again"),
            "a view loaded the model"
        );
    }

    let mut c = d.connect();
    for seq in 7..=9 {
        c.send_line(&drift_event("m", 1.0, seq));
    }
    assert_flush(&c.flush(), 3, 0);
    assert_eq!(d.events_of("m"), 9);
    assert_eq!(
        hook.started(),
        0,
        "the window fired before it held 10 scores"
    );
    assert!(hook.runs().is_empty());

    c.send_line(&drift_event("m", 1.0, 10));
    c.flush();
    let runs = d.wait_runs(&hook, 1);
    assert_eq!(
        runs[0].seq(),
        Some(10),
        "the first decision must come from the 10th event (window kept across {pause:?}); stdin: {}",
        runs[0].stdin
    );
    assert_eq!(runs[0].var("VISUTILITY_ACTION"), "full");
    assert_eq!(runs[0].var("VISUTILITY_POLICY"), "drift_window");
    assert_eq!(d.events_of("m"), 10);
    if pause == Pause::Unload {
        assert!(
            d.logs().contains("loaded again"),
            "the 7th event did not load the model"
        );
    }
    let jobs = d.wait_jobs_terminal();
    assert_eq!(jobs.len(), 1, "exactly one job: {jobs:?}");
    assert_eq!(hook.runs().len(), 1);
}

#[test]
fn drift_window_fires_on_the_tenth_event_without_restart() {
    drift_window_scenario(Pause::None);
}

#[test]
fn drift_window_continues_where_it_was_after_sigkill() {
    drift_window_scenario(Pause::Restart);
}

#[test]
fn drift_window_continues_where_it_was_after_the_idle_model_was_unloaded() {
    drift_window_scenario(Pause::Unload);
}

#[test]
fn jobs_survive_restart() {
    let b = Daemon::builder();
    let hook = b.recording_hook("hook", 0);
    let b = b.body(drift_window_body(&hook));
    let mut d = b.start();
    d.push_events(&[plain_event("m1")]);
    d.cli_ok(&["trigger", "m1", "full"]);
    let job = d.wait_job(Some("m1"), "triggered job succeeded", |j| {
        j["state"] == "succeeded"
    });
    d.kill_and_restart();
    let jobs = d.history(Some("m1"));
    let same = jobs.iter().find(|j| j["job_id"] == job["job_id"]);
    let Some(same) = same else {
        d.fail(format!("job {job} lost after restart; history: {jobs:?}"));
    };
    assert_eq!(same["state"], "succeeded", "{same}");
    assert_eq!(same["exit_code"].as_i64(), Some(0), "{same}");
    assert_eq!(same["action"], "full", "{same}");
    // and new jobs get new ids
    d.cli_ok(&["trigger", "m1", "full"]);
    d.wait_runs(&hook, 2);
    let jobs = d.wait_jobs_terminal();
    let ids: std::collections::BTreeSet<String> =
        jobs.iter().map(|j| j["job_id"].to_string()).collect();
    assert_eq!(
        ids.len(),
        jobs.len(),
        "job ids must be unique across restarts: {jobs:?}"
    );
    assert_eq!(jobs.len(), 2, "{jobs:?}");
}

#[test]
fn graceful_restart_keeps_everything() {
    let mut d = Daemon::start_default();
    d.push_events(
        &(0..25)
            .map(|i| drift_event("g1", 0.1, i))
            .collect::<Vec<_>>(),
    );
    d.push_events(
        &(0..5)
            .map(|i| drift_event("g2", 0.1, i))
            .collect::<Vec<_>>(),
    );
    d.sigterm();
    let st = d.wait_exit();
    assert!(st.success(), "SIGTERM exit: {st:?}");
    d.restart();
    assert_eq!(d.events_of("g1"), 25);
    assert_eq!(d.events_of("g2"), 5);
}
