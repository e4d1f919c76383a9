//! Faults: a disk that fails writes, hooks that cannot run. The promise under test: a failing
//! disk or hook never takes the daemon down silently, and a flush is never a false `ok`.
//!
//! The disk: a real 2 MiB tmpfs filled to the last byte when this process may mount one (the
//! tests run as root), otherwise the store's fault-injection seam (`{"cmd":"fault"}` on the
//! control socket, honoured only under `VISUTILITY_FAULT_INJECTION=1`). Each test prints the
//! path it took.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::support::*;

/// A size-limited tmpfs, unmounted (lazily) on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::Builder::new()
            .prefix("vu-tmpfs")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the filesystem: writes until ENOSPC. Returns the filler's path and size.
    fn fill(&self) -> (PathBuf, u64) {
        let p = self.path().join("filler");
        let mut f = fs::File::create(&p).unwrap();
        let chunk = vec![0xa5u8; 4096];
        let mut n = 0u64;
        while f.write_all(&chunk).is_ok() {
            n += chunk.len() as u64;
        }
        // The last partial chunk: byte by byte, so not even a page is left.
        while f.write_all(&[0]).is_ok() {
            n += 1;
        }
        let _ = f.sync_all();
        (p, n)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }
}

/// One raw request on the control socket; returns the reply object.
fn control(d: &Daemon, req: &Value) -> Value {
    let mut s = UnixStream::connect(&d.control_socket).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(format!("{req}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| d.fail(format!("control reply {line:?}: {e}")))
}

fn events(model: &str, n: usize, from: usize) -> Vec<String> {
    (from..from + n)
        .map(|i| json!({"model_id": model, "value": i as f64, "drift_score": 0.01, "meta": {"pad": "x".repeat(200)}}).to_string())
        .collect()
}

/// How a test breaks the store, and mends it.
enum Breaker {
    Disk { fs: Tmpfs, filler: Option<PathBuf> },
    Seam,
}

impl Breaker {
    fn name(&self) -> &'static str {
        match self {
            Breaker::Disk { .. } => "a full 2 MiB tmpfs",
            Breaker::Seam => "the fault-injection seam",
        }
    }

    fn breaks(&mut self, d: &Daemon) {
        match self {
            Breaker::Disk { fs, filler } => {
                let (p, n) = fs.fill();
                eprintln!("faults: filled the tmpfs with {n} bytes");
                *filler = Some(p);
            }
            Breaker::Seam => {
                let r = control(d, &json!({"cmd": "fault", "store": true}));
                assert_eq!(r["ok"], json!(true), "fault request: {r}");
            }
        }
    }

    fn mend(&mut self, d: &Daemon) {
        match self {
            Breaker::Disk { filler, .. } => {
                fs::remove_file(filler.take().unwrap()).unwrap();
            }
            Breaker::Seam => {
                let r = control(d, &json!({"cmd": "fault", "store": false}));
                assert_eq!(r["ok"], json!(true), "fault request: {r}");
            }
        }
    }
}

/// The whole story on one breaker: acknowledged data is durable, the failure is answered
/// honestly, the daemon keeps serving and says so in `status`, and it recovers by itself.
fn store_failure_story(mut breaker: Breaker, b: DaemonBuilder) {
    eprintln!("faults: breaking the store with {}", breaker.name());
    let mut d = b.start();

    // Healthy: acknowledged.
    let mut c = d.connect();
    let mut sent = 0usize;
    c.send_lines(&events("steady", 50, sent));
    sent += 50;
    assert_flush(&c.flush(), 50, 0);
    let st = d.status_json();
    assert_eq!(st["store_ok"], json!(true), "status before the fault: {st}");
    let mut acked = sent;

    breaker.breaks(&d);

    // Every flush from now on must fail until the store is mended: a write cannot be durable.
    // (A tmpfs page may have had a few bytes of slack for the first batch, so the first
    // failure is awaited, then every later flush must fail too.)
    let mut failures = 0;
    // A model's record is a few hundred bytes, so the last page's slack lasts ~20 flushes.
    for round in 0..300 {
        c.send_lines(&events("steady", 20, sent));
        sent += 20;
        let (reply, errors) = c.flush_with_errors();
        assert!(
            errors.is_empty(),
            "events refused during the fault: {errors:?}"
        );
        if reply["ok"] == json!(true) {
            // The seam fails every write. A full disk may still take a write that fits in a
            // page sled already owns: that ok is true, and the final count checks it.
            if failures > 0 && matches!(breaker, Breaker::Seam) {
                d.fail(format!(
                    "a flush answered ok while the store was failing: {reply}"
                ));
            }
            acked = sent;
            continue;
        }
        assert_eq!(reply["ok"], json!(false), "flush reply: {reply}");
        assert_eq!(reply["error"], json!("internal"), "flush reply: {reply}");
        assert!(reply["detail"].is_string(), "flush reply: {reply}");
        failures += 1;
        if failures == 3 {
            eprintln!(
                "faults: third failed flush after {} rounds: {reply}",
                round + 1
            );
            break;
        }
    }
    if failures < 3 {
        d.fail("the store never failed a flush on a full disk");
    }

    // Still serving: pings, another connection's events, the control socket.
    let mut other = d.connect();
    other.send_line(r#"{"op":"ping"}"#);
    assert_eq!(other.read_reply(), json!({"ok": true}));
    other.send_lines(&events("steady", 10, 0));
    let (reply, errors) = other.flush_with_errors();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        reply["ok"],
        json!(false),
        "a flush answered ok on a failing store: {reply}"
    );
    let st = d.wait_for("status to report the store fault", || {
        let st = d.status_json();
        (st["store_ok"] == json!(false)).then_some(st)
    });
    let why = st["store_error"].as_str().unwrap_or_default().to_owned();
    assert!(!why.is_empty(), "status without store_error: {st}");
    eprintln!("faults: status during the fault: store_error = {why:?}");
    let m = d
        .model("steady")
        .unwrap_or_else(|| d.fail("models lost the live model"));
    assert!(m["events"].as_u64().unwrap() >= sent as u64, "{m}");
    // history reads the journal from the store: it answers, with data or an error, never hangs.
    let h = d.cli(&["history", "--json"]);
    eprintln!(
        "faults: history during the fault exited {:?}",
        h.status.code()
    );
    d.wait_log_count("an error logged about the store", 1, |l| {
        l.contains("ERROR") && (l.contains("state store") || l.contains("flush barrier failed"))
    });
    assert!(d.is_running(), "the daemon died");

    breaker.mend(&d);

    // It recovers by itself: the store flushes again, and the connection that saw failures
    // gets an honest ok for everything it sent.
    d.wait_for("status to report the store healthy again", || {
        (d.status_json()["store_ok"] == json!(true)).then_some(())
    });
    c.send_lines(&events("steady", 5, sent));
    sent += 5;
    let reply = c.flush();
    assert_flush(&reply, sent as u64, 0);
    let reply = other.flush();
    assert_flush(&reply, 10, 0);
    eprintln!("faults: recovered; {acked} events acknowledged before the fault, {sent} + 10 after");

    // And it is on disk: SIGKILL, restart, count.
    d.kill_and_restart();
    assert_eq!(
        d.events_of("steady"),
        sent as u64 + 10,
        "events after recovery and SIGKILL"
    );
}

#[test]
fn a_failing_disk_is_answered_honestly_reported_and_recovered() {
    let b = Daemon::builder();
    match Tmpfs::mount("2m") {
        Ok(fs) => {
            eprintln!("faults: path taken: real tmpfs at {}", fs.path().display());
            std::os::unix::fs::symlink(fs.path(), b.path("state")).unwrap();
            store_failure_story(Breaker::Disk { fs, filler: None }, b);
        }
        Err(why) => {
            eprintln!("faults: path taken: fault-injection seam (cannot mount a tmpfs: {why})");
            store_failure_story(Breaker::Seam, b.env("VISUTILITY_FAULT_INJECTION", "1"));
        }
    }
}

#[test]
fn injected_store_fault_is_answered_honestly_reported_and_recovered() {
    eprintln!("faults: path taken: fault-injection seam");
    let b = Daemon::builder().env("VISUTILITY_FAULT_INJECTION", "1");
    store_failure_story(Breaker::Seam, b);
}

#[test]
fn fault_injection_is_refused_without_the_env_var() {
    let d = Daemon::start_default();
    let r = control(&d, &json!({"cmd": "fault", "store": true}));
    assert_eq!(r["ok"], json!(false), "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap_or("")
            .contains("VISUTILITY_FAULT_INJECTION"),
        "{r}"
    );
    // and the store still works
    let mut c = d.connect();
    c.send_line(&plain_event("m"));
    assert_flush(&c.flush(), 1, 0);
    assert_eq!(d.status_json()["store_ok"], json!(true));
}

#[test]
fn a_hook_that_cannot_be_executed_is_a_failed_job_with_a_reason() {
    let b = Daemon::builder();
    let not_exec = b.path("not-executable.sh");
    fs::write(&not_exec, "#!/bin/sh\nexit 0\n").unwrap();
    let missing = b.path("no/such/hook");
    let body = format!(
        r#"
[hooks]
cooldown_s = 0
retries = 2
full = {{ command = {full}, timeout_s = 60 }}
fine_tune = {{ command = {fine}, timeout_s = 60 }}

[[models]]
match = "*"

[[models.policies]]
kind = "static_threshold"
max_drift = 1000000.0
"#,
        full = toml_cmd(&[missing.to_str().unwrap()]),
        fine = toml_cmd(&[not_exec.to_str().unwrap()]),
    );
    let d = b.body(body).start();
    d.cli_ok(&["trigger", "--create", "m1", "full"]);
    d.cli_ok(&["trigger", "--create", "m2", "fine_tune"]);
    for (model, why) in [("m1", "No such file"), ("m2", "Permission denied")] {
        let job = d.wait_job(Some(model), "a failed job", |j| j["state"] == "failed");
        let note = job["note"].as_str().unwrap_or_default();
        assert!(
            note.contains("cannot execute") && note.contains(why),
            "job note for {model} does not say why: {job}"
        );
        assert_eq!(job["exit_code"], Value::Null, "{job}");
        eprintln!("faults: {model}: {note}");
    }
    // Logged, and the daemon carries on.
    assert!(
        d.log_lines().iter().any(|l| l.contains("hook failed")),
        "the failure was not logged"
    );
    let mut c = d.connect();
    c.send_line(&plain_event("m1"));
    assert_flush(&c.flush(), 1, 0);
    assert_eq!(d.status_json()["store_ok"], json!(true));
}
