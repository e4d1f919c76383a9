//! The daemon's two clocks, and the rule that keeps a jump of one from freezing the other's
//! deadlines.
//!
//! - The **wall clock** (`CLOCK_REALTIME`, Unix seconds) says what time it is: it dates
//!   events, jobs and decisions for people, and it names the budget's calendar day. It can
//!   jump: a board without a battery-backed clock starts wherever its image left it, and NTP
//!   corrects it later, by days or months.
//! - The **boot clock** (`CLOCK_BOOTTIME`, seconds since boot, counting suspend) measures how
//!   long things take. Every duration within a run (cooldowns, retry backoff, loop-guard
//!   windows, the trigger limit's hour, the budget's day once it began) is a difference of boot
//!   clock readings, never of wall clock readings, so a jump of the wall clock stretches none
//!   of them.
//!
//! Across a restart the boot clock may have started again (a reboot), so deadlines are
//! persisted as wall clock instants and, at load, clamped to their configured length
//! ([`remaining`]): a deadline can never outlast what it was configured to, however the wall
//! clock moved while the daemon was down.
//!
//! Architecture invariant: this is the only module that reads a clock for the daemon's rules
//! (`Instant` and tokio's timers stay for timeouts of I/O); rules take a [`Now`] argument.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A reading of both clocks at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Now {
    /// Unix seconds (`CLOCK_REALTIME`).
    pub wall: f64,
    /// Seconds since boot, suspend included (`CLOCK_BOOTTIME`).
    pub boot: f64,
}

impl Now {
    /// Both clocks, now.
    pub fn read() -> Now {
        Now {
            wall: wall(),
            boot: boot(),
        }
    }

    /// A reading where both clocks are one timeline (offline replays, where an event's `ts`
    /// is the only clock there is).
    pub fn same(t: f64) -> Now {
        Now { wall: t, boot: t }
    }

    /// The wall clock time of boot clock instant `boot`, as the wall clock now sees it.
    pub fn wall_at(&self, boot: f64) -> f64 {
        self.wall + (boot - self.boot)
    }

    /// The boot clock instant of wall clock time `wall`, as the wall clock now sees it.
    pub fn boot_at(&self, wall: f64) -> f64 {
        self.boot + (wall - self.wall)
    }
}

/// Unix seconds, now (0 if the clock is before 1970).
pub fn wall() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Seconds since boot, suspend included.
pub fn boot() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the kernel to fill; CLOCK_BOOTTIME exists on every
    // Linux this daemon runs on (2.6.39 and later).
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// What is left of a persisted deadline at load: `deadline - now`, but never less than 0 and
/// never more than the configured `length` (a wall clock that moved back while the daemon was
/// down would otherwise stretch the deadline by the size of the move).
pub fn remaining(deadline_wall: f64, now_wall: f64, length: f64) -> f64 {
    let left = deadline_wall - now_wall;
    if left.is_nan() {
        return 0.0;
    }
    left.clamp(0.0, length.max(0.0))
}

/// How long ago a persisted instant was, at load: never negative (an instant "in the future"
/// is a wall clock that moved back, and counts as now).
pub fn age(at_wall: f64, now_wall: f64) -> f64 {
    let age = now_wall - at_wall;
    if age.is_nan() { 0.0 } else { age.max(0.0) }
}

/// A jump of the wall clock seen between two readings: how far the wall clock moved beyond
/// (or short of) the boot clock, in seconds (positive: ahead).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Jump {
    pub seconds: f64,
    /// When it was seen (wall clock, after the jump).
    pub at: f64,
}

/// Watches for wall clock jumps: two readings whose wall and boot differences disagree by
/// more than `threshold` seconds.
#[derive(Debug, Clone)]
pub struct JumpDetector {
    last: Option<Now>,
    threshold: f64,
}

impl JumpDetector {
    /// The default threshold: NTP slews by at most 0.5 ms per second, so a few seconds
    /// between two ticks is a step, not a slew.
    pub const THRESHOLD_S: f64 = 3.0;

    pub fn new(threshold: f64) -> JumpDetector {
        JumpDetector {
            last: None,
            threshold,
        }
    }

    /// Takes a reading; returns the jump since the previous one, if there was one.
    pub fn observe(&mut self, now: Now) -> Option<Jump> {
        let last = self.last.replace(now)?;
        let skew = (now.wall - last.wall) - (now.boot - last.boot);
        (skew.abs() > self.threshold).then_some(Jump {
            seconds: skew,
            at: now.wall,
        })
    }
}

/// The jumps seen while running, for `status` and the metrics.
#[derive(Debug, Default)]
pub struct Watch {
    jumps: AtomicU64,
    last: Mutex<Option<Jump>>,
    detector: Mutex<JumpDetector>,
}

/// What `status` shows of the clocks.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WatchView {
    /// Wall clock jumps seen since start.
    pub jumps: u64,
    /// The last one: its size in seconds (negative: back) and when it was seen.
    pub last_jump_s: Option<f64>,
    pub last_jump_at: Option<f64>,
}

impl Watch {
    /// Takes a reading of both clocks; a jump since the last reading is counted, logged once
    /// with its size, and returned.
    pub fn tick(&self) -> Option<Jump> {
        let jump = self
            .detector
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .observe(Now::read())?;
        self.jumps.fetch_add(1, Ordering::Relaxed);
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(jump);
        tracing::warn!(
            jump_s = jump.seconds,
            "the wall clock jumped; cooldowns, retries and loop-guard windows run on the boot clock and are unchanged, dates from now on follow the new wall clock"
        );
        Some(jump)
    }

    pub fn view(&self) -> WatchView {
        let last = *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        WatchView {
            jumps: self.jumps.load(Ordering::Relaxed),
            last_jump_s: last.map(|j| j.seconds),
            last_jump_at: last.map(|j| j.at),
        }
    }
}

impl Default for JumpDetector {
    fn default() -> Self {
        JumpDetector::new(Self::THRESHOLD_S)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_is_clamped_to_the_configured_length() {
        // A 60 s cooldown that began just now.
        assert_eq!(remaining(1_060.0, 1_000.0, 60.0), 60.0);
        assert_eq!(remaining(1_060.0, 1_030.0, 60.0), 30.0);
        assert_eq!(remaining(1_060.0, 1_100.0, 60.0), 0.0);
        // The clock is 30 days behind after a restart: 60 s, not 30 days.
        let month = 30.0 * 86_400.0;
        assert_eq!(remaining(1_060.0 + month, 1_000.0, 60.0), 60.0);
        assert_eq!(remaining(1_060.0, 1_000.0 - month, 60.0), 60.0);
        assert_eq!(remaining(f64::NAN, 1_000.0, 60.0), 0.0);
        assert_eq!(remaining(2_000.0, 1_000.0, -5.0), 0.0);
    }

    #[test]
    fn age_is_never_negative() {
        assert_eq!(age(1_000.0, 1_030.0), 30.0);
        assert_eq!(age(1_000.0 + 86_400.0, 1_030.0), 0.0);
        assert_eq!(age(f64::NAN, 1_030.0), 0.0);
    }

    #[test]
    fn readings_convert_between_clocks() {
        let now = Now {
            wall: 1_000_000.0,
            boot: 50.0,
        };
        assert_eq!(now.wall_at(80.0), 1_000_030.0);
        assert_eq!(now.boot_at(1_000_030.0), 80.0);
        assert_eq!(Now::same(7.0).wall_at(9.0), 9.0);
    }

    #[test]
    fn a_jump_is_seen_once_and_a_steady_clock_never() {
        let mut d = JumpDetector::default();
        let mut now = Now {
            wall: 1_000.0,
            boot: 10.0,
        };
        assert_eq!(d.observe(now), None);
        for _ in 0..10 {
            now.wall += 10.0;
            now.boot += 10.0;
            assert_eq!(d.observe(now), None);
        }
        // Slew within the threshold is not a jump.
        now.wall += 10.5;
        now.boot += 10.0;
        assert_eq!(d.observe(now), None);
        // The wall clock goes back 30 days between two ticks.
        now.wall -= 30.0 * 86_400.0 - 10.0;
        now.boot += 10.0;
        let jump = d.observe(now).expect("a jump");
        assert!((jump.seconds + 30.0 * 86_400.0).abs() < 1e-6, "{jump:?}");
        now.wall += 10.0;
        now.boot += 10.0;
        assert_eq!(d.observe(now), None, "counted once");
        // Ahead.
        now.wall += 3_600.0;
        now.boot += 1.0;
        assert!(d.observe(now).expect("a jump").seconds > 3_500.0);
    }

    #[test]
    fn the_boot_clock_moves_forward() {
        let a = boot();
        let b = boot();
        assert!(a > 0.0 && b >= a);
    }
}
