//! ADWIN (ADaptive WINdowing), Bifet & Gavaldà, "Learning from Time-Changing Data with
//! Adaptive Windowing", SDM 2007.
//!
//! The window W holds every item seen since the last reset, compressed into an exponential
//! histogram: row `r` holds up to `max_buckets` summaries of `2^r` items each, as (sum, M2)
//! where M2 is the sum of squared deviations from the summary's own mean. Every `clock`
//! updates (once more than `grace_period` items are in W) every split of W at a summary
//! boundary into an older part W0 and a newer part W1 is tested, and while some split has
//! `|mean(W0) − mean(W1)| > ε` the oldest summary is dropped. Any drop means drift.
//!
//! River 0.26.1 compatibility (the drift indices match River's on every conformance run):
//! * ε uses River's form, not the paper's harmonic mean:
//!   `δ' = ln(2·ln(|W|)/delta)`, `m = 1/(n0 − mwl + 1) + 1/(n1 − mwl + 1)`,
//!   `ε = sqrt(2·m·(M2/|W|)·δ') + (2/3)·δ'·m`, cut on strict `>`.
//! * Every value River compares (window sums, M2, the running split sums) is computed with
//!   River's f64 operations in River's order: cuts are strict comparisons, so one ulp can
//!   move a drift index. The one shortcut is a division-free pre-test of each split (see
//!   `Cut::first_cut`) that only answers when it is at least 1e-12 (relative) away from a
//!   tie, far beyond any rounding; closer cases run River's formula as is.
//! * After a drift the detector is rebuilt empty at the start of the next update (River's
//!   docstring says W1 is kept; 0.26.1 does not keep it). The clock restarts with it.
//!
//! `update` does not allocate once the histogram has as many rows as it will need
//! (one row per doubling of the window, so a handful of allocations over a lifetime) and
//! the check's scratch arrays have grown to the number of summaries.

use serde::{Deserialize, Serialize};

use super::{ParamError, Signal};

/// Largest accepted `max_buckets`. River has no limit; the bound keeps a mistyped value from
/// turning into a huge per-row allocation.
const MAX_BUCKETS_LIMIT: u32 = 4096;

/// Parameters, River 0.26.1's names and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdwinParams {
    /// Confidence value; smaller means fewer (and later) detections.
    pub delta: f64,
    /// A change check runs every `clock` updates.
    pub clock: u32,
    /// Summaries per histogram row before the two oldest are merged.
    pub max_buckets: u32,
    /// Both sides of a tested split must hold at least this many items.
    pub min_window_length: u32,
    /// No change check until the window holds more than this many items.
    pub grace_period: u32,
}

impl Default for AdwinParams {
    fn default() -> Self {
        Self {
            delta: 0.002,
            clock: 32,
            max_buckets: 5,
            min_window_length: 5,
            grace_period: 10,
        }
    }
}

impl AdwinParams {
    /// Range checks. `Adwin::new` never panics on unchecked values, but behaves sensibly
    /// only on values that pass here.
    /// The first problem [`Self::validate_all`] finds.
    pub fn validate(&self) -> Result<(), ParamError> {
        self.validate_all().into_iter().next().map_or(Ok(()), Err)
    }

    /// Every parameter out of range, each once, in the order of the fields.
    pub fn validate_all(&self) -> Vec<ParamError> {
        let mut errors = Vec::new();
        if !(self.delta > 0.0 && self.delta < 1.0) {
            errors.push(ParamError {
                key: "delta",
                message: format!("must be in (0, 1), got {}", self.delta),
            });
        }
        if self.clock == 0 {
            errors.push(ParamError {
                key: "clock",
                message: "must be at least 1".into(),
            });
        }
        if self.max_buckets == 0 || self.max_buckets > MAX_BUCKETS_LIMIT {
            errors.push(ParamError {
                key: "max_buckets",
                message: format!(
                    "must be in 1..={MAX_BUCKETS_LIMIT}, got {}",
                    self.max_buckets
                ),
            });
        }
        errors
    }
}

/// The full detector state; serde-serializable for bincode persistence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Adwin {
    params: AdwinParams,
    /// The previous update flagged drift, so the next one starts from an empty detector.
    drift_pending: bool,
    /// Updates since the last reset; checks run when it is a multiple of `clock`.
    tick: u64,
    /// Items in W. Kept as f64 because every formula uses it as one (River does the same).
    width: f64,
    /// Sum of the items in W.
    total: f64,
    /// Sum of squared deviations from the mean of W (River calls it `variance`).
    m2: f64,
    /// Per row: slot of its oldest summary. Row `r` summarises `2^r` items per entry and is
    /// a ring of `cap = max_buckets + 1` slots, so dropping the oldest entries moves no data.
    row_head: Vec<u32>,
    /// Per row: number of summaries.
    row_len: Vec<u32>,
    /// Row `r`'s slots are `sums[r*cap .. (r+1)*cap]`. Consumed slots are reset to 0 so that
    /// equal histories give equal bytes.
    sums: Vec<f64>,
    /// M2 of each summary, laid out like `sums`.
    m2s: Vec<f64>,
    /// Reusable buffers of the change check; rebuilt from the state at every check, so they
    /// carry nothing between updates and are not persisted.
    #[serde(skip)]
    scratch: Splits,
}

impl Adwin {
    pub fn new(params: AdwinParams) -> Self {
        let mut det = Self {
            params,
            drift_pending: false,
            tick: 0,
            width: 0.0,
            total: 0.0,
            m2: 0.0,
            row_head: Vec::new(),
            row_len: Vec::new(),
            sums: Vec::new(),
            m2s: Vec::new(),
            scratch: Splits::default(),
        };
        det.reset();
        det
    }

    pub fn params(&self) -> &AdwinParams {
        &self.params
    }

    /// Items currently in the window.
    pub fn width(&self) -> u64 {
        self.width as u64
    }

    /// Mean of the window (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.width > 0.0 {
            self.total / self.width
        } else {
            0.0
        }
    }

    /// One short line for operators.
    /// The state as named numbers (`models --json`, `backtest --detail`): `statistic` is what
    /// is compared with `threshold` where the detector has one such pair.
    pub fn state(&self) -> Vec<(&'static str, f64)> {
        vec![("width", self.width() as f64), ("estimate", self.mean())]
    }

    pub fn summary(&self) -> String {
        format!("width {}, mean {:.3}", self.width(), self.mean())
    }

    /// Slots per row: a row briefly holds `max_buckets + 1` summaries before merging.
    /// Clamped so unvalidated params cannot index out of bounds or allocate absurdly.
    fn cap(&self) -> usize {
        self.params.max_buckets.clamp(1, MAX_BUCKETS_LIMIT) as usize + 1
    }

    fn reset(&mut self) {
        let cap = self.cap();
        self.drift_pending = false;
        self.tick = 0;
        self.width = 0.0;
        self.total = 0.0;
        self.m2 = 0.0;
        self.row_head.clear();
        self.row_len.clear();
        self.sums.clear();
        self.m2s.clear();
        // Row 0 always exists, as in River.
        self.push_row(cap);
    }

    fn push_row(&mut self, cap: usize) {
        self.row_head.push(0);
        self.row_len.push(0);
        self.sums.resize(self.sums.len() + cap, 0.0);
        self.m2s.resize(self.m2s.len() + cap, 0.0);
    }

    /// Flat index of the `k`-th oldest summary of row `r`.
    #[inline]
    fn slot(&self, r: usize, k: usize, cap: usize) -> usize {
        let i = self.row_head[r] as usize + k;
        r * cap + if i >= cap { i - cap } else { i }
    }

    /// One observation; `Drift` exactly when River's `drift_detected` would be true.
    pub fn update(&mut self, x: f64) -> Signal {
        if self.drift_pending {
            self.reset();
        }
        let cap = self.cap();
        self.insert(x, cap);
        self.tick = self.tick.wrapping_add(1);
        // clock == 0 is rejected by validate(); treat it as "check every update" rather than
        // dividing by zero.
        let clock = u64::from(self.params.clock.max(1));
        if self.tick.is_multiple_of(clock)
            && self.width > f64::from(self.params.grace_period)
            && self.check_and_shrink(cap)
        {
            self.drift_pending = true;
            return Signal::Drift;
        }
        Signal::None
    }

    fn insert(&mut self, x: f64, cap: usize) {
        let at = self.slot(0, self.row_len[0] as usize, cap);
        self.sums[at] = x;
        self.m2s[at] = 0.0;
        self.row_len[0] += 1;

        // Incremental M2 of the whole window, in River's operation order.
        self.width += 1.0;
        if self.width > 1.0 {
            let d = x - self.total / (self.width - 1.0);
            self.m2 += (self.width - 1.0) * d * d / self.width;
        }
        self.total += x;

        // Cascade: a row that reached cap entries merges its two oldest into the next row.
        let mut r = 0usize;
        while self.row_len[r] as usize == cap {
            let (i0, i1) = (self.slot(r, 0, cap), self.slot(r, 1, cap));
            let n = pow2(r);
            // x / 2^r equals x * 2^-r exactly (same real value, correctly rounded once).
            let inv = 1.0 / n;
            let (s0, s1) = (self.sums[i0], self.sums[i1]);
            let d = s0 * inv - s1 * inv;
            let merged_sum = s0 + s1;
            let merged_m2 = self.m2s[i0] + self.m2s[i1] + n * 0.5 * d * d;
            for i in [i0, i1] {
                self.sums[i] = 0.0;
                self.m2s[i] = 0.0;
            }
            let head = self.row_head[r] as usize + 2;
            self.row_head[r] = (if head >= cap { head - cap } else { head }) as u32;
            self.row_len[r] -= 2;

            if r + 1 == self.row_len.len() {
                self.push_row(cap);
            }
            let at = self.slot(r + 1, self.row_len[r + 1] as usize, cap);
            self.sums[at] = merged_sum;
            self.m2s[at] = merged_m2;
            self.row_len[r + 1] += 1;
            r += 1;
        }
    }

    /// Tests every split, oldest first, dropping the oldest summary and restarting after
    /// each cut. Returns whether anything was dropped.
    fn check_and_shrink(&mut self, cap: usize) -> bool {
        let mwl = f64::from(self.params.min_window_length);
        let delta = self.params.delta;
        let mut changed = false;
        // Every pass that cuts removes one summary, so this terminates; the bound is a
        // belt-and-braces guard against non-finite arithmetic.
        let mut passes = self.row_len.iter().map(|&l| l as usize).sum::<usize>() + 1;
        while passes > 0 {
            passes -= 1;
            // Both depend only on the window, which is fixed during one pass; River computes
            // the same expressions per split, so hoisting them changes no bit.
            let cut = Cut {
                mwl,
                delta_prime: (2.0 * self.width.ln() / delta).ln(),
                var_in_window: self.m2 / self.width,
            };
            self.collect_splits(cap);
            if !cut.first_cut(&mut self.scratch) {
                break;
            }
            changed = true;
            if self.width > 0.0 {
                self.delete_oldest(cap);
            } else {
                break;
            }
        }
        changed
    }

    /// Fills the scratch with (n0, n1, u0, u1) of every testable split, oldest first, with
    /// River's running sums (so every value is bit-identical to River's).
    fn collect_splits(&mut self, cap: usize) {
        // Every summary but the newest is a split; fill by index into pre-sized arrays.
        let count = self.row_len.iter().map(|&l| l as usize).sum::<usize>();
        let splits = count.saturating_sub(1);
        let sc = &mut self.scratch;
        sc.resize(splits);
        let (sn0, sn1, su0, su1) = (
            &mut sc.n0[..splits],
            &mut sc.n1[..splits],
            &mut sc.u0[..splits],
            &mut sc.u1[..splits],
        );
        let mut n0 = 0.0f64;
        let mut n1 = self.width;
        let mut u0 = 0.0f64;
        let mut u1 = self.total;
        let mut j = 0usize;
        for r in (0..self.row_len.len()).rev() {
            let len = self.row_len[r] as usize;
            let head = self.row_head[r] as usize;
            let row = &self.sums[r * cap..(r + 1) * cap];
            let size = pow2(r);
            // The ring's entries, oldest first, as at most two contiguous runs.
            let first = &row[head.min(cap)..(head + len).min(cap)];
            let second = &row[..(head + len).saturating_sub(cap).min(cap)];
            for &s in first.iter().chain(second) {
                if j == splits {
                    // The split after the newest summary (W1 empty) is never tested.
                    return;
                }
                n0 += size;
                n1 -= size;
                u0 += s;
                u1 -= s;
                sn0[j] = n0;
                sn1[j] = n1;
                su0[j] = u0;
                su1[j] = u1;
                j += 1;
            }
        }
    }

    /// Drops the oldest summary, updating width, total and M2 with the parallel-variance
    /// formula in River's order.
    fn delete_oldest(&mut self, cap: usize) {
        let Some(top) = self.row_len.len().checked_sub(1) else {
            return;
        };
        if self.row_len[top] == 0 {
            return;
        }
        let i = self.slot(top, 0, cap);
        let n = pow2(top);
        let u = self.sums[i];
        let v = self.m2s[i];
        let mu = u * (1.0 / n);
        self.width -= n;
        self.total -= u;
        let mu_window = self.total / self.width;
        let d = mu - mu_window;
        self.m2 -= v + n * self.width * d * d / (n + self.width);

        self.sums[i] = 0.0;
        self.m2s[i] = 0.0;
        let head = self.row_head[top] as usize + 1;
        self.row_head[top] = (if head >= cap { head - cap } else { head }) as u32;
        self.row_len[top] -= 1;
        // An emptied top row disappears, but row 0 is always kept.
        if self.row_len[top] == 0 && top > 0 {
            self.row_head.pop();
            self.row_len.pop();
            self.sums.truncate(top * cap);
            self.m2s.truncate(top * cap);
        }
    }
}

/// Relative tolerance of the division-free pre-test, far above its rounding error (tens of
/// ulps, about 1e-14) and River's own, so it never decides a case River could decide
/// differently.
const TOL: f64 = 1e-12;

/// Results smaller than this may have lost relative precision to underflow; such splits go
/// to the exact test.
const TINY: f64 = 1e-200;

/// The per-pass constants of the cut test.
struct Cut {
    mwl: f64,
    delta_prime: f64,
    var_in_window: f64,
}

/// The splits of one pass, as parallel arrays so the pre-test runs as a straight loop the
/// compiler can vectorise.
#[derive(Debug, Clone, Default)]
struct Splits {
    n0: Vec<f64>,
    n1: Vec<f64>,
    u0: Vec<f64>,
    u1: Vec<f64>,
    /// Per split: 0 = no cut (or not testable), 1 = cut, 2 = undecided by the pre-test.
    code: Vec<u8>,
}

impl PartialEq for Splits {
    /// Scratch contents carry no state between updates.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Splits {
    fn resize(&mut self, len: usize) {
        if self.n0.len() != len {
            self.n0.resize(len, 0.0);
            self.n1.resize(len, 0.0);
            self.u0.resize(len, 0.0);
            self.u1.resize(len, 0.0);
        }
    }
}

impl Cut {
    /// Whether some split cuts, i.e. River's `|u0/n0 − u1/n1| > ε` with both sides at least
    /// `min_window_length` long, for any split of the pass.
    ///
    /// A pass tests up to ~5·log2(width) splits and River's form costs four divisions and a
    /// square root each, which dominated the update cost. So the inequality is first
    /// evaluated multiplied through by `n0·n1·a·b` (a = n0−mwl+1, b = n1−mwl+1, both ≥ 1)
    /// and squared, with products only; when it holds or fails by more than `TOL` relative
    /// to the magnitudes involved, that is River's answer too. Near-ties, and any non-finite
    /// or underflowing case, are decided by [`Cut::exact`]. Only the first cut matters (the
    /// pass stops there), and it is the first split whose answer is yes.
    fn first_cut(&self, sc: &mut Splits) -> bool {
        let len = sc.n0.len();
        sc.code.clear();
        sc.code.resize(len, 2);
        let (mwl, dp, v) = (self.mwl, self.delta_prime, self.var_in_window);
        if dp > 0.0 && v >= 0.0 {
            let lin_k = 2.0 / 3.0 * dp;
            let sq_k = 2.0 * v * dp;
            let (up, down) = ((1.0 + TOL) * (1.0 + TOL), (1.0 - TOL) * (1.0 - TOL));
            let fine = |q: f64| (q == 0.0) | (TINY..=f64::MAX).contains(&q);
            let it = sc.n0.iter().zip(&sc.n1).zip(sc.u0.iter().zip(&sc.u1));
            for (code, ((&n0, &n1), (&u0, &u1))) in sc.code.iter_mut().zip(it) {
                let testable = (n0 >= mwl) & (n1 >= mwl);
                let a = n0 - mwl + 1.0;
                let b = n1 - mwl + 1.0;
                let p = n0 * n1;
                let ab = a * b;
                let apb = a + b;
                // |Δmean|·P·ab, the linear ε term ·P·ab, the size of Δmean's two terms
                // ·P·ab, and the square-root ε term squared ·(P·ab)².
                let lhs = (u0 * n1 - u1 * n0).abs() * ab;
                let lin = lin_k * apb * p;
                let mag = (u0.abs() * n1 + u1.abs() * n0) * ab;
                let sq = sq_k * apb * ab * p * p;
                let g = lhs - lin;
                let slack = TOL * (mag + lin);
                let hi = g - slack;
                let lo = g + slack;
                let ok = fine(mag) & fine(lin) & fine(sq) & (g.abs() <= f64::MAX);
                let yes = ok & (hi > 0.0) & (hi * hi > sq * up);
                let no = ok & ((lo < 0.0) | (lo * lo < sq * down));
                *code = u8::from(testable) * (u8::from(yes) + 2 * u8::from(!yes & !no));
            }
        } else {
            for (code, (&n0, &n1)) in sc.code.iter_mut().zip(sc.n0.iter().zip(&sc.n1)) {
                *code = 2 * u8::from((n0 >= mwl) & (n1 >= mwl));
            }
        }
        for (i, &code) in sc.code.iter().enumerate() {
            if code == 1 || (code == 2 && self.exact(sc.n0[i], sc.n1[i], sc.u0[i], sc.u1[i])) {
                return true;
            }
        }
        false
    }

    /// River's formula, operation for operation.
    fn exact(&self, n0: f64, n1: f64, u0: f64, u1: f64) -> bool {
        let delta_mean = u0 / n0 - u1 / n1;
        let m = 1.0 / (n0 - self.mwl + 1.0) + 1.0 / (n1 - self.mwl + 1.0);
        let epsilon = (2.0 * m * self.var_in_window * self.delta_prime).sqrt()
            + 2.0 / 3.0 * self.delta_prime * m;
        delta_mean.abs() > epsilon
    }
}

/// 2^r as f64 (exact), built from its bit pattern: `powi` is a libcall on the hot path.
/// A row index never approaches the exponent range (a row needs 2^r items).
#[inline]
fn pow2(r: usize) -> f64 {
    f64::from_bits((1023 + r.min(1000) as u64) << 52)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SplitMix64, for reproducible test inputs.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn unit(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// The pre-test must never disagree with River's formula, including on splits placed
    /// within a few ulps of the threshold.
    #[test]
    fn fast_cut_test_agrees_with_exact() {
        let mut rng = Rng(7);
        let mut near = 0;
        for i in 0..2_000_000u64 {
            let width = (2 + rng.next() % 5_000_000) as f64;
            let n0 = (1 + rng.next() % (width as u64 - 1)) as f64;
            let n1 = width - n0;
            let mwl = (rng.next() % 6) as f64;
            let scale = 10f64.powi((rng.next() % 13) as i32 - 6);
            let v = rng.unit() * scale * scale;
            let delta = 10f64.powi(-((rng.next() % 6) as i32) - 1);
            let cut = Cut {
                mwl,
                delta_prime: (2.0 * width.ln() / delta).ln(),
                var_in_window: v,
            };
            if n0 < mwl || n1 < mwl {
                continue;
            }
            let m = 1.0 / (n0 - mwl + 1.0) + 1.0 / (n1 - mwl + 1.0);
            let eps = (2.0 * m * v * cut.delta_prime).sqrt() + 2.0 / 3.0 * cut.delta_prime * m;
            let mean1 = (rng.unit() - 0.5) * scale;
            // Mean gap: random, or placed at ε give or take a few ulps.
            let gap = if i % 2 == 0 {
                near += 1;
                let ulps = (rng.next() % 9) as f64 - 4.0;
                eps * (1.0 + ulps * f64::EPSILON)
            } else {
                eps * rng.unit() * 2.0
            };
            let sign = if rng.next().is_multiple_of(2) {
                1.0
            } else {
                -1.0
            };
            let u0 = (mean1 + sign * gap) * n0;
            let u1 = mean1 * n1;
            let mut sc = Splits {
                n0: vec![n0],
                n1: vec![n1],
                u0: vec![u0],
                u1: vec![u1],
                code: Vec::new(),
            };
            assert_eq!(
                cut.first_cut(&mut sc),
                cut.exact(n0, n1, u0, u1),
                "n0 {n0} n1 {n1} u0 {u0} u1 {u1} v {v} mwl {mwl}"
            );
        }
        assert!(near > 0);
    }
}
