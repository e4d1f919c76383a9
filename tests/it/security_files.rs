//! The security review's findings on files, sockets and hooks (issue 18: findings 2, 3, 7, 8
//! and 9): StrictModes on the config, the hooks and the state directory; the metrics textfile
//! written through an exclusive random temporary file; the hooks' minimal environment and
//! closed descriptors; stale sockets; and sockets that appear with their final mode.
//!
//! The tests run as root and act as other users with `setpriv` and numeric ids (no passwd
//! entry needed); "owned by another user" is a `chown` to such an id.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::*;

/// Ids that belong to nobody on the machine.
const OTHER: u32 = 4242;
const DAEMON_USER: u32 = 4343;

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(uid)).unwrap();
}

/// `[hooks]` with `full` running `command`, and a policy that never fires.
fn hook_body(command: &str, hooks_extra: &str) -> String {
    format!(
        r#"
[hooks]
cooldown_s = 0
retries = 0
{hooks_extra}
full = {{ command = {command}, timeout_s = 60 }}

[[models]]
match = "*"

[[models.policies]]
kind = "static_threshold"
max_drift = 1000000.0
"#
    )
}

/// Runs `visutility daemon` for `config` and expects it to refuse to start.
fn expect_refusal(sb: &Sandbox, config: &Path) -> String {
    let o = run_with_timeout(
        sb.command(&["daemon", "--config", config.to_str().unwrap()]),
        None,
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("the daemon did not refuse to start: {e}"));
    assert!(!o.status.success(), "{}", out_text(&o));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn config_text(sb: &Sandbox, daemon_extra: &str, body: &str) -> String {
    format!(
        "[daemon]\nsocket = {}\ncontrol_socket = {}\nstate_dir = {}\n{daemon_extra}\n{body}",
        toml_path(&sb.path("ingest.sock")),
        toml_path(&sb.path("control.sock")),
        toml_path(&sb.path("state")),
    )
}

// ---------------------------------------------------------------------------
// Finding 2: StrictModes
// ---------------------------------------------------------------------------

#[test]
fn finding_2_a_world_writable_hook_is_refused_at_start() {
    let sb = Sandbox::new();
    let hook = sb.write_script("hooks/retrain.sh", "exit 0");
    chmod(&hook, 0o777);
    let config = sb.write(
        "config.toml",
        &config_text(
            &sb,
            "",
            &hook_body(&toml_cmd(&[hook.to_str().unwrap()]), ""),
        ),
    );
    let err = expect_refusal(&sb, &config);
    assert!(
        err.contains(hook.to_str().unwrap()) && err.contains("chmod o-w"),
        "the refusal names neither the hook nor the fix: {err}"
    );
    assert!(
        !sb.path("ingest.sock").exists(),
        "the daemon started serving"
    );

    // check-config says the same, and exits 1.
    let o = sb.run(&["check-config", config.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", out_text(&o));
    assert!(
        stdout(&o).contains(hook.to_str().unwrap()),
        "{}",
        out_text(&o)
    );
}

#[test]
fn finding_2_hooks_owned_by_another_user_or_in_writable_directories_are_refused_by_check_config() {
    let sb = Sandbox::new();
    let check = |command: &[&str]| -> Output {
        let config = sb.write(
            "config.toml",
            &config_text(&sb, "", &hook_body(&toml_cmd(command), "")),
        );
        sb.run(&["check-config", config.to_str().unwrap()])
    };
    let refused = |command: &[&str], path: &Path| {
        let o = check(command);
        assert_eq!(o.status.code(), Some(1), "{command:?}: {}", out_text(&o));
        assert!(
            stdout(&o).contains(&format!("insecure {}", path.display())),
            "{command:?}: {}",
            out_text(&o)
        );
    };

    // Owned by another user.
    let theirs = sb.write_script("a/theirs.sh", "exit 0");
    chown(&theirs, OTHER);
    refused(&[theirs.to_str().unwrap()], &theirs);

    // In a directory anyone may write (not sticky): anyone may replace it.
    let open_dir = sb.path("open");
    let in_open = sb.write_script("open/hook.sh", "exit 0");
    chmod(&open_dir, 0o777);
    refused(&[in_open.to_str().unwrap()], &open_dir);

    // A group-writable directory is fine only for group root.
    let group_dir = sb.path("group");
    let in_group = sb.write_script("group/hook.sh", "exit 0");
    chmod(&group_dir, 0o775);
    let o = check(&[in_group.to_str().unwrap()]);
    assert!(o.status.success(), "group root may write: {}", out_text(&o));
    std::os::unix::fs::chown(&group_dir, None, Some(OTHER)).unwrap();
    refused(&[in_group.to_str().unwrap()], &group_dir);

    // A sticky shared directory (like /tmp) is safe for our files, not for others' files.
    let sticky = sb.path("sticky");
    let ours = sb.write_script("sticky/ours.sh", "exit 0");
    let strangers = sb.write_script("sticky/strangers.sh", "exit 0");
    chmod(&sticky, 0o1777);
    chown(&strangers, OTHER);
    let o = check(&[ours.to_str().unwrap()]);
    assert!(o.status.success(), "{}", out_text(&o));
    refused(&[strangers.to_str().unwrap()], &strangers);

    // The script an interpreter runs is checked like the program.
    let script = sb.write("scripts/retrain.sh", "exit 0\n");
    chmod(&script, 0o666);
    refused(&["/bin/sh", script.to_str().unwrap()], &script);

    // A bare name is resolved on the hook's PATH: the file found is the one checked.
    let bin = sb.path("bin");
    let found = sb.write_script("bin/retrain-hook", "exit 0");
    chmod(&found, 0o757);
    let hooks_env = format!("env = {{ PATH = {} }}", toml_path(&bin));
    let config = sb.write(
        "config.toml",
        &config_text(
            &sb,
            "",
            &hook_body(&toml_cmd(&["retrain-hook"]), &hooks_env),
        ),
    );
    let o = sb.run(&["check-config", config.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", out_text(&o));
    assert!(
        stdout(&o).contains(&format!("insecure {}", found.display())),
        "{}",
        out_text(&o)
    );
}

#[test]
fn finding_2_a_writable_config_is_refused_at_reload_and_the_running_config_kept() {
    let hook_marker = "hooks/new.sh";
    let mut b = Daemon::builder();
    let new_hook = b.write_script(hook_marker, "exit 0");
    b = b.body(QUIET_BODY);
    let mut d = b.start();
    // Someone who may write the config adds a hook and opts out of the checks.
    chmod(&d.config_path, 0o666);
    d.write_config(&ConfigParts {
        daemon_extra: "allow_insecure_modes = true".into(),
        body: hook_body(&toml_cmd(&[new_hook.to_str().unwrap()]), ""),
    });
    chmod(&d.config_path, 0o666);
    d.sighup();
    let config_path = d.config_path.to_str().unwrap().to_owned();
    d.wait_log_count("the reload refused, naming the config", 1, |l| {
        l.contains("config reload refused") && l.contains(&config_path) && l.contains("chmod o-w")
    });
    assert!(d.is_running());
    assert!(
        d.log_lines()
            .iter()
            .any(|l| l.contains("daemon.allow_insecure_modes")
                && l.contains("only at the next restart")),
        "the opt-out was not held back to the next restart"
    );
    // The running config is the old one: the quiet body's /bin/true hook.
    d.cli_ok(&["trigger", "--create", "m1", "full"]);
    let job = d.wait_job(Some("m1"), "the job", |j| j["state"] == "succeeded");
    assert_eq!(job["command"], serde_json::json!(["/bin/true"]), "{job}");

    // At a start the config is refused too.
    d.sigterm();
    d.wait_exit();
    chmod(&d.config_path, 0o644);
    let quiet = d.daemon_table("") + QUIET_BODY;
    d.write_raw_config(&quiet);
    chmod(&d.config_path, 0o620);
    std::os::unix::fs::chown(&d.config_path, None, Some(OTHER)).unwrap();
    let err = expect_refusal(&d.sb, &d.config_path);
    assert!(
        err.contains(&config_path) && err.contains("chmod g-w"),
        "{err}"
    );
}

#[test]
fn finding_2_allow_insecure_modes_is_warned_at_every_start() {
    let b = Daemon::builder();
    let hook = b.recording_hook("open", 0);
    chmod(&hook.script, 0o777);
    let mut d = b
        .daemon_keys("allow_insecure_modes = true")
        .body(hook_body(&hook.command_toml(&[]), ""))
        .start();
    d.cli_ok(&["trigger", "--create", "m1", "full"]);
    d.wait_runs(&hook, 1);
    d.sigterm();
    d.wait_exit();
    d.restart();
    d.wait_log_count("the warning at each of two starts", 2, |l| {
        l.contains("WARN") && l.contains("allow_insecure_modes = true")
    });
}

#[test]
fn finding_2_a_hook_made_writable_after_start_is_not_run() {
    let b = Daemon::builder();
    let hook = b.recording_hook("later", 0);
    let d = b.body(hook_body(&hook.command_toml(&[]), "")).start();
    chmod(&hook.script, 0o777);
    d.cli_ok(&["trigger", "--create", "m1", "full"]);
    let job = d.wait_job(Some("m1"), "a failed job", |j| j["state"] == "failed");
    let note = job["note"].as_str().unwrap_or_default();
    assert!(
        note.contains(hook.script_str()) && note.contains("chmod o-w"),
        "{job}"
    );
    assert_eq!(hook.started(), 0, "the insecure hook ran");
}

#[test]
fn finding_2_the_state_dir_is_created_0700_and_an_existing_one_never_chmodded() {
    // Missing: created 0700.
    let mut d = Daemon::builder().start();
    assert_eq!(fs::metadata(&d.state_dir).unwrap().mode() & 0o7777, 0o700);
    d.sigterm();
    d.wait_exit();
    // An existing 0750 directory keeps its mode.
    chmod(&d.state_dir, 0o750);
    d.restart();
    assert_eq!(fs::metadata(&d.state_dir).unwrap().mode() & 0o7777, 0o750);
    d.sigterm();
    d.wait_exit();

    // A shared 1777 directory is refused, and keeps its sticky bit.
    chmod(&d.state_dir, 0o1777);
    let err = expect_refusal(&d.sb, &d.config_path);
    assert_eq!(fs::metadata(&d.state_dir).unwrap().mode() & 0o7777, 0o1777);
    assert!(
        err.contains(d.state_dir.to_str().unwrap()) && err.contains("chmod go-w"),
        "{err}"
    );
    // One owned by another user is refused.
    chmod(&d.state_dir, 0o700);
    chown(&d.state_dir, OTHER);
    let err = expect_refusal(&d.sb, &d.config_path);
    assert!(err.contains(&format!("owned by uid {OTHER}")), "{err}");
}

#[test]
fn finding_2_a_planted_schema_temp_symlink_is_not_followed() {
    let mut d = Daemon::builder().start();
    d.sigterm();
    d.wait_exit();
    let secret = d.path("root-only");
    fs::write(&secret, "secret\n").unwrap();
    chmod(&secret, 0o600);
    // An old schema number makes the next start write the file again.
    fs::write(d.state_dir.join("schema_version"), "1\n").unwrap();
    std::os::unix::fs::symlink(&secret, d.state_dir.join("schema_version.tmp")).unwrap();
    d.restart();
    assert_eq!(fs::read_to_string(&secret).unwrap(), "secret\n");
    assert_eq!(fs::metadata(&secret).unwrap().mode() & 0o777, 0o600);
}

// ---------------------------------------------------------------------------
// Finding 3: the metrics textfile
// ---------------------------------------------------------------------------

#[test]
fn finding_3_the_metrics_textfile_never_follows_a_planted_symlink() {
    let b = Daemon::builder();
    // A collector directory anyone may write.
    let dir = b.path("collector");
    fs::create_dir_all(&dir).unwrap();
    chmod(&dir, 0o777);
    chmod(b.sandbox().dir.path(), 0o711);
    let secret = b.path("root-only");
    fs::write(&secret, "secret\n").unwrap();
    chmod(&secret, 0o600);
    let file = dir.join("visutility.prom");
    let d = b
        .body(format!(
            "{QUIET_BODY}\n[metrics]\ntextfile = {}\ninterval_s = 1\n",
            toml_path(&file)
        ))
        .start();
    let first = d
        .wait_for("the textfile", || fs::metadata(&file).ok())
        .ino();

    // Another user plants symlinks to the root-only file at the names the daemon used to use.
    for name in [
        format!(".visutility.prom.tmp.{}", d.pid()),
        "visutility.prom.tmp".to_owned(),
    ] {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            &format!("--reuid={OTHER}"),
            &format!("--regid={OTHER}"),
            "--clear-groups",
            "ln",
            "-s",
        ])
        .arg(&secret)
        .arg(dir.join(&name));
        let o = run_with_timeout(cmd, None, CLI_DEADLINE).unwrap();
        assert!(o.status.success(), "{}", out_text(&o));
    }
    // Two more rewrites.
    let mut seen = vec![first];
    d.wait_for("two rewrites of the textfile", || {
        let ino = fs::symlink_metadata(&file).ok()?.ino();
        if !seen.contains(&ino) {
            seen.push(ino);
        }
        (seen.len() >= 3).then_some(())
    });
    assert_eq!(fs::read_to_string(&secret).unwrap(), "secret\n");
    assert_eq!(fs::metadata(&secret).unwrap().mode() & 0o777, 0o600);
    let meta = fs::symlink_metadata(&file).unwrap();
    assert!(meta.is_file(), "the textfile is not a regular file");
    assert_eq!(meta.mode() & 0o777, 0o644);
}

// ---------------------------------------------------------------------------
// Finding 7: the hooks' environment and descriptors
// ---------------------------------------------------------------------------

#[test]
fn finding_7_hooks_get_a_minimal_environment_and_no_inherited_descriptors() {
    let b = Daemon::builder();
    let out = b.path("hook-out");
    fs::create_dir_all(&out).unwrap();
    let hook = b.write_script(
        "hooks/dump.sh",
        &format!(
            "env > {out}/env.tmp && mv {out}/env.tmp {out}/env\nls -l /proc/self/fd > {out}/fds.tmp && mv {out}/fds.tmp {out}/fds",
            out = sh_quote(out.to_str().unwrap())
        ),
    );
    // A descriptor the daemon inherits from its launcher (not close-on-exec).
    let marker = b.path("inherited-marker");
    fs::write(&marker, "x").unwrap();
    let cpath = std::ffi::CString::new(marker.to_str().unwrap()).unwrap();
    // SAFETY: a plain open of a NUL-terminated path.
    let fd = unsafe { libc::open(cpath.as_ptr(), libc::O_RDONLY) };
    assert!(fd > 2);
    let d = b
        .env("AWS_SECRET_ACCESS_KEY", "aws-secret-value")
        .env("DB_PASSWORD", "db-secret-value")
        .env("KEEP_ME", "kept-value")
        .env("LANG", "C.UTF-8")
        .env("TZ", "UTC")
        .body(hook_body(
            &toml_cmd(&[hook.to_str().unwrap()]),
            "env = { EXTRA = \"extra-value\" }\npass_env = [\"KEEP_ME\", \"NOT_SET_ANYWHERE\"]",
        ))
        .start();
    // SAFETY: closing our own descriptor; the daemon has its copy.
    unsafe { libc::close(fd) };
    d.cli_ok(&["trigger", "--create", "m1", "full"]);
    let env = d.wait_for("the hook's environment", || {
        fs::read_to_string(out.join("env")).ok()
    });
    let fds = d.wait_for("the hook's descriptors", || {
        fs::read_to_string(out.join("fds")).ok()
    });
    for secret in [
        "aws-secret-value",
        "db-secret-value",
        "AWS_SECRET",
        "DB_PASSWORD",
    ] {
        assert!(!env.contains(secret), "{secret} leaked to the hook:\n{env}");
    }
    for expected in [
        "KEEP_ME=kept-value",
        "EXTRA=extra-value",
        "LANG=C.UTF-8",
        "TZ=UTC",
        "HOME=",
        "PATH=",
        "VISUTILITY_MODEL_ID=m1",
        "VISUTILITY_JOB_ID=",
    ] {
        assert!(
            env.lines().any(|l| l.starts_with(expected)),
            "{expected} missing:\n{env}"
        );
    }
    // Nothing from the harness's environment beyond those (XDG_*, TMPDIR, NO_COLOR, ...).
    for unexpected in [
        "XDG_RUNTIME_DIR=",
        "TMPDIR=",
        "NO_COLOR=",
        "NOT_SET_ANYWHERE=",
    ] {
        assert!(
            !env.lines().any(|l| l.starts_with(unexpected)),
            "{unexpected} reached the hook:\n{env}"
        );
    }
    assert!(
        !fds.contains("inherited-marker"),
        "the inherited descriptor reached the hook:\n{fds}"
    );
    // 0, 1, 2 and the directory ls reads: no socket, no store file.
    let numbers: Vec<u32> = fds
        .lines()
        .filter_map(|l| {
            l.split(" -> ")
                .next()?
                .split_whitespace()
                .last()?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        numbers.iter().all(|&n| n <= 3),
        "descriptors above 2 reached the hook:\n{fds}"
    );
}

// ---------------------------------------------------------------------------
// Finding 8: stale sockets
// ---------------------------------------------------------------------------

#[test]
fn finding_8_a_regular_file_at_the_socket_path_is_neither_deleted_nor_replaced() {
    let sb = Sandbox::new();
    let config = sb.write("config.toml", &config_text(&sb, "", QUIET_BODY));
    let victim = sb.write("ingest.sock", "precious data\n");
    let err = expect_refusal(&sb, &config);
    assert!(
        err.contains(victim.to_str().unwrap()) && err.contains("not a socket"),
        "{err}"
    );
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious data\n");
}

#[test]
fn finding_8_a_live_socket_of_another_user_is_not_taken_over() {
    let sb = Sandbox::new();
    chmod(sb.dir.path(), 0o711);
    // The daemon runs as DAEMON_USER, with its own runtime and state directories.
    let run = sb.path("run");
    fs::create_dir_all(&run).unwrap();
    chown(&run, DAEMON_USER);
    let state = sb.path("state");
    fs::create_dir_all(&state).unwrap();
    chown(&state, DAEMON_USER);
    chmod(&state, 0o700);
    // Another user's live socket, closed to the daemon's user: connect gives EACCES.
    let path = run.join("ingest.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    chown(&path, OTHER);
    chmod(&path, 0o600);
    let ino = fs::symlink_metadata(&path).unwrap().ino();
    let config = sb.write(
        "config.toml",
        &format!(
            "[daemon]\nsocket = {}\ncontrol_socket = {}\nstate_dir = {}\n{QUIET_BODY}",
            toml_path(&path),
            toml_path(&run.join("control.sock")),
            toml_path(&state),
        ),
    );
    chmod(&config, 0o644);
    let mut cmd = Command::new("setpriv");
    sb.apply_env(&mut cmd);
    cmd.args([
        &format!("--reuid={DAEMON_USER}"),
        &format!("--regid={DAEMON_USER}"),
        "--clear-groups",
        bin(),
        "daemon",
        "--config",
        config.to_str().unwrap(),
    ]);
    let o = run_with_timeout(cmd, None, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("the daemon did not refuse to start: {e}"));
    assert!(!o.status.success(), "{}", out_text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(path.to_str().unwrap()) && err.contains("not replacing it"),
        "{err}"
    );
    // Still the other user's socket, still served.
    assert_eq!(fs::symlink_metadata(&path).unwrap().ino(), ino);
    let _client = std::os::unix::net::UnixStream::connect(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    assert!(
        listener.accept().is_ok(),
        "the other user's socket lost its server"
    );
}

// ---------------------------------------------------------------------------
// Finding 9: sockets appear with their final mode
// ---------------------------------------------------------------------------

/// inotify events (mask, name) for entries of `dir`, read until `until` says stop or the
/// deadline passes.
fn watch_dir(dir: &Path, until: impl Fn(&[(u32, String)]) -> bool) -> Vec<(u32, String)> {
    let cdir = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    // SAFETY: plain inotify calls on a descriptor we own; the buffer outlives each read.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    assert!(fd >= 0);
    let wd = unsafe {
        libc::inotify_add_watch(
            fd,
            cdir.as_ptr(),
            libc::IN_CREATE | libc::IN_ATTRIB | libc::IN_MOVED_TO,
        )
    };
    assert!(wd >= 0);
    let mut events = Vec::new();
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut buf = vec![0u8; 64 * 1024];
    while !until(&events) && std::time::Instant::now() < deadline {
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let mut off = 0;
        while off + 16 <= n as usize {
            let mask = u32::from_ne_bytes(buf[off + 4..off + 8].try_into().unwrap());
            let len = u32::from_ne_bytes(buf[off + 12..off + 16].try_into().unwrap()) as usize;
            let name = buf[off + 16..off + 16 + len]
                .split(|&b| b == 0)
                .next()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            events.push((mask, name));
            off += 16 + len;
        }
    }
    unsafe { libc::close(fd) };
    events
}

#[test]
fn finding_9_sockets_appear_with_their_final_mode_even_under_umask_000() {
    let sb = Sandbox::new();
    let run = sb.path("run");
    fs::create_dir_all(&run).unwrap();
    let ingest = run.join("ingest.sock");
    let control = run.join("control.sock");
    let config = sb.write(
        "config.toml",
        &format!(
            "[daemon]\nsocket = {}\ncontrol_socket = {}\nstate_dir = {}\ncontrol_group = {OTHER}\n{QUIET_BODY}",
            toml_path(&ingest),
            toml_path(&control),
            toml_path(&sb.path("state")),
        ),
    );
    let mut cmd = Command::new("sh");
    sb.apply_env(&mut cmd);
    cmd.args(["-c", "umask 000; exec \"$0\" daemon --config \"$1\""])
        .arg(bin())
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let watcher = {
        let run = run.clone();
        std::thread::spawn(move || {
            watch_dir(&run, |ev| {
                ["ingest.sock", "control.sock"].iter().all(|s| {
                    ev.iter()
                        .any(|(m, n)| n == s && m & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0)
                })
            })
        })
    };
    // Let the watch be in place before the daemon starts.
    std::thread::sleep(Duration::from_millis(200));
    let daemon = ChildGuard(cmd.spawn().unwrap());
    let events = watcher.join().unwrap();
    let mut daemon = daemon;
    // Neither socket had its mode or group changed at its final path: each appeared there
    // complete, so nobody could connect through a wider mode first.
    for name in ["ingest.sock", "control.sock"] {
        assert!(
            events.iter().any(|(_, n)| n == name),
            "{name} never appeared: {events:?}"
        );
        assert!(
            !events
                .iter()
                .any(|(m, n)| n == name && m & libc::IN_ATTRIB != 0),
            "{name} was chmod'ed or chown'ed at its final path: {events:?}"
        );
    }
    let meta = |p: &PathBuf| fs::symlink_metadata(p).unwrap();
    assert_eq!(meta(&ingest).mode() & 0o777, 0o660);
    assert_eq!(meta(&control).mode() & 0o777, 0o660);
    assert_eq!(meta(&control).gid(), OTHER);
    // No private binding directory is left behind.
    let private_dirs = || -> Vec<String> {
        fs::read_dir(&run)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".v"))
            .collect()
    };
    let left = poll_until(DEADLINE, || private_dirs().is_empty().then_some(()));
    assert!(left.is_some(), "{:?}", private_dirs());
    // SAFETY: signalling our own child.
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGTERM) };
    let _ = daemon.0.wait();
}
