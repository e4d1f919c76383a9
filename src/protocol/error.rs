//! The error codes sent on the wire, and [`LineError`], the reason one line was rejected.
//!
//! Invariants:
//! * [`ErrorCode`], [`ErrorCode::ALL`] and the wire names come from one list (the
//!   `error_codes!` macro below), so `ALL` holds every code exactly once, in declaration
//!   order: `ALL[code as usize] == code`. Per-code counters are arrays of
//!   [`ErrorCode::COUNT`] indexed by `code as usize`, and follow the enum by construction.
//! * A wire name never changes once released (clients and alerts match on it).
//! * A [`LineError`]'s detail is at most [`DETAIL_MAX`] bytes, and quotes client text only as
//!   a short, escaped prefix (`quoted`), so a hostile line cannot make a long or confusing
//!   reply.

use std::fmt;

/// Longest `detail` in a reply, in bytes before JSON escaping (so a reply is always small).
pub const DETAIL_MAX: usize = 200;
/// How much of a hostile name or value is quoted back in a detail.
pub(super) const QUOTE_MAX: usize = 64;

/// Declares [`ErrorCode`] with its wire names, and [`ErrorCode::ALL`] from the same list.
macro_rules! error_codes {
    ($($(#[$doc:meta])* $code:ident => $wire:literal,)+) => {
        /// Error codes sent to clients (`"error": "<code>"`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $code,)+
        }

        impl ErrorCode {
            /// Every code, in declaration order (`ALL[code as usize] == code`).
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$code,)+];

            /// The code as sent on the wire.
            pub fn as_str(&self) -> &'static str {
                match self {
                    $(ErrorCode::$code => $wire,)+
                }
            }
        }
    };
}

error_codes! {
    /// Not one UTF-8 JSON object (syntax, encoding, trailing bytes, not an object).
    BadJson => "bad_json",
    /// Unknown/duplicate key, wrong type, invalid metric, non-finite number, bad op line shape.
    BadField => "bad_field",
    /// `model_id` breaks the id rules.
    BadModelId => "bad_model_id",
    /// Line longer than the connection's limit (produced by the daemon from
    /// [`Frame::TooLong`](super::Frame::TooLong)).
    LineTooLong => "line_too_long",
    /// The daemon tracks too many models already (produced by the daemon).
    TooManyModels => "too_many_models",
    /// `op` names no known op.
    UnknownOp => "unknown_op",
    /// The daemon failed internally, e.g. the store could not persist (flush error replies).
    Internal => "internal",
    /// The daemon serves `max_connections` already; sent once, then the connection closes.
    TooManyConnections => "too_many_connections",
    /// Nothing arrived for `idle_timeout_s`; sent once, then the connection closes.
    IdleTimeout => "idle_timeout",
    /// A line stayed unfinished for `partial_line_timeout_s`; sent once, then the connection
    /// closes.
    PartialLineTimeout => "partial_line_timeout",
    /// Unfinished lines of all connections hold more than `partial_line_budget_bytes`; the
    /// connection whose line went over is told once and closed.
    Overloaded => "overloaded",
    /// The peer is not admitted by `daemon.ingest_allow`; sent once (with line 0), then the
    /// connection closes.
    PermissionDenied => "permission_denied",
}

impl ErrorCode {
    /// How many codes there are: the length of an array indexed by `code as usize`.
    pub const COUNT: usize = ErrorCode::ALL.len();
}

// `code as usize` indexes `ALL` (and every per-code array): no explicit discriminants.
const _: () = {
    let mut i = 0;
    while i < ErrorCode::COUNT {
        assert!(ErrorCode::ALL[i] as usize == i);
        i += 1;
    }
};

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
}

pub(super) fn bad_field(detail: impl Into<String>) -> LineError {
    LineError::new(ErrorCode::BadField, detail)
}

pub(super) fn bad_json(detail: impl Into<String>) -> LineError {
    LineError::new(ErrorCode::BadJson, detail)
}

pub(super) fn bad_model_id(detail: impl Into<String>) -> LineError {
    LineError::new(ErrorCode::BadModelId, detail)
}

/// Longest prefix of `s` of at most `max` bytes that ends on a char boundary.
pub(super) fn truncate_str(s: &str, max: usize) -> &str {
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
pub(super) fn bounded_detail(detail: &str) -> (&str, bool) {
    if detail.len() <= DETAIL_MAX {
        (detail, false)
    } else {
        (truncate_str(detail, DETAIL_MAX - 3), true)
    }
}

/// Client text for a detail: a short prefix, Rust-escaped and quoted so that control characters
/// and quotes cannot confuse a reader of the log or reply.
pub(super) fn quoted(s: &str) -> String {
    let t = truncate_str(s, QUOTE_MAX);
    if t.len() < s.len() {
        format!("{t:?}...")
    } else {
        format!("{t:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                "permission_denied",
            ]
        );
        assert_eq!(ErrorCode::BadJson.to_string(), "bad_json");
        let e = LineError::new(ErrorCode::BadField, "x");
        assert_eq!(e.to_string(), "bad_field: x");
    }

    /// Per-code counters are indexed by `code as usize` into arrays of `COUNT`.
    #[test]
    fn codes_index_their_counters() {
        assert_eq!(ErrorCode::COUNT, ErrorCode::ALL.len());
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(*code as usize, i, "{code}");
        }
        let names: std::collections::HashSet<&str> =
            ErrorCode::ALL.iter().map(ErrorCode::as_str).collect();
        assert_eq!(names.len(), ErrorCode::COUNT, "a wire name is used twice");
    }
}
