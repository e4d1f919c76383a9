//! Issue 12, item 6: `check-config` reports what would fail later (hook programs, dead rules,
//! metric names), every error in one run and on one line with its key path, a did-you-mean
//! for misspelt keys, `--json` for tools, and `--config FILE` as the file (item 10).

use serde_json::{Value, json};

use crate::support::*;

fn check(sb: &Sandbox, text: &str, extra: &[&str]) -> (std::process::Output, String) {
    let f = sb.write("check.toml", text);
    let f = f.to_str().unwrap().to_owned();
    let mut args = vec!["check-config", f.as_str()];
    args.extend_from_slice(extra);
    (sb.run(&args), f)
}

/// Every line of a text report is `FILE: path: message`, `warning: FILE: ...`, a summary line
/// (before the first error) or the closing count.
#[track_caller]
fn assert_one_line_each(o: &std::process::Output, file: &str, errors: usize) {
    let text = stdout(o);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.last().copied(),
        Some(format!("{errors} error(s)").as_str()),
        "{}",
        out_text(o)
    );
    let reported = lines
        .iter()
        .filter(|l| l.starts_with(&format!("{file}: ")))
        .count();
    assert_eq!(reported, errors, "{}", out_text(o));
}

#[test]
fn hook_programs_that_cannot_run_are_errors_and_a_name_not_on_path_a_warning() {
    let sb = Sandbox::new();
    let plain = sb.write("hooks/plain.sh", "#!/bin/sh\nexit 0\n");
    let bin = sb.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let text = format!(
        "[hooks]\nenv = {{ PATH = {} }}\nfull = {{ command = [{}] }}\nfine_tune = {{ command = [{}] }}\nescalate = {{ command = [\"retrain-not-installed\"] }}\n",
        toml_path(&bin),
        toml_path(&sb.path("hooks/missing")),
        toml_path(&plain),
    );
    let (o, f) = check(&sb, &text, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", out_text(&o));
    let out = stdout(&o);
    assert!(
        out.contains(&format!(
            "{f}: hooks.full.command: {}: No such file",
            sb.path("hooks/missing").display()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{f}: hooks.fine_tune.command: {} is not executable (mode 644)",
            plain.display()
        )) && out.contains("chmod +x"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "warning: {f}: hooks.escalate.command: \"retrain-not-installed\" is not found on the hook's PATH"
        )),
        "{out}"
    );
    assert_one_line_each(&o, &f, 2);

    // The bare name alone is only a warning: exit 0.
    let text = format!(
        "[hooks]\nenv = {{ PATH = {} }}\nfull = {{ command = [\"retrain-not-installed\"] }}\n",
        toml_path(&bin)
    );
    let (o, _) = check(&sb, &text, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", out_text(&o));
    assert!(
        stdout(&o).contains("warning: ") && stdout(&o).ends_with("ok\n"),
        "{}",
        out_text(&o)
    );
}

/// The daemon itself still starts with a hook program that is not there yet (it is looked up
/// again before each run); it logs the problem with its key path.
#[test]
fn the_daemon_starts_with_a_missing_hook_program_and_logs_it() {
    let b = Daemon::builder();
    let missing = b.path("hooks/later");
    let d = b
        .body(format!(
            "[hooks]\nfull = {{ command = [{}], timeout_s = 5 }}\n",
            toml_path(&missing)
        ))
        .start();
    d.wait_for("the missing hook logged", || {
        d.logs().contains("hooks.full.command").then_some(())
    });
}

#[test]
fn a_rule_shadowed_by_an_earlier_one_is_warned() {
    let sb = Sandbox::new();
    let text = "[[models]]\nmatch = \"*\"\n[[models]]\nmatch = \"fraud-*\"\n[[models.policies]]\nkind = \"adwin\"\n";
    let (o, f) = check(&sb, text, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", out_text(&o));
    let out = stdout(&o);
    assert!(
        out.contains(&format!(
            "warning: {f}: models[1].match: this rule is never used: every id \"fraud-*\" matches is matched first by models[0] (match = \"*\")"
        )),
        "{out}"
    );
    // The other way round both rules are used.
    let text = "[[models]]\nmatch = \"fraud-*\"\n[[models]]\nmatch = \"*\"\n";
    let (o, _) = check(&sb, text, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", out_text(&o));
    assert!(!stdout(&o).contains("warning"), "{}", out_text(&o));
}

#[test]
fn metric_names_are_validated_and_the_summary_names_each_policys_metric() {
    let sb = Sandbox::new();
    let text =
        "[[models]]\n[[models.policies]]\nkind = \"drift_window\"\nmetric = \"bad metric!\"\n";
    let (o, f) = check(&sb, text, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", out_text(&o));
    assert!(
        stdout(&o).contains(&format!(
            "{f}: models[0].policies[0].metric: metric name \"bad metric!\" has invalid character ' '"
        )),
        "{}",
        out_text(&o)
    );
    assert_one_line_each(&o, &f, 1);

    let text = "[[models]]\nmatch = \"fraud-*\"\n[[models.policies]]\nname = \"slow\"\nkind = \"static_threshold\"\nmetric = \"latency_ms\"\nmax = 50\n[[models.policies]]\nkind = \"static_threshold\"\nmax_drift = 0.3\n";
    let (o, _) = check(&sb, text, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", out_text(&o));
    assert!(
        stdout(&o).contains(
            "models \"fraud-*\": slow (static_threshold on latency_ms), static_threshold (static_threshold on drift_score)"
        ),
        "{}",
        out_text(&o)
    );
}

/// CUSUM with four bad values took four runs: now one, each error with its key path.
#[test]
fn every_bad_detector_parameter_is_reported_in_one_run() {
    let sb = Sandbox::new();
    let text = "[[models]]\n[[models.policies]]\nkind = \"cusum\"\nk = -1\nh = 0\nsigma = \"one\"\nwarm_start = 1\n";
    let (o, f) = check(&sb, text, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", out_text(&o));
    let out = stdout(&o);
    for line in [
        "models[0].policies[0].sigma: expected a number, got string \"one\"",
        "models[0].policies[0].k: must be finite and >= 0, got -1",
        "models[0].policies[0].h: must be finite and > 0, got 0",
        "models[0].policies[0].warm_start: must be at least 2 to estimate sigma, got 1",
    ] {
        assert!(out.contains(&format!("{f}: {line}\n")), "{line}:\n{out}");
    }
    assert_one_line_each(&o, &f, 4);
}

#[test]
fn unknown_keys_get_a_did_you_mean_and_every_error_is_one_line() {
    let sb = Sandbox::new();
    let text = "[deamon]\n[hooks]\ncooldwn_s = 5\n[[models]]\n[[models.policies]]\nkind = \"drift_window\"\ntreshold = 0.3\n[[models.policies]]\nkind = \"page_hinkley\"\nmode = \"sideways\"\ndetla = 0.1\n";
    let (o, f) = check(&sb, text, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", out_text(&o));
    let out = stdout(&o);
    for line in [
        "deamon: unknown key; did you mean \"daemon\"?",
        "hooks.cooldwn_s: unknown key; did you mean \"cooldown_s\"?",
        "models[0].policies[0].treshold: unknown key; did you mean \"threshold\"?",
        "models[0].policies[1].detla: unknown key; did you mean \"delta\"?",
        "models[0].policies[1].mode: unknown variant `sideways`",
    ] {
        assert!(out.contains(&format!("{f}: {line}")), "{line}:\n{out}");
    }
    assert_one_line_each(&o, &f, 5);

    // A TOML syntax error: one line, with its line and column.
    let (o, f) = check(&sb, "[daemon]\nmax_models = 3\nsocket = = 1\n", &[]);
    assert_eq!(o.status.code(), Some(1), "{}", out_text(&o));
    assert!(
        stdout(&o).starts_with(&format!("{f}: invalid TOML at line 3, column ")),
        "{}",
        out_text(&o)
    );
    assert_one_line_each(&o, &f, 1);
}

#[test]
fn json_output_for_tools() {
    let sb = Sandbox::new();
    let text = "[[models]]\nmatch = \"*\"\n[[models.policies]]\nkind = \"adwin\"\nmetric = \"error\"\ndelta = 2\n[[models]]\nmatch = \"x-*\"\n";
    let (o, _) = check(&sb, text, &["--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", out_text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(v["ok"], json!(false));
    assert_eq!(
        v["errors"],
        json!([{"path": "models[0].policies[0].delta", "message": "must be in (0, 1), got 2"}])
    );
    assert_eq!(v["warnings"], json!([]), "warnings need a valid config");
    assert_eq!(v["summary"], Value::Null);

    let text = text.replace("delta = 2", "delta = 0.002");
    let (o, f) = check(&sb, &text, &["--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", out_text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(v["ok"], json!(true));
    assert_eq!(v["errors"], json!([]));
    assert_eq!(v["warnings"][0]["path"], json!("models[1].match"), "{v}");
    let s = &v["summary"];
    assert_eq!(s["config"], json!(f));
    assert_eq!(s["hooks"]["full"], Value::Null);
    assert_eq!(
        s["models"],
        json!([
            {"match": "*", "policies": [{"name": "adwin", "kind": "adwin", "metrics": ["error"]}]},
            {"match": "x-*", "policies": []},
        ])
    );

    // A file that cannot be read is an error like any other.
    let missing = sb.path("missing.toml");
    let o = sb.run(&["check-config", "--json", missing.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", out_text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("cannot read config")),
        "{v}"
    );
}

/// Item 10: `check-config --config F` printed a usage line; both spellings name the file.
#[test]
fn config_flag_names_the_file_to_check() {
    let sb = Sandbox::new();
    let f = sb.write("c.toml", "[[models]]\nmatch = \"*\"\n");
    let f = f.to_str().unwrap();
    for args in [
        ["check-config", "--config", f],
        ["--config", f, "check-config"],
    ] {
        let o = sb.run(&args);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", out_text(&o));
        assert!(
            stdout(&o).starts_with(&format!("config: {f}\n")),
            "{args:?}: {}",
            out_text(&o)
        );
    }
    // Both: FILE is the one checked (tools pass their --config along to every command).
    let bad = sb.write("bad.toml", "[deamon]\n");
    let o = sb.run(&["check-config", bad.to_str().unwrap(), "--config", f]);
    assert_eq!(o.status.code(), Some(1), "{}", out_text(&o));
    assert!(stdout(&o).contains("deamon"), "{}", out_text(&o));
}
