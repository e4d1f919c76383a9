//! Criterion micro-benchmarks of the per-event hot path: the line decoder, every policy kind's
//! `observe`, and the store's record write and read.
//!
//! ```sh
//! cargo bench --bench micro                  # everything
//! cargo bench --bench micro -- policy/adwin  # one group or function, by name
//! ```
//!
//! Each policy runs the way a model actor runs it: `PolicyState::observe` with a spec from a
//! parsed config, over a pre-built stream (N(0.1, 0.05) drift scores for the real-valued ones,
//! Bernoulli(0.1) errors for the binary detectors), one event per iteration.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use visutility::config::{Config, Env};
use visutility::policy::{Obs, PolicySpec, PolicyState};
use visutility::protocol::decode_line;
use visutility::store::{ModelRecord, Store, wal};

#[path = "common/rng.rs"]
mod rng;
use rng::Rng;

/// Every policy kind, with its config defaults, as the daemon would build it.
fn specs() -> Vec<PolicySpec> {
    let kinds = [
        ("static_threshold", "max_drift = 0.3\nmin_accuracy = 0.9"),
        ("drift_window", "window = 500\nthreshold = 0.3"),
        ("adwin", "metric = \"drift_score\""),
        ("page_hinkley", "metric = \"drift_score\""),
        ("kswin", "metric = \"drift_score\""),
        ("cusum", "metric = \"drift_score\""),
        ("ddm", "metric = \"error\""),
        ("eddm", "metric = \"error\""),
        ("hddm_a", "metric = \"error\""),
        ("hddm_w", "metric = \"error\""),
    ];
    let mut toml = String::from(
        "[daemon]\nsocket = \"/tmp/x/in.sock\"\ncontrol_socket = \"/tmp/x/ctl.sock\"\nstate_dir = \"/tmp/x\"\n\n[[models]]\nmatch = \"*\"\n",
    );
    for (kind, params) in kinds {
        toml.push_str(&format!(
            "\n[[models.policies]]\nkind = \"{kind}\"\n{params}\n"
        ));
    }
    let config = Config::from_toml(&toml, &Env::default()).expect("the benchmark config is valid");
    config.models[0].policies.clone()
}

fn stream(n: usize) -> Vec<Obs> {
    let mut rng = Rng(42);
    (0..n)
        .map(|i| Obs {
            ts: 1_764_172_800.0 + i as f64,
            drift_score: Some(0.1 + 0.05 * rng.normal()),
            accuracy: Some(0.95 + 0.02 * rng.normal()),
            error: Some(rng.uniform() < 0.1),
            ..Obs::default()
        })
        .collect()
}

fn decoder(c: &mut Criterion) {
    let lines: [(&str, &[u8]); 5] = [
        (
            "event",
            br#"{"model_id":"model-00042","ts":1764172800.123456,"drift_score":0.1234,"accuracy":0.9512,"error":0}"#,
        ),
        // Floats as Python's json.dumps writes them: 17 significant digits.
        (
            "event_17_digit_floats",
            br#"{"model_id":"model-00042","ts":1764172800.123456,"drift_score":0.12345678901234566,"accuracy":0.9512345678901234,"error":0}"#,
        ),
        (
            "event_with_metrics_and_meta",
            br#"{"model_id":"fraud-v3","ts":1764172800.25,"drift_score":0.12,"accuracy":0.93,"error":0,"value":4.2,"metrics":{"latency_ms":12.5,"p99_ms":40.1},"meta":{"host":"edge-7","batch":[1,2,3]}}"#,
        ),
        ("flush_op", br#"{"op":"flush"}"#),
        (
            "rejected_bad_field",
            br#"{"model_id":"model-00042","drift":0.1}"#,
        ),
    ];
    let mut g = c.benchmark_group("decode_line");
    g.throughput(Throughput::Elements(1));
    for (name, line) in lines {
        g.bench_function(name, |b| {
            b.iter(|| black_box(decode_line(black_box(line)).is_ok()))
        });
    }
    g.finish();
}

fn policies(c: &mut Criterion) {
    let data = stream(1 << 16);
    let mut g = c.benchmark_group("policy");
    g.throughput(Throughput::Elements(1));
    for spec in specs() {
        g.bench_function(spec.kind.kind_name(), |b| {
            let mut state = PolicyState::new(&spec);
            let mut i = 0;
            b.iter(|| {
                let obs = &data[i & (data.len() - 1)];
                i += 1;
                black_box(state.observe(&spec, black_box(obs)).is_some())
            })
        });
    }
    // Over the threshold, every event fires.
    let hot: Vec<Obs> = data
        .iter()
        .map(|o| Obs {
            drift_score: o.drift_score.map(|d| d + 0.4),
            ..o.clone()
        })
        .collect();
    for spec in specs()
        .into_iter()
        .filter(|s| matches!(s.kind.kind_name(), "static_threshold" | "drift_window"))
    {
        g.bench_function(format!("{}_firing", spec.kind.kind_name()), |b| {
            let mut state = PolicyState::new(&spec);
            let mut i = 0;
            b.iter(|| {
                let obs = &hot[i & (hot.len() - 1)];
                i += 1;
                black_box(state.observe(&spec, black_box(obs)).is_some())
            })
        });
    }
    g.finish();
}

/// A model's record as it is persisted after a long run: every policy warmed up on 500 events
/// (so the drift window is full).
fn warm_record(specs: &[PolicySpec]) -> ModelRecord {
    let mut record = ModelRecord {
        policies: specs.iter().map(PolicyState::new).collect(),
        ..ModelRecord::default()
    };
    for obs in stream(500) {
        for (spec, state) in specs.iter().zip(record.policies.iter_mut()) {
            state.observe(spec, &obs);
        }
        record.events += 1;
        record
            .recent_drift
            .push_back(obs.drift_score.unwrap_or(0.0) as f32);
    }
    record
}

fn store(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), 200).expect("store");
    // The benchmark daemon's policies: the defaults plus ADWIN on `error`.
    let all = specs();
    let daemon: Vec<PolicySpec> = all
        .iter()
        .filter(|s| matches!(s.kind.kind_name(), "static_threshold" | "drift_window"))
        .cloned()
        .chain(
            all.iter()
                .filter(|s| s.kind.kind_name() == "adwin")
                .cloned()
                .map(|mut s| {
                    s.metric = "error".into();
                    s
                }),
        )
        .collect();
    let record = warm_record(&daemon);
    let ids: Vec<String> = (0..1000).map(|i| format!("model-{i:05}")).collect();
    for id in &ids {
        store.checkpoint(id, &record).expect("save");
    }
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("save_model_1000_models", |b| {
        b.iter(|| {
            i += 1;
            store
                .checkpoint(&ids[i % ids.len()], &record)
                .expect("save")
        })
    });
    g.bench_function("load_model_1000_models", |b| {
        b.iter(|| {
            i += 1;
            black_box(store.load_model(&ids[i % ids.len()]).expect("load"))
        })
    });
    g.throughput(Throughput::Elements(ids.len() as u64));
    g.bench_function("save_1000_then_flush", |b| {
        b.iter_batched(
            || (),
            |()| {
                for id in &ids {
                    store.checkpoint(id, &record).expect("save");
                }
                store.flush_sync().expect("flush")
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// Events as the throughput load sends them (`ts` with 6 decimals, drift and accuracy with 4)
/// and as the connection stamps them (`received`: the time of the read, a full-precision f64
/// shared by the events of one read).
fn load_events(n: usize) -> Vec<Obs> {
    let mut rng = Rng(7);
    let ts0 = 1_764_172_800.0;
    let received0 = 1_764_999_999.123_456_7;
    (0..n)
        .map(|i| {
            let ts: f64 = format!("{:.6}", ts0 + i as f64 * 1e-6).parse().unwrap();
            let drift: f64 = format!("{:.4}", rng.uniform() * 0.25).parse().unwrap();
            let acc: f64 = format!("{:.4}", 0.92 + rng.uniform() * 0.08)
                .parse()
                .unwrap();
            Obs {
                ts,
                received: received0 + (i / 64) as f64 * 0.000_731_3,
                drift_score: Some(drift),
                accuracy: Some(acc),
                error: Some(rng.uniform() < 0.05),
                ..Obs::default()
            }
        })
        .collect()
}

/// The observation log's encoding, per event and per number.
fn log_encoding(c: &mut Criterion) {
    let evs = load_events(1 << 12);
    let mut g = c.benchmark_group("wal");
    g.throughput(Throughput::Elements(1));
    let mut out = Vec::with_capacity(1 << 20);
    let mut i = 0;
    g.bench_function("put_event_load", |b| {
        b.iter(|| {
            if out.len() > (1 << 20) - 256 {
                out.clear();
            }
            wal::put_event(&mut out, black_box(&evs[i & (evs.len() - 1)]));
            i += 1;
        })
    });
    let nums: [(&str, f64); 4] = [
        ("short_decimal", 0.1234),
        ("ts_6_decimals", 1_764_172_800.123_456),
        ("system_time", 1_764_999_999.123_456_7),
        ("raw_17_digits", 0.123_456_789_012_345_66),
    ];
    for (name, v) in nums {
        g.bench_function(format!("put_num_{name}"), |b| {
            b.iter(|| {
                if out.len() > (1 << 20) - 16 {
                    out.clear();
                }
                wal::put_num(&mut out, black_box(v));
            })
        });
    }
    let mut buf = Vec::new();
    for e in &evs {
        wal::put_event(&mut buf, e);
    }
    g.throughput(Throughput::Elements(evs.len() as u64));
    g.bench_function("decode_events_load", |b| {
        b.iter(|| black_box(wal::decode_events(black_box(&buf)).map(|v| v.len())))
    });
    g.finish();
}

/// `Store::append` as the model actors call it under the throughput load: one event per
/// call, 1,000 models in turn, folding into a checkpoint when the store says so.
fn store_append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), 200).expect("store");
    let record = warm_record(&specs());
    let ids: Vec<std::sync::Arc<str>> = (0..1000).map(|i| format!("model-{i:05}").into()).collect();
    let mut seqs = vec![0u64; ids.len()];
    let mut rng = Rng(3);
    let evs = load_events(1 << 12);
    let checkpoint_bytes = store.checkpoint(&ids[0], &record).expect("save");
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("append_1_event_1000_models", |b| {
        b.iter(|| {
            let m = rng.below(ids.len());
            seqs[m] += 1;
            let fold = store
                .append(
                    &ids[m],
                    seqs[m],
                    std::slice::from_ref(&evs[i & (evs.len() - 1)]),
                    checkpoint_bytes,
                )
                .expect("append");
            i += 1;
            if fold {
                store.checkpoint(&ids[m], &record).expect("save");
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().noise_threshold(0.05);
    targets = decoder, policies, store, log_encoding, store_append
}
criterion_main!(benches);
