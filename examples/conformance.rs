//! Writes our detectors' output on the conformance streams in the scorer's file shape, so
//! River's and ours can be compared side by side:
//!
//! ```sh
//! cargo run --release --example conformance -- target/conformance
//! python3 tests/fixtures/conformance/score.py compare tests/fixtures/conformance target/conformance
//! ```

use std::path::PathBuf;

use serde_json::Value;
use visutility::policy::detect::{DetectorParams, Signal, kind_from_river};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "target/conformance".into()),
    );
    std::fs::create_dir_all(&out)?;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/conformance");
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        let values: Vec<f64> = doc["values"]
            .as_array()
            .ok_or("no values")?
            .iter()
            .filter_map(Value::as_f64)
            .collect();
        for run in doc["runs"].as_array_mut().ok_or("no runs")? {
            let detector = run["detector"].as_str().ok_or("no detector")?.to_owned();
            let kind = kind_from_river(&detector).ok_or("unknown detector")?;
            let mut params = run["params"].clone();
            if let Some(o) = params.as_object_mut() {
                o.retain(|_, v| !v.is_null());
            }
            let mut det = DetectorParams::parse(kind, params)?
                .ok_or("not a detector")?
                .build();
            let (mut drift, mut warning) = (Vec::new(), Vec::new());
            for (i, &x) in values.iter().enumerate() {
                if det.update(x) == Signal::Drift {
                    drift.push(i);
                }
                if det.warning_detected() {
                    warning.push(i);
                }
            }
            run["drift_indices"] = drift.into();
            run["warning_indices"] = warning.into();
        }
        // River has no CUSUM: ours is scored on the same streams, with its defaults.
        let mut cusum = DetectorParams::parse("cusum", serde_json::json!({}))?
            .ok_or("not a detector")?
            .build();
        let drift: Vec<usize> = (0..values.len())
            .filter(|&i| cusum.update(values[i]) == Signal::Drift)
            .collect();
        doc["runs"]
            .as_array_mut()
            .ok_or("no runs")?
            .push(serde_json::json!({
                "detector": "CUSUM", "label": "default", "params": {},
                "drift_indices": drift, "warning_indices": [],
            }));
        doc.as_object_mut().ok_or("not an object")?.remove("values");
        let name = path.file_name().ok_or("no name")?;
        std::fs::write(out.join(name), serde_json::to_string(&doc)?)?;
    }
    println!("wrote {}", out.display());
    Ok(())
}
