//! The reply lines the daemon sends on the ingest socket, written without allocating into the
//! connection's output buffer (the `write_*` functions; the others return a fresh `Vec`).
//!
//! Invariants:
//! * Every reply is exactly one line: one JSON object, then `\n`. Client text only ever
//!   appears JSON-escaped inside `detail`, so it can neither end the line nor break the
//!   object.
//! * A detail is at most [`DETAIL_MAX`] bytes before escaping (cut at a char boundary, with a
//!   `...` marker), so a reply is always small.

use super::error::{DETAIL_MAX, ErrorCode, bounded_detail};

/// Reply to `{"op":"ping"}`.
pub const PING_REPLY: &[u8] = b"{\"ok\":true}\n";

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::error::LineError;
    use crate::protocol::testutil::rej;
    use serde_json::{Value, json};

    fn parse_reply(r: &[u8]) -> Value {
        assert_eq!(r.last(), Some(&b'\n'));
        assert_eq!(r.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        serde_json::from_slice(r).expect("reply is JSON")
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
        let e = rej(r#"{"model_id":"a","x":1}"#);
        write_error_reply(&mut out, e.code, 3, &e.detail);
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
}
