//! Durable retrain jobs: retries with backoff, cooldown and budget (also across restarts), the
//! escalate hook, the loop guard, warm-up after a reset, `for_events` debounce, pause and
//! resume, dry runs, and a daemon killed while its hook runs.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use serde_json::{Value, json};

use crate::support::*;

/// A config for these tests: `[hooks]` and one `[[models]]` rule whose first policy,
/// "limits", is a static threshold (drift_score above 0.3: full; accuracy below 0.9:
/// fine_tune). Keys set here replace the defaults; hook commands are TOML values.
struct Conf {
    hooks: BTreeMap<&'static str, String>,
    rule: BTreeMap<&'static str, String>,
    limits: BTreeMap<&'static str, String>,
    extra_policies: String,
}

impl Conf {
    fn new() -> Conf {
        let hooks = [
            ("max_concurrent", "4"),
            ("cooldown_s", "0"),
            ("retries", "0"),
            ("retry_backoff_s", "0"),
        ];
        Conf {
            hooks: hooks.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            rule: [("reset_on_retrain", "false".to_string())].into(),
            limits: BTreeMap::new(),
            extra_policies: String::new(),
        }
    }

    fn hooks(mut self, key: &'static str, value: impl Into<String>) -> Conf {
        self.hooks.insert(key, value.into());
        self
    }

    /// `key = { command = <hook>, timeout_s = 60 }`
    fn hook(self, key: &'static str, hook_cmd: &str) -> Conf {
        self.hooks(key, format!("{{ command = {hook_cmd}, timeout_s = 60 }}"))
    }

    fn rule(mut self, key: &'static str, value: impl Into<String>) -> Conf {
        self.rule.insert(key, value.into());
        self
    }

    fn limits(mut self, key: &'static str, value: impl Into<String>) -> Conf {
        self.limits.insert(key, value.into());
        self
    }

    fn toml(&self) -> String {
        let table = |m: &BTreeMap<&'static str, String>| {
            m.iter()
                .map(|(k, v)| format!("{k} = {v}\n"))
                .collect::<String>()
        };
        format!(
            "[hooks]\n{}\n[[models]]\nmatch = \"*\"\n{}\n[[models.policies]]\nname = \"limits\"\nkind = \"static_threshold\"\nmax_drift = 0.3\nmin_accuracy = 0.9\n{}\n{}",
            table(&self.hooks),
            table(&self.rule),
            table(&self.limits),
            self.extra_policies
        )
    }
}

/// An event with a low accuracy (the "limits" policy asks for a fine-tune).
fn low_accuracy(model: &str, seq: i64) -> String {
    json!({"model_id": model, "accuracy": 0.5, "meta": {"seq": seq}}).to_string()
}

/// Returns once the command actor has handled every decision of the events flushed so far.
///
/// A flush is answered after the model applied the events, so their decisions are already in
/// the command actor's mailbox; `status` goes through the same mailbox behind them, and a
/// decision's job is journaled while the decision is handled.
fn settle(d: &Daemon) {
    d.status_json();
}

fn jobs_of(d: &Daemon, model: &str) -> Vec<Value> {
    d.history(Some(model))
}

fn decisions_of(d: &Daemon, model: &str) -> u64 {
    d.model(model)
        .and_then(|m| m["decisions"].as_u64())
        .unwrap_or(0)
}

/// The times of each transition into `state`, oldest first.
fn transition_times(job: &Value, state: &str) -> Vec<f64> {
    job["transitions"]
        .as_array()
        .unwrap_or_else(|| panic!("job without transitions: {job}"))
        .iter()
        .filter(|t| t["state"] == state)
        .map(|t| t["at"].as_f64().expect("numeric transition time"))
        .collect()
}

#[test]
fn failing_hook_is_retried_with_backoff_and_each_attempt_recorded() {
    let b = Daemon::builder();
    let log = b.path("attempts.log");
    let script = b.write_script(
        "fail.sh",
        &format!(
            r#"cat > /dev/null
echo "$VISUTILITY_JOB_ID $VISUTILITY_ATTEMPT" >> {log}
echo "attempt $VISUTILITY_ATTEMPT failing" >&2
exit 5"#,
            log = sh_quote(log.to_str().unwrap())
        ),
    );
    let cmd = toml_cmd(&[script.to_str().unwrap()]);
    let conf = Conf::new()
        .hooks("retries", "2")
        .hooks("retry_backoff_s", "0.5")
        .hook("full", &cmd);
    let d = b.body(conf.toml()).start();
    d.push_events(&[drift_event("m1", 0.9, 1)]);

    let job = d.wait_job(Some("m1"), "the job failed after its retries", |j| {
        j["state"] == "failed"
    });
    assert_contract_fields(&job);
    assert_eq!(
        job["attempts"].as_u64(),
        Some(3),
        "1 run + 2 retries: {job}"
    );
    assert_eq!(job["exit_code"].as_i64(), Some(5), "{job}");
    assert!(
        job["stderr_tail"]
            .as_str()
            .is_some_and(|t| t.contains("attempt 3 failing")),
        "the last attempt's stderr is kept: {job}"
    );
    // Every attempt is in the journal: three runs, a retry queued after each of the first two
    // failures, and each retry waited at least its backoff (0.5 s, then 1 s; jitter only adds).
    let runs = transition_times(&job, "running");
    let queued = transition_times(&job, "queued");
    assert_eq!(runs.len(), 3, "{job}");
    assert_eq!(queued.len(), 3, "the first queued plus two retries: {job}");
    assert!(
        runs[1] - queued[1] >= 0.5,
        "second attempt started {} s after the first failed: {job}",
        runs[1] - queued[1]
    );
    assert!(
        runs[2] - queued[2] >= 1.0,
        "third attempt started {} s after the second failed: {job}",
        runs[2] - queued[2]
    );

    settle(&d);
    let lines: Vec<String> = fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let id = job["job_id"].to_string();
    assert_eq!(
        lines,
        vec![format!("{id} 1"), format!("{id} 2"), format!("{id} 3")],
        "one job, attempts 1 to 3, and no fourth"
    );
}

#[test]
fn cooldown_holds_a_second_decision_until_it_has_passed() {
    let b = Daemon::builder();
    let hook = b.recording_hook("retrain", 0);
    let conf = Conf::new()
        .hooks("cooldown_s", "6")
        .hook("full", &hook.command_toml(&[]));
    let d = b.body(conf.toml()).start();

    d.push_events(&[drift_event("m1", 0.9, 1)]);
    let first = d.wait_job(Some("m1"), "the first job succeeded", |j| {
        j["state"] == "succeeded"
    });
    let ended = first["ended"].as_f64().unwrap();

    d.push_events(&[drift_event("m1", 0.9, 2)]);
    settle(&d);
    assert_eq!(jobs_of(&d, "m1").len(), 1, "a job ran during the cooldown");
    d.wait_log_count("the decision held by the cooldown", 1, |l| {
        l.contains("decision held by cooldown")
    });
    assert_eq!(decisions_of(&d, "m1"), 2, "the held decision is recorded");

    // The cooldown is per model.
    d.push_events(&[drift_event("m2", 0.9, 1)]);
    d.wait_runs_for(&hook, "m2", 1);

    // Once it has passed, the next decision runs.
    let mut seq = 3;
    let second = d.wait_for("a second m1 job after the cooldown", || {
        d.push_events(&[drift_event("m1", 0.9, seq)]);
        seq += 1;
        let jobs = jobs_of(&d, "m1");
        (jobs.len() >= 2).then(|| jobs[0].clone())
    });
    let created = second["created"].as_f64().unwrap();
    assert!(
        created >= ended + 6.0,
        "second job created {} s after the first ended, within cooldown_s = 6",
        created - ended
    );
    let runs = d.wait_runs_for(&hook, "m1", 2);
    assert!(
        runs[1].seq().unwrap() > 2,
        "the held decision ran: {runs:?}"
    );
}

#[test]
fn cooldown_survives_sigterm_and_sigkill() {
    let b = Daemon::builder();
    let hook = b.recording_hook("retrain", 0);
    let conf = Conf::new()
        .hooks("cooldown_s", "3600")
        .hook("full", &hook.command_toml(&[]));
    let mut d = b.body(conf.toml()).start();

    d.push_events(&[drift_event("m1", 0.9, 1)]);
    d.wait_job(Some("m1"), "the first job succeeded", |j| {
        j["state"] == "succeeded"
    });

    d.sigterm();
    assert!(d.wait_exit().success());
    d.restart();
    d.push_events(&[drift_event("m1", 0.9, 2)]);
    settle(&d);
    assert_eq!(jobs_of(&d, "m1").len(), 1, "cooldown lost across SIGTERM");

    d.kill_and_restart();
    d.push_events(&[drift_event("m1", 0.9, 3)]);
    settle(&d);
    assert_eq!(jobs_of(&d, "m1").len(), 1, "cooldown lost across SIGKILL");
    assert_eq!(decisions_of(&d, "m1"), 3, "every decision is recorded");
    assert_eq!(hook.started(), 1);

    // The hook still works: an operator's trigger is not held by the cooldown.
    d.cli_ok(&["trigger", "m1", "full"]);
    d.wait_runs_for(&hook, "m1", 2);
}

/// A full-retrain hook for the crash test: the first run ignores SIGTERM and blocks on a
/// gate; every run logs its pid and notes any earlier run still alive (not a zombie) when it
/// starts.
fn stubborn_gated_hook(b: &DaemonBuilder) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = b.path("crash");
    fs::create_dir_all(&dir).unwrap();
    let script = b.write_script(
        "stubborn.sh",
        &format!(
            r#"d={d}
cat > /dev/null
for p in $(cat "$d/pids" 2>/dev/null); do
  st=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | cut -d' ' -f1)
  case "$st" in ""|Z|X) ;; *) echo "$$ started while $p ($st) was alive" >> "$d/overlap" ;; esac
done
echo "$$" >> "$d/pids"
echo "$$ $VISUTILITY_JOB_ID $VISUTILITY_ATTEMPT" >> "$d/starts"
if [ ! -e "$d/first" ]; then
  touch "$d/first"
  trap '' TERM
  while [ -e "$d/gate" ]; do sleep 0.05; done
fi
echo "$$" >> "$d/done""#,
            d = sh_quote(dir.to_str().unwrap())
        ),
    );
    fs::write(dir.join("gate"), "closed").unwrap();
    (script, dir)
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn sigkill_while_a_hook_runs_interrupts_the_job_and_retries_it_once() {
    let b = Daemon::builder();
    let (script, dir) = stubborn_gated_hook(&b);
    let cmd = toml_cmd(&[script.to_str().unwrap()]);
    let conf = Conf::new().hook("full", &cmd);
    let mut d = b.body(conf.toml()).start();

    d.push_events(&[drift_event("m1", 0.9, 1)]);
    let old_pid: i32 = d.wait_for("the first hook run to start", || {
        lines(&dir.join("starts"))
            .first()
            .and_then(|l| l.split(' ').next()?.parse().ok())
    });
    let _reap = PidReaper {
        pids: vec![old_pid],
        marker: "stubborn.sh".into(),
    };
    let first = d.wait_job(Some("m1"), "the job running", |j| j["state"] == "running");

    d.kill();
    assert!(
        pid_alive(old_pid),
        "the hook should outlive the daemon's SIGKILL (it is in its own process group)"
    );
    d.restart();

    // The old group is stopped (it ignores SIGTERM, so this takes SIGKILL), the job is
    // redone once by a new job, and the two runs never overlap.
    d.wait_for("the old hook process to be gone", || {
        (!pid_alive(old_pid)).then_some(())
    });
    let retry = d.wait_job(Some("m1"), "the retry job succeeded", |j| {
        j["state"] == "succeeded"
    });
    let old = d
        .history(Some("m1"))
        .into_iter()
        .find(|j| j["job_id"] == first["job_id"])
        .unwrap();
    assert_eq!(old["state"], "interrupted", "{old}");
    assert!(
        old["note"]
            .as_str()
            .is_some_and(|n| n.contains(&format!("retried as job {}", retry["job_id"]))),
        "{old}"
    );
    assert_eq!(retry["retry_of"], first["job_id"], "{retry}");
    assert_eq!(retry["attempts"].as_u64(), Some(1), "{retry}");
    assert_contract_fields(&old);
    assert_contract_fields(&retry);
    assert_eq!(lines(&dir.join("done")).len(), 1, "only the retry finished");
    assert!(
        !dir.join("overlap").exists(),
        "two runs of m1 overlapped: {:?}",
        lines(&dir.join("overlap"))
    );

    // Exactly once: another (clean) restart runs nothing more.
    d.sigterm();
    assert!(d.wait_exit().success());
    d.restart();
    settle(&d);
    let starts = lines(&dir.join("starts"));
    assert_eq!(
        starts.len(),
        2,
        "the original run and one retry: {starts:?}"
    );
    assert!(
        starts[1].contains(&format!(" {} 1", retry["job_id"])),
        "{starts:?}"
    );
    assert_eq!(jobs_of(&d, "m1").len(), 2);
}

#[test]
fn interrupted_job_is_dropped_when_configured() {
    let b = Daemon::builder();
    let hook = b.recording_hook("gated", 0);
    let conf = Conf::new()
        .hooks("on_interrupted", "\"drop\"")
        .hook("full", &hook.command_toml(&[]));
    let mut d = b.body(conf.toml()).start();
    hook.close_gate();
    d.push_events(&[drift_event("m1", 0.9, 1)]);
    d.wait_for("the hook to start", || (hook.started() >= 1).then_some(()));
    d.wait_job(Some("m1"), "the job running", |j| j["state"] == "running");
    d.kill_and_restart();
    let job = d.wait_job(Some("m1"), "the job interrupted", |j| {
        j["state"] == "interrupted"
    });
    assert!(
        job["note"]
            .as_str()
            .is_some_and(|n| n.contains("not retried")),
        "{job}"
    );
    hook.open_gate();
    settle(&d);
    assert_eq!(jobs_of(&d, "m1").len(), 1, "no retry job");
    assert_eq!(hook.started(), 1);
}

#[test]
fn a_job_interrupted_three_times_in_a_row_is_not_redone_again() {
    let b = Daemon::builder();
    let hook = b.recording_hook("gated", 0);
    let conf = Conf::new().hook("full", &hook.command_toml(&[]));
    let mut d = b.body(conf.toml()).start();
    hook.close_gate();
    d.push_events(&[drift_event("m1", 0.9, 1)]);
    for round in 1..=3 {
        d.wait_for("the hook to start", || {
            (hook.started() >= round).then_some(())
        });
        d.wait_job(Some("m1"), "a job running", |j| j["state"] == "running");
        d.kill_and_restart();
    }
    let last = d.wait_job(Some("m1"), "the third run interrupted and dropped", |j| {
        j["state"] == "interrupted"
            && j["note"]
                .as_str()
                .is_some_and(|n| n.contains("interrupted 3 times in a row"))
    });
    hook.open_gate();
    settle(&d);
    let jobs = jobs_of(&d, "m1");
    assert_eq!(jobs.len(), 3, "the original and two redos: {jobs:?}");
    assert!(jobs.iter().all(|j| j["state"] == "interrupted"), "{jobs:?}");
    assert_eq!(hook.started(), 3, "no fourth run after {last}");
}

#[test]
fn budget_exhaustion_calls_the_escalate_hook_once() {
    let b = Daemon::builder();
    let retrain = b.recording_hook("retrain", 0);
    let escalate = b.recording_hook("escalate", 0);
    let conf = Conf::new()
        .hooks("max_jobs_per_day", "2")
        .hook("full", &retrain.command_toml(&[]))
        .hook("escalate", &escalate.command_toml(&["--page", "on-call"]));
    let mut d = b.body(conf.toml()).start();

    for seq in 1..=2 {
        d.push_events(&[drift_event("m1", 0.9, seq)]);
        d.wait_for(&format!("job {seq} to succeed"), || {
            let done = jobs_of(&d, "m1")
                .iter()
                .filter(|j| j["state"] == "succeeded")
                .count();
            (done == seq as usize).then_some(())
        });
    }
    d.push_events(&[drift_event("m1", 0.9, 3)]);
    let runs = d.wait_runs(&escalate, 1);
    let r = &runs[0];
    assert_eq!(r.var("VISUTILITY_ACTION"), "escalate", "{r:?}");
    assert_eq!(r.var("VISUTILITY_MODEL_ID"), "m1", "{r:?}");
    assert_eq!(r.var("VISUTILITY_POLICY"), "limits", "{r:?}");
    assert_eq!(r.var("VISUTILITY_ATTEMPT"), "1", "{r:?}");
    assert!(
        r.var("VISUTILITY_REASON").contains("budget"),
        "{}",
        r.var("VISUTILITY_REASON")
    );
    assert_eq!(r.args, vec!["--page".to_string(), "on-call".to_string()]);
    assert_eq!(r.input["action"], "escalate", "{}", r.input);
    assert_eq!(r.input["escalation"]["cause"], "budget", "{}", r.input);
    assert_eq!(
        r.input["escalation"]["decided_action"], "full",
        "{}",
        r.input
    );
    assert_eq!(r.seq(), Some(3), "{}", r.input);
    let job = d.wait_job(Some("m1"), "the escalate job succeeded", |j| {
        j["action"] == "escalate" && j["state"] == "succeeded"
    });
    assert_contract_fields(&job);
    assert_eq!(job["job_id"].to_string(), r.var("VISUTILITY_JOB_ID"));
    assert_eq!(job["exit_code"].as_i64(), Some(0), "{job}");

    // Further decisions that day are recorded only, also after a crash.
    d.push_events(&[drift_event("m1", 0.9, 4), drift_event("m1", 0.9, 5)]);
    settle(&d);
    d.kill_and_restart();
    d.push_events(&[drift_event("m1", 0.9, 6)]);
    settle(&d);
    assert_eq!(escalate.started(), 1, "the escalate hook ran again");
    assert_eq!(retrain.started(), 2, "a retrain ran over budget");
    assert_eq!(jobs_of(&d, "m1").len(), 3, "{:?}", jobs_of(&d, "m1"));
    assert!(decisions_of(&d, "m1") >= 5, "decisions are recorded");

    // An operator's trigger is not bound by the budget.
    d.cli_ok(&["trigger", "m1", "full"]);
    d.wait_runs(&retrain, 3);
}

#[test]
fn budget_exhaustion_without_an_escalate_hook_is_recorded() {
    let b = Daemon::builder();
    let retrain = b.recording_hook("retrain", 0);
    let conf = Conf::new()
        .hooks("max_jobs_per_day", "1")
        .hook("full", &retrain.command_toml(&[]));
    let d = b.body(conf.toml()).start();
    d.push_events(&[drift_event("m1", 0.9, 1)]);
    d.wait_job(Some("m1"), "the job succeeded", |j| {
        j["state"] == "succeeded"
    });
    d.push_events(&[drift_event("m1", 0.9, 2)]);
    d.push_events(&[drift_event("m1", 0.9, 3)]);
    settle(&d);
    let jobs = jobs_of(&d, "m1");
    let esc: Vec<&Value> = jobs.iter().filter(|j| j["action"] == "escalate").collect();
    assert_eq!(esc.len(), 1, "one escalation recorded: {jobs:?}");
    assert_eq!(esc[0]["state"], "skipped", "{}", esc[0]);
    assert!(
        esc[0]["note"]
            .as_str()
            .is_some_and(|n| n.contains("no escalate hook")),
        "{}",
        esc[0]
    );
    assert_eq!(retrain.started(), 1);
}

#[test]
fn for_events_debounces_and_a_break_resets_the_streak() {
    let b = Daemon::builder();
    let hook = b.recording_hook("retrain", 0);
    let conf = Conf::new()
        .limits("for_events", "3")
        .hook("full", &hook.command_toml(&[]));
    let d = b.body(conf.toml()).start();

    // Two in a row, a break, two in a row: never three consecutive.
    d.push_events(&[
        drift_event("m1", 0.9, 1),
        drift_event("m1", 0.9, 2),
        drift_event("m1", 0.0, 3),
        drift_event("m1", 0.9, 4),
        drift_event("m1", 0.9, 5),
    ]);
    settle(&d);
    assert_eq!(decisions_of(&d, "m1"), 0);
    assert!(jobs_of(&d, "m1").is_empty());

    // The third consecutive one fires.
    d.push_events(&[drift_event("m1", 0.9, 6)]);
    let runs = d.wait_runs(&hook, 1);
    assert_eq!(runs[0].seq(), Some(6), "{:?}", runs[0].input);
    assert_eq!(decisions_of(&d, "m1"), 1);
}

#[test]
fn warmup_after_reset_on_retrain_observes_without_firing() {
    let b = Daemon::builder();
    let hook = b.recording_hook("retrain", 0);
    let mut conf = Conf::new()
        .rule("reset_on_retrain", "true")
        .rule("warmup_events", "3")
        .hook("full", &hook.command_toml(&[]));
    conf.extra_policies =
        "[[models.policies]]\nname = \"window\"\nkind = \"drift_window\"\nwindow = 3\nthreshold = 0.3\n"
            .into();
    let d = b.body(conf.toml()).start();

    d.push_events(&[drift_event("m1", 0.9, 1)]);
    d.wait_job(Some("m1"), "the retrain succeeded", |j| {
        j["state"] == "succeeded"
    });
    d.wait_for("the model to be reset into its warm-up", || {
        (d.model("m1")?["warmup_left"].as_u64()? == 3).then_some(())
    });

    // Three warm-up events: every one would fire, none does, and the window fills.
    d.push_events(&[
        drift_event("m1", 0.9, 2),
        drift_event("m1", 0.9, 3),
        drift_event("m1", 0.9, 4),
    ]);
    settle(&d);
    let m = d.model("m1").unwrap();
    assert_eq!(m["decisions"].as_u64(), Some(1), "{m}");
    assert_eq!(m["warmup_left"].as_u64(), Some(0), "{m}");
    let window = m["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "window")
        .unwrap()
        .clone();
    assert!(
        window["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("window 3/3")),
        "the window observed the warm-up events: {window}"
    );
    // Issue 13.4: the same state as named numbers.
    assert_eq!(window["state"]["fill"], json!(3.0), "{window}");
    assert_eq!(window["state"]["window"], json!(3.0), "{window}");
    assert_eq!(window["state"]["threshold"], json!(0.3), "{window}");
    assert_eq!(jobs_of(&d, "m1").len(), 1);

    // The next one fires.
    d.push_events(&[drift_event("m1", 0.9, 5)]);
    let runs = d.wait_runs(&hook, 2);
    assert_eq!(runs[1].seq(), Some(5), "{:?}", runs[1].input);
}

#[test]
fn paused_model_records_decisions_runs_nothing_and_resumes_across_restarts() {
    let b = Daemon::builder();
    let hook = b.recording_hook("retrain", 0);
    let conf = Conf::new().hook("full", &hook.command_toml(&[]));
    let mut d = b.body(conf.toml()).start();

    d.cli_ok(&["pause", "--create", "m1"]);
    d.push_events(&[drift_event("m1", 0.9, 1)]);
    settle(&d);
    let m = d.model("m1").unwrap();
    assert_eq!(m["paused"], true, "{m}");
    assert_eq!(m["decisions"].as_u64(), Some(1), "{m}");
    assert!(jobs_of(&d, "m1").is_empty());
    let o = d.cli(&["trigger", "m1", "full"]);
    assert!(
        !o.status.success(),
        "trigger on a paused model: {}",
        out_text(&o)
    );

    d.kill_and_restart();
    let m = d.model("m1").unwrap();
    assert_eq!(m["paused"], true, "pause lost across SIGKILL: {m}");
    d.push_events(&[drift_event("m1", 0.9, 2)]);
    settle(&d);
    assert_eq!(decisions_of(&d, "m1"), 2);
    assert!(jobs_of(&d, "m1").is_empty());

    d.sigterm();
    assert!(d.wait_exit().success());
    d.restart();
    assert_eq!(
        d.model("m1").unwrap()["paused"],
        true,
        "pause lost across SIGTERM"
    );
    assert_eq!(hook.started(), 0, "a paused model ran a hook");

    d.cli_ok(&["resume", "m1"]);
    assert_eq!(d.model("m1").unwrap()["paused"], false);
    d.push_events(&[drift_event("m1", 0.9, 3)]);
    let runs = d.wait_runs(&hook, 1);
    assert_eq!(runs[0].seq(), Some(3), "{:?}", runs[0].input);

    // Resumed for good: a restart keeps it running hooks.
    d.kill_and_restart();
    assert_eq!(d.model("m1").unwrap()["paused"], false);
}

#[test]
fn dry_run_records_the_full_command_line_and_runs_nothing() {
    let b = Daemon::builder();
    let hook = b.recording_hook("retrain", 0);
    let conf = Conf::new()
        .hooks("dry_run", "true")
        .hook("full", &hook.command_toml(&["--data", "two words", "it's"]));
    let d = b.body(conf.toml()).start();

    d.push_events(&[drift_event("m1", 0.9, 1)]);
    let job = d.wait_job(Some("m1"), "a skipped job", |j| j["state"] == "skipped");
    let expected = format!(
        "{} --data 'two words' 'it'\\''s'",
        hook.script.to_str().unwrap()
    );
    assert!(
        job["note"].as_str().is_some_and(|n| n.contains(&expected)),
        "note should hold {expected:?}: {job}"
    );
    assert_eq!(job["attempts"].as_u64(), Some(0), "{job}");
    assert!(job["started"].is_null(), "{job}");
    assert_contract_fields(&job);
    settle(&d);
    assert_eq!(hook.started(), 0, "a dry run ran the hook");
}

#[test]
fn loop_guard_climbs_from_fine_tune_to_full_to_the_escalate_hook() {
    let b = Daemon::builder();
    let retrain = b.recording_hook("retrain", 0);
    let escalate = b.recording_hook("escalate", 0);
    let conf = Conf::new()
        .rule("reset_on_retrain", "true")
        .rule("loop_window_s", "3600")
        .hook("full", &retrain.command_toml(&["full"]))
        .hook("fine_tune", &retrain.command_toml(&["fine_tune"]))
        .hook("escalate", &escalate.command_toml(&[]));
    let d = b.body(conf.toml()).start();

    let succeeded = |n: usize| {
        d.wait_for(&format!("{n} succeeded jobs"), || {
            let done = jobs_of(&d, "m1")
                .iter()
                .filter(|j| j["state"] == "succeeded")
                .count();
            (done >= n).then_some(())
        })
    };

    // A fine-tune succeeds...
    d.push_events(&[low_accuracy("m1", 1)]);
    let runs = d.wait_runs(&retrain, 1);
    assert_eq!(runs[0].var("VISUTILITY_ACTION"), "fine_tune");
    succeeded(1);

    // ...the same policy fires again within the window: a full retrain instead.
    d.push_events(&[low_accuracy("m1", 2)]);
    let runs = d.wait_runs(&retrain, 2);
    let r = &runs[1];
    assert_eq!(r.var("VISUTILITY_ACTION"), "full", "{r:?}");
    assert_eq!(r.args, vec!["full".to_string()]);
    assert!(r.var("VISUTILITY_REASON").contains("loop guard"), "{r:?}");
    assert_eq!(
        r.input["escalation"]["decided_action"], "fine_tune",
        "{}",
        r.input
    );
    succeeded(2);

    // ...and again after the full retrain: the escalate hook, not a third retrain.
    d.push_events(&[low_accuracy("m1", 3)]);
    let runs = d.wait_runs(&escalate, 1);
    assert_eq!(runs[0].var("VISUTILITY_ACTION"), "escalate");
    assert_eq!(
        runs[0].input["escalation"]["cause"], "loop_guard",
        "{}",
        runs[0].input
    );
    assert_eq!(runs[0].seq(), Some(3));
    succeeded(3);

    // After that the policy's decisions are recorded only, within the window.
    d.push_events(&[low_accuracy("m1", 4)]);
    settle(&d);
    assert_eq!(retrain.started(), 2);
    assert_eq!(escalate.started(), 1);
    assert_eq!(decisions_of(&d, "m1"), 4);
    let actions: Vec<String> = jobs_of(&d, "m1")
        .iter()
        .rev()
        .map(|j| j["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(actions, ["fine_tune", "full", "escalate"]);

    // An operator's trigger is taken at its word; escalate is not an action to ask for.
    d.cli_ok(&["trigger", "m1", "fine_tune"]);
    let runs = d.wait_runs(&retrain, 3);
    assert_eq!(runs[2].var("VISUTILITY_ACTION"), "fine_tune");
    let o = d.cli(&["trigger", "m1", "escalate"]);
    assert!(!o.status.success(), "trigger escalate: {}", out_text(&o));
}

#[test]
fn escalate_is_not_a_policy_action() {
    let sb = Sandbox::new();
    let mut conf = Conf::new();
    conf = conf.limits("action", "\"escalate\"");
    let path = sb.write("bad.toml", &conf.toml());
    let o = sb.run(&["check-config", path.to_str().unwrap()]);
    assert!(!o.status.success(), "{}", out_text(&o));
    assert!(
        combined(&o).contains("models[0].policies[0].action"),
        "{}",
        out_text(&o)
    );
}

/// A job that waits for a free slot is durable while it waits: killed then, the daemon still
/// runs it after the restart. (A job that starts at once is made durable by its start.)
#[test]
fn a_job_waiting_for_a_slot_survives_a_kill() {
    let b = Daemon::builder();
    let hook = b.recording_hook("gated", 0);
    let conf = Conf::new()
        .hooks("max_concurrent", "1")
        .hooks("on_interrupted", "\"drop\"")
        .hook("full", &hook.command_toml(&[]));
    let mut d = b.body(conf.toml()).start();
    hook.close_gate();
    d.push_events(&[drift_event("m1", 0.9, 1)]);
    d.wait_for("m1's hook to start", || (hook.started() >= 1).then_some(()));
    d.push_events(&[drift_event("m2", 0.9, 1)]);
    d.wait_job(Some("m2"), "m2's job waiting", |j| j["state"] == "queued");
    d.kill_and_restart();
    hook.open_gate();
    d.wait_for("m2's hook to run after the restart", || {
        (!hook.runs_for("m2").is_empty()).then_some(())
    });
    let jobs = jobs_of(&d, "m2");
    assert_eq!(jobs.len(), 1, "{jobs:?}");
}
