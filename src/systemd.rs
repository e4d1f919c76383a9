//! systemd integration: readiness/reload/stop notifications, the watchdog and
//! socket activation.
//!
//! Everything here degrades to a no-op when the daemon is not run by systemd:
//! `notify_*` do nothing when `NOTIFY_SOCKET` is unset, [`watchdog_interval`]
//! returns `None` without `WATCHDOG_USEC`, and [`take_listener`] returns
//! `Ok(None)` without `LISTEN_PID`/`LISTEN_FDS`. Notification failures are
//! logged (structured field `error`) and otherwise ignored: a daemon must never
//! die because its supervisor's socket hiccupped.
//!
//! Protocol notes (see `sd_notify(3)`, `sd_listen_fds(3)`, `sd_watchdog_enabled(3)`):
//! - `NOTIFY_SOCKET` is a datagram socket path, or an abstract socket when it
//!   starts with `@`; both are supported.
//! - With `Type=notify`, send [`notify_ready`] once the sockets are bound and
//!   state is loaded. On SIGHUP send [`notify_reloading`] first and
//!   [`notify_ready`] again when the new config is in force (systemd keeps the
//!   unit in "reloading" between the two). On SIGTERM send [`notify_stopping`].
//! - Ping [`notify_watchdog`] every [`watchdog_interval`] (already half of
//!   `WATCHDOG_USEC`) from the loop whose liveness matters, not from a timer
//!   thread that would keep pinging while the daemon is wedged.
//! - Socket activation hands listening sockets as fds 3, 4, ... with
//!   `LISTEN_PID`, `LISTEN_FDS` and `LISTEN_FDNAMES` (names from the socket
//!   unit's `FileDescriptorName=`).

use std::ffi::OsString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::time::Duration;

use sd_notify::NotifyState;

/// First file descriptor passed by socket activation (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// Errors from socket activation.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// `LISTEN_PID`, `LISTEN_FDS` or `LISTEN_FDNAMES` could not be parsed.
    #[error("invalid socket activation environment: {var}={value:?}: {reason}")]
    InvalidEnv {
        var: &'static str,
        value: String,
        reason: &'static str,
    },
    /// Socket-activated, but no passed fd carries the requested name.
    #[error("socket activation passed no fd named {name:?} (names: {available:?})")]
    NameNotFound {
        name: String,
        available: Vec<String>,
    },
    /// The passed fd is not a listening `AF_UNIX` `SOCK_STREAM` socket.
    #[error("fd {fd} ({name:?}) is not a listening Unix stream socket: {reason}")]
    NotUnixStreamListener {
        fd: RawFd,
        name: String,
        reason: String,
    },
    /// A system call on the passed fd failed.
    #[error("{op} on socket-activated fd {fd}")]
    Io {
        op: &'static str,
        fd: RawFd,
        #[source]
        source: io::Error,
    },
}

// ---------------------------------------------------------------------------
// Notifications
// ---------------------------------------------------------------------------

/// Tells systemd the daemon is up (`READY=1`) and sets a status line.
/// Also used to end a reload started with [`notify_reloading`].
pub fn notify_ready() {
    send(&[NotifyState::Ready, NotifyState::Status("Running")]);
}

/// Tells systemd a configuration reload has started (`RELOADING=1` with
/// `MONOTONIC_USEC`, which systemd ≥ 253 requires to accept the message).
/// Send [`notify_ready`] when the reload is done, whether it succeeded or not.
pub fn notify_reloading() {
    match monotonic_usec() {
        Ok(usec) => send(&[
            NotifyState::Reloading,
            NotifyState::MonotonicUsec(usec),
            NotifyState::Status("Reloading configuration"),
        ]),
        Err(e) => {
            tracing::warn!(error = %e, "systemd: cannot read CLOCK_MONOTONIC; sending RELOADING=1 without MONOTONIC_USEC");
            send(&[
                NotifyState::Reloading,
                NotifyState::Status("Reloading configuration"),
            ]);
        }
    }
}

/// Tells systemd the daemon is shutting down (`STOPPING=1`).
pub fn notify_stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("Stopping")]);
}

/// Sets the free-form status line shown by `systemctl status` (`STATUS=`).
/// Newlines would end the field early, so they are replaced by spaces.
pub fn notify_status(msg: &str) {
    let clean;
    let msg = if msg.contains(['\n', '\r']) {
        clean = msg.replace(['\n', '\r'], " ");
        clean.as_str()
    } else {
        msg
    };
    send(&[NotifyState::Status(msg)]);
}

/// Pings the service manager's watchdog (`WATCHDOG=1`).
pub fn notify_watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// Half of `WATCHDOG_USEC` when the watchdog is enabled for this process
/// (`WATCHDOG_PID` unset or equal to our pid), else `None`. Ping
/// [`notify_watchdog`] at least this often.
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_interval_from(|k| std::env::var(k).ok(), std::process::id())
}

fn watchdog_interval_from(env: impl Fn(&str) -> Option<String>, pid: u32) -> Option<Duration> {
    let usec: u64 = env("WATCHDOG_USEC")?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(p) = env("WATCHDOG_PID") {
        match p.trim().parse::<u32>() {
            Ok(p) if p == pid => {}
            _ => return None,
        }
    }
    Some(Duration::from_micros(usec / 2))
}

fn send(state: &[NotifyState<'_>]) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_to(&path, state) {
        tracing::warn!(error = %e, socket = ?path, "systemd: sd_notify failed");
    }
}

fn send_to(path: &OsString, state: &[NotifyState<'_>]) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_bytes();
    match bytes.first() {
        // Abstract namespace socket: sd_notify 0.5 treats the value as a path,
        // so send it ourselves.
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            use std::os::unix::net::{SocketAddr, UnixDatagram};
            let mut msg = String::new();
            for s in state {
                msg.push_str(&s.to_string());
                msg.push('\n');
            }
            let addr = SocketAddr::from_abstract_name(&bytes[1..])?;
            let sock = UnixDatagram::unbound()?;
            let n = sock.send_to_addr(msg.as_bytes(), &addr)?;
            if n != msg.len() {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
            }
            Ok(())
        }
        Some(b'/') => sd_notify::notify(state),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is neither an absolute path nor an abstract socket",
        )),
    }
}

fn monotonic_usec() -> io::Result<i128> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(i128::from(ts.tv_sec) * 1_000_000 + i128::from(ts.tv_nsec) / 1_000)
}

// ---------------------------------------------------------------------------
// Socket activation
// ---------------------------------------------------------------------------

/// Takes the socket-activated listening Unix stream socket named `name`.
///
/// The fd is chosen by its name in `LISTEN_FDNAMES` (the socket unit's
/// `FileDescriptorName=`) or, when exactly one fd was passed without names,
/// that fd. Returns `Ok(None)` when the process is not socket-activated
/// (`LISTEN_PID` unset or another process's pid, or `LISTEN_FDS` unset/0).
///
/// Every passed fd gets `FD_CLOEXEC`. Only the first call takes the fds; any
/// later one returns `Ok(None)`.
///
/// The process environment is left as it is: `std::env::remove_var` is only
/// sound while no other thread reads the environment, and jemalloc's
/// background threads exist before `main` runs. `LISTEN_PID`, `LISTEN_FDS` and
/// `LISTEN_FDNAMES` stay set in the daemon, harmlessly (`LISTEN_PID` names this
/// process, which takes the fds once), and are removed from every hook's
/// environment when it is spawned (`command::hook`), so no child ever sees them.
///
/// The listener is returned in blocking mode, as inherited; call
/// `set_nonblocking(true)` before handing it to tokio.
pub fn take_listener(name: &str) -> Result<Option<UnixListener>, SystemdError> {
    static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if TAKEN.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return Ok(None);
    }
    take_listener_from(
        |k| std::env::var(k).ok(),
        std::process::id(),
        LISTEN_FDS_START,
        name,
    )
}

/// The logic of [`take_listener`] with the environment, our pid and the first
/// fd number injected, so tests can use fds that do not collide with the
/// harness's. Does not touch the environment.
fn take_listener_from(
    env: impl Fn(&str) -> Option<String>,
    pid: u32,
    start_fd: RawFd,
    name: &str,
) -> Result<Option<UnixListener>, SystemdError> {
    let Some(listen_pid) = env("LISTEN_PID") else {
        return Ok(None);
    };
    let listen_pid: u32 = listen_pid
        .trim()
        .parse()
        .map_err(|_| SystemdError::InvalidEnv {
            var: "LISTEN_PID",
            value: listen_pid.clone(),
            reason: "not a pid",
        })?;
    if listen_pid != pid {
        // Meant for another process (we inherited it): not ours to take.
        return Ok(None);
    }
    let Some(fds) = env("LISTEN_FDS") else {
        return Ok(None);
    };
    let n: RawFd = fds
        .trim()
        .parse()
        .ok()
        .filter(|n| *n >= 0 && start_fd.checked_add(*n).is_some())
        .ok_or_else(|| SystemdError::InvalidEnv {
            var: "LISTEN_FDS",
            value: fds.clone(),
            reason: "not a valid fd count",
        })?;
    if n == 0 {
        return Ok(None);
    }
    // Whatever we take, no passed fd may leak into hooks.
    for fd in start_fd..start_fd + n {
        set_cloexec(fd)?;
    }
    let names: Option<Vec<String>> = env("LISTEN_FDNAMES")
        .filter(|s| !s.is_empty())
        .map(|s| s.split(':').map(str::to_owned).collect());
    let index = match &names {
        Some(names) => {
            if names.len() != n as usize {
                return Err(SystemdError::InvalidEnv {
                    var: "LISTEN_FDNAMES",
                    value: names.join(":"),
                    reason: "number of names differs from LISTEN_FDS",
                });
            }
            names
                .iter()
                .position(|x| x == name)
                .ok_or_else(|| SystemdError::NameNotFound {
                    name: name.to_owned(),
                    available: names.clone(),
                })?
        }
        None if n == 1 => 0,
        None => {
            return Err(SystemdError::NameNotFound {
                name: name.to_owned(),
                available: Vec::new(),
            });
        }
    };
    let fd = start_fd + index as RawFd;
    check_unix_stream_listener(fd, name)?;
    // SAFETY: the service manager passed us this open fd for our exclusive
    // use; it was just checked to be a socket, and the environment that
    // designates it is consumed by the caller, so nothing else takes it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(Some(UnixListener::from(owned)))
}

fn set_cloexec(fd: RawFd) -> Result<(), SystemdError> {
    let io_err = |op| SystemdError::Io {
        op,
        fd,
        source: io::Error::last_os_error(),
    };
    // SAFETY: fcntl on an arbitrary fd number is memory-safe; EBADF is reported.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return Err(io_err("fcntl(F_GETFD)"));
    }
    if flags & libc::FD_CLOEXEC == 0 {
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
            return Err(io_err("fcntl(F_SETFD)"));
        }
    }
    Ok(())
}

fn getsockopt_int(fd: RawFd, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut val: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: val/len point to a writable c_int and its size.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut val as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(val)
    }
}

fn check_unix_stream_listener(fd: RawFd, name: &str) -> Result<(), SystemdError> {
    let not = |reason: String| SystemdError::NotUnixStreamListener {
        fd,
        name: name.to_owned(),
        reason,
    };
    let ty = getsockopt_int(fd, libc::SO_TYPE).map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOTSOCK) {
            not("not a socket".into())
        } else {
            SystemdError::Io {
                op: "getsockopt(SO_TYPE)",
                fd,
                source: e,
            }
        }
    })?;
    if ty != libc::SOCK_STREAM {
        return Err(not(format!("socket type {ty}, not SOCK_STREAM")));
    }
    let accepting = getsockopt_int(fd, libc::SO_ACCEPTCONN).map_err(|e| SystemdError::Io {
        op: "getsockopt(SO_ACCEPTCONN)",
        fd,
        source: e,
    })?;
    if accepting == 0 {
        return Err(not("not listening".into()));
    }
    // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: addr/len describe a writable buffer of that size.
    let r = unsafe {
        libc::getsockname(
            fd,
            (&mut addr as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(SystemdError::Io {
            op: "getsockname",
            fd,
            source: io::Error::last_os_error(),
        });
    }
    if libc::c_int::from(addr.ss_family) != libc::AF_UNIX {
        return Err(not(format!(
            "address family {}, not AF_UNIX",
            addr.ss_family
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::{UnixDatagram, UnixStream};
    use std::path::PathBuf;
    use std::sync::Mutex;

    /// Serializes every test that reads or writes process-global env vars.
    static ENV_LOCK: Mutex<()> = Mutex::new(());

    fn lock() -> std::sync::MutexGuard<'static, ()> {
        ENV_LOCK.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh private directory (no tempfile dependency in this module).
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "visutility-sd-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn set(k: &str, v: impl AsRef<std::ffi::OsStr>) {
        // SAFETY: tests touching env hold ENV_LOCK.
        unsafe { std::env::set_var(k, v) }
    }
    fn unset(k: &str) {
        // SAFETY: tests touching env hold ENV_LOCK.
        unsafe { std::env::remove_var(k) }
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("no notification arrived");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    fn notify_receiver(dir: &TempDir) -> UnixDatagram {
        let path = dir.0.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        set("NOTIFY_SOCKET", &path);
        sock
    }

    #[test]
    fn notify_messages_arrive() {
        let _g = lock();
        let dir = TempDir::new("notify");
        let sock = notify_receiver(&dir);

        notify_ready();
        assert_eq!(recv(&sock), "READY=1\nSTATUS=Running\n");

        notify_reloading();
        let msg = recv(&sock);
        let lines: Vec<&str> = msg.lines().collect();
        assert_eq!(lines[0], "RELOADING=1");
        let usec: i128 = lines[1]
            .strip_prefix("MONOTONIC_USEC=")
            .expect("MONOTONIC_USEC")
            .parse()
            .unwrap();
        let now = monotonic_usec().unwrap();
        assert!(
            usec > 0 && usec <= now && now - usec < 5_000_000,
            "{usec} vs {now}"
        );
        assert_eq!(lines[2], "STATUS=Reloading configuration");

        notify_stopping();
        assert_eq!(recv(&sock), "STOPPING=1\nSTATUS=Stopping\n");

        notify_status("3 models, 0 jobs\nsecond line");
        assert_eq!(recv(&sock), "STATUS=3 models, 0 jobs second line\n");

        notify_watchdog();
        assert_eq!(recv(&sock), "WATCHDOG=1\n");

        unset("NOTIFY_SOCKET");
    }

    #[test]
    fn notify_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::SocketAddr;
        let _g = lock();
        let name = format!("visutility-sd-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        set("NOTIFY_SOCKET", format!("@{name}"));
        notify_watchdog();
        assert_eq!(recv(&sock), "WATCHDOG=1\n");
        unset("NOTIFY_SOCKET");
    }

    #[test]
    fn notify_is_a_noop_or_logs_but_never_panics() {
        let _g = lock();
        unset("NOTIFY_SOCKET");
        notify_ready();
        notify_reloading();
        notify_stopping();
        notify_status("x");
        notify_watchdog();
        // Nobody listening / garbage values: logged, not fatal.
        for bad in ["/nonexistent/visutility/notify.sock", "relative", "", "@"] {
            set("NOTIFY_SOCKET", bad);
            notify_ready();
            notify_watchdog();
        }
        unset("NOTIFY_SOCKET");
    }

    #[test]
    fn watchdog_interval_rules() {
        let env = |pairs: &[(&str, &str)]| {
            let m: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            move |k: &str| m.get(k).cloned()
        };
        assert_eq!(watchdog_interval_from(env(&[]), 42), None);
        assert_eq!(
            watchdog_interval_from(env(&[("WATCHDOG_USEC", "30000000")]), 42),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval_from(
                env(&[("WATCHDOG_USEC", "30000000"), ("WATCHDOG_PID", "42")]),
                42
            ),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval_from(
                env(&[("WATCHDOG_USEC", "30000000"), ("WATCHDOG_PID", "7")]),
                42
            ),
            None
        );
        assert_eq!(
            watchdog_interval_from(env(&[("WATCHDOG_USEC", "0")]), 42),
            None
        );
        assert_eq!(
            watchdog_interval_from(env(&[("WATCHDOG_USEC", "x")]), 42),
            None
        );
        assert_eq!(
            watchdog_interval_from(
                env(&[("WATCHDOG_USEC", "1000"), ("WATCHDOG_PID", "bad")]),
                42
            ),
            None
        );
    }

    #[test]
    fn watchdog_interval_reads_env() {
        let _g = lock();
        set("WATCHDOG_USEC", "2000000");
        set("WATCHDOG_PID", std::process::id().to_string());
        assert_eq!(watchdog_interval(), Some(Duration::from_secs(1)));
        set("WATCHDOG_PID", "1");
        assert_eq!(watchdog_interval(), None);
        unset("WATCHDOG_USEC");
        unset("WATCHDOG_PID");
        assert_eq!(watchdog_interval(), None);
    }

    /// Finds `count` consecutive free fd numbers at or above 400 and dup2s the
    /// given fds onto them; returns the first number. The test owns them.
    fn place_fds(fds: &[RawFd]) -> RawFd {
        let is_free = |fd: RawFd| unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0;
        let mut start = 400;
        while !(start..start + fds.len() as RawFd).all(is_free) {
            start += 16;
        }
        for (i, fd) in fds.iter().enumerate() {
            let target = start + i as RawFd;
            // SAFETY: target is free (checked above); dup2 clears FD_CLOEXEC,
            // which take_listener_from must set again.
            assert_eq!(unsafe { libc::dup2(*fd, target) }, target);
        }
        start
    }

    fn close_fd(fd: RawFd) {
        // SAFETY: closing an fd this test dup'ed and did not hand out.
        unsafe { libc::close(fd) };
    }

    fn cloexec(fd: RawFd) -> bool {
        unsafe { libc::fcntl(fd, libc::F_GETFD) & libc::FD_CLOEXEC != 0 }
    }

    fn env_of(pairs: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
        move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn take_listener_by_name() {
        let _g = lock(); // also serializes fd placement
        let dir = TempDir::new("listen");
        let path = dir.0.join("ingest.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let other = UnixDatagram::unbound().unwrap();
        let start = place_fds(&[other.as_raw_fd(), listener.as_raw_fd()]);
        drop(listener); // only the dup'ed copy keeps the socket open now
        assert!(!cloexec(start) && !cloexec(start + 1));
        let env = env_of(vec![
            ("LISTEN_PID", "4242".into()),
            ("LISTEN_FDS", "2".into()),
            ("LISTEN_FDNAMES", "control:ingest".into()),
        ]);
        let got = take_listener_from(&env, 4242, start, "ingest")
            .unwrap()
            .expect("listener");
        assert_eq!(got.as_raw_fd(), start + 1);
        assert!(
            cloexec(start) && cloexec(start + 1),
            "all passed fds get CLOEXEC"
        );
        assert_eq!(
            got.local_addr().unwrap().as_pathname(),
            Some(path.as_path())
        );

        // It really is the listening socket.
        let mut client = UnixStream::connect(&path).unwrap();
        let (mut server, _) = got.accept().unwrap();
        client.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        server.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"x");

        // Asking for a name that was not passed is an error, not None.
        let err = take_listener_from(&env, 4242, start, "nope").unwrap_err();
        assert!(matches!(err, SystemdError::NameNotFound { .. }), "{err}");
        // The other fd is a datagram socket: rejected.
        let err = take_listener_from(&env, 4242, start, "control").unwrap_err();
        assert!(
            matches!(err, SystemdError::NotUnixStreamListener { .. }),
            "{err}"
        );
        close_fd(start);
        drop(got); // closes start + 1
    }

    #[test]
    fn take_listener_single_unnamed_fd() {
        let _g = lock(); // also serializes fd placement
        let dir = TempDir::new("single");
        let listener = UnixListener::bind(dir.0.join("s.sock")).unwrap();
        let start = place_fds(&[listener.as_raw_fd()]);
        drop(listener);
        let env = env_of(vec![("LISTEN_PID", "7".into()), ("LISTEN_FDS", "1".into())]);
        let got = take_listener_from(&env, 7, start, "ingest")
            .unwrap()
            .expect("listener");
        assert_eq!(got.as_raw_fd(), start);
    }

    #[test]
    fn take_listener_not_activated() {
        let none = |pairs: Vec<(&'static str, String)>, pid| {
            take_listener_from(env_of(pairs), pid, 1000, "ingest")
                .unwrap()
                .is_none()
        };
        assert!(none(vec![], 1));
        assert!(none(vec![("LISTEN_FDS", "1".into())], 1));
        // For another process: ignored (fd 1000 is never touched).
        assert!(none(
            vec![("LISTEN_PID", "2".into()), ("LISTEN_FDS", "1".into())],
            1
        ));
        assert!(none(vec![("LISTEN_PID", "1".into())], 1));
        assert!(none(
            vec![("LISTEN_PID", "1".into()), ("LISTEN_FDS", "0".into())],
            1
        ));
    }

    #[test]
    fn take_listener_bad_env() {
        let err = |pairs: Vec<(&'static str, String)>| {
            take_listener_from(env_of(pairs), 1, 1000, "ingest").unwrap_err()
        };
        assert!(matches!(
            err(vec![("LISTEN_PID", "x".into()), ("LISTEN_FDS", "1".into())]),
            SystemdError::InvalidEnv {
                var: "LISTEN_PID",
                ..
            }
        ));
        assert!(matches!(
            err(vec![
                ("LISTEN_PID", "1".into()),
                ("LISTEN_FDS", "-1".into())
            ]),
            SystemdError::InvalidEnv {
                var: "LISTEN_FDS",
                ..
            }
        ));
        // fd 1000 is not open: reported as an I/O error with its source.
        let e = err(vec![("LISTEN_PID", "1".into()), ("LISTEN_FDS", "1".into())]);
        assert!(matches!(e, SystemdError::Io { fd: 1000, .. }), "{e}");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn take_listener_rejects_wrong_sockets() {
        let _g = lock(); // also serializes fd placement
        let dir = TempDir::new("wrong");
        // Connected, not listening.
        let (a, _b) = UnixStream::pair().unwrap();
        // Listening, but TCP.
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // A regular file.
        let file = std::fs::File::create(dir.0.join("f")).unwrap();
        for (fd, want) in [
            (a.as_raw_fd(), "not listening"),
            (tcp.as_raw_fd(), "address family"),
            (file.as_raw_fd(), "not a socket"),
        ] {
            let start = place_fds(&[fd]);
            let env = env_of(vec![
                ("LISTEN_PID", "1".into()),
                ("LISTEN_FDS", "1".into()),
                ("LISTEN_FDNAMES", "ingest".into()),
            ]);
            let e = take_listener_from(&env, 1, start, "ingest").unwrap_err();
            assert!(
                matches!(e, SystemdError::NotUnixStreamListener { .. })
                    && e.to_string().contains(want),
                "{e}"
            );
            close_fd(start);
        }
    }

    #[test]
    fn take_listener_count_mismatch() {
        let _g = lock(); // also serializes fd placement
        let dir = TempDir::new("mismatch");
        let l = UnixListener::bind(dir.0.join("s")).unwrap();
        let start = place_fds(&[l.as_raw_fd()]);
        let env = env_of(vec![
            ("LISTEN_PID", "1".into()),
            ("LISTEN_FDS", "1".into()),
            ("LISTEN_FDNAMES", "a:ingest".into()),
        ]);
        let e = take_listener_from(&env, 1, start, "ingest").unwrap_err();
        assert!(
            matches!(
                e,
                SystemdError::InvalidEnv {
                    var: "LISTEN_FDNAMES",
                    ..
                }
            ),
            "{e}"
        );
        close_fd(start);
    }

    const CHILD_ENV: &str = "VISUTILITY_SD_TEST_CHILD";

    /// End to end through the real environment and fd 3, the way systemd
    /// passes it. Runs in a re-executed copy of this test binary, so fd 3 and
    /// the environment of the harness running the other tests are untouched.
    #[test]
    fn take_listener_real_env_in_child() {
        use std::os::unix::process::CommandExt;
        if std::env::var_os(CHILD_ENV).is_some() {
            return; // we are the child: the work is in child_take_listener
        }
        let _g = lock();
        let dir = TempDir::new("child");
        let path = dir.0.join("ingest.sock");
        let listener = UnixListener::bind(&path).unwrap();
        // Queued in the backlog before the child starts; the child accepts it.
        let mut client = UnixStream::connect(&path).unwrap();
        let fd = listener.as_raw_fd();
        let test = format!(
            "{}::child_take_listener",
            module_path!().split_once("::").map_or("", |(_, rest)| rest)
        );
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            test.trim_start_matches("::"),
            "--test-threads=1",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        .env("LISTEN_FDNAMES", "ingest")
        .env("LISTEN_FDS", "1")
        .env_remove("LISTEN_PID"); // the child sets it to its own pid
        // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if fd == 3 {
                    let flags = libc::fcntl(3, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, 3) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("CHILD-OK") && stdout.contains("1 passed"),
            "child failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let mut reply = String::new();
        client.read_to_string(&mut reply).unwrap();
        assert_eq!(reply, "hello from fd 3");
    }

    #[test]
    fn child_take_listener() {
        if std::env::var_os(CHILD_ENV).is_none() {
            return; // only meaningful inside take_listener_real_env_in_child
        }
        let _g = lock();
        set("LISTEN_PID", std::process::id().to_string());
        let l = take_listener("ingest").unwrap().expect("socket-activated");
        assert_eq!(l.as_raw_fd(), 3);
        assert!(cloexec(3));
        // The environment is not edited (finding 11 of the security review: other threads
        // may read it); hooks drop these variables when they are spawned.
        for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            assert!(std::env::var_os(v).is_some(), "{v} was removed");
        }
        // Second call: the fds are taken already.
        assert!(take_listener("ingest").unwrap().is_none());
        let (mut conn, _) = l.accept().unwrap();
        conn.write_all(b"hello from fd 3").unwrap();
        println!("CHILD-OK");
    }
}
