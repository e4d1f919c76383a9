//! The hook runner's rules for a decision, as plain functions of the model's runner record
//! and the time: pause, cooldown, the loop guard, whether a hook exists, the daily budget,
//! and what a job's end leaves behind (cooldown, the loop guard's last success).
//!
//! The [`super::CommandActor`] wraps them with the store, the queue and the hooks' processes;
//! the offline `backtest --simulate` calls the same functions with the events' times, so the
//! two cannot disagree about which decisions become jobs.
//!
//! Architecture invariant: nothing here does I/O or reads a clock (time is the `now`
//! argument), and nothing here knows about jobs already running or queued (the caller absorbs
//! decisions into those before it asks).

use crate::config::HooksConfig;
use crate::policy::Action;
use crate::store::RunnerRecord;

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
    /// No job starts before this time.
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

/// Decides what becomes of `ask` for a model whose runner record is `runner`, under `hooks`
/// and the model's rule's `loop_window_s`, at `now`. Updates the record as the decision
/// consumes it (the budget's day and count, the day the budget escalated, the loop guard's
/// ladder); the caller persists it.
pub fn decide(
    hooks: &HooksConfig,
    loop_window_s: u64,
    runner: &mut RunnerRecord,
    ask: Ask<'_>,
    now: f64,
) -> Verdict {
    if runner.paused {
        return Verdict::Hold(Hold::Paused);
    }
    if !ask.manual && now < runner.cooldown_until {
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
        let day = (now / 86_400.0) as u64;
        if runner.budget_day != day {
            runner.budget_day = day;
            runner.budget_used = 0;
        }
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
fn loop_guard(window: u64, runner: &RunnerRecord, policy: &str, now: f64) -> LoopGuard {
    if window == 0 {
        return LoopGuard::Pass;
    }
    let Some((at, last_policy, last_action)) = runner.last_success.clone() else {
        return LoopGuard::Pass;
    };
    let since = now - at;
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
    }
}

/// A retrain (not an escalation) ended at `now`: the cooldown starts; when it succeeded, the
/// loop guard remembers it for `policy`. An escalation's end changes nothing.
pub fn job_ended(
    hooks: &HooksConfig,
    runner: &mut RunnerRecord,
    action: Action,
    policy: &str,
    succeeded: bool,
    now: f64,
) {
    if action == Action::Escalate {
        return;
    }
    runner.cooldown_until = now + hooks.cooldown_s as f64;
    if succeeded {
        runner.last_success = Some((now, policy.to_owned(), action));
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
        let mut r = RunnerRecord::default();
        assert_eq!(
            decide(&hooks(), 0, &mut r, ask(Action::Full), 10.0),
            run(Action::Full)
        );
    }

    #[test]
    fn pause_holds_even_a_trigger() {
        let mut r = RunnerRecord {
            paused: true,
            ..RunnerRecord::default()
        };
        let manual = Ask {
            manual: true,
            ..ask(Action::Full)
        };
        assert_eq!(
            decide(&hooks(), 0, &mut r, manual, 10.0),
            Verdict::Hold(Hold::Paused)
        );
    }

    #[test]
    fn cooldown_holds_until_it_ends_and_a_trigger_bypasses_it() {
        let h = hooks();
        let mut r = RunnerRecord::default();
        job_ended(&h, &mut r, Action::Full, "p", false, 50.0);
        assert_eq!(
            decide(&h, 0, &mut r, ask(Action::Full), 149.0),
            Verdict::Hold(Hold::Cooldown { until: 150.0 })
        );
        let manual = Ask {
            manual: true,
            ..ask(Action::Full)
        };
        assert_eq!(decide(&h, 0, &mut r, manual, 149.0), run(Action::Full));
        assert_eq!(
            decide(&h, 0, &mut r, ask(Action::Full), 150.0),
            run(Action::Full)
        );
    }

    #[test]
    fn no_hook_holds() {
        let mut h = hooks();
        h.fine_tune = None;
        let mut r = RunnerRecord::default();
        assert_eq!(
            decide(&h, 0, &mut r, ask(Action::FineTune), 1.0),
            Verdict::Hold(Hold::NoHook(Action::FineTune))
        );
    }

    #[test]
    fn budget_escalates_once_a_day_then_holds_and_renews_the_next_day() {
        // A real day: `escalated_day` starts at 0, so on day 0 itself it reads as used.
        const T: f64 = 20_000.0 * 86_400.0;
        let mut h = hooks();
        h.max_jobs_per_day = 2;
        let mut r = RunnerRecord::default();
        assert_eq!(
            decide(&h, 0, &mut r, ask(Action::Full), T + 10.0),
            run(Action::Full)
        );
        assert_eq!(
            decide(&h, 0, &mut r, ask(Action::Full), T + 20.0),
            run(Action::Full)
        );
        assert!(matches!(
            decide(&h, 0, &mut r, ask(Action::Full), T + 30.0),
            Verdict::Escalate {
                cause: "budget",
                ..
            }
        ));
        assert_eq!(
            decide(&h, 0, &mut r, ask(Action::Full), T + 40.0),
            Verdict::Hold(Hold::Budget { budget: 2 })
        );
        assert_eq!(
            decide(&h, 0, &mut r, ask(Action::Full), T + 86_400.0),
            run(Action::Full)
        );
    }

    #[test]
    fn loop_guard_climbs_fine_tune_full_escalate_hold_within_its_window() {
        let h = hooks();
        let mut r = RunnerRecord::default();
        job_ended(&h, &mut r, Action::FineTune, "p", true, 0.0);
        r.cooldown_until = 0.0;
        let v = decide(&h, 600, &mut r, ask(Action::FineTune), 10.0);
        let Verdict::Run { action, reason } = v else {
            panic!("{v:?}")
        };
        assert_eq!(action, Action::Full);
        assert!(
            reason.starts_with("loop guard: p fired again 10 s"),
            "{reason}"
        );
        job_ended(&h, &mut r, Action::Full, "p", true, 20.0);
        r.cooldown_until = 0.0;
        assert!(matches!(
            decide(&h, 600, &mut r, ask(Action::Full), 30.0),
            Verdict::Escalate {
                cause: "loop_guard",
                ..
            }
        ));
        assert!(matches!(
            decide(&h, 600, &mut r, ask(Action::Full), 40.0),
            Verdict::Hold(Hold::LoopGuard(_))
        ));
        // Another policy, or the same after the window, passes.
        let other = Ask {
            policy: "q",
            ..ask(Action::Full)
        };
        assert_eq!(decide(&h, 600, &mut r, other, 40.0), run(Action::Full));
        assert_eq!(
            decide(&h, 600, &mut r, ask(Action::Full), 621.0),
            run(Action::Full)
        );
    }

    #[test]
    fn an_escalation_ending_leaves_no_cooldown() {
        let h = hooks();
        let mut r = RunnerRecord::default();
        job_ended(&h, &mut r, Action::Escalate, "p", true, 50.0);
        assert_eq!(r, RunnerRecord::default());
    }
}
