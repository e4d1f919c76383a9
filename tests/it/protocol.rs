//! Contract section 2: the ingest socket, rule by rule.

use std::collections::BTreeMap;
use std::thread;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

const BAD_JSON: &[&str] = &["bad_json"];
const BAD_FIELD: &[&str] = &["bad_field"];
/// Where the contract allows either code ("bad_field or bad_json").
const INVALID: &[&str] = &["bad_field", "bad_json"];
const BAD_ID: &[&str] = &["bad_model_id"];
/// A missing / non-string model_id: either code is a reasonable reading.
const BAD_ID_OR_FIELD: &[&str] = &["bad_model_id", "bad_field"];

/// Send `cases` (raw line bytes, expected outcome: None = accepted, Some(codes) =
/// rejected with one of those codes) on one connection, then flush; checks every
/// error reply (code, line number, detail) and the flush counts.
fn check_cases(d: &Daemon, cases: &[(Vec<u8>, Option<&[&str]>)]) {
    let mut c = d.connect();
    let mut all = Vec::new();
    for (line, _) in cases {
        all.extend_from_slice(line);
        all.push(b'\n');
    }
    c.send_raw(&all);
    let (reply, errors) = c.flush_with_errors();

    let mut by_line: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    for e in &errors {
        let line = e["line"]
            .as_u64()
            .unwrap_or_else(|| d.fail(format!("error reply without numeric line: {e}")));
        by_line.entry(line).or_default().push(e.clone());
    }
    let mut problems = Vec::new();
    for (i, (line, expect)) in cases.iter().enumerate() {
        let n = i as u64 + 1;
        let shown = String::from_utf8_lossy(line);
        let shown: String = shown.chars().take(160).collect();
        match (expect, by_line.get(&n)) {
            (None, None) => {}
            (None, Some(es)) => {
                problems.push(format!("line {n} {shown:?} should be accepted, got {es:?}"))
            }
            (Some(codes), None) => problems.push(format!(
                "line {n} {shown:?} should be rejected with {codes:?}, got no reply"
            )),
            (Some(codes), Some(es)) => {
                if es.len() != 1 {
                    problems.push(format!(
                        "line {n} {shown:?} got {} replies: {es:?}",
                        es.len()
                    ));
                }
                let e = &es[0];
                if !is_error(e, codes, n) {
                    problems.push(format!("line {n} {shown:?}: expected {codes:?}, got {e}"));
                }
                if !e["detail"].is_string() {
                    problems.push(format!("line {n}: error reply without string detail: {e}"));
                }
            }
        }
    }
    for l in by_line.keys() {
        if *l == 0 || *l > cases.len() as u64 {
            problems.push(format!(
                "error reply for a line that was never sent: {:?}",
                by_line[l]
            ));
        }
    }
    let rejected = cases.iter().filter(|(_, e)| e.is_some()).count() as u64;
    let accepted = cases.len() as u64 - rejected;
    if reply["ok"] != json!(true)
        || reply["accepted"].as_u64() != Some(accepted)
        || reply["rejected"].as_u64() != Some(rejected)
    {
        problems.push(format!(
            "flush reply {reply}, expected ok/accepted {accepted}/rejected {rejected}"
        ));
    }
    if !problems.is_empty() {
        d.fail(format!("protocol violations:\n  {}", problems.join("\n  ")));
    }
}

fn ok(line: impl Into<String>) -> (Vec<u8>, Option<&'static [&'static str]>) {
    (line.into().into_bytes(), None)
}

fn bad(
    line: impl Into<String>,
    codes: &'static [&'static str],
) -> (Vec<u8>, Option<&'static [&'static str]>) {
    (line.into().into_bytes(), Some(codes))
}

#[test]
fn accepted_event_gets_no_reply() {
    let d = Daemon::start_default();
    let mut c = d.connect();
    c.send_line(
        r#"{"model_id": "fraud-v3", "ts": 1764172800.25, "drift_score": 0.12, "accuracy": 0.93, "error": 0, "value": 4.2, "metrics": {"latency_ms": 12.5}, "meta": {"any": "json"}}"#,
    );
    c.send_line(r#"{"model_id":"fraud-v3"}"#);
    // nothing may arrive for accepted events
    if let Some(l) = c.read_reply_line(Duration::from_millis(300)) {
        d.fail(format!("accepted event got a reply: {l}"));
    }
    let reply = c.flush();
    assert_flush(&reply, 2, 0);
}

#[test]
fn bad_json_is_rejected_with_line_number_and_detail() {
    let d = Daemon::start_default();
    let mut c = d.connect();
    c.send_line(r#"{"model_id": "m1","#);
    // the error reply comes without waiting for a flush
    let e = c.read_reply();
    assert_error(&e, BAD_JSON, 1);
    let reply = c.flush();
    assert_flush(&reply, 0, 1);

    check_cases(
        &d,
        &[
            bad("not json", BAD_JSON),
            bad(r#"{'model_id': 'm1'}"#, BAD_JSON),
            bad(r#"{"model_id": "m1",}"#, BAD_JSON),
            bad(r#"{"model_id": "m1""#, BAD_JSON),
            bad(r#"{"model_id": m1}"#, BAD_JSON),
            ok(r#"{"model_id": "m1"}"#),
            bad(r#"{"model_id": "m1", "drift_score": NaN}"#, INVALID),
            bad(r#"{"model_id": "m1", "drift_score": Infinity}"#, INVALID),
            // JSON, but not an object
            bad(r#"[{"model_id": "m1"}]"#, INVALID),
            bad(r#""m1""#, INVALID),
            bad("42", INVALID),
            bad("null", INVALID),
            ok(r#"{"model_id": "m1"}"#),
        ],
    );
}

#[test]
fn invalid_utf8_is_rejected() {
    let d = Daemon::start_default();
    let mut line = br#"{"model_id": "m"#.to_vec();
    line.extend_from_slice(&[0xff, 0xfe]);
    line.extend_from_slice(br#""}"#);
    check_cases(
        &d,
        &[
            (line, Some(&["bad_json", "bad_field", "bad_model_id"])),
            ok(r#"{"model_id": "m1"}"#),
        ],
    );
}

#[test]
fn trailing_bytes_after_the_object_are_rejected() {
    let d = Daemon::start_default();
    check_cases(
        &d,
        &[
            bad(r#"{"model_id": "m1"} x"#, INVALID),
            bad(r#"{"model_id": "m1"}{"model_id": "m1"}"#, INVALID),
            bad(r#"{"model_id": "m1"},"#, INVALID),
            bad(r#"{"model_id": "m1"}]"#, INVALID),
            bad(r#"{"model_id": "m1"} 1"#, INVALID),
            ok(r#"{"model_id": "m1"}"#),
        ],
    );
}

#[test]
fn duplicate_keys_are_rejected() {
    let d = Daemon::start_default();
    check_cases(
        &d,
        &[
            bad(r#"{"model_id": "m1", "model_id": "m2"}"#, INVALID),
            bad(r#"{"model_id": "m1", "model_id": "m1"}"#, INVALID),
            bad(
                r#"{"model_id": "m1", "drift_score": 0.1, "drift_score": 0.2}"#,
                INVALID,
            ),
            bad(r#"{"model_id": "m1", "meta": {}, "meta": {}}"#, INVALID),
            ok(r#"{"model_id": "m1", "drift_score": 0.1}"#),
        ],
    );
}

#[test]
fn unknown_top_level_keys_are_rejected() {
    let d = Daemon::start_default();
    check_cases(
        &d,
        &[
            bad(r#"{"model_id": "m1", "foo": 1}"#, INVALID),
            bad(r#"{"model_id": "m1", "latency_ms": 12.5}"#, INVALID),
            bad(r#"{"model_id": "m1", "Drift_score": 0.1}"#, INVALID),
            bad(r#"{"model_id": "m1", "any": {"nested": true}}"#, INVALID),
            // custom numbers go under metrics, context under meta
            ok(r#"{"model_id": "m1", "metrics": {"latency_ms": 12.5}, "meta": {"foo": 1}}"#),
        ],
    );
}

#[test]
fn model_id_rules() {
    let d = Daemon::start_default();
    let max = "a".repeat(128);
    let too_long = "a".repeat(129);
    let ev = |id: &str| json!({"model_id": id}).to_string();
    check_cases(
        &d,
        &[
            // valid
            ok(ev("m")),
            ok(ev("fraud-v3")),
            ok(ev("A_b:c/d-e.f")),
            ok(ev("team/model:v1.2")),
            ok(ev("x.y")),
            bad(ev("-dash"), BAD_ID),
            ok(ev("9")),
            ok(ev(&max)),
            // invalid
            bad(ev(""), BAD_ID),
            bad(ev(&too_long), BAD_ID),
            bad(ev(".hidden"), BAD_ID),
            bad(ev("."), BAD_ID),
            bad(ev("/abs/path"), BAD_ID),
            bad(ev(".."), BAD_ID),
            bad(ev("a..b"), BAD_ID),
            bad(ev("a/../b"), BAD_ID),
            bad(ev("a/.."), BAD_ID),
            bad(ev("a b"), BAD_ID),
            bad(ev("a\tb"), BAD_ID),
            bad(ev("a\nb"), BAD_ID),
            bad(ev("a\u{0}b"), BAD_ID),
            bad(ev("a\\b"), BAD_ID),
            bad(ev("a*b"), BAD_ID),
            bad(ev("a?b"), BAD_ID),
            bad(ev("naïve"), BAD_ID),
            bad(ev("模型"), BAD_ID),
            // missing or not a string
            bad(r#"{"drift_score": 0.1}"#, BAD_ID_OR_FIELD),
            bad(r#"{}"#, BAD_ID_OR_FIELD),
            bad(r#"{"model_id": 5}"#, BAD_ID_OR_FIELD),
            bad(r#"{"model_id": null}"#, BAD_ID_OR_FIELD),
            bad(r#"{"model_id": ["m"]}"#, BAD_ID_OR_FIELD),
            ok(ev("m")),
        ],
    );
}

#[test]
fn model_id_of_129_bytes_is_rejected_128_accepted() {
    let d = Daemon::start_default();
    let ev = |id: &str| json!({"model_id": id}).to_string();
    let mut c = d.connect();
    c.send_line(&ev(&"b".repeat(129)));
    let e = c.read_reply();
    assert_error(&e, BAD_ID, 1);
    c.send_line(&ev(&"b".repeat(128)));
    let reply = c.flush();
    assert_flush(&reply, 1, 1);
}

#[test]
fn non_finite_numbers_are_rejected() {
    let d = Daemon::start_default();
    check_cases(
        &d,
        &[
            bad(r#"{"model_id": "m1", "drift_score": 1e999}"#, INVALID),
            bad(r#"{"model_id": "m1", "drift_score": -1e999}"#, INVALID),
            bad(r#"{"model_id": "m1", "accuracy": 1e999}"#, INVALID),
            bad(r#"{"model_id": "m1", "value": 1e999}"#, INVALID),
            bad(r#"{"model_id": "m1", "ts": 1e999}"#, INVALID),
            bad(
                r#"{"model_id": "m1", "metrics": {"latency_ms": 1e999}}"#,
                INVALID,
            ),
            bad(
                r#"{"model_id": "m1", "metrics": {"latency_ms": -1e999}}"#,
                INVALID,
            ),
            ok(
                r#"{"model_id": "m1", "drift_score": 1e300, "value": -1e300, "metrics": {"x": 1e-300}}"#,
            ),
        ],
    );
}

#[test]
fn error_field_accepts_only_0_1_true_false() {
    let d = Daemon::start_default();
    check_cases(
        &d,
        &[
            ok(r#"{"model_id": "m1", "error": 0}"#),
            ok(r#"{"model_id": "m1", "error": 1}"#),
            ok(r#"{"model_id": "m1", "error": true}"#),
            ok(r#"{"model_id": "m1", "error": false}"#),
            bad(r#"{"model_id": "m1", "error": 2}"#, BAD_FIELD),
            bad(r#"{"model_id": "m1", "error": -1}"#, BAD_FIELD),
            bad(r#"{"model_id": "m1", "error": 0.5}"#, BAD_FIELD),
            bad(r#"{"model_id": "m1", "error": "1"}"#, BAD_FIELD),
            bad(r#"{"model_id": "m1", "error": [1]}"#, BAD_FIELD),
            ok(r#"{"model_id": "m1", "error": 1}"#),
        ],
    );
}

#[test]
fn wrongly_typed_fields_are_rejected() {
    let d = Daemon::start_default();
    check_cases(
        &d,
        &[
            bad(r#"{"model_id": "m1", "drift_score": "0.1"}"#, INVALID),
            bad(r#"{"model_id": "m1", "drift_score": true}"#, INVALID),
            bad(r#"{"model_id": "m1", "accuracy": [0.9]}"#, INVALID),
            bad(r#"{"model_id": "m1", "value": {"v": 1}}"#, INVALID),
            bad(
                r#"{"model_id": "m1", "ts": "2025-01-01T00:00:00Z"}"#,
                INVALID,
            ),
            bad(r#"{"model_id": "m1", "metrics": [1, 2]}"#, INVALID),
            bad(r#"{"model_id": "m1", "metrics": 5}"#, INVALID),
            bad(
                r#"{"model_id": "m1", "metrics": {"latency_ms": "12"}}"#,
                INVALID,
            ),
            bad(
                r#"{"model_id": "m1", "metrics": {"nested": {"a": 1}}}"#,
                INVALID,
            ),
            ok(
                r#"{"model_id": "m1", "ts": 1764172800, "drift_score": 0, "accuracy": 1, "value": -3.5, "metrics": {}}"#,
            ),
            ok(r#"{"model_id": "m1", "metrics": {"a": 1, "b": -2.5, "c": 0}}"#),
        ],
    );
}

#[test]
fn meta_is_any_json_and_never_interpreted() {
    let d = Daemon::start_default();
    check_cases(
        &d,
        &[
            ok(
                r#"{"model_id": "m1", "meta": {"a": [1, {"b": null}], "model_id": 5, "drift_score": "x"}}"#,
            ),
            ok(r#"{"model_id": "m1", "meta": [1, 2, 3]}"#),
            ok(r#"{"model_id": "m1", "meta": "just a string"}"#),
            ok(r#"{"model_id": "m1", "meta": 42}"#),
            ok(r#"{"model_id": "m1", "meta": true}"#),
        ],
    );
}

#[test]
fn unknown_op_is_rejected() {
    let d = Daemon::start_default();
    check_cases(
        &d,
        &[
            bad(r#"{"op": "frobnicate"}"#, &["unknown_op"]),
            bad(r#"{"op": "FLUSH"}"#, &["unknown_op"]),
            bad(r#"{"op": ""}"#, &["unknown_op"]),
            ok(r#"{"model_id": "m1"}"#),
        ],
    );
}

#[test]
fn ping_op_replies_ok() {
    let d = Daemon::start_default();
    let mut c = d.connect();
    c.send_line(r#"{"op":"ping"}"#);
    let r = c.read_reply();
    assert_eq!(r["ok"], json!(true), "ping reply: {r}");
    assert!(r.get("error").is_none(), "ping reply: {r}");
    c.send_line(r#"{"model_id":"m1"}"#);
    let reply = c.flush();
    assert_eq!(reply["accepted"].as_u64(), Some(1), "{reply}");
}

#[test]
fn line_numbers_count_every_line_on_the_connection() {
    let d = Daemon::start_default();
    let mut c = d.connect();
    // 1 good, 2 bad, 3 good, 4 flush, 5 bad, 6 good, 7 good, 8 bad (unknown_op), 9 bad
    c.send_lines(&[r#"{"model_id":"m1"}"#, "garbage", r#"{"model_id":"m2"}"#]);
    let (r1, e1) = c.flush_with_errors();
    assert_eq!(e1.len(), 1, "errors before first flush: {e1:?}");
    assert_error(&e1[0], BAD_JSON, 2);
    assert_flush(&r1, 2, 1);

    c.send_lines(&[
        r#"{"model_id":"bad id"}"#,
        r#"{"model_id":"m1","drift_score":0.5}"#,
        r#"{"model_id":"m3"}"#,
        r#"{"op":"nope"}"#,
        r#"{"model_id":"m1","error":7}"#,
    ]);
    let (r2, e2) = c.flush_with_errors();
    assert_eq!(e2.len(), 3, "errors before second flush: {e2:?}");
    assert_error(&e2[0], BAD_ID, 5);
    assert_error(&e2[1], &["unknown_op"], 8);
    assert_error(&e2[2], BAD_FIELD, 9);
    // "counts for this connection": cumulative; a per-flush delta is tolerated
    let acc = r2["accepted"].as_u64();
    let rej = r2["rejected"].as_u64();
    assert!(
        (acc == Some(4) && rej == Some(4)) || (acc == Some(2) && rej == Some(3)),
        "second flush reply {r2}: expected cumulative 4/4 (or per-flush 2/3)"
    );
    assert_eq!(r2["ok"], json!(true));

    // a line split over several writes is still one line (line 11, after flush = 10)
    c.send_raw(br#"{"model_"#);
    thread::sleep(Duration::from_millis(50));
    c.send_raw(br#"id":"bad"#);
    thread::sleep(Duration::from_millis(50));
    c.send_raw(b" id\"}\n");
    let e = c.read_reply();
    assert_error(&e, BAD_ID, 11);
}

#[test]
fn connection_stays_usable_after_many_errors() {
    let d = Daemon::start_default();
    let mut c = d.connect();
    let bad_lines = [
        "garbage",
        r#"{"model_id":"m1","x":1}"#,
        r#"{"model_id":".m"}"#,
        r#"{"op":"what"}"#,
        r#"{"model_id":"m1","error":2}"#,
    ];
    let mut lines = Vec::new();
    for i in 0..50 {
        lines.push(bad_lines[i % bad_lines.len()].to_string());
    }
    lines.push(r#"{"model_id":"m1","drift_score":0.1}"#.to_string());
    c.send_lines(&lines);
    let (reply, errors) = c.flush_with_errors();
    assert_flush(&reply, 1, 50);
    let got: Vec<u64> = errors.iter().filter_map(|e| e["line"].as_u64()).collect();
    assert_eq!(
        got,
        (1..=50).collect::<Vec<u64>>(),
        "error line numbers: {errors:?}"
    );
    // and it keeps working
    c.send_line(r#"{"model_id":"m1"}"#);
    let reply = c.flush();
    assert_eq!(reply["ok"], json!(true));
    assert_eq!(d.events_of("m1"), 2);
}

#[test]
fn oversized_line_is_rejected_and_the_next_line_is_accepted() {
    let d = Daemon::builder()
        .daemon_keys("max_line_bytes = 1024")
        .start();
    let mut c = d.connect();
    let big = json!({"model_id": "m1", "meta": {"pad": "x".repeat(5000)}}).to_string();
    let small = json!({"model_id": "m1", "meta": {"pad": "y".repeat(800)}}).to_string();
    assert!(small.len() < 1000);
    c.send_line(&big);
    c.send_line(r#"{"model_id":"m1"}"#);
    c.send_line(&small);
    let (reply, errors) = c.flush_with_errors();
    assert_eq!(errors.len(), 1, "errors: {errors:?}");
    assert_error(&errors[0], &["line_too_long"], 1);
    assert_flush(&reply, 2, 1);

    // a very long line (2 MiB) does not kill the connection either
    let huge = format!(
        r#"{{"model_id":"m1","meta":"{}"}}"#,
        "z".repeat(2 * 1024 * 1024)
    );
    c.send_line(&huge); // line 5 (line 4 was the flush)
    c.send_line(r#"{"model_id":"m2"}"#);
    let (reply, errors) = c.flush_with_errors();
    assert_eq!(errors.len(), 1, "errors: {errors:?}");
    assert_error(&errors[0], &["line_too_long"], 5);
    assert_eq!(reply["ok"], json!(true), "{reply}");
    assert_eq!(d.events_of("m1"), 2);
    assert_eq!(d.events_of("m2"), 1);
}

#[test]
fn flush_counts_are_per_connection() {
    let d = Daemon::start_default();
    let mut a = d.connect();
    let mut b = d.connect();
    a.send_lines(&[r#"{"model_id":"m1"}"#, r#"{"model_id":"m1"}"#, "junk"]);
    b.send_lines(&[r#"{"model_id":"m2"}"#]);
    let rb = b.flush();
    assert_flush(&rb, 1, 0);
    let (ra, ea) = a.flush_with_errors();
    assert_eq!(ea.len(), 1, "{ea:?}");
    assert_flush(&ra, 2, 1);
    // a fresh connection starts from zero
    let mut c = d.connect();
    let rc = c.flush();
    assert_flush(&rc, 0, 0);
}

#[test]
fn many_pipelined_events_are_all_applied() {
    let d = Daemon::start_default();
    let mut c = d.connect();
    let lines: Vec<String> = (0..2000)
        .map(|i| {
            json!({"model_id": format!("m{}", i % 4), "value": i, "drift_score": 0.01}).to_string()
        })
        .collect();
    c.send_lines(&lines);
    let reply = c.flush();
    assert_flush(&reply, 2000, 0);
    for m in 0..4 {
        assert_eq!(d.events_of(&format!("m{m}")), 500, "model m{m}");
    }
}

#[test]
fn too_many_models() {
    let d = Daemon::builder().daemon_keys("max_models = 2").start();
    check_cases(
        &d,
        &[
            ok(r#"{"model_id":"a"}"#),
            ok(r#"{"model_id":"b"}"#),
            bad(r#"{"model_id":"c"}"#, &["too_many_models"]),
            ok(r#"{"model_id":"a"}"#),
            ok(r#"{"model_id":"b","drift_score":0.2}"#),
            bad(r#"{"model_id":"d"}"#, &["too_many_models"]),
        ],
    );
    // the limit holds on another connection too
    let mut c = d.connect();
    c.send_line(r#"{"model_id":"c"}"#);
    let e = c.read_reply();
    assert_error(&e, &["too_many_models"], 1);
    let models = d.models_json();
    let mut ids: Vec<&str> = models
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["model_id"].as_str())
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["a", "b"], "models: {models}");
}

#[test]
fn client_disconnecting_mid_line_does_not_hurt_others() {
    let mut d = Daemon::start_default();
    {
        let mut c = d.connect();
        c.send_raw(br#"{"model_id":"m1","drift_sc"#);
        // dropped here, mid-line
    }
    {
        let mut c = d.connect();
        c.send_line(r#"{"model_id":"m1"}"#);
        // dropped without flushing
    }
    let mut c = d.connect();
    c.send_line(r#"{"model_id":"m2"}"#);
    let reply = c.flush();
    assert_flush(&reply, 1, 0);
    assert!(d.is_running(), "daemon died");
    assert_eq!(d.events_of("m2"), 1);
    // the partial line from the first connection was never an event
    let m1 = d.events_of("m1");
    assert!(m1 <= 1, "m1 events {m1}");
}
