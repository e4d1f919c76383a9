//! Test harness: runs the real `visutility` binary in a private temp directory.
//!
//! Every daemon gets its own tempdir holding the config, the sockets, the state
//! directory, the XDG/HOME directories of the child, hook scripts and the daemon's
//! captured stdout/stderr.  When a test panics while a `Daemon` is alive, its logs
//! are printed (the test harness shows them with the failure).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

/// Generous deadline for anything asynchronous (noisy 2-core machine).
pub const DEADLINE: Duration = Duration::from_secs(20);
/// Poll period.
pub const POLL: Duration = Duration::from_millis(20);
/// Deadline for one CLI invocation.
pub const CLI_DEADLINE: Duration = Duration::from_secs(60);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_visutility")
}

/// Poll `f` every `POLL` until it yields `Some`, or `timeout` passes.
pub fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL);
    }
}

/// Quote a string as a TOML basic string.
pub fn toml_str(s: impl AsRef<str>) -> String {
    let mut out = String::from("\"");
    for c in s.as_ref().chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub fn toml_path(p: &Path) -> String {
    toml_str(p.to_str().expect("utf-8 path"))
}

/// A TOML array of strings, e.g. for `command = [...]`.
pub fn toml_cmd(parts: &[&str]) -> String {
    let items: Vec<String> = parts.iter().map(toml_str).collect();
    format!("[{}]", items.join(", "))
}

/// Every JSON value found in `text`: one per line where lines parse, otherwise
/// a streaming parse of the whole text (tolerates pretty-printed output).
pub fn json_values(text: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for line in text.lines() {
        if let Ok(v) = serde_json::from_str::<Value>(line.trim())
            && (v.is_object() || v.is_array())
        {
            out.push(v);
        }
    }
    if out.is_empty() {
        // Try the whole text, then a stream of values.
        if let Ok(v) = serde_json::from_str::<Value>(text.trim()) {
            out.push(v);
        } else {
            let mut it = serde_json::Deserializer::from_str(text).into_iter::<Value>();
            while let Some(Ok(v)) = it.next() {
                out.push(v);
            }
        }
    }
    out
}

/// Is the process `pid` still alive (a zombie counts as dead)?
pub fn pid_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // state is the first field after the ")" closing the command name
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .unwrap_or("?");
            !(state == "Z" || state == "X" || state == "x")
        }
        Err(_) => {
            // No /proc entry: double-check with kill(pid, 0).
            let r = unsafe { libc::kill(pid, 0) };
            r == 0
        }
    }
}

fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Kills pids on drop if they are still alive and their cmdline contains `marker`
/// (so a stray `sleep 1000` from a failed test does not outlive it).
pub struct PidReaper {
    pub pids: Vec<i32>,
    pub marker: String,
}

impl Drop for PidReaper {
    fn drop(&mut self) {
        for &pid in &self.pids {
            if pid > 1 && pid_alive(pid) && cmdline(pid).contains(&self.marker) {
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// Kills (SIGKILL) and reaps a child on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Find files named `name` anywhere under `dir`.
pub fn find_named(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = fs::read_dir(&d) {
            for e in rd.filter_map(|e| e.ok()) {
                let p = e.path();
                let ft = match e.file_type() {
                    Ok(ft) => ft,
                    Err(_) => continue,
                };
                if ft.is_dir() {
                    stack.push(p.clone());
                }
                if e.file_name() == name {
                    out.push(p);
                }
            }
        }
    }
    out
}

/// Run a command with a deadline; stdout/stderr captured; optional stdin bytes.
pub fn run_with_timeout(
    mut cmd: Command,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Output, String> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    let stdin_thread = stdin.map(|data| {
        let mut s = child.stdin.take().unwrap();
        thread::spawn(move || {
            let _ = s.write_all(&data);
        })
    });
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t_out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t_err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => {
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    let out = t_out.join().unwrap_or_default();
                    let err = t_err.join().unwrap_or_default();
                    return Err(format!(
                        "command {cmd:?} did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                        String::from_utf8_lossy(&out),
                        String::from_utf8_lossy(&err)
                    ));
                }
                thread::sleep(POLL);
            }
            Err(e) => return Err(format!("wait {cmd:?}: {e}")),
        }
    };
    if let Some(t) = stdin_thread {
        let _ = t.join();
    }
    let stdout = t_out.join().unwrap_or_default();
    let stderr = t_err.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

pub fn out_text(o: &Output) -> String {
    format!(
        "status: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn combined(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

// ---------------------------------------------------------------------------
// Isolated environment
// ---------------------------------------------------------------------------

/// A tempdir with private HOME / XDG dirs, and helpers to run the binary in it.
pub struct Sandbox {
    pub dir: TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("vu")
            .tempdir()
            .expect("tempdir");
        for sub in [
            "home",
            "xdg/run",
            "xdg/config",
            "xdg/state",
            "xdg/data",
            "xdg/cache",
        ] {
            fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        fs::set_permissions(
            dir.path().join("xdg/run"),
            fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        Sandbox { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Apply the isolated environment to a command (clears the inherited one).
    pub fn apply_env(&self, cmd: &mut Command) {
        let d = self.dir.path();
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
        cmd.env_clear()
            .env("PATH", path)
            .env("HOME", d.join("home"))
            .env("XDG_RUNTIME_DIR", d.join("xdg/run"))
            .env("XDG_CONFIG_HOME", d.join("xdg/config"))
            .env("XDG_STATE_HOME", d.join("xdg/state"))
            .env("XDG_DATA_HOME", d.join("xdg/data"))
            .env("XDG_CACHE_HOME", d.join("xdg/cache"))
            .env("TMPDIR", d)
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "1");
    }

    /// A command for the binary with the isolated environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        self.apply_env(&mut cmd);
        cmd.args(args);
        cmd
    }

    /// Run the binary with `args` (no implicit `--config`), with a deadline.
    pub fn run(&self, args: &[&str]) -> Output {
        run_with_timeout(self.command(args), None, CLI_DEADLINE).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Write a file (relative to the sandbox) and return its path.
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.path(name);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&p, content).unwrap();
        p
    }

    /// Write an executable `#!/bin/sh` script.
    pub fn write_script(&self, name: &str, body: &str) -> PathBuf {
        let p = self.path(name);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        let text = format!("#!/bin/sh\n{body}\n");
        // write to a temp name then rename, so no writable fd is ever open on
        // the final path (avoids ETXTBSY when it is executed)
        let tmp = p.with_extension("tmp-write");
        fs::write(&tmp, text).unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).unwrap();
        fs::rename(&tmp, &p).unwrap();
        p
    }

    /// A hook script that records each run (env, args, stdin) under `<name>.runs/`.
    ///
    /// The script exits with `exit_code`.  While the gate file exists the script
    /// waits (after recording its start) — tests use it to hold a job "running".
    pub fn recording_hook(&self, name: &str, exit_code: i32) -> Hook {
        let runs = self.path(&format!("{name}.runs"));
        fs::create_dir_all(&runs).unwrap();
        let gate = self.path(&format!("{name}.gate"));
        let body = format!(
            r#"set -u
runs={runs}
gate={gate}
id="$(date +%s%N).$$"
tmp="$runs/.tmp.$id"
mkdir "$tmp"
if ! mkdir "$runs/lock.${{VISUTILITY_MODEL_ID:-none}}" 2>/dev/null; then
  echo "$id" > "$runs/OVERLAP.$id"
fi
for v in MODEL_ID ACTION POLICY REASON JOB_ID ATTEMPT; do
  eval "x=\${{VISUTILITY_$v-__unset__}}"
  printf '%s' "$x" > "$tmp/VISUTILITY_$v"
done
env > "$tmp/env_all"
for a in "$@"; do printf '%s\n' "$a"; done > "$tmp/args"
printf '%s' "$#" > "$tmp/argc"
cat > "$tmp/stdin"
touch "$runs/started.$id"
while [ -e "$gate" ]; do sleep 0.02; done
rmdir "$runs/lock.${{VISUTILITY_MODEL_ID:-none}}" 2>/dev/null
mv "$tmp" "$runs/run.$id"
exit {exit_code}"#,
            runs = sh_quote(runs.to_str().unwrap()),
            gate = sh_quote(gate.to_str().unwrap()),
        );
        let script = self.write_script(&format!("{name}.sh"), &body);
        Hook { script, runs, gate }
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::new()
    }
}

pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A recording hook script (see `Sandbox::recording_hook`).
#[derive(Clone, Debug)]
pub struct Hook {
    pub script: PathBuf,
    pub runs: PathBuf,
    pub gate: PathBuf,
}

/// One finished run of a recording hook.
#[derive(Clone, Debug)]
pub struct HookRun {
    pub env: BTreeMap<String, String>,
    pub args: Vec<String>,
    pub argc: usize,
    pub stdin: String,
    /// stdin parsed as JSON (Null when it does not parse)
    pub input: Value,
}

impl HookRun {
    pub fn var(&self, name: &str) -> &str {
        self.env
            .get(name)
            .map(|s| s.as_str())
            .unwrap_or("__missing__")
    }
    /// `event.meta.seq` of the triggering event, if present.
    pub fn seq(&self) -> Option<i64> {
        self.input["event"]["meta"]["seq"].as_i64()
    }
    pub fn model(&self) -> &str {
        self.var("VISUTILITY_MODEL_ID")
    }
}

fn sort_key(id: &str) -> (u128, String) {
    let ns = id
        .split('.')
        .next()
        .and_then(|s| s.parse::<u128>().ok())
        .unwrap_or(0);
    (ns, id.to_string())
}

impl Hook {
    pub fn script_str(&self) -> &str {
        self.script.to_str().unwrap()
    }

    /// `command = [...]` TOML value running this hook with extra args.
    pub fn command_toml(&self, args: &[&str]) -> String {
        let mut parts = vec![self.script_str()];
        parts.extend_from_slice(args);
        toml_cmd(&parts)
    }

    /// Finished runs, oldest first.
    pub fn runs(&self) -> Vec<HookRun> {
        let mut ids: Vec<String> = fs::read_dir(&self.runs)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter_map(|n| n.strip_prefix("run.").map(|s| s.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        ids.sort_by_key(|id| sort_key(id));
        ids.into_iter()
            .map(|id| {
                let d = self.runs.join(format!("run.{id}"));
                let read = |n: &str| fs::read_to_string(d.join(n)).unwrap_or_default();
                let mut env = BTreeMap::new();
                for v in [
                    "MODEL_ID", "ACTION", "POLICY", "REASON", "JOB_ID", "ATTEMPT",
                ] {
                    let val = read(&format!("VISUTILITY_{v}"));
                    if val != "__unset__" {
                        env.insert(format!("VISUTILITY_{v}"), val);
                    }
                }
                let stdin = read("stdin");
                let input = serde_json::from_str(stdin.trim()).unwrap_or(Value::Null);
                let args_text = read("args");
                let args = args_text.lines().map(|s| s.to_string()).collect();
                HookRun {
                    env,
                    args,
                    argc: read("argc").trim().parse().unwrap_or(usize::MAX),
                    stdin,
                    input,
                }
            })
            .collect()
    }

    pub fn runs_for(&self, model: &str) -> Vec<HookRun> {
        self.runs()
            .into_iter()
            .filter(|r| r.model() == model)
            .collect()
    }

    /// Number of runs that have started (finished or not).
    pub fn started(&self) -> usize {
        fs::read_dir(&self.runs)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().starts_with("started."))
                    .count()
            })
            .unwrap_or(0)
    }

    /// Overlap markers: a run started while another run for the same model was
    /// still going.
    pub fn overlaps(&self) -> Vec<String> {
        fs::read_dir(&self.runs)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("OVERLAP."))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn close_gate(&self) {
        fs::write(&self.gate, "closed").unwrap();
    }

    pub fn open_gate(&self) {
        let _ = fs::remove_file(&self.gate);
    }
}

// ---------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------

/// Default `[hooks]` + `[[models]]` body: hooks that do nothing, a policy that
/// never fires.
pub const QUIET_BODY: &str = r#"
[hooks]
cooldown_s = 0
retries = 0
full = { command = ["/bin/true"], timeout_s = 60 }
fine_tune = { command = ["/bin/true"], timeout_s = 60 }

[[models]]
match = "*"

[[models.policies]]
kind = "static_threshold"
max_drift = 1000000.0
min_accuracy = -1000000.0
"#;

/// Everything a daemon config needs besides the paths.
#[derive(Clone, Debug)]
pub struct ConfigParts {
    /// Extra `key = value` lines for the `[daemon]` table.
    pub daemon_extra: String,
    /// The rest of the file (`[hooks]`, `[[models]]`, ...).
    pub body: String,
}

// ---------------------------------------------------------------------------
// Daemon
// ---------------------------------------------------------------------------

pub struct DaemonBuilder {
    pub sb: Sandbox,
    parts: ConfigParts,
    env: Vec<(String, String)>,
    nofile_soft: Option<u64>,
}

impl DaemonBuilder {
    pub fn sandbox(&self) -> &Sandbox {
        &self.sb
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.sb.path(name)
    }
    /// Extra `[daemon]` keys (one `key = value` per line).
    pub fn daemon_keys(mut self, lines: &str) -> Self {
        self.parts.daemon_extra = lines.to_string();
        self
    }
    /// The config body after `[daemon]` (`[hooks]`, `[[models]]`, ...).
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.parts.body = body.into();
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    /// Starts the daemon with this soft `RLIMIT_NOFILE` (the hard limit unchanged), as a
    /// login shell's `ulimit -Sn` would.
    pub fn nofile_soft(mut self, n: u64) -> Self {
        self.nofile_soft = Some(n);
        self
    }
    pub fn recording_hook(&self, name: &str, exit_code: i32) -> Hook {
        self.sb.recording_hook(name, exit_code)
    }
    pub fn write_script(&self, name: &str, body: &str) -> PathBuf {
        self.sb.write_script(name, body)
    }
    /// Write the config and start the daemon; waits until it is ready.
    pub fn start(self) -> Daemon {
        let mut d = self.spawn_only();
        d.wait_ready();
        d
    }
    /// Write the config and spawn the daemon without waiting for readiness.
    pub fn spawn_only(self) -> Daemon {
        let sb = self.sb;
        let socket = sb.path("ingest.sock");
        let control_socket = sb.path("control.sock");
        let state_dir = sb.path("state");
        let config_path = sb.path("config.toml");
        let log_path = sb.path("daemon.stderr.log");
        let stdout_path = sb.path("daemon.stdout.log");
        let mut d = Daemon {
            sb,
            config_path,
            socket,
            control_socket,
            state_dir,
            log_path,
            stdout_path,
            child: None,
            env: self.env,
            nofile_soft: self.nofile_soft,
            spawns: 0,
        };
        d.write_config(&self.parts);
        d.spawn();
        d
    }
}

pub struct Daemon {
    pub sb: Sandbox,
    pub config_path: PathBuf,
    pub socket: PathBuf,
    pub control_socket: PathBuf,
    pub state_dir: PathBuf,
    pub log_path: PathBuf,
    pub stdout_path: PathBuf,
    child: Option<Child>,
    env: Vec<(String, String)>,
    nofile_soft: Option<u64>,
    spawns: usize,
}

impl Daemon {
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder {
            sb: Sandbox::new(),
            parts: ConfigParts {
                daemon_extra: String::new(),
                body: QUIET_BODY.to_string(),
            },
            env: Vec::new(),
            nofile_soft: None,
        }
    }

    /// A daemon with the quiet default body.
    pub fn start_default() -> Daemon {
        Daemon::builder().start()
    }

    pub fn dir(&self) -> &Path {
        self.sb.dir.path()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.sb.path(name)
    }

    /// The `[daemon]` table with the harness's paths, plus extra lines.
    pub fn daemon_table(&self, extra: &str) -> String {
        format!(
            "[daemon]\nsocket = {}\ncontrol_socket = {}\nstate_dir = {}\nlog_level = \"debug\"\n{}\n",
            toml_path(&self.socket),
            toml_path(&self.control_socket),
            toml_path(&self.state_dir),
            extra
        )
    }

    /// (Re)write the config file from parts, keeping the harness's paths.
    pub fn write_config(&self, parts: &ConfigParts) {
        let text = format!(
            "{}\n{}\n",
            self.daemon_table(&parts.daemon_extra),
            parts.body
        );
        self.write_raw_config(&text);
    }

    /// Replace the config file with arbitrary text (atomically).
    pub fn write_raw_config(&self, text: &str) {
        let tmp = self.config_path.with_extension("toml.tmp");
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, &self.config_path).unwrap();
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "spawn while a child is alive");
        self.spawns += 1;
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        writeln!(log, "==== harness: daemon start #{} ====", self.spawns).unwrap();
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stdout_path)
            .unwrap();
        let mut cmd = Command::new(bin());
        self.sb.apply_env(&mut cmd);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.arg("daemon")
            .arg("--config")
            .arg(&self.config_path)
            .current_dir(self.dir())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(log));
        // If the test thread dies without dropping us, take the daemon with it.
        let nofile_soft = self.nofile_soft;
        unsafe {
            cmd.pre_exec(move || {
                if let Some(n) = nofile_soft {
                    let mut lim = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
                    lim.rlim_cur = n.min(lim.rlim_max);
                    libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().expect("spawn daemon"));
    }

    /// Daemon stderr (all starts so far) followed by its stdout.
    pub fn logs(&self) -> String {
        let err = fs::read_to_string(&self.log_path).unwrap_or_default();
        let out = fs::read_to_string(&self.stdout_path).unwrap_or_default();
        format!("--- daemon stderr ---\n{err}\n--- daemon stdout ---\n{out}")
    }

    /// Panic with `msg` and the daemon's logs.
    #[track_caller]
    pub fn fail(&self, msg: impl AsRef<str>) -> ! {
        panic!("{}\n{}", msg.as_ref(), self.logs())
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("daemon not running").id() as i32
    }

    /// `Some(status)` if the daemon has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().expect("try_wait"))
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_exit().is_none()
    }

    /// Wait until the ingest socket (and the control socket) accept connections.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.try_exit() {
                self.fail(format!("daemon exited before it was ready: {st:?}"));
            }
            let ingest = UnixStream::connect(&self.socket).is_ok();
            let control = ingest && UnixStream::connect(&self.control_socket).is_ok();
            if ingest && control {
                return;
            }
            if Instant::now() >= deadline {
                self.fail(format!(
                    "daemon not ready within 30 s (ingest connectable: {ingest}, control connectable: {control})"
                ));
            }
            thread::sleep(POLL);
        }
    }

    pub fn signal(&self, sig: i32) {
        let r = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(r, 0, "kill({}, {sig}) failed", self.pid());
    }
    pub fn sigterm(&self) {
        self.signal(libc::SIGTERM)
    }
    pub fn sigkill(&self) {
        self.signal(libc::SIGKILL)
    }
    pub fn sighup(&self) {
        self.signal(libc::SIGHUP)
    }

    /// Wait (with a deadline) for the daemon to exit and return its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let st = poll_until(DEADLINE, || self.try_exit());
        match st {
            Some(st) => {
                self.child = None;
                st
            }
            None => self.fail("daemon did not exit within the deadline"),
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> ExitStatus {
        self.sigkill();
        let st = self.wait_exit();
        assert_eq!(
            st.signal(),
            Some(libc::SIGKILL),
            "expected death by SIGKILL: {st:?}"
        );
        st
    }

    /// Sets (`Some`) or removes (`None`) an environment variable of the daemon's next start.
    pub fn set_env(&mut self, k: &str, v: Option<&str>) {
        self.env.retain(|(name, _)| name != k);
        if let Some(v) = v {
            self.env.push((k.into(), v.into()));
        }
    }

    /// Start again on the same tempdir, config and state (daemon must have exited).
    pub fn restart(&mut self) {
        if self.child.is_some() {
            if self.try_exit().is_none() {
                self.fail("restart() while the daemon is still running");
            }
            self.child = None;
        }
        self.spawn();
        self.wait_ready();
    }

    /// SIGKILL, reap, start again.
    pub fn kill_and_restart(&mut self) {
        self.kill();
        self.restart();
    }

    // ---- ingest -----------------------------------------------------------

    pub fn try_connect(&self) -> io::Result<Client> {
        let stream = UnixStream::connect(&self.socket)?;
        Ok(Client::new(stream, self.log_path.clone()))
    }

    pub fn connect(&self) -> Client {
        self.try_connect()
            .unwrap_or_else(|e| self.fail(format!("connect to ingest socket: {e}")))
    }

    /// Send events on a fresh connection, flush, and return the flush reply
    /// (asserting no line was rejected).
    pub fn push_events(&self, lines: &[String]) -> Value {
        let mut c = self.connect();
        c.send_lines(lines);
        let (reply, errors) = c.flush_with_errors();
        if !errors.is_empty() {
            self.fail(format!("unexpected error replies: {errors:?}"));
        }
        if reply["accepted"].as_u64() != Some(lines.len() as u64) {
            self.fail(format!("flush reply {reply} for {} events", lines.len()));
        }
        reply
    }

    // ---- CLI --------------------------------------------------------------

    /// A command for the binary: `args` then `--config FILE`.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        self.sb.apply_env(&mut cmd);
        cmd.args(args).arg("--config").arg(&self.config_path);
        cmd
    }

    /// Run the binary with `args` and `--config FILE` appended.
    pub fn cli(&self, args: &[&str]) -> Output {
        run_with_timeout(self.cli_command(args), None, CLI_DEADLINE)
            .unwrap_or_else(|e| self.fail(e))
    }

    pub fn cli_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        run_with_timeout(self.cli_command(args), Some(stdin.to_vec()), CLI_DEADLINE)
            .unwrap_or_else(|e| self.fail(e))
    }

    /// Run and require exit 0; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        if !o.status.success() {
            self.fail(format!(
                "`visutility {}` failed:\n{}",
                args.join(" "),
                out_text(&o)
            ));
        }
        stdout(&o)
    }

    /// Run with `--json` and parse stdout.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut a: Vec<&str> = args.to_vec();
        a.push("--json");
        let out = self.cli_ok(&a);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| {
            self.fail(format!(
                "`visutility {}` printed invalid JSON ({e}):\n{out}",
                a.join(" ")
            ))
        })
    }

    pub fn models_json(&self) -> Value {
        let v = self.cli_json(&["models"]);
        if !v.is_array() {
            self.fail(format!("models --json is not an array: {v}"));
        }
        v
    }

    pub fn model(&self, id: &str) -> Option<Value> {
        self.models_json()
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["model_id"] == id)
            .cloned()
    }

    /// `events` of a model per `models --json` (0 if the model is not listed).
    pub fn events_of(&self, id: &str) -> u64 {
        match self.model(id) {
            Some(m) => m["events"]
                .as_u64()
                .unwrap_or_else(|| self.fail(format!("model {id} has no numeric events: {m}"))),
            None => 0,
        }
    }

    pub fn history(&self, model: Option<&str>) -> Vec<Value> {
        let mut args = vec!["history"];
        if let Some(m) = model {
            args.push(m);
        }
        let v = self.cli_json(&args);
        match v {
            Value::Array(a) => a,
            other => self.fail(format!("history --json is not an array: {other}")),
        }
    }

    pub fn status_json(&self) -> Value {
        self.cli_json(&["status"])
    }

    /// Poll `f` until it returns Some, failing with `what` and the logs.
    #[track_caller]
    pub fn wait_for<T>(&self, what: &str, f: impl FnMut() -> Option<T>) -> T {
        poll_until(DEADLINE, f)
            .unwrap_or_else(|| self.fail(format!("timed out waiting for: {what}")))
    }

    /// Wait until `hook` has at least `n` finished runs; returns them.
    #[track_caller]
    pub fn wait_runs(&self, hook: &Hook, n: usize) -> Vec<HookRun> {
        self.wait_for(
            &format!("{n} finished hook run(s) of {}", hook.script.display()),
            || {
                let r = hook.runs();
                (r.len() >= n).then_some(r)
            },
        )
    }

    /// Wait until `hook` has at least `n` finished runs for `model`.
    #[track_caller]
    pub fn wait_runs_for(&self, hook: &Hook, model: &str, n: usize) -> Vec<HookRun> {
        self.wait_for(&format!("{n} finished hook run(s) for {model}"), || {
            let r = hook.runs_for(model);
            (r.len() >= n).then_some(r)
        })
    }

    /// Wait until history has a job matching `pred`; returns it.
    #[track_caller]
    pub fn wait_job(
        &self,
        model: Option<&str>,
        what: &str,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Value {
        let mut last = Vec::new();
        let r = poll_until(DEADLINE, || {
            last = self.history(model);
            last.iter().find(|j| pred(j)).cloned()
        });
        r.unwrap_or_else(|| {
            self.fail(format!(
                "timed out waiting for job: {what}; last history: {last:?}"
            ))
        })
    }

    /// Wait until every job in the history is in a terminal state.
    #[track_caller]
    pub fn wait_jobs_terminal(&self) -> Vec<Value> {
        let mut last = Vec::new();
        let r = poll_until(DEADLINE, || {
            last = self.history(None);
            last.iter()
                .all(|j| {
                    matches!(
                        j["state"].as_str(),
                        Some("succeeded" | "failed" | "interrupted" | "superseded")
                    )
                })
                .then(|| last.clone())
        });
        r.unwrap_or_else(|| self.fail(format!("jobs never all finished; last history: {last:?}")))
    }

    /// Lines of the daemon's stderr.
    pub fn log_lines(&self) -> Vec<String> {
        fs::read_to_string(&self.log_path)
            .unwrap_or_default()
            .lines()
            .map(|s| s.to_string())
            .collect()
    }

    /// Wait until at least `n` log lines satisfy `pred`.
    #[track_caller]
    pub fn wait_log_count(&self, what: &str, n: usize, pred: impl Fn(&str) -> bool) {
        self.wait_for(what, || {
            (self.log_lines().iter().filter(|l| pred(l)).count() >= n).then_some(())
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        if thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

// ---------------------------------------------------------------------------
// Ingest client
// ---------------------------------------------------------------------------

pub struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
    log_path: PathBuf,
}

impl Client {
    fn new(stream: UnixStream, log_path: PathBuf) -> Client {
        Client {
            stream,
            buf: Vec::new(),
            log_path,
        }
    }

    #[track_caller]
    fn fail(&self, msg: impl AsRef<str>) -> ! {
        let logs = fs::read_to_string(&self.log_path).unwrap_or_default();
        panic!("{}\n--- daemon stderr ---\n{logs}", msg.as_ref())
    }

    /// Write raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        if let Err(e) = self.stream.write_all(bytes) {
            self.fail(format!("write to ingest socket: {e}"));
        }
    }

    /// Write one line (a newline is appended).
    pub fn send_line(&mut self, line: &str) {
        let mut b = line.as_bytes().to_vec();
        b.push(b'\n');
        self.send_raw(&b);
    }

    /// Write many lines in one write.
    pub fn send_lines<S: AsRef<str>>(&mut self, lines: &[S]) {
        let mut b = Vec::new();
        for l in lines {
            b.extend_from_slice(l.as_ref().as_bytes());
            b.push(b'\n');
        }
        self.send_raw(&b);
    }

    pub fn send_json(&mut self, v: &Value) {
        self.send_line(&v.to_string());
    }

    /// Read one reply line, waiting at most `timeout`. None on timeout.
    /// Panics if the server closed the connection.
    pub fn read_reply_line(&mut self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let wait = (deadline - now)
                .min(Duration::from_millis(200))
                .max(Duration::from_millis(1));
            self.stream.set_read_timeout(Some(wait)).unwrap();
            let mut chunk = [0u8; 8192];
            match self.stream.read(&mut chunk) {
                Ok(0) => self.fail(format!(
                    "server closed the connection (pending partial reply: {:?})",
                    String::from_utf8_lossy(&self.buf)
                )),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => self.fail(format!("read from ingest socket: {e}")),
            }
        }
    }

    /// Read one reply as JSON (must arrive within the deadline).
    #[track_caller]
    pub fn read_reply(&mut self) -> Value {
        match self.read_reply_line(DEADLINE) {
            Some(l) => serde_json::from_str(&l)
                .unwrap_or_else(|e| self.fail(format!("reply is not JSON ({e}): {l:?}"))),
            None => self.fail("no reply within the deadline"),
        }
    }

    /// Send `{"op":"flush"}` and read replies until the flush reply; returns it
    /// and every error reply that came before it.
    #[track_caller]
    pub fn flush_with_errors(&mut self) -> (Value, Vec<Value>) {
        self.send_line(r#"{"op":"flush"}"#);
        let mut errors = Vec::new();
        loop {
            let v = self.read_reply();
            // A failed flush is `{"ok":false,"error":...}`: the flush's own reply, not a line's.
            if v.get("ok").is_some() {
                return (v, errors);
            } else if v.get("error").is_some() {
                errors.push(v);
            } else {
                self.fail(format!("unexpected reply while waiting for flush: {v}"));
            }
        }
    }

    /// Flush, asserting there were no error replies; returns the flush reply.
    #[track_caller]
    pub fn flush(&mut self) -> Value {
        let (v, errors) = self.flush_with_errors();
        if !errors.is_empty() {
            self.fail(format!("unexpected error replies before flush: {errors:?}"));
        }
        v
    }
}

// ---------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------

/// `{"model_id": model, "drift_score": drift, "meta": {"seq": seq}}`
pub fn drift_event(model: &str, drift: f64, seq: i64) -> String {
    json!({"model_id": model, "drift_score": drift, "meta": {"seq": seq}}).to_string()
}

pub fn plain_event(model: &str) -> String {
    json!({"model_id": model}).to_string()
}

/// Assert a flush reply is `{"ok": true, "accepted": a, "rejected": r}`.
#[track_caller]
pub fn assert_flush(reply: &Value, accepted: u64, rejected: u64) {
    assert_eq!(reply["ok"], json!(true), "flush reply: {reply}");
    assert_eq!(
        reply["accepted"].as_u64(),
        Some(accepted),
        "accepted in flush reply: {reply}"
    );
    assert_eq!(
        reply["rejected"].as_u64(),
        Some(rejected),
        "rejected in flush reply: {reply}"
    );
}

/// Is `v` an error reply with one of `codes` for `line`?
pub fn is_error(v: &Value, codes: &[&str], line: u64) -> bool {
    v["error"].as_str().is_some_and(|c| codes.contains(&c)) && v["line"].as_u64() == Some(line)
}

/// Assert an error reply's shape: code in `codes`, the line number, a string detail.
#[track_caller]
pub fn assert_error(v: &Value, codes: &[&str], line: u64) {
    assert!(
        is_error(v, codes, line),
        "expected error {codes:?} for line {line}, got {v}"
    );
    assert!(
        v["detail"].is_string(),
        "error reply without a string detail: {v}"
    );
}

/// Hooks for both actions recording runs, no cooldown, no retries, no reset after a retrain,
/// and `policies` (TOML `[[models.policies]]` tables) for every model.
pub fn hooks_body(hook: &Hook, policies: &str) -> String {
    let cmd = hook.command_toml(&[]);
    format!(
        r#"
[hooks]
max_concurrent = 4
cooldown_s = 0
retries = 0
full = {{ command = {cmd}, timeout_s = 60 }}
fine_tune = {{ command = {cmd}, timeout_s = 60 }}

[[models]]
match = "*"
reset_on_retrain = false

{policies}
"#
    )
}

/// [`hooks_body`] with one `drift_window` policy (10 scores, mean above 0.5): the tenth high
/// score fires.
pub fn drift_window_body(hook: &Hook) -> String {
    hooks_body(
        hook,
        "[[models.policies]]\nkind = \"drift_window\"\nwindow = 10\nthreshold = 0.5\n",
    )
}

#[track_caller]
/// A `history --json` job has every field the contract names.
pub fn assert_contract_fields(job: &Value) {
    for key in [
        "job_id",
        "model_id",
        "action",
        "state",
        "attempts",
        "exit_code",
        "started",
        "ended",
    ] {
        assert!(job.get(key).is_some(), "history job without {key}: {job}");
    }
}
