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

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::policy::detect::{DetectorParams, KINDS};
use crate::policy::{Action, Direction, PolicyKind, PolicySpec};

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
        let table: toml::Table = text.parse().map_err(|e| parse_error(text, &e))?;
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

    /// The config the daemon runs with: `explicit` if given, else the first of the look-up
    /// order of the contract that exists, else the built-in defaults.
    /// The ingest and control socket paths, even from a config file that does not validate:
    /// the operator commands need only these, and most when the file on disk has a typo (the
    /// daemon keeps running on its old config). Read from the file's `[daemon]` table where
    /// they are strings, else the defaults; the third value is a warning when the file did
    /// not validate.
    pub fn sockets(explicit: Option<&Path>, env: &Env) -> (PathBuf, PathBuf, Option<String>) {
        match Config::discover(explicit, env) {
            Ok(c) => (c.daemon.socket, c.daemon.control_socket, None),
            Err(e) => {
                let table = explicit
                    .map(Path::to_owned)
                    .or_else(|| env.config_file())
                    .and_then(|p| std::fs::read_to_string(p).ok())
                    .and_then(|t| t.parse::<toml::Table>().ok());
                let daemon = table
                    .as_ref()
                    .and_then(|t| t.get("daemon"))
                    .and_then(toml::Value::as_table);
                let get = |k: &str| {
                    daemon
                        .and_then(|d| d.get(k))
                        .and_then(toml::Value::as_str)
                        .filter(|s| !s.is_empty())
                        .map(PathBuf::from)
                };
                let runtime = env.runtime_dir();
                (
                    get("socket").unwrap_or_else(|| runtime.join("ingest.sock")),
                    get("control_socket").unwrap_or_else(|| runtime.join("control.sock")),
                    Some(format!(
                        "{}; using its socket paths anyway (`visutility check-config` lists every error)",
                        first_line(&e)
                    )),
                )
            }
        }
    }

    pub fn discover(explicit: Option<&Path>, env: &Env) -> Result<Config, ConfigError> {
        match explicit.map(Path::to_owned).or_else(|| env.config_file()) {
            Some(path) => Config::load(&path, env),
            None => Ok(Config::defaults(env)),
        }
    }

    fn from_table(table: &toml::Table, env: &Env) -> Result<Config, Vec<KeyError>> {
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

    /// Settings that load but cannot work as meant (each with its key path): `check-config`
    /// prints them, the daemon logs them at start and reload.
    pub fn warnings(&self) -> Vec<KeyError> {
        // Deprecated forms found while loading come first.
        let mut out = self.warnings.clone();
        for (j, rule) in self.models.iter().enumerate() {
            let earlier = self.models[..j].iter().enumerate();
            if let Some((i, first)) = earlier
                .into_iter()
                .find(|(_, e)| glob_covers(&e.pattern, &rule.pattern))
            {
                out.push(KeyError::new(
                    format!("models[{j}].match"),
                    format!(
                        "this rule is never used: every id {:?} matches is matched first by models[{i}] (match = {:?}), and the first match wins; move it above",
                        rule.pattern, first.pattern
                    ),
                ));
            }
        }
        for (i, rule) in self.models.iter().enumerate() {
            for (j, spec) in rule.policies.iter().enumerate() {
                let path = format!("models[{i}].policies[{j}]");
                let accuracy = spec.metric == "accuracy";
                match &spec.kind {
                    PolicyKind::DriftWindow {
                        threshold,
                        direction: Direction::Above,
                        ..
                    } if accuracy && *threshold < 1.0 => out.push(KeyError::new(
                        format!("{path}.direction"),
                        format!(
                            "a window of accuracy fires while its mean is above {threshold}, which is nearly always; for \"mean accuracy below {threshold}\" set direction = \"below\""
                        ),
                    )),
                    PolicyKind::StaticThreshold {
                        min_accuracy: Some(m),
                        ..
                    } if *m > 1.0 => out.push(KeyError::new(
                        format!("{path}.min_accuracy"),
                        format!("accuracy is at most 1, so min_accuracy = {m} fires on every event"),
                    )),
                    PolicyKind::StaticThreshold { min: Some(m), .. } if accuracy && *m > 1.0 => {
                        out.push(KeyError::new(
                            format!("{path}.min"),
                            format!("accuracy is at most 1, so min = {m} fires on every event"),
                        ))
                    }
                    _ => {}
                }
            }
        }
        out
    }

    /// A short human summary (what `check-config` prints).
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let src = self
            .source
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "built-in defaults".into());
        s.push_str(&format!("config: {src}\n"));
        s.push_str(&format!(
            "ingest socket: {}\n",
            self.daemon.socket.display()
        ));
        s.push_str(&format!(
            "control socket: {}\n",
            self.daemon.control_socket.display()
        ));
        s.push_str(&format!("state dir: {}\n", self.daemon.state_dir.display()));
        if let Some(p) = &self.metrics.textfile {
            s.push_str(&format!(
                "metrics textfile: {} (every {} s)\n",
                p.display(),
                self.metrics.interval_s
            ));
        }
        if let Some(addr) = &self.metrics.listen {
            s.push_str(&format!("metrics served at: http://{addr}/metrics\n"));
        }
        for (name, hook) in [
            ("full", &self.hooks.full),
            ("fine_tune", &self.hooks.fine_tune),
            ("escalate", &self.hooks.escalate),
        ] {
            match hook {
                Some(h) => s.push_str(&format!(
                    "hook {name}: {} (timeout {} s)\n",
                    h.command.join(" "),
                    h.timeout_s
                )),
                None => s.push_str(&format!(
                    "hook {name}: none (decisions are recorded only)\n"
                )),
            }
        }
        for rule in &self.models {
            let names: Vec<String> = rule
                .policies
                .iter()
                .map(|p| {
                    format!(
                        "{} ({} on {})",
                        p.name,
                        p.kind.kind_name(),
                        metrics_read(p).join(" and ")
                    )
                })
                .collect();
            let names = if names.is_empty() {
                "no policies".to_owned()
            } else {
                names.join(", ")
            };
            s.push_str(&format!("models {:?}: {names}\n", rule.pattern));
        }
        s
    }

    /// [`Config::summary`] for tools (`check-config --json`).
    pub fn summary_json(&self) -> serde_json::Value {
        let hook = |h: &Option<HookSpec>| {
            h.as_ref().map_or(
                serde_json::Value::Null,
                |h| serde_json::json!({"command": h.command, "timeout_s": h.timeout_s}),
            )
        };
        let models: Vec<_> = self
            .models
            .iter()
            .map(|rule| {
                let policies: Vec<_> = rule
                    .policies
                    .iter()
                    .map(|p| {
                        serde_json::json!({
                            "name": p.name,
                            "kind": p.kind.kind_name(),
                            "metrics": metrics_read(p),
                        })
                    })
                    .collect();
                serde_json::json!({"match": rule.pattern, "policies": policies})
            })
            .collect();
        serde_json::json!({
            "config": self.source.as_ref().map(|p| p.display().to_string()),
            "socket": self.daemon.socket.display().to_string(),
            "control_socket": self.daemon.control_socket.display().to_string(),
            "state_dir": self.daemon.state_dir.display().to_string(),
            "hooks": {
                "full": hook(&self.hooks.full),
                "fine_tune": hook(&self.hooks.fine_tune),
                "escalate": hook(&self.hooks.escalate),
            },
            "models": models,
        })
    }
}

impl ModelRule {
    fn default_rule() -> ModelRule {
        ModelRule {
            pattern: "*".into(),
            reset_on_retrain: true,
            warmup_events: 0,
            loop_window_s: 0,
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
    w.finish();
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

/// An error's first line (a config error lists every key error on lines of its own).
fn first_line(e: &ConfigError) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default().to_owned();
    match e {
        ConfigError::Invalid(errors) if errors.len() > 1 => {
            format!("{first} (and {} more)", errors.len() - 1)
        }
        _ => first,
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

/// `e` as [`ConfigError::Parse`]: 1-based line and column (in characters) of where it starts.
fn parse_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let at = e.span().map_or(0, |r| r.start).min(text.len());
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    ConfigError::Parse {
        line,
        column,
        message: e
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// The keys every policy takes, whatever its kind.
const POLICY_KEYS: [&str; 5] = ["kind", "name", "metric", "action", "for_events"];

/// `unknown key`, with the known key `key` most likely misspells.
fn unknown_key<'k>(path: String, key: &str, known: impl Iterator<Item = &'k str>) -> KeyError {
    match did_you_mean(key, known) {
        Some(k) => KeyError::new(path, format!("unknown key; did you mean {k:?}?")),
        None => KeyError::new(path, "unknown key"),
    }
}

/// The candidate closest to `key` by edit distance (a transposition counts as one edit), if
/// it is close enough to be a typo: at most 2 edits, and fewer than half of `key`'s length
/// (so that `x` is not taken for `k`).
fn did_you_mean<'k>(key: &str, candidates: impl Iterator<Item = &'k str>) -> Option<&'k str> {
    candidates
        .filter(|c| *c != key)
        .map(|c| (edit_distance(key, c), c))
        .filter(|&(d, _)| d <= 2 && 2 * d < key.chars().count())
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// Optimal string alignment distance: insertions, deletions, substitutions and swaps of two
/// adjacent characters each count as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // d[i][j]: distance between a[..i] and b[..j].
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// A serde message as one line: `invalid type: string "x", expected f64` reads
/// `expected a number, got string "x"`; Rust type names become what a config writer knows.
fn serde_message(raw: &str) -> String {
    let one_line = raw.split_whitespace().collect::<Vec<_>>().join(" ");
    let plain = |expected: &str| -> String {
        // toml adds the key (`expected f64 in `k``), which the path already names.
        let expected = match expected.rsplit_once(" in `") {
            Some((e, key)) if key.ends_with('`') => e,
            _ => expected,
        };
        match expected.trim() {
            "f64" | "f32" => "a number".into(),
            "u8" => format!("an integer between 0 and {}", u8::MAX),
            "u16" => format!("an integer between 0 and {}", u16::MAX),
            "u32" => format!("an integer between 0 and {}", u32::MAX),
            "u64" | "usize" => format!("an integer between 0 and {}", u64::MAX),
            "i8" | "i16" | "i32" | "i64" | "isize" => "an integer".into(),
            "a boolean" | "bool" => "a boolean".into(),
            other => other.to_owned(),
        }
    };
    for lead in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = one_line.strip_prefix(lead)
            && let Some((got, expected)) = rest.rsplit_once(", expected ")
        {
            return format!("expected {}, got {got}", plain(expected));
        }
    }
    one_line
}

/// A policy's `metric`: one of the event's top-level numbers, or a name the protocol accepts
/// in `metrics` (else the policy could never read a value).
fn check_metric_name(name: &str) -> Result<(), String> {
    if crate::protocol::is_reserved_metric(name.as_bytes()) {
        return Ok(());
    }
    crate::protocol::validate_metric_name(name).map_err(|e| e.detail)
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

/// Takes keys out of one table, type-checks them, and reports what is left as unknown.
struct Walker<'a> {
    table: &'a toml::Table,
    seen: BTreeSet<String>,
    /// Keys of the same table another walker takes (a policy's common keys, beside its
    /// kind's): suggested for a misspelt key, never reported.
    also_known: &'static [&'static str],
    prefix: String,
    errors: &'a mut Vec<KeyError>,
}

impl<'a> Walker<'a> {
    fn new(table: &'a toml::Table, prefix: String, errors: &'a mut Vec<KeyError>) -> Self {
        Walker {
            table,
            seen: BTreeSet::new(),
            also_known: &[],
            prefix,
            errors,
        }
    }

    fn key_path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    fn error(&mut self, key: &str, message: String) {
        let path = self.key_path(key);
        self.errors.push(KeyError { path, message });
    }

    fn get(&mut self, key: &str) -> Option<&'a toml::Value> {
        self.seen.insert(key.to_owned());
        self.table.get(key)
    }

    fn typed<T>(
        &mut self,
        key: &str,
        what: &str,
        f: impl FnOnce(&toml::Value) -> Option<T>,
    ) -> Option<T> {
        let v = self.get(key)?;
        let r = f(v);
        if r.is_none() {
            self.error(key, format!("expected {what}, got {}", v.type_str()));
        }
        r
    }

    fn string(&mut self, key: &str) -> Option<String> {
        self.typed(key, "a string", |v| v.as_str().map(str::to_owned))
    }

    fn path(&mut self, key: &str) -> Option<PathBuf> {
        let s = self.string(key)?;
        if s.is_empty() {
            self.error(key, "must not be empty".into());
            return None;
        }
        Some(PathBuf::from(s))
    }

    fn bool(&mut self, key: &str) -> Option<bool> {
        self.typed(key, "a boolean", toml::Value::as_bool)
    }

    fn int(&mut self, key: &str, min: u64, max: u64) -> Option<u64> {
        let v = self.typed(key, "an integer", toml::Value::as_integer)?;
        if v < 0 || (v as u64) < min || (v as u64) > max {
            self.error(key, format!("must be between {min} and {max}, got {v}"));
            return None;
        }
        Some(v as u64)
    }

    fn float(&mut self, key: &str, min: f64, max: f64) -> Option<f64> {
        let v = self.typed(key, "a number", |v| {
            v.as_float().or_else(|| v.as_integer().map(|i| i as f64))
        })?;
        if !v.is_finite() || v < min || v > max {
            self.error(
                key,
                format!("must be a finite number between {min} and {max}, got {v}"),
            );
            return None;
        }
        Some(v)
    }

    fn string_array(&mut self, key: &str) -> Option<Vec<String>> {
        self.typed(key, "an array of strings", |v| {
            v.as_array()?
                .iter()
                .map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
    }

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

    /// A sub-table; missing is an empty table.
    fn table(&mut self, key: &str) -> toml::Table {
        self.opt_table(key).unwrap_or_default()
    }

    fn opt_table(&mut self, key: &str) -> Option<toml::Table> {
        self.typed(key, "a table", |v| v.as_table().cloned())
    }

    fn array(&mut self, key: &str) -> Option<Vec<toml::Value>> {
        self.typed(key, "an array of tables", |v| v.as_array().cloned())
    }

    /// Reports every key that nobody took, with the known key it most likely meant.
    fn finish(self) {
        for key in self.table.keys() {
            if !self.seen.contains(key) {
                let known = self.seen.iter().map(String::as_str);
                let error = unknown_key(
                    self.key_path(key),
                    key,
                    known.chain(self.also_known.iter().copied()),
                );
                self.errors.push(error);
            }
        }
    }
}

/// Where the process finds things: systemd's variables, the user's directories, root or not.
/// Tests build one by hand; the daemon uses [`Env::from_process`].
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub configuration_directory: Option<PathBuf>,
    pub state_directory: Option<PathBuf>,
    pub runtime_directory: Option<PathBuf>,
    pub is_root: bool,
    /// The user's config, state and runtime dirs from `directories`.
    pub user_config_dir: Option<PathBuf>,
    pub user_state_dir: Option<PathBuf>,
    pub user_runtime_dir: Option<PathBuf>,
    /// Where `/etc/visutility/config.toml` lives (`/` outside tests).
    pub root: PathBuf,
}

impl Env {
    pub fn from_process() -> Env {
        // systemd passes colon-separated lists when a unit names several directories; ours
        // names one, and the first is the one we own.
        let first = |var: &str| {
            std::env::var_os(var)
                .and_then(|v| {
                    v.to_str()
                        .map(|s| s.split(':').next().unwrap_or("").to_owned())
                })
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        };
        let dirs = directories::ProjectDirs::from("", "", "visutility");
        Env {
            configuration_directory: first("CONFIGURATION_DIRECTORY"),
            state_directory: first("STATE_DIRECTORY"),
            runtime_directory: first("RUNTIME_DIRECTORY"),
            // SAFETY: geteuid has no preconditions and cannot fail.
            is_root: unsafe { libc::geteuid() } == 0,
            user_config_dir: dirs.as_ref().map(|d| d.config_dir().to_owned()),
            user_state_dir: dirs.as_ref().map(|d| {
                d.state_dir()
                    .unwrap_or_else(|| d.data_local_dir())
                    .to_owned()
            }),
            user_runtime_dir: dirs
                .as_ref()
                .and_then(|d| d.runtime_dir().map(Path::to_owned)),
            root: PathBuf::from("/"),
        }
    }

    /// The config file of the contract's look-up order, if one exists.
    pub fn config_file(&self) -> Option<PathBuf> {
        let mut candidates = Vec::new();
        if let Some(d) = &self.configuration_directory {
            candidates.push(d.join("config.toml"));
        }
        if self.is_root {
            candidates.push(self.root.join("etc/visutility/config.toml"));
        }
        if let Some(d) = &self.user_config_dir {
            candidates.push(d.join("config.toml"));
        }
        candidates.into_iter().find(|p| p.is_file())
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state_directory
            .clone()
            .or_else(|| self.user_state_dir.clone())
            .unwrap_or_else(|| self.root.join("var/lib/visutility"))
    }

    pub fn runtime_dir(&self) -> PathBuf {
        self.runtime_directory
            .clone()
            .or_else(|| self.user_runtime_dir.clone())
            // Without XDG_RUNTIME_DIR (a plain su session) the state dir is the private place
            // we know we may write to.
            .unwrap_or_else(|| self.state_dir().join("run"))
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

/// Calls a reentrant user or group database lookup (`getpwnam_r`, `getgrnam_r`,
/// `getpwuid_r`) with a buffer that grows while the call answers ERANGE. Returns the entry
/// and the buffer its strings point into, or `None` when there is no such entry.
pub(crate) fn nss_lookup<T>(
    mut call: impl FnMut(*mut T, &mut [libc::c_char], *mut *mut T) -> libc::c_int,
) -> Option<(T, Vec<libc::c_char>)> {
    let mut buf = vec![0 as libc::c_char; 4096];
    loop {
        // SAFETY: the entry types are plain C structs of integers and pointers, for which
        // all-zero is a valid value; the call fills it in.
        let mut entry: T = unsafe { std::mem::zeroed() };
        let mut result: *mut T = std::ptr::null_mut();
        let rc = call(&mut entry, &mut buf, &mut result);
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            let grown = buf.len() * 2;
            buf.resize(grown, 0);
            continue;
        }
        // The buffer moves with its heap allocation, so the entry's strings stay valid.
        return (rc == 0 && !result.is_null()).then_some((entry, buf));
    }
}

/// The uid of the user called `name`, through the system's user database.
fn user_uid(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    nss_lookup::<libc::passwd>(|pwd, buf, result| {
        // SAFETY: every pointer is valid for the call, and `buf.len()` is the buffer's size.
        unsafe { libc::getpwnam_r(cname.as_ptr(), pwd, buf.as_mut_ptr(), buf.len(), result) }
    })
    .map(|(pwd, _)| pwd.pw_uid)
}

/// The gid of the group called `name`, through the system's group database.
fn group_gid(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    nss_lookup::<libc::group>(|grp, buf, result| {
        // SAFETY: every pointer is valid for the call, and `buf.len()` is the buffer's size.
        unsafe { libc::getgrnam_r(cname.as_ptr(), grp, buf.as_mut_ptr(), buf.len(), result) }
    })
    .map(|(grp, _)| grp.gr_gid)
}

/// The metrics a policy reads: its `metric`, or for the classic `static_threshold` the two
/// fixed ones it bounds.
fn metrics_read(spec: &PolicySpec) -> Vec<&str> {
    match &spec.kind {
        PolicyKind::StaticThreshold {
            max_drift,
            min_accuracy,
            ..
        } if max_drift.is_some() || min_accuracy.is_some() => {
            let mut m = Vec::new();
            if max_drift.is_some() {
                m.push("drift_score");
            }
            if min_accuracy.is_some() {
                m.push("accuracy");
            }
            m
        }
        _ => vec![spec.metric.as_str()],
    }
}

/// Whether every id `later` matches is matched by `earlier` too (then a rule with `later`
/// after one with `earlier` is never used). Sound, not complete: `true` only in cases
/// decided exactly (equal patterns, `earlier` all stars, `later` without wildcards,
/// `earlier` a literal prefix or suffix with one `*` that `later` starts or ends with).
fn glob_covers(earlier: &str, later: &str) -> bool {
    let wild = |c: char| c == '*' || c == '?';
    if earlier == later || (!earlier.is_empty() && earlier.chars().all(|c| c == '*')) {
        return true;
    }
    if !later.contains(wild) {
        return glob_match(earlier, later);
    }
    if let Some(prefix) = earlier.strip_suffix('*')
        && !prefix.contains(wild)
    {
        return later
            .get(..prefix.len())
            .is_some_and(|p| p == prefix && !p.contains(wild));
    }
    if let Some(suffix) = earlier.strip_prefix('*')
        && !suffix.contains(wild)
    {
        return later
            .len()
            .checked_sub(suffix.len())
            .and_then(|at| later.get(at..))
            .is_some_and(|s| s == suffix);
    }
    false
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

    fn env() -> Env {
        Env {
            state_directory: Some("/tmp/v/state".into()),
            runtime_directory: Some("/tmp/v/run".into()),
            ..Env::default()
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
    fn every_error_is_reported_with_its_path() {
        let text = r#"
            [daemon]
            max_modles = 3
            flush_interval_ms = -1
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
        assert!(paths.contains(&"hooks.full.command"), "{paths:?}");
        assert!(paths.contains(&"models[0].policies[0].wat"), "{paths:?}");
        assert!(paths.contains(&"models[0].policies[1].kind"), "{paths:?}");
    }

    /// The errors of `text`, as `path: message` lines.
    fn errors_of(text: &str) -> Vec<String> {
        match Config::from_toml(text, &env()) {
            Err(ConfigError::Invalid(errs)) => errs.iter().map(ToString::to_string).collect(),
            other => panic!("expected errors, got {other:?}"),
        }
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

    /// Issue 12.6: a misspelt key names the key it most likely meant, in every table.
    #[test]
    fn unknown_keys_get_a_did_you_mean() {
        let errs = errors_of(
            "[deamon]\n[hooks]\ncooldwon_s = 1\n[metrics]\nintervals = 3\n[[models]]\nmacth = \"*\"\n[[models.policies]]\nkind = \"drift_window\"\ntreshold = 0.3\nmetirc = \"error\"\n[[models.policies]]\nkind = \"adwin\"\ndetla = 0.1\nactoin = \"full\"\nx = 1\n",
        );
        assert_eq!(
            errs,
            [
                "deamon: unknown key; did you mean \"daemon\"?",
                "hooks.cooldwon_s: unknown key; did you mean \"cooldown_s\"?",
                "metrics.intervals: unknown key; did you mean \"interval_s\"?",
                "models[0].macth: unknown key; did you mean \"match\"?",
                "models[0].policies[0].metirc: unknown key; did you mean \"metric\"?",
                "models[0].policies[0].treshold: unknown key; did you mean \"threshold\"?",
                "models[0].policies[1].actoin: unknown key; did you mean \"action\"?",
                "models[0].policies[1].detla: unknown key; did you mean \"delta\"?",
                "models[0].policies[1].x: unknown key",
            ]
        );
        assert_eq!(edit_distance("treshold", "threshold"), 1);
        assert_eq!(edit_distance("detla", "delta"), 1);
        assert_eq!(edit_distance("", "ab"), 2);
        assert_eq!(did_you_mean("k", ["h"].into_iter()), None);
        assert_eq!(did_you_mean("zzzzzz", ["delta"].into_iter()), None);
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
    fn serde_messages_are_one_line_in_plain_words() {
        assert_eq!(
            serde_message("invalid type: string \"x\", expected f64 in `k`\n"),
            "expected a number, got string \"x\""
        );
        assert_eq!(
            serde_message("invalid value: integer `-1`, expected u32"),
            "expected an integer between 0 and 4294967295, got integer `-1`"
        );
        assert_eq!(
            serde_message("unknown variant `up`, expected one of `both`, `up`\n  x"),
            "unknown variant `up`, expected one of `both`, `up` x"
        );
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
    fn config_lookup_order() {
        let dir = tempfile::tempdir().unwrap();
        let sysd = dir.path().join("sysd");
        let etc = dir.path().join("etc/visutility");
        let user = dir.path().join("user");
        for d in [&sysd, &etc, &user] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("config.toml"), "").unwrap();
        }
        let mut e = Env {
            configuration_directory: Some(sysd.clone()),
            is_root: true,
            user_config_dir: Some(user.clone()),
            root: dir.path().to_owned(),
            ..Env::default()
        };
        assert_eq!(e.config_file(), Some(sysd.join("config.toml")));
        e.configuration_directory = None;
        assert_eq!(e.config_file(), Some(etc.join("config.toml")));
        e.is_root = false;
        assert_eq!(e.config_file(), Some(user.join("config.toml")));
        e.user_config_dir = None;
        assert_eq!(e.config_file(), None);
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
            Some(Path::new("/var/lib/node_exporter/visutility.prom"))
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

    /// Issue 12.6: a rule after one that matches every id it matches is dead: warned.
    #[test]
    fn shadowed_rules_are_warned() {
        let c = Config::from_toml(
            "[[models]]\nmatch = \"fraud-*\"\n[[models]]\nmatch = \"*\"\n[[models]]\nmatch = \"fraud-v?\"\n[[models]]\nmatch = \"spam\"\n",
            &env(),
        )
        .unwrap();
        let w: Vec<_> = c.warnings().iter().map(ToString::to_string).collect();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with("models[2].match: this rule is never used")
                && w[0].contains("models[0] (match = \"fraud-*\")"),
            "{w:?}"
        );
        assert!(
            w[1].starts_with("models[3].match: ") && w[1].contains("models[1]"),
            "{w:?}"
        );
        // A specific rule first, then a catch-all: nothing to say.
        let c = Config::from_toml(
            "[[models]]\nmatch = \"fraud-*\"\n[[models]]\nmatch = \"*-v1\"\n[[models]]\nmatch = \"*\"\n",
            &env(),
        )
        .unwrap();
        assert_eq!(c.warnings(), []);
    }

    /// `glob_covers` never says yes wrongly: checked against every id over a small alphabet.
    #[test]
    fn glob_covers_is_sound() {
        let patterns = [
            "*", "**", "", "a", "ab", "a*", "ab*", "*b", "*ab", "a?", "?b", "a*b", "*a*", "a**",
            "?", "??*", "b-*", "b-a", "*-a", "a?*",
        ];
        let mut ids = vec![String::new()];
        let mut frontier = vec![String::new()];
        for _ in 0..4 {
            let next: Vec<String> = frontier
                .iter()
                .flat_map(|s| ["a", "b", "-"].map(|c| format!("{s}{c}")))
                .collect();
            ids.extend(next.iter().cloned());
            frontier = next;
        }
        let mut decided = 0;
        for earlier in patterns {
            for later in patterns {
                if glob_covers(earlier, later) {
                    decided += 1;
                    for id in &ids {
                        assert!(
                            !glob_match(later, id) || glob_match(earlier, id),
                            "{earlier:?} said to cover {later:?}, but {id:?}"
                        );
                    }
                }
            }
        }
        assert!(glob_covers("fraud-*", "fraud-v?") && glob_covers("*", "fraud-*"));
        assert!(glob_covers("*-v1", "fraud*-v1") && glob_covers("a?c", "abc"));
        assert!(!glob_covers("fraud-*", "fraud*") && !glob_covers("a?", "a*"));
        assert!(decided > 40, "{decided}");
    }

    /// Issue 12.6: the summary says which metrics each policy reads.
    #[test]
    fn the_summary_names_the_metric_of_each_policy() {
        let c = Config::from_toml(
            "[[models]]\n[[models.policies]]\nkind = \"static_threshold\"\nmax_drift = 0.3\nmin_accuracy = 0.9\n[[models.policies]]\nkind = \"adwin\"\nmetric = \"latency_ms\"\n",
            &env(),
        )
        .unwrap();
        assert!(
            c.summary().contains(
                "models \"*\": static_threshold (static_threshold on drift_score and accuracy), adwin (adwin on latency_ms)"
            ),
            "{}",
            c.summary()
        );
        let j = c.summary_json();
        assert_eq!(
            j["models"][0]["policies"][1],
            serde_json::json!({"name": "adwin", "kind": "adwin", "metrics": ["latency_ms"]})
        );
        assert_eq!(
            j["models"][0]["policies"][0]["metrics"],
            serde_json::json!(["drift_score", "accuracy"])
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
