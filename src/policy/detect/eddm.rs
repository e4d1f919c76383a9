//! EDDM, the Early Drift Detection Method (Baena-García, del Campo-Ávila, Fidalgo, Bifet,
//! Gavaldà, Morales-Bueno: "Early Drift Detection Method", IWKDDS 2006), for a stream of
//! binary errors (`x == 1` is an error, anything else is not).
//!
//! Instead of the error rate, EDDM follows the distance (in items) between consecutive
//! errors: its mean `p'` and sample standard deviation `s'`. It remembers the largest
//! `p' + 2s'` seen and compares the current value with it: a ratio below `alpha` is a
//! warning, below `beta` a drift. Only increases of the error rate (shorter distances) are
//! detected.
//!
//! River 0.26.1 compatibility (`river.drift.binary.EDDM`), all of which decide the exact index
//! at which a warning or drift is flagged:
//! * the first distance after a reset is the 1-based position of the first error;
//! * the distance statistics are River's `stats.Var` (ddof 1): incremental mean, and a running
//!   variance `σ += ((d − m_old)(d − m_new) − σ)/(k − 1)`, 0 for fewer than 2 distances;
//! * only error items are evaluated; on correct items, and on items where `p' + 2s'` sets a
//!   new maximum, both flags keep their previous values (a warning persists);
//! * evaluation needs `n > warm_start` items and, for a verdict, `n_errors > warm_start`
//!   errors since the reset (both strict);
//! * a drift leaves the warning flag as it was, so both can be set at once (then `update`
//!   returns `Drift`; `warning_detected()` still reports River's flag);
//! * the detector resets lazily at the start of the next update.

use serde::{Deserialize, Serialize};

use super::{ParamError, Signal};

/// Parameters, River 0.26.1's names and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EddmParams {
    /// Items, and errors, needed after a reset before anything can be flagged.
    pub warm_start: u32,
    /// Warning level: ratio of the current to the maximal `p' + 2s'`.
    pub alpha: f64,
    /// Drift level: ratio of the current to the maximal `p' + 2s'`.
    pub beta: f64,
}

impl Default for EddmParams {
    fn default() -> Self {
        Self {
            warm_start: 30,
            alpha: 0.95,
            beta: 0.9,
        }
    }
}

impl EddmParams {
    /// Range checks: `0 < beta <= alpha <= 1` (River raises on `alpha < beta` and documents
    /// both as lying between 0 and 1; the ratio tested is never above 1).
    /// The first problem [`Self::validate_all`] finds.
    pub fn validate(&self) -> Result<(), ParamError> {
        self.validate_all().into_iter().next().map_or(Ok(()), Err)
    }

    /// Every parameter out of range, each once, in the order of the fields.
    pub fn validate_all(&self) -> Vec<ParamError> {
        let mut errors = Vec::new();
        if !(self.alpha > 0.0 && self.alpha <= 1.0) {
            errors.push(ParamError {
                key: "alpha",
                message: format!("must be in (0, 1], got {}", self.alpha),
            });
        }
        if !(self.beta > 0.0 && self.beta <= 1.0) {
            errors.push(ParamError {
                key: "beta",
                message: format!("must be in (0, 1], got {}", self.beta),
            });
        }
        if self.alpha < self.beta {
            errors.push(ParamError {
                key: "alpha",
                message: format!("must be >= beta ({}), got {}", self.beta, self.alpha),
            });
        }
        errors
    }
}

/// The full detector state; serde-serializable (bincode 2.0.1) and restored byte-exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Eddm {
    params: EddmParams,
    /// Items since the last reset.
    n: u64,
    /// Errors since the last reset; also the number of distances recorded.
    n_errors: u64,
    /// 1-based position (since the reset) of the latest error, 0 before the first.
    last_error: u64,
    /// Mean of the distances between errors.
    dist_mean: f64,
    /// Sample variance (ddof 1) of those distances.
    dist_var: f64,
    /// Largest `p' + 2s'` seen since the reset; -1 before the first evaluation.
    p2s_max: f64,
    /// River's flags after the latest update; `drift` also triggers the lazy reset.
    warning: bool,
    drift: bool,
}

impl Eddm {
    pub fn new(params: EddmParams) -> Self {
        Self {
            params,
            n: 0,
            n_errors: 0,
            last_error: 0,
            dist_mean: 0.0,
            dist_var: 0.0,
            p2s_max: -1.0,
            warning: false,
            drift: false,
        }
    }

    /// Back to the freshly constructed state (parameters kept).
    fn reset(&mut self) {
        self.n = 0;
        self.n_errors = 0;
        self.last_error = 0;
        self.dist_mean = 0.0;
        self.dist_var = 0.0;
        self.p2s_max = -1.0;
        self.warning = false;
        self.drift = false;
    }

    /// One observation (`1.0` = error); returns Drift / Warning / None exactly as River's
    /// drift_detected / warning_detected read after update(x) (Drift when both are set).
    #[inline]
    pub fn update(&mut self, x: f64) -> Signal {
        if self.drift {
            self.reset();
        }
        // Saturating: unreachable in practice, but it keeps the "never panics" promise.
        self.n = self.n.saturating_add(1);
        if x == 1.0 {
            self.on_error();
        }
        self.signal()
    }

    /// The error branch, kept out of line so the common correct-item path stays tiny.
    #[inline(never)]
    fn on_error(&mut self) {
        self.n_errors = self.n_errors.saturating_add(1);
        // Integer distance, exact in f64 below 2^53 items. `last_error <= n` always holds;
        // saturating keeps even a corrupted restored state from panicking.
        let d = self.n.saturating_sub(self.last_error) as f64;
        let k = self.n_errors as f64;
        let mean_old = self.dist_mean;
        self.dist_mean += (d - mean_old) / k;
        if k > 1.0 {
            self.dist_var += ((d - mean_old) * (d - self.dist_mean) - self.dist_var) / (k - 1.0);
        }

        let warm = u64::from(self.params.warm_start);
        if self.n > warm {
            let p2s = self.dist_mean + 2.0 * self.dist_var.sqrt();
            if p2s > self.p2s_max {
                self.p2s_max = p2s;
            } else if self.n_errors > warm {
                let level = p2s / self.p2s_max;
                if level < self.params.beta {
                    // River leaves the warning flag alone on a drift.
                    self.drift = true;
                } else {
                    self.warning = level < self.params.alpha;
                }
            }
        }
        self.last_error = self.n;
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

    pub fn params(&self) -> &EddmParams {
        &self.params
    }

    /// One short line for operators, e.g. "errors 45/812, mean gap 9.8 sd 7.1, max 24.0".
    /// The state as named numbers (`models --json`, `backtest --detail`): `statistic` is what
    /// is compared with `threshold` where the detector has one such pair.
    pub fn state(&self) -> Vec<(&'static str, f64)> {
        let p2s = self.dist_mean + 2.0 * self.dist_var.sqrt();
        let level = if self.p2s_max > 0.0 {
            p2s / self.p2s_max
        } else {
            1.0
        };
        vec![
            ("n", self.n as f64),
            ("errors", self.n_errors as f64),
            ("mean_gap", self.dist_mean),
            ("sd_gap", self.dist_var.sqrt()),
            ("p2s_max", self.p2s_max),
            ("statistic", level),
            ("threshold", self.params.beta),
        ]
    }

    pub fn summary(&self) -> String {
        format!(
            "errors {}/{}, mean gap {:.2} sd {:.2}, max {:.2}",
            self.n_errors,
            self.n,
            self.dist_mean,
            self.dist_var.sqrt(),
            self.p2s_max
        )
    }
}
