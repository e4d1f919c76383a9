//! Hostile and broken clients: they can neither crash the daemon nor touch another model's
//! state.
//!
//! - Any bytes on the socket: per line, acceptance or exactly one error reply with that line's
//!   number, the connection stays usable, and the counts of the flush add up (property test
//!   against a real daemon, the library's own decoder as the oracle).
//! - Slow clients do not block others; idle connections are closed after `idle_timeout_s`.
//! - Thousands of connections at once: `max_connections` served, the rest refused clearly.
//! - A flood of new model ids stops at `max_models`; existing models carry on.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};
use visutility::protocol::{self, Line, Op};

use crate::support::*;

const MAX_LINE: usize = 1024;
const POOL: [&str; 4] = ["pt-a", "pt-b", "pt/c:1", "pt.d"];

/// One line of a hostile payload (never contains `\n`).
fn line_strategy() -> impl Strategy<Value = Vec<u8>> {
    let valid = (
        0..POOL.len(),
        proptest::option::of(-1e6f64..1e6),
        proptest::option::of(any::<bool>()),
        proptest::option::of("[a-z]{1,8}"),
    )
        .prop_map(|(m, v, e, meta)| {
            let mut o = json!({"model_id": POOL[m]});
            if let Some(v) = v {
                o["value"] = json!(v);
            }
            if let Some(e) = e {
                o["error"] = json!(e);
            }
            if let Some(s) = meta {
                o["meta"] = json!({"k": s, "deep": [1, {"x": null}]});
            }
            o.to_string().into_bytes()
        });
    let mutated = (
        valid.clone(),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
    )
        .prop_map(|(mut l, edits)| {
            for (i, b) in edits {
                let i = i % (l.len() + 1);
                match b % 3 {
                    0 if i < l.len() => l[i] = b,
                    1 => l.insert(i, b),
                    _ if i < l.len() => {
                        l.remove(i);
                    }
                    _ => {}
                }
            }
            l
        });
    let bytes = proptest::collection::vec(any::<u8>(), 0..300);
    let jsonish = proptest::collection::vec(
        prop_oneof![
            Just(&b"{"[..]),
            Just(&b"}"[..]),
            Just(&b"\""[..]),
            Just(&b":"[..]),
            Just(&b","[..]),
            Just(&b"model_id"[..]),
            Just(&b"op"[..]),
            Just(&b"ping"[..]),
            Just(&b"metrics"[..]),
            Just(&b"1e999"[..]),
            Just(&b"\\u0000"[..]),
            Just(&b"\xff"[..]),
            Just(&b" "[..]),
            Just(&b"\r"[..]),
            Just(&b"null"[..]),
            Just(&b"pt-a"[..]),
        ],
        0..24,
    )
    .prop_map(|parts| parts.concat());
    prop_oneof![
        4 => valid,
        3 => mutated,
        2 => bytes,
        2 => jsonish,
        1 => Just(b"{\"op\":\"ping\"}".to_vec()),
        1 => Just(b" \t \r".to_vec()),
        1 => (MAX_LINE - 40..MAX_LINE + 200).prop_map(|n| format!("{{\"model_id\":\"pt-a\",\"meta\":\"{}\"}}", "x".repeat(n)).into_bytes()),
    ]
    .prop_map(|mut l: Vec<u8>| {
        l.retain(|&b| b != b'\n');
        l
    })
}

/// What the daemon must answer for one line, per the library's decoder.
enum Expect {
    Accept(String),
    Reject(&'static str),
    Ping,
    Nothing,
}

fn expect(line: &[u8]) -> Expect {
    let body = line.strip_suffix(b"\r").unwrap_or(line);
    if body.len() > MAX_LINE {
        return Expect::Reject("line_too_long");
    }
    match protocol::decode_line(body) {
        Ok(Line::Event(ev)) => Expect::Accept(ev.model_id.to_owned()),
        Ok(Line::Op(Op::Ping)) => Expect::Ping,
        // A generated flush would end the case early; the generator cannot make one.
        Ok(Line::Op(_)) | Ok(Line::Empty) => Expect::Nothing,
        Err(e) => Expect::Reject(e.code.as_str()),
    }
}

#[test]
fn any_bytes_get_acceptance_or_one_error_per_line() {
    let d = Daemon::builder()
        .daemon_keys(&format!("max_line_bytes = {MAX_LINE}"))
        .start();
    // Totals over the cases (the runner takes an `Fn`).
    let expected_events: RefCell<BTreeMap<String, u64>> = RefCell::default();
    let lines_tried = Cell::new(0usize);
    let rejected_total = Cell::new(0u64);
    let mut runner = TestRunner::new(Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = proptest::collection::vec(line_strategy(), 1..40);
    let result = runner.run(&strategy, |lines| {
        let mut c = d.connect();
        let mut payload = Vec::new();
        for l in &lines {
            payload.extend_from_slice(l);
            payload.push(b'\n');
        }
        c.send_raw(&payload);
        let (reply, before) = c.flush_with_errors();
        let mut want_errors = BTreeMap::new();
        let mut want_accepted = 0u64;
        let mut want_pings = 0usize;
        let mut accepted_here: BTreeMap<String, u64> = BTreeMap::new();
        for (i, l) in lines.iter().enumerate() {
            match expect(l) {
                Expect::Accept(m) => {
                    want_accepted += 1;
                    *accepted_here.entry(m).or_default() += 1;
                }
                Expect::Reject(code) => {
                    want_errors.insert(i as u64 + 1, code);
                }
                Expect::Ping => want_pings += 1,
                Expect::Nothing => {}
            }
        }
        let mut got_errors = BTreeMap::new();
        let mut got_pings = 0usize;
        for v in &before {
            // flush_with_errors returns only replies without "ok" here: error replies.
            let line = v["line"]
                .as_u64()
                .ok_or_else(|| TestCaseError::fail(format!("reply without a line number: {v}")))?;
            prop_assert!(v["detail"].is_string(), "reply without a detail: {}", v);
            prop_assert!(
                got_errors
                    .insert(line, v["error"].as_str().unwrap_or("?").to_owned())
                    .is_none(),
                "two replies for line {}",
                line
            );
        }
        // Pings answer {"ok":true}, which ends flush_with_errors early: read on to the flush.
        let mut reply = reply;
        while reply.get("accepted").is_none() && reply == json!({"ok": true}) {
            got_pings += 1;
            loop {
                let v = c.read_reply();
                if v.get("ok").is_some() {
                    reply = v;
                    break;
                }
                let line = v["line"].as_u64().ok_or_else(|| {
                    TestCaseError::fail(format!("reply without a line number: {v}"))
                })?;
                prop_assert!(
                    got_errors
                        .insert(line, v["error"].as_str().unwrap_or("?").to_owned())
                        .is_none(),
                    "two replies for line {}",
                    line
                );
            }
        }
        prop_assert_eq!(reply["ok"].clone(), json!(true), "flush reply {}", reply);
        prop_assert_eq!(got_pings, want_pings);
        let want: BTreeMap<u64, String> = want_errors
            .iter()
            .map(|(k, v)| (*k, v.to_string()))
            .collect();
        prop_assert_eq!(&got_errors, &want, "error replies by line");
        prop_assert_eq!(
            reply["accepted"].as_u64(),
            Some(want_accepted),
            "accepted in {}",
            reply
        );
        prop_assert_eq!(
            reply["rejected"].as_u64(),
            Some(want_errors.len() as u64),
            "rejected in {}",
            reply
        );
        for (m, n) in accepted_here {
            *expected_events.borrow_mut().entry(m).or_default() += n;
        }
        lines_tried.set(lines_tried.get() + lines.len());
        rejected_total.set(rejected_total.get() + want_errors.len() as u64);
        Ok(())
    });
    if let Err(e) = result {
        d.fail(format!("property failed: {e}"));
    }
    let (expected_events, lines_tried, rejected_total) = (
        expected_events.into_inner(),
        lines_tried.get(),
        rejected_total.get(),
    );
    // No event reached a model it did not name, and none was lost.
    for (m, n) in &expected_events {
        assert_eq!(d.events_of(m), *n, "events of {m}");
    }
    let listed: BTreeSet<String> = d
        .models_json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["model_id"].as_str().unwrap().to_owned())
        .collect();
    let named: BTreeSet<String> = expected_events.keys().cloned().collect();
    assert_eq!(listed, named, "models that exist");
    let mut d = d;
    assert!(d.is_running(), "the daemon died");
    eprintln!(
        "hostile: 64 cases, {lines_tried} lines tried, {rejected_total} rejected, events per model {expected_events:?}"
    );
}

fn read_all(s: &mut UnixStream, timeout: Duration) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (out, true),
        }
    }
    (out, false)
}

#[test]
fn slow_clients_do_not_block_others_and_idle_ones_time_out() {
    let d = Daemon::builder().daemon_keys("idle_timeout_s = 2").start();
    let opened = Instant::now();
    // Half a line, then silence; and a connection that never says anything.
    let mut slow: Vec<UnixStream> = (0..20)
        .map(|i| {
            let mut s = UnixStream::connect(&d.socket).unwrap();
            s.write_all(format!("{{\"model_id\":\"slow-{i}\",\"val").as_bytes())
                .unwrap();
            s
        })
        .collect();
    let mut silent = UnixStream::connect(&d.socket).unwrap();
    // Others are served meanwhile, many times over.
    for round in 0..5 {
        let mut c = d.connect();
        let lines: Vec<String> = (0..100).map(|_| plain_event("busy")).collect();
        c.send_lines(&lines);
        assert_flush(&c.flush(), 100, 0);
        assert_eq!(d.events_of("busy"), 100 * (round + 1));
    }
    // Idle ones get one idle_timeout reply, then EOF.
    for s in slow.iter_mut().chain(std::iter::once(&mut silent)) {
        let (bytes, eof) = read_all(s, DEADLINE);
        let text = String::from_utf8_lossy(&bytes);
        assert!(eof, "an idle connection was not closed: {text:?}");
        let replies: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(replies.len(), 1, "replies: {text:?}");
        assert_eq!(replies[0]["error"], json!("idle_timeout"), "{text:?}");
    }
    assert!(
        opened.elapsed() >= Duration::from_millis(1500),
        "idle connections closed before idle_timeout_s"
    );
    // The half lines were never events.
    for i in 0..20 {
        assert_eq!(d.events_of(&format!("slow-{i}")), 0);
    }
    // A connection that keeps talking is not idle.
    let mut c = d.connect();
    for _ in 0..4 {
        c.send_line(&plain_event("chatty"));
        std::thread::sleep(Duration::from_millis(800));
    }
    assert_flush(&c.flush(), 4, 0);
}

/// Raises this process's open-file limit to at least `want` (the daemon inherits it).
fn raise_nofile(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a valid struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            if lim.rlim_max < want {
                lim.rlim_max = want;
                lim.rlim_cur = want;
            }
            assert_eq!(
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim),
                0,
                "cannot raise RLIMIT_NOFILE to {want}"
            );
        }
    }
}

#[test]
fn a_client_that_never_reads_replies_is_never_stalled() {
    // Issue 12.1: 100,000 bad lines (each gets an error reply) and 1,000 good ones, written
    // without reading a byte back. The writes must all go through: error replies are best
    // effort, dropped once the client's unread queue is full.
    const BAD: usize = 100_000;
    let d = Daemon::start_default();
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let bad = b"{\"model_id\":\"bad\",\"drift\":1}\n";
    let good = json!({"model_id": "good", "drift_score": 0.1}).to_string() + "\n";
    let mut chunk = Vec::new();
    for i in 0..BAD {
        chunk.extend_from_slice(bad);
        if i % 100 == 0 {
            chunk.extend_from_slice(good.as_bytes());
        }
    }
    let started = Instant::now();
    let sent = s.write_all(&chunk);
    let took = started.elapsed();
    assert!(
        sent.is_ok(),
        "the client's writes stalled ({sent:?} after {took:?}): the daemon stopped reading a client that does not read replies"
    );
    // Now the flush: its reply is always delivered, after whatever error replies fit.
    s.write_all(b"{\"op\":\"flush\"}\n").unwrap();
    let (bytes, _) = read_until_flush(&mut s, DEADLINE);
    let text = String::from_utf8_lossy(&bytes);
    let replies: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let flush = replies.last().unwrap_or_else(|| d.fail("no flush reply"));
    assert_eq!(flush["ok"], json!(true), "{flush}");
    assert_eq!(flush["accepted"], json!(BAD / 100), "{flush}");
    assert_eq!(flush["rejected"], json!(BAD), "{flush}");
    let errors = replies.len() as u64 - 1;
    let dropped = flush["replies_dropped"].as_u64().unwrap_or(0);
    assert!(dropped > 0, "nothing was dropped: {flush}");
    assert_eq!(
        errors + dropped,
        BAD as u64,
        "every rejection is either answered or counted"
    );
    // Error replies that were delivered are whole lines, in order.
    let mut last = 0;
    for r in &replies[..replies.len() - 1] {
        let line = r["line"].as_u64().unwrap();
        assert!(line > last && r["error"] == json!("bad_field"), "{r}");
        last = line;
    }
    assert_eq!(d.events_of("good"), (BAD / 100) as u64);
    let metrics = d.cli_ok(&["metrics"]);
    assert!(
        metrics
            .lines()
            .any(|l| l == format!("visutility_ingest_replies_dropped_total {dropped}")),
        "{metrics}"
    );
    eprintln!(
        "hostile: {BAD} bad lines unread: written in {took:?}, {errors} replies delivered, {dropped} dropped"
    );
}

/// Reads until a line with `"ok"` (the flush reply) arrives; returns the bytes and whether it
/// did.
fn read_until_flush(s: &mut UnixStream, timeout: Duration) -> (Vec<u8>, bool) {
    let end = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    while Instant::now() < end {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.ends_with(b"\n")
                    && out
                        .rsplit(|&b| b == b'\n')
                        .nth(1)
                        .is_some_and(|l| l.starts_with(b"{\"ok\""))
                {
                    return (out, true);
                }
            }
            Err(_) => {}
        }
    }
    (out, false)
}

#[test]
fn thousands_of_connections_stay_within_max_connections() {
    const CONNS: usize = 2000;
    const MAX: usize = 500;
    raise_nofile(CONNS as u64 * 2 + 256);
    let d = Daemon::builder()
        // One uid opens them all here: the per-uid limit is another test's (security_dos).
        .daemon_keys(&format!(
            "max_connections = {MAX}\nmax_connections_per_uid = 0"
        ))
        .start();
    let mut conns: Vec<UnixStream> = (0..CONNS)
        .map(|i| {
            UnixStream::connect(&d.socket)
                .unwrap_or_else(|e| d.fail(format!("connection {i}: {e}")))
        })
        .collect();
    let (mut served, mut refused) = (0, 0);
    for s in conns.iter_mut() {
        // A refused connection may already be closed: the write can fail, the reply is there.
        let _ = s.write_all(b"{\"op\":\"ping\"}\n");
    }
    for s in conns.iter_mut() {
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while !line.ends_with(b"\n") {
            match s.read(&mut b) {
                Ok(1) => line.push(b[0]),
                _ => break,
            }
        }
        let v: Value = serde_json::from_slice(&line)
            .unwrap_or_else(|e| d.fail(format!("reply {:?}: {e}", String::from_utf8_lossy(&line))));
        if v == json!({"ok": true}) {
            served += 1;
        } else {
            assert_eq!(v["error"], json!("too_many_connections"), "{v}");
            assert!(
                v["detail"]
                    .as_str()
                    .is_some_and(|s| s.contains("max_connections")),
                "{v}"
            );
            let (_, eof) = read_all(s, DEADLINE);
            assert!(eof, "a refused connection was left open");
            refused += 1;
        }
    }
    eprintln!(
        "hostile: {CONNS} connections at once: {served} served, {refused} refused (max_connections = {MAX})"
    );
    assert_eq!(served, MAX, "served connections");
    assert_eq!(refused, CONNS - MAX, "refused connections");
    drop(conns);
    // Once they are gone, the daemon serves normally again.
    d.wait_for("the connection count to fall back to zero", || {
        (d.status_json()["connections"] == json!(0)).then_some(())
    });
    let mut again: Vec<Client> = (0..MAX).map(|_| d.connect()).collect();
    for c in again.iter_mut() {
        c.send_line(r#"{"op":"ping"}"#);
    }
    for c in again.iter_mut() {
        assert_eq!(c.read_reply(), json!({"ok": true}));
    }
    drop(again);
    d.wait_for("the connection count to fall back to zero", || {
        (d.status_json()["connections"] == json!(0)).then_some(())
    });
    let mut c = d.connect();
    c.send_line(&plain_event("after"));
    assert_flush(&c.flush(), 1, 0);
}

#[test]
fn a_flood_of_model_ids_stops_at_max_models() {
    let d = Daemon::builder().daemon_keys("max_models = 100").start();
    let keep: Vec<String> = (0..5).map(|i| format!("keep-{i}")).collect();
    let mut c = d.connect();
    let lines: Vec<String> = keep.iter().map(|m| plain_event(m)).collect();
    c.send_lines(&lines);
    assert_flush(&c.flush(), 5, 0);

    // The flood, from two connections at once.
    let flood = |from: usize| {
        let mut f = d.connect();
        let lines: Vec<String> = (from..from + 1000)
            .map(|i| plain_event(&format!("flood-{i}")))
            .collect();
        f.send_lines(&lines);
        f.flush_with_errors()
    };
    let (r1, e1) = flood(0);
    let (r2, e2) = flood(1000);
    for e in e1.iter().chain(&e2) {
        assert_eq!(e["error"], json!("too_many_models"), "{e}");
    }
    let accepted = r1["accepted"].as_u64().unwrap() + r2["accepted"].as_u64().unwrap();
    assert_eq!(accepted, 95, "flood events accepted: {r1} {r2}");
    assert_eq!((e1.len() + e2.len()) as u64, 2000 - 95);

    // Existing models carry on, new ones are still refused.
    c.send_lines(&lines);
    c.send_line(&plain_event("late-newcomer"));
    let (reply, errors) = c.flush_with_errors();
    assert_eq!(reply["accepted"], json!(10), "{reply}");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_error(&errors[0], &["too_many_models"], 12);
    for m in &keep {
        assert_eq!(d.events_of(m), 2, "{m}");
    }
    assert_eq!(d.models_json().as_array().unwrap().len(), 100);
}
