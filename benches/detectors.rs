//! Updates per second of every detector on a million items, beside River's figure measured in
//! the same invocation (when `python3` can import river 0.26.1), with the ratio.
//!
//! ```sh
//! pip install river==0.26.1    # optional: without it only our figures are printed
//! cargo bench --bench detectors
//! ```
//!
//! Streams: N(0,1) for the real-valued detectors, Bernoulli(0.1) for the binary ones (both from
//! a seeded SplitMix64). KSWIN runs on 200,000 items. Each figure is the median of 7 runs, timed
//! by this thread's CPU time so other load on the machine counts less.

use std::hint::black_box;
use std::process::Command;
use std::time::Instant;

use visutility::policy::detect::{DetectorParams, Signal};

#[path = "common/rng.rs"]
mod rng;
use rng::Rng;

fn cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(s.split_whitespace().next()?.parse::<f64>().ok()? / 1e9)
}

fn median_rate(params: &DetectorParams, data: &[f64], reps: usize) -> (f64, usize) {
    let mut rates = Vec::new();
    let mut drifts = 0;
    for _ in 0..reps {
        let mut det = params.build();
        drifts = 0;
        let wall = Instant::now();
        let cpu = cpu_seconds();
        for &x in data {
            if det.update(black_box(x)) == Signal::Drift {
                drifts += 1;
            }
        }
        black_box(&det);
        let secs = match (cpu, cpu_seconds()) {
            (Some(a), Some(b)) if b > a => b - a,
            _ => wall.elapsed().as_secs_f64(),
        };
        rates.push(data.len() as f64 / secs);
    }
    rates.sort_by(f64::total_cmp);
    (rates[reps / 2], drifts)
}

fn river() -> Option<serde_json::Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/river_throughput.py");
    let out = Command::new("python3").arg(script).output().ok()?;
    if !out.status.success() {
        eprintln!(
            "river not measured: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn main() {
    const N: usize = 1_000_000;
    let mut rng = Rng(123);
    let real: Vec<f64> = (0..N).map(|_| rng.normal()).collect();
    let mut rng = Rng(124);
    let bits: Vec<f64> = (0..N)
        .map(|_| f64::from(u8::from(rng.uniform() < 0.1)))
        .collect();

    let river = river();
    println!(
        "| detector | input | items | ours (updates/s, median) | drifts | River (updates/s, median) | ratio |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for kind in [
        "adwin",
        "page_hinkley",
        "kswin",
        "cusum",
        "ddm",
        "eddm",
        "hddm_a",
        "hddm_w",
    ] {
        let params = DetectorParams::parse(kind, serde_json::json!({}))
            .expect("defaults parse")
            .expect("a detector kind");
        let (data, input) = if params.has_warning() {
            (&bits[..], "binary")
        } else {
            (&real[..], "real")
        };
        let data = if kind == "kswin" {
            &data[..200_000]
        } else {
            data
        };
        let (ours, drifts) = median_rate(&params, data, 7);
        let theirs = river.as_ref().and_then(|r| r[kind].as_f64());
        let (t, ratio) = match theirs {
            Some(t) => (format!("{t:.0}"), format!("{:.1}x", ours / t)),
            None => ("-".into(), "-".into()),
        };
        println!(
            "| {kind} | {input} | {} | {ours:.0} | {drifts} | {t} | {ratio} |",
            data.len()
        );
    }
}
