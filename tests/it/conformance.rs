//! Conformance with River 0.26.1: every run of every stream in `tests/fixtures/conformance/`
//! replayed through our detectors. Every detector must give River's drift and warning indices
//! exactly. KSWIN draws random subsamples; with River's seed it matches exactly too (our KSWIN
//! reproduces CPython's generator), and its detection quality is checked on its own as well
//! (every change River found is found, and no more false alarms than River's), which is the
//! promise that holds for any seed.
//! Also: a detector persisted and restored mid-stream (through the store's record encoding)
//! gives the same signals as one that ran through.

use std::path::PathBuf;

use serde_json::Value;
use visutility::policy::detect::{Detector, DetectorParams, Signal, kind_from_river};
use visutility::store::{decode_record, encode_record};

pub struct Run {
    pub detector: String,
    pub label: String,
    pub params: DetectorParams,
    pub drift: Vec<usize>,
    pub warning: Vec<usize>,
}

pub struct Stream {
    pub name: String,
    pub values: Vec<f64>,
    pub change_points: Vec<usize>,
    pub max_delay: usize,
    pub runs: Vec<Run>,
}

fn indices(v: &Value) -> Vec<usize> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_u64)
                .map(|x| x as usize)
                .collect()
        })
        .unwrap_or_default()
}

pub fn load() -> Vec<Stream> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/conformance");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures dir")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 11,
        "expected the conformance streams in {}",
        dir.display()
    );
    paths
        .iter()
        .map(|p| {
            let doc: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
            let name = doc["name"].as_str().unwrap().to_owned();
            let runs = doc["runs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    let detector = r["detector"].as_str().unwrap().to_owned();
                    let kind = kind_from_river(&detector)
                        .unwrap_or_else(|| panic!("unknown detector {detector}"));
                    let mut params = r["params"].clone();
                    // River-only arguments we do not take (KSWIN's pre-filled `window`).
                    if let Some(o) = params.as_object_mut() {
                        o.retain(|_, v| !v.is_null());
                    }
                    let params = DetectorParams::parse(kind, params)
                        .unwrap_or_else(|e| panic!("{name}/{detector}: {e}"))
                        .unwrap();
                    Run {
                        label: r["label"].as_str().unwrap_or("").to_owned(),
                        detector,
                        params,
                        drift: indices(&r["drift_indices"]),
                        warning: indices(&r["warning_indices"]),
                    }
                })
                .collect();
            Stream {
                values: doc["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect(),
                change_points: indices(&doc["change_points"]),
                max_delay: doc["max_delay"].as_u64().unwrap_or(1000) as usize,
                name,
                runs,
            }
        })
        .collect()
}

/// Our drift and warning indices on `values`.
pub fn replay(det: &mut Detector, values: &[f64], from: usize) -> (Vec<usize>, Vec<usize>) {
    let (mut drift, mut warning) = (Vec::new(), Vec::new());
    for (i, &x) in values.iter().enumerate() {
        if det.update(x) == Signal::Drift {
            drift.push(i + from);
        }
        if det.warning_detected() {
            warning.push(i + from);
        }
    }
    (drift, warning)
}

/// (true changes detected, false alarms) as the scorer counts them.
fn quality(drift: &[usize], cps: &[usize], n: usize, w: usize) -> (usize, usize) {
    let windows: Vec<(usize, usize)> = cps
        .iter()
        .enumerate()
        .map(|(j, &c)| (c, (c + w).min(*cps.get(j + 1).unwrap_or(&n)).min(n)))
        .collect();
    let detected = windows
        .iter()
        .filter(|(a, b)| drift.iter().any(|d| d >= a && d < b))
        .count();
    let false_alarms = drift
        .iter()
        .filter(|&&d| !windows.iter().any(|&(a, b)| d >= a && d < b))
        .count();
    (detected, false_alarms)
}

#[test]
fn every_run_matches_river_exactly() {
    let mut checked = 0;
    let mut failures = Vec::new();
    for s in load() {
        for r in &s.runs {
            let mut det = r.params.build();
            let (drift, warning) = replay(&mut det, &s.values, 0);
            checked += 1;
            if drift != r.drift || warning != r.warning {
                failures.push(format!(
                    "{}/{}/{}: drift ours {:?} river {:?}; warnings ours {} river {}",
                    s.name,
                    r.detector,
                    r.label,
                    &drift[..drift.len().min(8)],
                    &r.drift[..r.drift.len().min(8)],
                    warning.len(),
                    r.warning.len()
                ));
            }
        }
    }
    assert!(checked >= 90, "only {checked} runs checked");
    assert!(
        failures.is_empty(),
        "{} of {checked} runs differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn kswin_finds_what_river_finds_without_more_false_alarms() {
    let mut checked = 0;
    for s in load() {
        for r in s.runs.iter().filter(|r| r.detector == "KSWIN") {
            let mut det = r.params.build();
            let (drift, _) = replay(&mut det, &s.values, 0);
            let n = s.values.len();
            assert!(
                !drift.is_empty() || r.drift.is_empty(),
                "{}/{}: KSWIN never fired",
                s.name,
                r.label
            );
            let (ours_tp, ours_fa) = quality(&drift, &s.change_points, n, s.max_delay);
            let (river_tp, river_fa) = quality(&r.drift, &s.change_points, n, s.max_delay);
            assert!(
                ours_tp >= river_tp,
                "{}/{}: ours found {ours_tp} changes, River {river_tp}",
                s.name,
                r.label
            );
            assert!(
                ours_fa <= river_fa,
                "{}/{}: ours {ours_fa} false alarms, River {river_fa}",
                s.name,
                r.label
            );
            checked += 1;
        }
    }
    assert!(checked >= 12, "only {checked} KSWIN runs checked");
}

#[test]
fn detectors_restored_mid_stream_continue_exactly() {
    let mut checked = 0;
    for s in load() {
        for r in &s.runs {
            let mut whole = r.params.build();
            let expected = replay(&mut whole, &s.values, 0);
            let n = s.values.len();
            // Cut at a few fixed points and right after the first drift (a pending reset
            // must survive the cut too).
            let mut cuts = vec![1, n / 7, n / 3, n / 2, n - 1];
            if let Some(&d) = expected.0.first() {
                cuts.push(d + 1);
            }
            for cut in cuts {
                let mut det = r.params.build();
                let first = replay(&mut det, &s.values[..cut], 0);
                let bytes = encode_record(&det).unwrap();
                let mut restored: Detector = decode_record(&bytes).unwrap();
                assert_eq!(
                    restored, det,
                    "{}/{}: state differs after a round trip",
                    s.name, r.detector
                );
                assert_eq!(
                    encode_record(&restored).unwrap(),
                    bytes,
                    "re-encoding is not byte-exact"
                );
                let rest = replay(&mut restored, &s.values[cut..], cut);
                let drift: Vec<usize> = first.0.into_iter().chain(rest.0).collect();
                let warning: Vec<usize> = first.1.into_iter().chain(rest.1).collect();
                assert_eq!(
                    (drift, warning),
                    expected,
                    "{}/{}/{} cut at {cut}",
                    s.name,
                    r.detector,
                    r.label
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 500, "only {checked} cuts checked");
}
