//! DDM, the Drift Detection Method (Gama, Medas, Castillo, Rodrigues: "Learning with Drift
//! Detection", SBIA 2004), for a stream of binary errors (1 = error, 0 = correct).
//!
//! The error rate `p` of the stream since the last reset is modelled as a binomial proportion
//! with standard deviation `s = sqrt(p(1-p)/n)`. The detector remembers `p_min`, `s_min` at
//! the point where `p + s` was smallest and flags a warning when `p + s` exceeds
//! `p_min + warning_threshold·s_min`, a drift when it exceeds `p_min + drift_threshold·s_min`.
//! Only increases of the error rate are detected.
//!
//! River 0.26.1 compatibility (`river.drift.binary.DDM`), all of which decide the exact index
//! at which a warning or drift is flagged:
//! * the running mean is incremental (`p += (x - p)/n`), with `n` a float as in River;
//! * nothing is evaluated until `n > warm_start` (strict): the first possible flag is the
//!   `warm_start + 1`-th item after a reset;
//! * the minimum is updated on ties (`p + s <= ps_min`), before the tests;
//! * a drift clears the warning flag; the detector resets lazily at the start of the next
//!   update, so the drift item itself is not part of the new statistics;
//! * the input is used numerically, unchecked (River does the same); non-finite input makes
//!   the statistics NaN, which never flags and never panics.

use serde::{Deserialize, Serialize};

use super::{ParamError, Signal};

/// Parameters, River 0.26.1's names and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DdmParams {
    /// Items needed after a reset before anything can be flagged (River: `warm_start`).
    pub warm_start: u32,
    /// Warning level, in multiples of `s_min` above `p_min`.
    pub warning_threshold: f64,
    /// Drift level, in multiples of `s_min` above `p_min`.
    pub drift_threshold: f64,
}

impl Default for DdmParams {
    fn default() -> Self {
        Self {
            warm_start: 30,
            warning_threshold: 2.0,
            drift_threshold: 3.0,
        }
    }
}

impl DdmParams {
    /// Range checks. River accepts anything; we refuse values that make the detector
    /// meaningless (non-finite or non-positive thresholds, a warning level above the drift
    /// level, which would make warnings impossible to see before a drift).
    /// The first problem [`Self::validate_all`] finds.
    pub fn validate(&self) -> Result<(), ParamError> {
        self.validate_all().into_iter().next().map_or(Ok(()), Err)
    }

    /// Every parameter out of range, each once, in the order of the fields.
    pub fn validate_all(&self) -> Vec<ParamError> {
        let mut errors = Vec::new();
        if !(self.warning_threshold.is_finite() && self.warning_threshold > 0.0) {
            errors.push(ParamError {
                key: "warning_threshold",
                message: format!("must be finite and > 0, got {}", self.warning_threshold),
            });
        }
        if !(self.drift_threshold.is_finite() && self.drift_threshold > 0.0) {
            errors.push(ParamError {
                key: "drift_threshold",
                message: format!("must be finite and > 0, got {}", self.drift_threshold),
            });
        }
        if self.warning_threshold > self.drift_threshold {
            errors.push(ParamError {
                key: "warning_threshold",
                message: format!(
                    "must be <= drift_threshold ({}), got {}",
                    self.drift_threshold, self.warning_threshold
                ),
            });
        }
        errors
    }
}

/// The full detector state; serde-serializable (bincode 2.0.1) and restored byte-exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ddm {
    params: DdmParams,
    /// Items since the last reset. A float, as River's `stats.Mean.n`, so the arithmetic
    /// (and its saturation far beyond 2^53 items) is the same.
    n: f64,
    /// Running error rate since the last reset.
    p: f64,
    /// `p` and `s` at the smallest `p + s` seen after the warm-up, and that sum.
    p_min: f64,
    s_min: f64,
    ps_min: f64,
    /// River's flags after the latest update; `drift` also triggers the lazy reset.
    warning: bool,
    drift: bool,
}

impl Ddm {
    pub fn new(params: DdmParams) -> Self {
        Self {
            params,
            n: 0.0,
            p: 0.0,
            p_min: f64::INFINITY,
            s_min: f64::INFINITY,
            ps_min: f64::INFINITY,
            warning: false,
            drift: false,
        }
    }

    /// Back to the freshly constructed state (parameters kept).
    fn reset(&mut self) {
        self.n = 0.0;
        self.p = 0.0;
        self.p_min = f64::INFINITY;
        self.s_min = f64::INFINITY;
        self.ps_min = f64::INFINITY;
        self.warning = false;
        self.drift = false;
    }

    /// One observation (1 = error, 0 = correct); returns Drift / Warning / None exactly as
    /// River's drift_detected / warning_detected read after update(x).
    #[inline]
    pub fn update(&mut self, x: f64) -> Signal {
        if self.drift {
            self.reset();
        }
        self.n += 1.0;
        // Same operation order as River's Mean: (x - mean) / n, not (1/n)·(x - mean).
        self.p += (x - self.p) / self.n;

        // u32 -> f64 is exact, so this is River's int/float comparison.
        if self.n > f64::from(self.params.warm_start) {
            let s = (self.p * (1.0 - self.p) / self.n).sqrt();
            let ps = self.p + s;
            if ps <= self.ps_min {
                self.p_min = self.p;
                self.s_min = s;
                self.ps_min = self.p_min + self.s_min;
            }
            self.warning = ps > self.p_min + self.params.warning_threshold * self.s_min;
            if ps > self.p_min + self.params.drift_threshold * self.s_min {
                self.drift = true;
                self.warning = false;
            }
        }
        self.signal()
    }

    /// The signal of the latest update (drift wins over warning).
    fn signal(&self) -> Signal {
        Signal::from_flags(self.drift, self.warning)
    }

    /// River's `drift_detected` after the latest update.
    pub fn drift_detected(&self) -> bool {
        self.drift
    }

    /// River's `warning_detected` after the latest update.
    pub fn warning_detected(&self) -> bool {
        self.warning
    }

    pub fn params(&self) -> &DdmParams {
        &self.params
    }

    /// The state as named numbers (`models --json`, `backtest --detail`): `statistic` is what
    /// is compared with `threshold` where the detector has one such pair.
    pub fn state(&self) -> Vec<(&'static str, f64)> {
        let s = if self.n > 0.0 {
            (self.p * (1.0 - self.p) / self.n).sqrt()
        } else {
            0.0
        };
        vec![
            ("n", self.n),
            ("p", self.p),
            ("p_min", self.p_min),
            ("s_min", self.s_min),
            ("statistic", self.p + s),
            (
                "threshold",
                self.p_min + self.params.drift_threshold * self.s_min,
            ),
        ]
    }

    /// One short line for operators, e.g. "n 812, p 0.104, p_min 0.09 s_min 0.010".
    pub fn summary(&self) -> String {
        if self.n > f64::from(self.params.warm_start) {
            format!(
                "n {}, p {:.4}, p_min {:.4} s_min {:.4}",
                self.n, self.p, self.p_min, self.s_min
            )
        } else {
            format!(
                "n {}, p {:.4}, warming up ({}/{})",
                self.n, self.p, self.n, self.params.warm_start
            )
        }
    }
}
