//! The reference decoder: serde_json with strict visitors. It handles every input, and it alone
//! produces errors: [`decode_line`](super::decode_line) comes here for every line the fast
//! scanner ([`super::scan`]) does not take.
//!
//! Invariants:
//! * It implements the line rules of the [`protocol`](super) doc, including which one code a
//!   line with several faults gets: the whole line is always parsed, so a syntax error anywhere
//!   wins (`bad_json`), then the first field error in key order, then the op and `model_id`
//!   checks.
//! * Nothing is copied from an accepted line (strings borrow from it); from a rejected one, at
//!   most a short prefix of an escaped string, so hostile input cannot make it copy much.
//! * Never panics, whatever the bytes.

use std::fmt;

use serde::Deserializer as _;
use serde::de::{self, Deserialize, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::error::{
    ErrorCode, LineError, QUOTE_MAX, bad_field, bad_json, bad_model_id, quoted, truncate_str,
};
use super::event::{
    Event, Field, Line, METRICS_MAX, MODEL_ID_MAX, Metrics, Op, validate_metric_name,
    validate_model_id,
};

/// A top-level key as read (escaped keys are matched by their decoded text, as JSON requires).
enum Key {
    Field(Field),
    Unknown(String),
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Field::from_name(v).map_or_else(|| Key::Unknown(quoted(v)), Key::Field))
            }
        }
        d.deserialize_str(V)
    }
}

/// A string that contained JSON escapes, so it cannot be borrowed from the line. Only a short
/// prefix is kept (enough to check a model_id or match an op, and for details) so hostile input
/// cannot make us copy much.
struct Escaped {
    prefix: String,
    complete: bool,
}

impl Escaped {
    fn new(s: &str) -> Self {
        let t = truncate_str(s, MODEL_ID_MAX + 1);
        Escaped {
            prefix: t.to_owned(),
            complete: t.len() == s.len(),
        }
    }

    fn quoted(&self) -> String {
        let t = truncate_str(&self.prefix, QUOTE_MAX);
        if self.complete && t.len() == self.prefix.len() {
            format!("{t:?}")
        } else {
            format!("{t:?}...")
        }
    }
}

/// Any JSON value, reduced to what a field check needs. Containers are skipped (consumed
/// without being stored) because no scalar field accepts them.
enum Scalar<'a> {
    Null,
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
    Str(&'a str),
    Escaped(Escaped),
    Array,
    Object,
}

impl Scalar<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Scalar::Null => "null",
            Scalar::Bool(_) => "a boolean",
            Scalar::U64(_) | Scalar::I64(_) | Scalar::F64(_) => "a number",
            Scalar::Str(_) | Scalar::Escaped(_) => "a string",
            Scalar::Array => "an array",
            Scalar::Object => "an object",
        }
    }

    /// A finite number, or `None` for anything else.
    fn finite(&self) -> Option<f64> {
        let x = match *self {
            Scalar::U64(n) => n as f64,
            Scalar::I64(n) => n as f64,
            Scalar::F64(x) => x,
            _ => return None,
        };
        // serde_json refuses non-finite input, but stay safe if that ever changes.
        x.is_finite().then_some(x)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::I64(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::U64(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::F64(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Escaped(Escaped::new(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        while a.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Object)
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

/// A metric name: borrowed, or escaped (always refused, see the line rules).
enum MetricName<'a> {
    Borrowed(&'a str),
    Escaped(Escaped),
}

impl<'de> Deserialize<'de> for MetricName<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MetricName<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a metric name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MetricName::Borrowed(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MetricName::Escaped(Escaped::new(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Fills `out` from the `metrics` value. The outer `Result` is a JSON syntax error (aborts the
/// parse); the inner one is a field error (the value is still consumed so the parse goes on).
struct MetricsSeed<'r, 'de> {
    out: &'r mut Metrics<'de>,
}

impl<'de> MetricsSeed<'_, 'de> {
    fn add(&mut self, name: MetricName<'de>, v: Scalar<'de>) -> Result<(), LineError> {
        let name = match name {
            MetricName::Borrowed(n) => n,
            MetricName::Escaped(e) => {
                return Err(bad_field(format!(
                    "metric name {} must be written without JSON escapes",
                    e.quoted()
                )));
            }
        };
        validate_metric_name(name)?;
        let Some(value) = v.finite() else {
            return Err(bad_field(format!(
                "metric \"{name}\" must be a finite number, got {}",
                v.kind()
            )));
        };
        if self.out.get(name).is_some() {
            return Err(bad_field(format!("duplicate metric \"{name}\"")));
        }
        if self.out.len() >= METRICS_MAX {
            return Err(bad_field(format!("more than {METRICS_MAX} metrics")));
        }
        self.out.push(name, value);
        Ok(())
    }

    fn not_object(kind: &str) -> Result<(), LineError> {
        Err(bad_field(format!("metrics must be an object, got {kind}")))
    }
}

impl<'de> DeserializeSeed<'de> for MetricsSeed<'_, 'de> {
    type Value = Result<(), LineError>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for MetricsSeed<'_, 'de> {
    type Value = Result<(), LineError>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of metrics")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Ok(()))
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Ok(()))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Self::not_object("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Self::not_object("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Self::not_object("a number"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Self::not_object("a number"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Self::not_object("a string"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        while a.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Self::not_object("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut a: A) -> Result<Self::Value, A::Error> {
        loop {
            let Some(name) = a.next_key::<MetricName<'de>>()? else {
                return Ok(Ok(()));
            };
            let v = a.next_value::<Scalar<'de>>()?;
            if let Err(e) = self.add(name, v) {
                // Keep consuming so that a later syntax error still wins (bad_json).
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                return Ok(Err(e));
            }
        }
    }
}

/// The `op` value.
enum OpVal {
    Known(Op),
    Unknown(String),
}

/// Everything read from the top-level object, before the line is classified.
#[derive(Default)]
struct Raw<'a> {
    seen: u16,
    /// `Err` = escaped (cannot borrow); a non-string is reported at once as bad_field.
    model_id: Option<Result<&'a str, LineError>>,
    ts: Option<f64>,
    drift_score: Option<f64>,
    accuracy: Option<f64>,
    error: Option<bool>,
    value: Option<f64>,
    metrics: Metrics<'a>,
    meta: Option<&'a RawValue>,
    op: Option<OpVal>,
    /// First field error, in key order.
    err: Option<LineError>,
}

fn number_field(f: Field, v: Scalar<'_>) -> Result<Option<f64>, LineError> {
    if let Scalar::Null = v {
        return Ok(None);
    }
    match v.finite() {
        Some(x) => Ok(Some(x)),
        None => Err(bad_field(format!(
            "\"{}\" must be a finite number, got {}",
            f.name(),
            v.kind()
        ))),
    }
}

struct TopVisitor;

impl<'de> TopVisitor {
    /// Reads the value of `f` into `r`; `Ok(Err)` is a field error.
    fn field<A: MapAccess<'de>>(
        r: &mut Raw<'de>,
        f: Field,
        map: &mut A,
    ) -> Result<Result<(), LineError>, A::Error> {
        let slot = match f {
            Field::Ts => &mut r.ts,
            Field::DriftScore => &mut r.drift_score,
            Field::Accuracy => &mut r.accuracy,
            Field::Value => &mut r.value,
            Field::ModelId => {
                return Ok(match map.next_value::<Scalar<'de>>()? {
                    Scalar::Str(s) => {
                        r.model_id = Some(Ok(s));
                        Ok(())
                    }
                    Scalar::Escaped(e) => {
                        // The event borrows model_id from the line, which an escaped string
                        // cannot provide. Say what is wrong with the text itself first.
                        // Deferred: an op line with model_id must say bad_field, not this.
                        let err = if !e.complete {
                            bad_model_id(format!("model_id is over {MODEL_ID_MAX} bytes"))
                        } else {
                            validate_model_id(&e.prefix).err().unwrap_or_else(|| {
                                bad_model_id(format!(
                                    "model_id {} must be written without JSON escapes",
                                    e.quoted()
                                ))
                            })
                        };
                        r.model_id = Some(Err(err));
                        Ok(())
                    }
                    v => Err(bad_field(format!(
                        "\"model_id\" must be a string, got {}",
                        v.kind()
                    ))),
                });
            }
            Field::Error => {
                return Ok(match map.next_value::<Scalar<'de>>()? {
                    Scalar::Null => Ok(()),
                    Scalar::Bool(b) => {
                        r.error = Some(b);
                        Ok(())
                    }
                    Scalar::U64(n @ (0 | 1)) => {
                        r.error = Some(n == 1);
                        Ok(())
                    }
                    Scalar::I64(n @ (0 | 1)) => {
                        r.error = Some(n == 1);
                        Ok(())
                    }
                    v => Err(bad_field(format!(
                        "\"error\" must be 0, 1, true or false, got {}",
                        v.kind()
                    ))),
                });
            }
            Field::Metrics => {
                return map.next_value_seed(MetricsSeed {
                    out: &mut r.metrics,
                });
            }
            Field::Meta => {
                let raw = map.next_value::<&'de RawValue>()?;
                r.meta = (raw.get() != "null").then_some(raw);
                return Ok(Ok(()));
            }
            Field::Op => {
                return Ok(match map.next_value::<Scalar<'de>>()? {
                    Scalar::Str(s) => {
                        r.op = Some(
                            Op::from_name(s)
                                .map_or_else(|| OpVal::Unknown(quoted(s)), OpVal::Known),
                        );
                        Ok(())
                    }
                    Scalar::Escaped(e) => {
                        let known = if e.complete {
                            Op::from_name(&e.prefix)
                        } else {
                            None
                        };
                        r.op = Some(known.map_or_else(|| OpVal::Unknown(e.quoted()), OpVal::Known));
                        Ok(())
                    }
                    v => Err(bad_field(format!(
                        "\"op\" must be a string, got {}",
                        v.kind()
                    ))),
                });
            }
        };
        let v = map.next_value::<Scalar<'de>>()?;
        Ok(number_field(f, v).map(|x| *slot = x))
    }
}

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Raw<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Raw<'de>, A::Error> {
        let mut r = Raw::default();
        loop {
            if r.err.is_some() {
                // Already rejected: only check the rest is valid JSON (a syntax error still
                // wins), without classifying or copying anything.
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                return Ok(r);
            }
            let Some(key) = map.next_key::<Key>()? else {
                return Ok(r);
            };
            let f = match key {
                Key::Field(f) => f,
                Key::Unknown(q) => {
                    map.next_value::<IgnoredAny>()?;
                    r.err = Some(bad_field(format!("unknown key {q}")));
                    continue;
                }
            };
            if r.seen & f.bit() != 0 {
                map.next_value::<IgnoredAny>()?;
                r.err = Some(bad_field(format!("duplicate key \"{}\"", f.name())));
                continue;
            }
            r.seen |= f.bit();
            if let Err(e) = Self::field(&mut r, f, &mut map)? {
                r.err = Some(e);
            }
        }
    }
}

/// Classifies a syntactically valid object.
fn classify(r: Raw<'_>) -> Result<Line<'_>, LineError> {
    if let Some(e) = r.err {
        return Err(e);
    }
    if let Some(op) = r.op {
        let others = r.seen & !Field::Op.bit();
        if let Some(f) = Field::ALL.iter().find(|f| others & f.bit() != 0) {
            return Err(bad_field(format!(
                "an op line takes no other keys, found \"{}\"",
                f.name()
            )));
        }
        return match op {
            OpVal::Known(op) => Ok(Line::Op(op)),
            OpVal::Unknown(q) => Err(LineError::new(
                ErrorCode::UnknownOp,
                format!("unknown op {q} (known: flush, ping)"),
            )),
        };
    }
    let model_id = match r.model_id {
        None => return Err(bad_field("missing required key \"model_id\"")),
        Some(id) => id?,
    };
    validate_model_id(model_id)?;
    Ok(Line::Event(Event {
        model_id,
        ts: r.ts,
        drift_score: r.drift_score,
        accuracy: r.accuracy,
        error: r.error,
        value: r.value,
        metrics: r.metrics,
        meta: r.meta,
    }))
}

#[inline]
pub(super) fn is_json_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Strings skipped while rejecting a line are not UTF-8-checked by serde_json, so a rejected
/// line gets a full check: invalid UTF-8 anywhere is bad_json, whatever else was wrong.
/// (An accepted line has had every string validated already.)
fn or_bad_utf8(line: &[u8], e: LineError) -> LineError {
    match std::str::from_utf8(line) {
        Ok(_) => e,
        Err(u) => bad_json(format!("invalid UTF-8 at byte {}", u.valid_up_to())),
    }
}

fn json_error(line: &[u8], e: &serde_json::Error) -> LineError {
    let msg = e.to_string();
    // Every line is line 1; keep only the column.
    let base = msg
        .rsplit_once(" at line ")
        .map_or(msg.as_str(), |(m, _)| m);
    // serde_json reports a number that overflows f64 (1e999) as a syntax error. The contract
    // makes it bad_field, but only if the rest of the line is valid: re-check the syntax with a
    // pass that skips numbers without converting them.
    if base == "number out of range" {
        return match serde_json::from_slice::<IgnoredAny>(line) {
            Ok(_) => or_bad_utf8(
                line,
                bad_field(format!(
                    "number out of range (not finite) at column {}",
                    e.column()
                )),
            ),
            Err(e2) => json_error(line, &e2),
        };
    }
    if let Some(token) = non_finite_token(line, e.column()) {
        return or_bad_utf8(
            line,
            bad_json(format!(
                "{token} at column {} is not a JSON number (JSON has no NaN or Infinity; Python's json.dumps writes them unless allow_nan=False): omit the field or send null",
                e.column()
            )),
        );
    }
    or_bad_utf8(line, bad_json(format!("{base} at column {}", e.column())))
}

/// The NaN or Infinity spelling (as Python, JavaScript and others write them) where a JSON
/// syntax error was found, if that is what is there. `column` is serde_json's, 1-based; the
/// token starts at or just before it.
fn non_finite_token(line: &[u8], column: usize) -> Option<&'static str> {
    const TOKENS: [&str; 8] = [
        "-Infinity",
        "+Infinity",
        "Infinity",
        "-inf",
        "inf",
        "-NaN",
        "NaN",
        "nan",
    ];
    let at = column.checked_sub(1)?;
    (at.saturating_sub(2)..=at).find_map(|start| {
        let rest = line.get(start..)?;
        let prev = start.checked_sub(1).and_then(|p| line.get(p));
        // The token must begin a value: after `:`, `[`, `,` or blanks.
        if prev.is_some_and(|b| !matches!(b, b':' | b'[' | b',' | b' ' | b'\t')) {
            return None;
        }
        TOKENS.iter().copied().find(|t| {
            rest.starts_with(t.as_bytes())
                && !rest
                    .get(t.len())
                    .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
        })
    })
}

/// The reference decoder: serde_json with strict visitors. Handles every input and produces
/// every error.
pub(super) fn decode_full(line: &[u8]) -> Result<Line<'_>, LineError> {
    let Some(first) = line.iter().position(|&b| !is_json_ws(b)) else {
        return Ok(Line::Empty);
    };
    if line[first] != b'{' {
        return Err(or_bad_utf8(line, bad_json("line is not a JSON object")));
    }
    let mut de = serde_json::Deserializer::from_slice(line);
    let parsed = (&mut de)
        .deserialize_map(TopVisitor)
        .and_then(|r| de.end().map(|()| r));
    match parsed {
        Ok(r) => classify(r).map_err(|e| or_bad_utf8(line, e)),
        Err(e) => Err(json_error(line, &e)),
    }
}

#[cfg(test)]
mod tests {
    // The line rules, through decode_line and both of its paths (see testutil::decode).

    use super::*;
    use crate::protocol::scan::decode_line;
    use crate::protocol::testutil::{
        check, check_result, decode, ev, finite, json_value, opt, rej, with_id,
    };
    use proptest::prelude::*;
    use serde_json::{Value, json};

    // ---- events ----------------------------------------------------------------------------

    #[test]
    fn contract_sample_decodes() {
        let line = r#"{"model_id": "fraud-v3", "ts": 1764172800.25, "drift_score": 0.12, "accuracy": 0.93, "error": 0, "value": 4.2, "metrics": {"latency_ms": 12.5}, "meta": {"any": "json"}}"#;
        let e = ev(line);
        assert_eq!(e.model_id, "fraud-v3");
        assert_eq!(e.ts, Some(1764172800.25));
        assert_eq!(e.drift_score, Some(0.12));
        assert_eq!(e.accuracy, Some(0.93));
        assert_eq!(e.error, Some(false));
        assert_eq!(e.value, Some(4.2));
        assert_eq!(e.metrics.as_slice(), &[("latency_ms", 12.5)]);
        assert_eq!(e.meta.unwrap().get(), r#"{"any": "json"}"#);
        // Borrowed, not copied.
        let p = line.as_bytes().as_ptr_range();
        assert!(p.contains(&e.model_id.as_ptr()));
        assert!(p.contains(&e.metrics.as_slice()[0].0.as_ptr()));
        assert!(p.contains(&e.meta.unwrap().get().as_ptr()));
    }

    #[test]
    fn minimal_event_and_whitespace() {
        let e = ev(r#"{"model_id":"a"}"#);
        assert_eq!(
            e,
            Event {
                model_id: "a",
                ..Event::default()
            }
        );
        assert_eq!(ev(" \t{ \"model_id\" : \"a\" }\t \r").model_id, "a");
        let e = ev(r#"{"model_id":"a","ts":1764172800,"value":-3}"#);
        assert_eq!(e.ts, Some(1764172800.0));
        assert_eq!(e.value, Some(-3.0));
    }

    #[test]
    fn null_means_absent() {
        let e = ev(
            r#"{"model_id":"a","ts":null,"drift_score":null,"accuracy":null,"error":null,"value":null,"metrics":null,"meta":null}"#,
        );
        assert_eq!(
            e,
            Event {
                model_id: "a",
                ..Event::default()
            }
        );
    }

    #[test]
    fn empty_lines() {
        for l in ["", " ", "\t", "\r", " \t\r\n "] {
            assert_eq!(decode(l.as_bytes()), Ok(Line::Empty), "{l:?}");
        }
    }

    #[test]
    fn bad_json_cases() {
        for l in [
            "{",
            r#"{"model_id":"a""#,
            r#"{"model_id":"a",}"#,
            r#"{"model_id" "a"}"#,
            r#"{'model_id':'a'}"#,
            r#"{"model_id":NaN}"#,
            r#"{"model_id":"a","ts":Infinity}"#,
            r#"{"model_id":"a","ts":-Infinity}"#,
            r#"{"model_id":"a","ts":01}"#,
            r#"{"model_id":"a","ts":1.}"#,
            "{\"model_id\":\"a\u{1}\"}", // raw control char in a string
            "{\"model_id\":\"a\"}\0",
        ] {
            check(l, ErrorCode::BadJson, "column");
        }
        for l in [
            "[1]",
            "\"s\"",
            "42",
            "null",
            "true",
            "x",
            "\u{feff}{\"model_id\":\"a\"}",
        ] {
            check(l, ErrorCode::BadJson, "not a JSON object");
        }
    }

    #[test]
    fn trailing_bytes_are_bad_json() {
        check(r#"{"model_id":"a"} x"#, ErrorCode::BadJson, "trailing");
        check(r#"{"model_id":"a"}{}"#, ErrorCode::BadJson, "trailing");
        check(
            r#"{"model_id":"a"}{"model_id":"b"}"#,
            ErrorCode::BadJson,
            "trailing",
        );
        check(r#"{"model_id":"a"},"#, ErrorCode::BadJson, "trailing");
    }

    #[test]
    fn invalid_utf8_is_bad_json_even_in_skipped_values() {
        check(b"{\"model_id\":\"a\xff\"}", ErrorCode::BadJson, "");
        check(
            b"{\"model_id\":\"a\",\"x\":\"\xff\"}",
            ErrorCode::BadJson,
            "UTF-8",
        );
        check(
            b"{\"model_id\":\"a\",\"ts\":[\"\xc3\"]}",
            ErrorCode::BadJson,
            "UTF-8",
        );
        check(
            b"{\"model_id\":\"a\",\"meta\":\"\xed\xa0\x80\"}",
            ErrorCode::BadJson,
            "",
        );
        check(b"\xff", ErrorCode::BadJson, "");
    }

    #[test]
    fn syntax_error_wins_over_field_errors() {
        check(r#"{"foo":1,"model_id":}"#, ErrorCode::BadJson, "column");
        // Issue 12.2: what Python's json.dumps writes for float("nan") and float("inf").
        for (line, token) in [
            (r#"{"model_id":"m","drift_score":NaN}"#, "NaN"),
            (r#"{"model_id":"m","drift_score": Infinity}"#, "Infinity"),
            (r#"{"model_id":"m","value":-Infinity}"#, "-Infinity"),
            (r#"{"model_id":"m","metrics":{"a":nan}}"#, "nan"),
        ] {
            check(line, ErrorCode::BadJson, "omit the field or send null");
            check(line, ErrorCode::BadJson, &format!("{token} at column"));
        }
        check(
            r#"{"model_id":"m","drift_score":Nope}"#,
            ErrorCode::BadJson,
            "expected value",
        );
        check(r#"{"model_id":5} x"#, ErrorCode::BadJson, "trailing");
        check(
            r#"{"model_id":"a","metrics":{"":1,"b":}}"#,
            ErrorCode::BadJson,
            "",
        );
        check(
            r#"{"model_id":"../x","ts":1,"ts":2,"#,
            ErrorCode::BadJson,
            "",
        );
        check(r#"{"op":"nope"}}"#, ErrorCode::BadJson, "trailing");
    }

    #[test]
    fn unknown_and_duplicate_keys() {
        check(
            r#"{"model_id":"a","foo":1}"#,
            ErrorCode::BadField,
            "unknown key \"foo\"",
        );
        check(r#"{"Model_id":"a"}"#, ErrorCode::BadField, "unknown key");
        check(
            r#"{"model_id":"a","":1}"#,
            ErrorCode::BadField,
            "unknown key \"\"",
        );
        check(
            r#"{"model_id":"a","model_id":"b"}"#,
            ErrorCode::BadField,
            "duplicate key \"model_id\"",
        );
        check(
            r#"{"model_id":"a","ts":1,"ts":2}"#,
            ErrorCode::BadField,
            "duplicate key \"ts\"",
        );
        check(
            r#"{"model_id":"a","ts":null,"ts":null}"#,
            ErrorCode::BadField,
            "duplicate",
        );
        check(
            r#"{"model_id":"a","meta":1,"meta":1}"#,
            ErrorCode::BadField,
            "duplicate key \"meta\"",
        );
        // Escaped keys are matched by their decoded text.
        check(
            r#"{"model_id":"a","model\u005fid":"b"}"#,
            ErrorCode::BadField,
            "duplicate",
        );
        assert_eq!(ev(r#"{"model\u005fid":"a"}"#).model_id, "a");
        // A huge hostile key is quoted only in part and escaped.
        let key = "k\"\n".repeat(100_000);
        let line = format!("{{{}:1}}", serde_json::to_string(&key).unwrap());
        let e = rej(&line);
        assert_eq!(e.code, ErrorCode::BadField);
        assert!(
            e.detail.starts_with("unknown key \"k\\\"\\n"),
            "{}",
            e.detail
        );
        assert!(e.detail.len() < 200);
    }

    #[test]
    fn missing_model_id() {
        check(
            "{}",
            ErrorCode::BadField,
            "missing required key \"model_id\"",
        );
        check(r#"{"ts":1}"#, ErrorCode::BadField, "model_id");
    }

    #[test]
    fn model_id_rules() {
        for ok in [
            "a",
            "fraud-v3",
            "A.b_c:d/e-f",
            "0",
            "a/b",
            "a.b",
            "a/.b",
            "x:",
            "ns/model/v1.2",
            "a-",
            "a--b",
        ] {
            assert_eq!(ev(&with_id(ok)).model_id, ok);
            assert_eq!(validate_model_id(ok), Ok(()));
        }
        let id128 = "m".repeat(MODEL_ID_MAX);
        assert_eq!(ev(&with_id(&id128)).model_id, id128);
        check(
            with_id(&"m".repeat(129)),
            ErrorCode::BadModelId,
            "129 bytes, max 128",
        );
        check(
            with_id(&"m".repeat(1 << 20)),
            ErrorCode::BadModelId,
            "max 128",
        );
        check(with_id(""), ErrorCode::BadModelId, "empty");
        check(with_id("a..b"), ErrorCode::BadModelId, "\"..\"");
        check(with_id("a/../b"), ErrorCode::BadModelId, "\"..\"");
        check(with_id("a.."), ErrorCode::BadModelId, "\"..\"");
        check(with_id(".a"), ErrorCode::BadModelId, "start with");
        check(with_id(".."), ErrorCode::BadModelId, "start with");
        check(with_id("/a"), ErrorCode::BadModelId, "start with");
        check(with_id("-rf"), ErrorCode::BadModelId, "start with");
        check(with_id("--help"), ErrorCode::BadModelId, "start with");
        check(with_id("modèle"), ErrorCode::BadModelId, "'è' at byte 3");
        check(
            with_id("ｆｕｌｌ"),
            ErrorCode::BadModelId,
            "invalid character",
        );
        check(with_id("a b"), ErrorCode::BadModelId, "' ' at byte 1");
        check(with_id("a\0b"), ErrorCode::BadModelId, "'\\0' at byte 1");
        check(
            with_id(&"\0".repeat(200)),
            ErrorCode::BadModelId,
            "over 128 bytes",
        );
        check(with_id("a\\b"), ErrorCode::BadModelId, "invalid character");
        check(with_id("a\"b"), ErrorCode::BadModelId, "invalid character");
        // Written with escapes: cannot be borrowed, refused even if the decoded text is valid.
        check(
            r#"{"model_id":"a\/b"}"#,
            ErrorCode::BadModelId,
            "JSON escapes",
        );
        check(r#"{"model_id":"\u0061"}"#, ErrorCode::BadModelId, "\"a\"");
        // Non-strings are bad_field.
        for v in ["5", "null", "true", "[\"a\"]", "{\"a\":1}", "1.5"] {
            check(
                format!("{{\"model_id\":{v}}}"),
                ErrorCode::BadField,
                "must be a string",
            );
        }
    }

    #[test]
    fn error_field_forms() {
        let get = |v: &str| ev(&format!("{{\"model_id\":\"a\",\"error\":{v}}}")).error;
        assert_eq!(get("0"), Some(false));
        assert_eq!(get("1"), Some(true));
        assert_eq!(get("false"), Some(false));
        assert_eq!(get("true"), Some(true));
        assert_eq!(get("null"), None);
        for v in [
            "2", "-1", "\"1\"", "\"true\"", "1.0", "0.0", "0.5", "[]", "{}", "1e0",
        ] {
            check(
                format!("{{\"model_id\":\"a\",\"error\":{v}}}"),
                ErrorCode::BadField,
                "\"error\" must be 0, 1, true or false",
            );
        }
    }

    #[test]
    fn number_fields() {
        for f in ["ts", "drift_score", "accuracy", "value"] {
            for v in ["\"1\"", "true", "[1]", "{\"x\":1}"] {
                check(
                    format!("{{\"model_id\":\"a\",\"{f}\":{v}}}"),
                    ErrorCode::BadField,
                    &format!("\"{f}\" must be a finite number"),
                );
            }
        }
        let e = ev(r#"{"model_id":"a","ts":1e-999,"value":123456789012345678901234567890}"#);
        assert_eq!(e.ts, Some(0.0));
        assert_eq!(e.value, Some(1.2345678901234568e29));
        assert_eq!(ev(r#"{"model_id":"a","value":-0.0}"#).value, Some(-0.0));
    }

    #[test]
    fn overflowing_numbers_are_bad_field() {
        for l in [
            r#"{"model_id":"a","ts":1e999}"#,
            r#"{"model_id":"a","value":-1e999}"#,
            r#"{"ts":1e400,"model_id":"a"}"#,
            r#"{"model_id":"a","metrics":{"x":1e999}}"#,
            r#"{"model_id":"a","error":1e999}"#,
        ] {
            check(l, ErrorCode::BadField, "number out of range");
        }
        let digits = "9".repeat(400);
        check(
            format!("{{\"model_id\":\"a\",\"accuracy\":{digits}}}"),
            ErrorCode::BadField,
            "out of range",
        );
        // ... unless the line is not valid JSON anyway.
        check(
            r#"{"model_id":"a","ts":1e999} x"#,
            ErrorCode::BadJson,
            "trailing",
        );
        check(r#"{"model_id":"a","ts":1e999,"#, ErrorCode::BadJson, "");
        check(
            b"{\"model_id\":\"a\",\"ts\":1e999,\"x\":\"\xff\"}",
            ErrorCode::BadJson,
            "UTF-8",
        );
        // Not interpreted inside meta.
        let e = ev(r#"{"model_id":"a","meta":{"big":1e999}}"#);
        assert_eq!(e.meta.unwrap().get(), r#"{"big":1e999}"#);
    }

    #[test]
    fn meta_is_raw_and_never_interpreted() {
        let meta = r#"{"a":[1,{"b":null,"c":[[],{}]}],"d":"\u0000\"\\","e":-0.0e-5,"é":"ü","model_id":5,"op":"x"}"#;
        let line = format!(r#"{{"model_id":"a","meta":{meta}}}"#);
        assert_eq!(ev(&line).meta.unwrap().get(), meta);
        for m in ["\"s\"", "[1,2]", "3.5", "true", "{}", "[]"] {
            let line = format!(r#"{{"model_id":"a","meta": {m} }}"#);
            assert_eq!(ev(&line).meta.unwrap().get(), m);
        }
        // Deep nesting: serde_json skips raw values without recursion, so no stack overflow.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let line = format!(r#"{{"model_id":"a","meta":{deep}}}"#);
        assert_eq!(ev(&line).meta.unwrap().get().len(), deep.len());
        let unbalanced = format!(r#"{{"model_id":"a","meta":{}}}"#, "[".repeat(1000));
        check(unbalanced, ErrorCode::BadJson, "");
        check(r#"{"model_id":"a","meta":}"#, ErrorCode::BadJson, "");
    }

    #[test]
    fn metrics_rules() {
        let m = |body: &str| format!("{{\"model_id\":\"a\",\"metrics\":{body}}}");
        assert!(ev(&m("{}")).metrics.is_empty());
        let line = m(r#"{"latency_ms":12.5,"a.b:c-d_E9":-1,"n":3}"#);
        let e = ev(&line);
        assert_eq!(e.metrics.len(), 3);
        assert_eq!(e.metrics.get("a.b:c-d_E9"), Some(-1.0));
        assert_eq!(e.metrics.get("nope"), None);
        check(
            m(r#"{"x":1,"x":2}"#),
            ErrorCode::BadField,
            "duplicate metric \"x\"",
        );
        check(m(r#"{"":1}"#), ErrorCode::BadField, "metric name is empty");
        check(
            m(r#"{"a b":1}"#),
            ErrorCode::BadField,
            "invalid character ' '",
        );
        check(
            m(r#"{"a/b":1}"#),
            ErrorCode::BadField,
            "invalid character '/'",
        );
        check(
            m(r#"{"été":1}"#),
            ErrorCode::BadField,
            "invalid character 'é'",
        );
        check(
            m(r#"{"lat\u0065ncy":1}"#),
            ErrorCode::BadField,
            "JSON escapes",
        );
        for reserved in ["accuracy", "drift_score", "error", "value"] {
            check(
                m(&format!("{{\"{reserved}\":1}}")),
                ErrorCode::BadField,
                "reserved",
            );
        }
        let n64 = "n".repeat(64);
        assert_eq!(
            ev(&m(&format!("{{\"{n64}\":1}}"))).metrics.get(&n64),
            Some(1.0)
        );
        check(
            m(&format!("{{\"{n64}x\":1}}")),
            ErrorCode::BadField,
            "65 bytes, max 64",
        );
        for v in ["\"1\"", "null", "true", "[]", "{}"] {
            check(
                m(&format!("{{\"x\":{v}}}")),
                ErrorCode::BadField,
                "must be a finite number",
            );
        }
        for v in ["[]", "[{\"x\":1}]", "1", "\"x\"", "true"] {
            check(m(v), ErrorCode::BadField, "metrics must be an object");
        }
        // Entry limit.
        let body = |n: usize| {
            let kv: Vec<String> = (0..n).map(|i| format!("\"m{i}\":{i}")).collect();
            format!("{{{}}}", kv.join(","))
        };
        let line = m(&body(METRICS_MAX));
        let e = ev(&line);
        assert_eq!(e.metrics.len(), METRICS_MAX);
        let names: Vec<String> = (0..METRICS_MAX).map(|i| format!("m{i}")).collect();
        for (i, (name, v)) in e.metrics.iter().enumerate() {
            assert_eq!((name, v), (names[i].as_str(), i as f64), "line order kept");
        }
        assert_eq!(e.metric("m63"), Some(63.0));
        check(
            m(&body(METRICS_MAX + 1)),
            ErrorCode::BadField,
            "more than 64 metrics",
        );
        check(
            m(&body(10_000)),
            ErrorCode::BadField,
            "more than 64 metrics",
        );
    }

    // ---- ops -------------------------------------------------------------------------------

    #[test]
    fn ops() {
        assert_eq!(decode(br#"{"op":"flush"}"#), Ok(Line::Op(Op::Flush)));
        assert_eq!(decode(br#" { "op" : "ping" } "#), Ok(Line::Op(Op::Ping)));
        assert_eq!(decode(br#"{"op":"fl\u0075sh"}"#), Ok(Line::Op(Op::Flush)));
        check(
            r#"{"op":"nope"}"#,
            ErrorCode::UnknownOp,
            "unknown op \"nope\"",
        );
        check(r#"{"op":"FLUSH"}"#, ErrorCode::UnknownOp, "FLUSH");
        check(r#"{"op":""}"#, ErrorCode::UnknownOp, "unknown op");
        check(r#"{"op":"\u0000"}"#, ErrorCode::UnknownOp, "\\0");
        check(
            format!("{{\"op\":\"{}\"}}", "x".repeat(100_000)),
            ErrorCode::UnknownOp,
            "...",
        );
        check(
            r#"{"op":"flush","x":1}"#,
            ErrorCode::BadField,
            "unknown key \"x\"",
        );
        check(
            r#"{"op":"flush","ts":1}"#,
            ErrorCode::BadField,
            "no other keys, found \"ts\"",
        );
        check(
            r#"{"op":"flush","model_id":"a"}"#,
            ErrorCode::BadField,
            "\"model_id\"",
        );
        check(
            r#"{"model_id":"a","op":"flush"}"#,
            ErrorCode::BadField,
            "no other keys",
        );
        check(
            r#"{"op":"flush","model_id":"../x"}"#,
            ErrorCode::BadField,
            "no other keys",
        );
        check(
            r#"{"op":"flush","model_id":5}"#,
            ErrorCode::BadField,
            "must be a string",
        );
        check(r#"{"op":"nope","x":1}"#, ErrorCode::BadField, "unknown key");
        check(
            r#"{"op":"nope","model_id":"a"}"#,
            ErrorCode::BadField,
            "no other keys",
        );
        check(
            r#"{"op":"flush","op":"flush"}"#,
            ErrorCode::BadField,
            "duplicate key \"op\"",
        );
        for v in ["1", "null", "true", "[\"flush\"]", "{\"flush\":1}"] {
            check(
                format!("{{\"op\":{v}}}"),
                ErrorCode::BadField,
                "\"op\" must be a string",
            );
        }
        assert_eq!(Op::from_name("ping"), Some(Op::Ping));
        assert_eq!(Op::from_name("Ping"), None);
        for op in Op::ALL {
            assert_eq!(Op::from_name(op.as_str()), Some(op));
        }
    }

    /// JSON-ish token soup, to get past the syntax checks into the field logic.
    fn token_soup() -> impl Strategy<Value = Vec<u8>> {
        let tok = prop_oneof![
            Just("{"),
            Just("}"),
            Just("["),
            Just("]"),
            Just(":"),
            Just(","),
            Just("\"model_id\""),
            Just("\"ts\""),
            Just("\"error\""),
            Just("\"metrics\""),
            Just("\"meta\""),
            Just("\"op\""),
            Just("\"flush\""),
            Just("\"ping\""),
            Just("\"a\""),
            Just("\"a..b\""),
            Just("\"x\\u0041\""),
            Just("1"),
            Just("0"),
            Just("-2.5e3"),
            Just("1e999"),
            Just("null"),
            Just("true"),
            Just(" "),
            Just("\"\u{e9}\""),
        ];
        prop::collection::vec(tok, 0..40).prop_map(|t| t.concat().into_bytes())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn decode_never_panics_on_bytes(line in prop::collection::vec(any::<u8>(), 0..300)) {
            check_result(&line, &decode_line(&line));
        }

        #[test]
        fn decode_never_panics_on_token_soup(line in token_soup()) {
            check_result(&line, &decode_line(&line));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn valid_events_round_trip(
            id in "[A-Za-z0-9_:][A-Za-z0-9._:/-]{0,127}".prop_filter("no ..", |s| !s.contains("..")),
            ts in opt(finite()),
            drift in opt(finite()),
            acc in opt(finite()),
            value in opt(finite()),
            error in opt(0u8..4),
            metrics in opt(prop::collection::btree_map(
                "[A-Za-z0-9_.:-]{1,64}".prop_filter("reserved", |n| {
                    !matches!(n.as_str(), "drift_score" | "accuracy" | "error" | "value")
                }),
                finite(),
                0..=METRICS_MAX,
            )),
            meta in opt(json_value()),
            pad in any::<bool>(),
        ) {
            let mut obj = serde_json::Map::new();
            obj.insert("model_id".into(), Value::from(id.clone()));
            let mut put = |k: &str, v: Option<Option<Value>>| {
                if let Some(v) = v {
                    obj.insert(k.into(), v.unwrap_or(Value::Null));
                }
            };
            put("ts", ts.map(|o| o.map(Value::from)));
            put("drift_score", drift.map(|o| o.map(Value::from)));
            put("accuracy", acc.map(|o| o.map(Value::from)));
            put("value", value.map(|o| o.map(Value::from)));
            put("error", error.map(|o| o.map(|e| match e {
                0 => json!(0),
                1 => json!(1),
                2 => json!(false),
                _ => json!(true),
            })));
            put("metrics", metrics.clone().map(|o| o.map(|m| {
                Value::Object(m.into_iter().map(|(k, v)| (k, Value::from(v))).collect())
            })));
            put("meta", meta.clone());
            let mut text = Value::Object(obj).to_string();
            if pad {
                text = format!(" \t{text} \r");
            }
            // Expected numbers: what serde_json itself parses from the same text (its default
            // float parsing may differ from the generated f64 in the last bit).
            let reparsed: Value = serde_json::from_str(&text).unwrap();
            let num = |k: &str| reparsed.get(k).and_then(Value::as_f64);

            let e = match decode_line(text.as_bytes()) {
                Ok(Line::Event(e)) => e,
                other => panic!("{text}: {other:?}"),
            };
            prop_assert_eq!(e.model_id, id.as_str());
            prop_assert_eq!(e.ts, num("ts"));
            prop_assert_eq!(e.drift_score, num("drift_score"));
            prop_assert_eq!(e.accuracy, num("accuracy"));
            prop_assert_eq!(e.value, num("value"));
            // And close to the generated value (serde_json's default float parsing is not
            // always correctly rounded, and loses bits on subnormals).
            if let Some(Some(x)) = ts.filter(|t| t.is_some_and(f64::is_normal)) {
                prop_assert!((e.ts.unwrap() - x).abs() <= x.abs() * 1e-14);
            }
            prop_assert_eq!(e.error, error.flatten().map(|k| k % 2 == 1));
            let want: Vec<(&str, f64)> = match reparsed.get("metrics").and_then(Value::as_object) {
                Some(m) => m.iter().map(|(k, v)| (k.as_str(), v.as_f64().unwrap())).collect(),
                None => Vec::new(),
            };
            prop_assert_eq!(e.metrics.as_slice(), &want[..]);
            match meta.flatten() {
                None | Some(Value::Null) => prop_assert!(e.meta.is_none()),
                Some(_) => {
                    let raw: Value = serde_json::from_str(e.meta.unwrap().get()).unwrap();
                    prop_assert_eq!(&raw, &reparsed["meta"]);
                }
            }
        }
    }
}
