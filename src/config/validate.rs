//! The raw table into a validated [`Config`]: each section's keys with their ranges and
//! defaults, the model rules and their policies (a detector's parameters each checked on
//! their own, so every bad one is reported), peer allow lists, hook environments and log
//! filters. Every problem is collected with its key path.

use std::collections::BTreeSet;

use super::nss::{group_gid, user_uid};
use super::raw::{Walker, serde_message, unknown_key};
use super::{
    BaselineKind, Config, DEFAULT_MAX_MODEL_SERIES, DaemonConfig, Env, HookSpec, HooksConfig,
    KeyError, MetricsConfig, ModelRule, OnInconclusive, OnInterrupted, PeerAllow, ProbationSpec,
};
use crate::policy::detect::{DetectorParams, KINDS};
use crate::policy::{Action, Direction, PolicyKind, PolicySpec};

impl Config {
    /// Validates a parsed table: the config, or every problem with its key path.
    pub(super) fn from_table(table: &toml::Table, env: &Env) -> Result<Config, Vec<KeyError>> {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let mut root = Walker::new(table, String::new(), &mut errors);
        let daemon_t = root.table("daemon");
        let hooks_t = root.table("hooks");
        let metrics_t = root.table("metrics");
        let models_v = root.array("models");
        root.finish();

        let daemon = {
            let mut w = Walker::new(&daemon_t, "daemon".into(), &mut errors);
            let runtime = env.runtime_dir();
            let d = DaemonConfig {
                socket: w
                    .path("socket")
                    .unwrap_or_else(|| runtime.join("ingest.sock")),
                control_socket: w
                    .path("control_socket")
                    .unwrap_or_else(|| runtime.join("control.sock")),
                state_dir: w.path("state_dir").unwrap_or_else(|| env.state_dir()),
                flush_interval_ms: w.int("flush_interval_ms", 1, 3_600_000).unwrap_or(200),
                max_line_bytes: w.int("max_line_bytes", 64, 64 << 20).unwrap_or(65536) as usize,
                max_models: w.int("max_models", 1, 10_000_000).unwrap_or(10_000) as usize,
                max_connections: w.int("max_connections", 1, 1_000_000).unwrap_or(1024) as usize,
                idle_timeout_s: w.int("idle_timeout_s", 0, 86_400 * 365).unwrap_or(0),
                max_connections_per_uid: w
                    .int("max_connections_per_uid", 0, 1_000_000)
                    .unwrap_or(256) as usize,
                partial_line_timeout_s: w.int("partial_line_timeout_s", 0, 86_400).unwrap_or(10),
                partial_line_budget_bytes: w
                    .int("partial_line_budget_bytes", 65_536, 1 << 40)
                    .unwrap_or(16 << 20) as usize,
                ingest_tick_ms: w.int("ingest_tick_ms", 0, 1000).unwrap_or(25),
                model_idle_unload_s: w.int("model_idle_unload_s", 0, 86_400 * 365).unwrap_or(600),
                log_level: w.string("log_level").filter(|l| match check_log_filter(l) {
                    Ok(()) => true,
                    Err(message) => {
                        w.error("log_level", message);
                        false
                    }
                }),
                control_allow: w
                    .peer_list("control_allow", &mut warnings)
                    .unwrap_or_default(),
                control_group: w.group("control_group"),
                ingest_allow: w.peer_list("ingest_allow", &mut warnings),
                allow_insecure_modes: w.bool("allow_insecure_modes").unwrap_or(false),
            };
            w.finish();
            d
        };

        let hooks = {
            let mut w = Walker::new(&hooks_t, "hooks".into(), &mut errors);
            let on_interrupted = match w.string("on_interrupted").as_deref() {
                None | Some("retry") => OnInterrupted::Retry,
                Some("drop") => OnInterrupted::Drop,
                Some(other) => {
                    w.error(
                        "on_interrupted",
                        format!("expected \"retry\" or \"drop\", got {other:?}"),
                    );
                    OnInterrupted::Retry
                }
            };
            let hook = |w: &mut Walker, key: &str| -> Option<HookSpec> {
                let t = w.opt_table(key)?;
                let mut hw = Walker::new(&t, format!("{}.{key}", w.prefix), w.errors);
                let command = hw.string_array("command");
                let timeout_s = hw.int("timeout_s", 1, 86_400 * 30).unwrap_or(3600);
                hw.finish();
                match command {
                    None => {
                        w.error(
                            &format!("{key}.command"),
                            "missing; expected an array of strings".into(),
                        );
                        None
                    }
                    Some(c) if c.is_empty() || c[0].is_empty() => {
                        w.error(&format!("{key}.command"), "must name a program".into());
                        None
                    }
                    Some(command) => Some(HookSpec { command, timeout_s }),
                }
            };
            let full = hook(&mut w, "full");
            let fine_tune = hook(&mut w, "fine_tune");
            let escalate = hook(&mut w, "escalate");
            let rollback = hook(&mut w, "rollback");
            let promote = hook(&mut w, "promote");
            let h = HooksConfig {
                max_concurrent: w.int("max_concurrent", 1, 1024).unwrap_or(1) as usize,
                cooldown_s: w.int("cooldown_s", 0, 86_400 * 365).unwrap_or(3600),
                retries: w.int("retries", 0, 100).unwrap_or(2) as u32,
                retry_backoff_s: w.float("retry_backoff_s", 0.0, 86_400.0).unwrap_or(30.0),
                dry_run: w.bool("dry_run").unwrap_or(false),
                on_interrupted,
                max_jobs_per_day: w.int("max_jobs_per_day", 0, 1_000_000).unwrap_or(0) as u32,
                max_triggers_per_hour: w.int("max_triggers_per_hour", 0, 1_000_000).unwrap_or(3)
                    as u32,
                full,
                fine_tune,
                escalate,
                rollback,
                promote,
                env: w.env_table("env"),
                pass_env: w.env_names("pass_env"),
                allow_insecure_modes: daemon.allow_insecure_modes,
            };
            w.finish();
            h
        };

        let metrics = {
            let mut w = Walker::new(&metrics_t, "metrics".into(), &mut errors);
            let m = MetricsConfig {
                textfile: w.path("textfile"),
                interval_s: w.int("interval_s", 1, 86_400).unwrap_or(15),
                listen: w.string("listen").and_then(|s| match s.parse() {
                    Ok(addr) => Some(addr),
                    Err(_) => {
                        w.error(
                            "listen",
                            format!(
                                "expected \"HOST:PORT\" with an IP address (\"127.0.0.1:9464\", \"[::1]:9464\"), got {s:?}"
                            ),
                        );
                        None
                    }
                }),
                max_model_series: w
                    .int("max_model_series", 0, 10_000_000)
                    .map_or(DEFAULT_MAX_MODEL_SERIES, |n| n as usize),
            };
            w.finish();
            m
        };

        let models = match models_v {
            None => vec![ModelRule::default_rule()],
            Some(items) => {
                let mut rules = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let prefix = format!("models[{i}]");
                    let Some(t) = item.as_table() else {
                        errors.push(KeyError::new(prefix, "expected a table"));
                        continue;
                    };
                    if let Some(rule) = parse_rule(t, prefix, &mut errors) {
                        rules.push(rule);
                    }
                }
                rules
            }
        };

        if errors.is_empty() {
            Ok(Config {
                daemon,
                hooks,
                models,
                metrics,
                source: None,
                warnings,
            })
        } else {
            Err(errors)
        }
    }
}

impl ModelRule {
    fn default_rule() -> ModelRule {
        ModelRule {
            pattern: "*".into(),
            reset_on_retrain: true,
            warmup_events: 0,
            loop_window_s: 0,
            probation: None,
            policies: vec![
                PolicySpec {
                    name: "static_threshold".into(),
                    kind: PolicyKind::StaticThreshold {
                        max_drift: Some(0.3),
                        min_accuracy: Some(0.9),
                        max: None,
                        min: None,
                    },
                    metric: "drift_score".into(),
                    action: Action::Full,
                    for_events: 1,
                },
                PolicySpec {
                    name: "drift_window".into(),
                    kind: PolicyKind::DriftWindow {
                        window: 500,
                        threshold: 0.3,
                        direction: Direction::Above,
                    },
                    metric: "drift_score".into(),
                    action: Action::Full,
                    for_events: 1,
                },
            ],
        }
    }
}

fn parse_rule(t: &toml::Table, prefix: String, errors: &mut Vec<KeyError>) -> Option<ModelRule> {
    let mut w = Walker::new(t, prefix.clone(), errors);
    let pattern = w.string("match").unwrap_or_else(|| "*".into());
    let reset_on_retrain = w.bool("reset_on_retrain").unwrap_or(true);
    let warmup_events = w.int("warmup_events", 0, u32::MAX as u64).unwrap_or(0);
    let loop_window_s = w.int("loop_window_s", 0, 86_400 * 365).unwrap_or(0);
    let policies_v = w.array("policies");
    let probation_t = w.opt_table("probation");
    w.finish();
    let probation =
        probation_t.and_then(|t| parse_probation(&t, format!("{prefix}.probation"), errors));
    let mut policies = Vec::new();
    let mut names = BTreeSet::new();
    for (j, item) in policies_v.unwrap_or_default().iter().enumerate() {
        let p = format!("{prefix}.policies[{j}]");
        let Some(pt) = item.as_table() else {
            errors.push(KeyError::new(p, "expected a table"));
            continue;
        };
        if let Some(spec) = parse_policy(pt, &p, errors) {
            if !names.insert(spec.name.clone()) {
                errors.push(KeyError::new(
                    format!("{p}.name"),
                    format!("duplicate policy name {:?} in this model rule", spec.name),
                ));
            }
            policies.push(spec);
        }
    }
    Some(ModelRule {
        pattern,
        reset_on_retrain,
        warmup_events,
        loop_window_s,
        policies,
        probation,
    })
}

fn parse_probation(
    t: &toml::Table,
    prefix: String,
    errors: &mut Vec<KeyError>,
) -> Option<ProbationSpec> {
    use crate::probation::{Direction as Better, RuleSpec};
    let mut w = Walker::new(t, prefix, errors);
    let metric = w.string("metric");
    let direction = w.string("direction");
    let events = w.int("events", 2, 10_000_000).unwrap_or(2000);
    let min_events = w
        .int("min_events", 2, 10_000_000)
        .unwrap_or(100.min(events));
    let baseline = w.string("baseline");
    let tolerance = w.float("tolerance", 0.0, f64::MAX).unwrap_or(0.0);
    let confidence = w.float("confidence", 0.5, 0.999_999).unwrap_or(0.95);
    let fail_fast = w.bool("fail_fast").unwrap_or(true);
    let max_wait_s = w.int("max_wait_s", 1, 86_400 * 365).unwrap_or(86_400);
    let on_inconclusive = w.string("on_inconclusive");
    let Some(metric) = metric else {
        w.error(
            "metric",
            "missing: the metric that judges a retrain (for example \"accuracy\")".into(),
        );
        w.finish();
        return None;
    };
    if let Err(message) = check_metric_name(&metric) {
        w.error("metric", message);
    }
    let direction = match direction.as_deref() {
        Some("higher") => Some(Better::Higher),
        Some("lower") => Some(Better::Lower),
        Some(other) => {
            w.error(
                "direction",
                format!("expected \"higher\" or \"lower\", got {other:?}"),
            );
            None
        }
        None => match metric.as_str() {
            "accuracy" => Some(Better::Higher),
            "drift_score" | "error" => Some(Better::Lower),
            _ => {
                w.error(
                    "direction",
                    format!(
                        "missing: say which way {metric:?} is better (\"higher\" or \"lower\")"
                    ),
                );
                None
            }
        },
    };
    if min_events > events {
        w.error(
            "min_events",
            format!("must not exceed events ({events}), got {min_events}"),
        );
    }
    let baseline = match baseline.as_deref() {
        None | Some("before_decision") => BaselineKind::BeforeDecision,
        Some("last_promoted") => BaselineKind::LastPromoted,
        Some(other) => {
            w.error(
                "baseline",
                format!("expected \"before_decision\" or \"last_promoted\", got {other:?}"),
            );
            BaselineKind::BeforeDecision
        }
    };
    let on_inconclusive = match on_inconclusive.as_deref() {
        None | Some("keep") => OnInconclusive::Keep,
        Some("rollback") => OnInconclusive::Rollback,
        Some("escalate") => OnInconclusive::Escalate,
        Some(other) => {
            w.error(
                "on_inconclusive",
                format!("expected \"keep\", \"rollback\" or \"escalate\", got {other:?}"),
            );
            OnInconclusive::Keep
        }
    };
    w.finish();
    Some(ProbationSpec {
        metric,
        rule: RuleSpec {
            events,
            min_events: min_events.min(events),
            tolerance,
            confidence,
            direction: direction?,
        },
        baseline,
        fail_fast,
        max_wait_s,
        on_inconclusive,
    })
}

fn parse_policy(t: &toml::Table, prefix: &str, errors: &mut Vec<KeyError>) -> Option<PolicySpec> {
    // Common keys are taken out; what remains belongs to the kind.
    let mut rest = t.clone();
    let mut w = Walker::new(t, prefix.to_owned(), errors);
    let kind = w.string("kind");
    let name = w.string("name");
    let metric = w.string("metric");
    let action_s = w.string("action");
    let for_events = w.int("for_events", 1, 1_000_000).unwrap_or(1) as u32;
    for k in POLICY_KEYS {
        rest.remove(k);
    }
    if let Some(m) = &metric
        && let Err(message) = check_metric_name(m)
    {
        w.error("metric", message);
    }
    let action = match action_s.as_deref() {
        None => Action::Full,
        Some(s) => match Action::parse(s) {
            Some(a) => a,
            None => {
                w.error(
                    "action",
                    format!("expected \"full\" or \"fine_tune\", got {s:?}"),
                );
                Action::Full
            }
        },
    };
    let Some(kind) = kind else {
        w.error("kind", "missing".into());
        return None;
    };
    if let Some(n) = &name
        && (n.is_empty() || n.len() > 64)
    {
        w.error("name", "must be 1 to 64 characters".into());
    }
    let mut kw = Walker::new(&rest, prefix.to_owned(), w.errors);
    kw.also_known = &POLICY_KEYS;
    let (pk, default_metric) = match kind.as_str() {
        "static_threshold" => {
            let max_drift = kw.float("max_drift", f64::MIN, f64::MAX);
            let min_accuracy = kw.float("min_accuracy", f64::MIN, f64::MAX);
            let max = kw.float("max", f64::MIN, f64::MAX);
            let min = kw.float("min", f64::MIN, f64::MAX);
            kw.finish();
            let classic = max_drift.is_some() || min_accuracy.is_some();
            let bounds = max.is_some() || min.is_some();
            let problem = match (classic, bounds, metric.is_some()) {
                (false, false, _) => Some(
                    "static_threshold needs max_drift or min_accuracy, or metric with max and/or min",
                ),
                (true, true, _) => Some(
                    "use either max_drift/min_accuracy or metric with max/min, not both (two policies can do both)",
                ),
                (false, true, false) => Some(
                    "max and min bound the policy's metric: set metric (for example metric = \"latency_ms\")",
                ),
                (true, false, true) => Some(
                    "metric is read only with max or min (max_drift and min_accuracy read drift_score and accuracy)",
                ),
                _ => None,
            };
            if let Some(problem) = problem {
                errors.push(KeyError::new(prefix.to_owned(), problem));
            }
            if let (Some(hi), Some(lo)) = (max, min)
                && hi < lo
            {
                errors.push(KeyError::new(
                    format!("{prefix}.max"),
                    format!("max ({hi}) is below min ({lo}): every value would fire"),
                ));
            }
            (
                PolicyKind::StaticThreshold {
                    max_drift,
                    min_accuracy,
                    max,
                    min,
                },
                "drift_score",
            )
        }
        "drift_window" => {
            let window = kw.int("window", 1, 1_000_000).unwrap_or(500) as usize;
            let threshold = kw.float("threshold", f64::MIN, f64::MAX).unwrap_or(0.3);
            let direction = match kw.string("direction").as_deref() {
                None | Some("above") => Direction::Above,
                Some("below") => Direction::Below,
                Some(other) => {
                    kw.error(
                        "direction",
                        format!("expected \"above\" or \"below\", got {other:?}"),
                    );
                    Direction::Above
                }
            };
            kw.finish();
            (
                PolicyKind::DriftWindow {
                    window,
                    threshold,
                    direction,
                },
                "drift_score",
            )
        }
        k if KINDS.contains(&k) => {
            // Each key on its own first, so that every bad one is reported with its path
            // (serde stops at the first); then the keys that passed, together.
            let names = DetectorParams::names(k).unwrap_or_default();
            let mut good = toml::Table::new();
            for (key, value) in &rest {
                let path = format!("{prefix}.{key}");
                if !names.contains(&key.as_str()) {
                    let known = names.iter().chain(&POLICY_KEYS).copied();
                    errors.push(unknown_key(path, key, known));
                    continue;
                }
                let one = toml::Table::from_iter([(key.clone(), value.clone())]);
                match DetectorParams::parse(k, toml::Value::Table(one)) {
                    Ok(_) => {
                        good.insert(key.clone(), value.clone());
                    }
                    Err(e) => errors.push(KeyError::new(path, serde_message(&e.to_string()))),
                }
            }
            match DetectorParams::parse(k, toml::Value::Table(good)) {
                Ok(Some(params)) => {
                    for e in params.validate_all() {
                        errors.push(KeyError::new(format!("{prefix}.{}", e.key), e.message));
                    }
                    let metric = if params.has_warning() {
                        "error"
                    } else {
                        "value"
                    };
                    (PolicyKind::Detector(params), metric)
                }
                Ok(None) => unreachable!("KINDS lists only detector kinds"),
                Err(e) => {
                    errors.push(KeyError::new(
                        prefix.to_owned(),
                        serde_message(&e.to_string()),
                    ));
                    return None;
                }
            }
        }
        other => {
            let mut all: Vec<&str> = vec!["static_threshold", "drift_window"];
            all.extend_from_slice(KINDS);
            errors.push(KeyError::new(
                format!("{prefix}.kind"),
                format!(
                    "unknown policy kind {other:?}; expected one of {}",
                    all.join(", ")
                ),
            ));
            return None;
        }
    };
    Some(PolicySpec {
        name: name.unwrap_or_else(|| kind.clone()),
        kind: pk,
        metric: metric.unwrap_or_else(|| default_metric.to_owned()),
        action,
        for_events,
    })
}

/// The keys every policy takes, whatever its kind.
const POLICY_KEYS: [&str; 5] = ["kind", "name", "metric", "action", "for_events"];

/// A policy's `metric`: one of the event's top-level numbers, or a name the protocol accepts
/// in `metrics` (else the policy could never read a value).
fn check_metric_name(name: &str) -> Result<(), String> {
    if crate::protocol::is_reserved_metric(name.as_bytes()) {
        return Ok(());
    }
    crate::protocol::validate_metric_name(name).map_err(|e| e.detail)
}

impl Walker<'_> {
    /// A peer allow list: typed entries `"uid:N"`, `"gid:N"`, `"user:NAME"`, `"group:NAME"`
    /// (names resolved now, through the system's databases). A bare integer is still read,
    /// as a uid, with a warning naming the typed form.
    fn peer_list(&mut self, key: &str, warnings: &mut Vec<KeyError>) -> Option<PeerAllow> {
        let items = self.typed(key, "an array", |v| v.as_array().cloned())?;
        let mut allow = PeerAllow::default();
        let mut ok = true;
        for item in &items {
            match parse_peer_entry(item) {
                Ok((entry, bare)) => {
                    if bare {
                        let PeerEntry::Uid(uid) = entry else {
                            unreachable!("a bare integer is a uid")
                        };
                        warnings.push(KeyError::new(
                            self.key_path(key),
                            format!(
                                "bare integer {uid} is read as a uid; write \"uid:{uid}\" \
                                 (or \"gid:{uid}\" for a group)"
                            ),
                        ));
                    }
                    match entry {
                        PeerEntry::Uid(id) | PeerEntry::Gid(id) if id == OVERFLOW_ID => {
                            self.error(key, OVERFLOW_MESSAGE.into());
                            ok = false;
                        }
                        PeerEntry::Uid(uid) => allow.uids.push(uid),
                        PeerEntry::Gid(gid) => allow.gids.push(gid),
                    }
                }
                Err(message) => {
                    self.error(key, message);
                    ok = false;
                }
            }
        }
        ok.then_some(allow)
    }

    /// A group by name or gid, resolved to its gid.
    fn group(&mut self, key: &str) -> Option<u32> {
        let v = self.get(key)?;
        let gid = if let Some(gid) = v.as_integer() {
            match u32::try_from(gid) {
                Ok(gid) => Some(gid),
                Err(_) => {
                    self.error(key, format!("a gid must be between 0 and {}", u32::MAX));
                    return None;
                }
            }
        } else {
            let Some(name) = v.as_str() else {
                self.error(
                    key,
                    format!("expected a group name or gid, got {}", v.type_str()),
                );
                return None;
            };
            let gid = group_gid(name);
            if gid.is_none() {
                self.error(key, format!("no group named {name:?} on this system"));
            }
            gid
        };
        if gid == Some(OVERFLOW_ID) {
            self.error(key, OVERFLOW_MESSAGE.into());
            return None;
        }
        gid
    }

    /// Environment variables for hooks: names of `[A-Za-z_][A-Za-z0-9_]*`, string values
    /// without NUL.
    fn env_table(&mut self, key: &str) -> Vec<(String, String)> {
        let Some(t) = self.opt_table(key) else {
            return Vec::new();
        };
        let mut vars = Vec::new();
        for (name, value) in &t {
            let path = format!("{key}.{name}");
            if let Err(message) = check_env_name(name) {
                self.error(&path, message);
            } else if let Some(v) = value.as_str().filter(|v| !v.contains('\0')) {
                vars.push((name.clone(), v.to_owned()));
            } else {
                self.error(&path, "expected a string without NUL bytes".into());
            }
        }
        vars
    }

    /// Names of environment variables (see [`Walker::env_table`]).
    fn env_names(&mut self, key: &str) -> Vec<String> {
        let names = self.string_array(key).unwrap_or_default();
        for name in &names {
            if let Err(message) = check_env_name(name) {
                self.error(key, message);
            }
        }
        names
    }
}

/// The kernel's overflow uid and gid: what every user not mapped into a user namespace (such
/// as systemd's `PrivateUsers=`) looks like to the daemon. Allowing it would allow them all.
const OVERFLOW_ID: u32 = 65534;
const OVERFLOW_MESSAGE: &str = "65534 is the overflow id (nobody/nogroup): in a user namespace, \
     such as systemd's PrivateUsers=, every unmapped user has it, so it cannot be allowed";

/// The levels `log_level` may name, alone or after `target=`.
const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks a `log_level`: a level, or `RUST_LOG`-style directives (`info,visutility=debug`).
/// Stricter than `EnvFilter`, which reads a misspelt level as a target name and then logs
/// nothing of ours.
pub fn check_log_filter(s: &str) -> Result<(), String> {
    let expected = || {
        format!(
            "expected one of {} or directives like \"info,visutility::ingest=debug\"",
            LOG_LEVELS.join(", ")
        )
    };
    if s.trim().is_empty() {
        return Err(format!("must not be empty; {}", expected()));
    }
    for directive in s.split(',') {
        let level = directive
            .rsplit_once('=')
            .map_or(directive, |(_, l)| l)
            .trim();
        if !LOG_LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!("unknown level {level:?} in {s:?}; {}", expected()));
        }
    }
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| ())
        .map_err(|e| format!("invalid filter {s:?}: {e}"))
}

/// A variable name a hook may be given: a shell could not read any other. `VISUTILITY_*` are
/// the daemon's own and always set by it.
fn check_env_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!(
            "{name:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"
        ));
    }
    if name.starts_with("VISUTILITY_") {
        return Err(format!(
            "{name}: VISUTILITY_* variables are set by the daemon"
        ));
    }
    Ok(())
}

/// One resolved entry of a peer list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerEntry {
    Uid(u32),
    Gid(u32),
}

/// Reads one peer list entry; the flag says it was a bare integer (the old, untyped form).
fn parse_peer_entry(v: &toml::Value) -> Result<(PeerEntry, bool), String> {
    const EXPECTED: &str = "expected \"uid:N\", \"gid:N\", \"user:NAME\" or \"group:NAME\"";
    if let Some(n) = v.as_integer() {
        return u32::try_from(n)
            .map(|uid| (PeerEntry::Uid(uid), true))
            .map_err(|_| format!("{n} is not a valid uid; {EXPECTED}"));
    }
    let Some(s) = v.as_str() else {
        return Err(format!("{EXPECTED}, got {}", v.type_str()));
    };
    let number = |n: &str| {
        n.parse::<u32>()
            .map_err(|_| format!("{s:?}: {n:?} is not a number between 0 and {}", u32::MAX))
    };
    let entry = match s.split_once(':') {
        Some(("uid", n)) => PeerEntry::Uid(number(n)?),
        Some(("gid", n)) => PeerEntry::Gid(number(n)?),
        Some(("user", name)) => PeerEntry::Uid(
            user_uid(name).ok_or_else(|| format!("no user named {name:?} on this system"))?,
        ),
        Some(("group", name)) => PeerEntry::Gid(
            group_gid(name).ok_or_else(|| format!("no group named {name:?} on this system"))?,
        ),
        _ => return Err(format!("{EXPECTED}, got {s:?}")),
    };
    Ok((entry, false))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigError;
    use crate::config::tests::{env, errors_of};

    #[test]
    fn every_error_is_reported_with_its_path() {
        let text = r#"
            [daemon]
            max_modles = 3
            flush_interval_ms = -1
            ingest_tick_ms = 5000
            [hooks]
            full = { command = [], timeout_s = 5 }
            [[models]]
            match = "a*"
            [[models.policies]]
            kind = "adwin"
            delta = 0.01
            wat = 1
            [[models.policies]]
            kind = "nope"
        "#;
        let Err(ConfigError::Invalid(errs)) = Config::from_toml(text, &env()) else {
            panic!("expected errors");
        };
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"daemon.max_modles"), "{paths:?}");
        assert!(paths.contains(&"daemon.flush_interval_ms"), "{paths:?}");
        assert!(paths.contains(&"daemon.ingest_tick_ms"), "{paths:?}");
        assert!(paths.contains(&"hooks.full.command"), "{paths:?}");
        assert!(paths.contains(&"models[0].policies[0].wat"), "{paths:?}");
        assert!(paths.contains(&"models[0].policies[1].kind"), "{paths:?}");
    }

    /// Issue 12.6: CUSUM with four bad values took four runs; now one, each with its path.
    #[test]
    fn every_bad_detector_parameter_is_reported_with_its_path() {
        let errs = errors_of(
            "[[models]]\n[[models.policies]]\nkind = \"cusum\"\nk = -1\nh = \"big\"\nsigma = 0\nwarm_start = -3\ntarget = 1\n",
        );
        assert_eq!(
            errs,
            [
                "models[0].policies[0].h: expected a number, got string \"big\"",
                "models[0].policies[0].warm_start: expected an integer between 0 and 4294967295, got integer `-3`",
                "models[0].policies[0].sigma: must be finite and > 0, got 0",
                "models[0].policies[0].k: must be finite and >= 0, got -1",
            ]
        );
        let errs = errors_of(
            "[[models]]\n[[models.policies]]\nkind = \"kswin\"\nalpha = 2\nstat_size = 0\nwindow_sise = 10\n",
        );
        assert_eq!(
            errs,
            [
                "models[0].policies[0].window_sise: unknown key; did you mean \"window_size\"?",
                "models[0].policies[0].alpha: must be in [0, 1], got 2",
                "models[0].policies[0].stat_size: must be in 1..=10000, got 0",
            ]
        );
    }

    /// Issue 12.6: a policy's metric follows the protocol's name rules.
    #[test]
    fn policy_metric_names_are_validated() {
        let policy = |metric: &str| {
            format!(
                "[[models]]\n[[models.policies]]\nkind = \"drift_window\"\nmetric = {metric:?}\n"
            )
        };
        for ok in [
            "drift_score",
            "accuracy",
            "error",
            "value",
            "latency_ms",
            "a.b:c-d",
        ] {
            Config::from_toml(&policy(ok), &env()).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, fragment) in [
            ("bad metric!", "invalid character ' '"),
            ("", "empty"),
            (&"x".repeat(65), "max 64"),
        ] {
            let errs = errors_of(&policy(bad));
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert!(
                errs[0].starts_with("models[0].policies[0].metric: ") && errs[0].contains(fragment),
                "{errs:?}"
            );
        }
    }

    #[test]
    fn access_keys() {
        let c = Config::from_toml(
            "[daemon]\ncontrol_group = \"root\"\ningest_allow = [\"uid:1000\", \"gid:2000\"]\n",
            &env(),
        )
        .unwrap();
        assert_eq!(c.daemon.control_group, Some(0));
        assert_eq!(
            c.daemon.ingest_allow,
            Some(PeerAllow {
                uids: vec![1000],
                gids: vec![2000]
            })
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let c = Config::from_toml(
            "[daemon]\ncontrol_group = 4444\ningest_allow = []\n",
            &env(),
        )
        .unwrap();
        assert_eq!(c.daemon.control_group, Some(4444));
        assert_eq!(
            c.daemon.ingest_allow,
            Some(PeerAllow::default()),
            "empty: only root and us"
        );
        let c = Config::defaults(&env());
        assert_eq!(
            (c.daemon.control_group, c.daemon.ingest_allow),
            (None, None)
        );

        let text = "[daemon]\ncontrol_group = \"no-such-group-here\"\ningest_allow = [-1]\n";
        let Err(ConfigError::Invalid(errs)) = Config::from_toml(text, &env()) else {
            panic!("expected errors");
        };
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["daemon.control_group", "daemon.ingest_allow"],
            "{errs:?}"
        );
        assert!(errs[0].message.contains("no-such-group-here"), "{errs:?}");
        let Err(ConfigError::Invalid(errs)) =
            Config::from_toml("[daemon]\ncontrol_group = true\n", &env())
        else {
            panic!("expected errors");
        };
        assert!(errs[0].message.contains("group name or gid"), "{errs:?}");
        let text = "[daemon]\ncontrol_group = \"nogroup\"\ncontrol_allow = [\"gid:65534\"]\ningest_allow = [\"uid:1\", \"uid:65534\"]\n";
        let Err(ConfigError::Invalid(errs)) = Config::from_toml(text, &env()) else {
            panic!("expected errors");
        };
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "daemon.control_allow",
                "daemon.control_group",
                "daemon.ingest_allow"
            ],
            "{errs:?}"
        );
        assert!(
            errs.iter().all(|e| e.message.contains("overflow")),
            "{errs:?}"
        );
    }

    /// Finding 1 of the security review: uids and gids are separate namespaces.
    #[test]
    fn finding_1_peer_entries_are_typed() {
        let c = Config::from_toml(
            "[daemon]\ncontrol_allow = [\"uid:7\", \"gid:8\", \"user:root\", \"group:root\"]\n",
            &env(),
        )
        .unwrap();
        assert_eq!(
            c.daemon.control_allow,
            PeerAllow {
                uids: vec![7, 0],
                gids: vec![8, 0]
            }
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);

        // The old form still loads, as uids, and says what to write instead.
        let c = Config::from_toml("[daemon]\ningest_allow = [1001]\n", &env()).unwrap();
        assert_eq!(
            c.daemon.ingest_allow,
            Some(PeerAllow {
                uids: vec![1001],
                gids: vec![]
            })
        );
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert_eq!(c.warnings[0].path, "daemon.ingest_allow");
        assert!(
            c.warnings[0].message.contains("\"uid:1001\""),
            "{:?}",
            c.warnings
        );

        for bad in [
            "\"1001\"",
            "\"uid:\"",
            "\"uid:-1\"",
            "\"gid:x\"",
            "\"pid:4\"",
            "\"user:no-such-user-here\"",
            "\"group:no-such-group-here\"",
            "true",
            "4294967296",
        ] {
            let text = format!("[daemon]\ncontrol_allow = [{bad}]\n");
            let Err(ConfigError::Invalid(errs)) = Config::from_toml(&text, &env()) else {
                panic!("{bad} was accepted");
            };
            assert_eq!(errs[0].path, "daemon.control_allow", "{bad}: {errs:?}");
        }
        let Err(ConfigError::Invalid(errs)) =
            Config::from_toml("[daemon]\ncontrol_allow = 5\n", &env())
        else {
            panic!("a bare number was accepted as a list");
        };
        assert!(errs[0].message.contains("array"), "{errs:?}");
    }

    /// Finding 5 of the security review: a few triggers per model and hour unless configured.
    #[test]
    fn finding_5_max_triggers_per_hour() {
        assert_eq!(Config::defaults(&env()).hooks.max_triggers_per_hour, 3);
        let c = Config::from_toml("[hooks]\nmax_triggers_per_hour = 0\n", &env()).unwrap();
        assert_eq!(c.hooks.max_triggers_per_hour, 0, "0: no limit");
        assert!(Config::from_toml("[hooks]\nmax_triggers_per_hour = -1\n", &env()).is_err());
    }

    #[test]
    fn log_levels_are_checked() {
        for ok in [
            "info",
            "DEBUG",
            "warn,visutility::ingest=trace",
            "visutility=off",
        ] {
            assert_eq!(check_log_filter(ok), Ok(()), "{ok}");
        }
        for bad in ["verbose", "", "info,visutility=loud", "visutility"] {
            assert!(check_log_filter(bad).is_err(), "{bad:?} passed");
        }
        let Err(ConfigError::Invalid(errs)) =
            Config::from_toml("[daemon]\nlog_level = \"verbose\"\n", &env())
        else {
            panic!("expected errors");
        };
        assert_eq!(errs[0].path, "daemon.log_level");
        assert!(errs[0].message.contains("verbose"), "{errs:?}");
    }

    #[test]
    fn metrics_table() {
        let c = Config::defaults(&env());
        assert_eq!(
            c.metrics,
            MetricsConfig {
                textfile: None,
                interval_s: 15,
                listen: None,
                max_model_series: 1000,
            }
        );
        let c = Config::from_toml(
            "[metrics]\nlisten = \"127.0.0.1:9464\"\nmax_model_series = 0\n",
            &env(),
        )
        .unwrap();
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(c.metrics.max_model_series, 0);
        let Err(ConfigError::Invalid(errs)) = Config::from_toml(
            "[metrics]\nlisten = \"localhost\"\nmax_model_series = -1\n",
            &env(),
        ) else {
            panic!("expected errors");
        };
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["metrics.listen", "metrics.max_model_series"],
            "{errs:?}"
        );
        let c = Config::from_toml(
            "[metrics]\ntextfile = \"/var/lib/node_exporter/visutility.prom\"\ninterval_s = 60\n",
            &env(),
        )
        .unwrap();
        assert_eq!(
            c.metrics.textfile.as_deref(),
            Some(std::path::Path::new(
                "/var/lib/node_exporter/visutility.prom"
            ))
        );
        assert_eq!(c.metrics.interval_s, 60);
        let Err(ConfigError::Invalid(errs)) =
            Config::from_toml("[metrics]\ninterval_s = 0\ntextfil = \"x\"\n", &env())
        else {
            panic!("expected errors");
        };
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"metrics.interval_s"), "{paths:?}");
        assert!(paths.contains(&"metrics.textfil"), "{paths:?}");
    }

    #[test]
    fn hook_environment_keys() {
        let c = Config::from_toml(
            "[daemon]\nallow_insecure_modes = true\n[hooks]\nenv = { B = \"2\", A_1 = \"x y\" }\npass_env = [\"HTTPS_PROXY\"]\n",
            &env(),
        )
        .unwrap();
        assert_eq!(
            c.hooks.env,
            [("A_1".into(), "x y".into()), ("B".into(), "2".into())]
        );
        assert_eq!(c.hooks.pass_env, ["HTTPS_PROXY"]);
        assert!(c.daemon.allow_insecure_modes && c.hooks.allow_insecure_modes);
        let c = Config::defaults(&env());
        assert!(!c.daemon.allow_insecure_modes && c.hooks.env.is_empty());

        let text = "[hooks]\nenv = { \"1X\" = \"a\", VISUTILITY_MODEL_ID = \"b\", N = 3 }\npass_env = [\"A=B\"]\n";
        let Err(ConfigError::Invalid(errs)) = Config::from_toml(text, &env()) else {
            panic!("expected errors");
        };
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "hooks.env.1X",
                "hooks.env.N",
                "hooks.env.VISUTILITY_MODEL_ID",
                "hooks.pass_env"
            ],
            "{errs:?}"
        );
    }
}
