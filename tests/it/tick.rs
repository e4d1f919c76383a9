//! The ingest tick (`[daemon] ingest_tick_ms`): a light connection that streams events is
//! read on a tick shared by all such connections, off the reactor between ticks. Nothing may
//! be lost, reordered or left unanswered by it, and it must really spare the wake-ups.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::*;

/// The quiet body plus two policies whose state depends on every value and its order (a
/// drift window and Page-Hinkley), so two daemons fed the same stream agree only if both
/// applied it whole and in order.
fn ordered_body() -> String {
    format!(
        "{QUIET_BODY}\n[[models.policies]]\nname = \"window\"\nkind = \"drift_window\"\nwindow = 50\nthreshold = 1000000.0\n\n[[models.policies]]\nname = \"ph\"\nkind = \"page_hinkley\"\nmetric = \"drift_score\"\nthreshold = 1000000.0\n"
    )
}

fn daemon(tick_ms: u64) -> Daemon {
    Daemon::builder()
        .daemon_keys(&format!("ingest_tick_ms = {tick_ms}"))
        .body(ordered_body())
        .start()
}

fn event(model: &str, i: u64) -> String {
    // A value that is not monotone in i, so order matters to the window and to Page-Hinkley.
    let drift = ((i * 7919) % 1000) as f64 / 1000.0;
    json!({"model_id": model, "ts": 1_700_000_000.0 + i as f64 * 0.01, "drift_score": drift})
        .to_string()
}

/// Streams `writes` writes of `per_write` events each, round robin over `models`, one write
/// every `every`, on `conns` connections (model `m` on connection `m % conns`); then flushes
/// each connection and returns the events each accepted.
fn stream(
    d: &Daemon,
    conns: usize,
    models: &[String],
    writes: u64,
    per_write: u64,
    every: Duration,
) -> Vec<u64> {
    let mut clients: Vec<Client> = (0..conns).map(|_| d.connect()).collect();
    let mut sent = vec![0u64; conns];
    let mut n = 0u64;
    for _ in 0..writes {
        let mut bufs = vec![Vec::<String>::new(); conns];
        for _ in 0..per_write {
            let m = (n % models.len() as u64) as usize;
            bufs[m % conns].push(event(&models[m], n / models.len() as u64));
            n += 1;
        }
        for (c, (client, lines)) in clients.iter_mut().zip(&bufs).enumerate() {
            if !lines.is_empty() {
                client.send_lines(lines);
                sent[c] += lines.len() as u64;
            }
        }
        thread::sleep(every);
    }
    clients
        .iter_mut()
        .zip(&sent)
        .map(|(c, &s)| {
            let reply = c.flush();
            assert_flush(&reply, s, 0);
            s
        })
        .collect()
}

/// A model's policy state, without what depends on the wall clock.
fn state(d: &Daemon, id: &str) -> Value {
    let m = d
        .model(id)
        .unwrap_or_else(|| d.fail(format!("model {id} missing")));
    json!({"events": m["events"], "policies": m["policies"]})
}

#[test]
fn streamed_events_are_applied_whole_and_in_order_with_or_without_the_tick() {
    let models: Vec<String> = (0..6).map(|i| format!("tick-{i}")).collect();
    let ticked = daemon(25);
    let plain = daemon(0);
    // 3 connections, a write every 2 ms each (well inside a tick: they rest), 4 events a write.
    let a = stream(&ticked, 3, &models, 150, 4, Duration::from_millis(2));
    let b = stream(&plain, 3, &models, 150, 4, Duration::from_millis(2));
    assert_eq!(a, b);
    for id in &models {
        let (s1, s2) = (state(&ticked, id), state(&plain, id));
        assert_eq!(s1["events"], json!(100), "{id}: {s1}");
        assert!(
            s1["policies"]
                .as_array()
                .is_some_and(|p| p.len() == 3 && p.iter().all(|p| p["state"].is_object())),
            "{id}: {s1}"
        );
        assert_eq!(
            s1, s2,
            "{id}: the ticked daemon's state differs from the plain one's"
        );
    }
}

#[test]
fn a_flush_after_streaming_is_answered_and_counts_every_event() {
    let d = daemon(50);
    let mut c = d.connect();
    for i in 0..100 {
        c.send_line(&event("flushy", i));
        thread::sleep(Duration::from_millis(1));
    }
    // The connection rests now: its flush waits for the next tick, not for more data.
    let t = Instant::now();
    let reply = c.flush();
    assert_flush(&reply, 100, 0);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "flush took {:?}",
        t.elapsed()
    );
    // Streaming again after the flush, and a second flush.
    for i in 100..150 {
        c.send_line(&event("flushy", i));
        thread::sleep(Duration::from_millis(1));
    }
    // (A connection's flush replies count from its start.)
    assert_flush(&c.flush(), 150, 0);
    assert_eq!(d.events_of("flushy"), 150);
}

#[test]
fn a_bad_line_while_resting_is_answered_and_the_stream_goes_on() {
    let d = daemon(25);
    let mut c = d.connect();
    for i in 0..60 {
        c.send_line(&event("steady", i));
        if i == 30 {
            // Line 32: after 31 good ones.
            c.send_line(r#"{"model_id": "steady", "drift_score": "high"}"#);
        }
        thread::sleep(Duration::from_millis(2));
    }
    let (reply, errors) = c.flush_with_errors();
    assert_flush(&reply, 60, 1);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_error(&errors[0], &["bad_field"], 32);
    assert_eq!(d.events_of("steady"), 60);
}

#[test]
fn a_line_split_across_ticks_is_put_together() {
    let d = daemon(25);
    let mut c = d.connect();
    for i in 0..40 {
        c.send_line(&event("split", i));
        thread::sleep(Duration::from_millis(2));
    }
    // Half a line, three ticks of nothing, then the rest.
    let line = event("split", 40);
    let (head, tail) = line.split_at(line.len() / 2);
    c.send_raw(head.as_bytes());
    thread::sleep(Duration::from_millis(80));
    c.send_raw(tail.as_bytes());
    c.send_raw(b"\n");
    assert_flush(&c.flush(), 41, 0);
    assert_eq!(d.events_of("split"), 41);
}

#[test]
fn a_client_that_closes_while_resting_is_let_go_and_its_events_kept() {
    let d = daemon(25);
    {
        let mut s = UnixStream::connect(&d.socket).unwrap();
        for i in 0..50 {
            let mut b = event("closer", i).into_bytes();
            b.push(b'\n');
            s.write_all(&b).unwrap();
            thread::sleep(Duration::from_millis(2));
        }
        // Dropped without a flush: the daemon reads the rest at its next tick, then the EOF.
    }
    d.wait_for("the closed connection's events applied", || {
        (d.events_of("closer") == 50).then_some(())
    });
    d.wait_for("the connection gone", || {
        (d.status_json()["connections"] == json!(0)).then_some(())
    });
}

#[test]
fn sigterm_reads_what_resting_connections_hold_and_keeps_it() {
    let mut d = daemon(200);
    let models: Vec<String> = (0..4).map(|i| format!("term-{i}")).collect();
    let mut clients: Vec<Client> = (0..2).map(|_| d.connect()).collect();
    for n in 0..40 {
        for (m, id) in models.iter().enumerate() {
            clients[m % 2].send_line(&event(id, n));
        }
        thread::sleep(Duration::from_millis(2));
    }
    // With a 200 ms tick, the last writes are still in the sockets, unread, when the signal
    // comes: shutdown reads them before the connections close.
    d.sigterm();
    let status = d.wait_exit();
    assert!(status.success(), "exit: {status:?}");
    d.restart();
    for id in &models {
        assert_eq!(d.events_of(id), 40, "{id}");
    }
}

/// Voluntary context switches of every thread of `pid` (its wake-ups).
fn wakeups(pid: i32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status =
            std::fs::read_to_string(task.unwrap().path().join("status")).unwrap_or_default();
        for line in status.lines() {
            if let Some(v) = line.strip_prefix("voluntary_ctxt_switches:") {
                total += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

#[test]
fn a_streaming_client_wakes_the_daemon_per_tick_not_per_write() {
    // A 100 ms tick and a slow flush interval, so that the daemon's other wake-ups are few.
    let d = Daemon::builder()
        .daemon_keys("ingest_tick_ms = 100\nflush_interval_ms = 1000")
        .body(ordered_body())
        .start();
    let mut c = d.connect();
    // Warm up: the model is created and loaded, the connection rests.
    for i in 0..20 {
        c.send_line(&event("waker", i));
        thread::sleep(Duration::from_millis(2));
    }
    let before = wakeups(d.pid());
    let t = Instant::now();
    let mut writes = 0u64;
    while t.elapsed() < Duration::from_secs(2) {
        c.send_line(&event("waker", 20 + writes));
        writes += 1;
        thread::sleep(Duration::from_millis(2));
    }
    let woke = wakeups(d.pid()) - before;
    let secs = t.elapsed().as_secs_f64();
    assert_flush(&c.flush(), 20 + writes, 0);
    // About 10 ticks a second, the flusher's rounds and the daemon's own once-a-second work;
    // a read per write would be one wake-up per write (hundreds).
    assert!(
        (woke as f64) < writes as f64 / 4.0,
        "{woke} wake-ups in {secs:.1} s for {writes} writes"
    );
}

/// `(wchar, voluntary switches of the daemon's own threads)`: sled's I/O pool and jemalloc's
/// background threads are left out (their waits are theirs; see the README's idle figures).
fn own_activity(pid: i32) -> (u64, u64) {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    let wchar = io
        .lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    let mut switches = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.starts_with("sled-io") || comm.starts_with("jemalloc") {
            continue;
        }
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        for line in status.lines() {
            if let Some(v) = line.strip_prefix("voluntary_ctxt_switches:") {
                switches += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    (wchar, switches)
}

#[test]
fn an_idle_daemon_neither_writes_nor_wakes_itself_after_a_stream() {
    let d = daemon(25);
    let mut c = d.connect();
    // A stream that rests on the tick, then silence with the connection open.
    for i in 0..200 {
        c.send_line(&event("quiet", i));
        thread::sleep(Duration::from_millis(2));
    }
    assert_flush(&c.flush(), 200, 0);
    // Settling: the connection leaves the tick after 8 empty ticks, the tick's timer closes,
    // the rate sample goes from every second to every ten, the flusher's last round ends.
    thread::sleep(Duration::from_millis(2500));
    let (w0, s0) = own_activity(d.pid());
    thread::sleep(Duration::from_secs(10));
    let (w1, s1) = own_activity(d.pid());
    assert_eq!(w1 - w0, 0, "bytes written in 10 s of idle");
    // The ten-second rate sample, once or twice: one wake-up each.
    assert!(
        s1 - s0 <= 2,
        "{} wake-ups of the daemon's own threads in 10 s of idle",
        s1 - s0
    );
}
