//! Load generator and benchmark harness: the numbers in the README's Performance section.
//!
//! Every scenario starts the real `visutility` binary (release build) in a fresh temporary
//! directory, drives it over its real Unix socket, and runs the baselines in the same
//! invocation, interleaved run by run so that other load on the machine hits them alike:
//!
//! - the *ceiling* (`examples/ceiling.rs`): a server that only frames and parses the same lines
//!   from the same kind of socket, with no actors, no policies and no disk;
//! - the *Python baseline* (`benches/python_baseline.py`): the asyncio server with River
//!   detectors and state pickled to sqlite that a user would otherwise write.
//!
//! Scenarios:
//!
//! - `throughput`: 2 million events over 1 and over 4 connections, 1,000 models, the default
//!   policies plus ADWIN on `error`, ending with a flush (so every model's state is written and
//!   fsynced before the clock stops).
//! - `latency`: the time from writing an event that crosses a threshold to the hook process
//!   running (the hook is this binary's `stamp` subcommand, which appends the clock to a file)
//!   and to the job journal's `started`, under 50,000 events/s of background load.
//! - `recovery`: 10,000 models with full 500-item windows: time from start to the ingest socket
//!   accepting connections, resident memory then, and after every model is loaded again.
//! - `flush`: the round trip of a flush barrier after a small batch, against the daemon and the
//!   Python baseline.
//! - `wear` (not part of `all`: it takes minutes): steady, low, paced load as on edge hardware
//!   (100 models x 10 events/s, and 5 models x 200 events/s), after a fill that makes every
//!   window full: what it costs the server process in bytes written (`/proc/PID/io`), CPU,
//!   wakeups (voluntary context switches, per thread) and resident memory, under load and then
//!   idle with the connection open. `--compare-daemon` measures another build beside this one.
//!
//! `LOADGEN_DAEMON_WRAPPER` runs the daemon under a profiler (`"valgrind --tool=callgrind"`).
//! `LOADGEN_LOG_LEVEL=info` sets the daemon's log level (default `warn`); each server's log is
//! kept in its scratch directory (`/tmp/loadgen-*`), removed afterwards unless `LOADGEN_KEEP`
//! is set.
//!
//! Rates are wall-clock events per second, medians of `--runs`; the servers' CPU time per event
//! (from `/proc/PID/stat`) is reported too, as it depends less on other load.
//!
//! ```sh
//! cargo build --release --bin visutility --example ceiling --example loadgen
//! target/release/examples/loadgen all
//! ```

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Benchmarks visutility against a parse-only ceiling and a Python baseline")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Events per second through the daemon, the ceiling and the Python baseline.
    Throughput(ThroughputArgs),
    /// Threshold crossing to hook start, under background load.
    Latency(LatencyArgs),
    /// Start-up time and memory with many models persisted.
    Recovery(RecoveryArgs),
    /// Flush barrier round trip.
    Flush(FlushArgs),
    /// Disk writes, CPU, wakeups and memory under steady, low, paced load, then idle.
    Wear(WearArgs),
    /// Every scenario with its defaults.
    All,
    /// The latency scenario's hook: appends "MODEL_ID UNIX_NANOS" to FILE.
    #[command(hide = true)]
    Stamp { file: PathBuf },
}

#[derive(Args, Clone)]
struct ThroughputArgs {
    #[arg(long, default_value_t = 2_000_000)]
    events: usize,
    /// Events sent to the Python baseline (it is slow; its rate is what is compared).
    #[arg(long, default_value_t = 300_000)]
    python_events: usize,
    #[arg(long, default_value_t = 1_000)]
    models: usize,
    /// Connection counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    conns: Vec<usize>,
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Runs of the Python baseline (at most --runs).
    #[arg(long, default_value_t = 3)]
    python_runs: usize,
    #[arg(long)]
    no_python: bool,
    /// Measure only the daemon (e.g. under a profiler).
    #[arg(long)]
    daemon_only: bool,
    /// Another build of the daemon, run interleaved with this one (A/B on a noisy machine).
    #[arg(long)]
    compare_daemon: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct LatencyArgs {
    /// Background events per second.
    #[arg(long, default_value_t = 50_000)]
    rate: usize,
    /// Threshold crossings per run (one every --interval-ms).
    #[arg(long, default_value_t = 400)]
    probes: usize,
    #[arg(long, default_value_t = 10)]
    interval_ms: u64,
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

#[derive(Args, Clone)]
struct RecoveryArgs {
    #[arg(long, default_value_t = 10_000)]
    models: usize,
    /// Window length (the drift_window policy's `window`, and events sent per model).
    #[arg(long, default_value_t = 500)]
    window: usize,
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// The daemon's `model_idle_unload_s` for the runs: memory is measured once with every
    /// model loaded (3 s idle) and again after the idle models were unloaded.
    #[arg(long, default_value_t = 5)]
    unload_s: u64,
}

#[derive(Args, Clone)]
struct FlushArgs {
    /// Flushes per run, each after --batch events.
    #[arg(long, default_value_t = 2_000)]
    iters: usize,
    #[arg(long, default_value_t = 10)]
    batch: usize,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[arg(long)]
    no_python: bool,
}

#[derive(Args, Clone)]
struct WearArgs {
    /// Load profiles, MODELSxRATE (events per second to each model), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100x10,5x200")]
    profiles: Vec<Profile>,
    /// The measured window under load, in seconds.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seconds without events after the window (connection open); the first is not measured.
    #[arg(long, default_value_t = 10)]
    idle_seconds: u64,
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Connections the paced load is spread over (model `i` on connection `i % conns`).
    #[arg(long, default_value_t = 1)]
    conns: usize,
    #[arg(long)]
    no_python: bool,
    /// Another build of the daemon, run interleaved with this one (before/after a change).
    #[arg(long)]
    compare_daemon: Option<PathBuf>,
    /// Also print one JSON object per server and run, on its own line of stdout (`grep '^{'`).
    #[arg(long)]
    json: bool,
    /// Give the models' rule a probation on `accuracy` (`[models.probation]`, 2000 events),
    /// for visutility's servers: its cost is the metric's recent values each model keeps.
    #[arg(long)]
    probation: bool,
}

/// What `wear --probation` adds to the daemon's config (after the last `[[models]]`).
const PROBATION_CONFIG: &str = "
[models.probation]
metric = \"accuracy\"
events = 2000
";

/// A wear load: `models` models, each getting `rate` events per second.
#[derive(Clone, Copy, Debug)]
struct Profile {
    models: usize,
    rate: usize,
}

impl std::str::FromStr for Profile {
    type Err = String;

    fn from_str(s: &str) -> Result<Profile, String> {
        let bad = || format!("{s:?}: expected MODELSxRATE, e.g. 100x10");
        let (m, r) = s.split_once('x').ok_or_else(bad)?;
        let (models, rate) = (m.parse().map_err(|_| bad())?, r.parse().map_err(|_| bad())?);
        if models == 0 || rate == 0 {
            return Err(bad());
        }
        Ok(Profile { models, rate })
    }
}

impl std::fmt::Display for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.models, self.rate)
    }
}

fn main() {
    // The hook path first, before anything else, so it starts as fast as it can.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("stamp") {
        stamp(args.get(2).map(PathBuf::from));
        return;
    }
    let cli = Cli::parse();
    let mut bins = Bins::locate();
    let result = match cli.cmd {
        Cmd::Throughput(a) => {
            bins.compare = a.compare_daemon.clone();
            throughput(&bins, &a)
        }
        Cmd::Latency(a) => latency(&bins, &a),
        Cmd::Recovery(a) => recovery(&bins, &a),
        Cmd::Flush(a) => flush(&bins, &a),
        Cmd::Wear(a) => {
            bins.compare = a.compare_daemon.clone();
            wear(&bins, &a)
        }
        Cmd::All => (|| {
            throughput(&bins, &ThroughputArgs::parse_default())?;
            latency(&bins, &LatencyArgs::parse_default())?;
            recovery(&bins, &RecoveryArgs::parse_default())?;
            flush(&bins, &FlushArgs::parse_default())
        })(),
        Cmd::Stamp { .. } => Ok(()),
    };
    if let Err(e) = result {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}

trait ParseDefault: Sized {
    fn parse_default() -> Self;
}

impl<T: Args> ParseDefault for T {
    fn parse_default() -> T {
        #[derive(Parser)]
        struct Wrap<U: Args> {
            #[command(flatten)]
            inner: U,
        }
        Wrap::<T>::parse_from(["loadgen"]).inner
    }
}

fn stamp(file: Option<PathBuf>) {
    let now = unix_nanos();
    let model = std::env::var("VISUTILITY_MODEL_ID").unwrap_or_default();
    if let Some(file) = file
        && let Ok(mut f) = fs::OpenOptions::new().append(true).create(true).open(file)
    {
        // One write(2) of one short line on an O_APPEND file: lines never interleave.
        let _ = f.write_all(format!("{model} {now}\n").as_bytes());
    }
}

// ---------------------------------------------------------------------------------------------
// Processes under test
// ---------------------------------------------------------------------------------------------

struct Bins {
    daemon: PathBuf,
    ceiling: PathBuf,
    loadgen: PathBuf,
    python: Option<PathBuf>,
    /// A second daemon binary measured beside the first (`--compare-daemon`).
    compare: Option<PathBuf>,
}

impl Bins {
    fn locate() -> Bins {
        let loadgen = std::env::current_exe().expect("current exe");
        let examples = loadgen.parent().expect("examples dir").to_owned();
        let daemon = examples.parent().expect("profile dir").join("visutility");
        let ceiling = examples.join("ceiling");
        for p in [&daemon, &ceiling] {
            if !p.exists() {
                eprintln!(
                    "loadgen: {} is missing; run: cargo build --release --bin visutility --example ceiling --example loadgen",
                    p.display()
                );
                std::process::exit(2);
            }
        }
        let script = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/python_baseline.py"
        ));
        let python = Command::new("python3")
            .args(["-c", "import river; assert river.__version__ == '0.26.1'"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            .then_some(script);
        if python.is_none() {
            eprintln!(
                "loadgen: python3 with river 0.26.1 not found (pip install river==0.26.1); the Python baseline is skipped"
            );
        }
        Bins {
            daemon,
            ceiling,
            loadgen,
            python,
            compare: None,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    Daemon,
    /// Another build of the daemon (`--compare-daemon`), for A/B runs in one invocation.
    Compare,
    Ceiling,
    Python,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Daemon => "visutility",
            Kind::Compare => "visutility (compared build)",
            Kind::Ceiling => "ceiling (parse only)",
            Kind::Python => "Python + River",
        }
    }
}

/// A server process under test, killed when dropped.
struct Server {
    child: Child,
    socket: PathBuf,
    config: PathBuf,
    spawned: Instant,
}

impl Server {
    fn start(bins: &Bins, kind: Kind, dir: &Path, daemon_config: &str) -> io::Result<Server> {
        fs::create_dir_all(dir)?;
        let socket = dir.join("ingest.sock");
        let _ = fs::remove_file(&socket);
        let config = dir.join("config.toml");
        let log = fs::File::create(dir.join(format!("{kind:?}.log")))?;
        let mut cmd = match kind {
            Kind::Daemon | Kind::Compare => {
                fs::write(&config, daemon_config)?;
                // A profiler in front of the daemon, e.g. "valgrind --tool=callgrind".
                let wrapper = std::env::var("LOADGEN_DAEMON_WRAPPER").unwrap_or_default();
                let mut words = wrapper.split_whitespace();
                let exe = match kind {
                    Kind::Compare => bins.compare.as_ref().expect("--compare-daemon given"),
                    _ => &bins.daemon,
                };
                let mut c = match words.next() {
                    Some(first) => {
                        let mut c = Command::new(first);
                        c.args(words).arg(exe);
                        c
                    }
                    None => Command::new(exe),
                };
                c.arg("--config").arg(&config).arg("daemon");
                c
            }
            Kind::Ceiling => {
                let mut c = Command::new(&bins.ceiling);
                c.arg(&socket);
                c
            }
            Kind::Python => {
                let mut c = Command::new("python3");
                c.arg(bins.python.as_ref().expect("python available"))
                    .arg("--socket")
                    .arg(&socket)
                    .arg("--db")
                    .arg(dir.join("py.sqlite"));
                c
            }
        };
        let spawned = Instant::now();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let mut s = Server {
            child,
            socket,
            config,
            spawned,
        };
        s.wait_connectable()?;
        Ok(s)
    }

    /// Polls until the socket accepts a connection; returns the time since spawn.
    fn wait_connectable(&mut self) -> io::Result<Duration> {
        let deadline = self.spawned + Duration::from_secs(120);
        loop {
            if UnixStream::connect(&self.socket).is_ok() {
                return Ok(self.spawned.elapsed());
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!("server exited early: {status}")));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other("server did not start listening"));
            }
            thread::sleep(Duration::from_micros(500));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User + system CPU seconds of the whole process so far.
    /// Minor page faults so far (field 10 of /proc/PID/stat): fresh memory being touched.
    fn minor_faults(&self) -> u64 {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(7)?.parse().ok())
            .unwrap_or(0)
    }

    fn cpu_seconds(&self) -> f64 {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // After the command name: state is field 3, utime 14, stime 15 (1-based).
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<f64>().ok()))
            .sum();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        ticks / hz
    }

    /// CPU seconds per thread name (threads of one name summed); exited threads are missing.
    fn thread_cpu(&self) -> HashMap<String, f64> {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let mut out = HashMap::new();
        let Ok(tasks) = fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return out;
        };
        for t in tasks.filter_map(Result::ok) {
            let stat = fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let name = stat[open + 1..close].to_owned();
            let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            let ticks: f64 = [11, 12]
                .iter()
                .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<f64>().ok()))
                .sum();
            *out.entry(name).or_default() += ticks / hz;
        }
        out
    }

    /// Resident memory in KiB.
    fn rss_kib(&self) -> u64 {
        fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// SIGTERM, then wait (the daemon drains and flushes); SIGKILL after a deadline.
    fn stop(mut self) -> io::Result<()> {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(io::Error::other("server did not stop on SIGTERM"));
            }
            thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The benchmark's daemon config: the default policies plus ADWIN on `error`.
fn daemon_config(dir: &Path, window: usize, hooks: &str, log_level: &str) -> String {
    let p = |name: &str| format!("{:?}", dir.join(name).to_str().expect("utf-8 path"));
    format!(
        r#"[daemon]
socket = {socket}
control_socket = {control}
state_dir = {state}
log_level = "{log_level}"
flush_interval_ms = {flush_ms}
max_models = 100000

[hooks]
cooldown_s = 0
retries = 0
{hooks}

[[models]]
match = "*"

[[models.policies]]
kind = "static_threshold"
max_drift = 0.3
min_accuracy = 0.9

[[models.policies]]
kind = "drift_window"
window = {window}
threshold = 0.3

[[models.policies]]
name = "errors"
kind = "adwin"
metric = "error"
"#,
        flush_ms = std::env::var("LOADGEN_FLUSH_MS").unwrap_or_else(|_| "200".into()),
        log_level = std::env::var("LOADGEN_LOG_LEVEL").unwrap_or_else(|_| log_level.into()),
        socket = p("ingest.sock"),
        control = p("control.sock"),
        state = p("state"),
    )
}

// ---------------------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------------------

#[path = "../benches/common/rng.rs"]
mod rng;
use rng::Rng;

const TS0: f64 = 1_764_172_800.0;

/// One calm event (no policy fires on a stream of these): a line of about 100 bytes.
fn calm_event(out: &mut Vec<u8>, rng: &mut Rng, model: &str, ts: Option<f64>, error_p: f64) {
    let drift = rng.uniform() * 0.25;
    let acc = 0.92 + rng.uniform() * 0.08;
    let err = u8::from(rng.uniform() < error_p);
    let _ = write!(out, "{{\"model_id\":\"{model}\"");
    if let Some(ts) = ts {
        let _ = write!(out, ",\"ts\":{ts:.6}");
    }
    let _ = writeln!(
        out,
        ",\"drift_score\":{drift:.4},\"accuracy\":{acc:.4},\"error\":{err}}}"
    );
}

fn model_name(i: usize) -> String {
    format!("model-{i:05}")
}

/// `events` calm events over `conns` connections; model `i` is sent only by connection
/// `i % conns` (as each model server sends its own models), in random order.
fn throughput_load(events: usize, models: usize, conns: usize, seed: u64) -> Vec<Vec<u8>> {
    let names: Vec<String> = (0..models).map(model_name).collect();
    (0..conns)
        .map(|c| {
            let mine: Vec<&str> = names
                .iter()
                .skip(c)
                .step_by(conns)
                .map(String::as_str)
                .collect();
            let n = events / conns + usize::from(c < events % conns);
            let mut rng = Rng(seed ^ c as u64);
            let mut buf = Vec::with_capacity(n * 104);
            for k in 0..n {
                let m = mine[rng.below(mine.len())];
                calm_event(&mut buf, &mut rng, m, Some(TS0 + k as f64 * 1e-6), 0.05);
            }
            buf
        })
        .collect()
}

const FLUSH: &[u8] = b"{\"op\":\"flush\"}\n";

fn events_in(bufs: &[Vec<u8>]) -> usize {
    bufs.iter()
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .sum()
}

/// Reads reply lines until the flush reply; returns it, with every error reply seen before.
fn read_flush_reply(rd: &mut impl BufRead) -> io::Result<(serde_json::Value, Vec<String>)> {
    let mut errors = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if rd.read_line(&mut line)? == 0 {
            return Err(io::Error::other("connection closed before the flush reply"));
        }
        let v: serde_json::Value = serde_json::from_str(line.trim())
            .map_err(|e| io::Error::other(format!("bad reply {line:?}: {e}")))?;
        if v.get("ok").is_some() {
            return Ok((v, errors));
        }
        errors.push(line.trim().to_owned());
    }
}

/// Sends every buffer on its own connection at once, then a flush on each; returns the time
/// from the first byte to the last flush reply.
fn drive(socket: &Path, bufs: &[Vec<u8>]) -> io::Result<Duration> {
    let streams = bufs
        .iter()
        .map(|_| UnixStream::connect(socket))
        .collect::<io::Result<Vec<_>>>()?;
    let go = Barrier::new(bufs.len() + 1);
    thread::scope(|s| {
        let handles: Vec<_> = streams
            .into_iter()
            .zip(bufs)
            .map(|(mut st, buf)| {
                let go = &go;
                s.spawn(move || -> io::Result<Instant> {
                    go.wait();
                    st.write_all(buf)?;
                    st.write_all(FLUSH)?;
                    let (reply, errors) = read_flush_reply(&mut BufReader::new(&st))?;
                    let sent = buf.iter().filter(|&&b| b == b'\n').count() as u64;
                    if reply["ok"] != true || reply["accepted"] != sent || !errors.is_empty() {
                        return Err(io::Error::other(format!(
                            "flush reply {reply} (sent {sent}); errors: {errors:?}"
                        )));
                    }
                    Ok(Instant::now())
                })
            })
            .collect();
        go.wait();
        let t0 = Instant::now();
        let mut end = t0;
        for h in handles {
            end = end.max(h.join().expect("client thread")?);
        }
        Ok(end - t0)
    })
}

// ---------------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------------

fn median(xs: &[f64]) -> f64 {
    percentile(xs, 50.0)
}

/// Nearest-rank percentile.
fn percentile(xs: &[f64], p: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn scratch(label: &str) -> io::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("loadgen-{label}-"))
        .disable_cleanup(std::env::var_os("LOADGEN_KEEP").is_some())
        .tempdir()
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{cores} cores, {cpu}, load average {} at start",
        load.join(" ")
    )
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

fn throughput(bins: &Bins, a: &ThroughputArgs) -> io::Result<()> {
    println!("## Throughput\n");
    println!(
        "{} events ({} for Python), {} models, default policies + ADWIN on error, flush at the end; {}; medians of {} runs ({} for Python).\n",
        a.events,
        a.python_events,
        a.models,
        machine(),
        a.runs,
        a.python_runs.min(a.runs)
    );
    let mut table = String::new();
    table.push_str("| connections | server | events/s | CPU µs/event | vs ceiling | vs Python |\n|---|---|---:|---:|---:|---:|\n");
    let python = bins.python.is_some() && !a.no_python;
    for &conns in &a.conns {
        let load = throughput_load(a.events, a.models, conns, 42);
        let py_load = throughput_load(a.python_events, a.models, conns, 43);
        let mut results: HashMap<Kind, (Vec<f64>, Vec<f64>)> = HashMap::new();
        for run in 0..a.runs {
            let mut kinds = vec![Kind::Ceiling, Kind::Daemon];
            if bins.compare.is_some() {
                kinds.push(Kind::Compare);
            }
            if a.daemon_only {
                kinds.remove(0);
            } else if python && run < a.python_runs {
                kinds.push(Kind::Python);
            }
            for kind in kinds {
                let dir = scratch("tp")?;
                let cfg = daemon_config(dir.path(), 500, "", "warn");
                let server = Server::start(bins, kind, dir.path(), &cfg)?;
                let bufs = if kind == Kind::Python {
                    &py_load
                } else {
                    &load
                };
                let events = events_in(bufs);
                let cpu0 = server.cpu_seconds();
                let faults0 = server.minor_faults();
                let threads0 = server.thread_cpu();
                let took = drive(&server.socket, bufs)?;
                let cpu = server.cpu_seconds() - cpu0;
                let faults = server.minor_faults().saturating_sub(faults0);
                if matches!(kind, Kind::Daemon | Kind::Compare) {
                    let mut split: Vec<(String, f64)> = server
                        .thread_cpu()
                        .into_iter()
                        .map(|(k, v)| {
                            let d = v - threads0.get(&k).copied().unwrap_or(0.0);
                            (k, d * 1e6 / events_in(bufs) as f64)
                        })
                        .filter(|(_, us)| *us >= 0.005)
                        .collect();
                    split.sort_by(|a, b| b.1.total_cmp(&a.1));
                    let split: Vec<String> =
                        split.iter().map(|(k, us)| format!("{k} {us:.3}")).collect();
                    eprintln!(
                        "  CPU µs/event by thread: {}; {:.2} page faults per 1,000 events",
                        split.join(", "),
                        faults as f64 * 1e3 / events as f64
                    );
                }
                server.stop()?;
                let rate = events as f64 / took.as_secs_f64();
                let cpu_us = cpu * 1e6 / events as f64;
                eprintln!(
                    "throughput conns={conns} run={run} {:<22} {:>10.0} events/s  {:.3} CPU µs/event",
                    kind.name(),
                    rate,
                    cpu_us
                );
                let e = results.entry(kind).or_default();
                e.0.push(rate);
                e.1.push(cpu_us);
            }
        }
        let med = |k: Kind| results.get(&k).map(|(r, c)| (median(r), median(c)));
        let ceiling = med(Kind::Ceiling);
        let py = med(Kind::Python);
        for kind in [Kind::Ceiling, Kind::Daemon, Kind::Compare, Kind::Python] {
            let Some((rate, cpu)) = med(kind) else {
                continue;
            };
            let ratio = |base: Option<(f64, f64)>| {
                base.map_or("".into(), |(b, bc)| {
                    format!("{:.1}% (CPU {:.1}%)", 100.0 * rate / b, 100.0 * bc / cpu)
                })
            };
            let vs_py = py.map_or("".into(), |(b, bc)| {
                format!("{:.1}× (CPU {:.1}×)", rate / b, bc / cpu)
            });
            let _ = writeln!(
                table,
                "| {conns} | {} | {:.0} | {:.3} | {} | {} |",
                kind.name(),
                rate,
                cpu,
                ratio(ceiling),
                vs_py
            );
        }
    }
    println!("{table}");
    Ok(())
}

fn latency(bins: &Bins, a: &LatencyArgs) -> io::Result<()> {
    println!("## Decision-to-hook latency\n");
    println!(
        "{} threshold crossings per run, one every {} ms, under {} background events/s over another connection; {}; medians of {} runs.\n",
        a.probes,
        a.interval_ms,
        a.rate,
        machine(),
        a.runs
    );
    // Per stage: (p50, p99, max) of each run.
    let mut stages: Vec<[Vec<f64>; 3]> = (0..3).map(|_| Default::default()).collect();
    for run in 0..a.runs {
        let dir = scratch("lat")?;
        let stamps = dir.path().join("stamps");
        let hook = format!("[{:?}, \"stamp\", {:?}]", bins.loadgen, stamps);
        let cfg = daemon_config(
            dir.path(),
            500,
            &format!(
                "full = {{ command = {hook}, timeout_s = 60 }}\nfine_tune = {{ command = {hook}, timeout_s = 60 }}"
            ),
            // The model actor's first decision line (one per probe) times the first stage.
            "info",
        );
        let server = Server::start(bins, Kind::Daemon, dir.path(), &cfg)?;
        let runs = latency_run(bins, &server, a, &stamps)?;
        server.stop()?;
        let decided = decision_times(&dir.path().join("Daemon.log"));
        let decision_ms: Vec<f64> = runs
            .sent
            .iter()
            .filter_map(|(m, sent)| Some((decided.get(m)? - sent) * 1e3))
            .collect();
        let mut line = format!("latency run={run}:");
        for (i, xs) in [&decision_ms, &runs.journal_ms, &runs.hook_ms]
            .into_iter()
            .enumerate()
        {
            let q = [50.0, 99.0, 100.0].map(|p| percentile(xs, p));
            for (k, v) in q.iter().enumerate() {
                stages[i][k].push(*v);
            }
            let _ = write!(
                line,
                " [{}] n={} p50 {:.3} p99 {:.3} max {:.3} ms;",
                ["decision", "journal", "hook"][i],
                xs.len(),
                q[0],
                q[1],
                q[2]
            );
        }
        eprintln!("{line}");
    }
    println!(
        "| from writing the crossing event to | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|"
    );
    for (i, what) in [
        "the model's decision (read, decoded, batched, applied; the daemon's log)",
        "the job's `started` in the journal (the hook runner journaled it; just before spawn)",
        "the hook process running (its first instruction stamps the time)",
    ]
    .iter()
    .enumerate()
    {
        println!(
            "| {what} | {:.3} | {:.3} | {:.3} |",
            median(&stages[i][0]),
            median(&stages[i][1]),
            median(&stages[i][2])
        );
    }
    println!();
    Ok(())
}

/// Unix seconds of each model's first decision in the daemon's log: a detector's "decision"
/// line, or a threshold policy's "policy started firing".
fn decision_times(log: &Path) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in fs::read_to_string(log).unwrap_or_default().lines() {
        if !line.contains(" decision ") && !line.contains(" policy started firing ") {
            continue;
        }
        let Some(t) = line.split_whitespace().next().and_then(parse_rfc3339) else {
            continue;
        };
        let Some(m) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("model_id="))
        else {
            continue;
        };
        out.entry(m.trim_matches('"').to_owned()).or_insert(t);
    }
    out
}

/// `2026-11-26T20:22:58.960558Z` (tracing's UTC timestamps) to Unix seconds.
fn parse_rfc3339(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    let ss = t.next()?.parse::<f64>().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + hh * 3600.0 + mm * 60.0 + ss)
}

/// What one latency run measured.
struct LatencyRun {
    /// Each probe model and when its crossing event was written (Unix seconds).
    sent: HashMap<String, f64>,
    journal_ms: Vec<f64>,
    hook_ms: Vec<f64>,
}

/// One latency run: the probes' send times and their latencies to the journal's `started` and
/// to the hook's stamp, in milliseconds.
fn latency_run(
    bins: &Bins,
    server: &Server,
    a: &LatencyArgs,
    stamps: &Path,
) -> io::Result<LatencyRun> {
    // Probe models exist (actors started, state loaded) before they are measured.
    let mut probe = UnixStream::connect(&server.socket)?;
    let mut rng = Rng(7);
    let mut warm = Vec::new();
    for k in 0..a.probes {
        calm_event(&mut warm, &mut rng, &format!("probe-{k:05}"), None, 0.0);
    }
    warm.extend_from_slice(FLUSH);
    probe.write_all(&warm)?;
    let mut probe_rd = BufReader::new(probe.try_clone()?);
    read_flush_reply(&mut probe_rd)?;

    // Background: `rate` calm events per second to 1,000 models, in 1 ms slices. Errors are
    // all 0 so ADWIN stays quiet and no background hook competes with the probes.
    let stop = Arc::new(AtomicBool::new(false));
    let per_ms = a.rate / 1000;
    let mut bg_buf = Vec::new();
    let mut offsets = vec![0];
    for i in 0..1000 * per_ms.max(1) {
        calm_event(&mut bg_buf, &mut rng, &model_name(i % 1000), None, 0.0);
        if (i + 1) % per_ms.max(1) == 0 {
            offsets.push(bg_buf.len());
        }
    }
    let bg = {
        let stop = stop.clone();
        let mut st = UnixStream::connect(&server.socket)?;
        thread::spawn(move || -> io::Result<u64> {
            let start = Instant::now();
            let mut slice = 0usize;
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let due = start + Duration::from_millis(slice as u64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
                let i = slice % (offsets.len() - 1);
                st.write_all(&bg_buf[offsets[i]..offsets[i + 1]])?;
                sent += per_ms as u64;
                slice += 1;
            }
            st.write_all(FLUSH)?;
            read_flush_reply(&mut BufReader::new(&st))?;
            Ok(sent)
        })
    };
    thread::sleep(Duration::from_millis(500));

    let mut sent_at = HashMap::new();
    let start = Instant::now();
    for k in 0..a.probes {
        let due = start + Duration::from_millis(k as u64 * a.interval_ms);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let line = format!("{{\"model_id\":\"probe-{k:05}\",\"drift_score\":0.9}}\n");
        let t = unix_nanos();
        probe.write_all(line.as_bytes())?;
        sent_at.insert(format!("probe-{k:05}"), t);
    }
    probe.write_all(FLUSH)?;
    read_flush_reply(&mut probe_rd)?;
    stop.store(true, Ordering::Relaxed);
    // Beside the hook's stamps, for a closer look at a kept run (LOADGEN_KEEP).
    let sent: String = sent_at.iter().map(|(m, t)| format!("{m} {t}\n")).collect();
    fs::write(stamps.with_file_name("sent"), sent)?;
    let bg_sent = bg.join().expect("background thread")?;
    let bg_secs = start.elapsed().as_secs_f64() + 0.5;
    eprintln!(
        "latency: background sent {bg_sent} events ({:.0}/s)",
        bg_sent as f64 / bg_secs
    );

    // Every probe's hook has run (or the deadline passed).
    let deadline = Instant::now() + Duration::from_secs(60);
    let stamped = loop {
        let text = fs::read_to_string(stamps).unwrap_or_default();
        let lines: Vec<(String, u128)> = text
            .lines()
            .filter_map(|l| {
                let (m, t) = l.split_once(' ')?;
                Some((m.to_owned(), t.parse().ok()?))
            })
            .collect();
        if lines.len() >= a.probes || Instant::now() > deadline {
            break lines;
        }
        thread::sleep(Duration::from_millis(20));
    };
    if stamped.len() < a.probes {
        eprintln!("latency: only {} of {} hooks ran", stamped.len(), a.probes);
    }
    let hook_ms: Vec<f64> = stamped
        .iter()
        .filter_map(|(m, t)| Some((*t as f64 - *sent_at.get(m)? as f64) / 1e6))
        .collect();

    let out = Command::new(&bins.daemon)
        .arg("--config")
        .arg(&server.config)
        .args(["history", "--json", "--limit"])
        .arg((a.probes * 2).to_string())
        .output()?;
    let jobs: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| io::Error::other(format!("history --json: {e}")))?;
    let journal_ms: Vec<f64> = jobs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| {
            let sent = *sent_at.get(j["model_id"].as_str()?)? as f64 / 1e9;
            Some((j["started"].as_f64()? - sent) * 1e3)
        })
        .collect();
    Ok(LatencyRun {
        sent: sent_at
            .into_iter()
            .map(|(m, t)| (m, t as f64 / 1e9))
            .collect(),
        journal_ms,
        hook_ms,
    })
}

fn recovery(bins: &Bins, a: &RecoveryArgs) -> io::Result<()> {
    println!("## Recovery\n");
    let dir = scratch("rec")?;
    let cfg = daemon_config(dir.path(), a.window, "", "warn");
    // Seed: every model gets `window` events, so every window is full, over 4 connections.
    let seed_events = a.models * a.window;
    {
        let server = Server::start(bins, Kind::Daemon, dir.path(), &cfg)?;
        let conns = 4;
        let names: Vec<String> = (0..a.models).map(model_name).collect();
        let mut rng = Rng(11);
        let mut bufs = vec![Vec::new(); conns];
        for round in 0..a.window {
            for (i, m) in names.iter().enumerate() {
                calm_event(
                    &mut bufs[i % conns],
                    &mut rng,
                    m,
                    Some(TS0 + round as f64),
                    0.05,
                );
            }
        }
        let took = drive(&server.socket, &bufs)?;
        eprintln!(
            "recovery: seeded {} models x {} events in {:.1} s ({:.0} events/s)",
            a.models,
            a.window,
            took.as_secs_f64(),
            seed_events as f64 / took.as_secs_f64()
        );
        server.stop()?;
    }
    let db_bytes = dir_size(&dir.path().join("state"));
    println!(
        "{} models, each with a full {}-value drift window and ADWIN state, {:.1} MiB on disk; {}; medians of {} runs.\n",
        a.models,
        a.window,
        db_bytes as f64 / (1 << 20) as f64,
        machine(),
        a.runs
    );
    let mut ready_ms = Vec::new();
    let mut rss_ready = Vec::new();
    let mut loaded_ms = Vec::new();
    let mut rss_loading = Vec::new();
    let mut rss_loaded = Vec::new();
    let mut rss_unloaded = Vec::new();
    const IDLE: Duration = Duration::from_secs(3);
    // The runs unload idle models after `unload_s` (the seeding run above never idles that
    // long); then the trim that follows a burst of unloads needs a second or two.
    let unload = Duration::from_secs(a.unload_s.max(IDLE.as_secs() + 1));
    let run_cfg = cfg.replacen(
        "[daemon]\n",
        &format!("[daemon]\nmodel_idle_unload_s = {}\n", unload.as_secs()),
        1,
    );
    // Touch every model once: its actor starts and reloads its full state.
    let mut touch = Vec::new();
    let mut rng = Rng(12);
    for i in 0..a.models {
        calm_event(&mut touch, &mut rng, &model_name(i), None, 0.05);
    }
    for run in 0..a.runs {
        let mut server = Server::start(bins, Kind::Daemon, dir.path(), &run_cfg)?;
        let ready = server.wait_connectable()?;
        let rss0 = server.rss_kib();
        drive(&server.socket, std::slice::from_ref(&touch))?;
        let loaded = server.spawned.elapsed();
        let rss_busy = server.rss_kib();
        // Idle models: the coalesced writes of the touch are done, and so is the heap trim
        // the daemon schedules a second after a burst of loads.
        thread::sleep(IDLE);
        let rss1 = server.rss_kib();
        thread::sleep(unload + Duration::from_secs(3) - IDLE);
        let rss2 = server.rss_kib();
        server.stop()?;
        eprintln!(
            "recovery run={run}: ready {:.1} ms (RSS {} KiB), all loaded {:.1} ms (RSS {} KiB, {} KiB after {} s idle, {} KiB after unloading)",
            ready.as_secs_f64() * 1e3,
            rss0,
            loaded.as_secs_f64() * 1e3,
            rss_busy,
            rss1,
            IDLE.as_secs(),
            rss2
        );
        rss_unloaded.push(rss2 as f64);
        ready_ms.push(ready.as_secs_f64() * 1e3);
        rss_ready.push(rss0 as f64);
        loaded_ms.push(loaded.as_secs_f64() * 1e3);
        rss_loading.push(rss_busy as f64);
        rss_loaded.push(rss1 as f64);
    }
    let per_model = (median(&rss_loaded) - median(&rss_ready)) * 1024.0 / a.models as f64;
    let window_bytes = a.window * 8;
    println!("| measure | median |\n|---|---:|");
    println!(
        "| start to READY (ingest socket accepts) | {:.1} ms |",
        median(&ready_ms)
    );
    println!(
        "| resident memory at READY | {:.1} MiB |",
        median(&rss_ready) / 1024.0
    );
    println!(
        "| start to every model loaded (one event each, flushed) | {:.1} ms |",
        median(&loaded_ms)
    );
    println!(
        "| resident memory just after every model loaded | {:.1} MiB |",
        median(&rss_loading) / 1024.0
    );
    println!(
        "| resident memory with every model loaded, {} s idle | {:.1} MiB |",
        IDLE.as_secs(),
        median(&rss_loaded) / 1024.0
    );
    println!(
        "| memory per idle model, loaded | {:.0} B ({:.0} B beyond its {window_bytes} B drift window) |",
        per_model,
        per_model - window_bytes as f64
    );
    println!(
        "| resident memory after the idle models were unloaded ({} s) | {:.1} MiB |",
        unload.as_secs(),
        median(&rss_unloaded) / 1024.0
    );
    println!(
        "| memory per idle model, unloaded | {:.0} B |\n",
        (median(&rss_unloaded) - median(&rss_ready)) * 1024.0 / a.models as f64
    );
    Ok(())
}

fn dir_size(p: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(p) else {
        return fs::metadata(p).map_or(0, |m| m.len());
    };
    rd.filter_map(Result::ok)
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                dir_size(&path)
            } else {
                e.metadata().map_or(0, |m| m.len())
            }
        })
        .sum()
}

fn flush(bins: &Bins, a: &FlushArgs) -> io::Result<()> {
    println!("## Flush round trip\n");
    println!(
        "{} flushes per run, each after {} events to {} models of 1,000 (so each flush writes and fsyncs {} models' state); {}; medians of {} runs.\n",
        a.iters,
        a.batch,
        a.batch,
        a.batch,
        machine(),
        a.runs
    );
    let mut kinds = vec![Kind::Daemon];
    if bins.python.is_some() && !a.no_python {
        kinds.push(Kind::Python);
    }
    let mut res: HashMap<Kind, (Vec<f64>, Vec<f64>)> = HashMap::new();
    for run in 0..a.runs {
        for &kind in &kinds {
            let dir = scratch("fl")?;
            let cfg = daemon_config(dir.path(), 500, "", "warn");
            let server = Server::start(bins, kind, dir.path(), &cfg)?;
            let mut st = UnixStream::connect(&server.socket)?;
            let mut rd = BufReader::new(st.try_clone()?);
            let mut rng = Rng(5);
            // Every model exists and has state before the clock starts.
            let mut warm = Vec::new();
            for i in 0..1000 {
                calm_event(&mut warm, &mut rng, &model_name(i), None, 0.05);
            }
            warm.extend_from_slice(FLUSH);
            st.write_all(&warm)?;
            read_flush_reply(&mut rd)?;
            let mut samples = Vec::with_capacity(a.iters);
            let mut buf = Vec::new();
            for i in 0..a.iters {
                buf.clear();
                for j in 0..a.batch {
                    calm_event(
                        &mut buf,
                        &mut rng,
                        &model_name((i * a.batch + j) % 1000),
                        None,
                        0.05,
                    );
                }
                buf.extend_from_slice(FLUSH);
                let t = Instant::now();
                st.write_all(&buf)?;
                let (reply, _) = read_flush_reply(&mut rd)?;
                samples.push(t.elapsed().as_secs_f64() * 1e3);
                if reply["ok"] != true {
                    return Err(io::Error::other(format!("flush failed: {reply}")));
                }
            }
            server.stop()?;
            let (p50, p99) = (percentile(&samples, 50.0), percentile(&samples, 99.0));
            eprintln!(
                "flush run={run} {:<16} p50 {p50:.3} ms p99 {p99:.3} ms",
                kind.name()
            );
            let e = res.entry(kind).or_default();
            e.0.push(p50);
            e.1.push(p99);
        }
    }
    println!("| server | p50 ms | p99 ms |\n|---|---:|---:|");
    for kind in kinds {
        let (p50, p99) = &res[&kind];
        println!(
            "| {} | {:.3} | {:.3} |",
            kind.name(),
            median(p50),
            median(p99)
        );
    }
    println!();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Wear: steady, low, paced load
// ---------------------------------------------------------------------------------------------

/// Events every model gets before the measured window, as fast as they go: more than the
/// 500-event drift window, so the window measures steady state rather than warm-up.
const WEAR_FILL: usize = 600;

/// The paced sender's tick: every tick, one write per connection of the events due in it.
const WEAR_TICK: Duration = Duration::from_millis(10);

/// The idle phase's first second is not measured: a last background flush may still run.
const WEAR_IDLE_SKIP: Duration = Duration::from_secs(1);

/// The file system a path is on, from /proc/self/mountinfo.
struct Mount {
    fstype: String,
    source: String,
    /// `MAJOR:MINOR`, for the device's counters in /sys/dev/block.
    device: String,
}

impl Mount {
    /// The mount holding `path`: the longest mount point that is a prefix of it.
    fn of(path: &Path) -> Option<Mount> {
        let path = fs::canonicalize(path).ok()?;
        let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
        info.lines()
            .filter_map(|l| {
                let (pre, post) = l.split_once(" - ")?;
                let pre: Vec<&str> = pre.split_whitespace().collect();
                let mut post = post.split_whitespace();
                let point = Path::new(pre.get(4)?);
                path.starts_with(point).then(|| {
                    let m = Mount {
                        device: pre.get(2)?.to_string(),
                        fstype: post.next()?.to_owned(),
                        source: post.next()?.to_owned(),
                    };
                    Some((point.components().count(), m))
                })?
            })
            .max_by_key(|(depth, _)| *depth)
            .map(|(_, m)| m)
    }

    /// Whether writes to it reach a disk (and `write_bytes` can count them).
    fn is_disk(&self) -> bool {
        !matches!(self.fstype.as_str(), "tmpfs" | "ramfs")
    }

    /// Sectors (512 B) written to the device so far, by every process and the kernel.
    fn sectors_written(&self) -> Option<u64> {
        let stat = fs::read_to_string(format!("/sys/dev/block/{}/stat", self.device)).ok()?;
        stat.split_whitespace().nth(6)?.parse().ok()
    }
}

/// A scratch directory on a disk file system: on tmpfs `write_bytes` is always 0. The system's
/// temporary directory, else /var/tmp, else the target directory.
fn disk_scratch(bins: &Bins, label: &str) -> io::Result<(tempfile::TempDir, Mount)> {
    let mut bases = vec![std::env::temp_dir(), PathBuf::from("/var/tmp")];
    bases.extend(
        bins.loadgen
            .parent()
            .and_then(Path::parent)
            .map(Path::to_owned),
    );
    for base in bases {
        if let Some(mount) = Mount::of(&base).filter(Mount::is_disk) {
            let dir = tempfile::Builder::new()
                .prefix(&format!("loadgen-{label}-"))
                .disable_cleanup(std::env::var_os("LOADGEN_KEEP").is_some())
                .tempdir_in(&base)?;
            return Ok((dir, mount));
        }
    }
    Err(io::Error::other(
        "no scratch directory on a disk file system (TMPDIR, /var/tmp and the target directory are all tmpfs)",
    ))
}

/// One thread's counters.
#[derive(Clone)]
struct ThreadSample {
    name: String,
    voluntary: u64,
    nonvoluntary: u64,
    /// On-CPU seconds, from /proc/PID/task/TID/schedstat (nanoseconds; stat's clock ticks
    /// are too coarse for an idle thread).
    cpu: f64,
}

/// A server process's counters at one moment, from /proc.
struct ProcSample {
    at: Instant,
    /// `wchar` of /proc/PID/io: bytes passed to write(2) and friends (files, sockets, logs).
    wchar: u64,
    /// `write_bytes`: bytes this process caused to be sent to the block layer.
    write_bytes: u64,
    /// `syscw`: write calls (an eventfd wakeup is one, of 8 bytes of `wchar`).
    syscw: u64,
    /// User + system CPU seconds of the process (exited threads included).
    cpu: f64,
    threads: HashMap<u32, ThreadSample>,
    /// Sectors written to the scratch directory's device, by anyone.
    device_sectors: Option<u64>,
}

impl Server {
    fn sample(&self, mount: &Mount) -> io::Result<ProcSample> {
        let at = Instant::now();
        let pid = self.pid();
        let io_text = fs::read_to_string(format!("/proc/{pid}/io"))?;
        let field = |name: &str| -> io::Result<u64> {
            io_text
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| io::Error::other(format!("/proc/{pid}/io has no {name}")))
        };
        let (wchar, write_bytes, syscw) = (field("wchar")?, field("write_bytes")?, field("syscw")?);
        let mut threads = HashMap::new();
        for t in fs::read_dir(format!("/proc/{pid}/task"))?.filter_map(Result::ok) {
            let Some(tid) = t.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            // A thread may exit between the directory listing and these reads: skipped.
            let (Ok(comm), Ok(status), Ok(sched)) = (
                fs::read_to_string(t.path().join("comm")),
                fs::read_to_string(t.path().join("status")),
                fs::read_to_string(t.path().join("schedstat")),
            ) else {
                continue;
            };
            let switches = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0)
            };
            let ns: u64 = sched
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            threads.insert(
                tid,
                ThreadSample {
                    name: comm.trim().to_owned(),
                    voluntary: switches("voluntary_ctxt_switches"),
                    nonvoluntary: switches("nonvoluntary_ctxt_switches"),
                    cpu: ns as f64 / 1e9,
                },
            );
        }
        Ok(ProcSample {
            at,
            wchar,
            write_bytes,
            syscw,
            cpu: self.cpu_seconds(),
            threads,
            device_sectors: mount.sectors_written(),
        })
    }
}

/// The threads of one name over a phase (tokio's workers share one).
#[derive(Clone, Default)]
struct ThreadCost {
    name: String,
    count: usize,
    voluntary_per_s: f64,
    nonvoluntary_per_s: f64,
    /// Share of one core.
    cpu_share: f64,
}

/// What a phase cost the server: the differences of two samples.
#[derive(Clone, Default)]
struct PhaseCost {
    secs: f64,
    wchar: u64,
    write_bytes: u64,
    syscw: u64,
    /// User + system seconds (/proc/PID/stat, in clock ticks).
    cpu: f64,
    /// On-CPU seconds of the threads alive at the end (schedstat, nanoseconds).
    cpu_threads: f64,
    voluntary: u64,
    nonvoluntary: u64,
    /// By thread name, most wakeups first.
    threads: Vec<ThreadCost>,
    /// Threads that exited during the phase: their last switches are not counted.
    exited: usize,
    /// Bytes written to the scratch directory's whole device, by anyone (journal included).
    device_bytes: Option<u64>,
}

impl PhaseCost {
    fn between(a: &ProcSample, b: &ProcSample) -> PhaseCost {
        let secs = (b.at - a.at).as_secs_f64();
        let mut by_name: HashMap<&str, (usize, u64, u64, f64)> = HashMap::new();
        let (mut voluntary, mut nonvoluntary, mut cpu_threads) = (0, 0, 0.0);
        for (tid, t) in &b.threads {
            // A thread started during the phase counts from zero.
            let t0 = a.threads.get(tid).filter(|t0| t0.name == t.name);
            let v = t.voluntary - t0.map_or(0, |t0| t0.voluntary.min(t.voluntary));
            let n = t.nonvoluntary - t0.map_or(0, |t0| t0.nonvoluntary.min(t.nonvoluntary));
            let c = (t.cpu - t0.map_or(0.0, |t0| t0.cpu)).max(0.0);
            let e = by_name.entry(&t.name).or_default();
            *e = (e.0 + 1, e.1 + v, e.2 + n, e.3 + c);
            voluntary += v;
            nonvoluntary += n;
            cpu_threads += c;
        }
        let mut threads: Vec<ThreadCost> = by_name
            .into_iter()
            .map(|(name, (count, v, n, c))| ThreadCost {
                name: name.to_owned(),
                count,
                voluntary_per_s: v as f64 / secs,
                nonvoluntary_per_s: n as f64 / secs,
                cpu_share: c / secs,
            })
            .collect();
        threads.sort_by(|x, y| {
            y.voluntary_per_s
                .total_cmp(&x.voluntary_per_s)
                .then_with(|| x.name.cmp(&y.name))
        });
        PhaseCost {
            secs,
            wchar: b.wchar.saturating_sub(a.wchar),
            write_bytes: b.write_bytes.saturating_sub(a.write_bytes),
            syscw: b.syscw.saturating_sub(a.syscw),
            cpu: (b.cpu - a.cpu).max(0.0),
            cpu_threads,
            voluntary,
            nonvoluntary,
            threads,
            exited: a
                .threads
                .keys()
                .filter(|k| !b.threads.contains_key(k))
                .count(),
            device_bytes: a
                .device_sectors
                .zip(b.device_sectors)
                .map(|(x, y)| y.saturating_sub(x) * 512),
        }
    }

    fn voluntary_per_s(&self) -> f64 {
        self.voluntary as f64 / self.secs
    }

    fn nonvoluntary_per_s(&self) -> f64 {
        self.nonvoluntary as f64 / self.secs
    }

    fn cpu_share(&self) -> f64 {
        self.cpu / self.secs
    }

    fn json(&self, events: u64) -> serde_json::Value {
        let per_event = |b: u64| b as f64 / events.max(1) as f64;
        let per_day = |b: u64| b as f64 / self.secs * 86_400.0 / 1e9;
        serde_json::json!({
            "secs": self.secs,
            "wchar": self.wchar,
            "write_bytes": self.write_bytes,
            "wchar_per_event": per_event(self.wchar),
            "write_bytes_per_event": per_event(self.write_bytes),
            "wchar_gb_per_day": per_day(self.wchar),
            "write_bytes_gb_per_day": per_day(self.write_bytes),
            "device_bytes": self.device_bytes,
            "syscw": self.syscw,
            "syscw_per_s": self.syscw as f64 / self.secs,
            "cpu_s": self.cpu,
            "cpu_share": self.cpu_share(),
            "cpu_threads_s": self.cpu_threads,
            "cpu_us_per_event": self.cpu * 1e6 / events.max(1) as f64,
            "voluntary": self.voluntary,
            "nonvoluntary": self.nonvoluntary,
            "voluntary_per_s": self.voluntary_per_s(),
            "nonvoluntary_per_s": self.nonvoluntary_per_s(),
            "threads_exited": self.exited,
            "threads": self.threads.iter().map(|t| serde_json::json!({
                "name": t.name,
                "count": t.count,
                "voluntary_per_s": t.voluntary_per_s,
                "nonvoluntary_per_s": t.nonvoluntary_per_s,
                "cpu_share": t.cpu_share,
            })).collect::<Vec<_>>(),
        })
    }
}

/// One server's wear run.
struct WearRun {
    /// Events accepted during the measured window (from the flush replies).
    events: u64,
    load: PhaseCost,
    idle: PhaseCost,
    /// VmRSS at the end of the window.
    rss_kib: u64,
    fill_secs: f64,
    /// How late the paced sender's latest tick was (the load's pacing is only as good as this).
    max_late_ms: f64,
    /// The daemon's `visutility_decisions_total` and `visutility_store_size_bytes` at the end.
    decisions: Option<f64>,
    store_bytes: Option<f64>,
}

impl WearRun {
    fn per_event(&self, bytes: u64) -> f64 {
        bytes as f64 / self.events.max(1) as f64
    }
}

fn wear(bins: &Bins, a: &WearArgs) -> io::Result<()> {
    println!("## Wear: steady, low, paced load\n");
    if a.idle_seconds <= WEAR_IDLE_SKIP.as_secs() {
        return Err(io::Error::other("--idle-seconds must be at least 2"));
    }
    if a.conns == 0 || a.runs == 0 || a.seconds == 0 {
        return Err(io::Error::other(
            "--conns, --runs and --seconds must be at least 1",
        ));
    }
    if let Some(p) = &bins.compare
        && !p.exists()
    {
        return Err(io::Error::other(format!("{} does not exist", p.display())));
    }
    let mut kinds = vec![Kind::Daemon];
    if bins.compare.is_some() {
        kinds.push(Kind::Compare);
    }
    if bins.python.is_some() && !a.no_python {
        kinds.push(Kind::Python);
    }
    let (probe, mount) = disk_scratch(bins, "wear")?;
    drop(probe);
    println!(
        "Per profile: a fill of {WEAR_FILL} events to every model as fast as they go and a flush (every window full), then {} s of paced load over {} connection(s) (one write per connection every {} ms of the events due in it; no flush op), then {} s without events with the connections open, of which the first {} s is not measured (a last background flush may finish); one flush at the end, after the counters are read. Default policies + ADWIN on error, 500-event drift window{}, flush_interval_ms {}, no hooks. Measured on the server process from /proc: `wchar` (bytes passed to write calls: files, sockets, eventfd wakeups, logs) and `write_bytes` (bytes it sent towards the disk) of /proc/PID/io; CPU (utime + stime) as a share of one core; wakeups = voluntary context switches summed over its threads (/proc/PID/task/*/status); VmRSS at the end of the window. Scratch directories on {} ({}); {}; medians of {} run(s).\n",
        a.seconds,
        a.conns,
        WEAR_TICK.as_millis(),
        a.idle_seconds,
        WEAR_IDLE_SKIP.as_secs(),
        if a.probation {
            ", a probation on accuracy (events = 2000; no retrain, so none runs: the cost of the values kept)"
        } else {
            ""
        },
        std::env::var("LOADGEN_FLUSH_MS").unwrap_or_else(|_| "200".into()),
        mount.fstype,
        mount.source,
        machine(),
        a.runs
    );
    for &profile in &a.profiles {
        let mut results: HashMap<Kind, Vec<WearRun>> = HashMap::new();
        for run in 0..a.runs {
            for &kind in &kinds {
                let (dir, mount) = disk_scratch(bins, "wear")?;
                let r = wear_run(bins, kind, dir.path(), &mount, profile, a)?;
                eprintln!(
                    "wear {profile} run={run} {:<27} {} events in {:.1} s (fill {:.3} s, sender at most {:.1} ms late): wchar {:.1} B/event, write_bytes {:.1} B/event, device {:.1} B/event, CPU {:.2}% of a core, {:.1} wakeups/s ({:.1} involuntary), RSS {:.1} MiB; idle {:.0} s: wchar {} B, write_bytes {} B, {:.2} wakeups/s{}{}",
                    kind.name(),
                    r.events,
                    r.load.secs,
                    r.fill_secs,
                    r.max_late_ms,
                    r.per_event(r.load.wchar),
                    r.per_event(r.load.write_bytes),
                    r.load.device_bytes.map_or(f64::NAN, |b| r.per_event(b)),
                    100.0 * r.load.cpu_share(),
                    r.load.voluntary_per_s(),
                    r.load.nonvoluntary_per_s(),
                    r.rss_kib as f64 / 1024.0,
                    r.idle.secs,
                    r.idle.wchar,
                    r.idle.write_bytes,
                    r.idle.voluntary_per_s(),
                    r.decisions
                        .map_or(String::new(), |d| format!("; {d} decisions")),
                    r.store_bytes.map_or(String::new(), |b| format!(
                        "; store {:.1} MiB",
                        b / (1 << 20) as f64
                    )),
                );
                let split = |p: &PhaseCost| -> String {
                    p.threads
                        .iter()
                        .filter(|t| t.voluntary_per_s + t.nonvoluntary_per_s >= 0.05)
                        .map(|t| {
                            format!(
                                "{}{} {:.1}/s",
                                t.name,
                                if t.count > 1 {
                                    format!(" (x{})", t.count)
                                } else {
                                    String::new()
                                },
                                t.voluntary_per_s
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                eprintln!("  wakeups by thread, load: {}", split(&r.load));
                eprintln!("  wakeups by thread, idle: {}", split(&r.idle));
                if a.json {
                    let exe = match kind {
                        Kind::Compare => bins.compare.clone(),
                        Kind::Python => bins.python.clone(),
                        _ => Some(bins.daemon.clone()),
                    };
                    let v = serde_json::json!({
                        "scenario": "wear",
                        "unix_time": unix_nanos() as f64 / 1e9,
                        "profile": profile.to_string(),
                        "models": profile.models,
                        "events_per_s_per_model": profile.rate,
                        "events_per_s": profile.models * profile.rate,
                        "conns": a.conns,
                        "flush_interval_ms": std::env::var("LOADGEN_FLUSH_MS").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(200),
                        "run": run,
                        "server": kind.name(),
                        "binary": exe,
                        "fs": mount.fstype,
                        "fs_source": mount.source,
                        "fill_events_per_model": WEAR_FILL,
                        "fill_s": r.fill_secs,
                        "sender_max_late_ms": r.max_late_ms,
                        "events": r.events,
                        "load": r.load.json(r.events),
                        "rss_kib": r.rss_kib,
                        "idle_skipped_s": WEAR_IDLE_SKIP.as_secs_f64(),
                        "idle": r.idle.json(r.events),
                        "decisions": r.decisions,
                        "store_bytes": r.store_bytes,
                    });
                    println!("{v}");
                }
                results.entry(kind).or_default().push(r);
            }
        }
        wear_table(profile, a, &kinds, &results);
    }
    Ok(())
}

/// A target from the wear issue, checked against one daemon's figure.
#[derive(Clone, Copy)]
enum Target {
    None,
    /// At most this much.
    AtMost(f64),
    /// At most a quarter of Python's figure.
    QuarterOfPython,
}

fn wear_table(
    profile: Profile,
    a: &WearArgs,
    kinds: &[Kind],
    results: &HashMap<Kind, Vec<WearRun>>,
) {
    let rate = (profile.models * profile.rate) as f64;
    type Get = fn(&WearRun) -> f64;
    let rows: Vec<(String, Get, usize, Target, &str)> = vec![
        (
            "events accepted in the window".into(),
            |r| r.events as f64,
            0,
            Target::None,
            "",
        ),
        (
            "load: `wchar` per event (B)".into(),
            |r| r.per_event(r.load.wchar),
            1,
            Target::AtMost(64.0),
            "≤ 64",
        ),
        (
            "load: `write_bytes` per event (B)".into(),
            |r| r.per_event(r.load.write_bytes),
            1,
            Target::AtMost(64.0),
            "≤ 64",
        ),
        (
            format!("load: `wchar` per day at {rate:.0} events/s (GB)"),
            |r| r.load.wchar as f64 / r.load.secs * 86_400.0 / 1e9,
            2,
            Target::None,
            "",
        ),
        (
            format!("load: `write_bytes` per day at {rate:.0} events/s (GB)"),
            |r| r.load.write_bytes as f64 / r.load.secs * 86_400.0 / 1e9,
            2,
            Target::None,
            "",
        ),
        (
            "load: whole device's writes per event (B; journal, metadata, other processes)".into(),
            |r| r.load.device_bytes.map_or(f64::NAN, |b| r.per_event(b)),
            1,
            Target::None,
            "",
        ),
        (
            "load: CPU (% of one core)".into(),
            |r| 100.0 * r.load.cpu_share(),
            2,
            Target::QuarterOfPython,
            "≤ ¼ of Python's",
        ),
        (
            "load: CPU per event (µs)".into(),
            |r| r.load.cpu * 1e6 / r.events.max(1) as f64,
            2,
            Target::None,
            "",
        ),
        (
            "load: wakeups/s (voluntary switches)".into(),
            |r| r.load.voluntary_per_s(),
            1,
            Target::None,
            "",
        ),
        (
            "load: involuntary switches/s".into(),
            |r| r.load.nonvoluntary_per_s(),
            1,
            Target::None,
            "",
        ),
        (
            "load: write calls/s (`syscw`; an eventfd wakeup is one, 8 B of `wchar`)".into(),
            |r| r.load.syscw as f64 / r.load.secs,
            1,
            Target::None,
            "",
        ),
        (
            "resident memory at the end of the window (MiB)".into(),
            |r| r.rss_kib as f64 / 1024.0,
            1,
            Target::AtMost(24.0),
            "≤ 24",
        ),
        (
            format!(
                "idle ({} s measured): `wchar` (B)",
                a.idle_seconds - WEAR_IDLE_SKIP.as_secs()
            ),
            |r| r.idle.wchar as f64,
            0,
            Target::AtMost(0.0),
            "0",
        ),
        (
            "idle: `write_bytes` (B)".into(),
            |r| r.idle.write_bytes as f64,
            0,
            Target::AtMost(0.0),
            "0",
        ),
        (
            "idle: wakeups/s".into(),
            |r| r.idle.voluntary_per_s(),
            2,
            Target::AtMost(1.0),
            "≤ 1",
        ),
        (
            "idle: involuntary switches/s".into(),
            |r| r.idle.nonvoluntary_per_s(),
            2,
            Target::None,
            "",
        ),
        (
            "idle: write calls/s (`syscw`)".into(),
            |r| r.idle.syscw as f64 / r.idle.secs,
            2,
            Target::None,
            "",
        ),
        (
            "idle: CPU (% of one core; its threads' schedstat, finer than stat's ticks)".into(),
            |r| 100.0 * r.idle.cpu_threads / r.idle.secs,
            4,
            Target::None,
            "",
        ),
    ];
    let med = |k: Kind, get: Get| -> Option<f64> {
        let v: Vec<f64> = results.get(&k)?.iter().map(get).collect();
        Some(median(&v))
    };
    let daemons: Vec<Kind> = kinds
        .iter()
        .copied()
        .filter(|k| *k != Kind::Python)
        .collect();
    let python = kinds.contains(&Kind::Python);
    println!(
        "### {} models x {} events/s = {rate:.0} events/s\n",
        profile.models, profile.rate
    );
    let mut head = String::from("| metric |");
    let mut rule = String::from("|---|");
    for k in &daemons {
        let _ = write!(head, " {} |", k.name());
        rule.push_str("---:|");
    }
    if python {
        head.push_str(" Python + River |");
        rule.push_str("---:|");
        for k in &daemons {
            let _ = write!(head, " {} ÷ Python |", k.name());
            rule.push_str("---:|");
        }
    }
    head.push_str(" target |");
    rule.push_str("---|");
    println!("{head}\n{rule}");
    for (label, get, digits, target, target_text) in rows {
        let py = med(Kind::Python, get);
        let mut line = format!("| {label} |");
        for &k in &daemons {
            let v = med(k, get).unwrap_or(f64::NAN);
            let mark = match target {
                Target::None => None,
                Target::AtMost(t) => Some(v <= t),
                Target::QuarterOfPython => py.map(|p| v <= p / 4.0),
            };
            let mark = match mark {
                Some(true) => " ✓",
                Some(false) => " ✗",
                None => "",
            };
            let _ = write!(line, " {}{mark} |", fmt_num(v, digits));
        }
        if let Some(p) = py.filter(|_| python) {
            let _ = write!(line, " {} |", fmt_num(p, digits));
            for &k in &daemons {
                let v = med(k, get).unwrap_or(f64::NAN);
                let _ = write!(line, " {} |", fmt_ratio(v, p));
            }
        }
        let _ = write!(line, " {target_text} |");
        println!("{line}");
    }
    println!(
        "\nPer day: the window's bytes per second x 86,400 (GB = 10^9 B) at this profile's {rate:.0} events/s; it scales linearly with the event rate only where the writes are per event (a log), while rewriting whole records costs per dirty model per flush interval.\n"
    );
    // Which threads woke up: where the store's and the runtime's timers are.
    for &k in kinds {
        let Some(runs) = results.get(&k) else {
            continue;
        };
        let mut names: Vec<String> = runs
            .iter()
            .flat_map(|r| r.load.threads.iter().chain(&r.idle.threads))
            .map(|t| t.name.clone())
            .collect();
        names.sort();
        names.dedup();
        let pick = |p: fn(&WearRun) -> &PhaseCost, name: &str, f: fn(&ThreadCost) -> f64| {
            let v: Vec<f64> = runs
                .iter()
                .map(|r| p(r).threads.iter().find(|t| t.name == name).map_or(0.0, f))
                .collect();
            median(&v)
        };
        let mut rows: Vec<(String, [f64; 5], usize)> = names
            .into_iter()
            .map(|n| {
                let count = runs
                    .iter()
                    .flat_map(|r| r.load.threads.iter().chain(&r.idle.threads))
                    .filter(|t| t.name == n)
                    .map(|t| t.count)
                    .max()
                    .unwrap_or(0);
                let v = [
                    pick(|r| &r.load, &n, |t| t.voluntary_per_s),
                    pick(|r| &r.load, &n, |t| t.nonvoluntary_per_s),
                    pick(|r| &r.load, &n, |t| 100.0 * t.cpu_share),
                    pick(|r| &r.idle, &n, |t| t.voluntary_per_s),
                    pick(|r| &r.idle, &n, |t| t.nonvoluntary_per_s),
                ];
                (n, v, count)
            })
            .collect();
        rows.sort_by(|x, y| {
            y.1[0]
                .total_cmp(&x.1[0])
                .then_with(|| y.1[3].total_cmp(&x.1[3]))
        });
        let exited: Vec<usize> = runs.iter().map(|r| r.load.exited + r.idle.exited).collect();
        println!(
            "{} by thread (name from /proc/PID/task/TID/comm; threads of one name summed):\n",
            k.name()
        );
        println!(
            "| thread | threads | load: wakeups/s | load: involuntary/s | load: CPU % | idle: wakeups/s | idle: involuntary/s |\n|---|---:|---:|---:|---:|---:|---:|"
        );
        for (n, v, count) in rows {
            // Thread names may hold '|' (actix's "actix-rt|system"), which would split the cell.
            let n = n.replace('|', "\\|");
            println!(
                "| {n} | {count} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} |",
                v[0], v[1], v[2], v[3], v[4]
            );
        }
        if exited.iter().any(|&e| e > 0) {
            println!(
                "\n{} thread(s) exited during the phases (most in a run); their switches after the phase started are not counted.",
                exited.iter().max().unwrap_or(&0)
            );
        }
        println!();
    }
}

fn fmt_num(v: f64, digits: usize) -> String {
    if v.is_nan() {
        "n/a".into()
    } else {
        format!("{v:.digits$}")
    }
}

/// `v / base`, with enough digits to tell small ratios apart.
fn fmt_ratio(v: f64, base: f64) -> String {
    if v.is_nan() || base.is_nan() {
        return String::new();
    }
    if base == 0.0 {
        return if v == 0.0 { "=".into() } else { "n/a".into() };
    }
    let r = v / base;
    match r {
        r if r >= 10.0 => format!("{r:.0}×"),
        r if r >= 0.1 => format!("{r:.2}×"),
        r => format!("{r:.4}×"),
    }
}

/// One server through fill, paced window and idle phase.
fn wear_run(
    bins: &Bins,
    kind: Kind,
    dir: &Path,
    mount: &Mount,
    profile: Profile,
    a: &WearArgs,
) -> io::Result<WearRun> {
    let mut cfg = daemon_config(dir, 500, "", "warn");
    if a.probation && kind != Kind::Python {
        cfg.push_str(PROBATION_CONFIG);
    }
    let server = Server::start(bins, kind, dir, &cfg)?;
    let names: Vec<String> = (0..profile.models).map(model_name).collect();
    let conns = a.conns.min(profile.models);
    let mut streams = (0..conns)
        .map(|_| UnixStream::connect(&server.socket))
        .collect::<io::Result<Vec<_>>>()?;
    let mut readers = streams
        .iter()
        .map(|s| s.try_clone().map(BufReader::new))
        .collect::<io::Result<Vec<_>>>()?;
    let mut rng = Rng(0x5eed ^ profile.models as u64);
    // Each model's events are 1/rate apart in `ts`, the fill's before the window's.
    let spacing = 1.0 / profile.rate as f64;

    // Fill: every window full, then a flush so the fill's state is written before the window.
    let mut bufs = vec![Vec::new(); conns];
    for round in 0..WEAR_FILL {
        for (i, m) in names.iter().enumerate() {
            let ts = TS0 + round as f64 * spacing;
            calm_event(&mut bufs[i % conns], &mut rng, m, Some(ts), 0.05);
        }
    }
    let t = Instant::now();
    for (st, buf) in streams.iter_mut().zip(&bufs) {
        st.write_all(buf)?;
        st.write_all(FLUSH)?;
    }
    let mut filled = Vec::with_capacity(conns);
    for (rd, buf) in readers.iter_mut().zip(&bufs) {
        let (reply, errors) = read_flush_reply(rd)?;
        let sent = events_in(std::slice::from_ref(buf)) as u64;
        if reply["ok"] != true || reply["accepted"] != sent || !errors.is_empty() {
            return Err(io::Error::other(format!(
                "fill: flush reply {reply} (sent {sent}); errors: {errors:?}"
            )));
        }
        filled.push(sent);
    }
    let fill_secs = t.elapsed().as_secs_f64();

    // The window: every tick, the events due in it, round robin over the models (so each model
    // gets `rate` a second), one write per connection.
    let total_rate = (profile.models * profile.rate) as u64;
    let ticks = a.seconds * (1000 / WEAR_TICK.as_millis() as u64);
    let per_s = 1000 / WEAR_TICK.as_millis() as u64;
    let mut sent = 0u64;
    let mut max_late = Duration::ZERO;
    let before = server.sample(mount)?;
    let start = before.at;
    for tick in 0..ticks {
        let due = start + WEAR_TICK * tick as u32;
        match due.checked_duration_since(Instant::now()) {
            Some(wait) => thread::sleep(wait),
            None => max_late = max_late.max(due.elapsed()),
        }
        for b in &mut bufs {
            b.clear();
        }
        let until = total_rate * (tick + 1) / per_s;
        while sent < until {
            let i = (sent % profile.models as u64) as usize;
            let k = sent / profile.models as u64;
            let ts = TS0 + (WEAR_FILL as f64 + k as f64) * spacing;
            calm_event(&mut bufs[i % conns], &mut rng, &names[i], Some(ts), 0.05);
            sent += 1;
        }
        for (st, b) in streams.iter_mut().zip(&bufs) {
            if !b.is_empty() {
                st.write_all(b)?;
            }
        }
    }
    let end = start + Duration::from_secs(a.seconds);
    if let Some(wait) = end.checked_duration_since(Instant::now()) {
        thread::sleep(wait);
    }
    let after = server.sample(mount)?;
    let rss_kib = server.rss_kib();

    // Idle, connections open.
    thread::sleep(WEAR_IDLE_SKIP);
    let idle0 = server.sample(mount)?;
    thread::sleep(Duration::from_secs(a.idle_seconds) - WEAR_IDLE_SKIP);
    let idle1 = server.sample(mount)?;

    // The counters are read: now the flush, which tells how many of the events were accepted.
    let mut events = 0;
    for ((st, rd), fill) in streams.iter_mut().zip(&mut readers).zip(&filled) {
        st.write_all(FLUSH)?;
        let (reply, errors) = read_flush_reply(rd)?;
        if reply["ok"] != true || reply["rejected"] != 0 || !errors.is_empty() {
            return Err(io::Error::other(format!(
                "flush reply {reply}; errors: {errors:?}"
            )));
        }
        events += reply["accepted"]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(*fill);
    }
    if events != sent {
        eprintln!(
            "wear: {} accepted {events} of the {sent} events sent",
            kind.name()
        );
    }
    let (decisions, store_bytes) = if kind == Kind::Python {
        (None, None)
    } else {
        daemon_metrics(bins, &server)
    };
    server.stop()?;
    Ok(WearRun {
        events,
        load: PhaseCost::between(&before, &after),
        idle: PhaseCost::between(&idle0, &idle1),
        rss_kib,
        fill_secs,
        max_late_ms: max_late.as_secs_f64() * 1e3,
        decisions,
        store_bytes,
    })
}

/// The daemon's decisions so far (all models) and its store's size, from `visutility metrics`.
fn daemon_metrics(bins: &Bins, server: &Server) -> (Option<f64>, Option<f64>) {
    let Ok(out) = Command::new(&bins.daemon)
        .arg("--config")
        .arg(&server.config)
        .arg("metrics")
        .output()
    else {
        return (None, None);
    };
    if !out.status.success() {
        return (None, None);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let sum = |name: &str| -> Option<f64> {
        let mut found = None;
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let Some(rest) = l.strip_prefix(name) else {
                continue;
            };
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                continue;
            }
            let v: f64 = rest.rsplit(' ').next()?.parse().ok()?;
            found = Some(found.unwrap_or(0.0) + v);
        }
        found
    };
    (
        sum("visutility_decisions_total").or(Some(0.0)),
        sum("visutility_store_size_bytes"),
    )
}
