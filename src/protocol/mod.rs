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

//!
//! # Files
//! * [`error`]: the error codes sent on the wire and [`LineError`], whose detail is bounded.
//! * [`event`]: what a line decodes to ([`Line`], [`Event`], [`Op`]) and the `model_id` and
//!   metric name rules.
//! * [`scan`]: [`decode_line`] and its fast path, a scanner for the plain shape of valid lines.
//! * [`fallback`]: the reference decoder (serde_json with strict visitors), which produces
//!   every error.
//! * [`reply`]: the reply lines, written without allocating.
//! * [`framing`]: [`LineReader`], the bounded line framing of a byte stream.

pub mod error;
pub mod event;
pub mod fallback;
pub mod framing;
pub mod reply;
pub mod scan;
#[cfg(test)]
mod testutil;

pub use error::{DETAIL_MAX, ErrorCode, LineError};
pub(crate) use event::is_reserved_metric;
pub use event::{
    Event, Line, METRIC_NAME_MAX, METRICS_INLINE, METRICS_MAX, MODEL_ID_MAX, Metrics, Op,
    validate_metric_name, validate_model_id,
};
pub use framing::{Batch, Frame, LineReader, READ_CHUNK};
pub use reply::{
    PING_REPLY, error_reply, flush_error_reply, flush_reply, write_error_reply,
    write_flush_error_reply, write_flush_reply, write_flush_reply_dropped,
};
pub use scan::decode_line;
