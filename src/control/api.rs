//! The control socket's contract: the requests, the reply line, and the data each request is
//! answered with. One set of types: the daemon serializes them, the CLI deserializes the
//! same ones (greetd's way), so neither side spells a key the other does not.
//!
//! Each [`Request`] variant names its reply data, a variant of [`Data`]. A reply line is a
//! [`Reply`]: `{"data": ..., "ok": true}`, or `{"error": "...", "ok": false}`.
//!
//! The daemon writes a reply through a `serde_json::Value`, whose keys are sorted: the bytes
//! on the wire are those of the `json!` objects these types replaced. The CLI's `--json`
//! prints the data as the daemon sent it, fields this version does not know included.
//!
//! Names and kinds that are text on the wire (a job's `action` and `state`) stay `String`
//! here, so a CLI can read the reply of a newer daemon that knows more of them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::probation::Summary;
use crate::store::StoreStats;

/// One request line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Reply: [`Data::Status`].
    Status,
    /// Reply: [`Data::Models`].
    Models {
        /// Only this model (an unknown id is refused).
        #[serde(default)]
        model: Option<String>,
    },
    /// Reply: [`Data::History`], newest first.
    History {
        #[serde(default)]
        model: Option<String>,
        #[serde(default = "default_limit")]
        limit: usize,
    },
    /// A model's decision log, newest entry first (by its number, never by time).
    /// Reply: [`Data::Explain`].
    Explain {
        model: String,
        #[serde(default = "default_limit")]
        limit: usize,
    },
    /// Reply: [`Data::Triggered`].
    Trigger {
        model: String,
        action: String,
        /// Act on a model the daemon has never seen (it is created).
        #[serde(default)]
        create: bool,
    },
    /// Rolls back the model's latest succeeded retrain that has a receipt.
    /// Reply: [`Data::Triggered`] (the rollback job).
    Rollback { model: String },
    /// Ends the model's probation now and keeps the candidate.
    /// Reply: [`Data::Triggered`] (the retrain's job, now promoted).
    Promote { model: String },
    /// Removes a model's state, counters and runner record (its jobs stay in the journal).
    /// Reply: [`Data::Forgotten`].
    Forget { model: String },
    /// Reply: [`Data::Reset`].
    Reset {
        model: String,
        /// Act on a model the daemon has never seen (it is created).
        #[serde(default)]
        create: bool,
    },
    /// Reply: [`Data::Paused`] (`paused: true`).
    Pause {
        model: String,
        /// Act on a model the daemon has never seen (it is created).
        #[serde(default)]
        create: bool,
    },
    /// Reply: [`Data::Paused`] (`paused: false`).
    Resume {
        model: String,
        /// Act on a model the daemon has never seen (it is created).
        #[serde(default)]
        create: bool,
    },
    /// Reply: [`Data::Metrics`].
    Metrics,
    /// Test seam, refused unless the daemon runs with `VISUTILITY_FAULT_INJECTION=1`:
    /// `{"cmd":"fault","store":true}` makes the store fail every write and flush.
    /// Reply: [`Data::Fault`].
    Fault { store: bool },
}

fn default_limit() -> usize {
    100
}

/// One reply line: `data` when the request was served, `error` (in words) when it was not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply<T> {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<T>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl<T> Reply<T> {
    pub fn served(data: T) -> Reply<T> {
        Reply {
            ok: true,
            data: Some(data),
            error: None,
        }
    }

    pub fn refused(error: impl std::fmt::Display) -> Reply<T> {
        Reply {
            ok: false,
            data: None,
            error: Some(error.to_string()),
        }
    }
}

/// What a served request is answered with, one variant per request (see [`Request`]).
/// Serialized bare (untagged): which one it is follows from the request, and
/// [`Data::decode`] reads it back that way.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Data {
    Status(Box<Status>),
    Models(Vec<ModelInfo>),
    History(Vec<JobInfo>),
    Explain(Vec<ExplainInfo>),
    Triggered(Triggered),
    Reset(ResetDone),
    Paused(PauseSet),
    Forgotten(Forgotten),
    /// The Prometheus text exposition.
    Metrics(String),
    Fault(FaultSet),
}

impl Data {
    /// The data of the reply to `req`. By shape alone some replies could be taken for others
    /// (an untagged enum tries its variants in turn); the request says which it is.
    pub fn decode(req: &Request, data: serde_json::Value) -> Result<Data, serde_json::Error> {
        use serde_json::from_value;
        Ok(match req {
            Request::Status => Data::Status(from_value(data)?),
            Request::Models { .. } => Data::Models(from_value(data)?),
            Request::History { .. } => Data::History(from_value(data)?),
            Request::Explain { .. } => Data::Explain(from_value(data)?),
            Request::Trigger { .. } | Request::Rollback { .. } | Request::Promote { .. } => {
                Data::Triggered(from_value(data)?)
            }
            Request::Reset { .. } => Data::Reset(from_value(data)?),
            Request::Pause { .. } | Request::Resume { .. } => Data::Paused(from_value(data)?),
            Request::Forget { .. } => Data::Forgotten(from_value(data)?),
            Request::Metrics => Data::Metrics(from_value(data)?),
            Request::Fault { .. } => Data::Fault(from_value(data)?),
        })
    }
}

/// `status`: the daemon at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub uptime_s: f64,
    /// Models known (loaded or only in the store).
    pub models: usize,
    pub models_loaded: usize,
    /// Over the last minute.
    pub events_per_second: f64,
    pub events_accepted: u64,
    pub lines_rejected: u64,
    /// Ingest connections open now.
    pub connections: u64,
    /// Ingest connections refused: over the limits, or by the peer checks.
    pub connections_refused: u64,
    /// Error replies not delivered because their client did not read them.
    pub replies_dropped: u64,
    pub jobs_running: usize,
    pub jobs_queued: usize,
    /// The paused models' ids.
    pub paused: Vec<String>,
    /// Models whose latest retrain is on probation.
    #[serde(default)]
    pub models_on_probation: usize,
    pub store_bytes: u64,
    pub store_ok: bool,
    /// Why the store is not ok (`null` when it is).
    pub store_error: Option<String>,
    /// The store's own counters, for tools; the CLI's table shows only its undecodable
    /// models.
    #[serde(default)]
    pub store: StoreStats,
    pub state_dir: String,
    /// Wall clock jumps seen while running.
    #[serde(default)]
    pub clock: crate::clock::WatchView,
}

/// One model of `models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub model_id: String,
    /// Events applied and persisted since the model was first seen.
    pub events: u64,
    /// Unix seconds.
    pub last_seen: f64,
    pub first_seen: f64,
    pub decisions: u64,
    pub last_decision: Option<DecisionInfo>,
    /// Restarts of the model's actor in this run.
    pub restarts: u64,
    /// Events left before the policies may decide.
    pub warmup_left: u64,
    pub policies: Vec<PolicyInfo>,
    /// The latest drift scores and accuracies, oldest first. Kept as `f32` by the daemon and
    /// sent widened to `f64`, digits and all, as they always were.
    pub recent_drift: Vec<f64>,
    pub recent_accuracy: Vec<f64>,
    /// Decisions since the daemon started, per policy and action; empty for a model not
    /// loaded in this run.
    pub decision_counts: Vec<DecisionCount>,
    /// Decisions are recorded, no hooks run.
    pub paused: bool,
    /// The running probation, for a model on probation (contract section 7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probation: Option<ModelProbationInfo>,
}

/// `models`: a model's running probation, with its progress and current z.
pub type ModelProbationInfo = crate::probation::Progress;

/// `history --json`: a retrain's probation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobProbationInfo {
    /// `on_probation`, `promoted`, `rolled_back`, `inconclusive`, `superseded`.
    pub state: String,
    pub metric: String,
    /// `degraded`, `policy_fired`, `inconclusive` or `manual`, once there is one.
    pub cause: Option<String>,
    pub baseline: Option<Summary>,
    pub candidate: Option<Summary>,
    pub tolerance: f64,
    pub z: Option<f64>,
    pub z_threshold: Option<f64>,
    pub started_at: Option<f64>,
    pub decided_at: Option<f64>,
    /// The rollback or promote job the verdict started.
    pub followed_by: Option<u64>,
}

impl JobProbationInfo {
    pub fn of(r: &crate::store::ProbationRecord) -> JobProbationInfo {
        let crate::store::ProbationRecord {
            model_id: _,
            state,
            metric,
            tolerance,
            baseline,
            candidate,
            z,
            z_threshold,
            cause,
            started_at,
            decided_at,
            followed_by,
        } = r;
        JobProbationInfo {
            state: state.as_str().to_owned(),
            metric: metric.clone(),
            cause: cause.map(|c| c.as_str().to_owned()),
            baseline: baseline.as_ref().map(Summary::from),
            candidate: candidate.as_ref().map(Summary::from),
            tolerance: *tolerance,
            z: z.filter(|z| z.is_finite()),
            z_threshold: z_threshold.filter(|z| z.is_finite()),
            started_at: *started_at,
            decided_at: *decided_at,
            followed_by: *followed_by,
        }
    }
}

/// A model's latest decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionInfo {
    pub at: f64,
    pub policy: String,
    pub action: String,
    pub reason: String,
}

/// One policy of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyInfo {
    pub name: String,
    pub kind: String,
    /// The state as named numbers (window fill, mean, threshold; a detector's statistic...),
    /// which differ by kind; `null` for a number that is not finite (JSON has none).
    pub state: BTreeMap<String, Option<f64>>,
    /// The state in words, for the table.
    pub summary: String,
    /// Values this policy refused since the model was loaded: they would have made its
    /// detector's state non-finite.
    pub values_rejected: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionCount {
    pub policy: String,
    pub action: String,
    pub count: u64,
}

/// One job of `history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    pub job_id: u64,
    pub model_id: String,
    /// `full`, `fine_tune` or `escalate`.
    pub action: String,
    pub policy: String,
    pub reason: String,
    /// `queued`, `running`, `succeeded`, `failed`, `interrupted`, `superseded`, `skipped`.
    pub state: String,
    /// Attempts started so far.
    pub attempts: u32,
    pub exit_code: Option<i32>,
    /// The signal that ended the hook, if one did.
    pub signal: Option<i32>,
    /// Unix seconds, as are `started` and `ended`.
    pub created: f64,
    pub started: Option<f64>,
    pub ended: Option<f64>,
    /// Why it failed or was skipped, in words.
    pub note: String,
    /// The hook's program and arguments.
    pub command: Vec<String>,
    pub stdout_tail: String,
    pub stderr_tail: String,
    /// The interrupted job this one redoes, if any.
    pub retry_of: Option<u64>,
    /// Every state the job went through, oldest first.
    pub transitions: Vec<Transition>,
    /// The receipt a retrain hook wrote (`VISUTILITY_RECEIPT`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<serde_json::Value>,
    /// A rollback's: the retrain job it undoes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
    /// A retrain's probation, if its model's rule has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probation: Option<JobProbationInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    pub state: String,
    pub at: f64,
}

/// One entry of `explain`. Its `kind` says what it records: `decision` (a policy's, or an
/// operator's trigger, and what became of it) is the only kind so far; another kind (a
/// probation verdict) would join with fields of its own, which is why the decision's fields
/// may be absent from an entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExplainInfo {
    /// The entry's number in the model's log; entries come newest (highest) first.
    pub seq: u64,
    pub kind: String,
    /// When the daemon made the last decision the entry stands for, and the first (Unix
    /// seconds, wall clock).
    pub at: f64,
    #[serde(default)]
    pub first_at: f64,
    /// How many decisions in a row, of one policy and action, came to this outcome.
    #[serde(default)]
    pub count: u64,
    #[serde(default)]
    pub policy: String,
    /// `full`, `fine_tune` (what the policy, or the trigger, asked for).
    #[serde(default)]
    pub action: String,
    /// What the policy compared, for the first decision of the entry; `null` where there is
    /// no such number (some detectors, a trigger).
    #[serde(default)]
    pub statistic: Option<f64>,
    #[serde(default)]
    pub threshold: Option<f64>,
    /// In words, as the hook reads it.
    #[serde(default)]
    pub reason: String,
    /// The job it made (its id), or why none ran.
    pub outcome: Outcome,
    /// The job it made or that answered it (`absorbed`: the model's job already queued or
    /// running).
    #[serde(default)]
    pub job_id: Option<u64>,
    /// More of the outcome in words (the loop guard's why, an escalation), or empty.
    #[serde(default)]
    pub note: String,
    /// The event that tipped the first decision, as the hook read it (`meta` included);
    /// `null` for a trigger.
    #[serde(default)]
    pub event: Option<serde_json::Value>,
}

/// What became of a decision: the id of the job it made, or a word for why none ran
/// (`absorbed`, `cooldown`, `budget`, `paused`, `loop_guard`, `warmup`, `no_hook`,
/// `trigger_limit`, `error`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Outcome {
    Job(u64),
    NoJob(String),
}

/// `trigger`: the job queued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Triggered {
    pub job_id: u64,
}

/// `reset`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResetDone {
    pub model_id: String,
    /// Always `true`.
    pub reset: bool,
}

/// `pause` and `resume`: the model's new setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PauseSet {
    pub model_id: String,
    pub paused: bool,
}

/// `forget`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forgotten {
    pub model_id: String,
    /// Always `true`.
    pub forgotten: bool,
}

/// `fault`: the store fault now set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultSet {
    pub store_fault: bool,
}

// From the daemon's own types. Each destructures its source whole, so a field added there
// fails to compile here until it is given a place on the wire (or deliberately none).

impl ModelInfo {
    pub fn new(view: crate::model::ModelView, paused: bool) -> ModelInfo {
        let crate::model::ModelView {
            model_id,
            events,
            last_seen,
            first_seen,
            decisions,
            last_decision,
            restarts,
            warmup_left,
            policies,
            recent_drift,
            recent_accuracy,
            decision_counts,
            probation,
        } = view;
        let widen = |xs: Vec<f32>| xs.into_iter().map(f64::from).collect();
        ModelInfo {
            model_id,
            events,
            last_seen,
            first_seen,
            decisions,
            last_decision: last_decision.map(|d| {
                let crate::model::DecisionView {
                    at,
                    policy,
                    action,
                    reason,
                } = d;
                DecisionInfo {
                    at,
                    policy,
                    action,
                    reason,
                }
            }),
            restarts,
            warmup_left,
            policies: policies
                .into_iter()
                .map(|p| {
                    let crate::model::PolicyView {
                        name,
                        kind,
                        state,
                        summary,
                        values_rejected,
                    } = p;
                    PolicyInfo {
                        name,
                        kind,
                        state: state
                            .0
                            .into_iter()
                            .map(|(k, v)| (k.to_owned(), v.is_finite().then_some(v)))
                            .collect(),
                        summary,
                        values_rejected,
                    }
                })
                .collect(),
            recent_drift: widen(recent_drift),
            recent_accuracy: widen(recent_accuracy),
            decision_counts: decision_counts
                .into_iter()
                .map(|c| {
                    let crate::model::DecisionCount {
                        policy,
                        action,
                        count,
                    } = c;
                    DecisionCount {
                        policy,
                        action: action.to_owned(),
                        count,
                    }
                })
                .collect(),
            paused,
            probation,
        }
    }
}

impl ExplainInfo {
    pub fn new(seq: u64, entry: &crate::store::ExplainEntry) -> ExplainInfo {
        let crate::store::ExplainEntry::Decision(d) = entry;
        let crate::store::DecisionEntry {
            first_at,
            at,
            count,
            policy,
            action,
            statistic,
            threshold,
            reason,
            event,
            outcome,
            note,
        } = d;
        ExplainInfo {
            seq,
            kind: "decision".into(),
            at: *at,
            first_at: *first_at,
            count: *count,
            policy: policy.clone(),
            action: action.as_str().to_owned(),
            statistic: *statistic,
            threshold: *threshold,
            reason: reason.clone(),
            outcome: match outcome {
                crate::store::DecisionOutcome::Job(id) => Outcome::Job(*id),
                other => Outcome::NoJob(other.as_str().to_owned()),
            },
            job_id: outcome.job_id(),
            note: note.clone(),
            // Written by the daemon from a valid event; a damaged one is left out.
            event: event.as_deref().and_then(|e| serde_json::from_str(e).ok()),
        }
    }
}

impl From<&crate::store::Job> for JobInfo {
    fn from(j: &crate::store::Job) -> JobInfo {
        let crate::store::Job {
            job_id,
            model_id,
            action,
            policy,
            reason,
            // The hook's stdin, and the runner's own bookkeeping: not shown.
            decision,
            state,
            attempts,
            created,
            started,
            ended,
            exit_code,
            signal,
            pgid: _,
            leader: _,
            command,
            note,
            stdout_tail,
            stderr_tail,
            transitions,
            retry_of,
        } = j;
        JobInfo {
            job_id: *job_id,
            model_id: model_id.clone(),
            action: action.as_str().to_owned(),
            policy: policy.clone(),
            reason: reason.clone(),
            state: state.as_str().to_owned(),
            attempts: *attempts,
            exit_code: *exit_code,
            signal: *signal,
            created: *created,
            started: *started,
            ended: *ended,
            note: note.clone(),
            command: command.clone(),
            stdout_tail: stdout_tail.clone(),
            stderr_tail: stderr_tail.clone(),
            retry_of: *retry_of,
            transitions: transitions
                .iter()
                .map(|(s, at)| Transition {
                    state: s.as_str().to_owned(),
                    at: *at,
                })
                .collect(),
            receipt: None,
            probation: None,
            // A rollback's stdin names the retrain it undoes.
            rollback_of: (*action == crate::policy::Action::Rollback)
                .then(|| serde_json::from_str::<crate::command::input::HookInput>(decision).ok())
                .flatten()
                .and_then(|i| i.rollback_of),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DecisionView, ModelView, PolicyView};
    use crate::policy::{Action, NamedNumbers};
    use crate::store::{Job, JobState};

    fn view() -> ModelView {
        ModelView {
            model_id: "fraud-v3".into(),
            events: 12,
            last_seen: 1_764_172_800.25,
            first_seen: 1_764_172_000.0,
            decisions: 1,
            last_decision: Some(DecisionView {
                at: 1_764_172_700.5,
                policy: "errors".into(),
                action: "full".into(),
                reason: "drift".into(),
            }),
            restarts: 0,
            warmup_left: 3,
            policies: vec![PolicyView {
                name: "errors".into(),
                kind: "adwin".into(),
                state: NamedNumbers(vec![("width", 10.0), ("mean", 0.1), ("bound", f64::NAN)]),
                summary: "width 10".into(),
                values_rejected: 0,
            }],
            recent_drift: vec![0.1, 0.5],
            recent_accuracy: vec![],
            decision_counts: vec![crate::model::DecisionCount {
                policy: "errors".into(),
                action: "full",
                count: 1,
            }],
            probation: None,
        }
    }

    fn job() -> Job {
        let mut j = Job::new(
            7,
            "fraud-v3",
            Action::FineTune,
            "errors",
            "drift",
            "{}".into(),
            100.5,
        );
        j.state = JobState::Failed;
        j.attempts = 1;
        j.started = Some(101.0);
        j.ended = Some(102.0);
        j.exit_code = Some(3);
        j.command = vec!["/bin/false".into()];
        j.transitions.push((JobState::Failed, 102.0));
        j
    }

    fn explained() -> Vec<ExplainInfo> {
        use crate::store::{DecisionEntry, DecisionOutcome, ExplainEntry};
        let entry = |outcome, count, event: Option<&str>| {
            ExplainEntry::Decision(DecisionEntry {
                first_at: 1_764_172_700.5,
                at: 1_764_172_760.25,
                count,
                policy: "mean".into(),
                action: Action::Full,
                statistic: Some(0.75),
                threshold: Some(0.5),
                reason: "mean above".into(),
                event: event.map(str::to_owned),
                outcome,
                note: String::new(),
            })
        };
        vec![
            ExplainInfo::new(3, &entry(DecisionOutcome::Cooldown, 41, None)),
            ExplainInfo::new(
                2,
                &entry(
                    DecisionOutcome::Job(7),
                    1,
                    Some(r#"{"meta":{"batch":"b-17"},"ts":1764172700.5}"#),
                ),
            ),
        ]
    }

    /// What the daemon writes: the reply through a `Value`, as `write_reply` does.
    fn wire(reply: &Reply<Data>) -> String {
        serde_json::to_string(&serde_json::to_value(reply).unwrap()).unwrap()
    }

    /// The typed replies are byte for byte the `json!` replies they replaced (keys sorted,
    /// `f32`s widened, a non-finite number as `null`, absent values as `null`), captured
    /// from the old code.
    #[test]
    fn replies_keep_their_bytes_on_the_wire() {
        let models = Reply::served(Data::Models(vec![ModelInfo::new(view(), true)]));
        assert_eq!(
            wire(&models),
            r#"{"data":[{"decision_counts":[{"action":"full","count":1,"policy":"errors"}],"decisions":1,"events":12,"first_seen":1764172000.0,"last_decision":{"action":"full","at":1764172700.5,"policy":"errors","reason":"drift"},"last_seen":1764172800.25,"model_id":"fraud-v3","paused":true,"policies":[{"kind":"adwin","name":"errors","state":{"bound":null,"mean":0.1,"width":10.0},"summary":"width 10","values_rejected":0}],"recent_accuracy":[],"recent_drift":[0.10000000149011612,0.5],"restarts":0,"warmup_left":3}],"ok":true}"#
        );
        let history = Reply::served(Data::History(vec![JobInfo::from(&job())]));
        assert_eq!(
            wire(&history),
            r#"{"data":[{"action":"fine_tune","attempts":1,"command":["/bin/false"],"created":100.5,"ended":102.0,"exit_code":3,"job_id":7,"model_id":"fraud-v3","note":"","policy":"errors","reason":"drift","retry_of":null,"signal":null,"started":101.0,"state":"failed","stderr_tail":"","stdout_tail":"","transitions":[{"at":100.5,"state":"queued"},{"at":102.0,"state":"failed"}]}],"ok":true}"#
        );
        // `explain` (new with it): `outcome` is a job id or a word.
        assert_eq!(
            wire(&Reply::served(Data::Explain(explained()))),
            r#"{"data":[{"action":"full","at":1764172760.25,"count":41,"event":null,"first_at":1764172700.5,"job_id":null,"kind":"decision","note":"","outcome":"cooldown","policy":"mean","reason":"mean above","seq":3,"statistic":0.75,"threshold":0.5},{"action":"full","at":1764172760.25,"count":1,"event":{"meta":{"batch":"b-17"},"ts":1764172700.5},"first_at":1764172700.5,"job_id":7,"kind":"decision","note":"","outcome":7,"policy":"mean","reason":"mean above","seq":2,"statistic":0.75,"threshold":0.5}],"ok":true}"#
        );
        let paused = Reply::served(Data::Paused(PauseSet {
            model_id: "m".into(),
            paused: false,
        }));
        assert_eq!(
            wire(&paused),
            r#"{"data":{"model_id":"m","paused":false},"ok":true}"#
        );
        assert_eq!(
            wire(&Reply::served(Data::Metrics("# HELP x\n".into()))),
            r##"{"data":"# HELP x\n","ok":true}"##
        );
        assert_eq!(
            wire(&Reply::refused("unknown model m")),
            r#"{"error":"unknown model m","ok":false}"#
        );
        assert_eq!(
            wire(&Reply::refused(crate::control::Refusal::PeerNotAllowed {
                uid: 1000
            })),
            r#"{"error":"permission denied: uid 1000 is not allowed on the control socket (see daemon.control_allow and daemon.control_group)","ok":false}"#
        );
        let bad = serde_json::from_str::<Request>("{\"cmd\":\"explode\"}").unwrap_err();
        assert!(
            wire(&Reply::refused(crate::control::Refusal::BadRequest(bad)))
                .starts_with(r#"{"error":"bad request: unknown variant `explode`"#)
        );
    }

    /// The CLI reads back what the daemon sent, as the same types.
    #[test]
    fn the_cli_decodes_what_the_daemon_sends() {
        let status = Status {
            version: "0.1.0".into(),
            uptime_s: 3.5,
            models: 2,
            models_loaded: 1,
            events_per_second: 0.0,
            events_accepted: 10,
            lines_rejected: 1,
            connections: 0,
            connections_refused: 0,
            replies_dropped: 0,
            jobs_running: 0,
            jobs_queued: 1,
            paused: vec!["m".into()],
            models_on_probation: 1,
            store_bytes: 4096,
            store_ok: false,
            store_error: Some("disk full".into()),
            store: StoreStats {
                undecodable_models: vec!["broken".into()],
                ..StoreStats::default()
            },
            state_dir: "/var/lib/visutility".into(),
            clock: crate::clock::WatchView {
                jumps: 1,
                last_jump_s: Some(-2_592_000.0),
                last_jump_at: Some(1_700_000_000.0),
            },
        };
        let cases = [
            (Request::Status, Data::Status(Box::new(status))),
            (
                Request::Models { model: None },
                Data::Models(vec![ModelInfo::new(view(), false)]),
            ),
            (
                Request::History {
                    model: None,
                    limit: 5,
                },
                Data::History(vec![JobInfo::from(&job())]),
            ),
            (
                Request::Explain {
                    model: "m".into(),
                    limit: 20,
                },
                Data::Explain(explained()),
            ),
            (
                Request::Trigger {
                    model: "m".into(),
                    action: "full".into(),
                    create: false,
                },
                Data::Triggered(Triggered { job_id: 9 }),
            ),
            (
                Request::Reset {
                    model: "m".into(),
                    create: false,
                },
                Data::Reset(ResetDone {
                    model_id: "m".into(),
                    reset: true,
                }),
            ),
            (
                Request::Resume {
                    model: "m".into(),
                    create: false,
                },
                Data::Paused(PauseSet {
                    model_id: "m".into(),
                    paused: false,
                }),
            ),
            (
                Request::Forget { model: "m".into() },
                Data::Forgotten(Forgotten {
                    model_id: "m".into(),
                    forgotten: true,
                }),
            ),
            (Request::Metrics, Data::Metrics("x 1\n".into())),
            (
                Request::Fault { store: true },
                Data::Fault(FaultSet { store_fault: true }),
            ),
        ];
        for (req, data) in cases {
            let line = wire(&Reply::served(data.clone()));
            let reply: Reply<serde_json::Value> = serde_json::from_str(&line).unwrap();
            assert!(reply.ok && reply.error.is_none(), "{line}");
            let back = Data::decode(&req, reply.data.unwrap()).unwrap();
            assert_eq!(back, data, "{req:?}");
        }
        // A policy state's `null` (a non-finite number) reads back as `None`.
        let Data::Models(m) = Data::decode(
            &Request::Models { model: None },
            serde_json::to_value(vec![ModelInfo::new(view(), false)]).unwrap(),
        )
        .unwrap() else {
            panic!("not models");
        };
        assert_eq!(m[0].policies[0].state["bound"], None);
        assert_eq!(m[0].policies[0].state["mean"], Some(0.1));
    }
}
