//! Behaviour tests that have no River reference: CUSUM on synthetic streams, parameter
//! validation, parameter parsing, and robustness to non-finite input.

use serde_json::json;
use visutility::policy::detect::adwin::{Adwin, AdwinParams};
use visutility::policy::detect::cusum::{Cusum, CusumParams};
use visutility::policy::detect::kswin::{Kswin, KswinParams};
use visutility::policy::detect::page_hinkley::{PageHinkley, PageHinkleyParams, PhMode};
use visutility::policy::detect::{DetectorParams, Signal};

/// SplitMix64 with Box-Muller: a small, fixed, dependency-free N(0,1) source.
struct Normal(u64);

impl Normal {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn sample(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn drifts(det: &mut Cusum, values: &[f64]) -> Vec<usize> {
    values
        .iter()
        .enumerate()
        .filter_map(|(i, &x)| (det.update(x) == Signal::Drift).then_some(i))
        .collect()
}

/// N(0,1) for `change` items, then N(shift, 1).
fn shifted(seed: u64, n: usize, change: usize, shift: f64) -> Vec<f64> {
    let mut g = Normal(seed);
    (0..n)
        .map(|i| g.sample() + if i >= change { shift } else { 0.0 })
        .collect()
}

/// Runs the default CUSUM on 20 seeded N(0,1) → N(shift,1) streams (change at 2000) and
/// returns (false alarms before the change, delays of the first detection after it).
fn shift_trials(shift: f64, scale: f64, offset: f64) -> (usize, Vec<usize>) {
    let mut false_alarms = 0;
    let mut delays = Vec::new();
    for seed in 1..=20 {
        let values: Vec<f64> = shifted(seed, 4000, 2000, shift)
            .into_iter()
            .map(|x| x * scale + offset)
            .collect();
        let found = drifts(&mut Cusum::new(CusumParams::default()), &values);
        false_alarms += found.iter().filter(|&&i| i < 2000).count();
        let first = found.iter().find(|&&i| i >= 2000).expect("shift detected");
        delays.push(first - 2000);
    }
    delays.sort_unstable();
    (false_alarms, delays)
}

#[test]
fn cusum_detects_upward_shift_quickly() {
    let (false_alarms, delays) = shift_trials(1.0, 1.0, 0.0);
    // 40,000 in-control items; the expected count is about 0.4.
    assert!(false_alarms <= 1, "{false_alarms} false alarms");
    assert!(delays[10] <= 30, "median delay {delays:?}");
    assert!(delays[19] <= 100, "worst delay {delays:?}");
}

#[test]
fn cusum_detects_downward_shift_quickly() {
    // Scale and offset must not matter: k and h are in units of the estimated sigma.
    let (false_alarms, delays) = shift_trials(-1.0, 2.0, 5.0);
    assert!(false_alarms <= 1, "{false_alarms} false alarms");
    assert!(delays[10] <= 30, "median delay {delays:?}");
    assert!(delays[19] <= 100, "worst delay {delays:?}");
}

#[test]
fn cusum_known_reference_and_repeated_alarms() {
    // A fixed target keeps the old reference, so a persisting shift alarms repeatedly,
    // every ~H/(shift−K) = 5/(2−0.5) ≈ 3–4 items after the lazy reset.
    let params = CusumParams {
        target: Some(0.0),
        sigma: Some(1.0),
        k: 0.5,
        h: 5.0,
        warm_start: 0,
    };
    params.validate().unwrap();
    let values = shifted(7, 600, 300, 2.0);
    let found = drifts(&mut Cusum::new(params), &values);
    assert!(
        found.first().is_some_and(|&i| (300..315).contains(&i)),
        "{found:?}"
    );
    assert!(
        found.iter().filter(|&&i| i >= 300).count() > 20,
        "{found:?}"
    );
}

#[test]
fn cusum_quiet_on_stationary_stream() {
    // One fixed stream: no alarm at all.
    let values = shifted(1, 10_000, usize::MAX, 0.0);
    let found = drifts(&mut Cusum::new(CusumParams::default()), &values);
    assert!(found.is_empty(), "false alarms {found:?}");
    // Across 50 fresh 10,000-item streams simulation expects about 3.7 alarms in all.
    let total: usize = (1..=50)
        .map(|seed| {
            let values = shifted(seed, 10_000, usize::MAX, 0.0);
            drifts(&mut Cusum::new(CusumParams::default()), &values).len()
        })
        .sum();
    assert!(
        total <= 8,
        "{total} false alarms in 500,000 in-control items"
    );
}

#[test]
fn cusum_warm_up_and_reset() {
    let mut det = Cusum::new(CusumParams {
        warm_start: 5,
        ..CusumParams::default()
    });
    for x in [1.0, 2.0, 3.0, 4.0] {
        assert_eq!(det.update(x), Signal::None);
        assert!(det.reference().is_none());
    }
    det.update(5.0);
    let (mu, sigma) = det.reference().unwrap();
    assert_eq!(mu, 3.0);
    assert!((sigma - 2.5f64.sqrt()).abs() < 1e-12);
    // A huge jump alarms at once; the next item starts a new warm-up.
    assert_eq!(det.update(1e6), Signal::Drift);
    assert_eq!(det.update(0.0), Signal::None);
    assert!(det.reference().is_none());
}

#[test]
fn cusum_ignores_non_finite() {
    let mut det = Cusum::new(CusumParams::default());
    for i in 0..200 {
        det.update(f64::from(i % 3));
    }
    let before = det.clone();
    for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert_eq!(det.update(x), Signal::None);
    }
    assert_eq!(det, before);
}

#[test]
fn no_detector_panics_on_odd_input() {
    let odd = [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        0.0,
        -0.0,
        f64::MAX,
        f64::MIN,
        f64::MIN_POSITIVE,
        1e300,
        -1e300,
    ];
    let mut g = Normal(3);
    let mut stream: Vec<f64> = Vec::new();
    for i in 0..3000 {
        stream.push(if i % 37 == 0 {
            odd[i % odd.len()]
        } else {
            g.sample()
        });
    }
    // Whole stretches of NaN and of a constant too.
    stream.extend(std::iter::repeat_n(f64::NAN, 300));
    stream.extend(std::iter::repeat_n(1.0, 300));
    stream.extend((0..300).map(|_| g.sample()));
    for kind in ["adwin", "page_hinkley", "kswin", "cusum"] {
        let mut det = DetectorParams::parse(kind, json!({}))
            .unwrap()
            .unwrap()
            .build();
        for &x in &stream {
            det.update(x);
        }
        let _ = det.summary();
    }
    // Unvalidated, out-of-range parameters must not panic either.
    let mut a = Adwin::new(AdwinParams {
        clock: 0,
        max_buckets: 0,
        min_window_length: 0,
        grace_period: 0,
        delta: 2.0,
    });
    let mut k = Kswin::new(KswinParams {
        window_size: 10,
        stat_size: 30,
        alpha: -1.0,
        seed: Some(u64::MAX),
    });
    let mut k0 = Kswin::new(KswinParams {
        window_size: 0,
        stat_size: 0,
        alpha: 0.5,
        seed: None,
    });
    let mut c = Cusum::new(CusumParams {
        warm_start: 0,
        ..CusumParams::default()
    });
    let mut p = PageHinkley::new(PageHinkleyParams {
        alpha: f64::NAN,
        ..PageHinkleyParams::default()
    });
    for &x in &stream {
        a.update(x);
        k.update(x);
        k0.update(x);
        c.update(x);
        p.update(x);
    }
}

#[test]
fn adwin_params_validation() {
    assert!(AdwinParams::default().validate().is_ok());
    let bad = |p: AdwinParams, key: &str| assert_eq!(p.validate().unwrap_err().key, key);
    let d = AdwinParams::default;
    bad(AdwinParams { delta: 0.0, ..d() }, "delta");
    bad(AdwinParams { delta: 1.0, ..d() }, "delta");
    bad(
        AdwinParams {
            delta: f64::NAN,
            ..d()
        },
        "delta",
    );
    bad(AdwinParams { clock: 0, ..d() }, "clock");
    bad(
        AdwinParams {
            max_buckets: 0,
            ..d()
        },
        "max_buckets",
    );
    bad(
        AdwinParams {
            max_buckets: 100_000,
            ..d()
        },
        "max_buckets",
    );
}

#[test]
fn page_hinkley_params_validation() {
    assert!(PageHinkleyParams::default().validate().is_ok());
    let bad = |p: PageHinkleyParams, key: &str| assert_eq!(p.validate().unwrap_err().key, key);
    let d = PageHinkleyParams::default;
    bad(PageHinkleyParams { delta: -1.0, ..d() }, "delta");
    bad(
        PageHinkleyParams {
            threshold: 0.0,
            ..d()
        },
        "threshold",
    );
    bad(
        PageHinkleyParams {
            threshold: f64::INFINITY,
            ..d()
        },
        "threshold",
    );
    bad(PageHinkleyParams { alpha: 0.0, ..d() }, "alpha");
    bad(PageHinkleyParams { alpha: 1.5, ..d() }, "alpha");
}

#[test]
fn kswin_params_validation() {
    assert!(KswinParams::default().validate().is_ok());
    let bad = |p: KswinParams, key: &str| assert_eq!(p.validate().unwrap_err().key, key);
    let d = KswinParams::default;
    bad(KswinParams { alpha: -0.1, ..d() }, "alpha");
    bad(
        KswinParams {
            alpha: f64::NAN,
            ..d()
        },
        "alpha",
    );
    bad(
        KswinParams {
            stat_size: 0,
            ..d()
        },
        "stat_size",
    );
    bad(
        KswinParams {
            stat_size: 20_000,
            window_size: 50_000,
            ..d()
        },
        "stat_size",
    );
    bad(
        KswinParams {
            window_size: 59,
            ..d()
        },
        "window_size",
    );
    assert!(
        KswinParams {
            window_size: 60,
            ..d()
        }
        .validate()
        .is_ok()
    );
}

#[test]
fn cusum_params_validation() {
    assert!(CusumParams::default().validate().is_ok());
    let bad = |p: CusumParams, key: &str| assert_eq!(p.validate().unwrap_err().key, key);
    let d = CusumParams::default;
    bad(
        CusumParams {
            target: Some(f64::NAN),
            ..d()
        },
        "target",
    );
    bad(
        CusumParams {
            sigma: Some(0.0),
            ..d()
        },
        "sigma",
    );
    bad(CusumParams { k: -0.1, ..d() }, "k");
    bad(CusumParams { h: 0.0, ..d() }, "h");
    bad(
        CusumParams {
            warm_start: 1,
            ..d()
        },
        "warm_start",
    );
    bad(
        CusumParams {
            sigma: Some(1.0),
            warm_start: 0,
            ..d()
        },
        "warm_start",
    );
    assert!(
        CusumParams {
            target: Some(0.0),
            sigma: Some(1.0),
            warm_start: 0,
            ..d()
        }
        .validate()
        .is_ok()
    );
}

#[test]
fn params_parse_river_dicts_and_reject_unknown_keys() {
    let ph: PageHinkleyParams =
        serde_json::from_value(json!({"mode": "up", "threshold": 20.0})).unwrap();
    assert_eq!(ph.mode, PhMode::Up);
    assert_eq!(ph.min_instances, 30);
    assert!(serde_json::from_value::<PageHinkleyParams>(json!({"mode": "sideways"})).is_err());
    assert!(serde_json::from_value::<KswinParams>(json!({"window": null})).is_err());
    let k: KswinParams = serde_json::from_value(json!({"seed": 42})).unwrap();
    assert_eq!(k.seed, Some(42));
    let k: KswinParams = serde_json::from_value(json!({"seed": null})).unwrap();
    assert_eq!(k.seed, None);
    assert!(serde_json::from_value::<AdwinParams>(json!({"delta": 0.01, "bogus": 1})).is_err());
    assert!(serde_json::from_value::<CusumParams>(json!({"target": 1.5, "h": 4})).is_ok());
}
