//! [`decode_line`], and its fast path: a hand-written scanner for the plain shape of valid
//! lines.
//!
//! serde_json through the visitors of [`super::fallback`] costs several thousand instructions
//! per line, mostly generic per-token overhead. Lines from well-behaved clients all have the
//! same simple shape, so a hand-written scanner handles that shape and gives up (returns None)
//! on anything else: escapes, unknown or duplicate keys, invalid values, non-ASCII outside
//! `meta`, odd numbers. The full decoder then runs and is the only source of errors.
//!
//! Invariants:
//! * The fast path is a strict subset: whenever it returns `Some(x)`, the full decoder returns
//!   `Ok(x)`, bit for bit (property tests check exactly this on valid, mutated and random
//!   lines, and on the fuzzing corpus).
//! * `meta` is still handed to serde_json (`RawValue`), so JSON validation of arbitrary nested
//!   data is never reimplemented here.
//! * A line the scanner accepts is valid UTF-8 without a whole-line check (see `Scan`).
//! * It never allocates, except for `meta` nested deeper than one level and for more than
//!   [`METRICS_INLINE`](super::METRICS_INLINE) metrics (`tests/alloc_free.rs`).

use serde::Deserialize;
use serde_json::value::RawValue;

use super::error::LineError;
use super::event::{
    Event, Field, Line, METRIC_NAME_BYTES, METRIC_NAME_MAX, METRICS_MAX, MODEL_ID_MAX,
    MODEL_ID_PLAIN, Metrics, Op, is_reserved_metric,
};
use super::fallback::{decode_full, is_json_ws};

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

/// `b` as text. Only for bytes checked against one of the class tables of [`super::event`],
/// which hold ASCII bytes only.
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
pub(super) fn decode_fast(line: &[u8]) -> Option<Line<'_>> {
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
/// ignored). See the [`protocol`](super) doc for the rules. Never panics. Allocates only on
/// rejection, for `meta` nested deeper than one level, and for more than
/// [`METRICS_INLINE`](super::METRICS_INLINE) metrics.
pub fn decode_line(line: &[u8]) -> Result<Line<'_>, LineError> {
    let mut ev = Event::default();
    match scan_line(line, &mut ev) {
        Some(None) => Ok(Line::Event(ev)),
        Some(Some(op)) => Ok(Line::Op(op)),
        None => decode_full(line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::error::ErrorCode;
    use crate::protocol::testutil::{check_result, decode, finite, json_value, opt};
    use proptest::prelude::*;
    use serde_json::Value;

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
