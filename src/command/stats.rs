//! The runner's own statistics for `metrics`: how long hooks ran.
//!
//! Kept in the command actor (which sees every `HookFinished`) and handed out by value in
//! [`super::RunnerStatus`]; the control socket renders them. Counts start at zero with the
//! daemon, as Prometheus expects of counters.

use serde::Serialize;

use super::{HookEnd, HookOutcome};

/// Upper bounds (seconds) of the hook duration buckets: retrain hooks run from seconds to
/// hours, so the buckets span that range rather than the usual sub-second defaults.
pub const HOOK_DURATION_BOUNDS: [f64; 8] = [1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 7200.0];

/// A fixed-bucket histogram of hook run times.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DurationHistogram {
    /// Runs per bucket (not cumulative); the last slot is the `+Inf` bucket.
    pub counts: [u64; HOOK_DURATION_BOUNDS.len() + 1],
    pub sum_s: f64,
}

impl DurationHistogram {
    /// Counts one hook run. A hook that never started has no duration worth counting.
    pub fn record(&mut self, outcome: &HookOutcome) {
        if matches!(outcome.end, HookEnd::SpawnFailed(_)) {
            return;
        }
        self.observe(outcome.duration.as_secs_f64());
    }

    pub fn observe(&mut self, secs: f64) {
        let slot = HOOK_DURATION_BOUNDS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(HOOK_DURATION_BOUNDS.len());
        self.counts[slot] += 1;
        self.sum_s += secs;
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `(upper bound, cumulative count)` per bucket, ending with `(+Inf, count)`, as the
    /// exposition format lists them.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        HOOK_DURATION_BOUNDS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.counts)
            .map(|(le, n)| {
                total += n;
                (le, total)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_upper_inclusive_and_cumulative() {
        let mut h = DurationHistogram::default();
        for s in [0.2, 1.0, 1.5, 7200.0, 9000.0] {
            h.observe(s);
        }
        let c = h.cumulative();
        assert_eq!(c[0], (1.0, 2));
        assert_eq!(c[1], (5.0, 3));
        assert_eq!(c[7], (7200.0, 4));
        assert_eq!(c[8].1, 5);
        assert!(c[8].0.is_infinite());
        assert_eq!(h.count(), 5);
        assert!((h.sum_s - 16202.7).abs() < 1e-9);
    }

    #[test]
    fn spawn_failures_are_not_timed() {
        let mut h = DurationHistogram::default();
        h.record(&HookOutcome::spawn_failed("no such file".into()));
        assert_eq!(h.count(), 0);
    }
}
