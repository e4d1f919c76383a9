//! KSWIN (Kolmogorov-Smirnov WINdowing), Raab, Heusinger & Schleif, "Reactive Soft Prototype
//! Computing for Concept Drift Streams", Neurocomputing 2020.
//!
//! A sliding window Ψ of `window_size` items. Once it is full, every update compares
//! R = the newest `stat_size` items with W = `stat_size` items drawn without replacement
//! from the older `window_size − stat_size` positions, using the two-sample
//! Kolmogorov-Smirnov test: drift when `p ≤ alpha` and `D > 0.1`.
//!
//! River 0.26.1 compatibility (drift indices identical on every conformance run):
//! * The subsample is drawn exactly as CPython does it: `random.Random(seed)` is MT19937
//!   seeded by `init_by_array` over the 32-bit words of the seed, and the positions are
//!   `rng.sample(range(window_size − stat_size), stat_size)`, reproduced bit for bit
//!   (pool or set algorithm, chosen as CPython does; `randbelow` by rejection on the top
//!   `bit_length(n)` bits of each 32-bit output). One `sample` per full-window update.
//! * The test is scipy's `ks_2samp(W, R, method="auto")`, which for two samples of equal
//!   size n ≤ 10000 is the exact test: D = h/n with integer h (ECDFs compared at every data
//!   point, ties counted with `≤`), and the p-value is scipy's `_compute_prob_outside_square`
//!   evaluated in the same f64 order. Because p depends only on h and decreases with it,
//!   the decision reduces to `h ≥ h_min`, computed once per parameter set, so an update costs
//!   one subsample, two small sorts and a merge rather than a p-value evaluation.
//! * A NaN anywhere in R or W gives no drift (scipy propagates NaN into p, and `NaN ≤ alpha`
//!   is false).
//! * Lazy reset: the update after a drift empties the window and re-seeds the RNG.
//!
//! Departures from River: `seed = None` does not seed from the OS (detectors here must be
//! deterministic and persistable); it uses the fixed seed [`DEFAULT_SEED`]. River's `window`
//! pre-fill argument is not supported. `stat_size` is limited to 10000 (scipy switches to an
//! asymptotic p-value above that) and `window_size ≥ 2·stat_size` is required (River would
//! raise from `random.sample` at the first test otherwise).
//!
//! `update` is allocation-free after the first full window (scratch buffers are reused).

use serde::{Deserialize, Serialize};

use super::{ParamError, Signal};

/// Seed used when `seed` is `None`.
pub const DEFAULT_SEED: u64 = 0;

/// Largest `stat_size` for which scipy's `method="auto"` uses the exact test.
const MAX_STAT_SIZE: u32 = 10_000;

/// Largest accepted `window_size`; the window is allocated up front, so the bound keeps a
/// mistyped value from exhausting memory (`new` clamps to it too).
const MAX_WINDOW_SIZE: u32 = 10_000_000;

/// Parameters, River 0.26.1's names and defaults (`window` is not supported).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KswinParams {
    /// Significance level of the KS test.
    pub alpha: f64,
    /// Length of the sliding window.
    pub window_size: u32,
    /// Size of each of the two compared samples.
    pub stat_size: u32,
    /// Seed for the subsampling RNG; `None` means [`DEFAULT_SEED`].
    pub seed: Option<u64>,
}

impl Default for KswinParams {
    fn default() -> Self {
        Self {
            alpha: 0.005,
            window_size: 100,
            stat_size: 30,
            seed: None,
        }
    }
}

impl KswinParams {
    /// The first problem [`Self::validate_all`] finds.
    pub fn validate(&self) -> Result<(), ParamError> {
        self.validate_all().into_iter().next().map_or(Ok(()), Err)
    }

    /// Every parameter out of range, each once, in the order of the fields.
    pub fn validate_all(&self) -> Vec<ParamError> {
        let mut errors = Vec::new();
        if !(0.0..=1.0).contains(&self.alpha) {
            errors.push(ParamError {
                key: "alpha",
                message: format!("must be in [0, 1], got {}", self.alpha),
            });
        }
        if self.stat_size == 0 || self.stat_size > MAX_STAT_SIZE {
            errors.push(ParamError {
                key: "stat_size",
                message: format!("must be in 1..={MAX_STAT_SIZE}, got {}", self.stat_size),
            });
        }
        if self.window_size > MAX_WINDOW_SIZE {
            errors.push(ParamError {
                key: "window_size",
                message: format!(
                    "must be at most {MAX_WINDOW_SIZE}, got {}",
                    self.window_size
                ),
            });
        } else if u64::from(self.window_size) < 2 * u64::from(self.stat_size) {
            errors.push(ParamError {
                key: "window_size",
                message: format!(
                    "must be at least 2 * stat_size = {}, got {}",
                    2 * u64::from(self.stat_size),
                    self.window_size
                ),
            });
        }
        errors
    }
}

/// The full detector state; serde-serializable for bincode persistence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kswin {
    params: KswinParams,
    /// The previous update flagged drift, so the next one starts from a fresh detector.
    drift_pending: bool,
    /// Ring buffer of the window, `window_size` slots.
    window: Vec<f64>,
    /// Slot of the oldest item.
    head: u32,
    /// Items in the window (≤ window_size).
    len: u32,
    /// The CPython-compatible RNG, re-seeded at every reset.
    rng: Mt19937,
    /// Smallest h (D = h/stat_size) that flags drift; `stat_size + 1` if none does.
    /// Derived from the parameters, stored so a restored detector needs no recomputation.
    h_min: u32,
    /// KS statistic D of the last test (0 before the first).
    last_d: f64,
    /// Reusable buffers; contents never outlive one update, so they are not persisted.
    #[serde(skip)]
    scratch: Scratch,
}

impl Kswin {
    pub fn new(params: KswinParams) -> Self {
        let ws = params.window_size.min(MAX_WINDOW_SIZE) as usize;
        let h_min = critical_h(params.stat_size, params.alpha);
        let seed = params.seed.unwrap_or(DEFAULT_SEED);
        Self {
            drift_pending: false,
            window: vec![0.0; ws],
            head: 0,
            len: 0,
            rng: Mt19937::from_seed(seed),
            h_min,
            last_d: 0.0,
            scratch: Scratch::default(),
            params,
        }
    }

    pub fn params(&self) -> &KswinParams {
        &self.params
    }

    /// The KS statistic D of the last test.
    pub fn last_statistic(&self) -> f64 {
        self.last_d
    }

    /// One short line for operators.
    /// The state as named numbers (`models --json`, `backtest --detail`): `statistic` is what
    /// is compared with `threshold` where the detector has one such pair.
    pub fn state(&self) -> Vec<(&'static str, f64)> {
        let n = self.params.stat_size.max(1);
        vec![
            ("fill", f64::from(self.len)),
            ("window", f64::from(self.params.window_size)),
            ("statistic", self.last_d),
            ("threshold", f64::from(self.h_min) / f64::from(n)),
        ]
    }

    pub fn summary(&self) -> String {
        let n = self.params.stat_size.max(1);
        format!(
            "window {}/{}, D {:.3} (drift at >= {:.3})",
            self.len,
            self.params.window_size,
            self.last_d,
            f64::from(self.h_min) / f64::from(n)
        )
    }

    fn reset(&mut self) {
        self.drift_pending = false;
        self.window.fill(0.0);
        self.head = 0;
        self.len = 0;
        self.rng = Mt19937::from_seed(self.params.seed.unwrap_or(DEFAULT_SEED));
        self.last_d = 0.0;
    }

    /// One observation; `Drift` exactly when River's `drift_detected` would be true.
    pub fn update(&mut self, x: f64) -> Signal {
        if self.drift_pending {
            self.reset();
        }
        let ws = self.window.len();
        if ws == 0 {
            return Signal::None;
        }
        // Append, dropping the oldest item when full (a deque with maxlen).
        let head = self.head as usize;
        let len = self.len as usize;
        if len < ws {
            let slot = wrap(head + len, ws);
            self.window[slot] = x;
            self.len += 1;
        } else {
            self.window[head] = x;
            self.head = wrap(head + 1, ws) as u32;
        }
        if (self.len as usize) < ws {
            return Signal::None;
        }
        let n = self.params.stat_size as usize;
        let older = ws.saturating_sub(n);
        if n == 0 || n > older {
            // Rejected by validate(); River would raise here. No test.
            return Signal::None;
        }
        let head = self.head as usize;
        let s = &mut self.scratch;
        s.prepare(n, older);

        sample_indices(&mut self.rng, older, n, s);
        let mut nan = false;
        for i in 0..n {
            let v = self.window[wrap(head + s.picked[i] as usize, ws)];
            nan |= v.is_nan();
            s.w[i] = v;
        }
        for i in 0..n {
            let v = self.window[wrap(head + older + i, ws)];
            nan |= v.is_nan();
            s.r[i] = v;
        }
        if nan {
            self.last_d = f64::NAN;
            return Signal::None;
        }
        let h = ks_h(&mut s.w[..n], &mut s.r[..n]);
        self.last_d = h as f64 / n as f64;
        if h >= self.h_min as usize {
            self.drift_pending = true;
            return Signal::Drift;
        }
        Signal::None
    }
}

/// `i mod n` for `i < 2n`, without a division.
#[inline]
fn wrap(i: usize, n: usize) -> usize {
    if i >= n { i - n } else { i }
}

/// Buffers reused across updates so that `update` does not allocate.
#[derive(Debug, Clone, Default)]
struct Scratch {
    w: Vec<f64>,
    r: Vec<f64>,
    picked: Vec<u32>,
    /// CPython's "pool" (a list of the population) for the pool algorithm.
    pool: Vec<u32>,
    /// Membership bitset for the set algorithm.
    seen: Vec<u64>,
}

impl PartialEq for Scratch {
    /// Scratch contents carry no state between updates.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Scratch {
    fn prepare(&mut self, k: usize, n: usize) {
        if self.w.len() != k {
            self.w.resize(k, 0.0);
            self.r.resize(k, 0.0);
            self.picked.resize(k, 0);
        }
        let words = n.div_ceil(64);
        if self.seen.len() != words {
            self.seen.resize(words, 0);
        }
        if self.pool.len() != n {
            self.pool.resize(n, 0);
        }
    }
}

/// The two-sample KS statistic for equal sizes, as an integer h with D = h/n: the largest
/// difference of the counts `#{w ≤ v}` and `#{r ≤ v}` over all data points v. Sorts both
/// slices in place. NaN-free input.
fn ks_h(w: &mut [f64], r: &mut [f64]) -> usize {
    sort_small(w);
    sort_small(r);
    let (n1, n2) = (w.len(), r.len());
    let (mut i, mut j) = (0usize, 0usize);
    let mut h = 0usize;
    while i < n1 && j < n2 {
        let v = if w[i] <= r[j] { w[i] } else { r[j] };
        // `<=` groups -0.0 with 0.0, as numpy's searchsorted does.
        while i < n1 && w[i] <= v {
            i += 1;
        }
        while j < n2 && r[j] <= v {
            j += 1;
        }
        h = h.max(i.abs_diff(j));
    }
    h
}

/// Ascending sort of NaN-free floats; insertion sort for the usual tiny sizes.
fn sort_small(a: &mut [f64]) {
    if a.len() > 64 {
        a.sort_unstable_by(|x, y| x.partial_cmp(y).unwrap_or(std::cmp::Ordering::Equal));
        return;
    }
    for i in 1..a.len() {
        let v = a[i];
        let mut j = i;
        while j > 0 && a[j - 1] > v {
            a[j] = a[j - 1];
            j -= 1;
        }
        a[j] = v;
    }
}

/// scipy's `_compute_prob_outside_square(n, h)`: P(D_{n,n} ≥ h/n) for the exact two-sided
/// test with equal sample sizes, in scipy's f64 operation order, clipped to [0, 1] as
/// `ks_2samp` does.
fn prob_outside_square(n: u32, h: u32) -> f64 {
    if h == 0 {
        return 1.0;
    }
    let (n, h) = (i64::from(n), i64::from(h));
    let mut p = 0.0f64;
    let mut k = n / h;
    while k >= 0 {
        let mut p1 = 1.0f64;
        for j in 0..h {
            p1 = (n - k * h - j) as f64 * p1 / (n + k * h + j + 1) as f64;
        }
        p = p1 * (1.0 - p);
        k -= 1;
    }
    (2.0 * p).clamp(0.0, 1.0)
}

/// River's decision for D = h/n: `p ≤ alpha and D > 0.1`.
fn flags(n: u32, h: u32, alpha: f64) -> bool {
    prob_outside_square(n, h) <= alpha && f64::from(h) / f64::from(n) > 0.1
}

/// Smallest h whose test flags drift (`n + 1` if none). Both conditions of [`flags`] are
/// monotone in h (p falls by a large factor per step, far beyond rounding), so a binary
/// search finds the same boundary as a full scan (checked by a test for small n).
fn critical_h(n: u32, alpha: f64) -> u32 {
    if n == 0 {
        return 1;
    }
    let (mut lo, mut hi) = (0u32, n + 1); // flags(lo) false (h = 0 means p = 1, D = 0), flags(hi) true by convention
    if flags(n, 0, alpha) {
        return 0;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if flags(n, mid, alpha) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// CPython's `random.sample(range(n), k)` positions, written to `s.picked[..k]`.
fn sample_indices(rng: &mut Mt19937, n: usize, k: usize, s: &mut Scratch) {
    // CPython: setsize = 21, plus 4 ** ceil(log(3k, 4)) when k > 5; the pool algorithm when
    // n <= setsize. log(x, 4) is computed as ln(x)/ln(4), as Python's math.log does.
    let mut setsize: u128 = 21;
    if k > 5 {
        let e = ((k as f64 * 3.0).ln() / 4f64.ln()).ceil();
        setsize += 4u128.saturating_pow(e.clamp(0.0, 60.0) as u32);
    }
    if (n as u128) <= setsize {
        for (i, p) in s.pool[..n].iter_mut().enumerate() {
            *p = i as u32;
        }
        for i in 0..k {
            let j = rng.randbelow((n - i) as u32) as usize;
            s.picked[i] = s.pool[j];
            s.pool[j] = s.pool[n - i - 1];
        }
    } else {
        s.seen.fill(0);
        for i in 0..k {
            let mut j = rng.randbelow(n as u32) as usize;
            while s.seen[j / 64] >> (j % 64) & 1 == 1 {
                j = rng.randbelow(n as u32) as usize;
            }
            s.seen[j / 64] |= 1 << (j % 64);
            s.picked[i] = j as u32;
        }
    }
}

/// MT19937 with CPython's seeding (`init_by_array` over the 32-bit words of the seed) and
/// CPython's `getrandbits`/`_randbelow` for bounds below 2^32.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Mt19937 {
    mt: Vec<u32>,
    index: u32,
}

const MT_N: usize = 624;
const MT_M: usize = 397;

impl Mt19937 {
    fn init_genrand(s: u32) -> Vec<u32> {
        let mut mt = vec![0u32; MT_N];
        mt[0] = s;
        for i in 1..MT_N {
            mt[i] = 1_812_433_253u32
                .wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        mt
    }

    /// `random.Random(seed)` for a non-negative integer seed.
    fn from_seed(seed: u64) -> Self {
        // CPython splits |seed| into little-endian 32-bit words, at least one.
        let lo = seed as u32;
        let hi = (seed >> 32) as u32;
        let key: &[u32] = if hi == 0 { &[lo] } else { &[lo, hi] };
        let mut mt = Self::init_genrand(19_650_218);
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..MT_N.max(key.len()) {
            let prev = mt[i - 1] ^ (mt[i - 1] >> 30);
            mt[i] = (mt[i] ^ prev.wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= MT_N {
                mt[0] = mt[MT_N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..MT_N - 1 {
            let prev = mt[i - 1] ^ (mt[i - 1] >> 30);
            mt[i] = (mt[i] ^ prev.wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= MT_N {
                mt[0] = mt[MT_N - 1];
                i = 1;
            }
        }
        mt[0] = 0x8000_0000;
        Self {
            mt,
            index: MT_N as u32,
        }
    }

    fn twist(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        const MATRIX_A: u32 = 0x9908_b0df;
        let mt = &mut self.mt;
        for i in 0..MT_N {
            let y = (mt[i] & UPPER) | (mt[(i + 1) % MT_N] & LOWER);
            let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
            mt[i] = mt[(i + MT_M) % MT_N] ^ (y >> 1) ^ mag;
        }
        self.index = 0;
    }

    fn next_u32(&mut self) -> u32 {
        if self.index as usize >= MT_N || self.mt.len() != MT_N {
            if self.mt.len() != MT_N {
                // Only reachable from a corrupted restored state; keep going deterministically.
                self.mt.resize(MT_N, 0);
            }
            self.twist();
        }
        let mut y = self.mt[self.index as usize];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// CPython's `_randbelow_with_getrandbits(n)` for 1 ≤ n < 2^32: draw `bit_length(n)`
    /// bits (the top bits of one output) until the value is below n.
    fn randbelow(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        let k = 32 - n.leading_zeros();
        loop {
            let r = self.next_u32() >> (32 - k);
            if r < n {
                return r;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p_values_match_scipy_table() {
        // Values quoted in SEMANTICS.md (from scipy's exact test).
        assert!((prob_outside_square(30, 14) - 0.00253).abs() < 5e-6);
        assert!((prob_outside_square(30, 13) - 0.00655).abs() < 5e-6);
        assert!((prob_outside_square(30, 17) - 8.7e-5).abs() < 1e-6);
        assert_eq!(critical_h(30, 0.005), 14);
        assert_eq!(critical_h(30, 0.001), 15);
        assert_eq!(critical_h(30, 1e-4), 17);
        assert_eq!(critical_h(50, 0.005), 18);
        assert_eq!(critical_h(50, 0.001), 20);
    }

    #[test]
    fn binary_search_equals_full_scan() {
        for n in 1..=120u32 {
            for &alpha in &[0.0, 1e-6, 1e-4, 0.001, 0.005, 0.01, 0.05, 0.3, 1.0] {
                let scan = (0..=n).find(|&h| flags(n, h, alpha)).unwrap_or(n + 1);
                assert_eq!(critical_h(n, alpha), scan, "n={n} alpha={alpha}");
                assert!((scan..=n).all(|h| flags(n, h, alpha)), "monotone n={n}");
            }
        }
    }

    #[test]
    fn mt_matches_cpython_seed_42() {
        // random.Random(42).getrandbits(32) for the first three draws.
        let mut rng = Mt19937::from_seed(42);
        let got: Vec<u32> = (0..3).map(|_| rng.next_u32()).collect();
        assert_eq!(got, vec![2_746_317_213, 478_163_327, 107_420_369]);
    }

    fn sample(rng: &mut Mt19937, n: usize, k: usize) -> Vec<u32> {
        let mut s = Scratch::default();
        s.prepare(k, n);
        sample_indices(rng, n, k, &mut s);
        s.picked.clone()
    }

    #[test]
    fn sample_matches_cpython() {
        // Outputs of CPython 3.11 `random.Random(seed).sample(range(n), k)`.
        let mut rng = Mt19937::from_seed(42);
        assert_eq!(
            sample(&mut rng, 70, 30),
            vec![
                14, 3, 35, 31, 28, 17, 13, 43, 47, 57, 34, 5, 37, 27, 2, 1, 58, 63, 69, 32, 38, 54,
                67, 12, 45, 41, 59, 26, 51, 65
            ]
        );
        assert_eq!(sample(&mut rng, 70, 30)[..5], [35, 0, 20, 54, 43]);
        // Set algorithm (n > setsize) and a two-word seed.
        let mut rng = Mt19937::from_seed((1 << 40) + 7);
        assert_eq!(
            sample(&mut rng, 500, 30),
            vec![
                314, 382, 417, 480, 483, 327, 292, 361, 243, 128, 485, 315, 64, 264, 192, 266, 368,
                185, 201, 226, 230, 442, 459, 190, 115, 431, 457, 227, 384, 304
            ]
        );
        // k <= 5: setsize 21, so the set algorithm even for n = 70.
        let mut rng = Mt19937::from_seed(0);
        assert_eq!(sample(&mut rng, 70, 3), vec![49, 53, 5]);
    }
}
