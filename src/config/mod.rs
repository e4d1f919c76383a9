//! Configuration: raw TOML is parsed into a table, then validated into a [`Config`].
//!
//! Validation walks the table key by key and collects every problem with its key path
//! (`hooks.full.timeout_s: expected a positive integer`), so that `check-config` can show them
//! all at once; unknown keys are errors too, because a misspelt key silently ignored is a
//! policy that never fires.
//!
//! Paths come from systemd's environment (`$CONFIGURATION_DIRECTORY`, `$STATE_DIRECTORY`,
//! `$RUNTIME_DIRECTORY`) when it is set, else from the `directories` crate, so that
//! `visutility daemon` with no arguments works for an unprivileged user. Every look-up goes
//! through an [`Env`] so tests can inject a root.
//!
//! The files, in the order a config goes through them:
//!
//! - `raw.rs`: the raw stage. TOML syntax errors on one line; a walker that takes keys out
//!   of a table, checks their types, and reports what is left as unknown (with the key it
//!   most likely misspells).
//! - `validate.rs`: the raw table into a [`Config`]: every section's keys, their ranges and
//!   defaults, the policies, peer lists, hook environments and log filters.
//! - `env.rs`: where the process finds things ([`Env`]): systemd's variables, the user's
//!   directories, the config file's look-up order, and the socket paths the operator
//!   commands use even when the config does not validate.
//! - `report.rs`: what `check-config` says of a valid config: warnings and the summary.
//! - `nss.rs`: user and group names to ids, through the system's databases.
//!
//! This file holds the validated types, the entry points and the errors.

mod env;
mod nss;
mod raw;
mod report;
mod validate;

pub use env::Env;
pub(crate) use nss::nss_lookup;
pub use validate::check_log_filter;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::policy::{Action, PolicySpec};

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub hooks: HooksConfig,
    pub models: Vec<ModelRule>,
    pub metrics: MetricsConfig,
    /// Where the config came from (`None`: built-in defaults).
    pub source: Option<PathBuf>,
    /// Accepted but deprecated forms (a bare integer in a peer list), with the key path:
    /// logged at start and reload, printed by `check-config`.
    pub warnings: Vec<KeyError>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    pub socket: PathBuf,
    pub control_socket: PathBuf,
    pub state_dir: PathBuf,
    pub flush_interval_ms: u64,
    pub max_line_bytes: usize,
    pub max_models: usize,
    pub max_connections: usize,
    /// Connections silent this long are closed; 0 keeps them forever.
    pub idle_timeout_s: u64,
    /// Ingest connections one peer uid may hold at once; 0: no limit but `max_connections`.
    pub max_connections_per_uid: usize,
    /// A connection holding an unfinished line this long is closed; 0: never.
    pub partial_line_timeout_s: u64,
    /// Bytes of unfinished lines all ingest connections together may hold.
    pub partial_line_budget_bytes: usize,
    /// The tick (ms) a light connection that streams events is read on, all such connections
    /// together, instead of at each write; 0 reads every write as it arrives.
    pub ingest_tick_ms: u64,
    /// A model without events this long has its state dropped from memory (it stays in the
    /// store and is loaded again by its next event); 0 keeps every model loaded.
    pub model_idle_unload_s: u64,
    pub log_level: Option<String>,
    /// Extra uids and gids allowed on the control socket (root and our own uid always are).
    pub control_allow: PeerAllow,
    /// The group the control socket is shared with (then mode 0660); its members are allowed.
    pub control_group: Option<u32>,
    /// When set, only root, our own uid and these uids and gids may write to the ingest
    /// socket; unset, anyone who can open the socket file may.
    pub ingest_allow: Option<PeerAllow>,
    /// Turns off the ownership and mode checks on the config, the hooks and the state
    /// directory (see [`crate::strict_modes`]); for development setups, warned at every start.
    pub allow_insecure_modes: bool,
}

/// A peer allow list. uids and gids are kept apart, because they are separate namespaces: a
/// uid entry matches only a peer's uid, a gid entry only its primary or supplementary gids
/// (a user whose uid happens to equal an allowed gid is not a member of that group).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerAllow {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
}

/// `[metrics]`: where the exposition is also written for node_exporter's textfile collector,
/// where it is served over HTTP, and how many models get series of their own.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    pub textfile: Option<PathBuf>,
    pub interval_s: u64,
    /// `listen = "HOST:PORT"`: serve the exposition at `http://HOST:PORT/metrics`.
    pub listen: Option<std::net::SocketAddr>,
    /// Models with series of their own (the most recently seen first); the rest are summed
    /// under `model_id="_other"`. A fleet multiplies every series by its number of hosts.
    pub max_model_series: usize,
}

/// The default of `[metrics] max_model_series`.
pub const DEFAULT_MAX_MODEL_SERIES: usize = 1000;

#[derive(Debug, Clone, PartialEq)]
pub struct HooksConfig {
    pub max_concurrent: usize,
    pub cooldown_s: u64,
    pub retries: u32,
    pub retry_backoff_s: f64,
    pub dry_run: bool,
    pub on_interrupted: OnInterrupted,
    /// 0 means no budget.
    pub max_jobs_per_day: u32,
    /// Per model, operator `trigger`s that may start a job in any hour; 0 means no limit.
    pub max_triggers_per_hour: u32,
    pub full: Option<HookSpec>,
    pub fine_tune: Option<HookSpec>,
    pub escalate: Option<HookSpec>,
    /// Undoes a retrain: a failed probation, or `visutility rollback`.
    pub rollback: Option<HookSpec>,
    /// Confirms a retrain after its probation.
    pub promote: Option<HookSpec>,
    /// `[hooks] env`: variables every hook gets, beyond the minimal environment.
    pub env: Vec<(String, String)>,
    /// `[hooks] pass_env`: names of the daemon's own variables passed on to hooks.
    pub pass_env: Vec<String>,
    /// A copy of `[daemon] allow_insecure_modes`: the runner checks each hook's files before
    /// it runs it unless this is set.
    pub allow_insecure_modes: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnInterrupted {
    Retry,
    Drop,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HookSpec {
    /// Program and arguments, run directly (never through a shell).
    pub command: Vec<String>,
    pub timeout_s: u64,
}

impl HooksConfig {
    pub fn hook(&self, action: Action) -> Option<&HookSpec> {
        match action {
            Action::Full => self.full.as_ref(),
            Action::FineTune => self.fine_tune.as_ref(),
            Action::Escalate => self.escalate.as_ref(),
            Action::Rollback => self.rollback.as_ref(),
            Action::Promote => self.promote.as_ref(),
        }
    }
}

/// Which policies apply to the models whose id matches `pattern`.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRule {
    pub pattern: String,
    pub reset_on_retrain: bool,
    pub warmup_events: u64,
    pub loop_window_s: u64,
    pub policies: Vec<PolicySpec>,
    /// `[models.probation]`: judge every successful retrain by the metric after it.
    pub probation: Option<ProbationSpec>,
}

pub use crate::probation::BaselineKind;

/// A model rule's `[models.probation]` (contract section 7).
#[derive(Debug, Clone, PartialEq)]
pub struct ProbationSpec {
    /// The metric judged (a name policies use: `accuracy`, `drift_score`, `error`, `value`,
    /// or a key of `metrics`).
    pub metric: String,
    /// The rule: `events`, `min_events`, `tolerance`, `confidence` and `direction`.
    pub rule: crate::probation::RuleSpec,
    pub baseline: BaselineKind,
    /// A policy firing during probation rolls back at once.
    pub fail_fast: bool,
    /// How long a probation may wait for its `events` values.
    pub max_wait_s: u64,
    pub on_inconclusive: OnInconclusive,
}

/// What `max_wait_s` passing before the sample is complete leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnInconclusive {
    Keep,
    Rollback,
    Escalate,
}

impl OnInconclusive {
    pub fn as_str(self) -> &'static str {
        match self {
            OnInconclusive::Keep => "keep",
            OnInconclusive::Rollback => "rollback",
            OnInconclusive::Escalate => "escalate",
        }
    }
}

impl Config {
    /// The rule for `model_id`: the first whose glob matches.
    pub fn rule_for(&self, model_id: &str) -> Option<&ModelRule> {
        self.models
            .iter()
            .find(|r| glob_match(&r.pattern, model_id))
    }

    /// Built-in defaults for `env`: a static threshold and a drift window for every model,
    /// no hooks.
    pub fn defaults(env: &Env) -> Config {
        Config::from_table(&toml::Table::new(), env).expect("the built-in defaults are valid")
    }

    /// Parses and validates `text`.
    pub fn from_toml(text: &str, env: &Env) -> Result<Config, ConfigError> {
        let table: toml::Table = text.parse().map_err(|e| raw::parse_error(text, &e))?;
        Config::from_table(&table, env).map_err(ConfigError::Invalid)
    }

    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path, env: &Env) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::from_toml(&text, env)?;
        config.source = Some(path.to_owned());
        Ok(config)
    }
}

/// A problem with one key.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyError {
    pub path: String,
    pub message: String,
}

impl KeyError {
    fn new(path: String, message: impl Into<String>) -> Self {
        KeyError {
            path,
            message: message.into(),
        }
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A TOML syntax error, on one line (toml's own message draws the line with a caret).
    #[error("invalid TOML at line {line}, column {column}: {message}")]
    Parse {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<KeyError>),
}

/// Shell-style glob on model ids: `*` any run of characters, `?` one character.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), s.as_bytes());
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn env() -> Env {
        Env {
            state_directory: Some("/tmp/v/state".into()),
            runtime_directory: Some("/tmp/v/run".into()),
            ..Env::default()
        }
    }

    /// The errors of `text`, as `path: message` lines.
    pub(super) fn errors_of(text: &str) -> Vec<String> {
        match Config::from_toml(text, &env()) {
            Err(ConfigError::Invalid(errs)) => errs.iter().map(ToString::to_string).collect(),
            other => panic!("expected errors, got {other:?}"),
        }
    }

    #[test]
    fn defaults_have_threshold_and_window_for_every_model() {
        let c = Config::defaults(&env());
        let rule = c.rule_for("anything-at-all").unwrap();
        let kinds: Vec<_> = rule.policies.iter().map(|p| p.kind.kind_name()).collect();
        assert_eq!(kinds, ["static_threshold", "drift_window"]);
        assert_eq!(c.daemon.socket, PathBuf::from("/tmp/v/run/ingest.sock"));
        assert!(c.hooks.full.is_none());
    }

    #[test]
    fn contract_example_is_valid() {
        let text = r#"
[daemon]
socket = "/run/visutility/ingest.sock"
control_socket = "/run/visutility/control.sock"
state_dir = "/var/lib/visutility"
flush_interval_ms = 200
max_line_bytes = 65536
max_models = 10000

[hooks]
max_concurrent = 1
cooldown_s = 3600
retries = 2
full      = { command = ["/usr/lib/visutility/hooks/full-retrain"], timeout_s = 7200 }
fine_tune = { command = ["/usr/lib/visutility/hooks/fine-tune"],    timeout_s = 900 }

[[models]]
match = "*"
reset_on_retrain = true

[[models.policies]]
kind = "static_threshold"
max_drift = 0.3
min_accuracy = 0.9

[[models.policies]]
kind = "drift_window"
window = 500
threshold = 0.3

[[models.policies]]
name = "errors"
kind = "adwin"
metric = "error"
delta = 0.002
action = "full"
"#;
        let c = Config::from_toml(text, &env()).unwrap();
        assert_eq!(c.hooks.full.as_ref().unwrap().timeout_s, 7200);
        let p = &c.models[0].policies[2];
        assert_eq!((p.name.as_str(), p.metric.as_str()), ("errors", "error"));
    }

    #[test]
    fn the_contracts_probation_table_is_valid_and_defaults_follow_the_metric() {
        let text = r#"
[hooks]
rollback = { command = ["/opt/ml/bin/rollback"], timeout_s = 600 }
promote  = { command = ["/opt/ml/bin/promote"],  timeout_s = 60 }

[[models]]
match = "fraud-*"
[models.probation]
metric = "accuracy"
direction = "higher"
events = 2000
min_events = 100
baseline = "before_decision"
tolerance = 0.0
confidence = 0.95
fail_fast = true
max_wait_s = 86400
on_inconclusive = "keep"

[[models]]
match = "churn-*"
[models.probation]
metric = "drift_score"
baseline = "last_promoted"
on_inconclusive = "escalate"
"#;
        let c = Config::from_toml(text, &env()).unwrap();
        let p = c.models[0].probation.as_ref().unwrap();
        assert_eq!(p.metric, "accuracy");
        assert_eq!(p.rule.direction, crate::probation::Direction::Higher);
        assert_eq!((p.rule.events, p.rule.min_events), (2000, 100));
        assert_eq!(p.rule.confidence, 0.95);
        assert!(p.fail_fast);
        assert_eq!(p.max_wait_s, 86_400);
        assert_eq!(p.on_inconclusive, OnInconclusive::Keep);
        let q = c.models[1].probation.as_ref().unwrap();
        // A drift score is better lower; the defaults are the contract's.
        assert_eq!(q.rule.direction, crate::probation::Direction::Lower);
        assert_eq!((q.rule.events, q.rule.min_events), (2000, 100));
        assert_eq!(q.baseline, BaselineKind::LastPromoted);
        assert_eq!(q.on_inconclusive, OnInconclusive::Escalate);
        assert!(c.models.iter().all(|r| r.policies.is_empty()));
    }

    #[test]
    fn a_bad_probation_table_names_each_key() {
        let errors = errors_of(
            r#"
[[models]]
[models.probation]
metric = "latency_ms"
events = 50
min_events = 80
baseline = "yesterday"
confidence = 2.0
on_inconclusive = "panic"
colour = "red"
"#,
        );
        let text = errors.join("\n");
        for key in [
            "models[0].probation.direction",
            "models[0].probation.min_events",
            "models[0].probation.baseline",
            "models[0].probation.confidence",
            "models[0].probation.on_inconclusive",
            "models[0].probation.colour",
        ] {
            assert!(text.contains(key), "{key} missing in:\n{text}");
        }
        let missing = errors_of("[[models]]\n[models.probation]\nevents = 10\n");
        assert!(
            missing
                .iter()
                .any(|e| e.contains("models[0].probation.metric")),
            "{missing:?}"
        );
    }

    /// Issue 12.6: a TOML syntax error is one line with its line and column.
    #[test]
    fn toml_syntax_errors_are_one_line() {
        let Err(e) = Config::from_toml("[daemon]\nmax_models = 3\n  socket = = 1\n", &env()) else {
            panic!("expected an error");
        };
        let text = e.to_string();
        assert!(
            text.starts_with("invalid TOML at line 3, column ") && !text.contains('\n'),
            "{text}"
        );
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", "x"));
        assert!(glob_match("fraud-*", "fraud-v3"));
        assert!(!glob_match("fraud-*", "spam-v1"));
        assert!(glob_match("a?c*", "abcdef"));
        assert!(glob_match("*-v?", "x-y-v3"));
        assert!(!glob_match("", "x"));
    }
}
