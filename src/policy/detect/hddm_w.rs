//! HDDM_W, drift detection based on McDiarmid's bound with a W-test on exponentially weighted
//! moving averages (Frías-Blanco, del Campo-Ávila, Ramos-Jiménez, Morales-Bueno, Ortiz-Díaz,
//! Caballero-Mota: "Online and non-parametric drift detection methods based on Hoeffding's
//! bounds", IEEE TKDE 27(3), 2015), for a stream of values in [0, 1] (typically 1 = error).
//!
//! An EWMA of everything since the reset picks a cut point (where its McDiarmid upper bound was
//! smallest); the EWMA of the items before the cut (S1) is compared with a fresh EWMA of the
//! items after it (S2). A significant increase is a drift (or, at the looser confidence, a
//! warning). With `two_sided_test`, a mirrored pair detects decreases too.
//!
//! River 0.26.1 compatibility (`river.drift.binary.HDDMW`), all of which decide the exact index
//! at which a warning or drift is flagged:
//! * an EWMA's first update sets it to `x`; later ones do `λ·x + (1−λ)·e`;
//! * each EWMA carries `ibc` (starts at 1.0, `ibc = λ² + (1−λ)²·ibc` on every update); the
//!   bound is `sqrt(ibc · ln(1/c) / 2)`, with `ibc = S1.ibc + S2.ibc` for the tests;
//! * the cut points always use `drift_confidence` and move only on strict improvement; when a
//!   cut moves, S1 becomes a copy of the total and S2 starts empty (this item is not in it);
//! * the tests are strict (`S2 − S1 > bound`) and need both samples to have seen an item;
//! * the decrease pair is maintained even when one-sided;
//! * a two-sided decrease drift leaves the increase warning as it was (both can be set; then
//!   `update` returns `Drift`);
//! * the detector resets lazily at the start of the next update.
//!
//! Speed without changing results: parameter-only quantities (logarithms, `λ²`, `(1−λ)²`,
//! `1−λ`) are computed once with River's expressions; a test whose EWMA difference is not
//! positive cannot pass (the bound is never negative), so its square root is skipped.

use serde::{Deserialize, Serialize};

use super::{ParamError, Signal};

/// Parameters, River 0.26.1's names and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HddmWParams {
    /// Confidence of the drift test, and of the cut points (smaller = fewer alarms).
    pub drift_confidence: f64,
    /// Confidence of the warning test.
    pub warning_confidence: f64,
    /// EWMA weight of the newest item.
    pub lambda_val: f64,
    /// Also detect decreases of the mean.
    pub two_sided_test: bool,
}

impl Default for HddmWParams {
    fn default() -> Self {
        Self {
            drift_confidence: 0.001,
            warning_confidence: 0.005,
            lambda_val: 0.05,
            two_sided_test: false,
        }
    }
}

impl HddmWParams {
    /// Range checks: both confidences in (0, 1) (probabilities; at 0 or 1 the bound
    /// degenerates), `lambda_val` in (0, 1] (at 0 the EWMA would never move).
    /// The first problem [`Self::validate_all`] finds.
    pub fn validate(&self) -> Result<(), ParamError> {
        self.validate_all().into_iter().next().map_or(Ok(()), Err)
    }

    /// Every parameter out of range, each once, in the order of the fields.
    pub fn validate_all(&self) -> Vec<ParamError> {
        let mut errors = Vec::new();
        errors.extend(check_confidence("drift_confidence", self.drift_confidence).err());
        errors.extend(check_confidence("warning_confidence", self.warning_confidence).err());
        if !(self.lambda_val > 0.0 && self.lambda_val <= 1.0) {
            errors.push(ParamError {
                key: "lambda_val",
                message: format!("must be in (0, 1], got {}", self.lambda_val),
            });
        }
        errors
    }
}

fn check_confidence(key: &'static str, c: f64) -> Result<(), ParamError> {
    if c > 0.0 && c < 1.0 {
        Ok(())
    } else {
        Err(ParamError {
            key,
            message: format!("must be in (0, 1), got {c}"),
        })
    }
}

/// One EWMA with its independent-bound-condition term (River's `SampleInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Sample {
    ewma: f64,
    ibc: f64,
    init: bool,
}

const FRESH: Sample = Sample {
    ewma: 0.0,
    ibc: 1.0,
    init: false,
};

/// Parameter-derived constants, in River's expressions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Consts {
    lambda: f64,
    one_minus_lambda: f64,
    lambda_sq: f64,
    c_lambda_sq: f64,
    ln_drift: f64,
    ln_warning: f64,
}

impl Sample {
    #[inline]
    fn update(&mut self, x: f64, k: &Consts) {
        self.ewma = if self.init {
            k.lambda * x + k.one_minus_lambda * self.ewma
        } else {
            x
        };
        self.init = true;
        self.ibc = k.lambda_sq + k.c_lambda_sq * self.ibc;
    }
}

/// McDiarmid bound for an EWMA with independent-bound-condition `ibc`; `ln_c = ln(1/c)`.
#[inline]
fn mcdiarmid(ibc: f64, ln_c: f64) -> f64 {
    (ibc * ln_c / 2.0).sqrt()
}

/// The full detector state; serde-serializable (bincode 2.0.1) and restored byte-exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HddmW {
    params: HddmWParams,
    k: Consts,
    /// EWMA of everything since the reset.
    total: Sample,
    /// Increase side: snapshot at the cut, EWMA since the cut, and the cut value.
    s1_incr: Sample,
    s2_incr: Sample,
    incr_cut: f64,
    /// Decrease side, likewise.
    s1_decr: Sample,
    s2_decr: Sample,
    decr_cut: f64,
    /// River's flags after the latest update; `drift` also triggers the lazy reset.
    warning: bool,
    drift: bool,
}

impl HddmW {
    pub fn new(params: HddmWParams) -> Self {
        let l = params.lambda_val;
        let k = Consts {
            lambda: l,
            one_minus_lambda: 1.0 - l,
            lambda_sq: l * l,
            // River: (1 - λ) ** 2, which is the correctly rounded square, as is this.
            c_lambda_sq: (1.0 - l) * (1.0 - l),
            ln_drift: (1.0 / params.drift_confidence).ln(),
            ln_warning: (1.0 / params.warning_confidence).ln(),
        };
        Self {
            params,
            k,
            total: FRESH,
            s1_incr: FRESH,
            s2_incr: FRESH,
            incr_cut: f64::INFINITY,
            s1_decr: FRESH,
            s2_decr: FRESH,
            decr_cut: f64::NEG_INFINITY,
            warning: false,
            drift: false,
        }
    }

    /// Back to the freshly constructed state (parameters and derived constants kept).
    fn reset(&mut self) {
        self.total = FRESH;
        self.s1_incr = FRESH;
        self.s2_incr = FRESH;
        self.incr_cut = f64::INFINITY;
        self.s1_decr = FRESH;
        self.s2_decr = FRESH;
        self.decr_cut = f64::NEG_INFINITY;
        self.warning = false;
        self.drift = false;
    }

    /// One observation in [0, 1]; returns Drift / Warning / None exactly as River's
    /// drift_detected / warning_detected read after update(x) (Drift when both are set).
    #[inline]
    pub fn update(&mut self, x: f64) -> Signal {
        if self.drift {
            self.reset();
        }
        let k = self.k;
        self.total.update(x, &k);
        let eps = mcdiarmid(self.total.ibc, k.ln_drift);

        if self.total.ewma + eps < self.incr_cut {
            self.incr_cut = self.total.ewma + eps;
            self.s1_incr = self.total;
            self.s2_incr = FRESH;
        } else {
            self.s2_incr.update(x, &k);
        }
        match self.test(
            self.s1_incr,
            self.s2_incr,
            self.s2_incr.ewma - self.s1_incr.ewma,
        ) {
            Level::Drift => {
                self.warning = false;
                self.drift = true;
            }
            Level::Warning => {
                self.warning = true;
                self.drift = false;
            }
            Level::None => {
                self.warning = false;
                self.drift = false;
            }
        }

        if self.total.ewma - eps > self.decr_cut {
            self.decr_cut = self.total.ewma - eps;
            self.s1_decr = self.total;
            self.s2_decr = FRESH;
        } else {
            self.s2_decr.update(x, &k);
        }
        if self.params.two_sided_test {
            // River passes (S2, S1) here: the bound sums S2.ibc + S1.ibc (same value).
            match self.test(
                self.s2_decr,
                self.s1_decr,
                self.s1_decr.ewma - self.s2_decr.ewma,
            ) {
                Level::Drift => self.drift = true,
                Level::Warning => self.warning = true,
                Level::None => {}
            }
        }
        self.signal()
    }

    /// Is `diff` (the EWMA change between `a` and `b`) significant at drift, or else at
    /// warning confidence?
    #[inline]
    fn test(&self, a: Sample, b: Sample, diff: f64) -> Level {
        // The bound is a square root, never negative, and the test is strict: a difference
        // that is not positive (or NaN) cannot pass, so skip the arithmetic.
        let possible = a.init && b.init && diff > 0.0;
        if !possible {
            return Level::None;
        }
        let ibc = a.ibc + b.ibc;
        if diff > mcdiarmid(ibc, self.k.ln_drift) {
            Level::Drift
        } else if diff > mcdiarmid(ibc, self.k.ln_warning) {
            Level::Warning
        } else {
            Level::None
        }
    }

    /// The signal of the latest update (drift wins over warning).
    fn signal(&self) -> Signal {
        Signal::from_flags(self.drift, self.warning)
    }

    /// River's `drift_detected` after the latest update.
    pub fn drift_detected(&self) -> bool {
        self.drift
    }

    /// River's `warning_detected` after the latest update (may be set together with drift).
    pub fn warning_detected(&self) -> bool {
        self.warning
    }

    pub fn params(&self) -> &HddmWParams {
        &self.params
    }

    /// One short line for operators, e.g. "ewma 0.1040, since cut 0.1800 vs 0.0950".
    /// The state as named numbers (`models --json`, `backtest --detail`): `statistic` is what
    /// is compared with `threshold` where the detector has one such pair.
    pub fn state(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("ewma", self.total.ewma),
            ("mean_since_cut", self.s2_incr.ewma),
            ("cut_mean", self.s1_incr.ewma),
        ]
    }

    pub fn summary(&self) -> String {
        format!(
            "ewma {:.4}, since cut {:.4} vs {:.4}",
            self.total.ewma, self.s2_incr.ewma, self.s1_incr.ewma
        )
    }
}

/// Outcome of one one-sided test.
enum Level {
    None,
    Warning,
    Drift,
}
