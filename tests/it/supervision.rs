//! Actor supervision with fault injection (VISUTILITY_FAULT_INJECTION=1): a
//! model whose actor panics or errors is restarted from the store, keeps its
//! window and keeps deciding; other models carry on.

use serde_json::json;

use crate::support::*;

fn restarts(d: &Daemon, id: &str) -> Option<u64> {
    d.model(id).and_then(|m| m["restarts"].as_u64())
}

fn fault_scenario(fault: &str) {
    let b = Daemon::builder().env("VISUTILITY_FAULT_INJECTION", "1");
    let hook = b.recording_hook("hook", 0);
    let mut d = b.body(drift_window_body(&hook)).start();

    // 5 of 10 drift scores for both models, durable
    let mut c = d.connect();
    for seq in 1..=5 {
        c.send_line(&drift_event("victim", 1.0, seq));
        c.send_line(&drift_event("bystander", 1.0, seq));
    }
    assert_flush(&c.flush(), 10, 0);
    assert_eq!(
        restarts(&d, "victim"),
        Some(0),
        "restarts before any fault: {:?}",
        d.model("victim")
    );

    // the fault, on its own connection (its flush semantics are not the point)
    let mut f = d.connect();
    f.send_line(&json!({"model_id": "victim", "meta": {"fault": fault}}).to_string());
    let n = d.wait_for(
        "the victim's actor to be restarted (models --json restarts >= 1)",
        || restarts(&d, "victim").filter(|&n| n >= 1),
    );
    assert!(n >= 1);
    assert!(d.is_running(), "the daemon died with its actor");
    drop(f);

    // the bystander was not touched
    assert_eq!(
        restarts(&d, "bystander"),
        Some(0),
        "bystander restarted: {:?}",
        d.model("bystander")
    );
    assert!(
        hook.runs().is_empty(),
        "a decision fired before any window was full"
    );

    // 5 more each: both windows now hold 10 scores; the 10th fires for both
    let mut c = d.connect();
    for seq in 6..=10 {
        c.send_line(&drift_event("victim", 1.0, seq));
        c.send_line(&drift_event("bystander", 1.0, seq));
    }
    assert_flush(&c.flush(), 10, 0);
    let v = d.wait_runs_for(&hook, "victim", 1);
    let by = d.wait_runs_for(&hook, "bystander", 1);
    assert_eq!(
        v[0].seq(),
        Some(10),
        "the restarted model must keep its window and fire on its 10th score; stdin: {}",
        v[0].stdin
    );
    assert_eq!(by[0].seq(), Some(10), "bystander stdin: {}", by[0].stdin);

    // drift_score events persisted for both; the fault event may or may not count
    let ve = d.events_of("victim");
    assert!(ve == 10 || ve == 11, "victim events {ve}");
    assert_eq!(d.events_of("bystander"), 10);

    // still deciding after the restart: a later fault-free event keeps firing
    d.wait_jobs_terminal();
    let mut c = d.connect();
    c.send_line(&drift_event("victim", 1.0, 11));
    c.flush();
    let vr = d.wait_runs_for(&hook, "victim", 2);
    assert!(vr.iter().any(|r| r.seq() == Some(11)), "runs: {vr:?}");
    assert!(d.is_running());

    // and a real restart of the daemon still sees the same state
    d.kill_and_restart();
    assert_eq!(d.events_of("bystander"), 10);
}

#[test]
fn panicking_actor_is_restarted_and_keeps_its_window() {
    fault_scenario("panic");
}

#[test]
fn failing_actor_is_restarted_and_keeps_its_window() {
    fault_scenario("error");
}

#[test]
fn faults_are_ignored_without_fault_injection() {
    let b = Daemon::builder();
    let hook = b.recording_hook("hook", 0);
    let d = b.body(drift_window_body(&hook)).start();
    let mut c = d.connect();
    c.send_line(&json!({"model_id": "m1", "meta": {"fault": "panic"}}).to_string());
    c.send_line(&json!({"model_id": "m1", "meta": {"fault": "error"}}).to_string());
    assert_flush(&c.flush(), 2, 0);
    assert_eq!(d.events_of("m1"), 2);
    let m = d.model("m1").unwrap();
    assert_eq!(m["restarts"].as_u64(), Some(0), "{m}");
}
