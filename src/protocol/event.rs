//! What a line decodes to ([`Line`]: an [`Event`], an [`Op`] or nothing), and the rules on the
//! names a client chooses: `model_id` and metric names.
//!
//! Invariants:
//! * An [`Event`] borrows every string from the line it was decoded from (no copy, no
//!   allocation for up to [`METRICS_INLINE`] metrics).
//! * A decoded `model_id` always passes [`validate_model_id`] and a decoded metric name
//!   [`validate_metric_name`]: ids reach paths, argv and log lines, so both decoders check
//!   them with these rules (the scanner through the same byte tables).
//! * No metric is named like a top-level metric, so [`Event::metric`] is never ambiguous.

use std::fmt;

use serde_json::value::RawValue;

use super::error::{LineError, bad_field, bad_model_id, quoted};

/// Longest accepted `model_id`, in bytes.
pub const MODEL_ID_MAX: usize = 128;
/// Longest accepted metric name, in bytes.
pub const METRIC_NAME_MAX: usize = 64;
/// Most entries accepted in `metrics`.
pub const METRICS_MAX: usize = 64;
/// Metrics kept inline in an [`Event`] before spilling to the heap.
pub const METRICS_INLINE: usize = 8;

/// Named extra metrics of an event, borrowed from the line. Up to [`METRICS_INLINE`] entries live
/// inline (no allocation, the common case); more spill into one `Vec`.
#[derive(Clone)]
pub struct Metrics<'a> {
    inline_len: usize,
    inline: [(&'a str, f64); METRICS_INLINE],
    /// Non-empty only after spilling; then it holds all entries.
    spill: Vec<(&'a str, f64)>,
}

impl Default for Metrics<'_> {
    #[inline]
    fn default() -> Self {
        Metrics {
            inline_len: 0,
            inline: [("", 0.0); METRICS_INLINE],
            spill: Vec::new(),
        }
    }
}

impl<'a> Metrics<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries in line order.
    #[inline]
    pub fn as_slice(&self) -> &[(&'a str, f64)] {
        if self.spill.is_empty() {
            &self.inline[..self.inline_len]
        } else {
            &self.spill
        }
    }

    /// `(name, value)` in line order.
    #[inline]
    pub fn iter(&self) -> std::iter::Copied<std::slice::Iter<'_, (&'a str, f64)>> {
        self.as_slice().iter().copied()
    }

    /// Value of the metric `name` (linear scan: there are at most [`METRICS_MAX`]).
    #[inline]
    pub fn get(&self, name: &str) -> Option<f64> {
        self.as_slice()
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, v)| v)
    }

    /// Appends an entry without any validation (the decoder validates; this is for building
    /// events by hand, e.g. in tests).
    // Not #[inline] (unlike its neighbours): inlined into the scanner, it cost decode_line
    // ~24 more instructions per typical event (callgrind).
    pub fn push(&mut self, name: &'a str, value: f64) {
        if !self.spill.is_empty() {
            self.spill.push((name, value));
        } else if self.inline_len < METRICS_INLINE {
            self.inline[self.inline_len] = (name, value);
            self.inline_len += 1;
        } else {
            self.spill.reserve(METRICS_INLINE * 2);
            self.spill.extend_from_slice(&self.inline);
            self.spill.push((name, value));
        }
    }
}

impl fmt::Debug for Metrics<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl PartialEq for Metrics<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<'s, 'a> IntoIterator for &'s Metrics<'a> {
    type Item = (&'a str, f64);
    type IntoIter = std::iter::Copied<std::slice::Iter<'s, (&'a str, f64)>>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// One model event, borrowing every string from the input line.
#[derive(Debug, Clone, Default)]
pub struct Event<'a> {
    pub model_id: &'a str,
    /// Unix seconds.
    pub ts: Option<f64>,
    pub drift_score: Option<f64>,
    pub accuracy: Option<f64>,
    pub error: Option<bool>,
    pub value: Option<f64>,
    pub metrics: Metrics<'a>,
    /// Raw JSON text of `meta`, never interpreted.
    pub meta: Option<&'a RawValue>,
}

impl Event<'_> {
    /// The value of a metric by the name policies use: "drift_score", "accuracy", "error"
    /// (1.0/0.0), "value", else a key of `metrics`. The decoder refuses those four names inside
    /// `metrics`, so this lookup is never ambiguous.
    pub fn metric(&self, name: &str) -> Option<f64> {
        match name {
            "drift_score" => self.drift_score,
            "accuracy" => self.accuracy,
            "error" => self.error.map(|e| if e { 1.0 } else { 0.0 }),
            "value" => self.value,
            _ => self.metrics.get(name),
        }
    }
}

impl PartialEq for Event<'_> {
    fn eq(&self, o: &Self) -> bool {
        self.model_id == o.model_id
            && self.ts == o.ts
            && self.drift_score == o.drift_score
            && self.accuracy == o.accuracy
            && self.error == o.error
            && self.value == o.value
            && self.metrics == o.metrics
            && self.meta.map(RawValue::get) == o.meta.map(RawValue::get)
    }
}

/// Control operations (`{"op": "<name>"}`). A new op is a new variant plus its name in
/// [`Op::as_str`] and [`Op::ALL`]; the enum is deliberately exhaustive so that every `match` on
/// it fails to compile until the new op is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// Barrier: reply `{"ok":true,"accepted":A,"rejected":R}` once everything before is durable.
    Flush,
    /// Liveness check: reply [`PING_REPLY`](super::PING_REPLY).
    Ping,
}

impl Op {
    pub const ALL: [Op; 2] = [Op::Flush, Op::Ping];

    pub fn as_str(&self) -> &'static str {
        match self {
            Op::Flush => "flush",
            Op::Ping => "ping",
        }
    }

    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.as_str() == name)
    }
}

/// A decoded line.
// An Event is ~350 bytes because metrics are inline; boxing it would cost the per-event heap
// allocation this module exists to avoid, and a Line lives only briefly on the stack.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Line<'a> {
    Event(Event<'a>),
    Op(Op),
    /// Blank line: skipped, not counted as accepted or rejected.
    Empty,
}

const fn byte_class(extra: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut c = 0usize;
    while c < 256 {
        t[c] = (c as u8).is_ascii_alphanumeric();
        c += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
}

pub(super) static MODEL_ID_BYTES: [bool; 256] = byte_class(b"._:/-");
pub(super) static METRIC_NAME_BYTES: [bool; 256] = byte_class(b"_.:-");
/// Model id bytes allowed anywhere in an id ('.' has position rules, '/' only a first-byte one).
pub(super) static MODEL_ID_PLAIN: [bool; 256] = byte_class(b"_:/-");

/// Describes the offending char at byte `i` of `s` (Debug form, so it is always printable).
fn char_at(s: &str, i: usize) -> String {
    match s[i..].chars().next() {
        Some(c) => format!("{c:?} at byte {i}"),
        None => format!("byte {i}"),
    }
}

/// Checks the `model_id` rules (see the module doc); errors are `bad_model_id`.
pub fn validate_model_id(id: &str) -> Result<(), LineError> {
    let b = id.as_bytes();
    if b.is_empty() {
        return Err(bad_model_id("model_id is empty"));
    }
    if b.len() > MODEL_ID_MAX {
        return Err(bad_model_id(format!(
            "model_id is {} bytes, max {MODEL_ID_MAX}",
            b.len()
        )));
    }
    // Ids may end up in paths, argv and log lines: no hidden/absolute/parent-relative forms,
    // and nothing a program would take for an option.
    if b[0] == b'.' || b[0] == b'/' || b[0] == b'-' {
        return Err(bad_model_id("model_id must not start with '.', '/' or '-'"));
    }
    let mut prev = 0u8;
    for (i, &c) in b.iter().enumerate() {
        if !MODEL_ID_BYTES[c as usize] {
            return Err(bad_model_id(format!(
                "model_id has invalid character {} (allowed: A-Z a-z 0-9 . _ : / -)",
                char_at(id, i)
            )));
        }
        if c == b'.' && prev == b'.' {
            return Err(bad_model_id("model_id must not contain \"..\""));
        }
        prev = c;
    }
    Ok(())
}

/// The top-level metrics, which `metrics` may not name again.
#[inline]
pub(crate) fn is_reserved_metric(name: &[u8]) -> bool {
    matches!(name, b"drift_score" | b"accuracy" | b"error" | b"value")
}

/// Checks a metric name (see the module doc); errors are `bad_field`.
pub fn validate_metric_name(name: &str) -> Result<(), LineError> {
    let b = name.as_bytes();
    if b.is_empty() {
        return Err(bad_field("metric name is empty"));
    }
    if b.len() > METRIC_NAME_MAX {
        return Err(bad_field(format!(
            "metric name {} is {} bytes, max {METRIC_NAME_MAX}",
            quoted(name),
            b.len()
        )));
    }
    if let Some(i) = b.iter().position(|&c| !METRIC_NAME_BYTES[c as usize]) {
        return Err(bad_field(format!(
            "metric name {} has invalid character {} (allowed: A-Z a-z 0-9 _ . : -)",
            quoted(name),
            char_at(name, i)
        )));
    }
    if is_reserved_metric(name.as_bytes()) {
        return Err(bad_field(format!(
            "metric name \"{name}\" is reserved: send it as a top-level key"
        )));
    }
    Ok(())
}

/// Top-level keys. The discriminant is the bit used to catch duplicates.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Field {
    ModelId,
    Ts,
    DriftScore,
    Accuracy,
    Error,
    Value,
    Metrics,
    Meta,
    Op,
}

impl Field {
    pub(super) const ALL: [Field; 9] = [
        Field::ModelId,
        Field::Ts,
        Field::DriftScore,
        Field::Accuracy,
        Field::Error,
        Field::Value,
        Field::Metrics,
        Field::Meta,
        Field::Op,
    ];

    pub(super) fn name(self) -> &'static str {
        match self {
            Field::ModelId => "model_id",
            Field::Ts => "ts",
            Field::DriftScore => "drift_score",
            Field::Accuracy => "accuracy",
            Field::Error => "error",
            Field::Value => "value",
            Field::Metrics => "metrics",
            Field::Meta => "meta",
            Field::Op => "op",
        }
    }

    pub(super) fn from_name(s: &str) -> Option<Field> {
        Some(match s {
            "model_id" => Field::ModelId,
            "ts" => Field::Ts,
            "drift_score" => Field::DriftScore,
            "accuracy" => Field::Accuracy,
            "error" => Field::Error,
            "value" => Field::Value,
            "metrics" => Field::Metrics,
            "meta" => Field::Meta,
            "op" => Field::Op,
            _ => return None,
        })
    }

    #[inline]
    pub(super) fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::testutil::ev;

    #[test]
    fn metrics_inline_and_spilled() {
        let mut m = Metrics::new();
        for (i, name) in ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]
            .iter()
            .enumerate()
        {
            m.push(name, i as f64);
            assert_eq!(m.len(), i + 1);
            assert_eq!(m.get("a"), Some(0.0));
            assert_eq!(m.get(name), Some(i as f64));
        }
        let v: Vec<_> = (&m).into_iter().map(|(n, _)| n).collect();
        assert_eq!(v.concat(), "abcdefghij");
        assert_eq!(format!("{:?}", Metrics::new()), "{}");
    }

    #[test]
    fn event_metric_lookup() {
        let e = ev(
            r#"{"model_id":"a","drift_score":0.1,"accuracy":0.9,"error":true,"value":7,"metrics":{"lat":3}}"#,
        );
        assert_eq!(e.metric("drift_score"), Some(0.1));
        assert_eq!(e.metric("accuracy"), Some(0.9));
        assert_eq!(e.metric("error"), Some(1.0));
        assert_eq!(e.metric("value"), Some(7.0));
        assert_eq!(e.metric("lat"), Some(3.0));
        assert_eq!(e.metric("ts"), None);
        assert_eq!(e.metric("nope"), None);
        assert_eq!(
            ev(r#"{"model_id":"a","error":0}"#).metric("error"),
            Some(0.0)
        );
        assert_eq!(ev(r#"{"model_id":"a"}"#).metric("error"), None);
    }
}
