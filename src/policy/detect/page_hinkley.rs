//! Page-Hinkley test (E. S. Page, "Continuous Inspection Schemes", Biometrika 41, 1954),
//! in River 0.26.1's two-sided, fading form.
//!
//! With `m` the running mean of the items since the last reset (x included) and
//! `dev = x − m`:
//!
//! ```text
//! S⁺ ← alpha·S⁺ + dev − delta      min⁺ ← min(min⁺, S⁺)     (min⁺ starts at +∞)
//! S⁻ ← alpha·S⁻ + dev + delta      max⁻ ← max(max⁻, S⁻)     (max⁻ starts at −1)
//! up   = S⁺ − min⁺ > threshold
//! down = max⁻ − S⁻ > threshold
//! ```
//!
//! tested only once `n ≥ min_instances`; `mode` picks up, down or either. There is no warning
//! zone. The statistic is not normalised, so `threshold` is in the data's units.
//!
//! River compatibility: same operation order (`(alpha·S + dev) − delta`, mean updated as
//! `m += (x − m)/n`), min/max updated before the test, and the lazy reset: the update after
//! a drift starts from a fresh detector. The drift indices match River's on every
//! conformance run. `update` is allocation-free.

use serde::{Deserialize, Serialize};

use super::{ParamError, Signal};

/// Which side of the test can flag drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PhMode {
    /// An increase or a decrease of the mean.
    #[default]
    Both,
    /// Only an increase of the mean.
    Up,
    /// Only a decrease of the mean.
    Down,
}

/// Parameters, River 0.26.1's names and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PageHinkleyParams {
    /// No drift before this many items since the last reset.
    pub min_instances: u32,
    /// Tolerated magnitude of change per item.
    pub delta: f64,
    /// Drift when the cumulative statistic exceeds this (data units).
    pub threshold: f64,
    /// Fading factor applied to the cumulative sums.
    pub alpha: f64,
    pub mode: PhMode,
}

impl Default for PageHinkleyParams {
    fn default() -> Self {
        Self {
            min_instances: 30,
            delta: 0.005,
            threshold: 50.0,
            alpha: 1.0 - 0.0001,
            mode: PhMode::Both,
        }
    }
}

impl PageHinkleyParams {
    /// The first problem [`Self::validate_all`] finds.
    pub fn validate(&self) -> Result<(), ParamError> {
        self.validate_all().into_iter().next().map_or(Ok(()), Err)
    }

    /// Every parameter out of range, each once, in the order of the fields.
    pub fn validate_all(&self) -> Vec<ParamError> {
        let mut errors = Vec::new();
        if !(self.delta.is_finite() && self.delta >= 0.0) {
            errors.push(ParamError {
                key: "delta",
                message: format!("must be finite and >= 0, got {}", self.delta),
            });
        }
        if !(self.threshold.is_finite() && self.threshold > 0.0) {
            errors.push(ParamError {
                key: "threshold",
                message: format!("must be finite and > 0, got {}", self.threshold),
            });
        }
        if !(self.alpha > 0.0 && self.alpha <= 1.0) {
            errors.push(ParamError {
                key: "alpha",
                message: format!("must be in (0, 1], got {}", self.alpha),
            });
        }
        errors
    }
}

/// The full detector state; serde-serializable for bincode persistence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PageHinkley {
    params: PageHinkleyParams,
    /// The previous update flagged drift, so the next one starts from a fresh detector.
    drift_pending: bool,
    /// Items since the last reset, as f64 because it is only ever used as a divisor.
    n: f64,
    mean: f64,
    sum_increase: f64,
    sum_decrease: f64,
    min_increase: f64,
    max_decrease: f64,
}

impl PageHinkley {
    pub fn new(params: PageHinkleyParams) -> Self {
        let mut det = Self {
            params,
            drift_pending: false,
            n: 0.0,
            mean: 0.0,
            sum_increase: 0.0,
            sum_decrease: 0.0,
            min_increase: f64::INFINITY,
            max_decrease: -1.0,
        };
        det.reset();
        det
    }

    pub fn params(&self) -> &PageHinkleyParams {
        &self.params
    }

    fn reset(&mut self) {
        self.drift_pending = false;
        self.n = 0.0;
        self.mean = 0.0;
        self.sum_increase = 0.0;
        self.sum_decrease = 0.0;
        self.min_increase = f64::INFINITY;
        // River's initial value; the first S⁻ is +delta, so it never matters for delta >= 0.
        self.max_decrease = -1.0;
    }

    /// The larger of the two test statistics (what is compared with `threshold`).
    pub fn statistic(&self) -> f64 {
        let up = self.sum_increase - self.min_increase;
        let down = self.max_decrease - self.sum_decrease;
        match self.params.mode {
            PhMode::Up => up,
            PhMode::Down => down,
            PhMode::Both => up.max(down),
        }
    }

    /// The state as named numbers (`models --json`, `backtest --detail`): `statistic` is what
    /// is compared with `threshold` where the detector has one such pair.
    pub fn state(&self) -> Vec<(&'static str, f64)> {
        let stat = if self.n > 0.0 { self.statistic() } else { 0.0 };
        vec![
            ("n", self.n),
            ("mean", self.mean),
            ("statistic", stat),
            ("threshold", self.params.threshold),
        ]
    }

    /// One short line for operators.
    pub fn summary(&self) -> String {
        let stat = if self.n > 0.0 { self.statistic() } else { 0.0 };
        format!("PH {:.1}/{}", stat, self.params.threshold)
    }

    /// One observation; `Drift` exactly when River's `drift_detected` would be true.
    pub fn update(&mut self, x: f64) -> Signal {
        if self.drift_pending {
            self.reset();
        }
        self.n += 1.0;
        self.mean += (x - self.mean) / self.n;
        let dev = x - self.mean;
        let p = &self.params;
        self.sum_increase = p.alpha * self.sum_increase + dev - p.delta;
        self.sum_decrease = p.alpha * self.sum_decrease + dev + p.delta;
        if self.sum_increase < self.min_increase {
            self.min_increase = self.sum_increase;
        }
        if self.sum_decrease > self.max_decrease {
            self.max_decrease = self.sum_decrease;
        }
        if self.n >= f64::from(p.min_instances) {
            let up = self.sum_increase - self.min_increase > p.threshold;
            let down = self.max_decrease - self.sum_decrease > p.threshold;
            let drift = match p.mode {
                PhMode::Both => up || down,
                PhMode::Up => up,
                PhMode::Down => down,
            };
            if drift {
                self.drift_pending = true;
                return Signal::Drift;
            }
        }
        Signal::None
    }
}
