//! Wires the daemon together: store, actors, sockets, signals. A reload (SIGHUP) reads the
//! config again, checks it (ownership and modes included) and hands it to the registry, the
//! hook runner and the connections; settings that need a restart are named in the log.
//! Shutdown is: stop accepting, let connections dispatch what they read, drain every model's
//! mailbox with a barrier, stop hooks, flush, remove the sockets.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::watch;

use crate::command::{self, CommandActor};
use crate::config::{Config, Env};
use crate::control::{self, ControlCtx, Rate};
use crate::ingest::{self, ConnSettings, IngestCtx, IngestError, IngestStats, SocketFile};
use crate::model::registry::Registry;
use crate::model::{Barrier, Ping as ModelPing};
use crate::shutdown::{self, SignalTo};
use crate::store::{Store, StoreError};
use crate::{strict_modes, systemd};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create the state directory {path}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing to start: {0}")]
    Insecure(strict_modes::Findings),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Socket(#[from] IngestError),
    #[error(transparent)]
    MetricsListen(#[from] control::http::HttpError),
    #[error("cannot listen for signals")]
    Signals(#[source] std::io::Error),
    #[error("cannot start the runtime")]
    Runtime(#[source] std::io::Error),
}

/// How the daemon was started, so a reload reads the same place.
pub struct Launch {
    pub config: Config,
    pub config_path: Option<PathBuf>,
    pub env: Env,
    /// The ingest socket systemd passed in, taken by `main` before the runtime starts.
    pub inherited: Option<std::os::unix::net::UnixListener>,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(launch: Launch) -> Result<(), DaemonError> {
    // Before any hook can start: descriptors inherited from the launcher are not passed on.
    crate::command::hook::cloexec_inherited();
    let config = launch.config;
    log_config_warnings(&config);
    let state_dir = config.daemon.state_dir.clone();
    let me = strict_modes::daemon_uid();
    if config.daemon.allow_insecure_modes {
        tracing::warn!(
            "daemon.allow_insecure_modes = true: the ownership and mode checks on the config, \
             the hooks and the state directory are off; anyone who can write them can run code \
             as this daemon's user"
        );
    } else {
        let found = strict_modes::check_config(&config, me);
        if !found.0.is_empty() {
            return Err(DaemonError::Insecure(found));
        }
    }
    create_state_dir(&state_dir)?;
    if !config.daemon.allow_insecure_modes
        && let Err(e) = strict_modes::check_state_dir(&state_dir, me)
    {
        return Err(DaemonError::Insecure(strict_modes::Findings(vec![e])));
    }
    let store = Store::open(&state_dir, config.daemon.flush_interval_ms)?;
    let signals = shutdown::listen().map_err(DaemonError::Signals)?;
    let switch = std::env::var_os("VISUTILITY_FAULT_INJECTION");
    let fault_injection = switch.as_ref().is_some_and(|v| v == "1");
    if let Some(value) = switch {
        // A test seam left on in production fails models and the store on request.
        tracing::warn!(
            variable = "VISUTILITY_FAULT_INJECTION",
            value = %value.to_string_lossy(),
            enabled = fault_injection,
            "a fault-injection switch is set: it is for tests only (with 1, the control \
             socket's fault command and injected model failures are enabled); unset it"
        );
    }

    let system = System::new();
    let result = system.block_on(serve(
        Arc::new(config),
        launch.config_path,
        launch.env,
        launch.inherited,
        store.clone(),
        signals,
        fault_injection,
    ));
    // Whatever happened, make what was written durable.
    if let Err(error) = store.flush_sync() {
        tracing::error!(error = %error, "final flush of the state store failed");
    }
    result
}

async fn serve(
    config: Arc<Config>,
    config_path: Option<PathBuf>,
    env: Env,
    inherited: Option<std::os::unix::net::UnixListener>,
    store: Store,
    mut signals: tokio::sync::mpsc::UnboundedReceiver<SignalTo>,
    fault_injection: bool,
) -> Result<(), DaemonError> {
    let started = Instant::now();
    let models_arbiter = Arbiter::new();
    // The command actor journals every job transition with an fsync: on a thread of its own
    // those waits never stall the connections on the System arbiter. Its address exists
    // before the actor, so the registry (whose models send it decisions) and the actor
    // (which tells the registry of retrains) are wired once, here, without a cycle between
    // their modules.
    let command_arbiter = Arbiter::new();
    let (command_tx, command_rx) = actix::dev::channel::channel::<CommandActor>(16);
    let commander = Addr::new(command_tx);
    let registry = Registry::new(
        config.clone(),
        store.clone(),
        models_arbiter.handle(),
        commander.clone().recipient(),
        commander.clone().recipient(),
        fault_injection,
    );
    {
        let hooks = Arc::new(config.hooks.clone());
        let store = store.clone();
        let registry = registry.clone();
        command_arbiter.spawn_fn(move || {
            let on_retrained: command::OnRetrained = Box::new(move |m| registry.notice(m));
            let actor = CommandActor::new(hooks, store, on_retrained);
            actix::spawn(Context::with_receiver(command_rx).into_future(actor));
        });
    }

    // First, so that a taken port refuses the start before any socket file is created.
    let metrics_listener = match config.metrics.listen {
        Some(addr) => Some(control::http::bind(addr)?),
        None => None,
    };
    let ingest_socket = match inherited {
        Some(l) => {
            tracing::info!("using the ingest socket passed by systemd");
            SocketFile::inherited(l)?
        }
        None => SocketFile::bind(&config.daemon.socket, 0o660, None)?,
    };
    let control_socket = match config.daemon.control_group {
        Some(gid) => SocketFile::bind(&config.daemon.control_socket, 0o660, Some(gid))?,
        None => SocketFile::bind(&config.daemon.control_socket, 0o600, None)?,
    };

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (settings_tx, settings_rx) = watch::channel(conn_settings(&config));
    let stats = Arc::new(IngestStats::default());
    let rate = Arc::new(Rate::default());
    let clock = Arc::new(crate::clock::Watch::default());
    clock.tick();
    let ingest_refusals = Arc::new(crate::peer::RefusalLog::new("ingest"));
    let control_refusals = Arc::new(crate::peer::RefusalLog::new("control"));

    let ingest_ctx = IngestCtx {
        registry: registry.clone(),
        store: store.clone(),
        stats: stats.clone(),
        settings: settings_rx,
        shutdown: shutdown_rx.clone(),
        allow: config.daemon.ingest_allow.clone().map(Arc::new),
        partial: Arc::new(ingest::connection::ByteBudget::new(
            config.daemon.partial_line_budget_bytes,
        )),
        replies: Arc::new(ingest::connection::ByteBudget::new(
            ingest::connection::REPLY_BUDGET,
        )),
        refusals: ingest_refusals.clone(),
    };
    let (probe, probes) = tokio::sync::mpsc::channel(1);
    // The listener and the connections it accepts are served on the models' thread: a
    // connection's events then reach the models without waking another thread, and a
    // connection that closes gives its place back before a later one is accepted (both on
    // one thread, in order). A connection under heavy load moves to this thread by itself
    // (see `ingest::connection`).
    let limits = ingest::Limits {
        max_connections: max_connections(config.daemon.max_connections),
        per_uid: config.daemon.max_connections_per_uid,
    };
    let moved = ingest_socket.detach()?;
    let (served_tx, served) = tokio::sync::oneshot::channel::<()>();
    registry.arbiter().spawn_fn(move || match moved.attach() {
        Ok(socket) => {
            actix::spawn(async move {
                ingest::serve(socket, ingest_ctx, limits, probes).await;
                let _ = served_tx.send(());
            });
        }
        Err(error) => {
            tracing::error!(error = %error, "cannot serve the ingest socket");
        }
    });
    let ingest_task = actix::spawn(async move {
        let _ = served.await;
    });
    let control_ctx = ControlCtx {
        registry: registry.clone(),
        store: store.clone(),
        commander: commander.clone(),
        stats: stats.clone(),
        rate: rate.clone(),
        clock: clock.clone(),
        started,
        allow: Arc::new({
            // control_group is a group: it joins the gids, never the uids.
            let mut allow = config.daemon.control_allow.clone();
            allow.gids.extend(config.daemon.control_group);
            allow
        }),
        refused: Arc::default(),
        refusals: control_refusals.clone(),
        shutdown: shutdown_rx.clone(),
        max_model_series: config.metrics.max_model_series,
    };
    let control_task = actix::spawn(control::serve(control_socket, control_ctx.clone()));

    if let Some(listener) = metrics_listener {
        actix::spawn(control::http::serve(listener, control_ctx.clone()));
    }
    if let Some(path) = config.metrics.textfile.clone() {
        actix::spawn(write_textfile_every(
            path,
            Duration::from_secs(config.metrics.interval_s),
            control_ctx,
        ));
    }

    // The events-per-second sample, the systemd status line and the clock watch: once a second
    // while events arrive, once every ten seconds while none do (an idle daemon should not wake
    // for nothing).
    {
        let clock = clock.clone();
        let stats = stats.clone();
        let rate = rate.clone();
        let registry = registry.clone();
        let mut shutdown = shutdown_rx.clone();
        actix::spawn(async move {
            let mut last = u64::MAX;
            let mut since_status = Duration::ZERO;
            let sleeper = crate::timer::Sleeper::new();
            loop {
                let accepted = stats.accepted.load(std::sync::atomic::Ordering::Relaxed);
                let every = if accepted == last {
                    Duration::from_secs(10)
                } else {
                    Duration::from_secs(1)
                };
                last = accepted;
                rate.sample(accepted);
                clock.tick();
                since_status += every;
                if since_status >= Duration::from_secs(10) {
                    since_status = Duration::ZERO;
                    systemd::notify_status(&format!(
                        "{} models, {:.0} events/s",
                        registry.len(),
                        rate.per_second()
                    ));
                }
                tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => break,
                    () = sleeper.sleep(every) => {}
                }
            }
        });
    }

    // Refusals past the first of each uid are summed up once their interval has passed.
    let sweepers = [ingest_refusals, control_refusals].map(|log| {
        let shutdown = shutdown_rx.clone();
        actix::spawn(async move { log.sweep_until(shutdown).await })
    });

    if let Some(interval) = systemd::watchdog_interval() {
        let commander = commander.clone();
        let registry = registry.clone();
        let mut shutdown = shutdown_rx.clone();
        actix::spawn(async move {
            // A heartbeat at once, then one every interval (one wake-up each, see `timer`).
            let sleeper = crate::timer::Sleeper::new();
            loop {
                if heartbeat(&commander, &registry, &probe).await {
                    systemd::notify_watchdog();
                } else {
                    tracing::error!("watchdog heartbeat failed; not pinging systemd");
                }
                tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => break,
                    () = sleeper.sleep(interval) => {}
                }
            }
        });
    }

    tracing::info!(
        socket = %config.daemon.socket.display(),
        control_socket = %config.daemon.control_socket.display(),
        state_dir = %store.path().display(),
        "ready"
    );
    systemd::notify_ready();
    {
        let registry = registry.clone();
        let spawned = std::thread::Builder::new()
            .name("count-models".into())
            .spawn(move || {
                registry.count_stored();
                tracing::info!(models = registry.known(), "stored models counted");
            });
        if let Err(error) = spawned {
            tracing::warn!(error = %error, "cannot count the stored models; max_models counts this run's");
        }
    }

    // Models with events logged by an earlier run load now, on the models' thread, and fold
    // them into checkpoints, so the log's old segments go and every view shows them replayed.
    let recovered = store.recovered_models();
    if !recovered.is_empty() {
        tracing::info!(
            models = recovered.len(),
            "loading models with logged events"
        );
        for id in recovered {
            if let Err(error) = registry.get_or_create(&id) {
                tracing::warn!(model_id = %id, error = %error, "cannot load a model with logged events; its events stay in the log");
            }
        }
    }

    let mut config = config;
    loop {
        match signals.recv().await {
            Some(SignalTo::Reload) => {
                systemd::notify_reloading();
                match Config::discover(config_path.as_deref(), &env) {
                    Ok(mut new) => {
                        // The opt-out changes only at a restart (where it is logged): a
                        // config someone could write must not switch the checks off for us.
                        if new.daemon.allow_insecure_modes != config.daemon.allow_insecure_modes {
                            tracing::warn!(
                                key = "daemon.allow_insecure_modes",
                                "this setting changes only at the next restart"
                            );
                        }
                        new.daemon.allow_insecure_modes = config.daemon.allow_insecure_modes;
                        new.hooks.allow_insecure_modes = config.daemon.allow_insecure_modes;
                        if !config.daemon.allow_insecure_modes {
                            let found =
                                strict_modes::check_config(&new, strict_modes::daemon_uid());
                            if !found.0.is_empty() {
                                tracing::error!(error = %found, "config reload refused; keeping the running config");
                                systemd::notify_ready();
                                continue;
                            }
                        }
                        let new = Arc::new(new);
                        warn_restart_only(&config, &new);
                        log_policy_resets(&config, &new);
                        log_config_warnings(&new);
                        registry.reconfigure(new.clone());
                        commander.do_send(command::Reconfigure(Arc::new(new.hooks.clone())));
                        let _ = settings_tx.send(conn_settings(&new));
                        config = new;
                        tracing::info!("config reloaded");
                    }
                    Err(error) => {
                        let error = match std::error::Error::source(&error) {
                            Some(source) => format!("{error}: {source}"),
                            None => error.to_string(),
                        };
                        tracing::error!(error = %error, "config reload failed; keeping the running config");
                    }
                }
                systemd::notify_ready();
            }
            Some(SignalTo::Shutdown(sig)) => {
                tracing::info!(signal = sig, "shutting down");
                break;
            }
            None => break,
        }
    }

    systemd::notify_stopping();
    let _ = shutdown_tx.send(true);
    let _ = ingest_task.await;
    let _ = control_task.await;
    for sweeper in sweepers {
        let _ = sweeper.await;
    }
    drain_models(&registry, SHUTDOWN_DRAIN).await;
    let _ = commander.send(command::Shutdown).await;
    if let Err(error) = store.flush().await {
        tracing::error!(error = %error, "flush at shutdown failed");
    }
    models_arbiter.stop();
    command_arbiter.stop();
    tracing::info!("stopped");
    System::current().stop();
    Ok(())
}

/// How long a stop waits for the models to apply what they were sent, all of them together.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

/// Every batch already sent is applied before its actor answers the barrier. The barriers go
/// to every model at once (`send` queues the message when it is called) and share one
/// deadline, so a stuck models' thread costs the stop `limit` once, not once per model.
async fn drain_models(registry: &Registry, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    // Connections hand their batches to the models' thread as tasks: a task queued behind
    // them has run once every batch is in its actor's mailbox, ahead of the barriers.
    let _ = tokio::time::timeout_at(deadline, registry.models_caught_up()).await;
    let barriers: Vec<_> = registry
        .all()
        .into_iter()
        .map(|(id, addr)| (id, addr.send(Barrier)))
        .collect();
    let mut late = 0usize;
    for (id, barrier) in barriers {
        match tokio::time::timeout_at(deadline, barrier).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => {
                tracing::error!(model_id = %id, error = %error, "model not persisted at shutdown")
            }
            Ok(Err(_)) => tracing::error!(model_id = %id, "model actor is gone at shutdown"),
            Err(_) => late += 1,
        }
    }
    if late > 0 {
        tracing::error!(
            models = late,
            limit_s = limit.as_secs(),
            "model actors did not drain at shutdown in time"
        );
    }
}

/// The config's [`Config::warnings`], one WARN line each.
fn log_config_warnings(config: &Config) {
    let hooks = strict_modes::check_hook_programs(&config.hooks);
    for w in config.warnings().iter().chain(&hooks.warnings) {
        tracing::warn!(key = %w.path, "{}", w.message);
    }
    // An error for check-config, but the program may be installed after the daemon starts:
    // the runner looks it up again before each run.
    for e in &hooks.errors {
        tracing::warn!(key = %e.path, "{}", e.message);
    }
}

/// One log line per policy a reload starts afresh, and why (rules matched by the same
/// pattern before and after; models then rebind their states the same way).
fn log_policy_resets(old: &Config, new: &Config) {
    for rule in &new.models {
        let Some(before) = old.models.iter().find(|r| r.pattern == rule.pattern) else {
            continue;
        };
        for spec in &rule.policies {
            let was = before.policies.iter().find(|s| s.name == spec.name);
            if let Some(reason) = crate::policy::reset_reason(was, spec) {
                tracing::info!(
                    rule = %rule.pattern,
                    policy = %spec.name,
                    reason = %reason,
                    "reload: the policy starts afresh on every model of this rule"
                );
            }
        }
    }
}

/// Ingest connections the descriptor limit leaves room for: at start the soft
/// `RLIMIT_NOFILE` is raised to the hard limit (outside systemd it is often 1024, which a
/// thousand clients exhaust, and then nothing, not even `status`, can connect); if
/// `max_connections` still does not fit beside the store's, hooks' and control connections'
/// descriptors, it is lowered, with a warning.
fn max_connections(configured: usize) -> usize {
    /// Descriptors kept for everything but ingest connections.
    const RESERVED: u64 = 256;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for the kernel to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return configured;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: a valid rlimit; raising the soft limit up to the hard one is always allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::debug!(
                from = lim.rlim_cur,
                to = lim.rlim_max,
                "raised the soft descriptor limit (RLIMIT_NOFILE)"
            );
            lim.rlim_cur = lim.rlim_max;
        }
    }
    let room = lim.rlim_cur.saturating_sub(RESERVED).max(1);
    if configured as u64 > room {
        tracing::warn!(
            max_connections = configured,
            using = room,
            nofile = lim.rlim_cur,
            "max_connections does not fit the descriptor limit (RLIMIT_NOFILE); raise LimitNOFILE= or lower max_connections"
        );
        return usize::try_from(room).unwrap_or(configured);
    }
    configured
}

/// Creates the state directory 0700 when it is missing (its parents as the umask says), and
/// never changes the mode of one that exists: a shared directory must not lose its sticky bit
/// to us; [`strict_modes::check_state_dir`] refuses one that is not ours instead.
fn create_state_dir(dir: &Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |source| DaemonError::StateDir {
        path: dir.to_owned(),
        source,
    };
    if let Some(parent) = dir.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(err(e)),
    }
}

fn conn_settings(config: &Config) -> ConnSettings {
    ConnSettings {
        max_line_bytes: config.daemon.max_line_bytes,
        idle_timeout: (config.daemon.idle_timeout_s > 0)
            .then(|| Duration::from_secs(config.daemon.idle_timeout_s)),
        partial_line_timeout: (config.daemon.partial_line_timeout_s > 0)
            .then(|| Duration::from_secs(config.daemon.partial_line_timeout_s)),
        tick: (config.daemon.ingest_tick_ms > 0)
            .then(|| Duration::from_millis(config.daemon.ingest_tick_ms)),
    }
}

fn warn_restart_only(old: &Config, new: &Config) {
    let d = (&old.daemon, &new.daemon);
    for (key, changed) in [
        ("daemon.socket", d.0.socket != d.1.socket),
        (
            "daemon.control_socket",
            d.0.control_socket != d.1.control_socket,
        ),
        ("daemon.state_dir", d.0.state_dir != d.1.state_dir),
        (
            "daemon.max_connections",
            d.0.max_connections != d.1.max_connections,
        ),
        (
            "daemon.flush_interval_ms",
            d.0.flush_interval_ms != d.1.flush_interval_ms,
        ),
        (
            "daemon.model_idle_unload_s",
            d.0.model_idle_unload_s != d.1.model_idle_unload_s,
        ),
        (
            "daemon.control_allow",
            d.0.control_allow != d.1.control_allow,
        ),
        (
            "daemon.control_group",
            d.0.control_group != d.1.control_group,
        ),
        ("daemon.ingest_allow", d.0.ingest_allow != d.1.ingest_allow),
        ("daemon.log_level", d.0.log_level != d.1.log_level),
        ("metrics", old.metrics != new.metrics),
    ] {
        if changed {
            tracing::warn!(key, "this setting changes only at the next restart");
        }
    }
}

/// Writes the metrics exposition to `path` every `every` until shutdown, for node_exporter's
/// textfile collector. A failure is logged once, not at every tick, until a write succeeds.
async fn write_textfile_every(path: PathBuf, every: Duration, ctx: ControlCtx) {
    let mut shutdown = ctx.shutdown.clone();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            _ = tick.tick() => {}
        }
        let text = control::metrics::render(&control::metrics::snapshot(&ctx).await);
        let target = path.clone();
        // fsync can take a while on an SD card: keep it off the actors' thread.
        let result =
            tokio::task::spawn_blocking(move || control::metrics::write_textfile(&target, &text))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match result {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(path = %path.display(), "metrics textfile written again");
            }
            Ok(()) => {}
            Err(error) if !failing => {
                failing = true;
                tracing::error!(path = %path.display(), error = %error, "cannot write the metrics textfile");
            }
            Err(_) => {}
        }
    }
}

/// One round trip through the ingest accept loop and connection code, the command actor and
/// the model actors. The ingest leg is a socket pair handed to the accept loop, served like a
/// client without taking a client slot: clients holding every slot (or every slot of their
/// uid) cannot stop the heartbeat, while a wedged accept loop or ingest thread still does.
async fn heartbeat(
    commander: &Addr<CommandActor>,
    registry: &Registry,
    probe: &ingest::Probe,
) -> bool {
    let t = Duration::from_secs(5);
    let ingest_ok = async {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let (s, theirs) = tokio::net::UnixStream::pair().ok()?;
        probe.send(theirs).await.ok()?;
        let (rd, mut wr) = s.into_split();
        wr.write_all(b"{\"op\":\"ping\"}\n").await.ok()?;
        let mut line = String::new();
        tokio::io::BufReader::new(rd)
            .read_line(&mut line)
            .await
            .ok()?;
        line.contains("\"ok\":true").then_some(())
    };
    if tokio::time::timeout(t, ingest_ok)
        .await
        .ok()
        .flatten()
        .is_none()
    {
        return false;
    }
    if tokio::time::timeout(t, commander.send(command::Ping))
        .await
        .ok()
        .and_then(Result::ok)
        .is_none()
    {
        return false;
    }
    for (_, addr) in registry.all() {
        if tokio::time::timeout(t, addr.send(ModelPing))
            .await
            .ok()
            .and_then(Result::ok)
            .is_none()
        {
            return false;
        }
    }
    true
}
