//! The operator's interface: who may use the sockets, every command's JSON, the metrics
//! exposition (read by a real parser) and its textfile, logs for journald, completions and
//! the man page.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

use prometheus_parse::{LineInfo, Scrape, Value as PromValue};
use serde_json::{Value, json};

use crate::support::*;

/// The test runs as root; these ids belong to nobody on the machine, which is fine for the
/// kernel and for SO_PEERCRED.
const GROUP: u32 = 4141;
const ALLOWED: u32 = 4242;
const STRANGER: u32 = 4343;

/// Runs the CLI as `uid`:`gid` with no supplementary groups, against `d`'s config.
fn cli_as(d: &Daemon, uid: u32, gid: u32, args: &[&str]) -> Output {
    cli_as_in(d, uid, gid, &[], args)
}

/// Runs the CLI as `uid`:`gid` with the supplementary `groups`.
fn cli_as_in(d: &Daemon, uid: u32, gid: u32, groups: &[u32], args: &[&str]) -> Output {
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

/// Lets other users reach the sandbox's sockets and read its config (the tempdir is 0700).
fn open_sandbox(d: &Daemon) {
    fs::set_permissions(d.dir(), fs::Permissions::from_mode(0o711)).unwrap();
    fs::set_permissions(&d.config_path, fs::Permissions::from_mode(0o644)).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn control_socket_serves_only_allowed_peers() {
    let d = Daemon::builder()
        .daemon_keys(&format!(
            "control_group = {GROUP}\ncontrol_allow = [\"uid:{ALLOWED}\", \"gid:{ALLOWED}\"]"
        ))
        .start();
    open_sandbox(&d);
    let meta = fs::metadata(&d.control_socket).unwrap();
    assert_eq!(meta.gid(), GROUP, "control socket group");
    assert_eq!(meta.mode() & 0o777, 0o660, "control socket mode");

    // Members of control_group are served, by primary gid or by a supplementary group (which
    // the daemon learns through SO_PEERGROUPS).
    let o = cli_as(&d, STRANGER, GROUP, &["status", "--json"]);
    assert!(o.status.success(), "group member refused: {}", out_text(&o));
    let s: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(s["version"].is_string(), "{s}");
    let o = cli_as_in(&d, STRANGER, STRANGER, &[7, GROUP], &["models", "--json"]);
    assert!(
        o.status.success(),
        "supplementary member refused: {}",
        out_text(&o)
    );

    // Mode 0660 keeps everyone else out before the daemon is even asked.
    let o = cli_as(&d, ALLOWED, ALLOWED, &["status"]);
    assert!(!o.status.success(), "{}", out_text(&o));
    assert!(stderr_of(&o).contains("cannot connect"), "{}", out_text(&o));

    // With the file open to all, the daemon's own check decides.
    chmod(&d.control_socket, 0o666);
    let o = cli_as(&d, ALLOWED, ALLOWED, &["models", "--json"]);
    assert!(o.status.success(), "listed uid refused: {}", out_text(&o));
    let o = cli_as(&d, STRANGER, ALLOWED, &["status", "--json"]);
    assert!(o.status.success(), "listed gid refused: {}", out_text(&o));

    let o = cli_as(&d, STRANGER, STRANGER, &["pause", "m1"]);
    assert!(!o.status.success(), "stranger served: {}", out_text(&o));
    let err = stderr_of(&o);
    assert!(
        err.contains("permission denied") && err.contains(&format!("uid {STRANGER}")),
        "refusal message: {err}"
    );
    d.wait_log_count("the refusal in the daemon's log", 1, |l| {
        l.contains("control request refused") && l.contains(&format!("uid={STRANGER}"))
    });
    // The refused request did nothing, and the refusal is counted.
    assert_eq!(d.status_json()["paused"], json!([]));
    let text = d.cli_ok(&["metrics"]);
    assert!(
        text.contains("visutility_control_refused_total 1\n"),
        "{text}"
    );
}

#[test]
fn ingest_allow_refuses_other_writers() {
    let d = Daemon::builder()
        .daemon_keys(&format!("ingest_allow = [\"uid:{ALLOWED}\"]"))
        .start();
    open_sandbox(&d);
    chmod(&d.socket, 0o666);
    let events = d.sb.write(
        "events.jsonl",
        &[plain_event("w1"), plain_event("w1")].join("\n"),
    );
    let events = events.to_str().unwrap();

    let o = cli_as(&d, STRANGER, STRANGER, &["push", events]);
    assert_eq!(o.status.code(), Some(1), "{}", out_text(&o));
    let refusal = json_values(&stderr_of(&o))
        .into_iter()
        .find(|v| v["error"] == "permission_denied")
        .unwrap_or_else(|| d.fail(format!("no permission_denied reply: {}", out_text(&o))));
    assert!(
        refusal["detail"]
            .as_str()
            .is_some_and(|s| s.contains("ingest_allow"))
    );
    d.wait_log_count("the refusal in the daemon's log", 1, |l| {
        l.contains("ingest connection refused") && l.contains(&format!("uid={STRANGER}"))
    });
    assert_eq!(
        d.events_of("w1"),
        0,
        "a refused writer's events were applied"
    );

    let o = cli_as(&d, ALLOWED, ALLOWED, &["push", events]);
    assert!(o.status.success(), "listed uid refused: {}", out_text(&o));
    assert_eq!(d.events_of("w1"), 2);
    // Root (this test) is always allowed.
    d.push_events(&[plain_event("w1")]);
    assert_eq!(d.events_of("w1"), 3);

    let scrape = parse_exposition(&d.cli_ok(&["metrics"]));
    assert_eq!(
        sample(
            &scrape,
            "visutility_ingest_connections_refused_total",
            &[("reason", "permission_denied")]
        ),
        Some(1.0)
    );
}

#[test]
fn every_command_answers_in_json() {
    let b = Daemon::builder();
    let hook = b.recording_hook("hook", 0);
    let cmd = hook.command_toml(&[]);
    let d = b.body(QUIET_BODY.replace(r#"["/bin/true"]"#, &cmd)).start();
    d.push_events(&[
        json!({"model_id": "j1", "drift_score": 0.25, "accuracy": 0.9}).to_string(),
        plain_event("j2"),
    ]);

    let s = d.status_json();
    for (k, check) in [
        ("version", Value::is_string as fn(&Value) -> bool),
        ("uptime_s", Value::is_f64),
        ("models", Value::is_u64),
        ("events_per_second", Value::is_f64),
        ("events_accepted", Value::is_u64),
        ("lines_rejected", Value::is_u64),
        ("jobs_running", Value::is_u64),
        ("jobs_queued", Value::is_u64),
        ("paused", Value::is_array),
        ("store_bytes", Value::is_u64),
    ] {
        assert!(check(&s[k]), "status {k}: {s}");
    }
    assert_eq!(s["models"], 2, "{s}");
    assert_eq!(s["events_accepted"], 2, "{s}");

    let t = d.cli_json(&["trigger", "j1", "full"]);
    let job_id = t["job_id"]
        .as_u64()
        .unwrap_or_else(|| d.fail(format!("trigger --json: {t}")));
    let job = d.wait_job(Some("j1"), "the triggered job succeeded", |j| {
        j["job_id"] == job_id && j["state"] == "succeeded"
    });
    for k in [
        "job_id",
        "model_id",
        "action",
        "state",
        "attempts",
        "exit_code",
        "started",
        "ended",
    ] {
        assert!(job.get(k).is_some(), "history lacks {k}: {job}");
    }
    assert_eq!(
        (
            &job["model_id"],
            &job["action"],
            &job["attempts"],
            &job["exit_code"]
        ),
        (&json!("j1"), &json!("full"), &json!(1), &json!(0))
    );

    assert_eq!(
        d.cli_json(&["pause", "j2"]),
        json!({"model_id": "j2", "paused": true})
    );
    assert_eq!(d.status_json()["paused"], json!(["j2"]));
    assert_eq!(
        d.cli_json(&["resume", "j2"]),
        json!({"model_id": "j2", "paused": false})
    );
    assert_eq!(
        d.cli_json(&["reset", "j1"]),
        json!({"model_id": "j1", "reset": true})
    );

    let models = d.models_json();
    let j1 = models
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model_id"] == "j1")
        .cloned()
        .unwrap_or_else(|| d.fail(format!("no j1 in {models}")));
    assert_eq!(j1["events"], 1);
    assert_eq!(j1["paused"], false);
    assert!(j1["last_seen"].as_f64().is_some_and(|t| t > 1.0e9), "{j1}");
    assert_eq!(j1["recent_drift"], json!([0.25]));
    assert_eq!(j1["recent_accuracy"].as_array().map(Vec::len), Some(1));
    let policies = j1["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 1, "{j1}");
    assert_eq!(policies[0]["kind"], "static_threshold");
    // Issue 13.4: the state as named numbers, its words in `summary`.
    assert!(policies[0]["state"].is_object(), "{j1}");
    assert!(policies[0]["summary"].is_string(), "{j1}");

    // The human forms of the same commands.
    let status = d.cli_ok(&["status"]);
    let keys: Vec<&str> = status
        .lines()
        .map(|l| l.split_whitespace().next().unwrap_or(""))
        .collect();
    for k in ["version", "uptime", "models", "events/s", "jobs", "store"] {
        assert!(keys.contains(&k), "status lacks {k}:\n{status}");
    }
    let value_columns: Vec<usize> = status
        .lines()
        .map(|l| {
            let key = l.split_whitespace().next().unwrap_or("");
            key.len() + l[key.len()..].len() - l[key.len()..].trim_start().len()
        })
        .collect();
    assert!(
        value_columns.windows(2).all(|w| w[0] == w[1]),
        "status values not aligned:\n{status}"
    );
    // Columns line up: in every row, the DRIFT column starts with a sparkline bar.
    let models_text = d.cli_ok(&["models"]);
    let header = models_text.lines().next().unwrap_or("");
    let drift_col = header
        .find("DRIFT")
        .map(|b| header[..b].chars().count())
        .unwrap_or_else(|| d.fail(format!("no DRIFT column:\n{models_text}")));
    let rows: Vec<&str> = models_text
        .lines()
        .filter(|l| l.starts_with("j1 ") || l.starts_with("j2 "))
        .collect();
    assert_eq!(rows.len(), 2, "{models_text}");
    let under_drift = |row: &str| row.chars().nth(drift_col).unwrap_or(' ');
    assert!(
        "▁▂▃▄▅▆▇█".contains(under_drift(rows[0])),
        "no sparkline under DRIFT for j1:\n{models_text}"
    );
    assert_eq!(
        under_drift(rows[1]),
        '-',
        "j2 reported no drift:\n{models_text}"
    );
    assert_eq!(
        d.cli_ok(&["trigger", "j2", "fine_tune"])
            .split_whitespace()
            .next(),
        Some("job")
    );
}

/// Parses the exposition with `prometheus-parse`, after checking every line is one the
/// format allows (that parser skips what it does not understand).
fn parse_exposition(text: &str) -> Scrape {
    for line in text.lines() {
        let info = LineInfo::parse(line);
        assert!(
            !matches!(info, LineInfo::Ignored | LineInfo::Empty),
            "not a valid exposition line: {line:?}\n{text}"
        );
        if let LineInfo::Sample { value, .. } = info {
            assert!(
                value.parse::<f64>().is_ok() || ["NaN", "+Inf", "-Inf"].contains(&value),
                "bad value in {line:?}"
            );
        }
    }
    assert!(
        text.ends_with('\n'),
        "the exposition must end with a newline"
    );
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("the exposition parses")
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .and_then(|s| match &s.value {
            PromValue::Counter(v) | PromValue::Gauge(v) | PromValue::Untyped(v) => Some(*v),
            _ => None,
        })
}

/// HELP and TYPE for every family, counters named `_total`, histograms cumulative.
fn check_conventions(text: &str, scrape: &Scrape) {
    let mut types = Vec::new();
    for l in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let parts: Vec<&str> = l.split(' ').collect();
        let (name, kind) = (parts[2], parts[3]);
        assert!(scrape.docs.contains_key(name), "{name} has no HELP");
        assert!(
            ["counter", "gauge", "histogram"].contains(&kind),
            "{name}: {kind}"
        );
        if kind == "counter" {
            assert!(name.ends_with("_total"), "counter {name} lacks _total");
        } else {
            assert!(!name.ends_with("_total"), "{kind} {name} ends in _total");
        }
        assert!(
            !types.iter().any(|(n, _)| n == name),
            "{name} declared twice"
        );
        types.push((name.to_owned(), kind.to_owned()));
    }
    for s in &scrape.samples {
        let declared = types.iter().any(|(n, _)| *n == s.metric)
            || types.iter().any(|(n, k)| {
                k == "histogram"
                    && ["_sum", "_count"]
                        .iter()
                        .any(|suffix| s.metric.strip_suffix(suffix) == Some(n.as_str()))
            });
        assert!(declared, "sample {} has no TYPE", s.metric);
        if let PromValue::Histogram(buckets) = &s.value {
            assert!(
                buckets
                    .windows(2)
                    .all(|w| w[0].less_than < w[1].less_than && w[0].count <= w[1].count),
                "{} buckets not monotone: {buckets:?}",
                s.metric
            );
            let last = buckets.last().expect("a histogram has buckets");
            assert!(last.less_than.is_infinite(), "no +Inf bucket");
            let count = sample(scrape, &format!("{}_count", s.metric), &[]);
            assert_eq!(Some(last.count), count, "+Inf bucket != _count");
        }
    }
}

#[test]
fn metrics_are_valid_prometheus_text() {
    let b = Daemon::builder();
    let hook = b.recording_hook("hook", 0);
    let cmd = hook.command_toml(&[]);
    let d = b
        .body(format!(
            r#"
[hooks]
cooldown_s = 3600
retries = 0
full = {{ command = {cmd}, timeout_s = 60 }}

[[models]]
match = "*"

[[models.policies]]
name = "too-much-drift"
kind = "static_threshold"
max_drift = 0.5
"#
        ))
        .start();
    let mut c = d.connect();
    c.send_lines(&[
        json!({"model_id": "mp", "drift_score": 0.1, "accuracy": 0.95}).to_string(),
        json!({"model_id": "mp", "drift_score": 0.9, "accuracy": 0.75}).to_string(),
        "{not json".to_owned(),
    ]);
    let (reply, errors) = c.flush_with_errors();
    assert_flush(&reply, 2, 1);
    assert_eq!(errors.len(), 1);
    d.wait_job(Some("mp"), "the drift's job succeeded", |j| {
        j["state"] == "succeeded"
    });

    let text = d.cli_ok(&["metrics"]);
    let scrape = parse_exposition(&text);
    check_conventions(&text, &scrape);
    let get = |name: &str, labels: &[(&str, &str)]| {
        sample(&scrape, name, labels)
            .unwrap_or_else(|| d.fail(format!("no {name}{labels:?} in\n{text}")))
    };
    assert_eq!(get("visutility_events_accepted_total", &[]), 2.0);
    assert_eq!(
        get("visutility_lines_rejected_total", &[("reason", "bad_json")]),
        1.0
    );
    assert_eq!(
        get(
            "visutility_lines_rejected_total",
            &[("reason", "bad_model_id")]
        ),
        0.0
    );
    assert_eq!(
        get("visutility_model_events_total", &[("model_id", "mp")]),
        2.0
    );
    assert_eq!(
        get("visutility_model_drift_score", &[("model_id", "mp")]),
        0.9
    );
    assert_eq!(
        get("visutility_model_accuracy", &[("model_id", "mp")]),
        0.75
    );
    assert_eq!(
        get(
            "visutility_decisions_total",
            &[
                ("model_id", "mp"),
                ("policy", "too-much-drift"),
                ("action", "full")
            ]
        ),
        1.0
    );
    assert_eq!(
        get("visutility_jobs_total", &[("outcome", "succeeded")]),
        1.0
    );
    assert_eq!(get("visutility_jobs_total", &[("outcome", "failed")]), 0.0);
    assert_eq!(get("visutility_hook_duration_seconds_count", &[]), 1.0);
    assert!(get("visutility_store_size_bytes", &[]) > 0.0);
    assert!(get("visutility_ingest_connections_total", &[]) >= 1.0);
    let hist = scrape
        .samples
        .iter()
        .find(|s| s.metric == "visutility_hook_duration_seconds")
        .unwrap_or_else(|| d.fail(format!("no hook duration histogram in\n{text}")));
    let PromValue::Histogram(buckets) = &hist.value else {
        d.fail(format!("not a histogram: {hist:?}"));
    };
    let bounds: Vec<f64> = buckets.iter().map(|b| b.less_than).collect();
    assert_eq!(
        bounds[..8],
        [1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 7200.0]
    );
}

#[test]
fn metrics_textfile_is_replaced_atomically() {
    let b = Daemon::builder();
    let dir = b.path("textfile");
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join("visutility.prom");
    let d = b
        .body(format!(
            "{QUIET_BODY}\n[metrics]\ntextfile = {}\ninterval_s = 1\n",
            toml_path(&file)
        ))
        .start();
    let first = d.wait_for("the textfile", || fs::metadata(&file).ok());
    assert_eq!(first.mode() & 0o777, 0o644, "node_exporter must read it");
    let text = fs::read_to_string(&file).unwrap();
    check_conventions(&text, &parse_exposition(&text));

    d.push_events(&[plain_event("tf"), plain_event("tf"), plain_event("tf")]);
    // Every read sees a whole exposition; the file is replaced (a new inode), not rewritten
    // in place.
    let mut inodes = vec![first.ino()];
    d.wait_for("the textfile rewritten with the new events", || {
        let text = fs::read_to_string(&file).ok()?;
        assert!(
            text.ends_with('\n') && text.contains("visutility_hook_duration_seconds_count "),
            "a partial textfile:\n{text}"
        );
        let ino = fs::metadata(&file).ok()?.ino();
        if !inodes.contains(&ino) {
            inodes.push(ino);
        }
        let scrape = parse_exposition(&text);
        (sample(&scrape, "visutility_events_accepted_total", &[]) == Some(3.0)).then_some(())
    });
    assert!(
        inodes.len() >= 2,
        "the textfile was never replaced: {inodes:?}"
    );
    let names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["visutility.prom"], "temporary files left behind");
}

#[test]
fn journald_gets_priorities_and_no_timestamps() {
    let b = Daemon::builder();
    // The harness appends the daemon's stderr to this file: its device and inode are what
    // systemd would put in JOURNAL_STREAM.
    let log = b.path("daemon.stderr.log");
    fs::write(&log, "").unwrap();
    let meta = fs::metadata(&log).unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let d = b.env("JOURNAL_STREAM", &stream).start();
    d.push_events(&[plain_event("jl")]);
    d.wait_log_count("an info line", 1, |l| l.starts_with("<6>"));
    d.wait_log_count("a debug line (log_level = debug)", 1, |l| {
        l.starts_with("<7>")
    });
    for l in d.log_lines().iter().filter(|l| !l.starts_with("====")) {
        assert!(
            ["<3>", "<4>", "<6>", "<7>"]
                .iter()
                .any(|p| l.starts_with(p)),
            "a line without a priority: {l:?}"
        );
        assert!(
            !l.chars().nth(3).is_some_and(|c| c.is_ascii_digit()),
            "a timestamp in {l:?}"
        );
    }
    d.wait_log_count("the ready line, message first", 1, |l| {
        l.starts_with("<6>ready socket=")
    });
}

#[test]
fn plain_lines_off_the_journal_and_rust_log_wins() {
    // JOURNAL_STREAM inherited from a parent but naming another stream: not the journal.
    let d = Daemon::builder()
        .env("JOURNAL_STREAM", "1:1")
        .env("RUST_LOG", "warn,visutility::daemon=info")
        .start();
    d.push_events(&[plain_event("pl")]);
    let ready = d.wait_for("the ready line", || {
        d.log_lines().into_iter().find(|l| l.contains("ready"))
    });
    assert!(
        ready.contains(" INFO ") && !ready.starts_with('<'),
        "not a plain line: {ready}"
    );
    let timestamp = ready.split(' ').next().unwrap_or("");
    assert!(
        timestamp.starts_with("20") && timestamp.ends_with('Z'),
        "no timestamp: {ready}"
    );
    // RUST_LOG overrides log_level = "debug", and its target filter holds.
    let lines = d.log_lines();
    assert!(
        !lines
            .iter()
            .any(|l| l.contains(" DEBUG ") || l.contains("starting")),
        "{lines:#?}"
    );
}

#[test]
fn completions_and_man_page_come_from_the_cli() {
    let sb = Sandbox::new();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let o = sb.run(&["completions", shell]);
        assert!(o.status.success(), "{shell}: {}", out_text(&o));
        let text = stdout(&o);
        for sub in ["status", "models", "history", "trigger", "check-config"] {
            assert!(text.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let o = sb.run(&["completions", "tcsh"]);
    assert!(!o.status.success(), "an unknown shell was accepted");

    let man = sb.run(&["manpage"]);
    assert!(man.status.success(), "{}", out_text(&man));
    let roff = stdout(&man);
    assert!(roff.contains(".TH visutility 1"), "{roff}");
    for sub in [
        "daemon",
        "push",
        "backtest",
        "check\\-config",
        "status",
        "models",
        "history",
        "trigger",
        "reset",
        "pause",
        "resume",
        "metrics",
        "completions",
        "manpage",
    ] {
        assert!(
            roff.contains(&format!("visutility\\-{sub}")),
            "man page lacks {sub}:\n{roff}"
        );
    }
    let dir = sb.path("man");
    fs::create_dir_all(&dir).unwrap();
    let o = sb.run(&["manpage", "--dir", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", out_text(&o));
    let page = fs::read_to_string(dir.join("visutility-status.1")).unwrap();
    assert!(page.contains("\\-\\-json"), "{page}");
}
