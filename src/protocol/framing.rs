//! Framing: [`LineReader`] splits a byte stream into lines, with a hard length limit enforced
//! while reading. The rules (terminators, the limit, a last line without `\n`) are the
//! framing rules of the [`protocol`](super) doc, with the buffer drawn there.
//!
//! Invariants:
//! * Every frame (`Line`, `TooLong`, blank lines too) is exactly one line, so the caller can
//!   number them.
//! * The buffer never grows past `max_line_bytes + 2 + READ_CHUNK`; only a partial line is
//!   ever moved within it, and no byte is scanned twice for a newline.
//! * [`LineReader::fill`] and [`LineReader::fill_step`] are cancel-safe: no data is lost if
//!   their future is dropped.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Minimum free space for one read; the reader's buffer is `max_line_bytes + 2 + READ_CHUNK`.
pub const READ_CHUNK: usize = 64 * 1024;

/// One line from the socket. Each frame, of either kind, is exactly one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// The line without its `\n` / `\r\n`; at most `max_line_bytes` long.
    Line(&'a [u8]),
    /// A line over the limit; its bytes were dropped.
    TooLong,
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
            match memchr::memchr(b'\n', &buf[self.start..self.end]) {
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
        if let Some(i) = memchr::memchr(b'\n', &buf[self.scan..self.end]) {
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
///             Frame::TooLong => write_error_reply(&mut out, ErrorCode::LineTooLong, line_no, "..."),
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::event::{Event, Line};
    use crate::protocol::scan::decode_line;
    use crate::protocol::testutil::check_result;
    use proptest::prelude::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncWriteExt, ReadBuf};

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
            peak = peak.max(r.buf.len());
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
        peak = peak.max(r.buf.len());
        assert_eq!(got, vec![Some("before".into()), None, Some("after".into())]);
        assert!(peak <= max + 2 + READ_CHUNK, "buffer grew to {peak}");
    }

    #[tokio::test]
    async fn oversized_line_one_byte_at_a_time() {
        let data = format!("a\n{}\nb", "y".repeat(300_000));
        let mut r = LineReader::new(Chunked::new(data, &[1, 7, 65536]), 1000);
        assert_eq!(frames(&mut r).await, vec![some("a"), None, some("b")]);
        assert!(r.buf.len() <= 1000 + 2 + READ_CHUNK);
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
    async fn fill_then_try_next_buffered() {
        let mut r = LineReader::new(Chunked::new("a\nb\nc", &[4]), 10);
        assert!(r.fill().await.unwrap());
        assert_eq!(r.try_next_buffered(), Some(Frame::Line(b"a")));
        assert_eq!(r.try_next_buffered(), Some(Frame::Line(b"b")));
        assert_eq!(r.try_next_buffered(), None); // "c" needs another read (to see EOF)
        assert!(r.fill().await.unwrap());
        assert_eq!(r.try_next_buffered(), Some(Frame::Line(b"c")));
        assert!(!r.fill().await.unwrap());
        assert_eq!(r.inner.pos, 5);
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
        assert!(r.fill().await.unwrap());
        assert_eq!(r.try_next_buffered(), Some(Frame::Line(b"ok")));
        assert_eq!(r.fill().await.unwrap_err().to_string(), "boom");
    }

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

    }
}
