//! The security review (issue 18), findings 1, 5, 6 and 11: who may use the sockets, what an
//! operator may do, which model ids are taken, and what the logs and tables show.
//!
//! CI runs as root: the peers here are throwaway numeric uids and gids set with `setpriv`
//! (the kernel and SO_PEERCRED need no passwd entry for them).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

/// Ids nobody on the machine has. `GROUP` is used both as a gid and, on purpose, as a uid.
const GROUP: u32 = 5151;
const OTHER: u32 = 5252;

/// Runs the CLI as `uid`:`gid` with the supplementary `groups` (none: cleared).
fn cli_as(d: &Daemon, uid: u32, gid: u32, groups: &[u32], args: &[&str]) -> Output {
    let mut cmd = Command::new("setpriv");
    d.sb.apply_env(&mut cmd);
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"));
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        cmd.arg(format!("--groups={}", list.join(",")));
    }
    cmd.arg(bin())
        .args(args)
        .arg("--config")
        .arg(&d.config_path);
    run_with_timeout(cmd, None, CLI_DEADLINE).unwrap_or_else(|e| d.fail(e))
}

/// Lets other users reach the sandbox's sockets and read its config (the tempdir is 0700),
/// and opens both sockets' modes, so that only the daemon's credential check decides.
fn open_everything(d: &Daemon) {
    let chmod = |p: &std::path::Path, mode: u32| {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap()
    };
    chmod(d.dir(), 0o711);
    chmod(&d.config_path, 0o644);
    chmod(&d.control_socket, 0o666);
    chmod(&d.socket, 0o666);
}

fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn assert_refused(d: &Daemon, o: &Output, what: &str) {
    assert!(!o.status.success(), "{what} was served: {}", out_text(o));
    assert!(
        stderr_of(o).contains("permission denied"),
        "{what}: the reply does not name the refusal: {}",
        out_text(o)
    );
    let _ = d;
}

#[test]
fn finding_1_a_uid_equal_to_the_control_gid_is_not_an_operator() {
    let b = Daemon::builder();
    let hook = b.recording_hook("retrain", 0);
    let d = b
        .daemon_keys(&format!("control_group = {GROUP}"))
        .body(hooks_body(&hook, ""))
        .start();
    open_everything(&d);
    d.push_events(&[plain_event("m1")]);

    // uid 5151 is not in group 5151: the control group's gid must not match its uid.
    let o = cli_as(&d, GROUP, OTHER, &[], &["trigger", "m1", "full"]);
    assert_refused(&d, &o, "trigger by a uid equal to the control gid");
    let o = cli_as(&d, GROUP, OTHER, &[OTHER], &["pause", "m1"]);
    assert_refused(&d, &o, "pause by a uid equal to the control gid");
    assert_eq!(d.status_json()["paused"], json!([]), "the model was paused");
    assert!(d.history(Some("m1")).is_empty(), "a job was created");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(hook.started(), 0, "the hook ran");

    // A member of the group, by primary or supplementary gid, is an operator.
    let o = cli_as(&d, OTHER, GROUP, &[], &["status", "--json"]);
    assert!(
        o.status.success(),
        "primary member refused: {}",
        out_text(&o)
    );
    let o = cli_as(&d, OTHER, OTHER, &[GROUP], &["pause", "m1"]);
    assert!(o.status.success(), "member refused: {}", out_text(&o));
    assert_eq!(d.status_json()["paused"], json!(["m1"]));
}

#[test]
fn finding_1_control_allow_entries_are_typed() {
    let b = Daemon::builder();
    let hook = b.recording_hook("retrain", 0);
    let d = b
        .daemon_keys(&format!(
            "control_allow = [\"gid:{GROUP}\", \"uid:{OTHER}\"]"
        ))
        .body(hooks_body(&hook, ""))
        .start();
    open_everything(&d);
    d.push_events(&[plain_event("m1")]);

    // A gid entry: uid 5151 outside group 5151 is refused.
    let o = cli_as(&d, GROUP, 7, &[], &["trigger", "m1", "full"]);
    assert_refused(&d, &o, "a uid equal to an allowed gid");
    // A uid entry: a peer whose gid is 5252 but whose uid is not is refused.
    let o = cli_as(&d, 7, OTHER, &[OTHER], &["pause", "m1"]);
    assert_refused(&d, &o, "a gid equal to an allowed uid");
    assert_eq!(d.status_json()["paused"], json!([]));
    assert!(d.history(Some("m1")).is_empty(), "a job was created");
    assert_eq!(hook.started(), 0, "the hook ran");

    let o = cli_as(&d, 7, 7, &[GROUP], &["status"]);
    assert!(o.status.success(), "group member refused: {}", out_text(&o));
    let o = cli_as(&d, OTHER, 7, &[], &["status"]);
    assert!(o.status.success(), "listed uid refused: {}", out_text(&o));
}

#[test]
fn finding_1_ingest_allow_entries_are_typed() {
    let d = Daemon::builder()
        .daemon_keys(&format!(
            "ingest_allow = [\"uid:{GROUP}\", \"gid:{OTHER}\"]"
        ))
        .start();
    open_everything(&d);
    let events = d.sb.write("events.jsonl", &plain_event("w1"));
    let events = events.to_str().unwrap();

    // gid 5151 is not uid 5151; uid 5252 is not gid 5252.
    for (uid, gid, groups) in [(7, GROUP, vec![GROUP]), (OTHER, 7, vec![7])] {
        let o = cli_as(&d, uid, gid, &groups, &["push", events]);
        assert_eq!(o.status.code(), Some(1), "{}", out_text(&o));
        assert!(
            json_values(&stderr_of(&o))
                .iter()
                .any(|v| v["error"] == "permission_denied"),
            "uid {uid} gid {gid}: no permission_denied: {}",
            out_text(&o)
        );
    }
    assert_eq!(
        d.events_of("w1"),
        0,
        "a refused writer's events were applied"
    );

    let o = cli_as(&d, GROUP, 7, &[], &["push", events]);
    assert!(o.status.success(), "listed uid refused: {}", out_text(&o));
    let o = cli_as(&d, 7, 7, &[OTHER], &["push", events]);
    assert!(o.status.success(), "listed group refused: {}", out_text(&o));
    assert_eq!(d.events_of("w1"), 2);
}

#[test]
fn finding_1_a_bare_integer_is_a_uid_with_a_warning() {
    let d = Daemon::builder()
        .daemon_keys(&format!("control_allow = [{GROUP}]"))
        .start();
    open_everything(&d);
    d.wait_log_count("the warning naming the typed form", 1, |l| {
        l.contains("WARN") && l.contains(&format!("\"uid:{GROUP}\"")) && l.contains("control_allow")
    });
    let o = cli_as(&d, 7, GROUP, &[GROUP], &["status"]);
    assert_refused(&d, &o, "a group member through a bare integer");
    let o = cli_as(&d, GROUP, 7, &[], &["status"]);
    assert!(o.status.success(), "the bare uid refused: {}", out_text(&o));
    let o = d.sb.run(&["check-config", d.config_path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", out_text(&o));
    assert!(
        stdout(&o).lines().any(|l| l.starts_with("warning: ")
            && l.contains(&format!("daemon.control_allow: bare integer {GROUP}"))),
        "{}",
        out_text(&o)
    );
}

/// Ids that must never be created, persisted or shown.
const BAD_IDS: [&str; 8] = [
    "",
    "../../../etc/passwd",
    "\u{1b}]0;pwned\u{7}\u{1b}[2J",
    "a\rb",
    "x\nforged  1  now",
    "nul\0id",
    "-rf",
    "--help",
];

/// One raw control request (the CLI cannot send every byte an attacker can).
fn control_raw(d: &Daemon, req: &Value) -> Value {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&d.control_socket).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(format!("{req}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| d.fail(format!("reply {line:?}: {e}")))
}

#[test]
fn finding_6_every_control_op_refuses_invalid_ids() {
    let b = Daemon::builder();
    let hook = b.recording_hook("retrain", 0);
    let mut d = b.body(hooks_body(&hook, "")).start();
    for id in BAD_IDS {
        for req in [
            json!({"cmd": "reset", "model": id}),
            json!({"cmd": "trigger", "model": id, "action": "full"}),
            json!({"cmd": "pause", "model": id}),
            json!({"cmd": "resume", "model": id}),
            json!({"cmd": "history", "model": id}),
        ] {
            let reply = control_raw(&d, &req);
            assert_eq!(reply["ok"], json!(false), "{req} was served: {reply}");
            assert!(
                reply["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("model_id")),
                "{req}: the refusal does not say why: {reply}"
            );
        }
    }
    // The leading '-' is refused on the ingest socket too.
    let mut c = d.connect();
    c.send_line(&plain_event("-rf"));
    let (flush, errors) = c.flush_with_errors();
    assert_eq!(flush["rejected"], json!(1), "{flush}");
    assert!(is_error(&errors[0], &["bad_model_id"], 1), "{errors:?}");

    assert_eq!(d.models_json(), json!([]), "a model was created");
    assert_eq!(d.status_json()["paused"], json!([]));
    assert_eq!(hook.started(), 0, "a hook ran");
    drop(c);
    d.sigterm();
    d.wait_exit();
    d.restart();
    assert_eq!(d.models_json(), json!([]), "a model was persisted");
}

#[test]
fn finding_6_a_store_with_invalid_ids_serves_only_valid_ones() {
    let b = Daemon::builder();
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-bad-ids/state");
    let status = Command::new("cp")
        .arg("-a")
        .arg(&fixture)
        .arg(b.path("state"))
        .status()
        .unwrap();
    assert!(status.success());
    let d = b.start();

    let models = d.models_json();
    let ids: Vec<&str> = models
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["model_id"].as_str())
        .collect();
    assert_eq!(ids, ["good-1"], "{models}");
    assert_eq!(d.events_of("good-1"), 2);
    assert_eq!(
        d.status_json()["paused"],
        json!([]),
        "the -rf runner was served"
    );

    // People see no raw control character: not in the table, not in the log.
    let table = d.cli_ok(&["models"]);
    assert!(!table.contains(['\u{1b}', '\r', '\0']), "{table:?}");
    assert!(!table.contains("forged"), "{table}");
    d.wait_log_count("one line per skipped record", 7, |l| {
        l.contains("skipping a stored record with an invalid model id")
    });
    let log = fs::read_to_string(&d.log_path).unwrap();
    assert!(
        !log.contains(['\u{1b}', '\r', '\0']),
        "raw control bytes in the log"
    );
    assert!(log.contains("model_id=\\x1b]0;pwned\\x07\\x1b[2J"), "{log}");
    assert!(
        !log.lines().any(|l| l.starts_with("forged")),
        "a forged log line: {log}"
    );
    // The exposition still parses, and names only the valid model.
    let text = d.cli_ok(&["metrics"]);
    for line in text.lines() {
        assert!(
            !matches!(
                prometheus_parse::LineInfo::parse(line),
                prometheus_parse::LineInfo::Ignored | prometheus_parse::LineInfo::Empty
            ),
            "not an exposition line: {line:?}"
        );
    }
    assert!(!text.contains("passwd") && !text.contains("-rf"), "{text}");
}

#[test]
fn finding_5_trigger_is_rate_limited_per_model() {
    let b = Daemon::builder();
    let hook = b.recording_hook("retrain", 0);
    // A one-hour cooldown, as in the finding: triggers bypass it, the trigger limit does not.
    // max_triggers_per_hour is left at its default (3).
    let body = hooks_body(&hook, "").replace("cooldown_s = 0", "cooldown_s = 3600");
    let d = b.body(body).start();
    d.push_events(&[plain_event("m1"), plain_event("m2")]);

    for n in 1..=3 {
        let t = d.cli_json(&["trigger", "m1", "full"]);
        let id = t["job_id"].clone();
        d.wait_job(Some("m1"), "the triggered job succeeded", |j| {
            j["job_id"] == id && j["state"] == "succeeded"
        });
        assert_eq!(hook.runs_for("m1").len(), n);
    }
    let o = d.cli(&["trigger", "m1", "full"]);
    assert!(
        !o.status.success(),
        "a fourth trigger in an hour was served: {}",
        out_text(&o)
    );
    assert!(
        stderr_of(&o).contains("max_triggers_per_hour"),
        "the refusal does not name the limit: {}",
        out_text(&o)
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        hook.runs_for("m1").len(),
        3,
        "the refused trigger ran the hook"
    );
    assert_eq!(
        d.history(Some("m1")).len(),
        3,
        "the refused trigger made a job"
    );
    d.wait_log_count("the refusal in the log", 1, |l| {
        l.contains("trigger refused") && l.contains("m1")
    });

    // The limit is per model.
    let t = d.cli_json(&["trigger", "m2", "full"]);
    assert!(t["job_id"].is_u64(), "{t}");
}

/// Connects `n` times to `socket` as `uid`:`gid` (one process, so that thousands of refusals
/// take a second), reading each reply; returns how many replies named the refusal.
fn refused_connects(d: &Daemon, uid: u32, gid: u32, socket: &std::path::Path, n: usize) -> usize {
    let script = r#"
import socket, sys
path, n = sys.argv[1], int(sys.argv[2])
refused = 0
for _ in range(n):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(path)
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        reply += chunk
    s.close()
    if b"permission" in reply:
        refused += 1
print(refused)
"#;
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        // The system interpreter: a per-user one (pyenv) is not reachable by another uid.
        .args(["/usr/bin/python3", "-c", script])
        .arg(socket)
        .arg(n.to_string());
    let o = run_with_timeout(cmd, None, Duration::from_secs(120)).unwrap_or_else(|e| d.fail(e));
    assert!(o.status.success(), "{}", out_text(&o));
    stdout(&o).trim().parse().unwrap()
}

#[test]
fn finding_11_refusals_are_logged_once_per_uid_and_interval() {
    let mut d = Daemon::builder()
        .daemon_keys(&format!("ingest_allow = [\"uid:{GROUP}\"]"))
        .start();
    open_everything(&d);
    let n = 2000;
    assert_eq!(refused_connects(&d, OTHER, OTHER, &d.control_socket, n), n);
    assert_eq!(refused_connects(&d, OTHER, OTHER, &d.socket.clone(), n), n);
    assert_eq!(
        refused_connects(&d, GROUP + 1, OTHER, &d.control_socket, 1),
        1
    );
    // Every refusal is still counted.
    let text = d.cli_ok(&["metrics"]);
    assert!(
        text.contains(&format!("visutility_control_refused_total {}\n", n + 1)),
        "{text}"
    );
    d.sigterm();
    d.wait_exit();

    let lines = d.log_lines();
    let count = |pred: &dyn Fn(&str) -> bool| lines.iter().filter(|l| pred(l)).count();
    let uid = format!("uid={OTHER}");
    assert_eq!(
        count(&|l| l.contains("control request refused") && l.contains(&uid)),
        1,
        "control refusals of one uid: one line, not one each"
    );
    assert_eq!(
        count(&|l| l.contains("ingest connection refused") && l.contains(&uid)),
        1
    );
    assert_eq!(
        count(
            &|l| l.contains("control request refused") && l.contains(&format!("uid={}", GROUP + 1))
        ),
        1,
        "another uid gets its own line"
    );
    // The rest are summed up, here at shutdown (else once their minute has passed).
    for socket in ["control", "ingest"] {
        assert_eq!(
            count(&|l| l.contains("more connections refused")
                && l.contains(&format!("socket=\"{socket}\""))
                && l.contains(&uid)
                && l.contains(&format!("refused={}", n - 1))),
            1,
            "{socket} summary: {:?}",
            lines
                .iter()
                .filter(|l| l.contains("refused"))
                .collect::<Vec<_>>()
        );
    }
    let refused_lines = count(&|l| l.contains("refused") && l.contains("WARN"));
    eprintln!("{} refusals logged in {refused_lines} lines", 2 * n + 1);
    assert_eq!(refused_lines, 5);
}

#[test]
fn finding_11_a_fault_injection_switch_is_warned_at_start() {
    for (value, enabled) in [("1", true), ("yes", false)] {
        let d = Daemon::builder()
            .env("VISUTILITY_FAULT_INJECTION", value)
            .start();
        d.wait_log_count("the warning at start", 1, |l| {
            l.contains("WARN")
                && l.contains("fault-injection switch is set")
                && l.contains("VISUTILITY_FAULT_INJECTION")
                && l.contains(&format!("enabled={enabled}"))
        });
    }
    let d = Daemon::start_default();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !d.log_lines().iter().any(|l| l.contains("fault-injection")),
        "warned without the switch"
    );
}

/// A throwaway system group and user, removed when dropped (names unique per test process;
/// one already there from an interrupted run is taken over and removed too).
struct Accounts {
    user: String,
    group: String,
}

impl Accounts {
    /// Group `group` with gid `id`, and user `user` with uid `id` too, outside that group.
    fn create(tag: &str, id: u32) -> Accounts {
        let pid = std::process::id();
        let a = Accounts {
            user: format!("vt-{tag}-u{pid}"),
            group: format!("vt-{tag}-g{pid}"),
        };
        let run = |args: &[&str]| {
            let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
            // 9: the name exists already (a leftover), which is fine.
            assert!(
                o.status.success() || o.status.code() == Some(9),
                "{args:?}: {}",
                out_text(&o)
            );
        };
        run(&["groupadd", "--gid", &id.to_string(), &a.group]);
        run(&[
            "useradd",
            "--no-create-home",
            "--uid",
            &id.to_string(),
            "--gid",
            "nogroup",
            &a.user,
        ]);
        a
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.user).output();
        let _ = Command::new("groupdel").arg(&self.group).output();
    }
}

#[test]
fn finding_1_named_entries_resolve_into_their_own_namespace() {
    // uid 5353 and gid 5353 belong to different accounts, as on a real system.
    let id = 5353;
    let accounts = Accounts::create("sec1", id);
    let b = Daemon::builder();
    let hook = b.recording_hook("retrain", 0);
    let d = b
        .daemon_keys(&format!("control_allow = [\"group:{}\"]", accounts.group))
        .body(hooks_body(&hook, ""))
        .start();
    open_everything(&d);
    d.push_events(&[plain_event("m1")]);

    // The user whose uid is the group's gid, not a member: refused.
    let o = cli_as(&d, id, 65534, &[], &["trigger", "m1", "full"]);
    assert_refused(&d, &o, "a user whose uid equals the allowed group's gid");
    assert!(d.history(Some("m1")).is_empty(), "a job was created");
    assert_eq!(hook.started(), 0, "the hook ran");
    // A member of the group: served.
    let o = cli_as(&d, OTHER, OTHER, &[id], &["status"]);
    assert!(o.status.success(), "group member refused: {}", out_text(&o));

    // user:NAME is a uid entry: the group's members are not that user.
    d.write_raw_config(&format!(
        "{}\n{}",
        d.daemon_table(&format!("control_allow = [\"user:{}\"]", accounts.user)),
        hooks_body(&hook, "")
    ));
    let mut d = d;
    d.sigterm();
    d.wait_exit();
    d.restart();
    open_everything(&d);
    let o = cli_as(&d, OTHER, id, &[id], &["status"]);
    assert_refused(
        &d,
        &o,
        "a member of a group whose gid equals the allowed uid",
    );
    let o = cli_as(&d, id, 65534, &[], &["status"]);
    assert!(
        o.status.success(),
        "the named user refused: {}",
        out_text(&o)
    );
    drop(accounts);
}
