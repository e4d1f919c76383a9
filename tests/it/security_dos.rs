//! Security review, finding 4: a model server must not be able to take the service down.
//! Clients holding every connection slot cannot stop the watchdog heartbeat; one uid cannot
//! take every slot; an unfinished line is bounded in time and, across connections, in bytes;
//! the descriptor limit is raised so `status` still answers under a connection flood.

use std::io::{Read, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

/// Watchdog pings (`WATCHDOG=1`) received on `sock` within `window`.
fn pings(sock: &UnixDatagram, window: Duration) -> usize {
    let end = Instant::now() + window;
    let mut n = 0;
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        if let Ok(len) = sock.recv(&mut buf)
            && String::from_utf8_lossy(&buf[..len])
                .lines()
                .any(|l| l == "WATCHDOG=1")
        {
            n += 1;
        }
    }
    n
}

/// Everything the daemon sends on `s` until EOF or `deadline` (then `eof` is false).
fn read_to_close(s: &mut UnixStream, deadline: Duration) -> (String, bool) {
    let end = Instant::now() + deadline;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), true),
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), false)
}

fn replies(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A connection holding `n` bytes of a line that never ends.
fn hold_partial(d: &Daemon, n: usize) -> UnixStream {
    let mut s = UnixStream::connect(&d.socket).unwrap();
    let mut line = br#"{"model_id":"held","meta":{"pad":""#.to_vec();
    line.resize(n, b'x');
    s.write_all(&line).unwrap();
    s
}

#[test]
fn finding_4_clients_holding_every_slot_do_not_stop_the_watchdog() {
    let mut b = Daemon::builder().daemon_keys(
        "max_connections = 20\nmax_connections_per_uid = 0\npartial_line_timeout_s = 0",
    );
    let path = b.path("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    b = b
        .env("NOTIFY_SOCKET", path.to_str().unwrap())
        // A ping every 0.2 s.
        .env("WATCHDOG_USEC", "400000");
    let d = b.start();
    assert!(
        pings(&sock, Duration::from_secs(1)) >= 2,
        "no pings while healthy\n{}",
        d.logs()
    );
    // Every slot held by a connection with an unfinished 30 KB line.
    let held: Vec<UnixStream> = (0..20).map(|_| hold_partial(&d, 30_000)).collect();
    d.wait_for("all 20 connections to be served", || {
        (d.status_json()["connections"] == json!(20)).then_some(())
    });
    // One more client is refused: the slots really are all taken.
    let mut extra = UnixStream::connect(&d.socket).unwrap();
    let (text, eof) = read_to_close(&mut extra, DEADLINE);
    assert!(eof && text.contains("too_many_connections"), "{text:?}");
    // The heartbeat does not need a slot: pings go on.
    let n = pings(&sock, Duration::from_secs(2));
    assert!(
        n >= 5,
        "only {n} watchdog pings in 2 s while clients held every slot\n{}",
        d.logs()
    );
    drop(held);
}

#[test]
fn finding_4_one_uid_cannot_take_every_connection() {
    let d = Daemon::builder()
        .daemon_keys("max_connections = 100\nmax_connections_per_uid = 5")
        .start();
    d.wait_for("the harness's own connections to close", || {
        (d.status_json()["connections"] == json!(0)).then_some(())
    });
    let held: Vec<UnixStream> = (0..5)
        .map(|_| UnixStream::connect(&d.socket).unwrap())
        .collect();
    d.wait_for("5 connections to be served", || {
        (d.status_json()["connections"] == json!(5)).then_some(())
    });
    // The sixth of the same uid is told why and closed.
    let mut sixth = UnixStream::connect(&d.socket).unwrap();
    let (text, eof) = read_to_close(&mut sixth, DEADLINE);
    let r = replies(&text);
    assert!(eof, "the connection over the per-uid limit stayed open");
    assert_eq!(r.len(), 1, "{text:?}");
    assert_eq!(r[0]["error"], json!("too_many_connections"), "{text:?}");
    let detail = r[0]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("max_connections_per_uid") && detail.contains("uid 0"),
        "{detail:?}"
    );
    // Another uid is served meanwhile (the socket opened to it for this test).
    let other = 47_113;
    let open = |p: &std::path::Path, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    open(d.dir(), 0o755);
    open(&d.socket, 0o666);
    let events = d.sb.write(
        "other.ndjson",
        "{\"model_id\":\"other-uid\",\"drift_score\":0.1}\n",
    );
    let mut push = std::process::Command::new("setpriv");
    push.args([
        &format!("--reuid={other}"),
        &format!("--regid={other}"),
        "--clear-groups",
        bin(),
        "push",
        "--socket",
    ])
    .arg(&d.socket)
    .arg(&events);
    let out = run_with_timeout(push, None, DEADLINE).unwrap_or_else(|e| d.fail(e));
    assert!(
        out.status.success(),
        "another uid was not served while uid 0 held its limit: {}",
        combined(&out)
    );
    assert_eq!(d.events_of("other-uid"), 1);
    // Once one closes, the first uid gets a slot again.
    drop(held);
    let mut c = d.connect();
    c.send_line(&json!({"model_id": "m", "drift_score": 0.1}).to_string());
    c.flush();
    let refused = d
        .cli_ok(&["metrics"])
        .lines()
        .find(|l| l.contains("reason=\"too_many_connections_per_uid\""))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(refused.ends_with(" 1"), "{refused:?}");
}

#[test]
fn finding_4_a_line_left_unfinished_is_closed_after_partial_line_timeout_s() {
    let d = Daemon::builder()
        .daemon_keys("partial_line_timeout_s = 1")
        .start();
    // A slow loris: a byte every 200 ms, never a newline. The time counts from the line's
    // first byte, so trickling does not extend it.
    let mut loris = UnixStream::connect(&d.socket).unwrap();
    let started = Instant::now();
    let mut closed = None;
    for b in br#"{"model_id":"loris","drift_score":0.1"#.iter().cycle().take(100) {
        if loris.write_all(&[*b]).is_err() {
            closed = Some(started.elapsed());
            break;
        }
        let (text, eof) = read_to_close(&mut loris, Duration::from_millis(200));
        if eof {
            closed = Some(started.elapsed());
            let r = replies(&text);
            assert_eq!(r.len(), 1, "{text:?}");
            assert_eq!(r[0]["error"], json!("partial_line_timeout"), "{text:?}");
            assert!(
                r[0]["detail"]
                    .as_str()
                    .is_some_and(|s| s.contains("partial_line_timeout_s")),
                "{text:?}"
            );
            break;
        }
    }
    let closed = closed.expect("a line unfinished for 20 s was never closed");
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_secs(8),
        "closed after {closed:?}"
    );
    // A slow client that finishes its lines is not closed, and nothing of the loris counted.
    let mut c = d.connect();
    for _ in 0..3 {
        c.send_line(&json!({"model_id": "slow", "drift_score": 0.1}).to_string());
        std::thread::sleep(Duration::from_millis(700));
    }
    assert_eq!(c.flush()["accepted"], json!(3));
    assert_eq!(d.events_of("loris"), 0);
}

#[test]
fn finding_4_unfinished_lines_are_bounded_in_bytes_across_connections() {
    // 64 KiB for all unfinished lines together; each client holds 20 KB: three fit.
    let d = Daemon::builder()
        .daemon_keys(
            "partial_line_budget_bytes = 65536\npartial_line_timeout_s = 0\nmax_connections_per_uid = 0",
        )
        .start();
    let mut held: Vec<UnixStream> = Vec::new();
    for _ in 0..12 {
        held.push(hold_partial(&d, 20_000));
        // One at a time, so which ones go over the budget is certain.
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut overloaded = 0;
    let mut open = 0;
    for s in &mut held {
        let (text, eof) = read_to_close(s, Duration::from_millis(500));
        if eof {
            let r = replies(&text);
            assert_eq!(r.len(), 1, "{text:?}");
            assert_eq!(r[0]["error"], json!("overloaded"), "{text:?}");
            overloaded += 1;
        } else {
            assert_eq!(text, "", "an open connection got a reply");
            open += 1;
        }
    }
    assert_eq!(open, 3, "{overloaded} closed, {open} open\n{}", d.logs());
    // Whole lines are still served, and the held ones may finish theirs.
    let mut c = d.connect();
    c.send_line(&json!({"model_id": "whole", "drift_score": 0.1}).to_string());
    assert_eq!(c.flush()["accepted"], json!(1));
    let metrics = d.cli_ok(&["metrics"]);
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("reason=\"overloaded\"") && l.ends_with(" 9")),
        "{metrics}"
    );
}

#[test]
fn finding_4_the_soft_descriptor_limit_is_raised_so_status_answers_under_a_flood() {
    let d = Daemon::builder()
        .nofile_soft(128)
        .daemon_keys("max_connections = 1024\nmax_connections_per_uid = 0")
        .start();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(nums[0], nums[1], "soft limit not raised: {line}");
    // More connections than the old soft limit: every one is served and status answers.
    let held: Vec<UnixStream> = (0..300)
        .map(|_| UnixStream::connect(&d.socket).unwrap())
        .collect();
    d.wait_for("300 connections to be served", || {
        (d.status_json()["connections"] == json!(300)).then_some(())
    });
    drop(held);
}

/// Security review, finding 10: one extreme value must not blind a detector for good.
#[test]
fn finding_10_one_extreme_value_is_refused_and_a_later_shift_still_fires() {
    let d = Daemon::builder()
        .body(
            r#"
[[models]]
match = "*"
[[models.policies]]
name = "adwin-value"
kind = "adwin"
metric = "value"
[[models.policies]]
name = "cusum-value"
kind = "cusum"
metric = "value"
"#,
        )
        .start();
    let mut c = d.connect();
    let ev = |v: f64| json!({"model_id": "m", "value": v}).to_string();
    // Stable around 0 (alternating ±1), one extreme value, more stable, then a 10-sigma shift.
    let mut lines: Vec<String> = (0..400)
        .map(|i| ev(if i % 2 == 0 { 1.0 } else { -1.0 }))
        .collect();
    lines.push(r#"{"model_id":"m","value":1.7976931348623157e308}"#.to_owned());
    lines.extend((0..100).map(|i| ev(if i % 2 == 0 { 1.0 } else { -1.0 })));
    c.send_lines(&lines);
    assert_eq!(c.flush()["accepted"], json!(501));
    let decisions = |d: &Daemon| -> Vec<String> {
        d.cli_ok(&["metrics"])
            .lines()
            .filter(|l| {
                l.starts_with("visutility_decisions_total{") && l.contains("model_id=\"m\"")
            })
            .map(str::to_owned)
            .collect()
    };
    let before = decisions(&d);
    c.send_lines(&(0..300).map(|_| ev(10.0)).collect::<Vec<_>>());
    assert_eq!(c.flush()["accepted"], json!(801));
    let after = decisions(&d);
    for policy in ["adwin-value", "cusum-value"] {
        let count = |v: &[String]| {
            v.iter()
                .filter(|l| l.contains(&format!("policy=\"{policy}\"")))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        };
        assert!(
            count(&after) > count(&before),
            "{policy} did not fire on a 10-sigma shift after one extreme value: {after:?}\n{}",
            d.logs()
        );
    }
    // The refusal is visible per policy, in `models --json` and the metrics.
    let models = d.models_json();
    let policies = &models[0]["policies"];
    for p in policies.as_array().unwrap() {
        assert_eq!(p["values_rejected"], json!(1), "{p}");
        let state = p["summary"].as_str().unwrap();
        assert!(!state.contains("inf") && !state.contains("NaN"), "{state}");
        // Issue 13.4: the named numbers are numbers (a non-finite one is left out).
        for (k, v) in p["state"].as_object().unwrap() {
            assert!(v.as_f64().is_some_and(f64::is_finite), "{k}: {v}");
        }
    }
    let metrics = d.cli_ok(&["metrics"]);
    assert!(
        metrics.contains(
            "visutility_policy_values_rejected_total{model_id=\"m\",policy=\"cusum-value\"} 1"
        ),
        "{metrics}"
    );
}

/// Security review, finding 11: `max_models` counts the models in the store, so restarts do
/// not let the store (and the per-model series) grow by `max_models` each time.
#[test]
fn finding_11_max_models_counts_stored_models_across_restarts() {
    let mut d = Daemon::builder().daemon_keys("max_models = 3").start();
    let mut c = d.connect();
    for m in ["a", "b", "c"] {
        c.send_json(&json!({"model_id": m, "drift_score": 0.1}));
    }
    assert_eq!(c.flush()["accepted"], json!(3));
    drop(c);
    d.kill_and_restart();
    // The stored models are counted just after READY, on a thread of their own.
    d.wait_for("the stored models to be counted", || {
        (d.status_json()["models"] == json!(3)).then_some(())
    });
    let mut c = d.connect();
    c.send_json(&json!({"model_id": "d", "drift_score": 0.1}));
    c.send_json(&json!({"model_id": "a", "drift_score": 0.1}));
    let (flush, errors) = c.flush_with_errors();
    assert_flush(&flush, 1, 1);
    assert_error(&errors[0], &["too_many_models"], 1);
    assert_eq!(d.events_of("a"), 2);
    assert_eq!(d.status_json()["models"], json!(3));
}
