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
//! `decode_line` first tries a hand-written scanner that only accepts the plain shape
//! well-behaved clients send (no escapes, known keys, valid values); anything else, and every
//! error, goes through the full serde_json-based decoder, which is the reference. The scanner
//! never accepts what the full decoder would refuse and gives bit-identical results (property
//! tested); a typical event line costs it ~1,100 instructions, the full decoder ~4,000
//! (callgrind).
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
//! * `model_id`: 1..=128 bytes of `[A-Za-z0-9._:/-]`, not starting with `.`, `/` or `-`, never
//!   containing `..`: else `bad_model_id`. (A leading `-` would read as an option to a hook
//!   that passes the id as an argument.) It must also be written without JSON escapes (the
//!   event borrows it from the line; no valid id needs one, though some encoders write `\/`):
//!   also `bad_model_id`. A non-string `model_id`: `bad_field`.
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
    /// A line stayed unfinished for `partial_line_timeout_s`; sent once, then the connection
    /// closes.
    PartialLineTimeout,
    /// Unfinished lines of all connections hold more than `partial_line_budget_bytes`; the
    /// connection whose line went over is told once and closed.
    Overloaded,
}

impl ErrorCode {
    /// Every code, for tests and docs.
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::BadJson,
        ErrorCode::BadField,
        ErrorCode::BadModelId,
        ErrorCode::LineTooLong,
        ErrorCode::TooManyModels,
        ErrorCode::UnknownOp,
        ErrorCode::Internal,
        ErrorCode::TooManyConnections,
        ErrorCode::IdleTimeout,
        ErrorCode::PartialLineTimeout,
        ErrorCode::Overloaded,
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
            ErrorCode::PartialLineTimeout => "partial_line_timeout",
            ErrorCode::Overloaded => "overloaded",
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

/// Control operations (`{"op": "<name>"}`). A new op is a new variant plus its name in
/// [`Op::as_str`] and [`Op::ALL`]; the enum is deliberately exhaustive so that every `match` on
/// it fails to compile until the new op is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
/// Model id bytes allowed anywhere in an id ('.' has position rules, '/' only a first-byte one).
static MODEL_ID_PLAIN: [bool; 256] = byte_class(b"_:/-");

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

// ---------------------------------------------------------------------------------------------
// Fast path
// ---------------------------------------------------------------------------------------------
//
// serde_json through the visitors above costs several thousand instructions per line, mostly
// generic per-token overhead. Lines from well-behaved clients all have the same simple shape, so
// a hand-written scanner handles that shape and gives up (returns None) on anything else:
// escapes, unknown or duplicate keys, invalid values, non-ASCII outside `meta`, odd numbers.
// The full decoder then runs and is the only source of errors. The fast path is therefore only
// a strict subset: whenever it returns Some(x), the full decoder returns Ok(x) (a property test
// checks exactly this on valid, mutated and random lines). `meta` is still handed to serde_json
// (RawValue) so JSON validation of arbitrary nested data is never reimplemented here.

/// Exact powers of ten (every one is representable in f64).
const POW10_EXACT: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// Bytes that may stand between JSON tokens. All are below `!`, so one compare rules out the
/// common case (the next byte is a token).
#[inline(always)]
fn maybe_ws(b: u8) -> bool {
    b <= b' '
}

/// `b` as text. Only for bytes checked against one of the class tables above, which hold
/// ASCII bytes only.
#[inline(always)]
fn ascii_str(b: &[u8]) -> &str {
    debug_assert!(b.is_ascii());
    // SAFETY: every caller passes bytes it has checked against MODEL_ID_PLAIN/MODEL_ID_BYTES or
    // METRIC_NAME_BYTES, whose members are all ASCII, and ASCII is valid UTF-8. The checked
    // `from_utf8` here cost ~8% of a typical line's instructions (callgrind), for no benefit.
    unsafe { std::str::from_utf8_unchecked(b) }
}

/// No whole-line UTF-8 check: every byte the scanner accepts outside `meta` is either matched
/// against an ASCII literal (structure, keys, `null`/`true`/`false`, op names), a digit or sign
/// of a number, or a byte of a model id or metric name checked against its ASCII class table.
/// `meta` is validated by serde_json (a borrowed RawValue is UTF-8-checked as a whole). So a
/// line the scanner accepts is valid UTF-8, as the full decoder requires.
struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline(always)]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if !maybe_ws(c) || !is_json_ws(c) {
                break;
            }
            self.i += 1;
        }
    }

    #[inline(always)]
    fn eat(&mut self, c: u8) -> Option<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Some(())
        } else {
            None
        }
    }

    #[inline(always)]
    fn literal(&mut self, lit: &[u8]) -> bool {
        if self.b[self.i..].starts_with(lit) {
            self.i += lit.len();
            true
        } else {
            false
        }
    }

    /// `ws (',' ws | '}')`: true after ',', false after '}'.
    #[inline(always)]
    fn comma_or_close(&mut self) -> Option<bool> {
        self.ws();
        match self.peek()? {
            b',' => {
                self.i += 1;
                self.ws();
                Some(true)
            }
            b'}' => {
                self.i += 1;
                Some(false)
            }
            _ => None,
        }
    }

    /// A top-level key spelled exactly as one of the known names (quotes included): picked by
    /// its first byte(s), then compared whole, closing quote included, so a longer key that
    /// starts like a known one (`"model_idx"`), an escaped one or an unknown one gives None.
    #[inline(always)]
    fn key(&mut self) -> Option<Field> {
        let rest = &self.b[self.i..];
        // Each arm compares against a constant of known length, which compiles to a few word
        // compares instead of a memcmp call.
        #[inline(always)]
        fn is<const N: usize>(rest: &[u8], lit: &[u8; N]) -> Option<usize> {
            rest.starts_with(lit).then_some(N)
        }
        let (f, n) = match *rest.get(1)? {
            b'm' => match rest.get(3) {
                Some(b'd') => (Field::ModelId, is(rest, b"\"model_id\"")?),
                Some(b't') if rest.get(4) == Some(&b'r') => {
                    (Field::Metrics, is(rest, b"\"metrics\"")?)
                }
                Some(b't') => (Field::Meta, is(rest, b"\"meta\"")?),
                _ => return None,
            },
            b't' => (Field::Ts, is(rest, b"\"ts\"")?),
            b'd' => (Field::DriftScore, is(rest, b"\"drift_score\"")?),
            b'a' => (Field::Accuracy, is(rest, b"\"accuracy\"")?),
            b'e' => (Field::Error, is(rest, b"\"error\"")?),
            b'v' => (Field::Value, is(rest, b"\"value\"")?),
            b'o' => (Field::Op, is(rest, b"\"op\"")?),
            _ => return None,
        };
        self.i += n;
        Some(f)
    }

    /// A `model_id` that passes every id rule and needs no unescaping; None otherwise (the
    /// full decoder then explains why). One pass over the bytes: runs of bytes allowed
    /// anywhere, and at each '.' a check that it is not first and not doubled.
    #[inline(always)]
    fn model_id(&mut self) -> Option<&'a str> {
        let rest = &self.b[self.i..];
        if rest.first() != Some(&b'"') {
            return None;
        }
        let body = &rest[1..];
        let mut n = 0;
        loop {
            n += body[n..]
                .iter()
                .position(|&c| !MODEL_ID_PLAIN[c as usize])?;
            if body[n] != b'.' {
                break;
            }
            if n == 0 || body.get(n + 1) == Some(&b'.') {
                return None;
            }
            n += 1;
        }
        if body[n] != b'"' || n == 0 || n > MODEL_ID_MAX || body[0] == b'/' || body[0] == b'-' {
            return None;
        }
        self.i += n + 2;
        Some(ascii_str(&body[..n]))
    }

    /// A metric name that passes the name rules (not counting duplicates) and needs no
    /// unescaping.
    #[inline(always)]
    fn metric_name(&mut self) -> Option<&'a str> {
        let rest = &self.b[self.i..];
        if rest.first() != Some(&b'"') {
            return None;
        }
        let body = &rest[1..];
        let n = body.iter().position(|&c| !METRIC_NAME_BYTES[c as usize])?;
        if body[n] != b'"' || n == 0 || n > METRIC_NAME_MAX {
            return None;
        }
        let name = &body[..n];
        if is_reserved_metric(name) {
            return None;
        }
        self.i += n + 2;
        Some(ascii_str(name))
    }

    /// The value of `op`, if it names a known op plainly.
    fn op(&mut self) -> Option<Op> {
        if self.literal(b"\"flush\"") {
            Some(Op::Flush)
        } else if self.literal(b"\"ping\"") {
            Some(Op::Ping)
        } else {
            None
        }
    }

    /// Digits from `i` on: (index after them, `acc` with them appended, wrapping). Up to
    /// eight at a time (SWAR): one 8-byte load finds how many of its bytes are digits and
    /// converts that many with three multiplies, so a short run costs no more than a long one.
    /// Only within 8 bytes of the line's end does it go byte by byte.
    #[inline(always)]
    fn digits(b: &[u8], mut i: usize, mut acc: u64) -> (usize, u64) {
        const HI: u64 = 0xF0F0_F0F0_F0F0_F0F0;
        const ZEROS: u64 = 0x3030_3030_3030_3030;
        const POW10_U64: [u64; 9] = [
            1,
            10,
            100,
            1_000,
            10_000,
            100_000,
            1_000_000,
            10_000_000,
            100_000_000,
        ];
        while let Some(&chunk) = b.get(i..).and_then(|r| r.first_chunk::<8>()) {
            // First char in the lowest byte. A byte is a digit (0x30..=0x39) iff its high
            // nibble is 3 and adding 6 leaves it 3; a carry out of a non-digit byte only
            // reaches later bytes, so the lowest non-zero byte below is the first non-digit.
            let v = u64::from_le_bytes(chunk);
            let non_digit =
                ((v & HI) ^ ZEROS) | ((v.wrapping_add(0x0606_0606_0606_0606) & HI) ^ ZEROS);
            let n = (non_digit.trailing_zeros() / 8) as usize;
            if n == 0 {
                return (i, acc);
            }
            // The n digits moved to the top bytes, zero digits below them: an 8-digit number
            // with the same value. Then pairs, quads and the whole (most significant first).
            let d = (v & 0x0F0F_0F0F_0F0F_0F0F) << (64 - 8 * n);
            let d = d.wrapping_mul(2561) >> 8;
            let d = (d & 0x00FF_00FF_00FF_00FF).wrapping_mul(6_553_601) >> 16;
            let d =
                ((d & 0x0000_FFFF_0000_FFFF).wrapping_mul(42_949_672_960_001) >> 32) & 0xFFFF_FFFF;
            acc = acc.wrapping_mul(POW10_U64[n]).wrapping_add(d);
            i += n;
            if n < 8 {
                return (i, acc);
            }
        }
        while let Some(&d) = b.get(i) {
            let d = d.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            acc = acc.wrapping_mul(10).wrapping_add(u64::from(d));
            i += 1;
        }
        (i, acc)
    }

    /// A JSON number, converted exactly as serde_json converts it (so both paths agree to the
    /// bit): integers and Clinger's exact case inline, anything else by serde_json itself.
    #[inline(always)]
    fn number(&mut self) -> Option<f64> {
        let b = self.b;
        let start = self.i;
        let neg = b.get(start) == Some(&b'-');
        let int_start = start + usize::from(neg);
        let (mut i, mut sig) = match b.get(int_start) {
            Some(b'0') => (int_start + 1, 0),
            Some(b'1'..=b'9') => Self::digits(b, int_start, 0),
            _ => return None,
        };
        // Counts a leading "0" too (as the exponent's digit budget below assumes nothing else).
        let mut digits = i - int_start;
        let mut exp: i64 = 0;
        let mut int = true;
        if b.get(i) == Some(&b'.') {
            int = false;
            let frac_start = i + 1;
            (i, sig) = Self::digits(b, frac_start, sig);
            let frac = i - frac_start;
            if frac == 0 {
                return None;
            }
            digits += frac;
            exp = -(frac as i64);
        }
        if let Some(b'e' | b'E') = b.get(i) {
            int = false;
            i += 1;
            let eneg = match b.get(i) {
                Some(b'-') => {
                    i += 1;
                    true
                }
                Some(b'+') => {
                    i += 1;
                    false
                }
                _ => false,
            };
            let exp_start = i;
            let mut e: i64 = 0;
            while let Some(&d @ b'0'..=b'9') = b.get(i) {
                e = (e * 10 + i64::from(d - b'0')).min(100_000);
                i += 1;
            }
            if i == exp_start {
                return None;
            }
            exp += if eneg { -e } else { e };
        }
        self.i = i;
        // ≤ 19 digits cannot overflow u64 (wrapping ops above are then exact).
        if digits <= 19 {
            let f = sig as f64;
            if int {
                // serde_json: u64 / i64 / -(u64 as f64), all equal to this.
                return Some(if neg { -f } else { f });
            }
            if (-22..=22).contains(&exp) {
                // Exactly serde_json's computation without its `float_roundtrip` feature
                // (`f64_from_parts`): the significand rounded to f64, then one multiply or
                // divide by the f64 power of ten, so any ≤ 19-digit significand (Python's
                // 17-digit floats too) stays on the fast path. (With `float_roundtrip` only
                // significands < 2^53 would agree; `serde_json_float_mode` guards this.)
                let f = if exp >= 0 {
                    f * POW10_EXACT[exp as usize]
                } else {
                    f / POW10_EXACT[(-exp) as usize]
                };
                return Some(if neg { -f } else { f });
            }
        }
        serde_json::from_slice::<f64>(&b[start..i])
            .ok()
            .filter(|x| x.is_finite())
    }

    /// Number or null (= absent).
    #[inline(always)]
    fn opt_number(&mut self) -> Option<Option<f64>> {
        if self.peek() == Some(b'n') {
            self.literal(b"null").then_some(None)
        } else {
            self.number().map(Some)
        }
    }

    fn error_value(&mut self) -> Option<Option<bool>> {
        let v = match self.peek()? {
            b'0' => false,
            b'1' => true,
            b't' if self.literal(b"true") => return Some(Some(true)),
            b'f' if self.literal(b"false") => return Some(Some(false)),
            b'n' if self.literal(b"null") => return Some(None),
            _ => return None,
        };
        self.i += 1;
        Some(Some(v))
    }

    fn metrics(&mut self, out: &mut Metrics<'a>) -> Option<()> {
        if self.literal(b"null") {
            return Some(());
        }
        self.eat(b'{')?;
        self.ws();
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            let name = self.metric_name()?;
            if out.len() >= METRICS_MAX || out.get(name).is_some() {
                return None;
            }
            self.ws();
            self.eat(b':')?;
            self.ws();
            out.push(name, self.number()?);
            if !self.comma_or_close()? {
                return Some(());
            }
        }
    }

    fn meta(&mut self) -> Option<Option<&'a RawValue>> {
        let rest = &self.b[self.i..];
        let mut de = serde_json::Deserializer::from_slice(rest);
        // Checks the JSON syntax and the UTF-8 of all of meta's text.
        let raw = <&RawValue>::deserialize(&mut de).ok()?;
        // The raw text is borrowed from `rest`; its end is where scanning resumes.
        let off = (raw.get().as_ptr() as usize).checked_sub(rest.as_ptr() as usize)?;
        let end = off + raw.get().len();
        if end > rest.len() {
            return None;
        }
        self.i += end;
        Some((raw.get() != "null").then_some(raw))
    }
}

/// Decodes the common shape of valid lines; None means "use the full decoder".
#[cfg(test)]
fn decode_fast(line: &[u8]) -> Option<Line<'_>> {
    let mut ev = Event::default();
    match scan_line(line, &mut ev)? {
        Some(op) => Some(Line::Op(op)),
        None => Some(Line::Event(ev)),
    }
}

/// The fast path: on Some(None) `ev` holds the line's event, on Some(Some(op)) the line is
/// that op; None means "use the full decoder" (`ev` then holds garbage). Filling the caller's
/// event instead of returning a Line saves copying the ~350-byte Event twice per line.
#[inline(always)]
fn scan_line<'a>(line: &'a [u8], ev: &mut Event<'a>) -> Option<Option<Op>> {
    let mut s = Scan { b: line, i: 0 };
    s.ws();
    s.eat(b'{')?;
    s.ws();
    let mut seen = 0u16;
    let mut op = None;
    if s.eat(b'}').is_none() {
        loop {
            let f = s.key()?;
            if seen & f.bit() != 0 {
                return None;
            }
            seen |= f.bit();
            s.ws();
            s.eat(b':')?;
            s.ws();
            match f {
                Field::ModelId => ev.model_id = s.model_id()?,
                Field::Ts => ev.ts = s.opt_number()?,
                Field::DriftScore => ev.drift_score = s.opt_number()?,
                Field::Accuracy => ev.accuracy = s.opt_number()?,
                Field::Value => ev.value = s.opt_number()?,
                Field::Error => ev.error = s.error_value()?,
                Field::Metrics => s.metrics(&mut ev.metrics)?,
                Field::Meta => ev.meta = s.meta()?,
                Field::Op => op = Some(s.op()?),
            }
            if !s.comma_or_close()? {
                break;
            }
        }
    }
    s.ws();
    if s.i != line.len() {
        return None;
    }
    if let Some(op) = op {
        return (seen == Field::Op.bit()).then_some(Some(op));
    }
    // model_id() checked the id when it read it.
    if seen & Field::ModelId.bit() == 0 {
        return None;
    }
    Some(None)
}

/// Decodes one line (without its terminator; surrounding whitespace, including a `\r`, is
/// ignored). See the module doc for the rules. Never panics. Allocates only on rejection, for
/// `meta` nested deeper than one level, and for more than [`METRICS_INLINE`] metrics.
pub fn decode_line(line: &[u8]) -> Result<Line<'_>, LineError> {
    let mut ev = Event::default();
    match scan_line(line, &mut ev) {
        Some(None) => Ok(Line::Event(ev)),
        Some(Some(op)) => Ok(Line::Op(op)),
        None => decode_full(line),
    }
}

/// The reference decoder: serde_json with strict visitors. Handles every input and produces
/// every error.
fn decode_full(line: &[u8]) -> Result<Line<'_>, LineError> {
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
    write_flush_reply_dropped(out, accepted, rejected, 0);
}

/// `{"ok":true,"accepted":A,"rejected":R,"replies_dropped":D}\n`, the last field only when
/// `dropped` is not 0: error replies this connection did not get because it did not read them.
pub fn write_flush_reply_dropped(out: &mut Vec<u8>, accepted: u64, rejected: u64, dropped: u64) {
    out.extend_from_slice(b"{\"ok\":true,\"accepted\":");
    push_u64(out, accepted);
    out.extend_from_slice(b",\"rejected\":");
    push_u64(out, rejected);
    if dropped > 0 {
        out.extend_from_slice(b",\"replies_dropped\":");
        push_u64(out, dropped);
    }
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
/// ```text
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
    /// Cancel-safe, like [`LineReader::fill`] (so it can sit under `timeout` or `select!`).
    pub async fn next_frame(&mut self) -> io::Result<Option<Frame<'_>>> {
        if !self.fill().await? {
            return Ok(None);
        }
        Ok(self.try_next_buffered())
    }

    /// One step of [`LineReader::fill`]: reads at most once. `Ok(Some(true))`: a frame is
    /// ready; `Ok(Some(false))`: EOF with every line handed out; `Ok(None)`: bytes arrived but
    /// no line is complete yet (see [`LineReader::partial_len`]). Cancel-safe.
    pub async fn fill_step(&mut self) -> io::Result<Option<bool>> {
        for first in [true, false] {
            if self.cur.peeked.is_none() {
                self.cur.peeked = self.cur.advance(&self.buf);
            }
            if self.cur.peeked.is_some() {
                return Ok(Some(true));
            }
            if self.cur.eof {
                return Ok(Some(false));
            }
            if first {
                self.read_more().await?;
            }
        }
        Ok(None)
    }

    /// Bytes of an unfinished line held in the buffer: 0 when a frame is complete or nothing
    /// is held, at least 1 while the rest of an oversized line is being dropped (it holds no
    /// bytes, but the line is still unfinished).
    pub fn partial_len(&mut self) -> usize {
        if self.cur.peeked.is_none() {
            self.cur.peeked = self.cur.advance(&self.buf);
        }
        let c = &self.cur;
        if c.peeked.is_some() {
            0
        } else if c.discarding {
            (c.end - c.start).max(1)
        } else {
            c.end - c.start
        }
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
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncWriteExt, ReadBuf};

    // ---- helpers -------------------------------------------------------------------------

    /// decode_line, plus the fast-path contract: whenever the fast path accepts, the full
    /// decoder gives the same result.
    fn decode(line: &[u8]) -> Result<Line<'_>, LineError> {
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

    fn ev(line: &str) -> Event<'_> {
        match decode(line.as_bytes()) {
            Ok(Line::Event(e)) => e,
            other => panic!("{line}: expected an event, got {other:?}"),
        }
    }

    fn rej(line: impl AsRef<[u8]>) -> LineError {
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
    fn check(line: impl AsRef<[u8]>, code: ErrorCode, needle: &str) {
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

    fn with_id(id: &str) -> String {
        json!({ "model_id": id }).to_string()
    }

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

    // ---- replies ---------------------------------------------------------------------------

    fn parse_reply(r: &[u8]) -> Value {
        assert_eq!(r.last(), Some(&b'\n'));
        assert_eq!(r.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        serde_json::from_slice(r).expect("reply is JSON")
    }

    #[test]
    fn error_codes() {
        let names: Vec<&str> = ErrorCode::ALL.iter().map(ErrorCode::as_str).collect();
        assert_eq!(
            names,
            [
                "bad_json",
                "bad_field",
                "bad_model_id",
                "line_too_long",
                "too_many_models",
                "unknown_op",
                "internal",
                "too_many_connections",
                "idle_timeout",
                "partial_line_timeout",
                "overloaded",
            ]
        );
        assert_eq!(ErrorCode::BadJson.to_string(), "bad_json");
        let e = LineError::new(ErrorCode::BadField, "x");
        assert_eq!(e.to_string(), "bad_field: x");
        assert_eq!(LineError::too_long(10).detail, "line longer than 10 bytes");
    }

    #[test]
    fn error_reply_format() {
        assert_eq!(
            error_reply(ErrorCode::BadJson, 7, "oops"),
            b"{\"error\":\"bad_json\",\"line\":7,\"detail\":\"oops\"}\n"
        );
        let hostile = "q\"\\\n\r\t\u{0}\u{1f}\u{7f}é\u{2028}</script>";
        let r = error_reply(ErrorCode::BadField, u64::MAX, hostile);
        assert_eq!(
            parse_reply(&r),
            json!({"error": "bad_field", "line": u64::MAX, "detail": hostile})
        );
        let mut out = Vec::new();
        rej(r#"{"model_id":"a","x":1}"#).write_reply(3, &mut out);
        assert_eq!(
            parse_reply(&out),
            json!({"error": "bad_field", "line": 3, "detail": "unknown key \"x\""})
        );
    }

    #[test]
    fn details_are_bounded_at_char_boundaries() {
        for pad in 0..4 {
            let long = format!("{}{}", "x".repeat(pad), "é\"".repeat(1000));
            let r = error_reply(ErrorCode::BadJson, 1, &long);
            let v = parse_reply(&r);
            let d = v["detail"].as_str().unwrap();
            assert!(d.len() <= DETAIL_MAX, "{}", d.len());
            assert!(d.ends_with("..."));
            assert!(long.starts_with(&d[..d.len() - 3]));
            let e = LineError::new(ErrorCode::BadJson, long.clone());
            assert!(e.detail.len() <= DETAIL_MAX);
            assert!(long.starts_with(&e.detail[..e.detail.len() - 3]));
            let v = parse_reply(&flush_error_reply(ErrorCode::Internal, &long));
            assert!(v["detail"].as_str().unwrap().len() <= DETAIL_MAX);
        }
        let exact = "y".repeat(DETAIL_MAX);
        let v = parse_reply(&error_reply(ErrorCode::BadJson, 1, &exact));
        assert_eq!(v["detail"], exact.as_str());
    }

    #[test]
    fn flush_and_ping_replies() {
        assert_eq!(
            flush_reply(10, 2),
            b"{\"ok\":true,\"accepted\":10,\"rejected\":2}\n"
        );
        assert_eq!(
            parse_reply(&flush_reply(u64::MAX, 0)),
            json!({"ok": true, "accepted": u64::MAX, "rejected": 0})
        );
        assert_eq!(
            flush_error_reply(ErrorCode::Internal, "disk \"full\""),
            b"{\"ok\":false,\"error\":\"internal\",\"detail\":\"disk \\\"full\\\"\"}\n"
        );
        assert_eq!(parse_reply(PING_REPLY), json!({"ok": true}));
        let mut out = b"x".to_vec();
        write_flush_reply(&mut out, 1, 0);
        write_flush_error_reply(&mut out, ErrorCode::Internal, "d");
        write_error_reply(&mut out, ErrorCode::LineTooLong, 9, "d");
        assert_eq!(
            out,
            b"x{\"ok\":true,\"accepted\":1,\"rejected\":0}\n{\"ok\":false,\"error\":\"internal\",\"detail\":\"d\"}\n{\"error\":\"line_too_long\",\"line\":9,\"detail\":\"d\"}\n"
        );
    }

    // ---- framing ---------------------------------------------------------------------------

    #[test]
    fn find_newline_matches_naive() {
        for len in 0..40 {
            for pos in 0..=len {
                let mut v = vec![b'a'; len];
                // Bytes that trip naive SWAR variants: 0x0b ('\n' + 1), 0x8a, 0x09.
                for (i, b) in v.iter_mut().enumerate() {
                    *b = [b'a', 0x0b, 0x8a, 0x09, 0x00, 0xff][i % 6];
                }
                if pos < len {
                    v[pos] = b'\n';
                    if pos + 3 < len {
                        v[pos + 3] = b'\n';
                    }
                }
                assert_eq!(
                    find_newline(&v),
                    v.iter().position(|&b| b == b'\n'),
                    "{v:?}"
                );
            }
        }
    }

    /// Returns data in chunks of the given sizes (cycling), to split lines across reads.
    struct Chunked {
        data: Vec<u8>,
        pos: usize,
        sizes: Vec<usize>,
        i: usize,
    }

    impl Chunked {
        fn new(data: impl Into<Vec<u8>>, sizes: &[usize]) -> Self {
            Chunked {
                data: data.into(),
                pos: 0,
                sizes: sizes.to_vec(),
                i: 0,
            }
        }
    }

    impl AsyncRead for Chunked {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = &mut *self;
            let want = this.sizes[this.i % this.sizes.len()].max(1);
            this.i += 1;
            let n = want.min(buf.remaining()).min(this.data.len() - this.pos);
            buf.put_slice(&this.data[this.pos..this.pos + n]);
            this.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    /// All frames, `None` for TooLong.
    async fn frames<R: AsyncRead + Unpin>(r: &mut LineReader<R>) -> Vec<Option<Vec<u8>>> {
        let mut out = Vec::new();
        while r.fill().await.unwrap() {
            for f in r.batch() {
                out.push(match f {
                    Frame::Line(l) => Some(l.to_vec()),
                    Frame::TooLong => None,
                });
            }
        }
        out
    }

    /// Reference framing: split on '\n', strip one '\r', apply the limit.
    fn model(data: &[u8], max: usize) -> Vec<Option<Vec<u8>>> {
        let mut parts: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
        if parts.last().is_some_and(|p| p.is_empty()) {
            parts.pop();
        }
        parts
            .into_iter()
            .map(|p| {
                let p = p.strip_suffix(b"\r").unwrap_or(p);
                (p.len() <= max).then(|| p.to_vec())
            })
            .collect()
    }

    fn some(s: &str) -> Option<Vec<u8>> {
        Some(s.as_bytes().to_vec())
    }

    #[tokio::test]
    async fn framing_basic_one_byte_reads() {
        let data = "{\"model_id\":\"a\"}\n\n  \r\n{\"op\":\"flush\"}\r\nlast";
        for sizes in [&[1][..], &[2, 3, 5], &[1000]] {
            let mut r = LineReader::new(Chunked::new(data, sizes), 100);
            assert_eq!(
                frames(&mut r).await,
                vec![
                    some("{\"model_id\":\"a\"}"),
                    some(""),
                    some("  "),
                    some("{\"op\":\"flush\"}"),
                    some("last"),
                ]
            );
        }
    }

    #[tokio::test]
    async fn framing_limits_and_crlf() {
        let max = 5;
        let data = "12345\n123456\n12345\r\n123456\r\n1234\r\r\n\r\n12\r";
        let mut r = LineReader::new(Chunked::new(data, &[1]), max);
        assert_eq!(
            frames(&mut r).await,
            vec![
                some("12345"),
                None,
                some("12345"),
                None,
                some("1234\r"),
                some(""),
                some("12"),
            ]
        );
        assert_eq!(frames(&mut r).await, vec![], "stays at EOF");
        // Oversized last line without newline: one TooLong.
        for sizes in [&[1][..], &[4096]] {
            let mut r = LineReader::new(
                Chunked::new("ok\n".to_string() + &"x".repeat(50), sizes),
                10,
            );
            assert_eq!(frames(&mut r).await, vec![some("ok"), None]);
        }
        // max 0: only empty lines pass.
        let mut r = LineReader::new(Chunked::new("\n\r\nx\n", &[1]), 0);
        assert_eq!(frames(&mut r).await, vec![some(""), some(""), None]);
        // Empty input.
        let mut r = LineReader::new(Chunked::new("", &[1]), 10);
        assert_eq!(frames(&mut r).await, vec![]);
    }

    #[tokio::test]
    async fn oversized_10mib_line_between_good_lines_is_never_buffered() {
        let max = 64 * 1024;
        let (mut tx, rx) = tokio::io::duplex(8192);
        let writer = tokio::spawn(async move {
            tx.write_all(b"{\"model_id\":\"before\"}\n").await.unwrap();
            let chunk = vec![b'x'; 1 << 16];
            for _ in 0..160 {
                tx.write_all(&chunk).await.unwrap(); // 10 MiB, no newline yet
            }
            tx.write_all(b"\n{\"model_id\":\"after\"}\n").await.unwrap();
        });
        let mut r = LineReader::new(rx, max);
        let mut got = Vec::new();
        let mut peak = 0;
        while r.fill().await.unwrap() {
            peak = peak.max(r.buffer_capacity());
            for f in r.batch() {
                got.push(match f {
                    Frame::Line(l) => match decode_line(l).unwrap() {
                        Line::Event(e) => Some(e.model_id.to_string()),
                        other => panic!("{other:?}"),
                    },
                    Frame::TooLong => None,
                });
            }
        }
        writer.await.unwrap();
        peak = peak.max(r.buffer_capacity());
        assert_eq!(got, vec![Some("before".into()), None, Some("after".into())]);
        assert!(peak <= max + 2 + READ_CHUNK, "buffer grew to {peak}");
    }

    #[tokio::test]
    async fn oversized_line_one_byte_at_a_time() {
        let data = format!("a\n{}\nb", "y".repeat(300_000));
        let mut r = LineReader::new(Chunked::new(data, &[1, 7, 65536]), 1000);
        assert_eq!(frames(&mut r).await, vec![some("a"), None, some("b")]);
        assert!(r.buffer_capacity() <= 1000 + 2 + READ_CHUNK);
    }

    #[tokio::test]
    async fn batch_holds_many_events_at_once() {
        let mut data = String::new();
        for i in 0..1000 {
            data.push_str(&format!("{{\"model_id\":\"m{i}\",\"value\":{i}}}\n"));
        }
        let mut r = LineReader::new(Chunked::new(data, &[10_000]), 1000);
        let mut total = 0;
        let mut batches = 0;
        while r.fill().await.unwrap() {
            // Decoded events of one batch live side by side (they borrow the buffer).
            let events: Vec<Event<'_>> = r
                .batch()
                .map(|f| match f {
                    Frame::Line(l) => match decode_line(l) {
                        Ok(Line::Event(e)) => e,
                        other => panic!("{other:?}"),
                    },
                    Frame::TooLong => panic!("too long"),
                })
                .collect();
            for (k, e) in events.iter().enumerate() {
                assert_eq!(e.model_id, format!("m{}", total + k));
                assert_eq!(e.value, Some((total + k) as f64));
            }
            total += events.len();
            batches += 1;
        }
        assert_eq!(total, 1000);
        assert!(
            batches < 20,
            "{batches} batches: lines should be drained in bulk"
        );
    }

    #[tokio::test]
    async fn next_frame_and_try_next_buffered() {
        let mut r = LineReader::new(Chunked::new("a\nb\nc", &[4]), 10);
        assert_eq!(r.next_frame().await.unwrap(), Some(Frame::Line(b"a")));
        assert_eq!(r.try_next_buffered(), Some(Frame::Line(b"b")));
        assert_eq!(r.try_next_buffered(), None); // "c" needs another read (to see EOF)
        assert_eq!(r.next_frame().await.unwrap(), Some(Frame::Line(b"c")));
        assert_eq!(r.next_frame().await.unwrap(), None);
        assert_eq!(r.max_line_bytes(), 10);
        assert_eq!(r.get_ref().pos, 5);
        let _ = r.get_mut();
        let _ = r.into_inner();
    }

    #[tokio::test]
    async fn read_errors_propagate() {
        struct Failing(bool);
        impl AsyncRead for Failing {
            fn poll_read(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                if self.0 {
                    return Poll::Ready(Err(io::Error::other("boom")));
                }
                self.0 = true;
                buf.put_slice(b"ok\npartial");
                Poll::Ready(Ok(()))
            }
        }
        let mut r = LineReader::new(Failing(false), 100);
        assert_eq!(r.next_frame().await.unwrap(), Some(Frame::Line(b"ok")));
        assert_eq!(r.next_frame().await.unwrap_err().to_string(), "boom");
    }

    // ---- properties ------------------------------------------------------------------------

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    /// Bytes with plenty of line breaks, CRs and JSON punctuation.
    fn wire_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![
                3 => any::<u8>(),
                2 => Just(b'\n'),
                1 => Just(b'\r'),
                1 => prop::sample::select(b"{}[]:,\" \\0123456789.eE-+tfnulx".to_vec()),
            ],
            0..600,
        )
    }

    fn check_result(line: &[u8], res: &Result<Line<'_>, LineError>) {
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
        fn framing_matches_model_and_decode_never_panics(
            data in wire_bytes(),
            sizes in prop::collection::vec(1usize..64, 1..5),
            max in 0usize..40,
        ) {
            let expected = model(&data, max);
            let got = rt().block_on(async {
                let mut r = LineReader::new(Chunked::new(data.clone(), &sizes), max);
                let mut out = Vec::new();
                while r.fill().await.unwrap() {
                    for f in r.batch() {
                        out.push(match f {
                            Frame::Line(l) => {
                                let res = decode_line(l);
                                check_result(l, &res);
                                Some(l.to_vec())
                            }
                            Frame::TooLong => None,
                        });
                    }
                }
                out
            });
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn decode_never_panics_on_bytes(line in prop::collection::vec(any::<u8>(), 0..300)) {
            check_result(&line, &decode_line(&line));
        }

        #[test]
        fn decode_never_panics_on_token_soup(line in token_soup()) {
            check_result(&line, &decode_line(&line));
        }
    }

    fn finite() -> impl Strategy<Value = f64> {
        prop::num::f64::NORMAL | prop::num::f64::SUBNORMAL | prop::num::f64::ZERO
    }

    fn json_value() -> impl Strategy<Value = Value> {
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
    fn opt<T: std::fmt::Debug + Clone>(
        s: impl Strategy<Value = T>,
    ) -> impl Strategy<Value = Option<Option<T>>> {
        prop_oneof![Just(None), Just(Some(None)), s.prop_map(|v| Some(Some(v)))]
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

    // ---- fast path vs full decoder -----------------------------------------------------

    #[test]
    fn fast_path_takes_the_common_shapes() {
        for l in [
            r#"{"model_id": "fraud-v3", "ts": 1764172800.25, "drift_score": 0.12, "accuracy": 0.93, "error": 0, "value": 4.2, "metrics": {"latency_ms": 12.5}, "meta": {"any": "json"}}"#,
            r#"{"model_id":"a"}"#,
            r#" {"ts":null,"model_id":"a/b:c","error":true,"metrics":{},"meta":null} "#,
            r#"{"op":"flush"}"#,
            r#"{"op":"ping"}"#,
            r#"{"model_id":"a","value":0.30000000000000004,"ts":1e3,"accuracy":-0}"#,
        ] {
            assert!(decode_fast(l.as_bytes()).is_some(), "{l}");
            let _ = decode(l.as_bytes());
        }
        // Things it leaves to the full decoder.
        for l in [
            r#"{"model_id":"a\/b"}"#,
            r#"{"model\u005fid":"a"}"#,
            r#"{"model_id":"a","x":1}"#,
            r#"{"model_id":"a","ts":1e999}"#,
            "{\"model_id\":\"a\",\"meta\":\"\u{e9}\"}\u{1}",
            "",
        ] {
            assert!(decode_fast(l.as_bytes()).is_none(), "{l}");
            let _ = decode(l.as_bytes());
        }
    }

    /// Every input of the fuzzing corpus (lines that reach deep into both decoders): the fast
    /// path agrees with the full decoder, and results are well-formed.
    #[test]
    fn fuzz_corpus_fast_path_agrees_with_full() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/decode_line");
        let mut n = 0;
        let mut fast = 0;
        for entry in std::fs::read_dir(dir).expect("the fuzz corpus is in the repository") {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            check_result(&data, &decode(&data));
            n += 1;
            fast += usize::from(decode_fast(&data).is_some());
        }
        assert!(n > 1000, "only {n} corpus inputs");
        assert!(fast > 0, "the fast path took none of {n} corpus inputs");
    }

    /// The fast path's number conversion replicates serde_json's default (not
    /// `float_roundtrip`) float parsing. If a dependency ever turns that feature on, this fails:
    /// then restrict `Scan::number`'s inline case to significands below 2^53 (Clinger's exact
    /// case, where both modes agree).
    #[test]
    fn serde_json_float_mode() {
        // Rounded twice (significand to f64, then the division) this is one ulp below the
        // correctly rounded value, which `float_roundtrip` would give.
        let text = "0.92030920993190389";
        let serde = serde_json::from_str::<f64>(text).unwrap();
        let twice_rounded = 92_030_920_993_190_389_u64 as f64 / 1e17;
        assert_eq!(serde.to_bits(), twice_rounded.to_bits());
        assert_eq!(
            twice_rounded.to_bits() + 1,
            text.parse::<f64>().unwrap().to_bits()
        );
        let mut scan = Scan {
            b: text.as_bytes(),
            i: 0,
        };
        assert_eq!(scan.number().map(f64::to_bits), Some(serde.to_bits()));
    }

    /// Formats a finite f64 in one of several valid JSON spellings.
    fn number_text(x: f64, style: u8) -> String {
        match style % 5 {
            0 => serde_json::to_string(&x).unwrap(),
            1 => format!("{x:e}"),
            2 => format!("{x:E}"),
            3 => format!("{x}"), // full decimal expansion: long digit strings
            _ if x.fract() == 0.0 && x.abs() < 1e18 => format!("{}", x as i64),
            _ => format!("{x:.3}"),
        }
    }

    fn ws_text(k: u8) -> &'static str {
        ["", "", " ", "\t", "  ", " \r\n "][(k % 6) as usize]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn fast_numbers_match_serde_json_bit_for_bit(
            text in "-?(0|[1-9][0-9]{0,24})(\\.[0-9]{1,24})?([eE][+-]?[0-9]{1,3})?",
            // What may follow a number in a line: digit runs are read 8 bytes at a time, so
            // the bytes after the number (or the end of the line) must stop them exactly.
            suffix in prop::sample::select(vec![
                "", "}", ",", " ", "/", ":", "\u{e9}", ",\"accuracy\":0.9512}", "}         ",
            ]),
        ) {
            let line = format!("{text}{suffix}");
            let mut scan = Scan { b: line.as_bytes(), i: 0 };
            let fast = scan.number();
            let reference = serde_json::from_str::<f64>(&text).ok();
            prop_assert_eq!(fast.map(f64::to_bits), reference.map(f64::to_bits));
            if fast.is_some() {
                prop_assert_eq!(scan.i, text.len());
            }
        }

        #[test]
        fn fast_numbers_match_for_formatted_f64(x in finite(), style in any::<u8>()) {
            let text = number_text(x, style);
            let mut scan = Scan { b: text.as_bytes(), i: 0 };
            let reference = serde_json::from_str::<f64>(&text).unwrap();
            prop_assert_eq!(scan.number().map(f64::to_bits), Some(reference.to_bits()));
        }

        /// Valid events in varied spellings (key order, whitespace, number formats): the fast
        /// path must take them all and agree with the full decoder and with serde_json.
        #[test]
        fn varied_valid_events_take_the_fast_path(
            id in "[A-Za-z0-9_:][A-Za-z0-9._:/-]{0,40}".prop_filter("no ..", |s| !s.contains("..")),
            nums in prop::collection::vec((finite(), any::<u8>(), any::<bool>()), 4),
            error in 0u8..5,
            metrics in prop::collection::btree_map("[a-z_.:-][a-z0-9_.:-]{0,10}", (finite(), any::<u8>()), 0..12),
            meta in opt(json_value()),
            order in Just((0..8).collect::<Vec<usize>>()).prop_shuffle(),
            ws in prop::collection::vec(any::<u8>(), 64),
        ) {
            let metrics: Vec<_> = metrics
                .into_iter()
                .filter(|(k, _)| !matches!(k.as_str(), "drift_score" | "accuracy" | "error" | "value"))
                .collect();
            let mut w = ws.iter().cycle().map(|&k| ws_text(k));
            let names = ["ts", "drift_score", "accuracy", "value"];
            let mut fields: Vec<(String, String)> = Vec::new();
            fields.push(("model_id".into(), serde_json::to_string(&id).unwrap()));
            for (name, &(x, style, null)) in names.iter().zip(&nums) {
                let v = if null { "null".to_string() } else { number_text(x, style) };
                fields.push((name.to_string(), v));
            }
            fields.push(("error".into(), ["0", "1", "true", "false", "null"][error as usize].into()));
            let mut m = String::from("{");
            for (i, (k, (x, style))) in metrics.iter().enumerate() {
                if i > 0 {
                    m.push(',');
                }
                m += &format!("{}\"{k}\"{}:{}{}{}", w.next().unwrap(), w.next().unwrap(), w.next().unwrap(), number_text(*x, *style), w.next().unwrap());
            }
            m.push('}');
            fields.push(("metrics".into(), m));
            if let Some(meta) = &meta {
                fields.push(("meta".into(), meta.as_ref().map_or("null".into(), Value::to_string)));
            }
            let mut line = String::from(w.next().unwrap());
            line.push('{');
            let mut first = true;
            for &k in &order {
                let Some((key, val)) = fields.get(k) else { continue };
                if !first {
                    line.push(',');
                }
                first = false;
                line += &format!("{}\"{key}\"{}:{}{val}{}", w.next().unwrap(), w.next().unwrap(), w.next().unwrap(), w.next().unwrap());
            }
            line.push('}');
            line += w.next().unwrap();

            let fast = decode_fast(line.as_bytes());
            prop_assert!(fast.is_some(), "fast path refused {}", line);
            let e = match decode(line.as_bytes()) {
                Ok(Line::Event(e)) => e,
                other => panic!("{line}: {other:?}"),
            };
            // Expected values: serde_json's reading of the same text.
            let reparsed: Value = serde_json::from_str(&line).unwrap();
            let num = |k: &str| reparsed.get(k).and_then(Value::as_f64);
            prop_assert_eq!(e.model_id, id.as_str());
            prop_assert_eq!(e.ts.map(f64::to_bits), num("ts").map(f64::to_bits));
            prop_assert_eq!(e.drift_score.map(f64::to_bits), num("drift_score").map(f64::to_bits));
            prop_assert_eq!(e.accuracy.map(f64::to_bits), num("accuracy").map(f64::to_bits));
            prop_assert_eq!(e.value.map(f64::to_bits), num("value").map(f64::to_bits));
            prop_assert_eq!(e.error, [Some(false), Some(true), Some(true), Some(false), None][error as usize]);
            let want: Vec<(&str, u64)> = reparsed["metrics"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_f64().unwrap().to_bits()))
                .collect();
            let got: Vec<(&str, u64)> = e.metrics.iter().map(|(k, v)| (k, v.to_bits())).collect();
            prop_assert_eq!(got, want);
        }

        /// The scanner's shortcuts: keys matched by their first bytes (so keys that share a
        /// prefix with real keys, or are a prefix of one), model ids and metric names checked
        /// in one pass ('.' and '/' in every position, "..", non-ASCII, escapes, control bytes,
        /// length limits) and no whole-line UTF-8 check (invalid UTF-8 in ids, names, keys and
        /// meta). Whatever the fast path accepts, the full decoder must accept identically,
        /// and it must refuse every line that is not UTF-8.
        #[test]
        fn fast_path_shortcuts_agree_with_full(
            key in prop_oneof![
                3 => prop::sample::select(vec!["ts", "drift_score", "accuracy", "value", "error"]),
                2 => prop::sample::select(vec![
                    "model_id", "model_i", "model_idx", "model", "mode", "m", "mo", "me", "met",
                    "meta", "meta_", "metr", "metric", "metrics", "metricsx", "mmodel_id", "t",
                    "ts", "tsx", "d", "drift", "drift_score", "drift_scores", "a", "accuracy",
                    "accuracyy", "e", "error", "errors", "v", "value", "valu", "o", "op", "ops", "",
                    "model\\u005fid", "\\u006dodel_id", "ts\\u0000", "m\u{e9}ta", "t\u{e9}",
                ]),
            ],
            id in prop_oneof![
                "[A-Za-z0-9._:/-]{0,12}",
                "[a.]{0,6}",
                "[./]{1,3}[a-z]{0,3}[./]{0,3}",
                "[a-z]{0,3}(\\.|\\\\/|\\\\u0041|\u{e9}|\x01| |\\\\\\\\)[a-z.]{0,3}",
                "[a-z]{125,130}",
            ],
            name in prop_oneof![
                4 => "[A-Za-z0-9_.:-]{0,8}",
                1 => Just("drift_score".to_string()),
                1 => Just("value".to_string()),
                1 => Just("values".to_string()),
                1 => Just("erro".to_string()),
                1 => "[a-z]{0,3}(\u{e9}|\\\\n|\\\\u0041|/| )[a-z]{0,3}",
                1 => "[a-z]{63,66}",
            ],
            bad_utf8 in prop::option::weighted(
                0.2,
                (0usize..200, prop::sample::select(vec![0x80u8, 0xc3, 0xff, 0xe9, 0xed])),
            ),
            meta_text in prop::sample::select(
                vec!["\"x\"", "\"\u{e9}\"", "[1,\"\\u00e9\"]", "{}", "null"],
            ),
        ) {
            let line = format!(
                r#"{{"model_id":"{id}","{key}":1,"metrics":{{"{name}":2.5}},"meta":{meta_text}}}"#
            );
            let mut line = line.into_bytes();
            if let Some((at, byte)) = bad_utf8 {
                let at = at.min(line.len());
                line.insert(at, byte);
            }
            let res = decode(&line);
            check_result(&line, &res);
            if std::str::from_utf8(&line).is_err() {
                prop_assert!(decode_fast(&line).is_none());
                prop_assert_eq!(res.unwrap_err().code, ErrorCode::BadJson);
            }
        }

        /// Small edits of valid lines (which often make them invalid in subtle ways) must never
        /// make the fast path accept something the full decoder would not.
        #[test]
        fn fast_path_never_accepts_more_than_full(
            id in "[A-Za-z0-9._:/-]{0,12}",
            x in finite(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..4, prop::sample::select(
                b"{}[]:,\"\\ \t\r\n.-+eE0123456789nultrfaxsb/\x00\x7f\xc3\xa9\xff".to_vec())), 1..4),
        ) {
            let base = format!(
                r#"{{"model_id":"{id}","ts":{},"error":1,"metrics":{{"m.x":{}}},"meta":{{"k":[1,"v"]}}}}"#,
                number_text(x, 0),
                number_text(x, 1),
            );
            let mut line = base.into_bytes();
            for (at, kind, byte) in edits {
                let i = at.index(line.len() + 1);
                match kind {
                    0 => line.insert(i, byte),
                    1 if i < line.len() => { line.remove(i); }
                    2 if i < line.len() => line[i] = byte,
                    _ => {
                        let j = (i + 1 + byte as usize % 8).min(line.len());
                        let dup: Vec<u8> = line[i.min(j)..j].to_vec();
                        line.splice(j..j, dup);
                    }
                }
            }
            let res = decode(&line);
            check_result(&line, &res);
        }
    }
}
