//! Probation across SIGKILL (issue 19's durability items): a probation's figures come back
//! exactly after a kill -9, its verdict is acted on once whenever the kill falls, and
//! `max_wait_s` keeps running across a restart.
//!
//! The stream: 40 values of accuracy alternating 0.9 and 1.0 (the baseline), one event over
//! the static threshold (a decision, then a retrain that succeeds and goes on probation), then
//! candidate values: the same alternation (no verdict before `events`), or zeros (rolled back,
//! degraded, at the first look: 8 values).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use serde_json::value::RawValue;

use crate::support::*;

const MODEL: &str = "m1";

fn event(model: &str, drift: f64, accuracy: f64) -> String {
    serde_json::json!({"model_id": model, "drift_score": drift, "accuracy": accuracy}).to_string()
}

/// `n` values alternating 0.9 and 1.0, calm drift.
fn good(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| event(MODEL, 0.1, if i % 2 == 0 { 0.9 } else { 1.0 }))
        .collect()
}

fn zeros(n: usize) -> Vec<String> {
    (0..n).map(|_| event(MODEL, 0.1, 0.0)).collect()
}

struct Hooks {
    rollback: Hook,
    escalate: Hook,
}

fn daemon(probation: &str) -> (Daemon, Hooks) {
    let b = Daemon::builder();
    let rollback = b.recording_hook("rollback", 0);
    let escalate = b.recording_hook("escalate", 0);
    let full = b.write_script("retrain", "#!/bin/sh\ncat > /dev/null\nexit 0\n");
    let body = format!(
        "[hooks]\ncooldown_s = 0\nretries = 0\n\
         full = {{ command = [{full}], timeout_s = 60 }}\n\
         rollback = {{ command = {rb}, timeout_s = 60 }}\n\
         escalate = {{ command = {esc}, timeout_s = 60 }}\n\
         [[models]]\nmatch = \"*\"\nreset_on_retrain = false\n\
         [[models.policies]]\nname = \"limits\"\nkind = \"static_threshold\"\nmax_drift = 0.5\nmin_accuracy = 0.0\n\
         [models.probation]\nmetric = \"accuracy\"\nevents = 40\nmin_events = 8\n{probation}",
        full = toml_str(full.display().to_string()),
        rb = rollback.command_toml(&[]),
        esc = escalate.command_toml(&[]),
    );
    (b.body(body).start(), Hooks { rollback, escalate })
}

/// The baseline, the decision, the retrain's success and its probation's start: the retrain.
fn on_probation(d: &Daemon) -> Value {
    d.push_events(&good(40));
    d.push_events(&[event(MODEL, 0.9, 0.95)]);
    let retrain = d.wait_job(Some(MODEL), "the retrain succeeded", |j| {
        j["action"] == "full" && j["state"] == "succeeded"
    });
    d.wait_for("the model on probation", || {
        probation_raw(d).filter(|p| job_of(p) == retrain["job_id"])
    });
    retrain
}

/// `models --json`'s probation object of the model, as the daemon printed it (the floats'
/// shortest round-trip digits: equal text is equal bits).
fn probation_raw(d: &Daemon) -> Option<String> {
    let out = d.cli_ok(&["models", "--json"]);
    let models: Vec<HashMap<String, Box<RawValue>>> =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| d.fail(format!("{e}: {out}")));
    models
        .iter()
        .find(|m| {
            m.get("model_id")
                .is_some_and(|id| id.get().trim() == format!("{MODEL:?}"))
        })
        .and_then(|m| m.get("probation"))
        .map(|p| p.get().to_owned())
        .filter(|p| p != "null")
}

fn job_of(raw: &str) -> Value {
    serde_json::from_str::<Value>(raw).unwrap()["job_id"].clone()
}

fn rollback_jobs(d: &Daemon, retrain: u64) -> Vec<Value> {
    d.history(Some(MODEL))
        .into_iter()
        .filter(|j| j["action"] == "rollback" && j["rollback_of"] == retrain)
        .collect()
}

fn retrain_probation(d: &Daemon, retrain: u64) -> Value {
    d.history(Some(MODEL))
        .into_iter()
        .find(|j| j["job_id"] == retrain)
        .map(|j| j["probation"].clone())
        .unwrap_or(Value::Null)
}

#[test]
fn a_probation_resumes_bit_for_bit_after_sigkill_and_ends_in_one_rollback() {
    let (mut d, hooks) = daemon("");
    let retrain = on_probation(&d)["job_id"].as_u64().unwrap();
    d.push_events(&good(10));
    let before = probation_raw(&d).unwrap_or_else(|| d.fail("not on probation"));
    let v: Value = serde_json::from_str(&before).unwrap();
    assert_eq!(v["candidate"]["n"], 10, "{before}");
    assert_eq!(v["baseline"]["n"], 40, "{before}");
    assert_eq!(v["warmup_left"], 0, "{before}");
    d.kill_and_restart();
    let after = probation_raw(&d).unwrap_or_else(|| d.fail("the probation did not resume"));
    assert_eq!(after, before, "the probation's figures after kill -9");
    // And it goes on from there: the zeros roll it back, once.
    d.push_events(&zeros(30));
    let job = d.wait_job(Some(MODEL), "the rollback succeeded", |j| {
        j["action"] == "rollback" && j["state"] == "succeeded"
    });
    assert_eq!(job["rollback_of"], retrain, "{job}");
    let runs = d.wait_runs(&hooks.rollback, 1);
    assert_eq!(runs[0].input["rollback_of"], retrain, "{}", runs[0].stdin);
    assert_eq!(runs[0].input["probation"]["cause"], "degraded");
    // The candidate the rollback is judged on continues the one before the kill.
    let n = runs[0].input["probation"]["candidate"]["n"]
        .as_u64()
        .unwrap();
    assert!(n > 10 && n <= 40, "{}", runs[0].stdin);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(rollback_jobs(&d, retrain).len(), 1);
    assert_eq!(hooks.rollback.runs().len(), 1);
    let p = retrain_probation(&d, retrain);
    assert_eq!(p["state"], "rolled_back", "{p}");
    assert_eq!(p["followed_by"], job["job_id"], "{p}");
}

/// The verdict's event flushed, then kill -9 before, while or after the runner acts on it
/// (different delays): after the restart the retrain has exactly one rollback (a rollback job
/// the kill interrupted is retried as the daemon retries every interrupted job: a new job
/// with `retry_of`, the same verdict), and it succeeds.
#[test]
fn a_verdict_is_acted_on_once_wherever_a_sigkill_falls() {
    for delay_ms in [0u64, 3, 15, 60, 250] {
        let (mut d, hooks) = daemon("");
        let retrain = on_probation(&d)["job_id"].as_u64().unwrap();
        // The 8th candidate value is the first look: rolled back there.
        d.push_events(&zeros(8));
        std::thread::sleep(Duration::from_millis(delay_ms));
        d.kill_and_restart();
        let done = d.wait_job(Some(MODEL), "the rollback succeeded", |j| {
            j["action"] == "rollback" && j["rollback_of"] == retrain && j["state"] == "succeeded"
        });
        // Loads more, and a second kill, find nothing left to act on.
        d.kill_and_restart();
        d.models_json();
        std::thread::sleep(Duration::from_millis(400));
        let jobs = rollback_jobs(&d, retrain);
        let why = || format!("delay {delay_ms} ms: rollback jobs {jobs:#?}\n{}", d.logs());
        let originals: Vec<&Value> = jobs.iter().filter(|j| j["retry_of"].is_null()).collect();
        assert_eq!(originals.len(), 1, "{}", why());
        // Every other one retries an interrupted one of them, and only the last succeeded.
        let ids: Vec<&Value> = jobs.iter().map(|j| &j["job_id"]).collect();
        for j in &jobs {
            if j["state"] != "succeeded" {
                assert_eq!(j["state"], "interrupted", "{}", why());
            }
            if !j["retry_of"].is_null() {
                assert!(ids.contains(&&j["retry_of"]), "{}", why());
            }
        }
        let succeeded = jobs.iter().filter(|j| j["state"] == "succeeded").count();
        assert_eq!(succeeded, 1, "{}", why());
        assert!(jobs.iter().any(|j| j["job_id"] == done["job_id"]));
        let p = retrain_probation(&d, retrain);
        assert_eq!(p["state"], "rolled_back", "delay {delay_ms} ms: {p}");
        assert_eq!(p["cause"], "degraded", "delay {delay_ms} ms: {p}");
        // The hook ran for these jobs only (a run the kill overtook may have read no stdin:
        // the daemon died before writing it).
        let runs = hooks.rollback.runs();
        assert!(!runs.is_empty(), "delay {delay_ms} ms");
        assert!(
            runs.iter()
                .all(|r| (r.input.is_null() || r.input["rollback_of"] == retrain)
                    && ids
                        .iter()
                        .any(|id| id.as_u64() == r.var("VISUTILITY_JOB_ID").parse().ok())),
            "delay {delay_ms} ms: {runs:?}"
        );
        assert!(probation_raw(&d).is_none(), "delay {delay_ms} ms");
        eprintln!(
            "delay {delay_ms} ms: {} rollback job(s), {} hook run(s)",
            jobs.len(),
            runs.len()
        );
    }
}

/// `max_wait_s` counts from the probation's start, not from the daemon's: a probation
/// started before a kill -9 is found inconclusive once its time passed, with no event after.
#[test]
fn max_wait_runs_on_across_a_sigkill() {
    let (mut d, hooks) = daemon("max_wait_s = 4\non_inconclusive = \"escalate\"\n");
    let retrain = on_probation(&d)["job_id"].as_u64().unwrap();
    let started = Instant::now();
    d.kill_and_restart();
    let p = probation_raw(&d).unwrap_or_else(|| d.fail("the probation did not resume"));
    assert_eq!(job_of(&p), retrain, "{p}");
    assert!(hooks.escalate.runs().is_empty());
    let runs = d.wait_runs(&hooks.escalate, 1);
    let waited = started.elapsed();
    assert_eq!(
        runs[0].input["escalation"]["cause"], "inconclusive",
        "{}",
        runs[0].stdin
    );
    let p = retrain_probation(&d, retrain);
    assert_eq!(p["state"], "inconclusive", "{p}");
    let (s, e) = (
        p["started_at"].as_f64().unwrap(),
        p["decided_at"].as_f64().unwrap(),
    );
    assert!(
        e - s >= 4.0 && e - s < 4.0 + 10.0,
        "decided {} s after the start",
        e - s
    );
    assert!(waited < Duration::from_secs(15), "{waited:?}");
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(hooks.escalate.runs().len(), 1, "escalated more than once");
    // A restart after the verdict does not give it again.
    d.kill_and_restart();
    d.models_json();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        hooks.escalate.runs().len(),
        1,
        "escalated again after a restart"
    );
    assert!(hooks.rollback.runs().is_empty());
}
