//! A connection's socket that can move between threads (see `connection`'s `Home`): it is
//! registered with the reactor of the thread the connection runs on, and taken off it when
//! the connection moves. Reads and writes go through it only while it is attached here, or
//! while it rests (read on the ingest tick, see `tick`).

use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use tokio::io::unix::AsyncFd;

/// The connection's socket, registered with the reactor of the thread the connection runs
/// on, and taken off it when the connection moves.
pub(super) enum SockState {
    Attached(AsyncFd<std::os::unix::net::UnixStream>),
    /// Off the reactor but on this thread: read and written without waiting, at the ingest
    /// tick (its data does not wake the thread). A read that finds nothing is `Pending`
    /// without a waker, so it is only ever polled once (`connection::poll_once`).
    Resting(std::os::unix::net::UnixStream),
    Detached(std::os::unix::net::UnixStream),
    Gone,
}

pub(super) type Sock = Arc<std::sync::Mutex<SockState>>;

pub(super) fn lock_sock(s: &Sock) -> std::sync::MutexGuard<'_, SockState> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(super) fn not_attached() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "socket not registered on this thread",
    )
}

/// Registers the socket with this thread's reactor.
pub(super) fn attach(sock: &Sock) -> std::io::Result<()> {
    let mut st = lock_sock(sock);
    match std::mem::replace(&mut *st, SockState::Gone) {
        SockState::Detached(s) | SockState::Resting(s) => {
            // SAFETY: the descriptor is the stream's own, which the `AsyncFd` owns from now on
            // (it is valid and open for as long as the registration).
            let fd = unsafe { AsyncFd::register(s) }
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            *st = SockState::Attached(fd);
            Ok(())
        }
        other => {
            *st = other;
            Ok(())
        }
    }
}

/// [`attach`], logging a failure: `false` when the socket could not be registered (the
/// connection cannot go on).
pub(super) fn attach_or_log(sock: &Sock) -> bool {
    match attach(sock) {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(error = %error, "cannot register a connection's socket");
            false
        }
    }
}

/// Takes the socket off this thread's reactor, so another thread can register it.
pub(super) fn detach(sock: &Sock) {
    let mut st = lock_sock(sock);
    *st = match std::mem::replace(&mut *st, SockState::Gone) {
        SockState::Attached(fd) => SockState::Detached(fd.into_inner()),
        SockState::Resting(s) => SockState::Detached(s),
        other => other,
    };
}

/// Takes the socket off this thread's reactor and keeps it here, to be read at the ingest
/// tick: data that arrives meanwhile no longer wakes the thread. [`attach`] puts it back
/// (data that arrived in between is reported at once: registering a readable socket makes it
/// ready).
pub(super) fn rest(sock: &Sock) {
    let mut st = lock_sock(sock);
    if let SockState::Attached(fd) = std::mem::replace(&mut *st, SockState::Gone) {
        *st = SockState::Resting(fd.into_inner());
    }
}

/// The read side, for the [`LineReader`]. Like tokio's own stream, a short read means the
/// socket is drained until the reactor says otherwise.
pub(super) struct SockRead(pub(super) Sock);

impl tokio::io::AsyncRead for SockRead {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        use std::io::Read;
        let mut st = lock_sock(&self.0);
        let fd = match &mut *st {
            SockState::Attached(fd) => fd,
            SockState::Resting(s) => {
                let unfilled = buf.initialize_unfilled();
                return match s.read(unfilled) {
                    Ok(n) => {
                        buf.advance(n);
                        Poll::Ready(Ok(()))
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Poll::Pending,
                    Err(e) => Poll::Ready(Err(e)),
                };
            }
            _ => return Poll::Ready(Err(not_attached())),
        };
        loop {
            let mut guard = match fd.poll_read_ready(cx) {
                Poll::Ready(Ok(g)) => g,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            let unfilled = buf.initialize_unfilled();
            let want = unfilled.len();
            match guard.try_io(|s| s.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    if n > 0 && n < want {
                        guard.clear_ready();
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

/// The write side: replies.
pub(super) struct SockWrite(pub(super) Sock);

impl SockWrite {
    /// Writes what the socket takes now; `WouldBlock` when it takes nothing.
    pub(super) fn try_write(&self, b: &[u8]) -> std::io::Result<usize> {
        use std::io::Write;
        let mut st = lock_sock(&self.0);
        let fd = match &mut *st {
            SockState::Attached(fd) => fd,
            SockState::Resting(s) => return s.write(b),
            _ => return Err(not_attached()),
        };
        let mut cx = Context::from_waker(Waker::noop());
        match fd.poll_write_ready(&mut cx) {
            Poll::Ready(Ok(mut guard)) => match guard.try_io(|s| s.get_ref().write(b)) {
                Ok(r) => r,
                Err(_would_block) => Err(std::io::ErrorKind::WouldBlock.into()),
            },
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(std::io::ErrorKind::WouldBlock.into()),
        }
    }

    /// Waits until the socket takes more (a resting socket goes back on the reactor first).
    pub(super) async fn writable(&self) -> std::io::Result<()> {
        if matches!(*lock_sock(&self.0), SockState::Resting(_)) {
            attach(&self.0)?;
        }
        std::future::poll_fn(|cx| {
            let st = lock_sock(&self.0);
            let SockState::Attached(fd) = &*st else {
                return Poll::Ready(Err(not_attached()));
            };
            fd.poll_write_ready(cx).map_ok(drop)
        })
        .await
    }

    pub(super) async fn write_all(&self, mut b: &[u8]) -> std::io::Result<()> {
        while !b.is_empty() {
            match self.try_write(b) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => b = &b[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.writable().await?,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
