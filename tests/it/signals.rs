//! SIGTERM / SIGINT (clean exit) and SIGHUP (config reload).

use std::os::unix::process::ExitStatusExt;

use serde_json::json;

use crate::support::*;

fn threshold_body(hook: &Hook, max_drift: f64, extra_policy_line: &str) -> String {
    hooks_body(
        hook,
        &format!(
            "[[models.policies]]\nname = \"limit\"\nkind = \"static_threshold\"\nmax_drift = {max_drift:?}\nmin_accuracy = 0.0\n{extra_policy_line}\n"
        ),
    )
}

fn exits_cleanly_on(sig: i32) {
    let mut d = Daemon::start_default();
    d.push_events(&[plain_event("m1"), plain_event("m2")]);
    // an idle client and a client with a half-sent line must not hold up the exit
    let _idle = d.connect();
    let mut partial = d.connect();
    partial.send_raw(br#"{"model_id":"m1""#);
    // and one with unflushed complete events
    let mut busy = d.connect();
    busy.send_lines(&[plain_event("m1"), plain_event("m1")]);

    d.signal(sig);
    let st = d.wait_exit();
    assert_eq!(
        st.code(),
        Some(0),
        "exit status after signal {sig}: {st:?} (signal {:?})\n{}",
        st.signal(),
        d.logs()
    );
    assert!(
        !d.socket.exists(),
        "ingest socket file {} still exists after exit",
        d.socket.display()
    );

    d.restart();
    assert_eq!(d.events_of("m2"), 1);
    let m1 = d.events_of("m1");
    assert!((1..=3).contains(&m1), "m1 events after restart: {m1}");
}

#[test]
fn sigterm_exits_zero_and_removes_the_socket() {
    exits_cleanly_on(libc::SIGTERM);
}

#[test]
fn sigint_exits_zero_and_removes_the_socket() {
    exits_cleanly_on(libc::SIGINT);
}

#[test]
fn sighup_with_a_valid_config_applies_a_new_threshold() {
    let b = Daemon::builder();
    let hook = b.recording_hook("hook", 0);
    let b = b.body(threshold_body(&hook, 0.9, ""));
    let mut d = b.start();

    // 0.5 is below 0.9: no decision
    let mut c = d.connect();
    for seq in 1..=3 {
        c.send_line(&drift_event("m1", 0.5, seq));
    }
    assert_flush(&c.flush(), 3, 0);
    assert_eq!(hook.started(), 0, "fired below the threshold");

    d.write_config(&ConfigParts {
        daemon_extra: String::new(),
        body: threshold_body(&hook, 0.3, ""),
    });
    d.sighup();

    // keep sending 0.5 until the new threshold (0.3) makes it fire
    let mut seq = 3;
    let runs = d.wait_for("the reloaded threshold to fire a hook", || {
        seq += 1;
        c.send_line(&drift_event("m1", 0.5, seq));
        c.flush();
        let r = hook.runs();
        (!r.is_empty()).then_some(r)
    });
    let first = runs[0]
        .seq()
        .unwrap_or_else(|| d.fail(format!("no seq in stdin: {}", runs[0].stdin)));
    assert!(first >= 4, "an event sent before SIGHUP fired: seq {first}");
    assert!(d.is_running());
    // state survived the reload
    assert_eq!(d.events_of("m1"), seq as u64);
}

fn count_reload_errors(d: &Daemon) -> usize {
    d.log_lines()
        .iter()
        .filter(|l| {
            let l = l.to_lowercase();
            l.contains("reload") && l.contains("error")
        })
        .count()
}

#[test]
fn sighup_with_an_invalid_config_keeps_the_old_one() {
    let b = Daemon::builder();
    let hook = b.recording_hook("hook", 0);
    let good = threshold_body(&hook, 0.3, "");
    let b = b.body(good.clone());
    let mut d = b.start();
    let good_parts = ConfigParts {
        daemon_extra: String::new(),
        body: good,
    };
    let base = count_reload_errors(&d);

    // 1. TOML syntax error
    d.write_raw_config(&format!("{}\n[[models\n", d.daemon_table("")));
    d.sighup();
    d.wait_log_count(
        "a log line with 'reload' and 'error' (syntax error)",
        base + 1,
        |l| {
            let l = l.to_lowercase();
            l.contains("reload") && l.contains("error")
        },
    );
    assert!(d.is_running(), "daemon died on an invalid config");

    // 2. valid TOML, unknown key, and a threshold that would stop decisions at 0.5
    let bad = threshold_body(&hook, 0.99, "treshold_typo = 1");
    d.write_raw_config(&format!("{}\n{}", d.daemon_table(""), bad));
    d.sighup();
    d.wait_log_count(
        "a log line with 'reload' and 'error' (unknown key)",
        base + 2,
        |l| {
            let l = l.to_lowercase();
            l.contains("reload") && l.contains("error")
        },
    );
    assert!(d.is_running(), "daemon died on an invalid config");

    // old behaviour: 0.5 > 0.3 still fires
    let mut c = d.connect();
    c.send_line(&json!({"model_id": "m1", "drift_score": 0.5, "meta": {"seq": 1}}).to_string());
    assert_flush(&c.flush(), 1, 0);
    let runs = d.wait_runs(&hook, 1);
    assert_eq!(runs[0].seq(), Some(1));
    assert_eq!(runs[0].var("VISUTILITY_POLICY"), "limit");

    // restore the file so the CLI can read it; state is intact
    d.write_config(&good_parts);
    assert_eq!(d.events_of("m1"), 1);
    assert!(d.is_running());
}
