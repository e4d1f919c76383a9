//! The ingest socket: a Unix stream listener and one task per connection.
//!
//! The listener owns the socket file: a stale socket from a crashed run is replaced at start
//! (anything else at the path, a live daemon or one we may not connect to, is refused
//! instead), the file appears with its final mode (0660), and it is removed when the listener
//! is dropped, unless systemd passed the socket in (then the file is systemd's). Connections are bounded by a semaphore; one over the bound gets an error line
//! and is closed. With `daemon.ingest_allow` set, the peer's credentials are checked first
//! (see [`crate::peer`]): a writer not allowed gets one `permission_denied` error
//! line and is closed, and the attempt is logged.

mod budget;
pub mod connection;
mod ids;
mod sock;
pub mod tick;

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::sync::{Semaphore, watch};

use crate::model::registry::Registry;
use crate::protocol::ErrorCode;
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
    #[error("{0} exists and is not a socket; not replacing it (remove it, or choose another path)")]
    NotASocket(PathBuf),
    #[error(
        "{path} is a socket that may still be served (another user's?): connecting failed \
         otherwise than with \"connection refused\"; not replacing it (remove it if it is stale)"
    )]
    MaybeInUse {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot give the socket {path} to group {gid}")]
    Group {
        path: PathBuf,
        gid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot bind {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot use the socket passed by systemd")]
    Inherited(#[source] std::io::Error),
    #[error("cannot hand the ingest socket to the models' thread")]
    Handover(#[source] std::io::Error),
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
    /// Connections closed because their peer uid holds `max_connections_per_uid` already.
    pub connections_refused_uid: AtomicU64,
    /// Error replies dropped because the client did not read them.
    pub replies_dropped: AtomicU64,
    /// Rejections by error code, indexed by `code as usize` (the order of `ErrorCode::ALL`).
    pub rejected_by_code: [AtomicU64; ErrorCode::COUNT],
}

/// A bound Unix socket whose file is removed on drop (when we created it).
pub struct SocketFile {
    pub listener: UnixListener,
    file: SocketPath,
}

/// The socket file we created, removed when dropped (a listener systemd passed has none).
struct SocketPath(Option<PathBuf>);

impl Drop for SocketPath {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl SocketFile {
    /// Binds `path` with `mode` (and the group `gid`), replacing only a stale socket: one
    /// that `lstat` says is a socket and whose `connect` is refused (`ECONNREFUSED`: nobody
    /// listens). A live socket, one we may not connect to (`EACCES`: maybe another user's
    /// daemon), or anything that is not a socket is left alone and refused.
    ///
    /// Nobody may connect before the socket has its final group and mode. `bind` creates the
    /// file with the process's umask, which is process-wide (other threads create files
    /// meanwhile), and `fchmod` on a socket's descriptor does not change its file's mode on
    /// Linux; so the socket is bound in a private directory (0700, created exclusively beside
    /// `path`, where nobody else can reach it), given its group and mode there, and only then
    /// renamed into place, without replacing whatever may have appeared at `path` meanwhile.
    pub fn bind(path: &Path, mode: u32, gid: Option<u32>) -> Result<SocketFile, IngestError> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir).map_err(|source| IngestError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let bind_err = |source| IngestError::Bind {
            path: path.to_owned(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(bind_err(e)),
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(IngestError::NotASocket(path.to_owned()));
            }
            Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(IngestError::InUse(path.to_owned())),
                Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                    tracing::info!(path = %path.display(), "replacing a stale socket file");
                    std::fs::remove_file(path).map_err(bind_err)?;
                }
                Err(source) => {
                    return Err(IngestError::MaybeInUse {
                        path: path.to_owned(),
                        source,
                    });
                }
            },
        }
        // A short name, so the temporary path is no longer than the final one for names of
        // 11 bytes or more (`ingest.sock`): socket paths are limited to 107 bytes.
        let private = tempfile::Builder::new()
            .prefix(".v")
            .rand_bytes(6)
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(dir)
            .map_err(|source| IngestError::Dir {
                path: dir.to_owned(),
                source,
            })?;
        let tmp = private.path().join("s");
        let std_listener = std::os::unix::net::UnixListener::bind(&tmp).map_err(bind_err)?;
        // When the socket already has the group (the shipped unit runs the daemon with
        // Group=visutility-admin) there is nothing to change, and no chown: the unit's system
        // call filter refuses it.
        let has_group = |gid| {
            std::fs::symlink_metadata(&tmp)
                .is_ok_and(|m| std::os::unix::fs::MetadataExt::gid(&m) == gid)
        };
        if let Some(gid) = gid.filter(|g| !has_group(*g)) {
            // Group first, then the group bits: the socket is never open to the wrong group.
            std::os::unix::fs::chown(&tmp, None, Some(gid)).map_err(|source| {
                IngestError::Group {
                    path: path.to_owned(),
                    gid,
                    source,
                }
            })?;
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(bind_err)?;
        rename_noreplace(&tmp, path).map_err(bind_err)?;
        // `private` is empty now and removed when dropped.
        std_listener.set_nonblocking(true).map_err(bind_err)?;
        let listener = UnixListener::from_std(std_listener).map_err(bind_err)?;
        Ok(SocketFile {
            listener,
            file: SocketPath(Some(path.to_owned())),
        })
    }

    /// Takes the listener off this thread's reactor, to be served on another thread (see
    /// [`MovedSocket::attach`]); the socket file goes with it.
    pub fn detach(self) -> Result<MovedSocket, IngestError> {
        // A failure below drops `file`, which removes the socket file.
        let SocketFile { listener, file } = self;
        let listener = listener.into_std().map_err(IngestError::Handover)?;
        Ok(MovedSocket { listener, file })
    }

    /// Wraps a listener systemd passed in; its file is not ours to remove.
    pub fn inherited(l: std::os::unix::net::UnixListener) -> Result<SocketFile, IngestError> {
        l.set_nonblocking(true).map_err(IngestError::Inherited)?;
        let listener = UnixListener::from_std(l).map_err(IngestError::Inherited)?;
        Ok(SocketFile {
            listener,
            file: SocketPath(None),
        })
    }
}

/// A listening socket between two threads: registered with no reactor. Its file is removed
/// when it is dropped unattached (when we created it).
pub struct MovedSocket {
    listener: std::os::unix::net::UnixListener,
    file: SocketPath,
}

impl MovedSocket {
    /// Registers the listener with this thread's reactor (a failure still removes the file).
    pub fn attach(self) -> Result<SocketFile, IngestError> {
        let MovedSocket { listener, file } = self;
        let listener = UnixListener::from_std(listener).map_err(IngestError::Handover)?;
        Ok(SocketFile { listener, file })
    }
}

/// Renames `from` to `to` unless `to` exists (then `EEXIST`). Where the file system has no
/// `RENAME_NOREPLACE`, a hard link (which never replaces either) and an unlink do the same.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    };
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: both paths are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) {
        return Err(e);
    }
    std::fs::hard_link(from, to)?;
    std::fs::remove_file(from)
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
    pub refusals: Arc<crate::peer::RefusalLog>,
    /// Unfinished lines of every connection, against `daemon.partial_line_budget_bytes`.
    pub partial: Arc<connection::ByteBudget>,
    /// Replies queued for clients that are not reading them, against
    /// [`connection::REPLY_BUDGET`].
    pub replies: Arc<connection::ByteBudget>,
}

/// Limits on who holds how many connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `daemon.max_connections`.
    pub max_connections: usize,
    /// `daemon.max_connections_per_uid` (0: no limit).
    pub per_uid: usize,
}

/// The daemon's own liveness probe: one end of a socket pair, served like a client
/// connection but without taking a client slot, so that clients holding every slot cannot
/// stop the watchdog heartbeat. Only the daemon holds the sender.
pub type Probe = tokio::sync::mpsc::Sender<tokio::net::UnixStream>;

/// Counts connections per peer uid; a connection's [`UidSlot`] gives its place back.
#[derive(Default)]
struct UidCounts(std::cell::RefCell<rustc_hash::FxHashMap<u32, usize>>);

struct UidSlot {
    counts: std::rc::Rc<UidCounts>,
    uid: u32,
}

impl UidCounts {
    /// A slot for `uid`, or its current count when `limit` is reached.
    fn take(self: &std::rc::Rc<Self>, uid: u32, limit: usize) -> Result<UidSlot, usize> {
        let mut map = self.0.borrow_mut();
        let n = map.entry(uid).or_insert(0);
        if limit > 0 && *n >= limit {
            return Err(*n);
        }
        *n += 1;
        Ok(UidSlot {
            counts: self.clone(),
            uid,
        })
    }
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        let mut map = self.counts.0.borrow_mut();
        if let Some(n) = map.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.uid);
            }
        }
    }
}

/// Accepts connections until shutdown; returns when every connection has finished.
pub async fn serve(
    socket: SocketFile,
    ctx: IngestCtx,
    limits: Limits,
    mut probes: tokio::sync::mpsc::Receiver<tokio::net::UnixStream>,
) {
    let max_connections = limits.max_connections;
    let permits = Arc::new(Semaphore::new(max_connections));
    let per_uid = std::rc::Rc::new(UidCounts::default());
    let mut shutdown = ctx.shutdown.clone();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|s| *s) => break,
            Some(probe) = probes.recv() => {
                let c = ctx.clone();
                tasks.spawn_local(async move { connection::run(probe, &c).await });
                continue;
            }
            a = socket.listener.accept() => a,
        };
        let (stream, _) = match accepted {
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
            send_and_close(stream, reply);
            continue;
        }
        // SO_PEERCRED cannot fail on a connected Unix socket; if it did, the peer counts as
        // uid u32::MAX, which shares one limit with every other such peer.
        let uid = stream.peer_cred().map_or(u32::MAX, |c| c.uid());
        let uid_slot = match per_uid.take(uid, limits.per_uid) {
            Ok(slot) => slot,
            Err(held) => {
                ctx.stats
                    .connections_refused_uid
                    .fetch_add(1, Ordering::Relaxed);
                if ctx.refusals.first(uid, std::time::Instant::now()) {
                    tracing::warn!(
                        uid,
                        held,
                        max_connections_per_uid = limits.per_uid,
                        "connection refused: this uid holds max_connections_per_uid (further \
                         refusals of this uid are summed up once a minute)"
                    );
                }
                let reply = crate::protocol::error_reply(
                    crate::protocol::ErrorCode::TooManyConnections,
                    0,
                    &format!(
                        "uid {uid} holds {held} connections, the most one uid may (max_connections_per_uid); close some or reuse one"
                    ),
                );
                send_and_close(stream, reply);
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            ctx.stats
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            if ctx.refusals.first(uid, std::time::Instant::now()) {
                tracing::warn!(
                    uid,
                    max_connections,
                    "connection refused: max_connections reached (further refusals of this \
                     uid are summed up once a minute)"
                );
            }
            let reply = crate::protocol::error_reply(
                crate::protocol::ErrorCode::TooManyConnections,
                0,
                "max_connections reached; try again later",
            );
            send_and_close(stream, reply);
            continue;
        };
        let c = ctx.clone();
        tasks.spawn_local(async move {
            c.stats.connections.fetch_add(1, Ordering::Relaxed);
            c.stats.connections_total.fetch_add(1, Ordering::Relaxed);
            connection::run(stream, &c).await;
            c.stats.connections.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
            drop(uid_slot);
        });
        // Reap finished connections so the set does not grow.
        while tasks.try_join_next().is_some() {}
    }
    drop(socket);
    while tasks.join_next().await.is_some() {}
}

/// Writes one reply line to a refused connection (for at most a second), then closes it.
fn send_and_close(mut stream: tokio::net::UnixStream, reply: Vec<u8>) {
    tokio::spawn(async move {
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(1), stream.write_all(&reply)).await;
    });
}

/// The error line for a peer `daemon.ingest_allow` does not admit (logged here), or `None`.
fn refusal(
    stream: &tokio::net::UnixStream,
    allow: &crate::config::PeerAllow,
    refusals: &crate::peer::RefusalLog,
) -> Option<Vec<u8>> {
    let detail = match crate::peer::Peer::of(stream) {
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
    Some(crate::protocol::error_reply(
        ErrorCode::PermissionDenied,
        0,
        &detail,
    ))
}
