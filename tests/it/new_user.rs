//! Issue 12: defects a new user and operator met, each pinned by the test that failed before
//! its fix (the non-reading client is in `hostile.rs`).

use serde_json::json;

use crate::support::*;

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// 12.2: Python's `json.dumps(float("nan"))` writes `NaN`; the reply says what it is and what
/// to send instead.
#[test]
fn nan_and_infinity_get_a_detail_that_names_them() {
    let d = Daemon::start_default();
    let mut c = d.connect();
    c.send_line(r#"{"model_id":"m","drift_score":NaN}"#);
    c.send_line(r#"{"model_id":"m","accuracy":Infinity}"#);
    c.send_line(r#"{"model_id":"m","drift_score":0.1}"#);
    let (flush, errors) = c.flush_with_errors();
    assert_flush(&flush, 1, 2);
    for (e, token, line) in [(&errors[0], "NaN", 1), (&errors[1], "Infinity", 2)] {
        assert_error(e, &["bad_json"], line);
        let detail = e["detail"].as_str().unwrap();
        assert!(
            detail.contains(&format!("{token} at column"))
                && detail.contains("not a JSON number")
                && detail.contains("omit the field or send null"),
            "{detail}"
        );
    }
}

/// 12.9: a `ts` in milliseconds is refused with a hint; an old `ts` is kept for the policies
/// but `last_seen` is the time of receipt.
#[test]
fn a_ts_in_milliseconds_is_refused_and_an_old_ts_does_not_age_last_seen() {
    let d = Daemon::start_default();
    let mut c = d.connect();
    let ms = (now() * 1000.0).round();
    c.send_json(&json!({"model_id": "m", "ts": ms, "drift_score": 0.1}));
    // Ten years ago, and an hour ahead (clock skew): both accepted.
    c.send_json(&json!({"model_id": "m", "ts": now() - 315_360_000.0, "drift_score": 0.1}));
    c.send_json(&json!({"model_id": "skew", "ts": now() + 3600.0, "drift_score": 0.1}));
    let (flush, errors) = c.flush_with_errors();
    assert_flush(&flush, 2, 1);
    assert_error(&errors[0], &["bad_field"], 1);
    let detail = errors[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("more than a day ahead") && detail.contains("milliseconds"),
        "{detail}"
    );
    let models = d.models_json();
    let m = models
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model_id"] == json!("m"))
        .unwrap();
    let last_seen = m["last_seen"].as_f64().unwrap();
    assert!(
        (now() - last_seen).abs() < 120.0,
        "last_seen {last_seen} is not the time of receipt ({})",
        now()
    );
    // It survives a crash (the observation log keeps the time of receipt).
    let mut d = d;
    d.kill_and_restart();
    let models = d.models_json();
    let m = models
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model_id"] == json!("m"))
        .unwrap();
    assert_eq!(m["last_seen"].as_f64(), Some(last_seen), "{m}");
}
