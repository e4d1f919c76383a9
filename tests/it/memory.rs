//! Bounded memory: the daemon's resident set stays bounded under a 10 MiB line, a flood of a
//! million model ids, and a hook that writes 100 MiB. Limits, not timings: the bounds are
//! generous, and the measured figures are printed.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::thread;

use serde_json::json;

use crate::support::*;

/// Well above what the daemon needs (tens of MiB), well below what an unbounded buffer of the
/// inputs below would take.
const HWM_LIMIT_KIB: u64 = 200 * 1024;

/// (VmRSS, VmHWM) of `pid`, in KiB.
fn rss_kib(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[track_caller]
fn check(d: &Daemon, what: &str, baseline: (u64, u64)) {
    let (rss, hwm) = rss_kib(d.pid());
    eprintln!(
        "memory: {what}: VmRSS {:.1} MiB, VmHWM {:.1} MiB (at start: VmRSS {:.1} MiB)",
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        baseline.0 as f64 / 1024.0
    );
    if hwm >= HWM_LIMIT_KIB {
        d.fail(format!(
            "{what}: VmHWM {hwm} KiB over the {HWM_LIMIT_KIB} KiB bound"
        ));
    }
}

#[test]
fn a_10_mib_line_is_refused_in_bounded_memory() {
    let d = Daemon::start_default();
    let base = rss_kib(d.pid());
    // Three at once, each followed by a good line on the same connection.
    let lines: Vec<_> = (0..3)
        .map(|i| {
            let socket = d.socket.clone();
            thread::spawn(move || {
                let mut s = UnixStream::connect(socket).unwrap();
                let mut big = format!("{{\"model_id\":\"big-{i}\",\"meta\":\"").into_bytes();
                big.resize(10 << 20, b'x');
                big.extend_from_slice(b"\"}\n{\"model_id\":\"after-big\"}\n{\"op\":\"flush\"}\n");
                s.set_read_timeout(Some(DEADLINE * 6)).unwrap();
                s.write_all(&big).unwrap();
                let mut r = BufReader::new(s);
                let mut replies = Vec::new();
                for _ in 0..2 {
                    let mut l = String::new();
                    r.read_line(&mut l).unwrap();
                    replies.push(serde_json::from_str::<serde_json::Value>(&l).unwrap());
                }
                replies
            })
        })
        .collect();
    for t in lines {
        let replies = t.join().unwrap();
        assert_error(&replies[0], &["line_too_long"], 1);
        assert_flush(&replies[1], 1, 1);
    }
    assert_eq!(d.events_of("after-big"), 3);
    check(&d, "after three 10 MiB lines", base);
}

#[test]
fn a_million_model_ids_stop_at_max_models_in_bounded_memory() {
    const IDS: usize = 1_000_000;
    const MAX_MODELS: usize = 10_000;
    let d = Daemon::builder()
        .daemon_keys(&format!("max_models = {MAX_MODELS}"))
        .start();
    let base = rss_kib(d.pid());
    let s = UnixStream::connect(&d.socket).unwrap();
    let r = s.try_clone().unwrap();
    r.set_read_timeout(Some(std::time::Duration::from_secs(300)))
        .unwrap();
    // Read the replies while writing, or both sides block on full buffers.
    let reader = thread::spawn(move || {
        let mut r = BufReader::with_capacity(1 << 16, r);
        let mut refused = 0u64;
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap() == 0 {
                panic!("connection closed before the flush reply");
            }
            if line.contains("\"too_many_models\"") {
                refused += 1;
            } else {
                return (refused, line.clone());
            }
        }
    });
    let mut w = std::io::BufWriter::with_capacity(1 << 16, s);
    for i in 0..IDS {
        writeln!(w, "{{\"model_id\":\"flood-{i}\"}}").unwrap();
    }
    w.write_all(b"{\"op\":\"flush\"}\n").unwrap();
    w.flush().unwrap();
    let (refused, flush) = reader.join().unwrap();
    let flush: serde_json::Value = serde_json::from_str(&flush).unwrap();
    assert_flush(&flush, MAX_MODELS as u64, (IDS - MAX_MODELS) as u64);
    // Error replies are best effort: those the reader was too slow for are counted instead.
    let dropped = flush["replies_dropped"].as_u64().unwrap_or(0);
    assert_eq!(refused + dropped, (IDS - MAX_MODELS) as u64, "{flush}");
    let st = d.status_json();
    assert_eq!(st["models"], json!(MAX_MODELS), "{st}");
    check(&d, "after a million model ids (max_models = 10000)", base);
}

#[test]
fn a_hook_writing_100_mib_is_kept_to_a_bounded_tail() {
    let b = Daemon::builder();
    // 100 MiB on stdout, one newline per MiB (so the log gets 100 cut lines, not millions).
    let hook = b.write_script(
        "loud-hook.sh",
        "i=0\nwhile [ $i -lt 100 ]; do head -c 1048575 /dev/zero | tr '\\0' 'x'; echo; i=$((i+1)); done\necho done-marker",
    );
    let body = format!(
        r#"
[hooks]
cooldown_s = 0
retries = 0
full = {{ command = {cmd}, timeout_s = 300 }}

[[models]]
match = "*"

[[models.policies]]
kind = "static_threshold"
max_drift = 1000000.0
"#,
        cmd = toml_cmd(&[hook.to_str().unwrap()])
    );
    let d = b.body(body).start();
    let base = rss_kib(d.pid());
    d.cli_ok(&["trigger", "--create", "loud", "full"]);
    let job = poll_until(std::time::Duration::from_secs(180), || {
        d.history(Some("loud"))
            .into_iter()
            .find(|j| j["state"] == "succeeded" || j["state"] == "failed")
    })
    .unwrap_or_else(|| d.fail("the loud hook never finished"));
    assert_eq!(job["state"], json!("succeeded"), "{job}");
    let tail = job["stdout_tail"].as_str().unwrap();
    assert!(tail.len() <= 4096, "stdout_tail is {} bytes", tail.len());
    assert!(
        tail.ends_with("done-marker\n"),
        "the tail is not the end of the output"
    );
    eprintln!(
        "memory: the 100 MiB hook's stdout_tail is {} bytes",
        tail.len()
    );
    check(&d, "after a hook wrote 100 MiB", base);
}

/// Models that fall behind hold the sender back instead of piling events up in memory: while
/// the model thread is wedged (an injected 4 s hang), a client writing 1.5 million events is
/// blocked after a bounded number, and everything it wrote is applied once the models move
/// again.
#[test]
fn models_that_fall_behind_hold_the_sender_back_in_bounded_memory() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    const EVENTS: usize = 1_500_000;
    const MODELS: usize = 100;
    let d = Daemon::builder()
        .env("VISUTILITY_FAULT_INJECTION", "1")
        .start();
    let base = rss_kib(d.pid());
    let mut c = d.connect();
    c.send_line(&json!({"model_id": "slow", "meta": {"fault": "hang"}}).to_string());
    d.wait_for("the model thread to hang", || {
        d.logs().contains("injected hang").then_some(())
    });
    let hung = std::time::Instant::now();
    let written = Arc::new(AtomicUsize::new(0));
    let s = UnixStream::connect(&d.socket).unwrap();
    let r = s.try_clone().unwrap();
    r.set_read_timeout(Some(std::time::Duration::from_secs(300)))
        .unwrap();
    let writer = {
        let written = written.clone();
        thread::spawn(move || {
            let mut s = s;
            let mut buf = Vec::with_capacity(1 << 16);
            for i in 0..EVENTS {
                writeln!(
                    buf,
                    "{{\"model_id\":\"m-{}\",\"drift_score\":0.1}}",
                    i % MODELS
                )
                .unwrap();
                if buf.len() >= 1 << 16 || i + 1 == EVENTS {
                    s.write_all(&buf).unwrap();
                    buf.clear();
                    written.store(i + 1, Ordering::Relaxed);
                }
            }
            s.write_all(b"{\"op\":\"flush\"}\n").unwrap();
        })
    };
    // While the models are wedged the writer must stall: wait until it stops making progress
    // (or most of the hang has passed), well inside the 4 s hang.
    let mut last = 0;
    let mut still = 0;
    while hung.elapsed() < std::time::Duration::from_millis(2500) && still < 5 {
        thread::sleep(std::time::Duration::from_millis(100));
        let now = written.load(Ordering::Relaxed);
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    let stalled_at = written.load(Ordering::Relaxed);
    eprintln!("backpressure: the writer stalled at {stalled_at} of {EVENTS} events");
    assert!(
        stalled_at < EVENTS / 4,
        "the writer got {stalled_at} of {EVENTS} events in while the models were wedged"
    );
    writer.join().unwrap();
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).unwrap();
    let flush: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_flush(&flush, EVENTS as u64, 0);
    for m in 0..MODELS {
        assert_eq!(
            d.events_of(&format!("m-{m}")),
            (EVENTS / MODELS) as u64,
            "m-{m}"
        );
    }
    check(&d, "after 1.5 million events sent to wedged models", base);
}
