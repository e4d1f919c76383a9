//! The throughput ceiling: a server that only reads and parses ingest lines.
//!
//! It listens on a Unix socket like the daemon, frames lines with the daemon's own
//! [`LineReader`] and decodes them with [`decode_line`], and answers `{"op":"flush"}` with the
//! daemon's reply, but keeps no state, runs no policy, sends no message and writes nothing to
//! disk. Whatever the daemon does beyond this costs throughput; the load generator
//! (`examples/loadgen.rs`) runs both in the same invocation and reports the ratio.
//!
//! Like the daemon's connections, every connection runs on one thread.
//!
//! ```sh
//! cargo run --release --example ceiling -- /tmp/ceiling.sock
//! ```

use std::hint::black_box;
use std::path::PathBuf;

use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use visutility::protocol::{self, ErrorCode, Frame, Line, LineReader, Op};

fn main() -> std::io::Result<()> {
    let Some(path) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: ceiling SOCKET");
        std::process::exit(2);
    };
    let _ = std::fs::remove_file(&path);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = UnixListener::bind(&path)?;
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::task::spawn_local(serve(stream));
        }
    })
}

async fn serve(stream: UnixStream) {
    let (rd, mut wr) = stream.into_split();
    let mut reader = LineReader::new(rd, 64 * 1024);
    let (mut accepted, mut rejected, mut line_no) = (0u64, 0u64, 0u64);
    let mut out = Vec::new();
    // Something derived from every decoded field, so no decoding work can be optimised away.
    let mut checksum = 0.0f64;
    loop {
        match reader.fill().await {
            Ok(true) => {}
            Ok(false) | Err(_) => break,
        }
        for frame in reader.batch() {
            line_no += 1;
            let line = match frame {
                Frame::Line(l) => l,
                Frame::TooLong => {
                    rejected += 1;
                    protocol::write_error_reply(
                        &mut out,
                        ErrorCode::LineTooLong,
                        line_no,
                        "line longer than max_line_bytes (65536)",
                    );
                    continue;
                }
            };
            match protocol::decode_line(line) {
                Ok(Line::Event(ev)) => {
                    accepted += 1;
                    checksum += ev.model_id.len() as f64
                        + ev.ts.unwrap_or(0.0)
                        + ev.drift_score.unwrap_or(0.0)
                        + ev.accuracy.unwrap_or(0.0)
                        + ev.metric("error").unwrap_or(0.0);
                    black_box(&ev);
                }
                Ok(Line::Op(Op::Flush)) => {
                    protocol::write_flush_reply(&mut out, accepted, rejected)
                }
                Ok(Line::Op(_)) => out.extend_from_slice(protocol::PING_REPLY),
                Ok(Line::Empty) => {}
                Err(e) => {
                    rejected += 1;
                    protocol::write_error_reply(&mut out, e.code, line_no, &e.detail);
                }
            }
        }
        if !out.is_empty() {
            if wr.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
        }
    }
    black_box(checksum);
}
