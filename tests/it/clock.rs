//! Honest time on hosts without a real-time clock: the daemon's wall clock is moved with
//! libfaketime (Debian's `faketime`, which `.ci/run` installs), the boot clock is left alone
//! (`DONT_FAKE_MONOTONIC=1`), and no jump of the wall clock, across a restart or while
//! running, may stretch a cooldown, a retry's backoff or the loop guard's window.
//!
//! Without libfaketime the tests say so and pass, unless `VISUTILITY_REQUIRE_TOOLS` is set
//! (`.ci/run` sets it, so CI cannot skip them).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

const MONTH_S: f64 = 30.0 * 86_400.0;

fn libfaketime() -> Option<PathBuf> {
    let found = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists());
    if found.is_none() {
        if std::env::var_os("VISUTILITY_REQUIRE_TOOLS").is_some() {
            panic!("libfaketime is not installed (apt-get install faketime)");
        }
        eprintln!("SKIPPED: libfaketime is not installed (apt-get install faketime; .ci/run does)");
    }
    found
}

/// The daemon's next start runs with its wall clock moved by `spec` (libfaketime's syntax:
/// "-30d", "+30d"), or, with `None`, on the real clock.
fn fake_clock(d: &mut Daemon, lib: &Path, spec: Option<&str>) {
    match spec {
        Some(spec) => {
            d.set_env("LD_PRELOAD", Some(&lib.display().to_string()));
            d.set_env("FAKETIME", Some(spec));
            d.set_env("DONT_FAKE_MONOTONIC", Some("1"));
        }
        None => {
            for k in ["LD_PRELOAD", "FAKETIME", "DONT_FAKE_MONOTONIC"] {
                d.set_env(k, None);
            }
        }
    }
}

/// A rule with one static threshold: drift above 0.3 asks for a full retrain, accuracy below
/// 0.9 for a fine-tune.
fn config(hooks: &str) -> String {
    format!(
        "[hooks]\nmax_concurrent = 4\nretries = 0\nretry_backoff_s = 0\n{hooks}\n\
         [[models]]\nmatch = \"*\"\nreset_on_retrain = false\nloop_window_s = 0\n\
         [[models.policies]]\nname = \"limits\"\nkind = \"static_threshold\"\nmax_drift = 0.3\nmin_accuracy = 0.9\n"
    )
}

/// [`config`] with a 5 s cooldown and `hook` as the full retrain.
fn cooldown_5s(hook: &Hook) -> String {
    config(&format!(
        "cooldown_s = 5\nfull = {{ command = {}, timeout_s = 60 }}",
        hook.command_toml(&[])
    ))
}

/// A drifting event for m1, and its retrain job once it succeeded.
fn first_retrain(d: &Daemon) -> Value {
    d.push_events(&[drift_event("m1", 0.9, 1)]);
    d.wait_job(Some("m1"), "the first retrain succeeded", |j| {
        j["state"] == "succeeded"
    })
}

fn low_accuracy(model: &str, seq: i64) -> String {
    json!({"model_id": model, "accuracy": 0.5, "meta": {"seq": seq}}).to_string()
}

/// Sends a drifting event for `model` every 200 ms until its `n`th job exists; returns the
/// jobs (newest first) and how long it took.
fn drive_until_jobs(
    d: &Daemon,
    model: &str,
    n: usize,
    event: impl Fn(i64) -> String,
) -> (Vec<Value>, Duration) {
    let t0 = Instant::now();
    let mut seq = 1_000;
    let jobs = d.wait_for(&format!("job {n} of {model}"), || {
        d.push_events(&[event(seq)]);
        seq += 1;
        let jobs = d.history(Some(model));
        if jobs.len() >= n {
            return Some(jobs);
        }
        std::thread::sleep(Duration::from_millis(200));
        None
    });
    (jobs, t0.elapsed())
}

fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing: {v}"))
}

#[test]
fn a_cooldown_begun_before_a_restart_with_the_clock_30_days_behind_ends_on_time() {
    let Some(lib) = libfaketime() else { return };
    let b = Daemon::builder();
    let hook = b.recording_hook("retrain", 0);
    let body = cooldown_5s(&hook);
    let mut d = b.body(body).start();
    let first = first_retrain(&d);
    let ended = f(&first, "ended");

    // Restarted with the wall clock 30 days behind (a board without an RTC after a reboot).
    d.sigterm();
    d.wait_exit();
    fake_clock(&mut d, &lib, Some("-30d"));
    d.restart();
    let (jobs, took) = drive_until_jobs(&d, "m1", 2, |s| drift_event("m1", 0.9, s));
    let second = &jobs[0];
    assert!(
        f(second, "created") < ended - MONTH_S + 3_600.0,
        "the daemon's clock was not 30 days behind (libfaketime not in effect?): {second}"
    );
    assert!(
        took < Duration::from_secs(15),
        "the second retrain came {took:?} after the restart (cooldown_s = 5)"
    );
    let runs = d.wait_runs_for(&hook, "m1", 2);
    assert!(runs[1].seq().unwrap() >= 1_000, "{runs:?}");
}

#[test]
fn a_cooldown_begun_30_days_ahead_ends_on_time_once_the_clock_is_corrected() {
    let Some(lib) = libfaketime() else { return };
    let b = Daemon::builder();
    let hook = b.recording_hook("retrain", 0);
    let body = cooldown_5s(&hook);
    let mut d = b
        .body(body)
        .env("LD_PRELOAD", &lib.display().to_string())
        .env("FAKETIME", "+30d")
        .env("DONT_FAKE_MONOTONIC", "1")
        .start();
    let first = first_retrain(&d);
    let ended = f(&first, "ended");

    // NTP corrects the clock; the daemon restarts on the right time.
    d.sigterm();
    d.wait_exit();
    fake_clock(&mut d, &lib, None);
    d.restart();
    let (jobs, took) = drive_until_jobs(&d, "m1", 2, |s| drift_event("m1", 0.9, s));
    assert!(
        f(&jobs[0], "created") < ended - MONTH_S + 3_600.0,
        "the first run's clock was not 30 days ahead: {first}"
    );
    assert!(
        took < Duration::from_secs(15),
        "the second retrain came {took:?} after the restart (cooldown_s = 5)"
    );
}

/// The daemon's wall clock moves while it runs: libfaketime reads its offset from a file
/// (again every second).
struct MovingClock {
    spec: PathBuf,
}

impl MovingClock {
    fn start(b: DaemonBuilder, lib: &Path, body: String) -> (Daemon, MovingClock) {
        let spec = b.path("faketime.spec");
        std::fs::write(&spec, "+0\n").unwrap();
        let d = b
            .body(body)
            .env("LD_PRELOAD", &lib.display().to_string())
            .env("FAKETIME_TIMESTAMP_FILE", &spec.display().to_string())
            .env("FAKETIME_CACHE_DURATION", "1")
            .env("DONT_FAKE_MONOTONIC", "1")
            .start();
        (d, MovingClock { spec })
    }

    fn set(&self, offset: &str) {
        std::fs::write(&self.spec, format!("{offset}\n")).unwrap();
    }
}

fn clock_jumps(d: &Daemon) -> u64 {
    d.status_json()["clock"]["jumps"].as_u64().unwrap_or(0)
}

#[test]
fn a_jump_while_running_is_counted_and_logged_once_and_stretches_no_cooldown() {
    let Some(lib) = libfaketime() else { return };
    let b = Daemon::builder();
    let hook = b.recording_hook("retrain", 0);
    let body = cooldown_5s(&hook);
    let (d, clock) = MovingClock::start(b, &lib, body);
    let first = first_retrain(&d);
    assert_eq!(clock_jumps(&d), 0, "no jump yet");

    clock.set("-30d");
    let (jobs, took) = drive_until_jobs(&d, "m1", 2, |s| drift_event("m1", 0.9, s));
    assert!(
        f(&jobs[0], "created") < f(&first, "ended") - MONTH_S + 3_600.0,
        "the clock did not move: {}",
        jobs[0]
    );
    assert!(
        took < Duration::from_secs(15),
        "the second retrain came {took:?} after the jump (cooldown_s = 5)"
    );
    // Seen within a tick (once a second while events arrive), counted and logged once.
    d.wait_for("the jump counted", || (clock_jumps(&d) >= 1).then_some(()));
    std::thread::sleep(Duration::from_secs(3));
    let status = d.status_json();
    assert_eq!(status["clock"]["jumps"], 1, "{status}");
    let size = status["clock"]["last_jump_s"].as_f64().unwrap();
    assert!((size + MONTH_S).abs() < 60.0, "jump of {size} s");
    let lines = d.log_lines();
    let logged: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("the wall clock jumped"))
        .collect();
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(logged[0].contains("jump_s=-259"), "{}", logged[0]);
    let table = d.cli_ok(&["status"]);
    assert!(
        table.contains("1 wall clock jump seen; the last 30d 0h back"),
        "{table}"
    );
    let metrics = d.cli_ok(&["metrics"]);
    assert!(
        metrics.contains("\nvisutility_clock_jumps_total 1\n"),
        "{metrics}"
    );
}

#[test]
fn retry_backoff_and_the_loop_guard_window_survive_a_jump_while_running() {
    let Some(lib) = libfaketime() else { return };
    let b = Daemon::builder();
    // Fails its first run, succeeds after.
    let flaky = b.write_script(
        "flaky",
        &format!(
            "#!/bin/sh\nset -e\nn=$(cat {c} 2>/dev/null || echo 0)\necho $((n+1)) > {c}\nif [ \"$n\" = 0 ]; then exit 1; fi\nexit 0\n",
            c = sh_quote(&b.path("flaky.count").display().to_string())
        ),
    );
    let fine = b.recording_hook("fine", 0);
    let body = format!(
        "[hooks]\nmax_concurrent = 4\ncooldown_s = 0\nretries = 1\nretry_backoff_s = 3\n\
         full = {{ command = [{}], timeout_s = 60 }}\nfine_tune = {{ command = {}, timeout_s = 60 }}\n\
         [[models]]\nmatch = \"*\"\nreset_on_retrain = false\nloop_window_s = 4\n\
         [[models.policies]]\nname = \"limits\"\nkind = \"static_threshold\"\nmax_drift = 0.3\nmin_accuracy = 0.9\n",
        toml_str(flaky.display().to_string()),
        fine.command_toml(&[])
    );
    let (d, clock) = MovingClock::start(b, &lib, body);

    // Retry backoff: the first run fails; the clock goes back 30 days; the retry runs after
    // its 3 to 3.75 s backoff all the same.
    d.push_events(&[drift_event("r1", 0.9, 1)]);
    d.wait_job(Some("r1"), "the first attempt failed", |j| {
        j["state"] == "queued" && j["attempts"] == 1
    });
    clock.set("-30d");
    let t0 = Instant::now();
    let job = d.wait_job(Some("r1"), "the retry succeeded", |j| {
        j["state"] == "succeeded"
    });
    assert_eq!(job["attempts"], 2, "{job}");
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());

    // The loop guard: with the clock right again, a fine-tune succeeds; the clock goes back
    // 30 days; the same policy fires again 4 s (loop_window_s) later on the boot clock: a
    // plain fine-tune, not a climb to a full retrain (by the wall clock the success would
    // lie 30 days in the future).
    clock.set("+0");
    std::thread::sleep(Duration::from_millis(1_500));
    d.push_events(&[low_accuracy("g1", 1)]);
    d.wait_job(Some("g1"), "the fine-tune succeeded", |j| {
        j["state"] == "succeeded"
    });
    let done = Instant::now();
    clock.set("-30d");
    std::thread::sleep(
        Duration::from_millis(4_500).saturating_sub(done.elapsed()) + Duration::from_millis(200),
    );
    let (jobs, _) = drive_until_jobs(&d, "g1", 2, |s| low_accuracy("g1", s));
    assert_eq!(
        jobs[0]["action"], "fine_tune",
        "the loop guard held past its window: {}",
        jobs[0]
    );
    assert!(
        !jobs[0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("loop guard"),
        "{}",
        jobs[0]
    );
    assert!(clock_jumps(&d) >= 1, "{}", d.status_json());
}
