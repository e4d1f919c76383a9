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
//! - `JOURNAL_STREAM=DEV:INODE` names the stream systemd connected stderr to
//!   ([`stderr_is_journal`]).
//!
//! What the `sd-notify` crate does is left to it: sending to a socket path,
//! `MONOTONIC_USEC`, reading the watchdog's variables and the passed fds (which
//! it makes close-on-exec). This module adds abstract notification sockets,
//! choosing a passed fd by name, and checking that it is a listening Unix
//! stream socket.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::time::Duration;

use sd_notify::NotifyState;

/// Errors from socket activation.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    /// `LISTEN_PID` or `LISTEN_FDS` could not be parsed, or a passed fd could not be made
    /// close-on-exec (as `sd_notify::listen_fds` reports it).
    #[error("invalid socket activation environment (LISTEN_PID, LISTEN_FDS) or passed fds")]
    Activation(#[source] io::Error),
    /// `LISTEN_FDNAMES` does not fit `LISTEN_FDS`.
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
    match NotifyState::monotonic_usec_now() {
        Ok(usec) => send(&[
            NotifyState::Reloading,
            usec,
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

/// Half of `WATCHDOG_USEC` when the watchdog is enabled for this process, else
/// `None` (also for a zero timeout). Ping [`notify_watchdog`] at least this often.
///
/// The variables are read by `sd_notify::watchdog_enabled`: `WATCHDOG_PID`, when
/// it is a number, must be our pid (one that is not a number is ignored, where
/// libsystemd would disable the watchdog; systemd never sets such a value).
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
        .filter(|timeout| !timeout.is_zero())
        .map(|timeout| timeout / 2)
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

/// Whether stderr is the journal's stream: systemd sets `JOURNAL_STREAM=DEV:INODE`
/// for the stream it connects stderr to; a child whose stderr was redirected
/// inherits the variable, so the numbers must match those of our stderr.
pub fn stderr_is_journal() -> bool {
    let Ok(var) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    // A duplicate of fd 2 describes the same open file; `File` closes it again.
    let Ok(stderr) = io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(stderr)
        .metadata()
        .is_ok_and(|m| is_journal_stream(&var, &m))
}

/// Whether `JOURNAL_STREAM`'s value `var` names the file `stream`.
fn is_journal_stream(var: &str, stream: &std::fs::Metadata) -> bool {
    let Some((dev, ino)) = var
        .split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
    else {
        return false;
    };
    stream.dev() == dev && stream.ino() == ino
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
/// Every passed fd gets `FD_CLOEXEC` (from `sd_notify::listen_fds`). Only the
/// first call takes the fds; any later one returns `Ok(None)`.
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
    let fds: Vec<RawFd> = sd_notify::listen_fds()
        .map_err(SystemdError::Activation)?
        .collect();
    match pick_fd(&fds, std::env::var("LISTEN_FDNAMES").ok(), name)? {
        Some(fd) => listener_at(fd, name).map(Some),
        None => Ok(None),
    }
}

/// The fd named `name` among the passed `fds` (in order), by `names` (the
/// value of `LISTEN_FDNAMES`, colon-separated, one name per fd), or the only
/// fd when there are no names. `Ok(None)` when no fd was passed.
fn pick_fd(
    fds: &[RawFd],
    names: Option<String>,
    name: &str,
) -> Result<Option<RawFd>, SystemdError> {
    if fds.is_empty() {
        return Ok(None);
    }
    let names: Option<Vec<String>> = names
        .filter(|s| !s.is_empty())
        .map(|s| s.split(':').map(str::to_owned).collect());
    let index = match &names {
        Some(names) => {
            if names.len() != fds.len() {
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
        None if fds.len() == 1 => 0,
        None => {
            return Err(SystemdError::NameNotFound {
                name: name.to_owned(),
                available: Vec::new(),
            });
        }
    };
    Ok(Some(fds[index]))
}

/// The passed fd `fd`, once checked to be a listening Unix stream socket.
fn listener_at(fd: RawFd, name: &str) -> Result<UnixListener, SystemdError> {
    check_unix_stream_listener(fd, name)?;
    // SAFETY: the service manager passed this fd to this process (LISTEN_PID is
    // our pid) and it is open (checked just above). Nothing else owns it: the
    // environment that designates it stays set, but `take_listener` is the only
    // reader and hands the passed fds out once (its TAKEN flag), so the fd gets
    // exactly one owner.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(UnixListener::from(owned))
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
    //! Whatever reads the process environment (sd-notify does, for every variable) is tested
    //! in a copy of this test binary started with the environment the case needs
    //! ([`run_child`]), never by editing the harness's: `std::env::set_var` races every
    //! other test thread that reads the environment.

    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::{UnixDatagram, UnixStream};
    use std::path::PathBuf;
    use std::sync::Mutex;

    /// Serializes the tests that place fds at fixed numbers.
    static FD_LOCK: Mutex<()> = Mutex::new(());

    fn lock() -> std::sync::MutexGuard<'static, ()> {
        FD_LOCK.lock().unwrap_or_else(|p| p.into_inner())
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

    const CHILD_ENV: &str = "VISUTILITY_SD_TEST_CHILD";

    /// The variables of systemd's that the code under test reads.
    const SYSTEMD_VARS: [&str; 6] = [
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "LISTEN_PID",
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
    ];

    /// Runs `case` of [`child`] in a copy of this test binary whose environment is the
    /// harness's with `env` set and systemd's other variables removed. A value `$$` is the
    /// child's own pid (it starts through `sh -c 'exec ...'`, whose pid it keeps, as systemd's
    /// socket activation gives `LISTEN_PID`). With `fd3`, the child gets a copy of it as fd 3.
    /// Fails unless the case passed; returns what it printed.
    fn run_child(case: &str, env: &[(&str, &str)], fd3: Option<RawFd>) -> String {
        use std::os::unix::process::CommandExt;
        let test = format!(
            "{}::child",
            module_path!().split_once("::").map_or("", |(_, rest)| rest)
        );
        let mut script = String::new();
        for (k, _) in env.iter().filter(|(_, v)| *v == "$$") {
            script.push_str(&format!("{k}=$$; export {k}; "));
        }
        script.push_str("exec \"$0\" \"$@\"");
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(script)
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                test.trim_start_matches("::"),
                "--test-threads=1",
                "--nocapture",
            ])
            .env(CHILD_ENV, case);
        for var in SYSTEMD_VARS {
            cmd.env_remove(var);
        }
        for (k, v) in env.iter().filter(|(_, v)| *v != "$$") {
            cmd.env(k, v);
        }
        if let Some(fd) = fd3 {
            // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if fd == 3 {
                        let flags = libc::fcntl(3, libc::F_GETFD);
                        if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0
                        {
                            return Err(io::Error::last_os_error());
                        }
                    } else if libc::dup2(fd, 3) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && stdout.contains("CHILD-OK") && stdout.contains("1 passed"),
            "child {case} failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// The child's side of [`run_child`]; does nothing in the harness's own run.
    #[test]
    fn child() {
        let Ok(case) = std::env::var(CHILD_ENV) else {
            return;
        };
        match case.as_str() {
            "notify" => {
                notify_ready();
                notify_reloading();
                notify_stopping();
                notify_status("3 models, 0 jobs\nsecond line");
                notify_watchdog();
            }
            "watchdog" => println!("watchdog_interval={:?}", watchdog_interval()),
            "listener" => {
                let l = take_listener("ingest").unwrap().expect("socket-activated");
                assert_eq!(l.as_raw_fd(), 3);
                assert!(cloexec(3));
                // The environment is not edited (finding 11 of the security review: other
                // threads may read it); hooks drop these variables when they are spawned.
                for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
                    assert!(std::env::var_os(v).is_some(), "{v} was removed");
                }
                // Second call: the fds are taken already.
                assert!(take_listener("ingest").unwrap().is_none());
                let (mut conn, _) = l.accept().unwrap();
                conn.write_all(b"hello from fd 3").unwrap();
            }
            "take" => match take_listener("ingest") {
                Ok(l) => println!("take_listener=Ok({})", l.is_some()),
                Err(e) => println!("take_listener=Err({e})"),
            },
            other => panic!("unknown child case {other}"),
        }
        println!("CHILD-OK");
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).expect("no notification arrived");
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn notify_messages_arrive() {
        let dir = TempDir::new("notify");
        let path = dir.0.join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        run_child("notify", &[("NOTIFY_SOCKET", path.to_str().unwrap())], None);

        assert_eq!(recv(&sock), "READY=1\nSTATUS=Running\n");
        let msg = recv(&sock);
        let lines: Vec<&str> = msg.lines().collect();
        assert_eq!(lines[0], "RELOADING=1");
        let usec: u64 = lines[1]
            .strip_prefix("MONOTONIC_USEC=")
            .expect("MONOTONIC_USEC")
            .parse()
            .unwrap();
        let now: u64 = NotifyState::monotonic_usec_now()
            .unwrap()
            .to_string()
            .strip_prefix("MONOTONIC_USEC=")
            .unwrap()
            .parse()
            .unwrap();
        // One clock for every process: the child read it before this did.
        assert!(usec > 0 && usec <= now, "{usec} vs {now}");
        assert_eq!(lines[2], "STATUS=Reloading configuration");
        assert_eq!(recv(&sock), "STOPPING=1\nSTATUS=Stopping\n");
        assert_eq!(recv(&sock), "STATUS=3 models, 0 jobs second line\n");
        assert_eq!(recv(&sock), "WATCHDOG=1\n");
    }

    #[test]
    fn notify_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::SocketAddr;
        let name = format!("visutility-sd-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        run_child("notify", &[("NOTIFY_SOCKET", &format!("@{name}"))], None);
        assert_eq!(recv(&sock), "READY=1\nSTATUS=Running\n");
    }

    #[test]
    fn notify_is_a_noop_or_logs_but_never_panics() {
        // Unset, nobody listening, garbage values: logged, not fatal (the child exits 0).
        run_child("notify", &[], None);
        for bad in ["/nonexistent/visutility/notify.sock", "relative", "", "@"] {
            run_child("notify", &[("NOTIFY_SOCKET", bad)], None);
        }
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout_for_this_process_only() {
        let interval = |env: &[(&str, &str)]| {
            let out = run_child("watchdog", env, None);
            out.lines()
                .find_map(|l| l.split_once("watchdog_interval=").map(|(_, v)| v))
                .unwrap_or_else(|| panic!("no interval printed:\n{out}"))
                .to_owned()
        };
        assert_eq!(interval(&[]), "None");
        assert_eq!(interval(&[("WATCHDOG_USEC", "30000000")]), "Some(15s)");
        assert_eq!(
            interval(&[("WATCHDOG_USEC", "2000000"), ("WATCHDOG_PID", "$$")]),
            "Some(1s)"
        );
        // Meant for another process (pid 1 is never a test binary).
        assert_eq!(
            interval(&[("WATCHDOG_USEC", "2000000"), ("WATCHDOG_PID", "1")]),
            "None"
        );
        assert_eq!(interval(&[("WATCHDOG_USEC", "0")]), "None");
        assert_eq!(interval(&[("WATCHDOG_USEC", "x")]), "None");
    }

    #[test]
    fn journal_stream_is_recognised_by_device_and_inode() {
        let dir = TempDir::new("journal");
        let path = dir.0.join("stream");
        std::fs::write(&path, b"").unwrap();
        let m = std::fs::metadata(&path).unwrap();
        assert!(is_journal_stream(&format!("{}:{}", m.dev(), m.ino()), &m));
        assert!(!is_journal_stream(
            &format!("{}:{}", m.dev(), m.ino() + 1),
            &m
        ));
        assert!(!is_journal_stream(
            &format!("{}:{}", m.dev() + 1, m.ino()),
            &m
        ));
        for bad in ["", "8", "8:", ":9", "a:b", "8:9:10"] {
            assert!(!is_journal_stream(bad, &m), "{bad:?}");
        }
    }

    /// Finds `count` consecutive free fd numbers at or above 400 and dup2s the
    /// given fds onto them; returns the first number. The test owns them.
    fn place_fds(fds: &[RawFd]) -> RawFd {
        // SAFETY: F_GETFD only reads a descriptor's flags; an unused number fails with EBADF.
        let is_free = |fd: RawFd| unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0;
        let mut start = 400;
        while !(start..start + fds.len() as RawFd).all(is_free) {
            start += 16;
        }
        for (i, fd) in fds.iter().enumerate() {
            let target = start + i as RawFd;
            // SAFETY: target is free (checked above).
            assert_eq!(unsafe { libc::dup2(*fd, target) }, target);
        }
        start
    }

    fn close_fd(fd: RawFd) {
        // SAFETY: closing an fd this test dup'ed and did not hand out.
        unsafe { libc::close(fd) };
    }

    fn cloexec(fd: RawFd) -> bool {
        // SAFETY: F_GETFD only reads a descriptor's flags.
        unsafe { libc::fcntl(fd, libc::F_GETFD) & libc::FD_CLOEXEC != 0 }
    }

    #[test]
    fn the_fd_is_picked_by_name_or_as_the_only_one() {
        let names = |s: &str| Some(s.to_owned());
        assert_eq!(pick_fd(&[], names("ingest"), "ingest").unwrap(), None);
        assert_eq!(pick_fd(&[], None, "ingest").unwrap(), None);
        assert_eq!(
            pick_fd(&[3, 4], names("control:ingest"), "ingest").unwrap(),
            Some(4)
        );
        assert_eq!(pick_fd(&[3], None, "ingest").unwrap(), Some(3));
        // An empty LISTEN_FDNAMES is no names.
        assert_eq!(pick_fd(&[3], names(""), "ingest").unwrap(), Some(3));
        // Asking for a name that was not passed is an error, not None.
        let e = pick_fd(&[3, 4], names("control:other"), "ingest").unwrap_err();
        assert!(
            matches!(&e, SystemdError::NameNotFound { available, .. } if available.len() == 2),
            "{e}"
        );
        let e = pick_fd(&[3, 4], None, "ingest").unwrap_err();
        assert!(matches!(e, SystemdError::NameNotFound { .. }), "{e}");
        let e = pick_fd(&[3], names("a:ingest"), "ingest").unwrap_err();
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
    }

    #[test]
    fn a_passed_listening_unix_socket_is_taken() {
        let _g = lock();
        let dir = TempDir::new("listen");
        let path = dir.0.join("ingest.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let start = place_fds(&[listener.as_raw_fd()]);
        drop(listener); // only the dup'ed copy keeps the socket open now
        let got = listener_at(start, "ingest").unwrap();
        assert_eq!(got.as_raw_fd(), start);
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
    }

    #[test]
    fn a_passed_fd_that_is_no_listening_unix_stream_socket_is_refused() {
        let _g = lock();
        let dir = TempDir::new("wrong");
        // Connected, not listening.
        let (a, _b) = UnixStream::pair().unwrap();
        // Listening, but TCP.
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // A datagram socket.
        let dgram = UnixDatagram::unbound().unwrap();
        // A regular file.
        let file = std::fs::File::create(dir.0.join("f")).unwrap();
        for (fd, want) in [
            (a.as_raw_fd(), "not listening"),
            (tcp.as_raw_fd(), "address family"),
            (dgram.as_raw_fd(), "not SOCK_STREAM"),
            (file.as_raw_fd(), "not a socket"),
        ] {
            let start = place_fds(&[fd]);
            let e = listener_at(start, "ingest").unwrap_err();
            assert!(
                matches!(e, SystemdError::NotUnixStreamListener { .. })
                    && e.to_string().contains(want),
                "{e}"
            );
            close_fd(start);
        }
        // A number that is not open: reported as an I/O error with its source.
        let closed = place_fds(&[file.as_raw_fd()]);
        close_fd(closed);
        let e = listener_at(closed, "ingest").unwrap_err();
        assert!(matches!(e, SystemdError::Io { .. }), "{e}");
        assert!(std::error::Error::source(&e).is_some());
    }

    /// End to end through the real environment and fd 3, the way systemd passes it.
    #[test]
    fn take_listener_real_env_in_child() {
        let _g = lock();
        let dir = TempDir::new("child");
        let path = dir.0.join("ingest.sock");
        let listener = UnixListener::bind(&path).unwrap();
        // Queued in the backlog before the child starts; the child accepts it.
        let mut client = UnixStream::connect(&path).unwrap();
        run_child(
            "listener",
            &[
                ("LISTEN_PID", "$$"),
                ("LISTEN_FDS", "1"),
                ("LISTEN_FDNAMES", "ingest"),
            ],
            Some(listener.as_raw_fd()),
        );
        let mut reply = String::new();
        client.read_to_string(&mut reply).unwrap();
        assert_eq!(reply, "hello from fd 3");
    }

    #[test]
    fn take_listener_without_activation_or_for_another_process_takes_nothing() {
        let take = |env: &[(&str, &str)]| {
            let out = run_child("take", env, None);
            out.lines()
                .find_map(|l| l.split_once("take_listener=").map(|(_, v)| v))
                .unwrap_or_else(|| panic!("no outcome printed:\n{out}"))
                .to_owned()
        };
        assert_eq!(take(&[]), "Ok(false)");
        assert_eq!(take(&[("LISTEN_FDS", "1")]), "Ok(false)");
        // For another process: ignored (its fd 3 is never touched).
        assert_eq!(
            take(&[("LISTEN_PID", "1"), ("LISTEN_FDS", "1")]),
            "Ok(false)"
        );
        assert_eq!(take(&[("LISTEN_PID", "$$")]), "Ok(false)");
        assert_eq!(
            take(&[("LISTEN_PID", "$$"), ("LISTEN_FDS", "0")]),
            "Ok(false)"
        );
        // Unparsable values are errors, not silence.
        let invalid =
            "Err(invalid socket activation environment (LISTEN_PID, LISTEN_FDS) or passed fds)";
        assert_eq!(take(&[("LISTEN_PID", "x"), ("LISTEN_FDS", "1")]), invalid);
        assert_eq!(take(&[("LISTEN_PID", "$$"), ("LISTEN_FDS", "-1")]), invalid);
    }
}
