//! Helpers shared by the protocol's unit tests: decoding through both paths at once, and
//! strategies for valid values.

use proptest::prelude::*;
use serde::de::IgnoredAny;
use serde_json::{Value, json};

use super::error::{DETAIL_MAX, ErrorCode, LineError};
use super::event::{Event, Line, validate_model_id};
use super::fallback::decode_full;
use super::reply::error_reply;
use super::scan::{decode_fast, decode_line};

/// decode_line, plus the fast-path contract: whenever the fast path accepts, the full
/// decoder gives the same result.
pub(super) fn decode(line: &[u8]) -> Result<Line<'_>, LineError> {
    let full = decode_full(line);
    if let Some(fast) = decode_fast(line) {
        assert_eq!(
            Ok(&fast),
            full.as_ref(),
            "fast path disagrees on {:?}",
            String::from_utf8_lossy(line)
        );
    }
    assert_eq!(decode_line(line), full);
    full
}

pub(super) fn ev(line: &str) -> Event<'_> {
    match decode(line.as_bytes()) {
        Ok(Line::Event(e)) => e,
        other => panic!("{line}: expected an event, got {other:?}"),
    }
}

pub(super) fn rej(line: impl AsRef<[u8]>) -> LineError {
    let line = line.as_ref();
    match decode(line) {
        Err(e) => {
            assert!(!e.detail.is_empty(), "empty detail");
            assert!(
                e.detail.len() <= DETAIL_MAX,
                "detail too long: {}",
                e.detail
            );
            e
        }
        Ok(l) => panic!(
            "{}: expected rejection, got {l:?}",
            String::from_utf8_lossy(line)
        ),
    }
}

/// Asserts the code and that the detail mentions `needle`.
#[track_caller]
pub(super) fn check(line: impl AsRef<[u8]>, code: ErrorCode, needle: &str) {
    let e = rej(line.as_ref());
    assert_eq!(
        e.code,
        code,
        "{}: {e}",
        String::from_utf8_lossy(line.as_ref())
    );
    assert!(
        e.detail.contains(needle),
        "detail {:?} lacks {needle:?}",
        e.detail
    );
}

pub(super) fn with_id(id: &str) -> String {
    json!({ "model_id": id }).to_string()
}

pub(super) fn check_result(line: &[u8], res: &Result<Line<'_>, LineError>) {
    assert_eq!(res, &decode(line));
    if let Err(e) = res {
        assert!(!e.detail.is_empty() && e.detail.len() <= DETAIL_MAX);
        let reply = error_reply(e.code, 1, &e.detail);
        let v: Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(v["error"], e.code.as_str());
    }
    if let Ok(Line::Event(ev)) = res {
        assert!(validate_model_id(ev.model_id).is_ok());
        assert!(serde_json::from_slice::<IgnoredAny>(line).is_ok());
    }
}

pub(super) fn finite() -> impl Strategy<Value = f64> {
    prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL | prop::num::f64::ZERO
}

pub(super) fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        finite().prop_map(Value::from),
        ".{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(".{0,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Absent, null, or a value.
pub(super) fn opt<T: std::fmt::Debug + Clone>(
    s: impl Strategy<Value = T>,
) -> impl Strategy<Value = Option<Option<T>>> {
    prop_oneof![Just(None), Just(Some(None)), s.prop_map(|v| Some(Some(v)))]
}
