//! `visutility explain MODEL` (issue 13.3): a model's decision log, newest first. A decision
//! that ran a job shows its id; the decisions held after it show why (cooldown, pause,
//! warm-up), coalesced with a count; the log survives a SIGKILL, keeps the last 100 entries,
//! goes with `forget`, and an id the daemon never saw is refused.

use serde_json::{Value, json};

use crate::support::*;

/// `[hooks]` with `full` running `hook` and these extra keys, and one rule whose "limits"
/// policy asks for a full retrain when drift_score is above 0.3, plus extra rule keys.
fn body(hook: &Hook, hooks_extra: &str, rule_extra: &str) -> String {
    format!(
        r#"
[hooks]
retries = 0
{hooks_extra}
full = {{ command = {cmd}, timeout_s = 60 }}

[[models]]
match = "*"
{rule_extra}

[[models.policies]]
name = "limits"
kind = "static_threshold"
max_drift = 0.3
"#,
        cmd = hook.command_toml(&[])
    )
}

/// The model's log as `explain MODEL --json` prints it, with `args` added.
fn explain(d: &Daemon, model: &str, args: &[&str]) -> Vec<Value> {
    let mut a = vec!["explain", model];
    a.extend_from_slice(args);
    match d.cli_json(&a) {
        Value::Array(entries) => entries,
        other => d.fail(format!("explain --json is not an array: {other}")),
    }
}

/// Each event on its own batch: a flush after every one (its reply counts the connection's
/// events so far).
fn push_each(d: &Daemon, lines: &[String]) {
    let mut c = d.connect();
    for (n, l) in (1..).zip(lines) {
        c.send_line(l);
        assert_flush(&c.flush(), n, 0);
    }
}

/// The numbers of the entries, as listed.
fn seqs(entries: &[Value]) -> Vec<u64> {
    entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

#[test]
fn a_job_then_decisions_held_by_the_cooldown_then_by_a_pause() {
    let b = Daemon::builder();
    let hook = b.recording_hook("retrain", 0);
    let d = b
        .body(body(&hook, "cooldown_s = 3600", "reset_on_retrain = false"))
        .start();

    d.push_events(&[drift_event("m1", 0.9, 1)]);
    let job = d.wait_job(Some("m1"), "the retrain succeeded", |j| {
        j["state"] == "succeeded"
    });
    let job_id = job["job_id"].as_u64().unwrap();
    // Five more decisions, each from a batch of its own: the cooldown holds them.
    push_each(
        &d,
        &(2..7)
            .map(|i| drift_event("m1", 0.8, i))
            .collect::<Vec<_>>(),
    );
    let log = explain(&d, "m1", &[]);
    assert_eq!(log.len(), 2, "{log:#?}");
    let (held, ran) = (&log[0], &log[1]);
    assert_eq!(ran["outcome"], json!(job_id), "{ran}");
    assert_eq!(ran["job_id"], json!(job_id), "{ran}");
    assert_eq!(ran["count"], json!(1), "{ran}");
    assert_eq!(held["outcome"], "cooldown", "{held}");
    assert_eq!(held["count"], json!(5), "{held}");
    assert_eq!(held["job_id"], Value::Null, "{held}");
    assert!(
        held["seq"].as_u64() > ran["seq"].as_u64(),
        "newest first: {log:#?}"
    );
    assert!(held["at"].as_f64() >= held["first_at"].as_f64(), "{held}");
    // Every field the contract names, and the event that tipped it with its meta.
    for e in &log {
        for key in [
            "at",
            "policy",
            "action",
            "statistic",
            "threshold",
            "outcome",
        ] {
            assert!(e.get(key).is_some(), "explain entry without {key}: {e}");
        }
        assert_eq!(e["kind"], "decision", "{e}");
        assert_eq!(e["policy"], "limits", "{e}");
        assert_eq!(e["action"], "full", "{e}");
        assert_eq!(e["threshold"], json!(0.3), "{e}");
        assert!(e["reason"].as_str().unwrap().contains("max_drift"), "{e}");
    }
    assert_eq!(ran["statistic"], json!(0.9), "{ran}");
    assert_eq!(ran["event"]["meta"]["seq"], json!(1), "{ran}");
    assert_eq!(
        held["statistic"],
        json!(0.8),
        "the first held decision's: {held}"
    );
    assert_eq!(held["event"]["meta"]["seq"], json!(2), "{held}");

    // Paused: a new entry, since the outcome changed.
    d.cli_ok(&["pause", "m1"]);
    push_each(&d, &[drift_event("m1", 0.9, 7), drift_event("m1", 0.9, 8)]);
    let log = explain(&d, "m1", &[]);
    assert_eq!(log.len(), 3, "{log:#?}");
    assert_eq!(log[0]["outcome"], "paused", "{log:#?}");
    assert_eq!(log[0]["count"], json!(2), "{log:#?}");
    assert_eq!(explain(&d, "m1", &["--limit", "1"]).len(), 1);

    // The table, for people.
    let table = d.cli_ok(&["explain", "m1"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    for col in [
        "AT",
        "POLICY",
        "ACTION",
        "STATISTIC",
        "THRESHOLD",
        "OUTCOME",
        "COUNT",
    ] {
        assert!(lines[0].contains(col), "no {col} column: {table}");
    }
    assert!(lines[1].contains("paused"), "{table}");
    assert!(
        lines[2].contains("cooldown") && lines[2].contains(" 5 "),
        "{table}"
    );
    assert!(lines[3].contains(&format!("job {job_id}")), "{table}");
    assert_eq!(hook.started(), 1);
}

#[test]
fn a_decision_during_the_warm_up_after_a_retrain_shows_warmup() {
    let b = Daemon::builder();
    let hook = b.recording_hook("retrain", 0);
    let d = b
        .body(body(
            &hook,
            "cooldown_s = 0",
            "reset_on_retrain = true\nwarmup_events = 3",
        ))
        .start();
    d.push_events(&[drift_event("m1", 0.9, 1)]);
    d.wait_job(Some("m1"), "the retrain succeeded", |j| {
        j["state"] == "succeeded"
    });
    d.wait_for("the model to be reset into its warm-up", || {
        (d.model("m1")?["warmup_left"].as_u64()? == 3).then_some(())
    });
    push_each(&d, &[drift_event("m1", 0.9, 2), drift_event("m1", 0.9, 3)]);
    let log = explain(&d, "m1", &[]);
    assert_eq!(log.len(), 2, "{log:#?}");
    assert_eq!(log[0]["outcome"], "warmup", "{log:#?}");
    assert_eq!(log[0]["count"], json!(2), "{log:#?}");
    assert!(log[1]["outcome"].is_u64(), "{log:#?}");
    // Held, not decided: nothing ran, and the model counts one decision.
    assert_eq!(d.history(Some("m1")).len(), 1);
    assert_eq!(d.model("m1").unwrap()["decisions"], json!(1));
}

/// 2,000 events on which the policy fires, under a cooldown: a handful of records, counted
/// by the store. The flush interval is long so that no interval passes during the test: the
/// running entry is then written when it starts and when the daemon stops, and nothing in
/// between.
#[test]
fn two_thousand_decisions_under_a_cooldown_write_a_handful_of_records() {
    let b = Daemon::builder();
    let hook = b.recording_hook("retrain", 0);
    let mut d = b
        .daemon_keys("flush_interval_ms = 600000")
        .body(body(&hook, "cooldown_s = 3600", "reset_on_retrain = false"))
        .start();
    d.push_events(&[drift_event("m1", 0.9, 0)]);
    d.wait_job(Some("m1"), "the retrain succeeded", |j| {
        j["state"] == "succeeded"
    });
    let written = |d: &Daemon| {
        d.status_json()["store"]["explain_records_written"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(written(&d), 1, "the job's entry");
    // 20 batches of 100 events, every one over the threshold.
    let mut c = d.connect();
    for batch in 0..20 {
        let lines: Vec<String> = (0..100)
            .map(|i| drift_event("m1", 0.9, 1 + batch * 100 + i))
            .collect();
        c.send_lines(&lines);
        assert_flush(&c.flush(), (batch as u64 + 1) * 100, 0);
    }
    drop(c);
    assert_eq!(d.model("m1").unwrap()["decisions"], json!(2_001));
    let log = explain(&d, "m1", &[]);
    assert_eq!(log.len(), 2, "{log:#?}");
    let held = log[0]["count"].as_u64().unwrap();
    assert!(held >= 20, "one decision per batch at least: {log:#?}");
    assert_eq!(log[0]["outcome"], "cooldown");
    assert!(
        written(&d) <= 3,
        "{} decision log records for 2,000 held decisions",
        written(&d)
    );

    // Its count is written when the daemon stops.
    d.sigterm();
    assert!(d.wait_exit().success());
    d.restart();
    let log = explain(&d, "m1", &[]);
    assert_eq!(log[0]["count"].as_u64(), Some(held), "{log:#?}");
}

#[test]
fn the_log_survives_a_sigkill_and_goes_on_from_its_last_number() {
    let b = Daemon::builder();
    let hook = b.recording_hook("retrain", 0);
    let mut d = b
        .body(body(&hook, "cooldown_s = 3600", "reset_on_retrain = false"))
        .start();
    d.push_events(&[drift_event("m1", 0.9, 1)]);
    d.wait_job(Some("m1"), "the retrain succeeded", |j| {
        j["state"] == "succeeded"
    });
    push_each(&d, &[drift_event("m1", 0.9, 2)]);
    let before = explain(&d, "m1", &[]);
    assert_eq!(before.len(), 2, "{before:#?}");
    // A flush after the entries were written (the command actor wrote them before it
    // answered explain) makes them durable.
    d.push_events(&[plain_event("other")]);
    d.kill_and_restart();
    let after = explain(&d, "m1", &[]);
    assert_eq!(seqs(&after), seqs(&before), "{after:#?}");
    assert_eq!(after[1]["outcome"], before[1]["outcome"]);
    assert_eq!(after[0]["outcome"], "cooldown", "{after:#?}");
    assert_eq!(after[0]["event"], before[0]["event"]);
    // The cooldown was persisted too; the next held decision is a new entry, numbered on.
    push_each(&d, &[drift_event("m1", 0.9, 3)]);
    let log = explain(&d, "m1", &[]);
    assert_eq!(log.len(), 3, "{log:#?}");
    assert_eq!(log[0]["seq"].as_u64(), Some(seqs(&before)[0] + 1));
    assert_eq!(log[0]["outcome"], "cooldown");
}

/// Dry runs: every decision is a job of its own (recorded, not run), so every one is an
/// entry.
#[test]
fn the_log_keeps_the_last_100_entries_and_forget_removes_it() {
    let b = Daemon::builder();
    let hook = b.recording_hook("retrain", 0);
    let mut d = b
        .body(body(
            &hook,
            "cooldown_s = 0\ndry_run = true",
            "reset_on_retrain = false",
        ))
        .start();
    let n = 110;
    push_each(
        &d,
        &(0..n)
            .map(|i| drift_event("m1", 0.9, i))
            .collect::<Vec<_>>(),
    );
    let log = explain(&d, "m1", &["--limit", "1000"]);
    assert_eq!(log.len(), 100, "bounded at 100");
    let s = seqs(&log);
    assert_eq!(s[0], n as u64, "{s:?}");
    assert!(s.windows(2).all(|w| w[0] == w[1] + 1), "{s:?}");
    assert_eq!(log[0]["event"]["meta"]["seq"], json!(n - 1));
    assert_eq!(log[99]["event"]["meta"]["seq"], json!(n - 100));
    let jobs = d.history(Some("m1"));
    assert_eq!(log[0]["outcome"], jobs[0]["job_id"], "{}", jobs[0]);
    assert_eq!(explain(&d, "m1", &[]).len(), 20, "the CLI's default limit");
    assert_eq!(hook.started(), 0);

    d.cli_ok(&["forget", "m1"]);
    assert_eq!(explain(&d, "m1", &[]), Vec::<Value>::new());
    // Gone from the store too: after a restart the id is one the daemon never saw.
    d.kill_and_restart();
    let o = d.cli(&["explain", "m1"]);
    assert_eq!(o.status.code(), Some(1), "{}", out_text(&o));
}

#[test]
fn an_unknown_or_invalid_model_is_refused_with_one_line() {
    let b = Daemon::builder();
    let hook = b.recording_hook("retrain", 0);
    let d = b
        .body(body(&hook, "cooldown_s = 0", "reset_on_retrain = false"))
        .start();
    d.push_events(&[plain_event("known")]);
    assert_eq!(explain(&d, "known", &[]), Vec::<Value>::new());
    assert_eq!(d.cli_ok(&["explain", "known"]).trim(), "no decisions");
    for (id, says) in [
        ("nope", "unknown model nope"),
        ("../etc", "model_id must not start with"),
    ] {
        let o = d.cli(&["explain", id]);
        assert_eq!(o.status.code(), Some(1), "{id}: {}", out_text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.lines().count(), 1, "{id}: {err}");
        assert!(err.contains(says), "{id}: {err}");
        assert!(o.stdout.is_empty(), "{id}: {}", out_text(&o));
    }
}
