//! `[metrics] listen`: the metrics exposition over HTTP at `/metrics`, for a Prometheus that
//! scrapes the host directly instead of through node_exporter's textfile collector.
//!
//! A minimal HTTP/1.1 responder, not a web server: per connection it reads one request head,
//! answers it and closes (`Connection: close`, no keep-alive, no body read).
//!
//! ```text
//! GET /metrics HTTP/1.1      -> 200, Content-Type: text/plain; version=0.0.4
//! HEAD /metrics              -> 200, headers only
//! other methods on /metrics  -> 405
//! any other path             -> 404
//! a head over 8 KiB          -> 431;  not HTTP -> 400
//! ```
//!
//! It must never stall the daemon, so everything is bounded: at most [`MAX_CONNECTIONS`]
//! connections are served at once (the rest wait in the kernel's backlog), a request head is at
//! most [`MAX_HEAD_BYTES`], and reading it and writing the answer each get [`IO_TIMEOUT`].
//! The listener runs as one task among the daemon's; a slow or hostile client costs a slot,
//! never a thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::ControlCtx;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 8;
/// The longest request head read (request line and headers).
pub const MAX_HEAD_BYTES: usize = 8192;
/// How long reading the request head, and then writing the answer, may take.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen for metrics on {addr} ([metrics] listen)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds `addr` now, so that a bad address refuses the start instead of failing later. A
/// non-loopback address is allowed (the fleet's Prometheus may scrape from elsewhere) but
/// logged, because the metrics name every model.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
    let bind_error = |source| HttpError::Bind { addr, source };
    let std_listener = std::net::TcpListener::bind(addr).map_err(bind_error)?;
    std_listener.set_nonblocking(true).map_err(bind_error)?;
    let listener = TcpListener::from_std(std_listener).map_err(bind_error)?;
    let local = listener.local_addr().unwrap_or(addr);
    if !addr.ip().is_loopback() {
        tracing::warn!(
            address = %local,
            "[metrics] listen is not a loopback address: anyone who can reach it reads the metrics (model ids included); firewall it to the fleet's Prometheus"
        );
    }
    tracing::info!(address = %local, "serving metrics at http://{local}/metrics");
    Ok(listener)
}

/// Serves `listener` until shutdown.
pub async fn serve(listener: TcpListener, ctx: ControlCtx) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let permit = tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of descriptors, most likely: back off instead of spinning.
                    tracing::warn!(error = %error, "cannot accept a metrics connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let ctx = ctx.clone();
        actix::spawn(async move {
            if let Err(error) = answer(stream, &ctx).await {
                tracing::debug!(error = %error, "metrics connection ended");
            }
            drop(permit);
        });
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics { head_only: bool },
    MethodNotAllowed,
    NotFound,
    BadRequest,
    TooLarge,
}

async fn answer(mut stream: TcpStream, ctx: &ControlCtx) -> std::io::Result<()> {
    let route = match tokio::time::timeout(IO_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(head)) => head,
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(std::io::Error::other("timed out reading the request")),
    };
    let allow = if route == Route::MethodNotAllowed {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let (status, body, head_only) = match route {
        Route::Metrics { head_only } => {
            let text = super::metrics::render(&super::metrics::snapshot(ctx).await);
            ("200 OK", text, head_only)
        }
        Route::MethodNotAllowed => ("405 Method Not Allowed", "GET only\n".into(), false),
        Route::NotFound => ("404 Not Found", "not found; try /metrics\n".into(), false),
        Route::BadRequest => ("400 Bad Request", "bad request\n".into(), false),
        Route::TooLarge => (
            "431 Request Header Fields Too Large",
            "request head too large\n".into(),
            false,
        ),
    };
    let content_type = if status.starts_with("200") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    match tokio::time::timeout(IO_TIMEOUT, async {
        stream.write_all(&out).await?;
        stream.shutdown().await
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::other("timed out writing the answer")),
    }
}

/// Reads up to the end of the request head (`\r\n\r\n`) and routes it. A client that closes
/// early gets nothing.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Route> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = find_head_end(&buf) {
            return Ok(route(&buf[..end]));
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return Ok(Route::TooLarge);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Routes a request head by its request line.
fn route(head: &[u8]) -> Route {
    let Some(line) = head.split(|b| *b == b'\n').next() else {
        return Route::BadRequest;
    };
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::BadRequest;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let path = target.split('?').next().unwrap_or(target);
    match (method, path) {
        ("GET", "/metrics") => Route::Metrics { head_only: false },
        ("HEAD", "/metrics") => Route::Metrics { head_only: true },
        (_, "/metrics") => Route::MethodNotAllowed,
        _ => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_request_line() {
        let r = |s: &str| route(s.as_bytes());
        assert_eq!(
            r("GET /metrics HTTP/1.1\r\nHost: x"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            r("GET /metrics?name[]=x HTTP/1.0"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            r("HEAD /metrics HTTP/1.1"),
            Route::Metrics { head_only: true }
        );
        assert_eq!(r("POST /metrics HTTP/1.1"), Route::MethodNotAllowed);
        assert_eq!(r("GET / HTTP/1.1"), Route::NotFound);
        assert_eq!(r("GET /metrics/x HTTP/1.1"), Route::NotFound);
        assert_eq!(r("GET /metrics"), Route::BadRequest);
        assert_eq!(r("GET /metrics SPDY/3"), Route::BadRequest);
        assert_eq!(r("\u{0}\u{1}"), Route::BadRequest);
        assert_eq!(route(b"GET \xff HTTP/1.1"), Route::BadRequest);
    }

    #[test]
    fn head_end_is_found_across_reads() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\n"), Some(14));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n"), None);
    }
}
