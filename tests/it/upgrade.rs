//! Upgrades: a store written before schema versioning (schema 0, the fixture
//! `tests/fixtures/store-schema0`) opens, is migrated to this build's schema, and keeps its
//! models, runner state and jobs; a store from a newer version (`tests/fixtures/store-schema99`)
//! is refused with a clear error and a non-zero exit, and not one byte of it changes.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::json;
use visutility::store::{SCHEMA_VERSION, Store, StoreError};

use crate::support::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// Every file under `dir` with its length and a hash of its bytes (FNV-1a).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (usize, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let bytes = fs::read(e.path()).unwrap();
                let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                    (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
                });
                out.insert(
                    e.path().strip_prefix(dir).unwrap().to_owned(),
                    (bytes.len(), hash),
                );
            }
        }
    }
    out
}

#[test]
fn a_schema_0_store_is_migrated_and_keeps_its_state() {
    let b = Daemon::builder();
    copy_dir(&fixture("store-schema0"), &b.path("state"));
    let mut d = b.start();
    d.wait_log_count("the migration to be logged", 1, |l| {
        l.contains("state store migrated") && l.contains("schema_version=1")
    });
    let a = d
        .model("legacy-a")
        .unwrap_or_else(|| d.fail("legacy-a is missing"));
    assert_eq!(a["events"], json!(7), "{a}");
    assert_eq!(a["paused"], json!(false), "{a}");
    let b2 = d
        .model("team/legacy:b")
        .unwrap_or_else(|| d.fail("team/legacy:b is missing"));
    assert_eq!(b2["events"], json!(3), "{b2}");
    assert_eq!(b2["paused"], json!(true), "{b2}");
    let jobs = d.history(None);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["state"], json!("succeeded"), "{jobs:?}");
    assert_eq!(jobs[0]["model_id"], json!("legacy-a"), "{jobs:?}");
    // It keeps counting where it was.
    let mut c = d.connect();
    c.send_line(&plain_event("legacy-a"));
    assert_flush(&c.flush(), 1, 0);
    d.sigterm();
    assert!(d.wait_exit().success());
    let s = Store::open(&d.state_dir, 100).unwrap();
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
    // The checkpoint plus the events logged after it (folded at the next start).
    let l = s.load_model_state("legacy-a").unwrap();
    assert_eq!(l.record.unwrap().events + l.events.len() as u64, 8);
}

#[test]
fn a_store_from_a_newer_version_is_refused_untouched() {
    let b = Daemon::builder();
    copy_dir(&fixture("store-schema99"), &b.path("state"));
    let before = snapshot(&b.path("state"));
    assert!(!before.is_empty());
    let mut d = b.spawn_only();
    let status = d.wait_exit();
    let logs = d.logs();
    assert!(
        !status.success(),
        "the daemon ran on a newer store: {status:?}\n{logs}"
    );
    assert!(
        logs.contains("schema version 99") && logs.contains("newer"),
        "the error does not say why:\n{logs}"
    );
    assert_eq!(
        snapshot(&d.state_dir),
        before,
        "the refused store was modified"
    );
    // The library refuses it the same way.
    match Store::open(&d.state_dir, 100) {
        Err(StoreError::TooNew { found: 99, .. }) => {}
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("a newer store was opened"),
    }
    assert_eq!(
        snapshot(&d.state_dir),
        before,
        "the refused store was modified"
    );
    eprintln!(
        "upgrade: newer store refused with {status:?}; {} files unchanged",
        before.len()
    );
}
