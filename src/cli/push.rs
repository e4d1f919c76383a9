//! `visutility push`: the ingest socket's command-line client. Events go from a file or
//! stdin to the socket, then a flush barrier; error replies go to stderr as they arrive, the
//! flush reply to stdout.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::config::{Config, Env};

/// `push [--socket S] [FILE or -]`: without `--socket`, the config's ingest socket (read even
/// from a config that does not validate, with a warning).
pub fn run(
    socket: Option<PathBuf>,
    file: &Path,
    config: Option<&Path>,
    env: &Env,
) -> Result<ExitCode> {
    let socket = match socket {
        Some(s) => s,
        None => {
            let (socket, _, warning) = Config::sockets(config, env);
            if let Some(w) = warning {
                eprintln!("warning: {w}");
            }
            socket
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(push(&socket, file))
}

/// Streams `file` to the ingest socket, then a flush; prints error replies and the flush reply.
async fn push(socket: &Path, file: &Path) -> Result<ExitCode> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .with_context(|| {
            format!(
                "cannot connect to {} (is the daemon running?)",
                socket.display()
            )
        })?;
    let (rd, mut wr) = stream.into_split();
    // Replies are read while we write, or a client sending many bad lines would deadlock on
    // full socket buffers.
    let reader = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(rd).lines();
        let mut errors = 0u64;
        while let Ok(Some(line)) = lines.next_line().await {
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if v.get("error").is_some() && v.get("ok").is_none() {
                errors += 1;
                writeln!(std::io::stderr(), "{line}")?;
            } else {
                writeln!(std::io::stdout(), "{line}")?;
                return Ok::<_, anyhow::Error>((errors, v));
            }
        }
        bail!("the daemon closed the connection before answering the flush")
    });
    let input: Box<dyn BufRead + Send> = if file == Path::new("-") {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?,
        ))
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let producer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut input = input;
        let mut chunk = Vec::with_capacity(1 << 16);
        let mut line = Vec::new();
        loop {
            line.clear();
            if input.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            // Every line is a protocol line: `op` lines from the file count as ops too, so
            // a file without a final newline still ends its last line.
            if !line.ends_with(b"\n") {
                line.push(b'\n');
            }
            chunk.extend_from_slice(&line);
            if chunk.len() >= 1 << 16 && tx.blocking_send(std::mem::take(&mut chunk)).is_err() {
                return Ok(());
            }
        }
        if !chunk.is_empty() {
            let _ = tx.blocking_send(chunk);
        }
        Ok(())
    });
    let sent: std::io::Result<()> = async {
        while let Some(chunk) = rx.recv().await {
            wr.write_all(&chunk).await?;
        }
        wr.write_all(b"{\"op\":\"flush\"}\n").await
    }
    .await;
    // A failed write stops the producer at its next chunk.
    drop(rx);
    producer
        .join()
        .map_err(|_| anyhow::anyhow!("input reader panicked"))??;
    // When the daemon closed the connection (a refusal, say), its reply says why: read it
    // before reporting the failed write.
    let (errors, reply) = match (sent, reader.await?) {
        (_, Ok(r)) => r,
        (Ok(()), Err(e)) => return Err(e),
        (Err(w), Err(e)) => return Err(e.context(format!("sending failed: {w}"))),
    };
    if reply.get("ok").and_then(Value::as_bool) != Some(true) {
        bail!("the flush failed: {reply}");
    }
    let rejected = reply
        .get("rejected")
        .and_then(Value::as_u64)
        .unwrap_or(errors);
    Ok(if rejected > 0 || errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
