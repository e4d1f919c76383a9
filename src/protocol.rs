//! Wire protocol between model servers and the daemon: NDJSON over a Unix socket.
//!
//! Every byte on the socket may be hostile, so framing and decoding are strict, bounded and
//! allocation-free on the happy path (events borrow from the read buffer).
//!
//! ```text
//!   socket ──read──► LineReader (one fixed-bound buffer per connection)
//!                      │
//!                      │  buf: [ consumed | line\n line\n line\n | partial line | free      ]
//!                      │        0          start                  (scan)          end  capacity
//!                      │        capacity ≤ max_line_bytes + 2 + 64 KiB, never grows past it
//!                      │
//!                      ├─ fill().await      wait until ≥ 1 frame is complete (or EOF)
//!                      └─ batch()           every complete frame, borrowed from the buffer
//!                            │
//!                            ├─ Frame::Line(bytes) ─► decode_line ─┬─► Line::Event(Event<'buf>)
//!                            │   ("\n" or "\r\n" stripped)         ├─► Line::Op(Flush | Ping)
//!                            │                                     ├─► Line::Empty (not a rejection)
//!                            │                                     └─► Err(LineError) ─► error_reply
//!                            └─ Frame::TooLong ─► error_reply(line_too_long)
//!                               (the rest of that line is skipped up to its "\n", never stored)
//! ```
//!
//! Every frame (`Line`, `TooLong`, blank lines too) is exactly one line: the caller numbers them
//! 1, 2, 3, … per connection and uses that number in error replies.
//!
//! # Framing rules
//! * Lines end with `\n`. One `\r` right before it is stripped too (CRLF senders work).
//! * A line longer than `max_line_bytes` (excluding the terminator) yields one [`Frame::TooLong`];
//!   its bytes are dropped while reading, so memory stays O(max_line_bytes + 64 KiB).
//! * A final line without `\n` at EOF is still a line.
//!
//! # Line rules ([`decode_line`])
//! * Empty or whitespace-only (space, tab, CR, LF) line: [`Line::Empty`]. The daemon skips it and
//!   does not count it as rejected (it still takes a line number).
//! * Anything that is not exactly one UTF-8 JSON object, optionally surrounded by whitespace:
//!   `bad_json` (syntax errors, invalid UTF-8, trailing bytes, top level not an object).
//! * Event keys: `model_id` (required), `ts`, `drift_score`, `accuracy`, `value` (finite
//!   numbers), `error` (`0`, `1`, `true`, `false`), `metrics` (object of name → finite number),
//!   `meta` (any JSON, kept raw and never interpreted). `null` for an optional key means absent.
//! * `model_id`: 1..=128 bytes of `[A-Za-z0-9._:/-]`, not starting with `.` or `/`, never
//!   containing `..`, written without JSON escapes (the event borrows it from the line):
//!   `bad_model_id`. A non-string `model_id`: `bad_field`.
//! * Metric names: 1..=64 bytes of `[A-Za-z0-9_.:-]`, no JSON escapes, not one of the top-level
//!   metric names (`drift_score`, `accuracy`, `error`, `value`, which would be ambiguous in
//!   [`Event::metric`]); at most 64 metrics; duplicates rejected. All violations: `bad_field`.
//! * Numbers too large for f64 (`1e999`) are `bad_field` (serde_json already refuses NaN/Infinity
//!   literals as `bad_json`). Inside `meta` they are fine: meta is not interpreted.
//! * Unknown or duplicate top-level keys, wrong value types: `bad_field`.
//! * Ops: `{"op":"flush"}` (flush barrier) and `{"op":"ping"}`. Any other key beside `op`
//!   (including `model_id`): `bad_field`. Unknown op name: `unknown_op`. Non-string op: `bad_field`.
//! * One line with several faults gets one code, chosen as: `bad_json` (the whole line is always
//!   parsed, so a syntax error anywhere wins) > the first `bad_field` in key order >
//!   op/model_id checks (`bad_field` for op + other keys, `unknown_op`, missing `model_id`,
//!   `bad_model_id`).
//!
//! # Replies (one line each, `\n`-terminated; details are JSON-escaped, ≤ [`DETAIL_MAX`] bytes)
//! * rejected line: `{"error":"<code>","line":<n>,"detail":"..."}`
//! * flush: `{"ok":true,"accepted":A,"rejected":R}`, or `{"ok":false,"error":"<code>","detail":"..."}`
//!   when durability failed
//! * ping: `{"ok":true}`

use serde::Deserializer as _;
use serde::de::{self, Deserialize, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest accepted `model_id`, in bytes.
pub const MODEL_ID_MAX: usize = 128;
/// Longest accepted metric name, in bytes.
pub const METRIC_NAME_MAX: usize = 64;
/// Most entries accepted in `metrics`.
pub const METRICS_MAX: usize = 64;
/// Longest `detail` in a reply, in bytes before JSON escaping (so a reply is always small).
pub const DETAIL_MAX: usize = 200;
/// Metrics kept inline in an [`Event`] before spilling to the heap.
pub const METRICS_INLINE: usize = 8;
/// Minimum free space for one read; the reader's buffer is `max_line_bytes + 2 + READ_CHUNK`.
pub const READ_CHUNK: usize = 64 * 1024;
/// Reply to `{"op":"ping"}`.
pub const PING_REPLY: &[u8] = b"{\"ok\":true}\n";

/// How much of a hostile name or value is quoted back in a detail.
const QUOTE_MAX: usize = 64;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Error codes sent to clients (`"error": "<code>"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Not one UTF-8 JSON object (syntax, encoding, trailing bytes, not an object).
    BadJson,
    /// Unknown/duplicate key, wrong type, invalid metric, non-finite number, bad op line shape.
    BadField,
    /// `model_id` breaks the id rules.
    BadModelId,
    /// Line longer than the connection's limit (produced by the daemon from [`Frame::TooLong`]).
    LineTooLong,
    /// The daemon tracks too many models already (produced by the daemon).
    TooManyModels,
    /// `op` names no known op.
    UnknownOp,
    /// The daemon failed internally, e.g. the store could not persist (flush error replies).
    Internal,
    /// The daemon serves `max_connections` already; sent once, then the connection closes.
    TooManyConnections,
    /// Nothing arrived for `idle_timeout_s`; sent once, then the connection closes.
    IdleTimeout,
}

impl ErrorCode {
    /// Every code, for tests and docs.
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::BadJson,
        ErrorCode::BadField,
        ErrorCode::BadModelId,
        ErrorCode::LineTooLong,
        ErrorCode::TooManyModels,
        ErrorCode::UnknownOp,
        ErrorCode::Internal,
        ErrorCode::TooManyConnections,
        ErrorCode::IdleTimeout,
    ];

    /// The code as sent on the wire.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadField => "bad_field",
            ErrorCode::BadModelId => "bad_model_id",
            ErrorCode::LineTooLong => "line_too_long",
            ErrorCode::TooManyModels => "too_many_models",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::Internal => "internal",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::IdleTimeout => "idle_timeout",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why one line was rejected. `detail` is human-readable, bounded to [`DETAIL_MAX`] bytes and
/// quotes at most a short, escaped prefix of any client-supplied text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct LineError {
    pub code: ErrorCode,
    pub detail: String,
}

impl LineError {
    /// Builds an error; the detail is cut to [`DETAIL_MAX`] bytes at a char boundary.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        let mut detail = detail.into();
        if detail.len() > DETAIL_MAX {
            let (kept, _) = bounded_detail(&detail);
            let cut = kept.len();
            detail.truncate(cut);
            detail.push_str("...");
        }
        LineError { code, detail }
    }

    /// The `line_too_long` error for a [`Frame::TooLong`].
    pub fn too_long(max_line_bytes: usize) -> Self {
        LineError::new(
            ErrorCode::LineTooLong,
            format!("line longer than {max_line_bytes} bytes"),
        )
    }

    /// Appends this error's reply line to `out`.
    pub fn write_reply(&self, line: u64, out: &mut Vec<u8>) {
        write_error_reply(out, self.code, line, &self.detail);
    }
}

fn bad_field(detail: impl Into<String>) -> LineError {
    LineError::new(ErrorCode::BadField, detail)
}

fn bad_json(detail: impl Into<String>) -> LineError {
    LineError::new(ErrorCode::BadJson, detail)
}

fn bad_model_id(detail: impl Into<String>) -> LineError {
    LineError::new(ErrorCode::BadModelId, detail)
}

/// Longest prefix of `s` of at most `max` bytes that ends on a char boundary.
fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    &s[..i]
}

/// The part of a detail that fits in [`DETAIL_MAX`] bytes together with a "..." marker, and
/// whether it was cut.
fn bounded_detail(detail: &str) -> (&str, bool) {
    if detail.len() <= DETAIL_MAX {
        (detail, false)
    } else {
        (truncate_str(detail, DETAIL_MAX - 3), true)
    }
}

/// Client text for a detail: a short prefix, Rust-escaped and quoted so that control characters
/// and quotes cannot confuse a reader of the log or reply.
fn quoted(s: &str) -> String {
    let t = truncate_str(s, QUOTE_MAX);
    if t.len() < s.len() {
        format!("{t:?}...")
    } else {
        format!("{t:?}")
    }
}

// ---------------------------------------------------------------------------------------------
// Decoded lines
// ---------------------------------------------------------------------------------------------

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

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries in line order.
    pub fn as_slice(&self) -> &[(&'a str, f64)] {
        if self.spill.is_empty() {
            &self.inline[..self.inline_len]
        } else {
            &self.spill
        }
    }

    /// `(name, value)` in line order.
    pub fn iter(&self) -> std::iter::Copied<std::slice::Iter<'_, (&'a str, f64)>> {
        self.as_slice().iter().copied()
    }

    /// Value of the metric `name` (linear scan: there are at most [`METRICS_MAX`]).
    pub fn get(&self, name: &str) -> Option<f64> {
        self.as_slice()
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, v)| v)
    }

    /// Appends an entry without any validation (the decoder validates; this is for building
    /// events by hand, e.g. in tests).
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

/// Control operations (`{"op": "<name>"}`). New ops are added here and in [`Op::from_name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Op {
    /// Barrier: reply `{"ok":true,"accepted":A,"rejected":R}` once everything before is durable.
    Flush,
    /// Liveness check: reply [`PING_REPLY`].
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

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

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

static MODEL_ID_BYTES: [bool; 256] = byte_class(b"._:/-");
static METRIC_NAME_BYTES: [bool; 256] = byte_class(b"_.:-");

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
    // Ids may end up in paths and log lines: no hidden/absolute/parent-relative forms.
    if b[0] == b'.' || b[0] == b'/' {
        return Err(bad_model_id("model_id must not start with '.' or '/'"));
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
    if matches!(name, "drift_score" | "accuracy" | "error" | "value") {
        return Err(bad_field(format!(
            "metric name \"{name}\" is reserved: send it as a top-level key"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Decoder
// ---------------------------------------------------------------------------------------------

/// Top-level keys. The discriminant is the bit used to catch duplicates.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Field {
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
    const ALL: [Field; 9] = [
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

    fn name(self) -> &'static str {
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

    fn from_name(s: &str) -> Option<Field> {
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

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

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
/// prefix is kept (for op matching and details) so hostile input cannot make us copy much.
struct Escaped {
    prefix: String,
    complete: bool,
}

impl Escaped {
    fn new(s: &str) -> Self {
        let t = truncate_str(s, QUOTE_MAX);
        Escaped {
            prefix: t.to_owned(),
            complete: t.len() == s.len(),
        }
    }

    fn quoted(&self) -> String {
        if self.complete {
            format!("{:?}", self.prefix)
        } else {
            format!("{:?}...", self.prefix)
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

/// A metric name: borrowed, or escaped (always refused, see the module doc).
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
                        // Deferred: an op line with model_id must say bad_field, not this.
                        r.model_id = Some(Err(bad_model_id(format!(
                            "model_id {} must be written without JSON escapes",
                            e.quoted()
                        ))));
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

fn is_json_ws(b: u8) -> bool {
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
    or_bad_utf8(line, bad_json(format!("{base} at column {}", e.column())))
}

/// Decodes one line (without its terminator; surrounding whitespace, including a `\r`, is
/// ignored). See the module doc for the rules. Never panics; allocates only on rejection, for
/// `meta` nested deeper than one level, and for more than [`METRICS_INLINE`] metrics.
pub fn decode_line(line: &[u8]) -> Result<Line<'_>, LineError> {
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

// ---------------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------------

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// Writes `s` as a JSON string (quotes, backslashes and control characters escaped; the input
/// is a `&str`, so the output is valid UTF-8 JSON).
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let b = s.as_bytes();
    let mut run = 0;
    for (i, &c) in b.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => &[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(c >> 4) as usize],
                HEX[(c & 0xf) as usize],
            ],
            _ => continue,
        };
        out.extend_from_slice(&b[run..i]);
        out.extend_from_slice(esc);
        run = i + 1;
    }
    out.extend_from_slice(&b[run..]);
    out.push(b'"');
}

fn push_detail(out: &mut Vec<u8>, detail: &str) {
    let (kept, cut) = bounded_detail(detail);
    if cut {
        // Escape the kept part and the marker as one string.
        let mut s = String::with_capacity(kept.len() + 3);
        s.push_str(kept);
        s.push_str("...");
        push_json_str(out, &s);
    } else {
        push_json_str(out, kept);
    }
}

/// Appends `{"error":"<code>","line":<line>,"detail":"..."}\n` to `out`.
pub fn write_error_reply(out: &mut Vec<u8>, code: ErrorCode, line: u64, detail: &str) {
    out.extend_from_slice(b"{\"error\":\"");
    out.extend_from_slice(code.as_str().as_bytes());
    out.extend_from_slice(b"\",\"line\":");
    push_u64(out, line);
    out.extend_from_slice(b",\"detail\":");
    push_detail(out, detail);
    out.extend_from_slice(b"}\n");
}

/// `{"error":"<code>","line":<line>,"detail":"..."}\n`
pub fn error_reply(code: ErrorCode, line: u64, detail: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + detail.len().min(DETAIL_MAX));
    write_error_reply(&mut out, code, line, detail);
    out
}

/// Appends `{"ok":true,"accepted":A,"rejected":R}\n` to `out`.
pub fn write_flush_reply(out: &mut Vec<u8>, accepted: u64, rejected: u64) {
    out.extend_from_slice(b"{\"ok\":true,\"accepted\":");
    push_u64(out, accepted);
    out.extend_from_slice(b",\"rejected\":");
    push_u64(out, rejected);
    out.extend_from_slice(b"}\n");
}

/// `{"ok":true,"accepted":A,"rejected":R}\n`
pub fn flush_reply(accepted: u64, rejected: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    write_flush_reply(&mut out, accepted, rejected);
    out
}

/// Appends `{"ok":false,"error":"<code>","detail":"..."}\n` to `out`.
pub fn write_flush_error_reply(out: &mut Vec<u8>, code: ErrorCode, detail: &str) {
    out.extend_from_slice(b"{\"ok\":false,\"error\":\"");
    out.extend_from_slice(code.as_str().as_bytes());
    out.extend_from_slice(b"\",\"detail\":");
    push_detail(out, detail);
    out.extend_from_slice(b"}\n");
}

/// `{"ok":false,"error":"<code>","detail":"..."}\n`, for a flush whose data could not be made
/// durable (usually [`ErrorCode::Internal`]).
pub fn flush_error_reply(code: ErrorCode, detail: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + detail.len().min(DETAIL_MAX));
    write_flush_error_reply(&mut out, code, detail);
    out
}

// ---------------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------------

/// One line from the socket. Each frame, of either kind, is exactly one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// The line without its `\n` / `\r\n`; at most `max_line_bytes` long.
    Line(&'a [u8]),
    /// A line over the limit; its bytes were dropped.
    TooLong,
}

/// Position of the first `\n`: a word at a time (std has no public memchr), since this scan
/// touches every byte received.
fn find_newline(h: &[u8]) -> Option<usize> {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    const NL: u64 = LO * b'\n' as u64;
    let mut chunks = h.chunks_exact(8);
    let mut base = 0;
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) ^ NL;
        // Classic "has zero byte": exact for the lowest flagged byte, which is the first '\n'.
        let z = w.wrapping_sub(LO) & !w & HI;
        if z != 0 {
            return Some(base + (z.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == b'\n')
        .map(|p| base + p)
}

/// A frame as positions in the buffer (no borrow, so the reader can keep it across an await).
#[derive(Debug, Clone, Copy)]
enum RawFrame {
    Line(usize, usize),
    TooLong,
}

/// Framing state; separate from the buffer so a [`Batch`] can borrow the buffer shared and the
/// state mutably at the same time.
#[derive(Debug)]
struct Cursor {
    /// Start of the first unconsumed byte.
    start: usize,
    /// Bytes in `start..scan` are known to hold no `\n` (avoids rescanning partial lines).
    scan: usize,
    /// End of the valid data.
    end: usize,
    max: usize,
    /// Inside an oversized line already reported: drop bytes up to the next `\n`.
    discarding: bool,
    eof: bool,
    /// A frame found by `fill` and not yet handed out.
    peeked: Option<RawFrame>,
}

impl Cursor {
    fn line(&self, buf: &[u8], s: usize, mut e: usize) -> RawFrame {
        if e > s && buf[e - 1] == b'\r' {
            e -= 1;
        }
        if e - s > self.max {
            RawFrame::TooLong
        } else {
            RawFrame::Line(s, e)
        }
    }

    /// Next frame from the bytes already read, without I/O.
    fn advance(&mut self, buf: &[u8]) -> Option<RawFrame> {
        if let Some(f) = self.peeked.take() {
            return Some(f);
        }
        if self.discarding {
            match find_newline(&buf[self.start..self.end]) {
                Some(i) => {
                    self.start += i + 1;
                    self.scan = self.start;
                    self.discarding = false;
                }
                None => {
                    self.start = self.end;
                    self.scan = self.end;
                    return None;
                }
            }
        }
        if let Some(i) = find_newline(&buf[self.scan..self.end]) {
            let nl = self.scan + i;
            let s = self.start;
            self.start = nl + 1;
            self.scan = self.start;
            return Some(self.line(buf, s, nl));
        }
        self.scan = self.end;
        let pending = self.end - self.start;
        // Over max + 1 ("+1": the line may still end in "\r\n") it can never be accepted:
        // report it now and drop its bytes as they come, so it is never buffered whole.
        if pending > self.max.saturating_add(1) {
            self.start = self.end;
            self.discarding = true;
            return Some(RawFrame::TooLong);
        }
        if self.eof && pending > 0 {
            let s = self.start;
            self.start = self.end;
            self.scan = self.end;
            return Some(self.line(buf, s, self.end));
        }
        None
    }
}

impl RawFrame {
    fn resolve(self, buf: &[u8]) -> Frame<'_> {
        match self {
            RawFrame::Line(s, e) => Frame::Line(&buf[s..e]),
            RawFrame::TooLong => Frame::TooLong,
        }
    }
}

/// Splits a byte stream into lines with a hard length limit enforced while reading.
///
/// Usage, processing every buffered line before awaiting more:
/// ```ignore
/// let mut reader = LineReader::new(stream, 64 * 1024);
/// let mut line_no = 0u64;
/// while reader.fill().await? {
///     for frame in reader.batch() {
///         line_no += 1;
///         match frame {
///             Frame::Line(bytes) => match decode_line(bytes) { /* ... */ },
///             Frame::TooLong => LineError::too_long(64 * 1024).write_reply(line_no, &mut out),
///         }
///     }
///     // commit the batch, write `out`
/// }
/// ```
/// Frames of one batch all borrow the buffer immutably, so decoded events of a whole batch can
/// be held at once. The buffer is allocated up front (at most 64 KiB) and grows only while a
/// long line is pending, never past `max_line_bytes + 2 + READ_CHUNK`.
pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    cap: usize,
    cur: Cursor,
}

/// The frames complete in a [`LineReader`]'s buffer; see [`LineReader::batch`].
pub struct Batch<'a> {
    buf: &'a [u8],
    cur: &'a mut Cursor,
}

impl<'a> Iterator for Batch<'a> {
    type Item = Frame<'a>;
    fn next(&mut self) -> Option<Frame<'a>> {
        let buf = self.buf;
        self.cur.advance(buf).map(|f| f.resolve(buf))
    }
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    /// `max_line_bytes` excludes the `\n` (and a `\r` before it).
    pub fn new(inner: R, max_line_bytes: usize) -> Self {
        let cap = max_line_bytes.saturating_add(2 + READ_CHUNK);
        LineReader {
            inner,
            buf: vec![0; cap.min(READ_CHUNK)],
            cap,
            cur: Cursor {
                start: 0,
                scan: 0,
                end: 0,
                max: max_line_bytes,
                discarding: false,
                eof: false,
                peeked: None,
            },
        }
    }

    /// Waits until at least one frame is ready; `Ok(false)` at EOF once every line was handed
    /// out. Reads at most what is needed for one frame, so latency stays low. Cancel-safe: no
    /// data is lost if the future is dropped (e.g. in `select!`).
    pub async fn fill(&mut self) -> io::Result<bool> {
        loop {
            if self.cur.peeked.is_none() {
                self.cur.peeked = self.cur.advance(&self.buf);
            }
            if self.cur.peeked.is_some() {
                return Ok(true);
            }
            if self.cur.eof {
                return Ok(false);
            }
            self.read_more().await?;
        }
    }

    /// Every frame already complete in the buffer, without I/O.
    pub fn batch(&mut self) -> Batch<'_> {
        Batch {
            buf: &self.buf,
            cur: &mut self.cur,
        }
    }

    /// Next frame; `Ok(None)` at clean EOF. A final line without newline counts as a line.
    pub async fn next_frame(&mut self) -> io::Result<Option<Frame<'_>>> {
        if !self.fill().await? {
            return Ok(None);
        }
        Ok(self.try_next_buffered())
    }

    /// Next frame already complete in the buffer, without awaiting.
    pub fn try_next_buffered(&mut self) -> Option<Frame<'_>> {
        self.batch().next()
    }

    async fn read_more(&mut self) -> io::Result<()> {
        let c = &mut self.cur;
        if c.start == c.end {
            c.start = 0;
            c.scan = 0;
            c.end = 0;
        } else if c.start > 0 && self.buf.len() - c.end < READ_CHUNK {
            // Only a partial line (≤ max + 1 bytes) is kept, so this copy is bounded.
            self.buf.copy_within(c.start..c.end, 0);
            c.end -= c.start;
            c.scan -= c.start;
            c.start = 0;
        }
        if self.buf.len() - c.end < READ_CHUNK && self.buf.len() < self.cap {
            let want = (self.buf.len() * 2).max(c.end + READ_CHUNK).min(self.cap);
            self.buf.resize(want, 0);
        }
        // Never empty: a pending partial line is ≤ max + 1 bytes and cap = max + 2 + READ_CHUNK.
        let n = self.inner.read(&mut self.buf[c.end..]).await?;
        if n == 0 {
            c.eof = true;
        } else {
            c.end += n;
        }
        Ok(())
    }

    /// The line limit given to [`LineReader::new`].
    pub fn max_line_bytes(&self) -> usize {
        self.cur.max
    }

    /// Bytes currently allocated for the buffer (≤ `max_line_bytes + 2 + READ_CHUNK`).
    pub fn buffer_capacity(&self) -> usize {
        self.buf.len()
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The reader; bytes still buffered are lost.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

#[cfg(test)]
mod tests {
    // TESTS
}
