//! The ingest socket: a Unix stream listener and one task per connection.
//!
//! The listener owns the socket file: a stale file from a crashed run is replaced at start
//! (a live daemon on the same path is refused instead), the file's mode is 0660, and it is
//! removed when the listener is dropped, unless systemd passed the socket in (then the file is
//! systemd's). Connections are bounded by a semaphore; one over the bound gets an error line
//! and is closed. With `daemon.ingest_allow` set, the peer's credentials are checked first
//! (see [`crate::control::peer`]): a writer not allowed gets one `permission_denied` error
//! line and is closed, and the attempt is logged.

pub mod connection;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::sync::{Semaphore, watch};

use crate::model::registry::Registry;
use crate::store::Store;

pub use connection::ConnSettings;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot create the socket directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("another process is already serving {0}")]
    InUse(PathBuf),
    #[error("cannot bind {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot use the socket passed by systemd")]
    Inherited(#[source] std::io::Error),
}

/// Counters shared by every connection, for `status` and `metrics`.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub connections: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    /// Connections closed because the peer is not in `daemon.ingest_allow`.
    pub connections_denied: AtomicU64,
    /// Rejections by error code, indexed like `protocol::ErrorCode::ALL`.
    pub rejected_by_code: [AtomicU64; 9],
}

/// A bound Unix socket whose file is removed on drop (when we created it).
pub struct SocketFile {
    pub listener: UnixListener,
    path: Option<PathBuf>,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl SocketFile {
    /// Binds `path` with `mode`, replacing a stale socket file.
    pub fn bind(path: &Path, mode: u32) -> Result<SocketFile, IngestError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|source| IngestError::Dir {
                path: dir.to_owned(),
                source,
            })?;
        }
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(IngestError::InUse(path.to_owned()));
            }
            tracing::info!(path = %path.display(), "replacing a stale socket file");
            let _ = std::fs::remove_file(path);
        }
        let bind_err = |source| IngestError::Bind {
            path: path.to_owned(),
            source,
        };
        let std_listener = std::os::unix::net::UnixListener::bind(path).map_err(bind_err)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(bind_err)?;
        std_listener.set_nonblocking(true).map_err(bind_err)?;
        let listener = UnixListener::from_std(std_listener).map_err(bind_err)?;
        Ok(SocketFile {
            listener,
            path: Some(path.to_owned()),
        })
    }

    /// Wraps a listener systemd passed in; its file is not ours to remove.
    pub fn inherited(l: std::os::unix::net::UnixListener) -> Result<SocketFile, IngestError> {
        l.set_nonblocking(true).map_err(IngestError::Inherited)?;
        let listener = UnixListener::from_std(l).map_err(IngestError::Inherited)?;
        Ok(SocketFile {
            listener,
            path: None,
        })
    }
}

/// Everything the accept loop and its connections share.
#[derive(Clone)]
pub struct IngestCtx {
    pub registry: Registry,
    pub store: Store,
    pub stats: Arc<IngestStats>,
    pub settings: watch::Receiver<ConnSettings>,
    pub shutdown: watch::Receiver<bool>,
    /// `daemon.ingest_allow`: `None` lets anyone who can open the socket file write.
    pub allow: Option<Arc<crate::config::PeerAllow>>,
    /// Refused connections, for the log (one line per uid and interval).
    pub refusals: Arc<crate::control::peer::RefusalLog>,
}

/// Accepts connections until shutdown; returns when every connection has finished.
pub async fn serve(socket: SocketFile, ctx: IngestCtx, max_connections: usize) {
    let permits = Arc::new(Semaphore::new(max_connections));
    let mut shutdown = ctx.shutdown.clone();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => break,
            a = socket.listener.accept() => a,
        };
        let (mut stream, _) = match accepted {
            Ok(s) => s,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // A peer that may not write learns nothing else, not even that the daemon is busy.
        if let Some(allow) = &ctx.allow
            && let Some(reply) = refusal(&stream, allow, &ctx.refusals)
        {
            ctx.stats.connections_denied.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(1),
                    stream.write_all(&reply),
                )
                .await;
            });
            continue;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            ctx.stats
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(max_connections, "connection refused: too many connections");
            let reply = crate::protocol::error_reply(
                crate::protocol::ErrorCode::TooManyConnections,
                0,
                "max_connections reached; try again later",
            );
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(1),
                    stream.write_all(&reply),
                )
                .await;
            });
            continue;
        };
        let c = ctx.clone();
        tasks.spawn_local(async move {
            c.stats.connections.fetch_add(1, Ordering::Relaxed);
            c.stats.connections_total.fetch_add(1, Ordering::Relaxed);
            connection::run(stream, &c).await;
            c.stats.connections.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
        // Reap finished connections so the set does not grow.
        while tasks.try_join_next().is_some() {}
    }
    drop(socket);
    while tasks.join_next().await.is_some() {}
}

/// The error line for a peer `daemon.ingest_allow` does not admit (logged here), or `None`.
fn refusal(
    stream: &tokio::net::UnixStream,
    allow: &crate::config::PeerAllow,
    refusals: &crate::control::peer::RefusalLog,
) -> Option<Vec<u8>> {
    let detail = match crate::control::peer::Peer::of(stream) {
        Ok(peer) if peer.allowed(allow) => return None,
        Ok(peer) => {
            if refusals.first(peer.uid, std::time::Instant::now()) {
                tracing::warn!(
                    uid = peer.uid,
                    gid = peer.gid,
                    "ingest connection refused: peer not in daemon.ingest_allow (further \
                     refusals of this uid are summed up once a minute)"
                );
            }
            format!(
                "uid {} (gid {}) may not write to this socket; see daemon.ingest_allow",
                peer.uid, peer.gid
            )
        }
        Err(error) => {
            tracing::warn!(error = %error, "ingest connection refused: cannot read peer credentials");
            "cannot read the peer's credentials".to_owned()
        }
    };
    let mut line = serde_json::json!({
        "error": "permission_denied",
        "line": 0,
        "detail": detail,
    })
    .to_string()
    .into_bytes();
    line.push(b'\n');
    Some(line)
}
