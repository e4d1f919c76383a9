//! Receipts and operator rollbacks (issue 19's manual part, contract section 7): a retrain
//! hook's receipt is kept with its job; `visutility rollback MODEL` runs the rollback hook for
//! the latest succeeded retrain that has a receipt, exempt from cooldown, then the escalate
//! hook once with cause `rollback`; it refuses clearly when there is nothing to roll back.

use serde_json::Value;

use crate::support::*;

/// A retrain hook that writes `receipt` to `$VISUTILITY_RECEIPT` (when not empty).
fn retrain_hook(b: &DaemonBuilder, receipt: &str) -> String {
    let script = b.write_script(
        "retrain",
        &format!(
            "#!/bin/sh\nset -e\ncat > /dev/null\nif [ -n {r} ]; then printf '%s' {r} > \"$VISUTILITY_RECEIPT\"; fi\nexit 0\n",
            r = sh_quote(receipt)
        ),
    );
    toml_str(script.display().to_string())
}

fn config(full: &str, rollback: Option<&Hook>, escalate: &Hook) -> String {
    let rollback = rollback
        .map(|h| {
            format!(
                "rollback = {{ command = {}, timeout_s = 60 }}\n",
                h.command_toml(&[])
            )
        })
        .unwrap_or_default();
    format!(
        "[hooks]\ncooldown_s = 3600\nretries = 0\nfull = {{ command = [{full}], timeout_s = 60 }}\n{rollback}\
         escalate = {{ command = {}, timeout_s = 60 }}\n\
         [[models]]\nmatch = \"*\"\nreset_on_retrain = false\n\
         [[models.policies]]\nname = \"limits\"\nkind = \"static_threshold\"\nmax_drift = 0.3\nmin_accuracy = 0.0\n",
        escalate.command_toml(&[])
    )
}

fn retrained(d: &Daemon, model: &str) -> Value {
    d.push_events(&[drift_event(model, 0.9, 1)]);
    d.wait_job(Some(model), "the retrain succeeded", |j| {
        j["action"] == "full" && j["state"] == "succeeded"
    })
}

#[test]
fn a_receipt_is_kept_and_a_rollback_runs_its_hook_then_escalates_once() {
    let b = Daemon::builder();
    let rollback = b.recording_hook("rollback", 0);
    let escalate = b.recording_hook("escalate", 0);
    let full = retrain_hook(&b, r#"{"version": "v2", "previous": "v1"}"#);
    let d = b.body(config(&full, Some(&rollback), &escalate)).start();

    let retrain = retrained(&d, "m1");
    assert_eq!(
        retrain["receipt"],
        serde_json::json!({"version": "v2", "previous": "v1"}),
        "{retrain}"
    );
    // The cooldown (3,600 s) holds decisions, not a rollback.
    let out = d.cli_ok(&["rollback", "m1"]);
    assert!(out.contains("rollback for m1"), "{out}");
    let run = &d.wait_runs(&rollback, 1)[0];
    assert_eq!(run.var("VISUTILITY_ACTION"), "rollback");
    assert_eq!(run.input["rollback_of"], retrain["job_id"], "{}", run.stdin);
    assert_eq!(run.input["receipt"]["version"], "v2", "{}", run.stdin);
    assert_eq!(run.input["probation"]["cause"], "manual", "{}", run.stdin);
    assert_eq!(run.input["model_id"], "m1");
    let job = d.wait_job(Some("m1"), "the rollback succeeded", |j| {
        j["action"] == "rollback" && j["state"] == "succeeded"
    });
    assert_eq!(job["rollback_of"], retrain["job_id"], "{job}");
    // The escalate hook hears of it once.
    let esc = d.wait_runs(&escalate, 1);
    assert_eq!(
        esc[0].input["escalation"]["cause"], "rollback",
        "{}",
        esc[0].stdin
    );
    assert_eq!(esc[0].input["escalation"]["decided_action"], "rollback");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(escalate.runs().len(), 1, "escalated more than once");
    // Rolled back already: nothing to act on.
    let again = d.cli(&["rollback", "m1"]);
    assert_eq!(again.status.code(), Some(1), "{}", out_text(&again));
    let text = out_text(&again);
    assert!(
        text.contains("nothing to roll back for model m1") && text.contains("rolled back already"),
        "{text}"
    );
    assert_eq!(rollback.runs().len(), 1);
}

#[test]
fn rollback_refuses_without_a_receipt_and_for_an_unknown_model() {
    let b = Daemon::builder();
    let rollback = b.recording_hook("rollback", 0);
    let escalate = b.recording_hook("escalate", 0);
    let full = retrain_hook(&b, "");
    let d = b.body(config(&full, Some(&rollback), &escalate)).start();
    let retrain = retrained(&d, "m1");
    assert!(retrain.get("receipt").is_none(), "{retrain}");
    let o = d.cli(&["rollback", "m1"]);
    assert_eq!(o.status.code(), Some(1), "{}", out_text(&o));
    assert!(out_text(&o).contains("left a receipt"), "{}", out_text(&o));
    let o = d.cli(&["rollback", "never-seen"]);
    assert_eq!(o.status.code(), Some(1), "{}", out_text(&o));
    assert!(rollback.runs().is_empty() && escalate.runs().is_empty());
}

#[test]
fn a_bad_receipt_is_noted_and_not_kept() {
    let b = Daemon::builder();
    let escalate = b.recording_hook("escalate", 0);
    let full = retrain_hook(&b, "[1, 2]");
    let d = b.body(config(&full, None, &escalate)).start();
    let retrain = retrained(&d, "m1");
    assert!(retrain.get("receipt").is_none(), "{retrain}");
    assert!(
        retrain["note"]
            .as_str()
            .unwrap()
            .contains("receipt ignored: not a JSON object"),
        "{retrain}"
    );
}

#[test]
fn without_a_rollback_hook_the_rollback_is_recorded_and_escalated() {
    let b = Daemon::builder();
    let escalate = b.recording_hook("escalate", 0);
    let full = retrain_hook(&b, r#"{"version": "v2"}"#);
    let d = b.body(config(&full, None, &escalate)).start();
    retrained(&d, "m1");
    let out = d.cli_ok(&["rollback", "m1"]);
    assert!(out.contains("rollback for m1"), "{out}");
    let job = d.wait_job(Some("m1"), "the rollback recorded", |j| {
        j["action"] == "rollback"
    });
    assert_eq!(job["state"], "skipped", "{job}");
    assert!(
        job["note"].as_str().unwrap().contains("no rollback hook"),
        "{job}"
    );
    let esc = d.wait_runs(&escalate, 1);
    assert_eq!(esc[0].input["escalation"]["cause"], "rollback");
    assert!(
        esc[0].input["reason"]
            .as_str()
            .unwrap()
            .contains("no rollback hook is configured"),
        "{}",
        esc[0].stdin
    );
}

#[test]
fn check_config_accepts_the_rollback_and_promote_hooks_and_says_promote_needs_a_probation() {
    let sb = Sandbox::new();
    let hook = sb.write_script("h", "#!/bin/sh\nexit 0\n");
    let cfg = sb.write(
        "c.toml",
        &format!(
            "[daemon]\nallow_insecure_modes = true\n[hooks]\nrollback = {{ command = [{h}], timeout_s = 60 }}\npromote = {{ command = [{h}], timeout_s = 60 }}\n",
            h = toml_str(hook.display().to_string())
        ),
    );
    let o = sb.run(&["check-config", cfg.to_str().unwrap()]);
    let text = out_text(&o);
    assert!(text.contains("hook rollback:"), "{text}");
    assert!(text.contains("hooks.promote"), "{text}");
    assert!(text.contains("promote hook never runs"), "{text}");
    assert!(
        text.contains("no model rule has a [models.probation]"),
        "{text}"
    );
    // With a rule that has a probation it runs: no warning.
    let with_probation = std::fs::read_to_string(&cfg).unwrap()
        + "[[models]]\nmatch = \"*\"\n[models.probation]\nmetric = \"accuracy\"\n";
    let cfg = sb.write("c2.toml", &with_probation);
    let o = sb.run(&["check-config", cfg.to_str().unwrap()]);
    let text = out_text(&o);
    assert!(o.status.success(), "{text}");
    assert!(!text.contains("hooks.promote"), "{text}");
}

/// The shipped example hooks (systemd/hooks/retrain-versioned.sh and rollback-symlink.sh):
/// a retrain makes a new version directory and switches `current` to it, leaving a receipt;
/// `visutility rollback` switches `current` back to the receipt's `previous`.
#[test]
fn the_example_hooks_switch_a_symlink_forth_and_back() {
    let b = Daemon::builder();
    let root = b.path("models");
    let model = root.join("m1");
    std::fs::create_dir_all(model.join("versions/v0")).unwrap();
    std::fs::write(model.join("versions/v0/weights"), "v0").unwrap();
    std::os::unix::fs::symlink("versions/v0", model.join("current")).unwrap();
    let train = b.write_script(
        "train",
        "#!/bin/sh\nset -eu\nin=; out=\nwhile [ $# -gt 0 ]; do case $1 in --input) in=$2; shift;; --output) out=$2; shift;; esac; shift; done\ncat \"$in/weights\" > \"$out/weights\"\necho '+trained' >> \"$out/weights\"\n",
    );
    let escalate = b.recording_hook("escalate", 0);
    let hooks = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/hooks");
    let body = format!(
        "[hooks]\ncooldown_s = 3600\nretries = 0\n\
         env = {{ MODEL_ROOT = {root}, TRAIN_CMD = {train} }}\n\
         full = {{ command = [{full}], timeout_s = 60 }}\n\
         rollback = {{ command = [{rollback}], timeout_s = 60 }}\n\
         escalate = {{ command = {esc}, timeout_s = 60 }}\n\
         [[models]]\nmatch = \"*\"\nreset_on_retrain = false\n\
         [[models.policies]]\nname = \"limits\"\nkind = \"static_threshold\"\nmax_drift = 0.3\nmin_accuracy = 0.0\n",
        root = toml_str(root.display().to_string()),
        train = toml_str(train.display().to_string()),
        full = toml_str(hooks.join("retrain-versioned.sh").display().to_string()),
        rollback = toml_str(hooks.join("rollback-symlink.sh").display().to_string()),
        esc = escalate.command_toml(&[]),
    );
    let d = b.body(body).start();
    let retrain = retrained(&d, "m1");
    let version = format!("v{}", retrain["job_id"]);
    assert_eq!(
        retrain["receipt"],
        serde_json::json!({"version": version, "previous": "v0"}),
        "{retrain}\n{}",
        d.logs()
    );
    let link = || std::fs::read_link(model.join("current")).unwrap();
    assert_eq!(
        link(),
        std::path::PathBuf::from(format!("versions/{version}"))
    );
    assert_eq!(
        std::fs::read_to_string(model.join("current/weights")).unwrap(),
        "v0+trained\n"
    );
    d.cli_ok(&["rollback", "m1"]);
    d.wait_job(Some("m1"), "the rollback succeeded", |j| {
        j["action"] == "rollback" && j["state"] == "succeeded"
    });
    assert_eq!(link(), std::path::PathBuf::from("versions/v0"));
    assert_eq!(
        std::fs::read_to_string(model.join("current/weights")).unwrap(),
        "v0"
    );
    d.wait_runs(&escalate, 1);
}
