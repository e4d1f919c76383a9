//! The binary detectors (DDM, EDDM, HDDM_A, HDDM_W): River's defaults, parameter validation,
//! and odd input. Their agreement with River's indices is in `conformance.rs`.

use visutility::policy::detect::ddm::{Ddm, DdmParams};
use visutility::policy::detect::eddm::{Eddm, EddmParams};
use visutility::policy::detect::hddm_a::{HddmA, HddmAParams};
use visutility::policy::detect::hddm_w::{HddmW, HddmWParams};
use visutility::policy::detect::{ParamError, Signal};

/// One of the four detectors, built from a fixture run.
#[derive(Debug)]
enum Bin {
    Ddm(Ddm),
    Eddm(Eddm),
    HddmA(HddmA),
    HddmW(HddmW),
}

impl Bin {
    fn update(&mut self, x: f64) -> Signal {
        match self {
            Bin::Ddm(d) => d.update(x),
            Bin::Eddm(d) => d.update(x),
            Bin::HddmA(d) => d.update(x),
            Bin::HddmW(d) => d.update(x),
        }
    }
}

#[test]
fn defaults_are_rivers() {
    assert_eq!(
        DdmParams::default(),
        DdmParams {
            warm_start: 30,
            warning_threshold: 2.0,
            drift_threshold: 3.0
        }
    );
    assert_eq!(
        EddmParams::default(),
        EddmParams {
            warm_start: 30,
            alpha: 0.95,
            beta: 0.9
        }
    );
    assert_eq!(
        HddmAParams::default(),
        HddmAParams {
            drift_confidence: 0.001,
            warning_confidence: 0.005,
            two_sided_test: false
        }
    );
    assert_eq!(
        HddmWParams::default(),
        HddmWParams {
            drift_confidence: 0.001,
            warning_confidence: 0.005,
            lambda_val: 0.05,
            two_sided_test: false
        }
    );
    // `default` fills missing keys; unknown keys are refused.
    let p: DdmParams = serde_json::from_str(r#"{"warm_start": 100}"#).unwrap();
    assert_eq!(p.warm_start, 100);
    assert_eq!(p.drift_threshold, 3.0);
    assert!(serde_json::from_str::<HddmWParams>(r#"{"lambda": 0.1}"#).is_err());
}

#[test]
fn param_validation() {
    let key = |r: Result<(), ParamError>| r.unwrap_err().key;
    assert!(DdmParams::default().validate().is_ok());
    let d = |w: f64, dr: f64| DdmParams {
        warm_start: 30,
        warning_threshold: w,
        drift_threshold: dr,
    };
    assert_eq!(key(d(f64::NAN, 3.0).validate()), "warning_threshold");
    assert_eq!(key(d(0.0, 3.0).validate()), "warning_threshold");
    assert_eq!(key(d(2.0, f64::INFINITY).validate()), "drift_threshold");
    assert_eq!(key(d(-1.0, 3.0).validate()), "warning_threshold");
    assert_eq!(key(d(4.0, 3.0).validate()), "warning_threshold");
    assert!(d(3.0, 3.0).validate().is_ok());

    assert!(EddmParams::default().validate().is_ok());
    let e = |a: f64, b: f64| EddmParams {
        warm_start: 30,
        alpha: a,
        beta: b,
    };
    assert_eq!(key(e(0.8, 0.9).validate()), "alpha");
    assert_eq!(key(e(1.5, 0.9).validate()), "alpha");
    assert_eq!(key(e(f64::NAN, 0.9).validate()), "alpha");
    assert_eq!(key(e(0.9, 0.0).validate()), "beta");
    assert_eq!(key(e(0.9, f64::NAN).validate()), "beta");
    assert!(e(0.8, 0.75).validate().is_ok());
    assert!(e(1.0, 1.0).validate().is_ok());

    assert!(HddmAParams::default().validate().is_ok());
    let a = |d: f64, w: f64| HddmAParams {
        drift_confidence: d,
        warning_confidence: w,
        two_sided_test: true,
    };
    assert_eq!(key(a(0.0, 0.005).validate()), "drift_confidence");
    assert_eq!(key(a(1.0, 0.005).validate()), "drift_confidence");
    assert_eq!(key(a(f64::NAN, 0.005).validate()), "drift_confidence");
    assert_eq!(key(a(0.001, -0.1).validate()), "warning_confidence");
    assert_eq!(
        key(a(0.001, f64::INFINITY).validate()),
        "warning_confidence"
    );

    assert!(HddmWParams::default().validate().is_ok());
    let w = |d: f64, c: f64, l: f64| HddmWParams {
        drift_confidence: d,
        warning_confidence: c,
        lambda_val: l,
        two_sided_test: false,
    };
    assert_eq!(key(w(2.0, 0.005, 0.05).validate()), "drift_confidence");
    assert_eq!(key(w(0.001, 0.0, 0.05).validate()), "warning_confidence");
    assert_eq!(key(w(0.001, 0.005, 0.0).validate()), "lambda_val");
    assert_eq!(key(w(0.001, 0.005, 1.5).validate()), "lambda_val");
    assert_eq!(key(w(0.001, 0.005, f64::NAN).validate()), "lambda_val");
    assert!(w(0.001, 0.005, 1.0).validate().is_ok());

    // The error message names the key, for config paths.
    let err = d(4.0, 3.0).validate().unwrap_err();
    assert!(err.to_string().starts_with("warning_threshold: "), "{err}");
}

#[test]
fn odd_input_never_panics() {
    let odd = [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        -1.0,
        2.0,
        0.5,
        1e308,
        -0.0,
        f64::MIN_POSITIVE,
        1.0,
        0.0,
    ];
    let mut dets = vec![
        Bin::Ddm(Ddm::new(DdmParams {
            warm_start: 0,
            ..DdmParams::default()
        })),
        Bin::Eddm(Eddm::new(EddmParams {
            warm_start: 0,
            ..EddmParams::default()
        })),
        Bin::HddmA(HddmA::new(HddmAParams {
            two_sided_test: true,
            ..HddmAParams::default()
        })),
        Bin::HddmW(HddmW::new(HddmWParams {
            two_sided_test: true,
            ..HddmWParams::default()
        })),
    ];
    for det in &mut dets {
        for round in 0..50 {
            for (j, &x) in odd.iter().enumerate() {
                det.update(if (round + j) % 3 == 0 { 1.0 } else { x });
            }
        }
        // Summaries must not panic either, whatever the state.
        let _ = match det {
            Bin::Ddm(d) => d.summary(),
            Bin::Eddm(d) => d.summary(),
            Bin::HddmA(d) => d.summary(),
            Bin::HddmW(d) => d.summary(),
        };
    }
    // Unvalidated, degenerate parameters must not panic either.
    let mut weird = vec![
        Bin::Ddm(Ddm::new(DdmParams {
            warm_start: 0,
            warning_threshold: f64::NAN,
            drift_threshold: -1.0,
        })),
        Bin::Eddm(Eddm::new(EddmParams {
            warm_start: 0,
            alpha: f64::NAN,
            beta: 5.0,
        })),
        Bin::HddmA(HddmA::new(HddmAParams {
            drift_confidence: 0.0,
            warning_confidence: -1.0,
            two_sided_test: true,
        })),
        Bin::HddmW(HddmW::new(HddmWParams {
            drift_confidence: 0.0,
            warning_confidence: f64::NAN,
            lambda_val: 7.0,
            two_sided_test: true,
        })),
    ];
    for det in &mut weird {
        for (j, &x) in odd.iter().cycle().take(500).enumerate() {
            det.update(if j % 4 == 0 { 1.0 } else { x });
        }
    }
}
