//! HDDM_A, drift detection based on Hoeffding's bounds with an A-test on moving averages
//! (Frías-Blanco, del Campo-Ávila, Ramos-Jiménez, Morales-Bueno, Ortiz-Díaz, Caballero-Mota:
//! "Online and non-parametric drift detection methods based on Hoeffding's bounds",
//! IEEE TKDE 27(3), 2015), for a stream of values in [0, 1] (typically 1 = error).
//!
//! The mean of everything since the reset (`Z`) is compared with the mean of the prefix up to a
//! cut point (`X_lo`), the prefix whose Hoeffding upper bound was smallest; a significant
//! increase is a drift (or, at the looser confidence, a warning). With `two_sided_test`, a
//! second cut point (`X_hi`, smallest lower bound reversed) detects decreases too.
//!
//! River 0.26.1 compatibility (`river.drift.binary.HDDMA`), all of which decide the exact index
//! at which a warning or drift is flagged:
//! * the cut points always use `drift_confidence`: `ε(n) = sqrt(1/(2n) · ln(1/δ_drift))`, and
//!   move on ties (`>=` / `<=`);
//! * the test is `Z.mean − X.mean >= sqrt(m/2 · ln(2/c))` with
//!   `m = (Z.n − X.n)/X.n · (1/Z.n)`, never true while `X.n == Z.n`;
//! * the decrease cut point is tracked even when one-sided;
//! * a two-sided decrease drift leaves the increase warning as it was (both can be set; then
//!   `update` returns `Drift`);
//! * the detector resets lazily at the start of the next update.
//!
//! Speed without changing results: the logarithms depend only on the parameters and are
//! computed once; a snapshot's bound is computed once when it is taken (with the same
//! expression River evaluates at each update); a test whose mean difference is negative cannot
//! pass (the bound is never negative), so its square root is skipped.

use serde::{Deserialize, Serialize};

use super::{ParamError, Signal};

/// Parameters, River 0.26.1's names and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HddmAParams {
    /// Confidence of the drift test, and of the cut points (smaller = fewer alarms).
    pub drift_confidence: f64,
    /// Confidence of the warning test.
    pub warning_confidence: f64,
    /// Also detect decreases of the mean.
    pub two_sided_test: bool,
}

impl Default for HddmAParams {
    fn default() -> Self {
        Self {
            drift_confidence: 0.001,
            warning_confidence: 0.005,
            two_sided_test: false,
        }
    }
}

impl HddmAParams {
    /// Range checks: both confidences in (0, 1) (they are probabilities; at 0 or 1 the
    /// bounds degenerate to infinity or zero).
    /// The first problem [`Self::validate_all`] finds.
    pub fn validate(&self) -> Result<(), ParamError> {
        self.validate_all().into_iter().next().map_or(Ok(()), Err)
    }

    /// Every parameter out of range, each once, in the order of the fields.
    pub fn validate_all(&self) -> Vec<ParamError> {
        let mut errors = Vec::new();
        errors.extend(check_confidence("drift_confidence", self.drift_confidence).err());
        errors.extend(check_confidence("warning_confidence", self.warning_confidence).err());
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

/// A snapshot of the running mean: count, mean, and its Hoeffding bound at drift confidence.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Snap {
    n: f64,
    mean: f64,
    eps: f64,
}

const EMPTY: Snap = Snap {
    n: 0.0,
    mean: 0.0,
    eps: 0.0,
};

/// The full detector state; serde-serializable (bincode 2.0.1) and restored byte-exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HddmA {
    params: HddmAParams,
    /// `ln(1/drift_confidence)`, the cut-point bound's numerator.
    ln_cut: f64,
    /// `ln(2/drift_confidence)` and `ln(2/warning_confidence)`, the tests' numerators.
    ln_drift: f64,
    ln_warning: f64,
    /// All items since the reset (`Z`; `eps` unused).
    z_n: f64,
    z_mean: f64,
    /// Cut point for increases (`X_lo`) and for decreases (`X_hi`); `n == 0` means empty.
    lo: Snap,
    hi: Snap,
    /// River's flags after the latest update; `drift` also triggers the lazy reset.
    warning: bool,
    drift: bool,
}

impl HddmA {
    pub fn new(params: HddmAParams) -> Self {
        // Same expressions as River (`1.0 / c` then `log`), evaluated once.
        let ln_cut = (1.0 / params.drift_confidence).ln();
        let ln_drift = (2.0 / params.drift_confidence).ln();
        let ln_warning = (2.0 / params.warning_confidence).ln();
        Self {
            params,
            ln_cut,
            ln_drift,
            ln_warning,
            z_n: 0.0,
            z_mean: 0.0,
            lo: EMPTY,
            hi: EMPTY,
            warning: false,
            drift: false,
        }
    }

    /// Back to the freshly constructed state (parameters and derived constants kept).
    fn reset(&mut self) {
        self.z_n = 0.0;
        self.z_mean = 0.0;
        self.lo = EMPTY;
        self.hi = EMPTY;
        self.warning = false;
        self.drift = false;
    }

    /// Hoeffding bound for a mean of `n` items, in River's operation order.
    #[inline]
    fn hoeffding(&self, n: f64) -> f64 {
        (1.0 / (2.0 * n) * self.ln_cut).sqrt()
    }

    /// One observation in [0, 1]; returns Drift / Warning / None exactly as River's
    /// drift_detected / warning_detected read after update(x) (Drift when both are set).
    #[inline]
    pub fn update(&mut self, x: f64) -> Signal {
        if self.drift {
            self.reset();
        }
        self.z_n += 1.0;
        self.z_mean += (x - self.z_mean) / self.z_n;
        let eps_z = self.hoeffding(self.z_n);
        let z = Snap {
            n: self.z_n,
            mean: self.z_mean,
            eps: eps_z,
        };
        // The snapshots are empty only on the first item after a reset.
        if self.lo.n == 0.0 {
            self.lo = z;
        }
        if self.hi.n == 0.0 {
            self.hi = z;
        }
        if self.lo.mean + self.lo.eps >= z.mean + eps_z {
            self.lo = z;
        }
        if self.hi.mean - self.hi.eps <= z.mean - eps_z {
            self.hi = z;
        }

        match self.test(self.lo, self.z_mean - self.lo.mean) {
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
        if self.params.two_sided_test {
            match self.test(self.hi, self.hi.mean - self.z_mean) {
                Level::Drift => self.drift = true,
                Level::Warning => self.warning = true,
                Level::None => {}
            }
        }
        self.signal()
    }

    /// Is `diff` (the change of the mean since cut point `cut`) significant at drift, or else
    /// at warning confidence?
    #[inline]
    fn test(&self, cut: Snap, diff: f64) -> Level {
        // The bound is a square root, never negative: a negative (or NaN) difference cannot
        // pass `diff >= eps`, so skip the arithmetic. Zero still goes through the exact test.
        let possible = cut.n != self.z_n && diff >= 0.0;
        if !possible {
            return Level::None;
        }
        let half_m = (self.z_n - cut.n) / cut.n * (1.0 / self.z_n) / 2.0;
        if diff >= (half_m * self.ln_drift).sqrt() {
            Level::Drift
        } else if diff >= (half_m * self.ln_warning).sqrt() {
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

    pub fn params(&self) -> &HddmAParams {
        &self.params
    }

    /// One short line for operators, e.g. "n 812, mean 0.1040, cut mean 0.0910 (n 400)".
    /// The state as named numbers (`models --json`, `backtest --detail`): `statistic` is what
    /// is compared with `threshold` where the detector has one such pair.
    pub fn state(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("n", self.z_n),
            ("mean", self.z_mean),
            ("cut_mean", self.lo.mean),
            ("cut_n", self.lo.n),
        ]
    }

    pub fn summary(&self) -> String {
        format!(
            "n {}, mean {:.4}, cut mean {:.4} (n {})",
            self.z_n, self.z_mean, self.lo.mean, self.lo.n
        )
    }
}

/// Outcome of one one-sided test.
enum Level {
    None,
    Warning,
    Drift,
}
