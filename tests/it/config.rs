//! Contract sections 1 and 3: `check-config`, refusing invalid configs, and
//! finding config/paths without `--config`.

use std::os::unix::net::UnixStream;
use std::process::Stdio;

use serde_json::json;

use crate::support::*;

/// The `[daemon]` table with sandbox paths.
fn daemon_table(sb: &Sandbox, extra: &str) -> String {
    format!(
        "[daemon]\nsocket = {}\ncontrol_socket = {}\nstate_dir = {}\n{extra}\n",
        toml_path(&sb.path("ingest.sock")),
        toml_path(&sb.path("control.sock")),
        toml_path(&sb.path("state")),
    )
}

/// The contract's example config, with sandbox paths and real hook scripts.
fn contract_example(sb: &Sandbox) -> String {
    let full = sb.write_script("hooks/full-retrain", "exit 0");
    let fine = sb.write_script("hooks/fine-tune", "exit 0");
    format!(
        r#"{daemon}
[hooks]
max_concurrent = 1
cooldown_s = 3600
retries = 2
full      = {{ command = [{full}], timeout_s = 7200 }}
fine_tune = {{ command = [{fine}],    timeout_s = 900 }}

[[models]]
match = "*"
reset_on_retrain = true

[[models.policies]]
kind = "static_threshold"
max_drift = 0.3
min_accuracy = 0.9

[[models.policies]]
kind = "drift_window"
window = 500
threshold = 0.3

[[models.policies]]
name = "errors"
kind = "adwin"
metric = "error"
delta = 0.002
action = "full"
"#,
        daemon = daemon_table(
            sb,
            "flush_interval_ms = 200\nmax_line_bytes = 65536\nmax_models = 10000"
        ),
        full = toml_path(&full),
        fine = toml_path(&fine),
    )
}

fn check(sb: &Sandbox, text: &str) -> std::process::Output {
    let f = sb.write("check.toml", text);
    sb.run(&["check-config", f.to_str().unwrap()])
}

#[track_caller]
fn assert_invalid(sb: &Sandbox, text: &str, must_mention: &[&str]) -> String {
    let o = check(sb, text);
    assert_eq!(
        o.status.code(),
        Some(1),
        "check-config must exit 1 on:\n{text}\n{}",
        out_text(&o)
    );
    let all = combined(&o);
    for m in must_mention {
        assert!(
            all.contains(m),
            "check-config output does not mention {m:?}:\n{}",
            out_text(&o)
        );
    }
    all
}

#[test]
fn check_config_accepts_the_contract_example() {
    let sb = Sandbox::new();
    let text = contract_example(&sb);
    let o = check(&sb, &text);
    assert_eq!(o.status.code(), Some(0), "{}", out_text(&o));
    assert!(
        !stdout(&o).trim().is_empty(),
        "check-config printed no summary: {}",
        out_text(&o)
    );
    // validating writes nothing
    assert!(!sb.path("ingest.sock").exists());
    assert!(!sb.path("control.sock").exists());
}

#[test]
fn check_config_accepts_every_policy_kind_with_river_parameter_names() {
    let sb = Sandbox::new();
    let body = r#"
[hooks]
dry_run = true
retry_backoff_s = 5
full = { command = ["/bin/true"], timeout_s = 60 }
fine_tune = { command = ["/bin/true"], timeout_s = 60 }

[[models]]
match = "fraud-*"
reset_on_retrain = false

[[models.policies]]
kind = "adwin"
name = "a1"
metric = "error"
action = "full"
delta = 0.002
clock = 32
max_buckets = 5
min_window_length = 5
grace_period = 10

[[models.policies]]
kind = "page_hinkley"
name = "ph"
metric = "value"
action = "fine_tune"
min_instances = 30
delta = 0.005
threshold = 50.0
alpha = 0.9999
mode = "both"

[[models.policies]]
kind = "kswin"
name = "ks"
metric = "latency_ms"
action = "full"
alpha = 0.005
window_size = 100
stat_size = 30
seed = 42

[[models.policies]]
kind = "ddm"
name = "ddm"
metric = "error"
action = "full"
warm_start = 30
warning_threshold = 2.0
drift_threshold = 3.0

[[models.policies]]
kind = "eddm"
name = "eddm"
metric = "error"
action = "fine_tune"
warm_start = 30
alpha = 0.95
beta = 0.9

[[models.policies]]
kind = "hddm_a"
name = "ha"
metric = "error"
action = "full"
drift_confidence = 0.001
warning_confidence = 0.005
two_sided_test = false

[[models.policies]]
kind = "hddm_w"
name = "hw"
metric = "error"
action = "full"
drift_confidence = 0.001
warning_confidence = 0.005
lambda_val = 0.05
two_sided_test = true

[[models]]
match = "*"

[[models.policies]]
kind = "adwin"
metric = "error"
action = "full"

[[models.policies]]
kind = "page_hinkley"
metric = "value"
action = "full"

[[models.policies]]
kind = "kswin"
metric = "value"
action = "full"

[[models.policies]]
kind = "ddm"
metric = "error"
action = "full"

[[models.policies]]
kind = "eddm"
metric = "error"
action = "full"

[[models.policies]]
kind = "hddm_a"
metric = "error"
action = "full"

[[models.policies]]
kind = "hddm_w"
metric = "error"
action = "full"

[[models.policies]]
kind = "cusum"
metric = "drift_score"
action = "full"

[[models.policies]]
kind = "drift_window"
window = 50
threshold = 0.2

[[models.policies]]
kind = "static_threshold"
max_drift = 0.5
min_accuracy = 0.8
"#;
    let text = format!("{}\n{body}", daemon_table(&sb, "log_level = \"info\""));
    let o = check(&sb, &text);
    assert_eq!(o.status.code(), Some(0), "{}", out_text(&o));
}

#[test]
fn check_config_reports_an_unknown_key_with_its_path() {
    let sb = Sandbox::new();
    let text = contract_example(&sb).replace("max_models = 10000", "max_modles = 10000");
    assert_invalid(&sb, &text, &["daemon.max_modles"]);
}

#[test]
fn check_config_reports_every_error() {
    let sb = Sandbox::new();
    let text = contract_example(&sb)
        .replace("max_models = 10000", "max_modles = 10000")
        .replace("cooldown_s = 3600", "cooldwn_s = 3600")
        .replace("threshold = 0.3", "treshold = 0.3")
        .replace("delta = 0.002", "deltaa = 0.002");
    let all = assert_invalid(
        &sb,
        &text,
        &["daemon.max_modles", "hooks.cooldwn_s", "treshold", "deltaa"],
    );
    assert!(
        all.contains("models"),
        "nested errors need their path under models:\n{all}"
    );
}

#[test]
fn check_config_rejects_unknown_tables_and_nested_keys() {
    let sb = Sandbox::new();
    let base = contract_example(&sb);
    assert_invalid(&sb, &format!("{base}\n[extras]\nfoo = 1\n"), &["extras"]);
    let text = base.replace("timeout_s = 900 }", "timeout_s = 900, shell = true }");
    assert_invalid(&sb, &text, &["hooks.fine_tune", "shell"]);
    let text = base.replace(
        "reset_on_retrain = true",
        "reset_on_retrain = true\nmatches = \"x*\"",
    );
    assert_invalid(&sb, &text, &["matches"]);
}

#[test]
fn check_config_rejects_wrong_types_and_values() {
    let sb = Sandbox::new();
    let base = contract_example(&sb);
    assert_invalid(
        &sb,
        &base.replace("max_models = 10000", "max_models = \"many\""),
        &["daemon.max_models"],
    );
    assert_invalid(
        &sb,
        &base.replace("kind = \"adwin\"", "kind = \"magic\""),
        &["magic"],
    );
    assert_invalid(
        &sb,
        &base.replace("action = \"full\"", "action = \"reboot\""),
        &["reboot"],
    );
}

#[test]
fn check_config_rejects_toml_syntax_errors_and_missing_files() {
    let sb = Sandbox::new();
    let o = check(&sb, "[daemon\nsocket = ");
    assert_eq!(o.status.code(), Some(1), "{}", out_text(&o));
    assert!(!combined(&o).trim().is_empty());
    let missing = sb.path("does-not-exist.toml");
    let o = sb.run(&["check-config", missing.to_str().unwrap()]);
    assert!(!o.status.success(), "{}", out_text(&o));
}

#[test]
fn daemon_refuses_to_start_on_an_invalid_config() {
    let sb = Sandbox::new();
    let text = contract_example(&sb).replace("max_models = 10000", "max_modles = 10000");
    let f = sb.write("bad.toml", &text);
    let o = sb.run(&["daemon", "--config", f.to_str().unwrap()]);
    assert!(
        !o.status.success(),
        "daemon started on an invalid config: {}",
        out_text(&o)
    );
    assert!(
        combined(&o).contains("max_modles"),
        "no message naming the bad key: {}",
        out_text(&o)
    );
    assert!(
        !sb.path("ingest.sock").exists(),
        "socket created by a daemon that refused to run"
    );
}

/// Without `--config`: `$CONFIGURATION_DIRECTORY/config.toml`, `$STATE_DIRECTORY`
/// and `$RUNTIME_DIRECTORY` (systemd) are used, by the daemon and the CLI alike.
#[test]
fn systemd_directories_are_used_without_config_flag() {
    let sb = Sandbox::new();
    let conf_dir = sb.path("sd/conf");
    let state_dir = sb.path("sd/state");
    let run_dir = sb.path("sd/run");
    for d in [&conf_dir, &state_dir, &run_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(conf_dir.join("config.toml"), QUIET_BODY).unwrap();
    let env = |cmd: &mut std::process::Command| {
        cmd.env("CONFIGURATION_DIRECTORY", &conf_dir)
            .env("STATE_DIRECTORY", &state_dir)
            .env("RUNTIME_DIRECTORY", &run_dir);
    };
    let mut cmd = sb.command(&["daemon"]);
    env(&mut cmd);
    let log = std::fs::File::create(sb.path("daemon.log")).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    let mut child = ChildGuard(cmd.spawn().unwrap());
    let logs = || std::fs::read_to_string(sb.path("daemon.log")).unwrap_or_default();

    let sock = run_dir.join("ingest.sock");
    let ready = poll_until(DEADLINE, || {
        if let Ok(Some(st)) = child.0.try_wait() {
            panic!("daemon exited: {st:?}\n{}", logs());
        }
        UnixStream::connect(&sock).ok()
    });
    assert!(
        ready.is_some(),
        "no ingest socket at {}\n{}",
        sock.display(),
        logs()
    );
    drop(ready);

    let mut out = sb.command(&["push", "-"]);
    env(&mut out);
    let o = run_with_timeout(
        out,
        Some(b"{\"model_id\":\"sd1\"}\n".to_vec()),
        CLI_DEADLINE,
    )
    .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "push: {}\n{}",
        out_text(&o),
        logs()
    );

    let mut models = sb.command(&["models", "--json"]);
    env(&mut models);
    let o = run_with_timeout(models, None, CLI_DEADLINE).unwrap();
    assert!(o.status.success(), "models: {}\n{}", out_text(&o), logs());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let m = v
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model_id"] == "sd1")
        .cloned();
    assert_eq!(
        m.map(|m| m["events"].clone()),
        Some(json!(1)),
        "models: {v}"
    );

    // state went to $STATE_DIRECTORY
    let n = std::fs::read_dir(&state_dir).unwrap().count();
    assert!(n > 0, "nothing written under $STATE_DIRECTORY\n{}", logs());

    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let st = poll_until(DEADLINE, || child.0.try_wait().ok().flatten());
    assert_eq!(st.and_then(|s| s.code()), Some(0), "{}", logs());
}

/// With no config and no systemd variables the daemon runs on built-in
/// defaults, with its sockets and state under the user's (sandboxed)
/// directories: "works for an unprivileged user on a fresh machine".  As root
/// the daemon rightly reads /etc/visutility/config.toml first, so when the
/// tests run as root this one runs the daemon and the CLI as `nobody`, from a
/// copy of the binary inside the sandbox (the build tree may not be readable).
#[test]
fn runs_on_defaults_in_user_directories() {
    use std::os::unix::process::CommandExt;

    let sb = Sandbox::new();
    let root = unsafe { libc::geteuid() } == 0;
    let (uid, gid) = if root {
        (65534u32, 65534u32)
    } else {
        unsafe { (libc::getuid(), libc::getgid()) }
    };
    let exe = if root {
        let copy = sb.path("bin/visutility");
        std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
        std::fs::copy(bin(), &copy).unwrap();
        for e in walk(sb.dir.path()) {
            std::os::unix::fs::lchown(&e, Some(uid), Some(gid)).unwrap();
        }
        copy
    } else {
        std::path::PathBuf::from(bin())
    };
    let command = |args: &[&str]| {
        let mut cmd = std::process::Command::new(&exe);
        sb.apply_env(&mut cmd);
        cmd.args(args).current_dir(sb.dir.path());
        if root {
            cmd.uid(uid).gid(gid);
        }
        cmd
    };

    let mut cmd = command(&["daemon"]);
    let log = std::fs::File::create(sb.path("daemon.log")).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    let mut child = ChildGuard(cmd.spawn().unwrap());
    let logs = || std::fs::read_to_string(sb.path("daemon.log")).unwrap_or_default();

    let sock = poll_until(DEADLINE, || {
        if let Ok(Some(st)) = child.0.try_wait() {
            panic!("daemon exited: {st:?}\n{}", logs());
        }
        find_named(sb.dir.path(), "ingest.sock")
            .into_iter()
            .find(|p| UnixStream::connect(p).is_ok())
    });
    let Some(sock) = sock else {
        panic!(
            "no connectable ingest.sock under the sandbox's HOME/XDG dirs\n{}",
            logs()
        );
    };
    assert!(
        sock.starts_with(sb.path("xdg/run")) || sock.starts_with(sb.path("home")),
        "{}",
        sock.display()
    );

    let o = run_with_timeout(
        command(&["push", "-"]),
        Some(b"{\"model_id\":\"u1\"}\n".to_vec()),
        CLI_DEADLINE,
    )
    .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "push without --config: {}\n{}",
        out_text(&o),
        logs()
    );
    let o = run_with_timeout(command(&["models", "--json"]), None, CLI_DEADLINE).unwrap();
    assert!(o.status.success(), "models: {}\n{}", out_text(&o), logs());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v.as_array().unwrap().iter().any(|m| m["model_id"] == "u1"),
        "{v}"
    );

    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let st = poll_until(DEADLINE, || child.0.try_wait().ok().flatten());
    assert_eq!(st.and_then(|s| s.code()), Some(0), "{}", logs());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if out[i].is_dir()
            && !out[i].is_symlink()
            && let Ok(rd) = std::fs::read_dir(&out[i])
        {
            let mut more: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
            out.append(&mut more);
        }
        i += 1;
    }
    out
}
