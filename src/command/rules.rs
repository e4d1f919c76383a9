//! The hook runner's rules for a decision, as plain functions of the model's [`Runner`] state
//! and the time: pause, cooldown, the loop guard, whether a hook exists, the daily budget,
//! and what a job's end leaves behind (cooldown, the loop guard's last success).
//!
//! The [`super::CommandActor`] wraps them with the store, the queue and the hooks' processes;
//! the offline `backtest --simulate` calls the same functions with the events' times, so the
//! two cannot disagree about which decisions become jobs.
//!
//! Time: every duration here (cooldown, loop-guard window, the budget's day once it began) is
//! a difference of boot clock readings ([`Now::boot`]), so a jump of the wall clock stretches
//! none of them; the wall clock only names the budget's calendar day. A [`Runner`] is the
//! in-memory form of the persisted [`RunnerRecord`], whose deadlines are wall clock instants:
//! [`Runner::from_record`] clamps each to its configured length (see [`crate::clock`]).
//!
//! Architecture invariant: nothing here does I/O or reads a clock (time is the `now`
//! argument), and nothing here knows about jobs already running or queued (the caller absorbs
//! decisions into those before it asks).

use crate::clock::{self, Now};
use crate::config::HooksConfig;
use crate::policy::Action;
use crate::store::RunnerRecord;

/// Seconds in a UTC day.
const DAY: f64 = 86_400.0;

/// A model's runner state in memory: instants are boot clock readings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Runner {
    /// A paused model records decisions but runs no hooks.
    pub paused: bool,
    /// No new job starts for the model before this boot clock instant.
    pub cooldown_until: f64,
    /// The budget's calendar day (whole UTC days since the epoch, by the wall clock when it
    /// began), the jobs started for policy decisions in it, and when it ends (boot clock).
    pub budget_day: u64,
    pub budget_used: u32,
    pub budget_ends: f64,
    /// The budget day in which the escalate hook was last called for an exhausted budget.
    pub escalated_day: u64,
    /// When the last successful retrain ended (boot clock), for which policy, and how far the
    /// loop guard has climbed since.
    pub last_success: Option<(f64, String, Action)>,
}

impl Runner {
    /// The persisted record as this run keeps it: every deadline clamped to its configured
    /// length (`hooks.cooldown_s` for the cooldown, one day for the budget's day), every
    /// instant in the past, whatever the wall clock did while the daemon was down.
    pub fn from_record(rec: &RunnerRecord, hooks: &HooksConfig, now: Now) -> Runner {
        let cooldown = clock::remaining(rec.cooldown_until, now.wall, hooks.cooldown_s as f64);
        let day_end = (rec.budget_day as f64 + 1.0) * DAY;
        let budget_left = clock::remaining(day_end, now.wall, DAY);
        Runner {
            paused: rec.paused,
            cooldown_until: if cooldown > 0.0 {
                now.boot + cooldown
            } else {
                0.0
            },
            budget_day: rec.budget_day,
            budget_used: rec.budget_used,
            budget_ends: now.boot + budget_left,
            escalated_day: rec.escalated_day,
            last_success: rec.last_success.as_ref().map(|(at, policy, action)| {
                (
                    now.boot - clock::age(*at, now.wall),
                    policy.clone(),
                    *action,
                )
            }),
        }
    }

    /// The record to persist: boot clock instants as the wall clock now dates them.
    pub fn to_record(&self, now: Now) -> RunnerRecord {
        RunnerRecord {
            cooldown_until: if self.cooldown_until > now.boot {
                now.wall_at(self.cooldown_until)
            } else {
                0.0
            },
            paused: self.paused,
            budget_day: self.budget_day,
            budget_used: self.budget_used,
            escalated_day: self.escalated_day,
            last_success: self
                .last_success
                .as_ref()
                .map(|(at, policy, action)| (now.wall_at(*at), policy.clone(), *action)),
        }
    }

    /// Renews the budget when its day is over: the wall clock's calendar day moved forward,
    /// or a whole day passed on the boot clock since it began (so a wall clock that moved
    /// back never grants a second budget for one day, and one that moved ahead and back
    /// blocks the next day's budget for at most one day).
    fn renew_budget(&mut self, now: Now) {
        let day = (now.wall.max(0.0) / DAY) as u64;
        if day > self.budget_day || now.boot >= self.budget_ends {
            self.budget_day = day;
            self.budget_used = 0;
            self.budget_ends = now.boot + (DAY - now.wall.rem_euclid(DAY));
        }
    }
}

/// A decision as the rules see it.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub policy: &'a str,
    pub action: Action,
    pub reason: &'a str,
    /// An operator's `trigger`: bypasses cooldown, loop guard and budget, not pause.
    pub manual: bool,
}

/// What becomes of a decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Run the hook for `action` (the decision's own, or raised by the loop guard, then with
    /// the loop guard's why before the decision's reason).
    Run { action: Action, reason: String },
    /// Call the escalate hook instead, for `cause` (`loop_guard` or `budget`).
    Escalate { cause: &'static str, why: String },
    /// Record the decision; run nothing.
    Hold(Hold),
}

/// Why a decision ran nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum Hold {
    Paused,
    /// No job starts before this boot clock instant.
    Cooldown {
        until: f64,
    },
    /// The loop guard reached the top of its ladder in this window.
    LoopGuard(String),
    /// No hook is configured for the action.
    NoHook(Action),
    /// The daily budget is used up and the escalate hook was called already that day.
    Budget {
        budget: u32,
    },
}

impl Hold {
    /// The word `explain` and `backtest --simulate` use for it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Hold::Paused => "paused",
            Hold::Cooldown { .. } => "cooldown",
            Hold::LoopGuard(_) => "loop_guard",
            Hold::NoHook(_) => "no_hook",
            Hold::Budget { .. } => "budget",
        }
    }
}

/// What the loop guard makes of a policy's decision.
enum LoopGuard {
    /// No recent success of this policy: the decision stands.
    Pass,
    /// The policy fired again soon after its retrain succeeded: climb to `to`.
    Raise { to: Action, why: String },
    /// The ladder's top was reached already in this window: record, run nothing.
    Hold(String),
}

/// Decides what becomes of `ask` for a model whose runner state is `runner`, under `hooks`
/// and the model's rule's `loop_window_s`, at `now`. Updates the record as the decision
/// consumes it (the budget's day and count, the day the budget escalated, the loop guard's
/// ladder); the caller persists it.
pub fn decide(
    hooks: &HooksConfig,
    loop_window_s: u64,
    runner: &mut Runner,
    ask: Ask<'_>,
    now: Now,
) -> Verdict {
    if runner.paused {
        return Verdict::Hold(Hold::Paused);
    }
    if !ask.manual && now.boot < runner.cooldown_until {
        return Verdict::Hold(Hold::Cooldown {
            until: runner.cooldown_until,
        });
    }
    // An operator's trigger is taken at its word; a policy's decision meets the loop guard.
    let mut action = ask.action;
    let mut reason = ask.reason.to_owned();
    if !ask.manual {
        match loop_guard(loop_window_s, runner, ask.policy, now) {
            LoopGuard::Pass => {}
            LoopGuard::Hold(why) => return Verdict::Hold(Hold::LoopGuard(why)),
            LoopGuard::Raise {
                to: Action::Escalate,
                why,
            } => {
                if let Some(last) = runner.last_success.as_mut() {
                    last.2 = Action::Escalate;
                }
                return Verdict::Escalate {
                    cause: "loop_guard",
                    why,
                };
            }
            LoopGuard::Raise { to, why } => {
                action = to;
                reason = format!("{why}; {}", ask.reason);
            }
        }
    }
    if hooks.hook(action).is_none() {
        return Verdict::Hold(Hold::NoHook(action));
    }
    if !ask.manual && hooks.max_jobs_per_day > 0 {
        runner.renew_budget(now);
        let day = runner.budget_day;
        if runner.budget_used >= hooks.max_jobs_per_day {
            if runner.escalated_day == day {
                return Verdict::Hold(Hold::Budget {
                    budget: hooks.max_jobs_per_day,
                });
            }
            runner.escalated_day = day;
            let why = format!(
                "daily job budget of {} used up; {} asked for {action}: {reason}",
                hooks.max_jobs_per_day, ask.policy
            );
            return Verdict::Escalate {
                cause: "budget",
                why,
            };
        }
        runner.budget_used += 1;
    }
    Verdict::Run { action, reason }
}

/// The loop guard's verdict on a policy's decision.
fn loop_guard(window: u64, runner: &Runner, policy: &str, now: Now) -> LoopGuard {
    if window == 0 {
        return LoopGuard::Pass;
    }
    let Some((at, last_policy, last_action)) = runner.last_success.clone() else {
        return LoopGuard::Pass;
    };
    let since = now.boot - at;
    if last_policy != policy || since > window as f64 {
        return LoopGuard::Pass;
    }
    let why = format!(
        "loop guard: {policy} fired again {since:.0} s after a successful {last_action} (loop_window_s {window})"
    );
    match last_action {
        Action::FineTune => LoopGuard::Raise {
            to: Action::Full,
            why,
        },
        Action::Full => LoopGuard::Raise {
            to: Action::Escalate,
            why,
        },
        Action::Escalate => LoopGuard::Hold(format!("{why}, and the escalate hook was called")),
        // Never remembered as a success (see `job_ended`).
        Action::Rollback | Action::Promote => LoopGuard::Pass,
    }
}

/// A retrain or a rollback ended at `now`: the cooldown starts; when a retrain succeeded, the
/// loop guard remembers it for `policy`. An escalation's or a promotion's end changes nothing.
pub fn job_ended(
    hooks: &HooksConfig,
    runner: &mut Runner,
    action: Action,
    policy: &str,
    succeeded: bool,
    now: Now,
) {
    if matches!(action, Action::Escalate | Action::Promote) {
        return;
    }
    runner.cooldown_until = now.boot + hooks.cooldown_s as f64;
    if succeeded && action != Action::Rollback {
        runner.last_success = Some((now.boot, policy.to_owned(), action));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HookSpec, OnInterrupted};

    fn hooks() -> HooksConfig {
        let spec = Some(HookSpec {
            command: vec!["/bin/true".into()],
            timeout_s: 60,
        });
        HooksConfig {
            max_concurrent: 1,
            cooldown_s: 100,
            retries: 0,
            retry_backoff_s: 1.0,
            dry_run: false,
            on_interrupted: OnInterrupted::Drop,
            max_jobs_per_day: 0,
            max_triggers_per_hour: 0,
            full: spec.clone(),
            fine_tune: spec,
            escalate: None,
            rollback: None,
            promote: None,
            env: Vec::new(),
            pass_env: Vec::new(),
            allow_insecure_modes: true,
        }
    }

    fn ask(action: Action) -> Ask<'static> {
        Ask {
            policy: "p",
            action,
            reason: "why",
            manual: false,
        }
    }

    fn run(action: Action) -> Verdict {
        Verdict::Run {
            action,
            reason: "why".into(),
        }
    }

    #[test]
    fn a_decision_runs_its_hook() {
        let mut r = Runner::default();
        assert_eq!(
            decide(&hooks(), 0, &mut r, ask(Action::Full), Now::same(10.0)),
            run(Action::Full)
        );
    }

    #[test]
    fn pause_holds_even_a_trigger() {
        let mut r = Runner {
            paused: true,
            ..Runner::default()
        };
        let manual = Ask {
            manual: true,
            ..ask(Action::Full)
        };
        assert_eq!(
            decide(&hooks(), 0, &mut r, manual, Now::same(10.0)),
            Verdict::Hold(Hold::Paused)
        );
    }

    #[test]
    fn cooldown_holds_until_it_ends_and_a_trigger_bypasses_it() {
        let h = hooks();
        let mut r = Runner::default();
        job_ended(&h, &mut r, Action::Full, "p", false, Now::same(50.0));
        assert_eq!(
            decide(&h, 0, &mut r, ask(Action::Full), Now::same(149.0)),
            Verdict::Hold(Hold::Cooldown { until: 150.0 })
        );
        let manual = Ask {
            manual: true,
            ..ask(Action::Full)
        };
        assert_eq!(
            decide(&h, 0, &mut r, manual, Now::same(149.0)),
            run(Action::Full)
        );
        assert_eq!(
            decide(&h, 0, &mut r, ask(Action::Full), Now::same(150.0)),
            run(Action::Full)
        );
    }

    #[test]
    fn no_hook_holds() {
        let mut h = hooks();
        h.fine_tune = None;
        let mut r = Runner::default();
        assert_eq!(
            decide(&h, 0, &mut r, ask(Action::FineTune), Now::same(1.0)),
            Verdict::Hold(Hold::NoHook(Action::FineTune))
        );
    }

    #[test]
    fn budget_escalates_once_a_day_then_holds_and_renews_the_next_day() {
        // A real day: `escalated_day` starts at 0, so on day 0 itself it reads as used.
        const T: f64 = 20_000.0 * 86_400.0;
        let mut h = hooks();
        h.max_jobs_per_day = 2;
        let mut r = Runner::default();
        assert_eq!(
            decide(&h, 0, &mut r, ask(Action::Full), Now::same(T + 10.0)),
            run(Action::Full)
        );
        assert_eq!(
            decide(&h, 0, &mut r, ask(Action::Full), Now::same(T + 20.0)),
            run(Action::Full)
        );
        assert!(matches!(
            decide(&h, 0, &mut r, ask(Action::Full), Now::same(T + 30.0)),
            Verdict::Escalate {
                cause: "budget",
                ..
            }
        ));
        assert_eq!(
            decide(&h, 0, &mut r, ask(Action::Full), Now::same(T + 40.0)),
            Verdict::Hold(Hold::Budget { budget: 2 })
        );
        assert_eq!(
            decide(&h, 0, &mut r, ask(Action::Full), Now::same(T + 86_400.0)),
            run(Action::Full)
        );
    }

    #[test]
    fn loop_guard_climbs_fine_tune_full_escalate_hold_within_its_window() {
        let h = hooks();
        let mut r = Runner::default();
        job_ended(&h, &mut r, Action::FineTune, "p", true, Now::same(0.0));
        r.cooldown_until = 0.0;
        let v = decide(&h, 600, &mut r, ask(Action::FineTune), Now::same(10.0));
        let Verdict::Run { action, reason } = v else {
            panic!("{v:?}")
        };
        assert_eq!(action, Action::Full);
        assert!(
            reason.starts_with("loop guard: p fired again 10 s"),
            "{reason}"
        );
        job_ended(&h, &mut r, Action::Full, "p", true, Now::same(20.0));
        r.cooldown_until = 0.0;
        assert!(matches!(
            decide(&h, 600, &mut r, ask(Action::Full), Now::same(30.0)),
            Verdict::Escalate {
                cause: "loop_guard",
                ..
            }
        ));
        assert!(matches!(
            decide(&h, 600, &mut r, ask(Action::Full), Now::same(40.0)),
            Verdict::Hold(Hold::LoopGuard(_))
        ));
        // Another policy, or the same after the window, passes.
        let other = Ask {
            policy: "q",
            ..ask(Action::Full)
        };
        assert_eq!(
            decide(&h, 600, &mut r, other, Now::same(40.0)),
            run(Action::Full)
        );
        assert_eq!(
            decide(&h, 600, &mut r, ask(Action::Full), Now::same(621.0)),
            run(Action::Full)
        );
    }

    #[test]
    fn an_escalation_ending_leaves_no_cooldown() {
        let h = hooks();
        let mut r = Runner::default();
        job_ended(&h, &mut r, Action::Escalate, "p", true, Now::same(50.0));
        assert_eq!(r, Runner::default());
    }

    const DAY0: f64 = 20_000.0 * 86_400.0;
    const MONTH: f64 = 30.0 * 86_400.0;

    /// Both clocks, the boot clock at `boot` and the wall clock `skew` seconds off its usual
    /// `DAY0 + boot`.
    fn at(boot: f64, skew: f64) -> Now {
        Now {
            wall: DAY0 + boot + skew,
            boot,
        }
    }

    #[test]
    fn a_persisted_cooldown_never_outlasts_its_length_whatever_the_wall_clock_did() {
        let h = hooks(); // cooldown_s = 100
        let mut r = Runner::default();
        job_ended(&h, &mut r, Action::Full, "p", true, at(1_000.0, 0.0));
        let rec = r.to_record(at(1_010.0, 0.0));
        assert_eq!(rec.cooldown_until, DAY0 + 1_100.0);
        // Restarted (a new boot: the boot clock starts again) with the wall clock 30 days behind.
        let back = at(5.0, -MONTH);
        let mut loaded = Runner::from_record(&rec, &h, back);
        assert_eq!(
            loaded.cooldown_until, 105.0,
            "clamped to cooldown_s from the load"
        );
        assert!(matches!(
            decide(&h, 0, &mut loaded, ask(Action::Full), at(104.0, -MONTH)),
            Verdict::Hold(Hold::Cooldown { .. })
        ));
        assert_eq!(
            decide(&h, 0, &mut loaded, ask(Action::Full), at(105.0, -MONTH)),
            run(Action::Full)
        );
        // The cooldown began with the wall clock 30 days ahead, corrected across a restart.
        let mut r = Runner::default();
        job_ended(&h, &mut r, Action::Full, "p", true, at(1_000.0, MONTH));
        let rec = r.to_record(at(1_000.0, MONTH));
        let mut loaded = Runner::from_record(&rec, &h, at(7.0, 0.0));
        assert_eq!(loaded.cooldown_until, 107.0);
        assert_eq!(
            decide(&h, 0, &mut loaded, ask(Action::Full), at(107.0, 0.0)),
            run(Action::Full)
        );
        // A cooldown that is over stays over.
        let loaded = Runner::from_record(&rec, &h, at(7.0, MONTH + 1_200.0));
        assert_eq!(loaded.cooldown_until, 0.0);
    }

    #[test]
    fn a_wall_clock_jump_while_running_changes_no_cooldown_or_loop_window() {
        let h = hooks();
        let mut r = Runner::default();
        job_ended(&h, &mut r, Action::FineTune, "p", true, at(1_000.0, 0.0));
        // 30 days back at boot 1050: the cooldown still ends at boot 1100.
        assert!(matches!(
            decide(&h, 600, &mut r, ask(Action::FineTune), at(1_099.0, -MONTH)),
            Verdict::Hold(Hold::Cooldown { until: 1_100.0 })
        ));
        // The loop guard's window (600 s) runs on the boot clock too: 100 s after the success.
        let v = decide(&h, 600, &mut r, ask(Action::FineTune), at(1_100.0, -MONTH));
        assert!(
            matches!(&v, Verdict::Run { action: Action::Full, reason } if reason.contains("100 s")),
            "{v:?}"
        );
        // A persisted last success "in the future" (the wall clock went back) is aged 0, and a
        // window never holds longer than its length from the load.
        r.cooldown_until = 0.0;
        let rec = r.to_record(at(1_200.0, 0.0));
        let mut loaded = Runner::from_record(&rec, &h, at(10.0, -MONTH));
        assert_eq!(loaded.last_success.as_ref().map(|s| s.0), Some(10.0));
        assert!(matches!(
            decide(
                &h,
                600,
                &mut loaded,
                ask(Action::FineTune),
                at(609.0, -MONTH)
            ),
            Verdict::Run {
                action: Action::Full,
                ..
            }
        ));
        assert_eq!(
            decide(
                &h,
                600,
                &mut loaded,
                ask(Action::FineTune),
                at(611.0, -MONTH)
            ),
            run(Action::FineTune)
        );
    }

    #[test]
    fn the_budget_renews_at_utc_midnight_and_never_twice_for_one_day() {
        let mut h = hooks();
        h.cooldown_s = 0;
        h.max_jobs_per_day = 1;
        let mut r = Runner::default();
        // 23:00 UTC on DAY0: the budget's day ends in an hour.
        let t = 82_800.0;
        assert_eq!(
            decide(&h, 0, &mut r, ask(Action::Full), at(t, 0.0)),
            run(Action::Full)
        );
        assert!(matches!(
            decide(&h, 0, &mut r, ask(Action::Full), at(t + 1.0, 0.0)),
            Verdict::Escalate {
                cause: "budget",
                ..
            }
        ));
        assert_eq!(
            decide(&h, 0, &mut r, ask(Action::Full), at(t + 2.0, 0.0)),
            Verdict::Hold(Hold::Budget { budget: 1 })
        );
        // The wall clock goes back 30 days: the same day's budget is not granted again.
        assert_eq!(
            decide(&h, 0, &mut r, ask(Action::Full), at(t + 60.0, -MONTH)),
            Verdict::Hold(Hold::Budget { budget: 1 })
        );
        // One hour later on the boot clock it is the next day: a new budget.
        assert_eq!(
            decide(&h, 0, &mut r, ask(Action::Full), at(t + 3_600.0, -MONTH)),
            run(Action::Full)
        );
        // Across midnight with a steady clock: renewed at 00:00 UTC exactly.
        let mut r = Runner::default();
        assert_eq!(
            decide(&h, 0, &mut r, ask(Action::Full), at(t, 0.0)),
            run(Action::Full)
        );
        let _ = decide(&h, 0, &mut r, ask(Action::Full), at(t + 1.0, 0.0));
        assert_eq!(
            decide(&h, 0, &mut r, ask(Action::Full), at(86_399.0, 0.0)),
            Verdict::Hold(Hold::Budget { budget: 1 })
        );
        assert_eq!(
            decide(&h, 0, &mut r, ask(Action::Full), at(86_400.0, 0.0)),
            run(Action::Full)
        );
        // A forward jump grants the new day's budget at once, and when it is corrected back
        // the next real day is blocked for at most one day.
        let mut r = Runner::default();
        assert_eq!(
            decide(&h, 0, &mut r, ask(Action::Full), at(t, 0.0)),
            run(Action::Full)
        );
        assert_eq!(
            decide(&h, 0, &mut r, ask(Action::Full), at(t + 10.0, MONTH)),
            run(Action::Full)
        );
        let ends = r.budget_ends;
        assert!(ends - (t + 10.0) <= 86_400.0, "{ends}");
        assert_eq!(
            decide(&h, 0, &mut r, ask(Action::Full), at(ends, 0.0)),
            run(Action::Full)
        );
    }

    #[test]
    fn a_persisted_budget_day_lasts_at_most_a_day_from_the_load() {
        let mut h = hooks();
        h.max_jobs_per_day = 1;
        let rec = RunnerRecord {
            budget_day: 20_000,
            budget_used: 1,
            escalated_day: 20_000,
            ..RunnerRecord::default()
        };
        // Loaded with the wall clock 30 days behind: the day is not granted again at once...
        let mut r = Runner::from_record(&rec, &h, at(0.0, -MONTH));
        assert_eq!(
            decide(&h, 0, &mut r, ask(Action::Full), at(10.0, -MONTH)),
            Verdict::Hold(Hold::Budget { budget: 1 })
        );
        // ...and not withheld for a month either.
        assert_eq!(
            decide(&h, 0, &mut r, ask(Action::Full), at(86_400.0, -MONTH)),
            run(Action::Full)
        );
    }
}
