//! The hot paths never touch the heap: `update` of the binary detectors (DDM, EDDM, HDDM_A,
//! HDDM_W), decoding a well-formed line, framing a stream, and applying events to a model
//! whose rule has a probation (on probation and not: the metric's ring of recent values is
//! full, and a probation's plan of looks is computed once, at its first candidate value).
//!
//! A counting global allocator wraps the system one; this file holds a single test (running
//! the checks one after the other) so no other test thread allocates while it counts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use visutility::policy::detect::ddm::{Ddm, DdmParams};
use visutility::policy::detect::eddm::{Eddm, EddmParams};
use visutility::policy::detect::hddm_a::{HddmA, HddmAParams};
use visutility::policy::detect::hddm_w::{HddmW, HddmWParams};
use visutility::protocol::{Frame, Line, LineReader, decode_line};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn hot_paths_are_allocation_free() {
    detector_updates();
    decode_and_framing();
    probation_observe();
    advance_with_a_probation();
}

fn detector_updates() {
    // A stream with bursts so every detector drifts and resets several times.
    let xs: Vec<f64> = (0..200_000u32)
        .map(|i| {
            let burst = (i / 5_000) % 4 == 3;
            let h = i.wrapping_mul(2_654_435_761) >> 24;
            if h % if burst { 2 } else { 10 } == 0 {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    let mut ddm = Ddm::new(DdmParams::default());
    let mut eddm = Eddm::new(EddmParams::default());
    let mut hddm_a = HddmA::new(HddmAParams {
        two_sided_test: true,
        ..HddmAParams::default()
    });
    let mut hddm_w = HddmW::new(HddmWParams {
        two_sided_test: true,
        ..HddmWParams::default()
    });
    let before = ALLOCS.load(Ordering::Relaxed);
    let mut drifts = [0usize; 4];
    for &x in &xs {
        drifts[0] += usize::from(ddm.update(x) == visutility::policy::detect::Signal::Drift);
        drifts[1] += usize::from(eddm.update(x) == visutility::policy::detect::Signal::Drift);
        drifts[2] += usize::from(hddm_a.update(x) == visutility::policy::detect::Signal::Drift);
        drifts[3] += usize::from(hddm_w.update(x) == visutility::policy::detect::Signal::Drift);
    }
    let after = ALLOCS.load(Ordering::Relaxed);
    assert_eq!(after - before, 0, "update allocated");
    assert!(
        drifts.iter().all(|&d| d > 0),
        "every detector reset at least once: {drifts:?}"
    );
}

const LINES: &[&str] = &[
    r#"{"model_id": "fraud-v3", "ts": 1764172800.25, "drift_score": 0.12, "accuracy": 0.93, "error": 0, "value": 4.2, "metrics": {"latency_ms": 12.5}, "meta": {"any": "json"}}"#,
    r#"{"model_id":"a/b:c","value":0.30000000000000004,"metrics":{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8}}"#,
    r#"{"model_id":"m","error":true,"meta":"text","ts":1e300}"#,
    r#"{"op":"flush"}"#,
    "   ",
];

fn decode_and_framing() {
    let mut stream = Vec::new();
    for i in 0..20_000 {
        stream.extend_from_slice(LINES[i % LINES.len()].as_bytes());
        stream.extend_from_slice(if i % 2 == 0 { b"\n" } else { b"\r\n" });
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut reader = LineReader::new(&stream[..], 1024);

    let start = ALLOCS.load(Ordering::Relaxed);
    for _ in 0..1000 {
        for l in LINES {
            assert!(decode_line(black_box(l.as_bytes())).is_ok());
        }
    }
    assert_eq!(
        ALLOCS.load(Ordering::Relaxed) - start,
        0,
        "decode_line allocated"
    );
    // The read buffer is sized once per connection (it may grow once to its bound), and the
    // runtime sets itself up: warm up on the first batches, then count the steady state.
    let (mut events, mut frames) = (0, 0);
    let mut before = 0;
    rt.block_on(async {
        while reader.fill().await.unwrap() {
            if frames > 0 && before == 0 {
                before = ALLOCS.load(Ordering::Relaxed);
            }
            for f in reader.batch() {
                frames += 1;
                if let Frame::Line(l) = f
                    && let Ok(Line::Event(e)) = decode_line(l)
                {
                    black_box(&e);
                    events += 1;
                }
            }
        }
    });
    let after = ALLOCS.load(Ordering::Relaxed);
    assert_eq!((frames, events), (20_000, 12_000));
    assert_eq!(after - before, 0, "framing allocated in the steady state");
}

fn probation_observe() {
    use visutility::probation::{Direction, ModelProbation, RuleSpec, Sample, State};
    let spec = RuleSpec {
        events: 200,
        min_events: 20,
        tolerance: 0.0,
        confidence: 0.95,
        direction: Direction::Higher,
    };
    let value = |i: u64| if i.is_multiple_of(7) { 0.0 } else { 1.0 };
    let mut p = ModelProbation::default();
    for i in 0..200 {
        p.observe(&spec, value(i), i as f64);
    }
    // Not on probation, the ring full: the oldest value makes room for the newest.
    let before = ALLOCS.load(Ordering::Relaxed);
    for i in 200..20_200 {
        black_box(p.observe(&spec, black_box(value(i)), i as f64));
    }
    assert_eq!(
        ALLOCS.load(Ordering::Relaxed) - before,
        0,
        "ModelProbation::observe allocated off probation"
    );
    // On probation: the first candidate value works the plan out (it allocates, once).
    p.start(1, p.recent_sample(), 3, 0.0);
    let before = ALLOCS.load(Ordering::Relaxed);
    for i in 0..4 {
        p.observe(&spec, value(i), i as f64);
    }
    // (The first plan of this process for this rule: worked out here, and shared from then on.)
    assert!(
        ALLOCS.load(Ordering::Relaxed) > before,
        "the plan is worked out at the first candidate value (the counter counts)"
    );
    let before = ALLOCS.load(Ordering::Relaxed);
    let mut ended = false;
    for i in 4..203 {
        ended |= black_box(p.observe(&spec, black_box(value(i)), i as f64));
    }
    assert_eq!(
        ALLOCS.load(Ordering::Relaxed) - before,
        0,
        "ModelProbation::observe allocated on probation (the plan worked out again?)"
    );
    let c = p.current.as_ref().unwrap();
    assert!(ended && c.state == State::Promoted, "{c:?}");
    assert_eq!(c.candidate.n, 200);
    // A probation rolled back at a look: no allocation either.
    p.start(2, Sample::of((0..200).map(value)), 0, 0.0);
    p.observe(&spec, 1.0, 0.0);
    let before = ALLOCS.load(Ordering::Relaxed);
    let mut n = 1;
    while !p.observe(&spec, black_box(0.0), 0.0) {
        n += 1;
        assert!(n < 200, "never rolled back");
    }
    assert_eq!(
        ALLOCS.load(Ordering::Relaxed) - before,
        0,
        "a rollback allocated"
    );
    assert_eq!(p.current.as_ref().unwrap().state, State::RolledBack);
}

/// `model::advance` (what the model actor and the replay apply events with) for a rule with
/// a policy and a probation, on a calm stream (no policy fires: a decision's reason is a
/// string).
fn advance_with_a_probation() {
    use visutility::config::{Config, Env};
    use visutility::model::advance;
    use visutility::policy::{Obs, bind_states};
    use visutility::probation::Sample;
    use visutility::store::ModelRecord;
    let config = Config::from_toml(
        "[[models]]\nmatch = \"*\"\n\
         [[models.policies]]\nkind = \"static_threshold\"\nmax_drift = 0.9\n\
         [[models.policies]]\nkind = \"drift_window\"\nwindow = 50\nthreshold = 0.8\n\
         [models.probation]\nmetric = \"accuracy\"\nevents = 300\nmin_events = 30\n",
        &Env::default(),
    )
    .unwrap();
    let rule = &config.models[0];
    let lines: Vec<String> = (0..2_000)
        .map(|i| {
            format!(
                r#"{{"model_id":"m","drift_score":{},"accuracy":{}}}"#,
                0.1 + (i % 10) as f64 / 100.0,
                0.9 + (i % 3) as f64 / 20.0
            )
        })
        .collect();
    let obs: Vec<Obs> = lines
        .iter()
        .map(|l| match decode_line(l.as_bytes()) {
            Ok(Line::Event(e)) => Obs::from_event(&e, 1.0),
            other => panic!("{other:?}"),
        })
        .collect();
    let mut record = ModelRecord {
        policies: bind_states(&rule.policies, Vec::new()),
        ..ModelRecord::default()
    };
    // Windows and the ring fill first.
    advance(&mut record, Some(rule), &obs[..500], |_| {});
    let before = ALLOCS.load(Ordering::Relaxed);
    for batch in obs[500..].chunks(64) {
        advance(&mut record, Some(rule), batch, |_| {});
    }
    assert_eq!(
        ALLOCS.load(Ordering::Relaxed) - before,
        0,
        "advance allocated (rule with a probation, not on probation)"
    );
    // On probation (judged on every value, looks every 30, promoted at 300).
    let baseline: Sample = record.probation.recent_sample();
    record.probation.start(9, baseline, 0, 1.0);
    advance(&mut record, Some(rule), &obs[..1], |_| {});
    let before = ALLOCS.load(Ordering::Relaxed);
    for batch in obs[1..400].chunks(64) {
        advance(&mut record, Some(rule), batch, |_| {});
    }
    assert_eq!(
        ALLOCS.load(Ordering::Relaxed) - before,
        0,
        "advance allocated (on probation)"
    );
    let p = record.probation.current.as_ref().unwrap();
    assert_eq!(p.candidate.n, 300, "{p:?}");
    assert_eq!(record.decisions, 0, "the stream is calm");
}
