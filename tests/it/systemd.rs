//! systemd integration: the readiness protocol on a notify socket of the test's own, the
//! watchdog (which a wedged actor must stop), and socket activation with an inherited fd 3.

use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

/// Datagrams received until `until` holds for one of them or the deadline passes.
fn recv_until(
    sock: &UnixDatagram,
    deadline: Duration,
    mut until: impl FnMut(&str) -> bool,
) -> Vec<String> {
    let end = Instant::now() + deadline;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < end {
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let stop = until(&msg);
            got.push(msg);
            if stop {
                return got;
            }
        }
    }
    got
}

fn notify_daemon(watchdog_usec: &str, fault_injection: bool) -> (Daemon, UnixDatagram) {
    let mut b = Daemon::builder();
    let path = b.path("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    b = b.env("NOTIFY_SOCKET", path.to_str().unwrap());
    if !watchdog_usec.is_empty() {
        b = b.env("WATCHDOG_USEC", watchdog_usec);
    }
    if fault_injection {
        b = b.env("VISUTILITY_FAULT_INJECTION", "1");
    }
    (b.start(), sock)
}

#[test]
fn ready_reloading_and_stopping_are_announced() {
    let (mut d, sock) = notify_daemon("", false);
    let got = recv_until(&sock, DEADLINE, |m| m.lines().any(|l| l == "READY=1"));
    assert!(
        got.iter().any(|m| m.lines().any(|l| l == "READY=1")),
        "no READY=1: {got:?}\n{}",
        d.logs()
    );

    d.sighup();
    let got = recv_until(&sock, DEADLINE, |m| m.lines().any(|l| l == "READY=1"));
    let reloading = got
        .iter()
        .position(|m| m.lines().any(|l| l == "RELOADING=1"))
        .unwrap_or_else(|| d.fail(format!("no RELOADING=1 after SIGHUP: {got:?}")));
    assert!(
        got[reloading]
            .lines()
            .any(|l| l.starts_with("MONOTONIC_USEC=") && l[15..].parse::<u64>().is_ok()),
        "RELOADING=1 without MONOTONIC_USEC: {got:?}"
    );
    let ready = got.iter().rposition(|m| m.lines().any(|l| l == "READY=1"));
    assert!(
        ready.is_some_and(|r| r >= reloading),
        "READY=1 must follow RELOADING=1: {got:?}"
    );

    d.sigterm();
    let got = recv_until(&sock, DEADLINE, |m| m.lines().any(|l| l == "STOPPING=1"));
    assert!(
        got.iter().any(|m| m.contains("STOPPING=1")),
        "no STOPPING=1: {got:?}"
    );
    assert!(d.wait_exit().success());
}

#[test]
fn watchdog_pings_stop_while_an_actor_is_wedged() {
    // WATCHDOG_USEC of 0.4 s: a ping every 0.2 s.
    let (d, sock) = notify_daemon("400000", true);
    let mut c = d.connect();
    c.send_line(&json!({"model_id": "m1", "drift_score": 0.0}).to_string());
    c.flush();
    let pings = |window: Duration| {
        recv_until(&sock, window, |_| false)
            .iter()
            .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
            .count()
    };
    assert!(
        pings(Duration::from_secs(3)) >= 2,
        "no watchdog pings while healthy\n{}",
        d.logs()
    );

    c.send_line(&json!({"model_id": "m1", "meta": {"fault": "hang"}}).to_string());
    d.wait_for("the model thread to hang", || {
        d.logs().contains("injected hang").then_some(())
    });
    // A heartbeat already past the model actors may still land: drop the first moments.
    pings(Duration::from_millis(300));
    assert_eq!(
        pings(Duration::from_millis(2000)),
        0,
        "watchdog pinged while the model thread was wedged\n{}",
        d.logs()
    );
    let resumed = poll_until(DEADLINE, || {
        (pings(Duration::from_millis(500)) > 0).then_some(())
    });
    assert!(
        resumed.is_some(),
        "watchdog pings did not resume after the hang\n{}",
        d.logs()
    );
}

#[test]
fn takes_the_socket_systemd_passes_as_fd_3() {
    let sb = Sandbox::new();
    let activated = sb.path("activated.sock");
    let listener = UnixListener::bind(&activated).unwrap();
    let config = sb.write(
        "config.toml",
        &format!(
            "[daemon]\nsocket = {}\ncontrol_socket = {}\nstate_dir = {}\n",
            toml_path(&sb.path("unused-ingest.sock")),
            toml_path(&sb.path("control.sock")),
            toml_path(&sb.path("state")),
        ),
    );
    let log = std::fs::File::create(sb.path("daemon.log")).unwrap();
    // LISTEN_PID must be the daemon's pid: the shell's $$ survives its exec.
    let mut cmd = std::process::Command::new("/bin/sh");
    sb.apply_env(&mut cmd);
    cmd.args([
        "-c",
        "LISTEN_PID=$$ exec \"$0\" daemon --config \"$1\"",
        bin(),
        config.to_str().unwrap(),
    ])
    .env("LISTEN_FDS", "1")
    .env("LISTEN_FDNAMES", "ingest")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(log);
    let fd = listener.as_raw_fd();
    // SAFETY: dup2 and fcntl are async-signal-safe; they run in the child between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep CLOEXEC, so an fd that already is 3 is cleared instead.
            let r = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let logs = || std::fs::read_to_string(sb.path("daemon.log")).unwrap_or_default();
    let served = poll_until(DEADLINE, || {
        let mut s = UnixStream::connect(&activated).ok()?;
        use std::io::{BufRead, Write};
        s.write_all(b"{\"model_id\":\"m1\",\"drift_score\":0.1}\n{\"op\":\"flush\"}\n")
            .ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut line = String::new();
        std::io::BufReader::new(s).read_line(&mut line).ok()?;
        line.contains("\"ok\":true").then_some(line)
    });
    let served = served.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("the inherited socket was not served\n{}", logs())
    });
    assert!(served.contains("\"accepted\":1"), "{served}");
    assert!(
        !sb.path("unused-ingest.sock").exists(),
        "the daemon bound its own socket too\n{}",
        logs()
    );
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status:?}\n{}", logs());
    assert!(
        activated.exists(),
        "systemd's socket file must not be removed by the daemon"
    );
    drop(listener);
}
