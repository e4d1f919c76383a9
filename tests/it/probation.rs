//! Probation end to end (issue 19, "How it is checked"; contract section 7), with the real
//! binary and real hooks: a retrain that succeeds goes on probation, its accuracy is judged
//! against the values before the decision, and the verdict runs the rollback hook (with the
//! receipt and the figures, then the escalate hook once) or the promote hook; `fail_fast`,
//! `max_wait_s` with each `on_inconclusive`, a failing rollback hook, `visutility promote`,
//! `models`' progress, the metrics, and a `trigger`'s retrain.
//!
//! The accuracy values are a fixed level plus a deterministic noise whose mean over every five
//! values is zero (std about 0.006), so a drop from 0.93 to 0.85 is far past the first look's
//! boundary, and 0.95 is never worse.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

/// Candidate values the verdict waits for, and the first look.
const EVENTS: u64 = 50;
const MIN_EVENTS: u64 = 10;

/// The `i`th accuracy value around `level`.
fn acc(level: f64, i: u64) -> f64 {
    level + 0.004 * ((i * 7) % 5) as f64 - 0.008
}

/// An event with an accuracy around `level` and a quiet drift score.
fn acc_event(model: &str, level: f64, i: u64) -> String {
    json!({"model_id": model, "accuracy": acc(level, i), "drift_score": 0.1}).to_string()
}

/// An event whose drift score makes the "limits" policy fire (its accuracy around `level`).
fn firing_event(model: &str, level: f64, i: u64) -> String {
    json!({"model_id": model, "accuracy": acc(level, i), "drift_score": 0.9}).to_string()
}

/// `n` accuracy events around `level`, numbered from `from`, pushed in batches of 10 (a flush
/// after each).
fn push_acc(d: &Daemon, model: &str, level: f64, from: u64, n: u64) {
    let lines: Vec<String> = (from..from + n)
        .map(|i| acc_event(model, level, i))
        .collect();
    for batch in lines.chunks(10) {
        d.push_events(batch);
    }
}

/// A retrain hook that writes a receipt naming its job.
fn receipt_hook(b: &DaemonBuilder) -> String {
    let script = b.write_script(
        "retrain",
        "#!/bin/sh\nset -e\ncat > /dev/null\nprintf '{\"version\": \"v%s\", \"previous\": \"v0\"}' \"$VISUTILITY_JOB_ID\" > \"$VISUTILITY_RECEIPT\"\nexit 0\n",
    );
    toml_str(script.display().to_string())
}

/// The hooks this file's daemons may have.
struct Hooks {
    full: String,
    rollback: Option<Hook>,
    promote: Option<Hook>,
    escalate: Hook,
}

impl Hooks {
    fn new(b: &DaemonBuilder) -> Hooks {
        Hooks {
            full: receipt_hook(b),
            rollback: Some(b.recording_hook("rollback", 0)),
            promote: Some(b.recording_hook("promote", 0)),
            escalate: b.recording_hook("escalate", 0),
        }
    }

    fn rollback(&self) -> &Hook {
        self.rollback.as_ref().unwrap()
    }

    fn promote(&self) -> &Hook {
        self.promote.as_ref().unwrap()
    }

    /// The config: no cooldown (so only probation holds a decision), `hooks_extra` in
    /// `[hooks]`, a "limits" policy asking for a full retrain at a drift score above 0.5 (never
    /// on accuracy), `rule_extra` in the rule, and `probation` keys after the common ones.
    fn config(&self, hooks_extra: &str, rule_extra: &str, probation: &str) -> String {
        let hook = |name: &str, h: &Option<Hook>| {
            h.as_ref()
                .map(|h| {
                    format!(
                        "{name} = {{ command = {}, timeout_s = 60 }}\n",
                        h.command_toml(&[])
                    )
                })
                .unwrap_or_default()
        };
        format!(
            "[hooks]\ncooldown_s = 0\nretries = 0\n{hooks_extra}\n\
             full = {{ command = [{full}], timeout_s = 60 }}\n{rollback}{promote}\
             escalate = {{ command = {esc}, timeout_s = 60 }}\n\
             [[models]]\nmatch = \"*\"\n{rule_extra}\n\
             [[models.policies]]\nname = \"limits\"\nkind = \"static_threshold\"\nmax_drift = 0.5\nmin_accuracy = 0.0\n\
             [models.probation]\nmetric = \"accuracy\"\nevents = {EVENTS}\nmin_events = {MIN_EVENTS}\n{probation}\n",
            full = self.full,
            rollback = hook("rollback", &self.rollback),
            promote = hook("promote", &self.promote),
            esc = self.escalate.command_toml(&[]),
        )
    }
}

/// `EVENTS` values around 0.93, the last one with a drift score that makes the policy decide;
/// waits until the retrain succeeded and (unless `max_wait_s` may end it first) the model is on
/// probation. Returns the retrain's job id.
fn decide_and_retrain(d: &Daemon, model: &str, wait_probation: bool) -> u64 {
    push_acc(d, model, 0.93, 0, EVENTS - 1);
    d.push_events(&[firing_event(model, 0.93, EVENTS - 1)]);
    let job = d.wait_job(Some(model), "the retrain succeeded", |j| {
        j["action"] == "full" && j["state"] == "succeeded"
    });
    let job_id = job["job_id"].as_u64().unwrap();
    assert_eq!(
        job["receipt"],
        json!({"version": format!("v{job_id}"), "previous": "v0"}),
        "{job}"
    );
    if wait_probation {
        let p = on_probation(d, model);
        assert_eq!(p["job_id"], job_id, "{p}");
    }
    job_id
}

/// The model's `probation` in `models --json`, once it shows one.
#[track_caller]
fn on_probation(d: &Daemon, model: &str) -> Value {
    d.wait_for(&format!("{model} on probation in models --json"), || {
        d.model(model)
            .and_then(|m| m.get("probation").cloned())
            .filter(Value::is_object)
    })
}

/// The retrain job `job_id` in `history --json`.
fn job_of(d: &Daemon, model: &str, job_id: u64) -> Value {
    d.history(Some(model))
        .into_iter()
        .find(|j| j["job_id"] == job_id)
        .unwrap_or_else(|| d.fail(format!("job {job_id} not in the history")))
}

/// Waits until retrain `job_id`'s probation is in `state`; returns the job.
#[track_caller]
fn wait_probation_state(d: &Daemon, model: &str, job_id: u64, state: &str) -> Value {
    d.wait_job(
        Some(model),
        &format!("retrain {job_id}'s probation {state}"),
        |j| j["job_id"] == job_id && j["probation"]["state"] == state,
    )
}

/// The jobs of `model` with `action`.
fn jobs_of(d: &Daemon, model: &str, action: &str) -> Vec<Value> {
    d.history(Some(model))
        .into_iter()
        .filter(|j| j["action"] == action)
        .collect()
}

/// Exactly one verdict's worth of rollback: one rollback hook run and job, one escalation,
/// and the metric counting one.
#[track_caller]
fn assert_rolled_back_once(d: &Daemon, h: &Hooks, model: &str) {
    assert_eq!(h.rollback().runs().len(), 1);
    assert_eq!(jobs_of(d, model, "rollback").len(), 1);
    assert_eq!(h.escalate.runs().len(), 1);
    assert_eq!(
        metric(d, "visutility_probation_total{outcome=\"rolled_back\"}"),
        Some(1.0)
    );
}

/// A sample's n, mean and std as the hooks and `history --json` show it.
#[track_caller]
fn assert_sample(s: &Value, n: u64, mean: f64, what: &str) {
    assert_eq!(s["n"].as_u64(), Some(n), "{what}: {s}");
    let m = s["mean"].as_f64().unwrap();
    assert!(
        (m - mean).abs() < 1e-3,
        "{what} mean {m}, expected {mean}: {s}"
    );
    let std = s["std"].as_f64().unwrap();
    assert!(std > 0.001 && std < 0.01, "{what} std {std}: {s}");
}

/// The value of the sample `name` (with its labels, as printed) in `visutility metrics`.
fn metric(d: &Daemon, name: &str) -> Option<f64> {
    let text = d.cli_ok(&["metrics"]);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn settle() {
    std::thread::sleep(Duration::from_millis(700));
}

#[test]
fn a_degraded_retrain_is_rolled_back_once_with_its_receipt_and_figures_then_escalated() {
    let b = Daemon::builder();
    let h = Hooks::new(&b);
    let d = b.body(h.config("", "", "fail_fast = false")).start();

    let retrain = decide_and_retrain(&d, "m1", true);
    let p = on_probation(&d, "m1");
    assert_sample(&p["baseline"], EVENTS, 0.93, "baseline in models");
    assert_eq!(p["candidate"]["n"], 0, "{p}");
    assert_eq!(metric(&d, "visutility_models_on_probation"), Some(1.0));

    // Accuracy drops to 0.85: the first look (MIN_EVENTS values) rolls back; more values
    // after it change nothing.
    push_acc(&d, "m1", 0.85, 0, 40);
    let runs = d.wait_runs(h.rollback(), 1);
    let run = &runs[0];
    assert_eq!(run.var("VISUTILITY_ACTION"), "rollback");
    assert_eq!(run.var("VISUTILITY_POLICY"), "probation");
    let input = &run.input;
    assert_eq!(input["rollback_of"], retrain, "{}", run.stdin);
    assert_eq!(
        input["receipt"],
        json!({"version": format!("v{retrain}"), "previous": "v0"}),
        "{}",
        run.stdin
    );
    let fig = &input["probation"];
    assert_eq!(fig["cause"], "degraded", "{fig}");
    assert_eq!(fig["metric"], "accuracy", "{fig}");
    assert_eq!(fig["tolerance"], 0.0, "{fig}");
    assert_sample(&fig["baseline"], EVENTS, 0.93, "baseline");
    assert_sample(&fig["candidate"], MIN_EVENTS, 0.85, "candidate");
    let (z, zt) = (
        fig["z"].as_f64().unwrap(),
        fig["z_threshold"].as_f64().unwrap(),
    );
    assert!(z > zt && zt > 1.645, "z {z} against {zt}: {fig}");

    let rollback = d.wait_job(Some("m1"), "the rollback succeeded", |j| {
        j["action"] == "rollback" && j["state"] == "succeeded"
    });
    assert_eq!(rollback["rollback_of"], retrain, "{rollback}");
    let r = wait_probation_state(&d, "m1", retrain, "rolled_back");
    let rp = &r["probation"];
    assert_eq!(rp["cause"], "degraded", "{r}");
    assert_eq!(rp["metric"], "accuracy", "{r}");
    assert_eq!(rp["followed_by"], rollback["job_id"], "{r}");
    assert_eq!(rp["candidate"]["n"], MIN_EVENTS, "{r}");
    assert_eq!(rp["baseline"]["n"], EVENTS, "{r}");
    assert_eq!(rp["z"], fig["z"], "{r}");
    assert!(rp["decided_at"].as_f64().unwrap() >= rp["started_at"].as_f64().unwrap());

    let esc = d.wait_runs(&h.escalate, 1);
    assert_eq!(
        esc[0].input["escalation"]["cause"], "rollback",
        "{}",
        esc[0].stdin
    );

    // More bad values and a wait: still one rollback, one escalation, no promote.
    push_acc(&d, "m1", 0.85, 40, 30);
    settle();
    assert_eq!(h.rollback().runs().len(), 1);
    assert_eq!(jobs_of(&d, "m1", "rollback").len(), 1);
    assert_eq!(h.escalate.runs().len(), 1, "escalated more than once");
    assert!(h.promote().runs().is_empty());
    assert_eq!(jobs_of(&d, "m1", "full").len(), 1);
    assert!(d.model("m1").unwrap()["probation"].is_null());

    // The views: the history's note, explain's entry, the metrics.
    let table = d.cli_ok(&["history", "m1"]);
    assert!(
        table.contains("probation: rolled_back (degraded)"),
        "{table}"
    );
    let explain = d.cli_json(&["explain", "m1"]);
    let entry = explain
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["policy"] == "probation")
        .unwrap_or_else(|| d.fail(format!("no probation entry in explain: {explain}")));
    assert_eq!(entry["action"], "rollback", "{entry}");
    assert_eq!(
        entry["reason"],
        format!("probation of retrain job {retrain}: rolled_back (degraded)"),
        "{entry}"
    );
    assert_eq!(
        metric(&d, "visutility_probation_total{outcome=\"rolled_back\"}"),
        Some(1.0)
    );
    assert_eq!(metric(&d, "visutility_models_on_probation"), Some(0.0));
}

#[test]
fn a_retrain_that_did_no_harm_is_promoted_and_the_promote_hook_runs_once() {
    let b = Daemon::builder();
    let h = Hooks::new(&b);
    let d = b.body(h.config("", "", "")).start();

    let retrain = decide_and_retrain(&d, "m1", true);
    // EVENTS - 1 values at 0.95: not yet.
    push_acc(&d, "m1", 0.95, 0, EVENTS - 1);
    settle();
    assert!(h.promote().runs().is_empty(), "promoted early");
    assert_eq!(on_probation(&d, "m1")["candidate"]["n"], EVENTS - 1);
    // The last value completes the sample.
    push_acc(&d, "m1", 0.95, EVENTS - 1, 1);
    let runs = d.wait_runs(h.promote(), 1);
    let run = &runs[0];
    assert_eq!(run.var("VISUTILITY_ACTION"), "promote");
    assert_eq!(run.input["promote_of"], retrain, "{}", run.stdin);
    assert_eq!(run.input["receipt"]["version"], format!("v{retrain}"));
    let fig = &run.input["probation"];
    assert_sample(&fig["baseline"], EVENTS, 0.93, "baseline");
    assert_sample(&fig["candidate"], EVENTS, 0.95, "candidate");
    assert!(fig["z"].as_f64().unwrap() < 0.0, "{fig}");

    let promote = d.wait_job(Some("m1"), "the promote job succeeded", |j| {
        j["action"] == "promote" && j["state"] == "succeeded"
    });
    let r = wait_probation_state(&d, "m1", retrain, "promoted");
    assert_eq!(r["probation"]["followed_by"], promote["job_id"], "{r}");
    assert_eq!(r["probation"]["candidate"]["n"], EVENTS, "{r}");

    // Worse values after the verdict judge nothing any more.
    push_acc(&d, "m1", 0.80, 0, 30);
    settle();
    assert_eq!(h.promote().runs().len(), 1);
    assert!(
        h.rollback().runs().is_empty(),
        "rolled back after a promotion"
    );
    assert!(jobs_of(&d, "m1", "rollback").is_empty());
    assert!(h.escalate.runs().is_empty());
    assert_eq!(
        metric(&d, "visutility_probation_total{outcome=\"promoted\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&d, "visutility_probation_total{outcome=\"rolled_back\"}"),
        Some(0.0)
    );
}

#[test]
fn with_fail_fast_a_policy_firing_during_probation_rolls_back_and_starts_no_retrain() {
    let b = Daemon::builder();
    let h = Hooks::new(&b);
    let d = b.body(h.config("", "", "fail_fast = true")).start();

    let retrain = decide_and_retrain(&d, "m1", true);
    push_acc(&d, "m1", 0.93, 0, 5);
    d.push_events(&[firing_event("m1", 0.93, 5)]);
    let runs = d.wait_runs(h.rollback(), 1);
    let fig = &runs[0].input["probation"];
    assert_eq!(runs[0].input["rollback_of"], retrain, "{}", runs[0].stdin);
    assert_eq!(fig["cause"], "policy_fired", "{fig}");
    // The firing event ended the probation before its accuracy counted.
    assert_eq!(fig["candidate"]["n"], 5, "{fig}");
    let r = wait_probation_state(&d, "m1", retrain, "rolled_back");
    assert_eq!(r["probation"]["cause"], "policy_fired", "{r}");
    d.wait_job(Some("m1"), "the rollback succeeded", |j| {
        j["action"] == "rollback" && j["state"] == "succeeded"
    });
    let esc = d.wait_runs(&h.escalate, 1);
    assert_eq!(esc[0].input["escalation"]["cause"], "rollback");
    settle();
    // The decision that rolled back started no retrain of its own.
    assert_eq!(jobs_of(&d, "m1", "full").len(), 1);
    assert_eq!(h.rollback().runs().len(), 1);
    assert_eq!(h.escalate.runs().len(), 1);
}

/// A probation that runs out of `max_wait_s` with fewer values than `min_events`.
fn inconclusive(on_inconclusive: &str) -> (Daemon, Hooks, u64) {
    let b = Daemon::builder();
    let h = Hooks::new(&b);
    let d = b
        .body(h.config(
            "",
            "",
            &format!("max_wait_s = 1\non_inconclusive = \"{on_inconclusive}\""),
        ))
        .start();
    let retrain = decide_and_retrain(&d, "m1", false);
    push_acc(&d, "m1", 0.93, 0, 3);
    (d, h, retrain)
}

#[test]
fn max_wait_with_too_few_values_keeps_the_retrain_when_on_inconclusive_is_keep() {
    let (d, h, retrain) = inconclusive("keep");
    let r = wait_probation_state(&d, "m1", retrain, "inconclusive");
    assert_eq!(r["probation"]["cause"], "inconclusive", "{r}");
    assert!(r["probation"]["candidate"]["n"].as_u64().unwrap() < MIN_EVENTS);
    settle();
    assert!(jobs_of(&d, "m1", "rollback").is_empty());
    assert!(h.rollback().runs().is_empty());
    assert!(h.escalate.runs().is_empty());
    assert!(h.promote().runs().is_empty());
    assert!(d.model("m1").unwrap()["probation"].is_null());
    assert_eq!(
        metric(&d, "visutility_probation_total{outcome=\"inconclusive\"}"),
        Some(1.0)
    );
}

#[test]
fn max_wait_with_too_few_values_rolls_back_when_on_inconclusive_is_rollback() {
    let (d, h, retrain) = inconclusive("rollback");
    let runs = d.wait_runs(h.rollback(), 1);
    assert_eq!(runs[0].input["rollback_of"], retrain, "{}", runs[0].stdin);
    assert_eq!(runs[0].input["probation"]["cause"], "inconclusive");
    let r = wait_probation_state(&d, "m1", retrain, "rolled_back");
    assert_eq!(r["probation"]["cause"], "inconclusive", "{r}");
    let esc = d.wait_runs(&h.escalate, 1);
    assert_eq!(esc[0].input["escalation"]["cause"], "rollback");
    settle();
    assert_eq!(jobs_of(&d, "m1", "rollback").len(), 1);
    assert_eq!(h.escalate.runs().len(), 1);
}

#[test]
fn max_wait_with_too_few_values_escalates_when_on_inconclusive_is_escalate() {
    let (d, h, retrain) = inconclusive("escalate");
    let esc = d.wait_runs(&h.escalate, 1);
    assert_eq!(
        esc[0].input["escalation"]["cause"], "inconclusive",
        "{}",
        esc[0].stdin
    );
    let r = wait_probation_state(&d, "m1", retrain, "inconclusive");
    assert_eq!(r["probation"]["cause"], "inconclusive", "{r}");
    settle();
    assert_eq!(h.escalate.runs().len(), 1);
    assert!(jobs_of(&d, "m1", "rollback").is_empty());
    assert!(h.rollback().runs().is_empty());
}

#[test]
fn a_failing_rollback_hook_is_retried_then_escalated_once() {
    let b = Daemon::builder();
    let mut h = Hooks::new(&b);
    h.rollback = Some(b.recording_hook("rollback-failing", 1));
    let d = b
        .body(
            h.config("", "", "")
                .replace("retries = 0", "retries = 2\nretry_backoff_s = 0"),
        )
        .start();
    let retrain = decide_and_retrain(&d, "m1", true);
    push_acc(&d, "m1", 0.85, 0, MIN_EVENTS);
    let job = d.wait_job(Some("m1"), "the rollback failed", |j| {
        j["action"] == "rollback" && j["state"] == "failed"
    });
    assert_eq!(
        job["attempts"].as_u64(),
        Some(3),
        "1 attempt + 2 retries: {job}"
    );
    assert_eq!(job["rollback_of"], retrain, "{job}");
    let runs = h.rollback().runs();
    assert_eq!(runs.len(), 3);
    for (n, run) in (1..).zip(&runs) {
        assert_eq!(run.var("VISUTILITY_ATTEMPT"), n.to_string());
        assert_eq!(run.input["rollback_of"], retrain);
    }
    let esc = d.wait_runs(&h.escalate, 1);
    assert_eq!(
        esc[0].input["escalation"]["cause"], "rollback",
        "{}",
        esc[0].stdin
    );
    assert!(
        esc[0].input["reason"].as_str().unwrap().contains("failed"),
        "{}",
        esc[0].stdin
    );
    settle();
    assert_eq!(h.escalate.runs().len(), 1, "escalated more than once");
    assert_eq!(h.rollback().runs().len(), 3);
    assert_eq!(jobs_of(&d, "m1", "rollback").len(), 1);
}

#[test]
fn promote_ends_a_probation_now_and_models_shows_its_progress() {
    let b = Daemon::builder();
    let h = Hooks::new(&b);
    let d = b
        .body(h.config("", "warmup_events = 3", "fail_fast = false"))
        .start();

    // Refused before any retrain.
    push_acc(&d, "m2", 0.9, 0, 1);
    let o = d.cli(&["promote", "m2"]);
    assert_eq!(o.status.code(), Some(1), "{}", out_text(&o));
    let text = combined(&o);
    assert_eq!(text.trim().lines().count(), 1, "{}", out_text(&o));
    assert!(
        text.contains("nothing to promote for model m2: it is not on probation"),
        "{}",
        out_text(&o)
    );

    let retrain = decide_and_retrain(&d, "m1", true);
    let p = on_probation(&d, "m1");
    assert_eq!(p["warmup_left"], 3, "{p}");
    assert_eq!(p["events"], EVENTS, "{p}");
    assert_eq!(p["metric"], "accuracy", "{p}");
    assert!(p["deadline"].as_f64().unwrap() > p["started_at"].as_f64().unwrap());
    // Three values of warm-up, then the candidate grows.
    push_acc(&d, "m1", 0.93, 0, 10);
    let p = on_probation(&d, "m1");
    assert_eq!(p["warmup_left"], 0, "{p}");
    assert_eq!(p["candidate"]["n"], 7, "{p}");
    assert!(p["z"].is_f64() && p["z_threshold"].is_f64(), "{p}");
    push_acc(&d, "m1", 0.93, 10, 5);
    let p = on_probation(&d, "m1");
    assert_eq!(p["candidate"]["n"], 12, "{p}");
    assert!(p["z"].as_f64().unwrap().abs() < 1.0, "{p}");
    let table = d.cli_ok(&["models"]);
    assert!(
        table.contains(&format!(
            "on probation: retrain job {retrain}, accuracy 12/{EVENTS} values"
        )),
        "{table}"
    );
    assert_eq!(metric(&d, "visutility_models_on_probation"), Some(1.0));

    // Without fail_fast, a policy firing during probation neither retrains nor ends it.
    d.push_events(&[firing_event("m1", 0.93, 15)]);
    let p = on_probation(&d, "m1");
    assert_eq!(p["candidate"]["n"], 13, "{p}");
    settle();
    assert_eq!(jobs_of(&d, "m1", "full").len(), 1);

    let out = d.cli_ok(&["promote", "m1"]);
    assert!(
        out.contains(&format!("m1: retrain job {retrain} promoted")),
        "{out}"
    );
    let runs = d.wait_runs(h.promote(), 1);
    assert_eq!(runs[0].var("VISUTILITY_ACTION"), "promote");
    assert_eq!(runs[0].input["promote_of"], retrain, "{}", runs[0].stdin);
    let fig = &runs[0].input["probation"];
    assert_eq!(fig["cause"], "manual", "{fig}");
    assert_eq!(fig["metric"], "accuracy", "{fig}");
    assert_sample(&fig["baseline"], EVENTS, 0.93, "baseline");
    // The runner does not know the candidate the model judged: none, rather than an empty one.
    assert!(fig.get("candidate").is_none(), "{fig}");
    let r = wait_probation_state(&d, "m1", retrain, "promoted");
    assert_eq!(r["probation"]["cause"], "manual", "{r}");
    let promote = jobs_of(&d, "m1", "promote");
    assert_eq!(promote.len(), 1);
    assert_eq!(r["probation"]["followed_by"], promote[0]["job_id"], "{r}");
    d.wait_for("m1 off probation in models --json", || {
        d.model("m1").unwrap()["probation"].is_null().then_some(())
    });
    assert_eq!(metric(&d, "visutility_models_on_probation"), Some(0.0));
    assert_eq!(
        metric(&d, "visutility_probation_total{outcome=\"promoted\"}"),
        Some(1.0)
    );

    // Not on probation any more: refused in one line, and the model judges nothing.
    let o = d.cli(&["promote", "m1"]);
    assert_eq!(o.status.code(), Some(1), "{}", out_text(&o));
    let text = combined(&o);
    assert_eq!(text.trim().lines().count(), 1, "{}", out_text(&o));
    assert!(
        text.contains("nothing to promote for model m1: it is not on probation"),
        "{}",
        out_text(&o)
    );
    push_acc(&d, "m1", 0.80, 0, 40);
    settle();
    assert!(
        h.rollback().runs().is_empty(),
        "rolled back after a promotion"
    );
    assert_eq!(h.promote().runs().len(), 1);
}

#[test]
fn a_triggered_retrain_goes_on_probation_too() {
    let b = Daemon::builder();
    let h = Hooks::new(&b);
    let d = b.body(h.config("", "", "")).start();
    push_acc(&d, "m1", 0.93, 0, EVENTS);
    d.cli_ok(&["trigger", "m1", "full"]);
    let job = d.wait_job(Some("m1"), "the triggered retrain succeeded", |j| {
        j["action"] == "full" && j["state"] == "succeeded"
    });
    let retrain = job["job_id"].as_u64().unwrap();
    let p = on_probation(&d, "m1");
    assert_eq!(p["job_id"], retrain, "{p}");
    // The model's own last EVENTS values are the baseline.
    assert_sample(&p["baseline"], EVENTS, 0.93, "baseline");
    assert_eq!(
        job_of(&d, "m1", retrain)["probation"]["state"],
        "on_probation"
    );
    push_acc(&d, "m1", 0.85, 0, MIN_EVENTS);
    let runs = d.wait_runs(h.rollback(), 1);
    assert_eq!(runs[0].input["rollback_of"], retrain, "{}", runs[0].stdin);
    assert_eq!(runs[0].input["probation"]["cause"], "degraded");
    assert_eq!(runs[0].input["receipt"]["version"], format!("v{retrain}"));
    wait_probation_state(&d, "m1", retrain, "rolled_back");
    d.wait_runs(&h.escalate, 1);
}

#[test]
fn without_a_rollback_hook_a_degraded_retrain_is_recorded_skipped_and_escalated_once() {
    let b = Daemon::builder();
    let mut h = Hooks::new(&b);
    h.rollback = None;
    let d = b.body(h.config("", "", "")).start();
    let retrain = decide_and_retrain(&d, "m1", true);
    push_acc(&d, "m1", 0.85, 0, MIN_EVENTS);
    let job = d.wait_job(Some("m1"), "the rollback recorded", |j| {
        j["action"] == "rollback"
    });
    assert_eq!(job["state"], "skipped", "{job}");
    assert_eq!(job["rollback_of"], retrain, "{job}");
    let r = wait_probation_state(&d, "m1", retrain, "rolled_back");
    assert_eq!(r["probation"]["cause"], "degraded", "{r}");
    assert_eq!(r["probation"]["followed_by"], job["job_id"], "{r}");
    let esc = d.wait_runs(&h.escalate, 1);
    assert_eq!(
        esc[0].input["escalation"]["cause"], "rollback",
        "{}",
        esc[0].stdin
    );
    push_acc(&d, "m1", 0.85, MIN_EVENTS, 20);
    settle();
    assert_eq!(jobs_of(&d, "m1", "rollback").len(), 1);
    assert_eq!(h.escalate.runs().len(), 1);
}

#[test]
fn an_operators_rollback_during_probation_ends_it_rolled_back_manually() {
    let b = Daemon::builder();
    let h = Hooks::new(&b);
    let d = b.body(h.config("", "", "")).start();
    let retrain = decide_and_retrain(&d, "m1", true);
    push_acc(&d, "m1", 0.93, 0, 5);
    let out = d.cli_ok(&["rollback", "m1"]);
    assert!(out.contains("rollback for m1"), "{out}");
    let runs = d.wait_runs(h.rollback(), 1);
    let input = &runs[0].input;
    assert_eq!(input["rollback_of"], retrain, "{}", runs[0].stdin);
    assert_eq!(input["probation"]["cause"], "manual", "{}", runs[0].stdin);
    assert_eq!(
        input["probation"]["metric"], "accuracy",
        "{}",
        runs[0].stdin
    );
    assert_eq!(
        input["probation"]["baseline"]["n"], EVENTS,
        "{}",
        runs[0].stdin
    );
    let rollback = d.wait_job(Some("m1"), "the rollback succeeded", |j| {
        j["action"] == "rollback" && j["state"] == "succeeded"
    });
    let r = wait_probation_state(&d, "m1", retrain, "rolled_back");
    assert_eq!(r["probation"]["cause"], "manual", "{r}");
    assert_eq!(r["probation"]["followed_by"], rollback["job_id"], "{r}");
    d.wait_for("m1 off probation in models --json", || {
        d.model("m1").unwrap()["probation"].is_null().then_some(())
    });
    d.wait_runs(&h.escalate, 1);
    let explain = d.cli_json(&["explain", "m1"]);
    let entry = explain
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["policy"] == "probation")
        .unwrap_or_else(|| d.fail(format!("no probation entry in explain: {explain}")));
    assert_eq!(entry["action"], "rollback", "{entry}");
    assert_eq!(
        entry["reason"],
        format!("probation of retrain job {retrain}: rolled_back (manual)"),
        "{entry}"
    );
    assert_eq!(entry["job_id"], rollback["job_id"], "{entry}");
    // The model's probation ended with it: worse values roll back nothing more.
    push_acc(&d, "m1", 0.80, 0, 30);
    settle();
    assert_rolled_back_once(&d, &h, "m1");
}

#[test]
fn a_second_retrain_supersedes_the_probation_of_the_first() {
    let b = Daemon::builder();
    let h = Hooks::new(&b);
    let d = b.body(h.config("", "", "")).start();
    let first = decide_and_retrain(&d, "m1", true);
    push_acc(&d, "m1", 0.93, 0, 5);
    d.cli_ok(&["trigger", "m1", "full"]);
    let second = d.wait_job(Some("m1"), "the second retrain succeeded", |j| {
        j["action"] == "full" && j["state"] == "succeeded" && j["job_id"] != first
    })["job_id"]
        .as_u64()
        .unwrap();
    wait_probation_state(&d, "m1", first, "superseded");
    d.wait_for("the second retrain on probation", || {
        let p = d.model("m1")?.get("probation").cloned()?;
        (p["job_id"] == second).then_some(())
    });
    assert_eq!(
        job_of(&d, "m1", second)["probation"]["state"],
        "on_probation"
    );
    assert_eq!(
        metric(&d, "visutility_probation_total{outcome=\"superseded\"}"),
        Some(1.0)
    );
    assert_eq!(metric(&d, "visutility_models_on_probation"), Some(1.0));
    // The verdict is the second's.
    push_acc(&d, "m1", 0.85, 0, MIN_EVENTS);
    let runs = d.wait_runs(h.rollback(), 1);
    assert_eq!(runs[0].input["rollback_of"], second, "{}", runs[0].stdin);
    wait_probation_state(&d, "m1", second, "rolled_back");
    settle();
    assert_eq!(h.rollback().runs().len(), 1);
    assert_eq!(job_of(&d, "m1", first)["probation"]["state"], "superseded");
}

#[test]
fn the_last_promoted_baseline_is_the_first_values_then_the_promoted_candidate() {
    let b = Daemon::builder();
    let h = Hooks::new(&b);
    let d = b
        .body(h.config("", "", "baseline = \"last_promoted\""))
        .start();
    // Before any promotion: the model's first EVENTS values, not the last ones.
    push_acc(&d, "m1", 0.93, 0, EVENTS);
    push_acc(&d, "m1", 0.90, 0, 20);
    d.cli_ok(&["trigger", "m1", "full"]);
    let p = on_probation(&d, "m1");
    assert_sample(&p["baseline"], EVENTS, 0.93, "first values");
    push_acc(&d, "m1", 0.95, 0, EVENTS);
    let r = d.wait_runs(h.promote(), 1);
    let first = r[0].input["promote_of"].as_u64().unwrap();
    wait_probation_state(&d, "m1", first, "promoted");
    // After it: the promoted candidate, whatever came since.
    push_acc(&d, "m1", 0.90, 0, EVENTS);
    d.cli_ok(&["trigger", "m1", "full"]);
    let p = d.wait_for("the second retrain on probation", || {
        let p = d.model("m1")?.get("probation").cloned()?;
        (p["job_id"] != first && p.is_object()).then_some(p)
    });
    assert_sample(&p["baseline"], EVENTS, 0.95, "the promoted candidate");
}

#[test]
fn a_retrain_with_no_baseline_is_inconclusive_at_once_and_not_escalated() {
    let b = Daemon::builder();
    let h = Hooks::new(&b);
    let d = b
        .body(h.config("", "", "on_inconclusive = \"escalate\""))
        .start();
    d.cli_ok(&["trigger", "--create", "m1", "full"]);
    let job = d.wait_job(Some("m1"), "the retrain succeeded", |j| {
        j["action"] == "full" && j["state"] == "succeeded"
    });
    let retrain = job["job_id"].as_u64().unwrap();
    let r = wait_probation_state(&d, "m1", retrain, "inconclusive");
    assert!(r["probation"]["cause"].is_null(), "{r}");
    push_acc(&d, "m1", 0.5, 0, 20);
    settle();
    assert!(d.model("m1").unwrap()["probation"].is_null());
    assert!(h.escalate.runs().is_empty());
    assert!(h.rollback().runs().is_empty() && h.promote().runs().is_empty());
    assert_eq!(
        metric(&d, "visutility_probation_total{outcome=\"inconclusive\"}"),
        Some(1.0)
    );
}

#[test]
fn in_a_dry_run_a_rollback_verdict_is_recorded_skipped_and_nothing_runs() {
    let b = Daemon::builder();
    let h = Hooks::new(&b);
    let body = h.config("", "", "");
    let d = b.body(body.clone()).start();
    let retrain = decide_and_retrain(&d, "m1", true);
    // dry_run from a reload, with the probation running.
    d.write_config(&ConfigParts {
        daemon_extra: String::new(),
        body: body.replace("[hooks]\n", "[hooks]\ndry_run = true\n"),
    });
    d.sighup();
    d.wait_log_count("the reload", 1, |l| l.contains("config reloaded"));
    settle();
    assert_eq!(on_probation(&d, "m1")["job_id"], retrain);
    push_acc(&d, "m1", 0.85, 0, MIN_EVENTS);
    let job = d.wait_job(Some("m1"), "the rollback recorded", |j| {
        j["action"] == "rollback"
    });
    assert_eq!(job["state"], "skipped", "{job}");
    assert!(job["note"].as_str().unwrap().contains("dry run"), "{job}");
    wait_probation_state(&d, "m1", retrain, "rolled_back");
    d.wait_job(Some("m1"), "the escalation recorded", |j| {
        j["action"] == "escalate"
    });
    settle();
    assert!(h.rollback().runs().is_empty());
    assert!(h.escalate.runs().is_empty());
    assert_eq!(jobs_of(&d, "m1", "rollback").len(), 1);
    assert_eq!(jobs_of(&d, "m1", "escalate").len(), 1);
}

/// A model's state leaves memory when idle and comes back at its next event: the candidate
/// goes on where it was, and a load after the verdict acts on nothing again.
#[test]
fn a_probation_goes_on_after_its_model_left_memory_and_its_verdict_is_acted_on_once() {
    let b = Daemon::builder();
    let h = Hooks::new(&b);
    let d = b
        .daemon_keys("model_idle_unload_s = 1")
        .body(h.config("", "", ""))
        .start();
    let unloads = || {
        d.log_lines()
            .iter()
            .filter(|l| l.contains("idle model's state unloaded from memory"))
            .count()
    };
    let unloaded = |n: usize| {
        d.wait_log_count("m1 unloaded from memory", n, |l| {
            l.contains("idle model's state unloaded from memory") && l.contains("m1")
        })
    };
    let retrain = decide_and_retrain(&d, "m1", true);
    push_acc(&d, "m1", 0.93, 0, 5);
    assert_eq!(on_probation(&d, "m1")["candidate"]["n"], 5);
    let before = unloads();
    unloaded(before + 1);
    // The candidate goes on: 5 values at 0.93 then 10 at 0.80 roll back at the second look
    // (the first, at 10 values, is not sure enough yet of so mixed a sample).
    push_acc(&d, "m1", 0.80, 0, 10);
    let runs = d.wait_runs(h.rollback(), 1);
    let fig = &runs[0].input["probation"];
    assert_eq!(runs[0].input["rollback_of"], retrain, "{}", runs[0].stdin);
    assert_eq!(fig["candidate"]["n"], 15, "{fig}");
    let mean = fig["candidate"]["mean"].as_f64().unwrap();
    assert!(
        (mean - (5.0 * 0.93 + 10.0 * 0.80) / 15.0).abs() < 1e-9,
        "{fig}"
    );
    assert_sample(&fig["baseline"], EVENTS, 0.93, "baseline");
    d.wait_job(Some("m1"), "the rollback succeeded", |j| {
        j["action"] == "rollback" && j["state"] == "succeeded"
    });
    d.wait_runs(&h.escalate, 1);
    // Unloaded again, then loaded by events.
    unloaded(unloads() + 1);
    push_acc(&d, "m1", 0.80, 10, 20);
    settle();
    assert_rolled_back_once(&d, &h, "m1");
}

/// `max_wait_s` runs out while the model's state is out of memory: it is loaded to end it.
#[test]
fn max_wait_ends_a_probation_whose_model_left_memory() {
    let b = Daemon::builder();
    let h = Hooks::new(&b);
    let d = b
        .daemon_keys("model_idle_unload_s = 1")
        .body(h.config("", "", "max_wait_s = 4\non_inconclusive = \"rollback\""))
        .start();
    let retrain = decide_and_retrain(&d, "m1", false);
    push_acc(&d, "m1", 0.93, 0, 4);
    d.wait_log_count("m1 unloaded from memory", 1, |l| {
        l.contains("idle model's state unloaded from memory") && l.contains("m1")
    });
    let runs = d.wait_runs(h.rollback(), 1);
    assert_eq!(runs[0].input["rollback_of"], retrain, "{}", runs[0].stdin);
    assert_eq!(runs[0].input["probation"]["cause"], "inconclusive");
    assert_eq!(runs[0].input["probation"]["candidate"]["n"], 4);
    wait_probation_state(&d, "m1", retrain, "rolled_back");
    settle();
    assert_eq!(jobs_of(&d, "m1", "rollback").len(), 1);
}

/// A reload whose rule has no `[models.probation]` any more ends a running probation
/// (inconclusive, as a start with such a rule does), and decisions run again; whether the
/// model's state is in memory or not (`idle`).
fn reload_without_probation(idle: bool) {
    let b = Daemon::builder();
    let h = Hooks::new(&b);
    let body = h.config("", "", "");
    let b = if idle {
        b.daemon_keys("model_idle_unload_s = 1")
    } else {
        b
    };
    let d = b.body(body.clone()).start();
    let retrain = decide_and_retrain(&d, "m1", true);
    push_acc(&d, "m1", 0.93, 0, 5);
    assert_eq!(on_probation(&d, "m1")["candidate"]["n"], 5);
    if idle {
        d.wait_log_count("m1 unloaded from memory", 1, |l| {
            l.contains("idle model's state unloaded from memory") && l.contains("m1")
        });
    }
    let cut = body.find("[models.probation]").unwrap();
    d.write_config(&ConfigParts {
        daemon_extra: String::new(),
        body: body[..cut].to_string(),
    });
    d.sighup();
    d.wait_log_count("the reload", 1, |l| l.contains("config reloaded"));
    let r = wait_probation_state(&d, "m1", retrain, "inconclusive");
    assert!(r["probation"]["cause"].is_null(), "{r}");
    assert_eq!(r["probation"]["candidate"]["n"], 5, "{r}");
    assert_eq!(metric(&d, "visutility_models_on_probation"), Some(0.0));
    assert_eq!(
        metric(&d, "visutility_probation_total{outcome=\"inconclusive\"}"),
        Some(1.0)
    );
    // A decision runs again: a second retrain (and no probation for it).
    d.push_events(&[firing_event("m1", 0.93, 5)]);
    let second = d.wait_job(Some("m1"), "a second retrain", |j| {
        j["action"] == "full" && j["job_id"] != retrain && j["state"] == "succeeded"
    });
    assert!(second["probation"].is_null(), "{second}");
    push_acc(&d, "m1", 0.80, 0, 30);
    settle();
    assert!(h.rollback().runs().is_empty());
    assert!(h.escalate.runs().is_empty());
    assert_eq!(
        metric(&d, "visutility_probation_total{outcome=\"inconclusive\"}"),
        Some(1.0)
    );
}

#[test]
fn a_reload_that_drops_the_probation_ends_it_and_decisions_run_again() {
    reload_without_probation(false);
}

#[test]
fn a_reload_that_drops_the_probation_of_a_model_out_of_memory_ends_it_too() {
    reload_without_probation(true);
}

/// `fail_fast` counts a policy's firing only past the warm-up that follows the retrain; the
/// rollback is exempt from the retrain's cooldown, and its success resets the policies with
/// warm-up again. Decisions during probation leave no entry in `explain`.
#[test]
fn fail_fast_waits_for_the_warm_up_and_the_rollback_ignores_the_cooldown() {
    let b = Daemon::builder();
    let h = Hooks::new(&b);
    let d = b
        .body(
            h.config("", "warmup_events = 3", "fail_fast = true")
                .replace("cooldown_s = 0", "cooldown_s = 3600"),
        )
        .start();
    let retrain = decide_and_retrain(&d, "m1", true);
    assert_eq!(d.model("m1").unwrap()["warmup_left"], 3);
    // A firing during the warm-up: no rollback.
    d.push_events(&[firing_event("m1", 0.93, 0)]);
    let p = on_probation(&d, "m1");
    assert_eq!(p["warmup_left"], 2, "{p}");
    push_acc(&d, "m1", 0.93, 1, 3);
    let p = on_probation(&d, "m1");
    assert_eq!(
        (p["warmup_left"].as_u64(), p["candidate"]["n"].as_u64()),
        (Some(0), Some(1)),
        "{p}"
    );
    settle();
    assert!(h.rollback().runs().is_empty(), "rolled back in the warm-up");
    // Past it: the firing rolls back, cooldown or not.
    d.push_events(&[firing_event("m1", 0.93, 4)]);
    let runs = d.wait_runs(h.rollback(), 1);
    assert_eq!(runs[0].input["rollback_of"], retrain, "{}", runs[0].stdin);
    assert_eq!(runs[0].input["probation"]["cause"], "policy_fired");
    assert_eq!(runs[0].input["probation"]["candidate"]["n"], 1);
    d.wait_job(Some("m1"), "the rollback succeeded", |j| {
        j["action"] == "rollback" && j["state"] == "succeeded"
    });
    d.wait_for("the policies reset with warm-up after the rollback", || {
        (d.model("m1")?["warmup_left"] == 3).then_some(())
    });
    d.wait_runs(&h.escalate, 1);
    settle();
    assert_eq!(jobs_of(&d, "m1", "full").len(), 1);
    let explain = d.cli_json(&["explain", "m1"]);
    let policies: Vec<&str> = explain
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["policy"].as_str().unwrap())
        .collect();
    assert_eq!(policies, ["probation", "limits"], "{explain}");
}
