//! The probation rule: did the retrain help? A candidate sample of a metric after a retrain is
//! compared with a baseline sample of the same metric, and the retrain is rolled back when the
//! candidate is worse beyond chance, promoted when its sample is complete and it was not.
//!
//! With means m_b, m_c, variances v_b, v_c and sizes n_b, n_c, the standard error is
//! SE = sqrt(v_b/n_b + v_c/n_c), the degradation d is m_b - m_c when higher is better (m_c -
//! m_b when lower is), and z = (d - tolerance) / SE.
//!
//! The rule is watched while values arrive, and a fixed-horizon test looked at on every value
//! rolls back far more often than its nominal rate (optional stopping). So the rule is a
//! group-sequential test: it looks at z only at [`LOOKS`] planned points (every `events`/10
//! candidate values, none before `min_events`), against boundaries from an O'Brien-Fleming-type
//! alpha spending function (Lan and DeMets 1983), alpha(t) = 2 - 2 Phi(z_{1-alpha/2} / sqrt(t)),
//! where t is the information fraction at the look: the share of the final look's information
//! 1/SE^2 (with the baseline's size fixed and equal variances planned, t_k = (1/n_b + 1/N) /
//! (1/n_b + 1/n_k)). The boundary c_k of look k is the exact one: with z following the
//! canonical joint distribution of group-sequential statistics (Brownian motion observed at
//! the information levels), the chance of first crossing at look k, having stayed below every
//! earlier boundary, is alpha(t_k) - alpha(t_{k-1}) (the recursive integration of Armitage,
//! McPherson and Rowe 1969, on a grid). Over all looks the chance of a false rollback is then
//! alpha = 1 - confidence. Early looks spend almost nothing, so a gross drop rolls back early
//! and a borderline one waits for the end, where almost all of alpha is left.
//!
//! Architecture invariant: plain arithmetic, no I/O, no clock; the candidate is kept as
//! running sums (Welford), never as stored values.

use serde::{Deserialize, Serialize};

/// How many planned looks a probation has (the last one at `events`).
pub const LOOKS: u64 = 10;

/// Running mean and variance of a sample (Welford's algorithm).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub n: u64,
    pub mean: f64,
    /// Sum of squared deviations from the mean.
    pub m2: f64,
}

impl Sample {
    pub fn push(&mut self, x: f64) {
        self.n += 1;
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
    }

    pub fn of(values: impl IntoIterator<Item = f64>) -> Sample {
        let mut s = Sample::default();
        for v in values {
            s.push(v);
        }
        s
    }

    /// The sample variance (n - 1 in the denominator; 0 below two values).
    pub fn var(&self) -> f64 {
        if self.n < 2 {
            0.0
        } else {
            (self.m2 / (self.n - 1) as f64).max(0.0)
        }
    }

    pub fn std(&self) -> f64 {
        self.var().sqrt()
    }
}

/// A sample as views and hooks show it: its size, mean and standard deviation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: u64,
    pub mean: f64,
    pub std: f64,
}

/// A running probation's progress, as `models` shows it (contract section 7): built by the
/// model, sent on the control socket as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The retrain on probation.
    pub job_id: u64,
    pub metric: String,
    pub baseline: Summary,
    pub candidate: Summary,
    /// Candidate values the verdict waits for.
    pub events: u64,
    /// Values still skipped (the rule's `warmup_events`) before the candidate counts.
    pub warmup_left: u64,
    /// z of the candidate so far (`null` before two values, or when not finite) and the
    /// boundary of the next look.
    pub z: Option<f64>,
    pub z_threshold: Option<f64>,
    pub started_at: f64,
    /// When `max_wait_s` runs out.
    pub deadline: f64,
}

impl From<&Sample> for Summary {
    fn from(s: &Sample) -> Summary {
        Summary {
            n: s.n,
            mean: s.mean,
            std: s.std(),
        }
    }
}

/// What a probation's candidate is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaselineKind {
    /// The last `events` values before the decision that started the retrain.
    BeforeDecision,
    /// The candidate sample of the last promoted retrain (before any: the first `events`
    /// values after the model was first seen).
    LastPromoted,
}

impl BaselineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BaselineKind::BeforeDecision => "before_decision",
            BaselineKind::LastPromoted => "last_promoted",
        }
    }
}

/// Which way the metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Higher,
    Lower,
}

/// The rule's settings (from `[models.probation]`).
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSpec {
    pub events: u64,
    pub min_events: u64,
    pub tolerance: f64,
    pub confidence: f64,
    pub direction: Direction,
}

/// z and its standard error for a baseline and a candidate.
pub fn z_score(spec: &RuleSpec, baseline: &Sample, candidate: &Sample) -> f64 {
    let se = (baseline.var() / baseline.n.max(1) as f64
        + candidate.var() / candidate.n.max(1) as f64)
        .sqrt();
    let d = match spec.direction {
        Direction::Higher => baseline.mean - candidate.mean,
        Direction::Lower => candidate.mean - baseline.mean,
    } - spec.tolerance;
    if se > 0.0 {
        d / se
    } else if d > 0.0 {
        // No variance at all and a real degradation: as sure as it gets.
        f64::INFINITY
    } else if d < 0.0 {
        f64::NEG_INFINITY
    } else {
        0.0
    }
}

/// The planned looks: the candidate size at each and its boundary for z.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub looks: Vec<(u64, f64)>,
}

impl Plan {
    /// Looks every `events`/[`LOOKS`] candidate values (none before `min_events`, the last at
    /// `events`), for a baseline of `n_baseline` values.
    pub fn new(spec: &RuleSpec, n_baseline: u64) -> Plan {
        let total = spec.events.max(1);
        let alpha = (1.0 - spec.confidence).clamp(1e-12, 0.5);
        let z_half = inv_phi(1.0 - alpha / 2.0);
        let spend = |t: f64| {
            if t <= 0.0 {
                0.0
            } else {
                2.0 - 2.0 * phi(z_half / t.sqrt())
            }
        };
        let nb = n_baseline.max(1) as f64;
        let info = |n: u64| 1.0 / (1.0 / nb + 1.0 / n.max(1) as f64);
        let mut sizes: Vec<u64> = (1..=LOOKS)
            .map(|k| (total * k).div_ceil(LOOKS))
            .filter(|&n| n >= spec.min_events.min(total))
            .collect();
        sizes.dedup();
        if sizes.last() != Some(&total) {
            sizes.push(total);
        }
        let ts: Vec<f64> = sizes
            .iter()
            .map(|&n| (info(n) / info(total)).clamp(1e-9, 1.0))
            .collect();
        let mut spent = 0.0;
        let steps: Vec<f64> = ts
            .iter()
            .map(|&t| {
                let now = spend(t).min(alpha).max(spent);
                let step = now - spent;
                spent = now;
                step
            })
            .collect();
        let bounds = boundaries(&ts, &steps);
        Plan {
            looks: sizes.into_iter().zip(bounds).collect(),
        }
    }

    /// The boundary at a candidate of `n` values, if `n` is a planned look.
    pub fn boundary_at(&self, n: u64) -> Option<f64> {
        self.looks.iter().find(|(at, _)| *at == n).map(|(_, c)| *c)
    }

    /// The boundary of the next look at or after `n` (what `models` shows).
    pub fn next_boundary(&self, n: u64) -> f64 {
        self.looks
            .iter()
            .find(|(at, _)| *at >= n)
            .or(self.looks.last())
            .map_or(f64::INFINITY, |(_, c)| *c)
    }
}

/// Grid points per look in [`boundaries`].
const GRID: usize = 400;

/// The boundaries c_k (on the z scale) of a one-sided group-sequential test looked at at
/// information fractions `ts` (increasing, the last 1), such that under the null hypothesis
/// the chance of first crossing at look k is `steps[k]`. The score S_k = z_k sqrt(t_k) is a
/// Brownian motion at times t_k; its density on the continuation region is carried from look
/// to look on a grid and integrated by the trapezoid rule.
fn boundaries(ts: &[f64], steps: &[f64]) -> Vec<f64> {
    let norm = |x: f64, sd: f64| {
        (-0.5 * (x / sd).powi(2)).exp() / (sd * (2.0 * std::f64::consts::PI).sqrt())
    };
    // The continuation density at the previous look: grid points and trapezoid-weighted values.
    let mut grid: Vec<f64> = Vec::new();
    let mut weighted: Vec<f64> = Vec::new();
    let mut prev_t = 0.0;
    let mut out = Vec::with_capacity(ts.len());
    for (k, (&t, &step)) in ts.iter().zip(steps).enumerate() {
        let sd = (t - prev_t).max(1e-12).sqrt();
        let cross = |b: f64| -> f64 {
            if k == 0 {
                1.0 - phi(b / sd)
            } else {
                grid.iter()
                    .zip(&weighted)
                    .map(|(u, w)| w * (1.0 - phi((b - u) / sd)))
                    .sum()
            }
        };
        // The crossing chance falls as the boundary rises: bisect on the score scale.
        let (mut lo, mut hi) = (-10.0 * t.sqrt(), 40.0 * t.sqrt());
        let b = if step <= 0.0 {
            hi
        } else {
            for _ in 0..80 {
                let mid = 0.5 * (lo + hi);
                if cross(mid) > step {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            0.5 * (lo + hi)
        };
        out.push(b / t.sqrt());
        // The density of S at this look on the continuation region (below b).
        let lo = -10.0 * t.sqrt();
        let h = (b - lo) / (GRID - 1) as f64;
        let new_grid: Vec<f64> = (0..GRID).map(|i| lo + h * i as f64).collect();
        let dens: Vec<f64> = new_grid
            .iter()
            .map(|&s| {
                if k == 0 {
                    norm(s, sd)
                } else {
                    grid.iter()
                        .zip(&weighted)
                        .map(|(u, w)| w * norm(s - u, sd))
                        .sum()
                }
            })
            .collect();
        weighted = dens
            .iter()
            .enumerate()
            .map(|(i, d)| {
                if i == 0 || i == GRID - 1 {
                    d * h / 2.0
                } else {
                    d * h
                }
            })
            .collect();
        grid = new_grid;
        prev_t = t;
    }
    out
}

/// What a candidate value leads to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Keep watching.
    Continue,
    /// Worse beyond chance: roll back.
    RolledBack { z: f64, z_threshold: f64 },
    /// The sample is complete and was not worse: keep the new model.
    Promoted { z: f64, z_threshold: f64 },
}

/// Judges the candidate after it took a value: a verdict only at a planned look.
pub fn judge(spec: &RuleSpec, plan: &Plan, baseline: &Sample, candidate: &Sample) -> Verdict {
    let Some(c) = plan.boundary_at(candidate.n) else {
        return Verdict::Continue;
    };
    let z = z_score(spec, baseline, candidate);
    if z > c {
        Verdict::RolledBack { z, z_threshold: c }
    } else if candidate.n >= spec.events {
        Verdict::Promoted { z, z_threshold: c }
    } else {
        Verdict::Continue
    }
}

/// How a probation ended, or why it is still open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    OnProbation,
    Promoted,
    RolledBack,
    Inconclusive,
    Superseded,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::OnProbation => "on_probation",
            State::Promoted => "promoted",
            State::RolledBack => "rolled_back",
            State::Inconclusive => "inconclusive",
            State::Superseded => "superseded",
        }
    }
}

/// Why a retrain is rolled back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The candidate is worse beyond chance.
    Degraded,
    /// A policy of the model fired during probation (`fail_fast`).
    PolicyFired,
    /// `max_wait_s` passed before the sample was complete (`on_inconclusive = "rollback"`).
    Inconclusive,
    /// An operator's `visutility rollback`.
    Manual,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Degraded => "degraded",
            Cause::PolicyFired => "policy_fired",
            Cause::Inconclusive => "inconclusive",
            Cause::Manual => "manual",
        }
    }
}

/// One retrain's probation: the baseline it is judged against and the candidate so far.
/// Running sums only: a probation's state is a few numbers whatever `events` is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probation {
    /// The retrain job on probation.
    pub job_id: u64,
    pub baseline: Sample,
    pub candidate: Sample,
    /// Values still to skip before the candidate counts (the rule's `warmup_events`).
    pub warmup_left: u64,
    pub state: State,
    /// The last z and the boundary it was held against (at the last look).
    pub z: Option<f64>,
    pub z_threshold: Option<f64>,
    /// When it started (wall clock, Unix seconds: the retrain's success).
    pub started_at: f64,
    /// Why it was rolled back (or found inconclusive), once it was.
    pub cause: Option<Cause>,
    /// When the verdict came.
    pub decided_at: Option<f64>,
    /// The plan of looks, worked out at the first candidate value (not stored).
    #[serde(skip)]
    pub plan: PlanCache,
}

/// A probation's plan, computed once (a few milliseconds) and kept in memory only: it follows
/// from the rule and the baseline's size. Equal whatever it holds, so that a state rebuilt from
/// the store compares equal to the live one.
#[derive(Debug, Clone, Default)]
pub struct PlanCache(Option<std::sync::Arc<(RuleSpec, u64, Plan)>>);

impl PartialEq for PlanCache {
    fn eq(&self, _: &PlanCache) -> bool {
        true
    }
}

/// The plans worked out lately, shared by every probation: a plan depends only on the rule and
/// the baseline's size (almost always the rule's `events`), so the probations of a fleet's
/// models, and a model's one after another, work it out once rather than each (a few
/// milliseconds of the models' thread per probation: a retrain rolled back at once, again and
/// again, made that the daemon's main cost).
static PLANS: std::sync::Mutex<Vec<std::sync::Arc<(RuleSpec, u64, Plan)>>> =
    std::sync::Mutex::new(Vec::new());

/// How many plans [`PLANS`] keeps (one per rule with a probation, and baseline size).
const PLANS_KEPT: usize = 16;

fn shared_plan(spec: &RuleSpec, n_baseline: u64) -> std::sync::Arc<(RuleSpec, u64, Plan)> {
    let mut plans = PLANS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = plans.iter().find(|p| p.0 == *spec && p.1 == n_baseline) {
        return p.clone();
    }
    let p = std::sync::Arc::new((spec.clone(), n_baseline, Plan::new(spec, n_baseline)));
    if plans.len() >= PLANS_KEPT {
        plans.remove(0);
    }
    plans.push(p.clone());
    p
}

impl PlanCache {
    /// The plan for `spec` and a baseline of `n_baseline` values.
    pub fn get(&mut self, spec: &RuleSpec, n_baseline: u64) -> &Plan {
        let fresh = matches!(&self.0, Some(c) if c.0 == *spec && c.1 == n_baseline);
        if !fresh {
            self.0 = None;
        }
        &self
            .0
            .get_or_insert_with(|| shared_plan(spec, n_baseline))
            .2
    }
}

impl Probation {
    pub fn new(job_id: u64, baseline: Sample, warmup: u64) -> Probation {
        Probation {
            job_id,
            baseline,
            candidate: Sample::default(),
            warmup_left: warmup,
            state: State::OnProbation,
            z: None,
            z_threshold: None,
            started_at: 0.0,
            cause: None,
            decided_at: None,
            plan: PlanCache::default(),
        }
    }

    /// Takes one value of the probation's metric; a verdict at a planned look.
    pub fn observe(&mut self, spec: &RuleSpec, plan: &Plan, value: f64) -> Verdict {
        if self.state != State::OnProbation || !value.is_finite() {
            return Verdict::Continue;
        }
        if self.warmup_left > 0 {
            self.warmup_left -= 1;
            return Verdict::Continue;
        }
        self.candidate.push(value);
        let verdict = judge(spec, plan, &self.baseline, &self.candidate);
        match verdict {
            Verdict::Continue => {
                if plan.boundary_at(self.candidate.n).is_some() {
                    self.z = Some(z_score(spec, &self.baseline, &self.candidate));
                    self.z_threshold = Some(plan.next_boundary(self.candidate.n + 1));
                }
            }
            Verdict::RolledBack { z, z_threshold } => {
                self.state = State::RolledBack;
                self.cause = Some(Cause::Degraded);
                (self.z, self.z_threshold) = (Some(z), Some(z_threshold));
            }
            Verdict::Promoted { z, z_threshold } => {
                self.state = State::Promoted;
                (self.z, self.z_threshold) = (Some(z), Some(z_threshold));
            }
        }
        verdict
    }

    /// The current z (for `models`), whether or not at a look.
    pub fn current_z(&self, spec: &RuleSpec) -> Option<f64> {
        (self.candidate.n >= 2).then(|| z_score(spec, &self.baseline, &self.candidate))
    }

    /// Ends the probation without a look: `state` for `cause` (a policy fired, the wait ran
    /// out, an operator acted), with the z of the candidate so far.
    pub fn end(&mut self, spec: &RuleSpec, state: State, cause: Option<Cause>, at: f64) {
        if self.state != State::OnProbation {
            return;
        }
        self.state = state;
        self.cause = cause;
        self.decided_at = Some(at);
        if let Some(z) = self.current_z(spec) {
            self.z = Some(z);
        }
    }
}

/// A model's probation state, kept with its checkpoint: the recent values of the probation's
/// metric (the baseline a decision freezes), the baseline `last_promoted` compares with, and
/// the current (or last decided) probation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelProbation {
    /// The last values of the metric, at most the rule's `events`, oldest first. Stored as
    /// the observation log stores numbers (a short decimal in 1 to 3 bytes, bit-exact), not
    /// as 8 bytes each: every checkpoint carries them.
    #[serde(with = "compact_values")]
    pub recent: std::collections::VecDeque<f64>,
    /// The candidate of the last promoted retrain; before any, the first `events` values.
    pub last_promoted: Option<Sample>,
    pub current: Option<Probation>,
}

/// A sequence of numbers as one byte string: the count, then each number as
/// [`crate::store::wal::put_num`] writes it (bit-exact).
mod compact_values {
    use std::collections::VecDeque;

    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    use crate::store::wal::{get_num, get_varint, put_num, put_varint};

    pub fn serialize<S: Serializer>(values: &VecDeque<f64>, s: S) -> Result<S::Ok, S::Error> {
        let mut out = Vec::with_capacity(values.len() * 3 + 4);
        put_varint(&mut out, values.len() as u64);
        for &v in values {
            put_num(&mut out, v);
        }
        s.serialize_bytes(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<VecDeque<f64>, D::Error> {
        d.deserialize_byte_buf(Bytes)
    }

    struct Bytes;

    impl<'de> Visitor<'de> for Bytes {
        type Value = VecDeque<f64>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a byte string of numbers")
        }

        fn visit_bytes<E: Error>(self, b: &[u8]) -> Result<VecDeque<f64>, E> {
            let mut pos = 0;
            let n = get_varint(b, &mut pos).ok_or_else(|| E::custom("no count"))?;
            // Each number takes a byte at least: a count beyond that is damage, not a reason
            // to reserve memory.
            if n > b.len() as u64 {
                return Err(E::custom("count beyond the bytes"));
            }
            let mut out = VecDeque::with_capacity(n as usize);
            for _ in 0..n {
                out.push_back(get_num(b, &mut pos).ok_or_else(|| E::custom("cut short"))?);
            }
            Ok(out)
        }

        fn visit_byte_buf<E: Error>(self, b: Vec<u8>) -> Result<VecDeque<f64>, E> {
            self.visit_bytes(&b)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<VecDeque<f64>, A::Error> {
            let mut b = Vec::new();
            while let Some(x) = seq.next_element::<u8>()? {
                b.push(x);
            }
            self.visit_bytes(&b)
        }
    }
}

impl ModelProbation {
    pub fn is_empty(&self) -> bool {
        self.recent.is_empty() && self.last_promoted.is_none() && self.current.is_none()
    }

    /// Whether a probation is running.
    pub fn on_probation(&self) -> bool {
        self.current
            .as_ref()
            .is_some_and(|p| p.state == State::OnProbation)
    }

    /// The last `events` values as a sample (the `before_decision` baseline).
    pub fn recent_sample(&self) -> Sample {
        Sample::of(self.recent.iter().copied())
    }

    /// One value of the metric: judged as a candidate first if a probation runs, then kept
    /// among the recent values. Returns true when it ended the probation (the caller reads
    /// the verdict from `current`). No allocation once `recent` reached its size.
    pub fn observe(&mut self, spec: &RuleSpec, value: f64, at: f64) -> bool {
        if !value.is_finite() {
            return false;
        }
        let mut ended = false;
        if let Some(p) = self.current.as_mut()
            && p.state == State::OnProbation
        {
            let mut cache = std::mem::take(&mut p.plan);
            let verdict = if p.warmup_left > 0 {
                p.warmup_left -= 1;
                Verdict::Continue
            } else {
                p.observe(spec, cache.get(spec, p.baseline.n), value)
            };
            p.plan = cache;
            match verdict {
                Verdict::Continue => {}
                Verdict::Promoted { .. } => {
                    p.decided_at = Some(at);
                    self.last_promoted = Some(p.candidate);
                    ended = true;
                }
                Verdict::RolledBack { .. } => {
                    p.decided_at = Some(at);
                    ended = true;
                }
            }
        }
        self.keep(spec.events, value);
        ended
    }

    /// Keeps a value among the last `events` (the first `events` are `last_promoted`'s
    /// baseline until a retrain is promoted). No allocation once the values reached their size.
    pub fn keep(&mut self, events: u64, value: f64) {
        let cap = events.max(1) as usize;
        while self.recent.len() >= cap {
            self.recent.pop_front();
        }
        self.recent.push_back(value);
        if self.last_promoted.is_none() && self.recent.len() == cap {
            self.last_promoted = Some(self.recent_sample());
        }
    }

    /// The baseline a decision freezes now, by the rule's `baseline`.
    pub fn baseline(&self, kind: BaselineKind) -> Sample {
        match kind {
            BaselineKind::BeforeDecision => self.recent_sample(),
            BaselineKind::LastPromoted => {
                self.last_promoted.unwrap_or_else(|| self.recent_sample())
            }
        }
    }

    /// Starts judging retrain `job_id` against `baseline`, after `warmup` values; a probation
    /// still running is superseded (its verdict is the new one's).
    pub fn start(&mut self, job_id: u64, baseline: Sample, warmup: u64, at: f64) {
        let mut p = Probation::new(job_id, baseline, warmup);
        p.started_at = at;
        self.current = Some(p);
    }
}

/// The standard normal distribution function.
pub fn phi(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

/// The complementary error function: the Chebyshev fit of Numerical Recipes (3rd ed.,
/// `Erf::erfccheb`), accurate to about 1.2e-16 relative.
fn erfc(x: f64) -> f64 {
    // The published coefficients, verbatim.
    #[allow(clippy::excessive_precision)]
    const COF: [f64; 28] = [
        -1.3026537197817094,
        6.4196979235649026e-1,
        1.9476473204185836e-2,
        -9.561514786808631e-3,
        -9.46595344482036e-4,
        3.66839497852761e-4,
        4.2523324806907e-5,
        -2.0278578112534e-5,
        -1.624290004647e-6,
        1.303655835580e-6,
        1.5626441722e-8,
        -8.5238095915e-8,
        6.529054439e-9,
        5.059343495e-9,
        -9.91364156e-10,
        -2.27365122e-10,
        9.6467911e-11,
        2.394038e-12,
        -6.886027e-12,
        8.94487e-13,
        3.13092e-13,
        -1.12708e-13,
        3.81e-16,
        7.106e-15,
        -1.523e-15,
        -9.4e-17,
        1.21e-16,
        -2.8e-17,
    ];
    if x.is_nan() {
        return f64::NAN;
    }
    let cheb = |z: f64| {
        let t = 2.0 / (2.0 + z);
        let ty = 4.0 * t - 2.0;
        let (mut d, mut dd) = (0.0, 0.0);
        for &c in COF[1..].iter().rev() {
            let tmp = d;
            d = ty * d - dd + c;
            dd = tmp;
        }
        t * (-z * z + 0.5 * (COF[0] + ty * d) - dd).exp()
    };
    if x >= 0.0 { cheb(x) } else { 2.0 - cheb(-x) }
}

/// The standard normal quantile (Acklam's approximation refined by one Halley step: relative
/// error about 1e-15).
pub fn inv_phi(p: f64) -> f64 {
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    // Acklam's published coefficients, verbatim.
    #[allow(clippy::excessive_precision)]
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383577518672690e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    #[allow(clippy::excessive_precision)]
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    #[allow(clippy::excessive_precision)]
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    #[allow(clippy::excessive_precision)]
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let low = 0.02425;
    let x = if p < low {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - low {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    // One Halley step on Phi(x) - p.
    let e = phi(x) - p;
    let u = e * (2.0 * std::f64::consts::PI).sqrt() * (x * x / 2.0).exp();
    x - u / (1.0 + x * u / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small, seeded generator (SplitMix64): the rule's tests replay exactly.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn uniform(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
        fn bernoulli(&mut self, p: f64) -> f64 {
            if self.uniform() < p { 1.0 } else { 0.0 }
        }
    }

    fn spec() -> RuleSpec {
        RuleSpec {
            events: 2000,
            min_events: 100,
            tolerance: 0.0,
            confidence: 0.95,
            direction: Direction::Higher,
        }
    }

    /// One probation on Bernoulli accuracy streams, the rule watched on every value as the
    /// daemon does: the candidate size at the rollback, or `None` if promoted.
    fn run(rng: &mut Rng, plan: &Plan, before: f64, after: f64) -> Option<u64> {
        let spec = spec();
        let baseline = Sample::of((0..spec.events).map(|_| rng.bernoulli(before)));
        let mut cand = Sample::default();
        loop {
            cand.push(rng.bernoulli(after));
            match judge(&spec, plan, &baseline, &cand) {
                Verdict::Continue => {}
                Verdict::RolledBack { .. } => return Some(cand.n),
                Verdict::Promoted { .. } => return None,
            }
        }
    }

    #[test]
    fn equal_quality_rolls_back_at_most_seven_percent_of_1000_runs() {
        let mut rng = Rng(20261204);
        let plan = Plan::new(&spec(), 2000);
        let rolled = (0..1000)
            .filter(|_| run(&mut rng, &plan, 0.93, 0.93).is_some())
            .count();
        eprintln!("equal quality: {rolled} of 1000 rolled back");
        assert!(rolled <= 70, "{rolled} of 1000 rolled back");
    }

    #[test]
    fn a_true_drop_from_0_93_to_0_90_rolls_back_at_least_90_percent() {
        let mut rng = Rng(7);
        let plan = Plan::new(&spec(), 2000);
        let rolled = (0..1000)
            .filter(|_| run(&mut rng, &plan, 0.93, 0.90).is_some())
            .count();
        eprintln!("0.93 to 0.90: {rolled} of 1000 rolled back");
        assert!(rolled >= 900, "{rolled} of 1000 rolled back");
    }

    #[test]
    fn a_gross_drop_rolls_back_within_the_first_quarter_median() {
        let mut rng = Rng(99);
        let plan = Plan::new(&spec(), 2000);
        let mut at: Vec<u64> = (0..1000)
            .map(|_| run(&mut rng, &plan, 0.93, 0.80).expect("rolled back"))
            .collect();
        at.sort_unstable();
        let median = at[at.len() / 2];
        eprintln!("0.93 to 0.80: median rollback after {median} candidate values");
        assert!(median <= spec().events / 4, "median rollback at {median}");
    }

    #[test]
    fn z_means_and_stds_equal_a_direct_two_sample_computation() {
        let mut rng = Rng(3);
        let b: Vec<f64> = (0..500).map(|_| rng.uniform() * 0.2 + 0.8).collect();
        let c: Vec<f64> = (0..321).map(|_| rng.uniform() * 0.3 + 0.7).collect();
        let (sb, sc) = (Sample::of(b.iter().copied()), Sample::of(c.iter().copied()));
        let direct = |v: &[f64]| {
            let n = v.len() as f64;
            let m = v.iter().sum::<f64>() / n;
            let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
            (m, var)
        };
        let ((mb, vb), (mc, vc)) = (direct(&b), direct(&c));
        assert!((sb.mean - mb).abs() < 1e-9 && (sc.mean - mc).abs() < 1e-9);
        assert!((sb.var() - vb).abs() < 1e-9 && (sc.var() - vc).abs() < 1e-9);
        assert!((sb.std() - vb.sqrt()).abs() < 1e-9);
        let spec = RuleSpec {
            tolerance: 0.01,
            ..spec()
        };
        let z = (mb - mc - 0.01) / (vb / 500.0 + vc / 321.0).sqrt();
        assert!((z_score(&spec, &sb, &sc) - z).abs() < 1e-9);
        let lower = RuleSpec {
            direction: Direction::Lower,
            ..spec
        };
        let z = (mc - mb - 0.01) / (vb / 500.0 + vc / 321.0).sqrt();
        assert!((z_score(&lower, &sb, &sc) - z).abs() < 1e-9);
    }

    #[test]
    fn boundaries_match_the_published_obrien_fleming_type_values() {
        // Lan-DeMets O'Brien-Fleming spending, one-sided alpha 0.025, two equally spaced
        // looks: 2.9626 and 1.9686 (Jennison and Turnbull; gsDesign's sfLDOF).
        let alpha: f64 = 0.025;
        let z = inv_phi(1.0 - alpha / 2.0);
        let a1 = 2.0 - 2.0 * phi(z / 0.5f64.sqrt());
        let b = boundaries(&[0.5, 1.0], &[a1, alpha - a1]);
        assert!((b[0] - 2.9626).abs() < 1e-3, "{b:?}");
        assert!((b[1] - 1.9686).abs() < 2e-3, "{b:?}");
        // One look is the fixed-horizon test.
        let one = boundaries(&[1.0], &[0.05]);
        assert!((one[0] - 1.6449).abs() < 1e-3, "{one:?}");
    }

    #[test]
    fn the_plan_looks_every_tenth_and_is_strict_early() {
        let spec = spec();
        let plan = Plan::new(&spec, 2000);
        assert_eq!(plan.looks.len(), 10);
        assert_eq!(plan.looks[0].0, 200);
        assert_eq!(plan.looks[9].0, 2000);
        assert!(plan.looks[0].1 > 4.0, "{plan:?}");
        assert!(plan.looks.windows(2).all(|w| w[0].1 > w[1].1), "{plan:?}");
        assert!(plan.looks[9].1 < 2.0 && plan.looks[9].1 > 1.645, "{plan:?}");
        // min_events above the first looks removes them.
        let late = Plan::new(
            &RuleSpec {
                min_events: 500,
                ..spec
            },
            2000,
        );
        assert_eq!(late.looks[0].0, 600);
    }

    #[test]
    fn a_probation_skips_its_warm_up_then_judges_at_looks_and_stops_at_a_verdict() {
        let spec = RuleSpec {
            events: 100,
            min_events: 10,
            ..spec()
        };
        let baseline = Sample::of((0..100).map(|i| 0.9 + 0.001 * (i % 10) as f64));
        let plan = Plan::new(&spec, baseline.n);
        let mut p = Probation::new(7, baseline, 3);
        for _ in 0..3 {
            assert_eq!(p.observe(&spec, &plan, 0.0), Verdict::Continue);
        }
        assert_eq!(p.candidate.n, 0, "warm-up values are not judged");
        // A steady candidate at the baseline's level: promoted at the 100th value.
        let mut last = Verdict::Continue;
        for i in 0..100 {
            last = p.observe(&spec, &plan, 0.9 + 0.001 * (i % 10) as f64);
            if i < 99 {
                assert_eq!(last, Verdict::Continue, "at {i}");
            }
        }
        assert!(matches!(last, Verdict::Promoted { .. }), "{last:?}");
        assert_eq!(p.state, State::Promoted);
        assert_eq!(p.observe(&spec, &plan, 0.0), Verdict::Continue, "decided");
        // A collapse is rolled back at the first look (10 values).
        let mut q = Probation::new(8, p.baseline, 0);
        let mut n = 0;
        loop {
            n += 1;
            if let Verdict::RolledBack { z, z_threshold } =
                q.observe(&spec, &plan, 0.1 + 0.01 * (n % 3) as f64)
            {
                assert!(z > z_threshold);
                break;
            }
            assert!(n < 100, "never rolled back");
        }
        assert_eq!(n, 10);
        assert_eq!(q.state, State::RolledBack);
    }

    #[test]
    fn normal_functions_match_known_values() {
        assert!((phi(0.0) - 0.5).abs() < 1e-15);
        assert!((phi(1.959963984540054) - 0.975).abs() < 1e-12);
        assert!((phi(-3.0) - 0.0013498980316301).abs() < 1e-13);
        for p in [1e-10, 0.001, 0.025, 0.3, 0.5, 0.9, 0.975, 0.999999] {
            assert!((phi(inv_phi(p)) - p).abs() < 1e-12 * p.max(1e-3), "{p}");
        }
        assert!((inv_phi(0.95) - 1.6448536269514722).abs() < 1e-12);
    }

    #[test]
    fn a_models_probation_keeps_its_last_values_and_judges_after_the_warm_up() {
        let spec = RuleSpec {
            events: 40,
            min_events: 10,
            ..spec()
        };
        let mut m = ModelProbation::default();
        for i in 0..100 {
            assert!(!m.observe(&spec, if i % 10 == 0 { 0.0 } else { 1.0 }, i as f64));
        }
        // The last `events` values, and the first `events` as the baseline before any promotion.
        assert_eq!(m.recent.len(), 40);
        assert_eq!(m.last_promoted.unwrap().n, 40);
        assert!(
            !m.observe(&spec, f64::NAN, 100.0),
            "a non-finite value is not a value"
        );
        assert_eq!(m.recent.len(), 40);
        let baseline = m.recent_sample();
        assert!((baseline.mean - 0.9).abs() < 1e-12);
        m.start(7, baseline, 5, 100.0);
        assert!(m.on_probation());
        // Five values of warm-up count for nothing; then a candidate as good as the baseline
        // is promoted at exactly `events` values.
        let mut ended_at = None;
        for i in 0..200 {
            if m.observe(&spec, if i % 10 == 0 { 0.0 } else { 1.0 }, 200.0 + i as f64) {
                ended_at = Some(i);
                break;
            }
        }
        assert_eq!(ended_at, Some(5 + 40 - 1));
        let p = m.current.as_ref().unwrap();
        assert_eq!((p.state, p.candidate.n), (State::Promoted, 40));
        assert_eq!(p.decided_at, Some(244.0));
        assert_eq!(m.last_promoted, Some(p.candidate));
        assert!(!m.on_probation());
    }

    #[test]
    fn a_models_probation_rolls_back_a_gross_drop_at_an_early_look() {
        let spec = RuleSpec {
            events: 100,
            min_events: 10,
            ..spec()
        };
        let mut m = ModelProbation::default();
        for i in 0..100 {
            m.observe(&spec, if i % 10 == 0 { 0.0 } else { 1.0 }, 0.0);
        }
        m.start(1, m.recent_sample(), 0, 0.0);
        let mut n = 0;
        while !m.observe(&spec, if n % 2 == 0 { 0.0 } else { 1.0 }, 1.0) {
            n += 1;
            assert!(n < 100, "no verdict");
        }
        let p = m.current.as_ref().unwrap();
        assert_eq!(
            (p.state, p.cause),
            (State::RolledBack, Some(Cause::Degraded))
        );
        // At the first look (10 values, z about 2.4) the boundary (about 4.4) holds; at the
        // second (20 values, z about 3.4) it does not (about 3.2).
        assert_eq!(p.candidate.n, 20, "the second look");
        assert!(p.z.unwrap() > p.z_threshold.unwrap());
        // Ending again changes nothing: a verdict is given once.
        let before = p.clone();
        m.current
            .as_mut()
            .unwrap()
            .end(&spec, State::Promoted, Some(Cause::Manual), 9.0);
        assert_eq!(m.current.as_ref().unwrap(), &before);
    }

    #[test]
    fn the_recent_values_are_stored_short_and_bit_exact() {
        let mut m = ModelProbation::default();
        let spec = RuleSpec {
            events: 2000,
            ..spec()
        };
        for i in 0..2000 {
            m.observe(&spec, if i % 13 == 0 { 0.0 } else { 1.0 }, 0.0);
        }
        let bytes = crate::store::encode_record(&m).unwrap();
        // 2,000 values of 0 or 1: a byte each (not 8), and the rest of the state.
        assert!(bytes.len() < 2_100, "{} bytes", bytes.len());
        let back: ModelProbation = crate::store::decode_record(&bytes).unwrap();
        assert_eq!(back, m);
        let odd = [
            0.93,
            1.0 / 3.0,
            -2.5e-310,
            f64::MAX,
            1e-7,
            -0.0,
            123_456.789,
        ];
        m.recent = odd.into_iter().collect();
        let back: ModelProbation =
            crate::store::decode_record(&crate::store::encode_record(&m).unwrap()).unwrap();
        let bits = |q: &ModelProbation| q.recent.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back), bits(&m));
        // A count beyond the bytes is damage, refused without reserving memory.
        let mut cut = crate::store::encode_record(&m).unwrap();
        cut.truncate(cut.len() - 3);
        assert!(crate::store::decode_record::<ModelProbation>(&cut).is_err());
    }
}
