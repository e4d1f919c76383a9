//! Contract section 4: hooks (env, args, stdin, timeout, failure, one job per model).

use serde_json::{Value, json};

use crate::support::*;

/// `[hooks]` + a static_threshold policy named "limits" (drift > 0.3 → full,
/// accuracy < 0.9 → fine_tune).
fn body(full_cmd: &str, fine_cmd: &str, hooks_extra: &str) -> String {
    format!(
        r#"
[hooks]
max_concurrent = 4
cooldown_s = 0
retries = 0
retry_backoff_s = 0
{hooks_extra}
full = {{ command = {full_cmd}, timeout_s = 60 }}
fine_tune = {{ command = {fine_cmd}, timeout_s = 60 }}

[[models]]
match = "*"
reset_on_retrain = false

[[models.policies]]
name = "limits"
kind = "static_threshold"
max_drift = 0.3
min_accuracy = 0.9
"#
    )
}

fn id_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[track_caller]
fn assert_attempt(d: &Daemon, run: &HookRun, expected_first_based: u64) {
    let a = run.var("VISUTILITY_ATTEMPT");
    let n: u64 = a
        .trim()
        .parse()
        .unwrap_or_else(|_| d.fail(format!("VISUTILITY_ATTEMPT not an integer: {a:?}")));
    // 1-based is the natural reading; a 0-based counter is tolerated
    assert!(
        n == expected_first_based || n + 1 == expected_first_based,
        "VISUTILITY_ATTEMPT {n} for attempt #{expected_first_based}"
    );
}

#[test]
fn hook_gets_env_args_and_stdin_json() {
    let b = Daemon::builder();
    let hook = b.recording_hook("hook", 0);
    let b = b.body(body(
        &hook.command_toml(&["arg one", "--flag"]),
        &hook.command_toml(&["ft"]),
        "",
    ));
    let d = b.start();

    d.push_events(&[
        json!({"model_id": "fraud-v3", "drift_score": 0.9, "accuracy": 0.99, "meta": {"tag": "full-1"}}).to_string(),
    ]);
    let runs = d.wait_runs(&hook, 1);
    let r = &runs[0];
    assert_eq!(r.var("VISUTILITY_MODEL_ID"), "fraud-v3", "{r:?}");
    assert_eq!(r.var("VISUTILITY_ACTION"), "full", "{r:?}");
    assert_eq!(r.var("VISUTILITY_POLICY"), "limits", "{r:?}");
    assert!(
        !r.var("VISUTILITY_REASON").is_empty() && r.var("VISUTILITY_REASON") != "__missing__",
        "{r:?}"
    );
    let job_id = r.var("VISUTILITY_JOB_ID").to_string();
    assert!(!job_id.is_empty() && job_id != "__missing__", "{r:?}");
    assert_attempt(&d, r, 1);
    // run directly, no shell: the argument with a space stays one argument
    assert_eq!(r.argc, 2, "argc; args {:?}", r.args);
    assert_eq!(r.args, vec!["arg one".to_string(), "--flag".to_string()]);
    // stdin: one JSON object describing the decision and the event
    let input = &r.input;
    assert!(
        input.is_object(),
        "stdin is not a JSON object: {:?}",
        r.stdin
    );
    assert_eq!(input["model_id"], "fraud-v3", "stdin: {input}");
    assert_eq!(input["action"], "full", "stdin: {input}");
    assert_eq!(input["policy"], "limits", "stdin: {input}");
    assert!(input["reason"].is_string(), "stdin: {input}");
    assert_eq!(input["event"]["meta"]["tag"], "full-1", "stdin: {input}");
    assert_eq!(
        input["event"]["drift_score"].as_f64(),
        Some(0.9),
        "stdin: {input}"
    );
    assert_eq!(input["event"]["model_id"], "fraud-v3", "stdin: {input}");

    // the job is in the history, succeeded, with the same job id
    let job = d.wait_job(Some("fraud-v3"), "fraud-v3 job succeeded", |j| {
        j["state"] == "succeeded"
    });
    assert_eq!(id_str(&job["job_id"]), job_id, "job {job}");
    assert_eq!(job["model_id"], "fraud-v3", "job {job}");
    assert_eq!(job["action"], "full", "job {job}");
    assert_eq!(job["attempts"].as_u64(), Some(1), "job {job}");
    assert_eq!(job["exit_code"].as_i64(), Some(0), "job {job}");
    assert!(
        !job["started"].is_null() && !job["ended"].is_null(),
        "job {job}"
    );
    if let Some(p) = job.get("policy") {
        assert_eq!(p, "limits", "job {job}");
    }

    // accuracy below min_accuracy: fine_tune, with its own command
    d.push_events(&[
        json!({"model_id": "acc-model", "drift_score": 0.0, "accuracy": 0.5, "meta": {"tag": "ft-1"}}).to_string(),
    ]);
    let runs = d.wait_runs_for(&hook, "acc-model", 1);
    let r = &runs[0];
    assert_eq!(r.var("VISUTILITY_ACTION"), "fine_tune", "{r:?}");
    assert_eq!(r.var("VISUTILITY_POLICY"), "limits", "{r:?}");
    assert_eq!(r.args, vec!["ft".to_string()]);
    assert_eq!(r.input["action"], "fine_tune", "stdin: {}", r.input);
    assert_eq!(
        r.input["event"]["meta"]["tag"], "ft-1",
        "stdin: {}",
        r.input
    );
    assert_ne!(r.var("VISUTILITY_JOB_ID"), job_id, "job ids must differ");
    d.wait_job(Some("acc-model"), "acc-model fine_tune succeeded", |j| {
        j["state"] == "succeeded" && j["action"] == "fine_tune"
    });
}

#[test]
fn hook_timeout_kills_the_whole_process_group() {
    let b = Daemon::builder();
    let pids = b.path("pids");
    std::fs::create_dir_all(&pids).unwrap();
    let script = b.write_script(
        "slow.sh",
        &format!(
            r#"d={d}
cat > /dev/null
sleep 1000 &
echo $! > "$d/gc1.tmp" && mv "$d/gc1.tmp" "$d/gc1"
sleep 1001 &
echo $! > "$d/gc2.tmp" && mv "$d/gc2.tmp" "$d/gc2"
echo $$ > "$d/hook.tmp" && mv "$d/hook.tmp" "$d/hook"
wait
"#,
            d = sh_quote(pids.to_str().unwrap())
        ),
    );
    let cmd = toml_cmd(&[script.to_str().unwrap()]);
    let b = b.body(format!(
        r#"
[hooks]
cooldown_s = 0
retries = 0
full = {{ command = {cmd}, timeout_s = 3 }}
fine_tune = {{ command = {cmd}, timeout_s = 3 }}

[[models]]
match = "*"

[[models.policies]]
kind = "static_threshold"
max_drift = 0.3
min_accuracy = 0.0
"#
    ));
    let d = b.start();
    d.push_events(&[drift_event("slowpoke", 0.9, 1)]);

    let read_pid = |n: &str| -> Option<i32> {
        std::fs::read_to_string(pids.join(n))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    };
    let (hook, gc1, gc2) = d.wait_for("the hook to start and write its pid files", || {
        Some((read_pid("hook")?, read_pid("gc1")?, read_pid("gc2")?))
    });
    let _reap_sleeps = PidReaper {
        pids: vec![gc1, gc2],
        marker: "sleep".into(),
    };
    let _reap_hook = PidReaper {
        pids: vec![hook],
        marker: "slow.sh".into(),
    };

    d.wait_for(
        "the hook and both of its background children to be killed",
        || (!pid_alive(hook) && !pid_alive(gc1) && !pid_alive(gc2)).then_some(()),
    );
    let job = d.wait_job(Some("slowpoke"), "slowpoke job failed", |j| {
        j["state"] == "failed"
    });
    assert_ne!(
        job["exit_code"].as_i64(),
        Some(0),
        "timed-out job must not report exit 0: {job}"
    );
    assert_eq!(job["attempts"].as_u64(), Some(1), "job {job}");
}

#[test]
fn failing_hook_is_recorded_as_failed_with_its_exit_code() {
    let b = Daemon::builder();
    let hook = b.recording_hook("fail", 3);
    let cmd = hook.command_toml(&[]);
    let d = b.body(body(&cmd, &cmd, "")).start();
    d.push_events(&[drift_event("m1", 0.9, 1)]);
    d.wait_runs(&hook, 1);
    let job = d.wait_job(Some("m1"), "m1 job failed", |j| j["state"] == "failed");
    assert_eq!(job["exit_code"].as_i64(), Some(3), "job {job}");
    assert_eq!(job["attempts"].as_u64(), Some(1), "job {job}");
    assert_eq!(job["action"], "full", "job {job}");
    assert_eq!(hook.runs().len(), 1, "retries = 0 means one run");
}

#[test]
fn failing_hook_is_retried_within_one_job() {
    let b = Daemon::builder();
    let hook = b.recording_hook("fail", 4);
    let cmd = hook.command_toml(&[]);
    let d = b
        .body(body(&cmd, &cmd, "").replace("retries = 0", "retries = 2"))
        .start();
    d.push_events(&[drift_event("m1", 0.9, 1)]);
    let job = d.wait_job(Some("m1"), "m1 job failed after retries", |j| {
        j["state"] == "failed"
    });
    assert_eq!(
        job["attempts"].as_u64(),
        Some(3),
        "1 attempt + 2 retries: {job}"
    );
    assert_eq!(job["exit_code"].as_i64(), Some(4), "job {job}");
    let runs = hook.runs();
    assert_eq!(runs.len(), 3, "runs: {runs:?}");
    for (i, r) in runs.iter().enumerate() {
        assert_attempt(&d, r, i as u64 + 1);
        assert_eq!(
            r.var("VISUTILITY_JOB_ID"),
            id_str(&job["job_id"]),
            "one job, same id"
        );
    }
    let jobs = d.history(Some("m1"));
    assert_eq!(jobs.len(), 1, "retries are attempts of one job: {jobs:?}");
}

#[test]
fn one_job_per_model_at_a_time() {
    let b = Daemon::builder();
    let hook = b.recording_hook("gated", 0);
    let cmd = hook.command_toml(&[]);
    let d = b.body(body(&cmd, &cmd, "")).start();
    hook.close_gate();
    let mut c = d.connect();
    c.send_line(&drift_event("m1", 0.9, 1));
    c.flush();
    d.wait_for("the first hook run to start", || {
        (hook.started() >= 1).then_some(())
    });

    // more firing decisions and a manual trigger while the job is running
    for seq in 2..=6 {
        c.send_line(&drift_event("m1", 0.9, seq));
    }
    c.flush();
    d.cli_ok(&["trigger", "m1", "full"]);
    d.cli_ok(&["trigger", "m1", "fine_tune"]);
    let running: Vec<Value> = d
        .history(Some("m1"))
        .into_iter()
        .filter(|j| j["state"] == "running")
        .collect();
    assert!(
        running.len() <= 1,
        "two running jobs for one model: {running:?}"
    );
    assert_eq!(
        hook.started(),
        1,
        "a second run started while the first holds the model"
    );

    hook.open_gate();
    let jobs = d.wait_jobs_terminal();
    d.wait_for("every started run to finish", || {
        (hook.runs().len() == hook.started()).then_some(())
    });
    assert!(
        hook.overlaps().is_empty(),
        "overlapping runs: {:?}; jobs {jobs:?}",
        hook.overlaps()
    );
}

#[test]
fn full_supersedes_a_queued_fine_tune() {
    let b = Daemon::builder();
    let hook = b.recording_hook("gated", 0);
    let cmd = hook.command_toml(&[]);
    let d = b.body(body(&cmd, &cmd, "")).start();
    d.push_events(&[json!({"model_id": "m1", "drift_score": 0.0, "accuracy": 1.0}).to_string()]);
    hook.close_gate();
    d.cli_ok(&["trigger", "m1", "full"]);
    d.wait_for("the first hook run to start", || {
        (hook.started() >= 1).then_some(())
    });
    d.cli_ok(&["trigger", "m1", "fine_tune"]);
    d.wait_job(Some("m1"), "a queued fine_tune job", |j| {
        j["action"] == "fine_tune" && j["state"] == "queued"
    });
    d.cli_ok(&["trigger", "m1", "full"]);
    d.wait_job(Some("m1"), "the fine_tune job superseded", |j| {
        j["action"] == "fine_tune" && j["state"] == "superseded"
    });
    hook.open_gate();
    let jobs = d.wait_jobs_terminal();
    d.wait_for("every started run to finish", || {
        (hook.runs().len() == hook.started()).then_some(())
    });
    let ran_fine_tune = hook
        .runs()
        .iter()
        .any(|r| r.var("VISUTILITY_ACTION") == "fine_tune");
    assert!(!ran_fine_tune, "a superseded fine_tune ran; jobs {jobs:?}");
    assert!(hook.overlaps().is_empty(), "overlapping runs");
}
