//! Running one hook process: directly (no shell), in its own process group, with the decision
//! on stdin, its output logged line by line and a bounded tail kept, and its whole process group
//! killed when it runs past its timeout.
//!
//! A hook gets a minimal environment ([`environment`]), never the daemon's own (which may hold
//! secrets the hook has no business seeing), and no descriptor but its stdin, stdout and stderr.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::config::HooksConfig;
use crate::store::GroupLeader;
use crate::strict_modes;

/// How much of each output stream the job journal keeps.
pub const TAIL_BYTES: usize = 4096;
/// Output lines longer than this are cut in the log (the tail still sees every byte).
const LOG_LINE_BYTES: usize = 1024;
/// After SIGTERM to a timed-out group, how long before SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// `PATH` for hooks when the daemon has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Variables `[hooks] pass_env` cannot pass on: they belong to systemd's conversation with the
/// daemon itself.
const SCRUBBED_ENV: &[&str] = &[
    "NOTIFY_SOCKET",
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
    "VISUTILITY_FAULT_INJECTION",
];

pub struct HookRun {
    pub command: Vec<String>,
    /// The whole environment: [`environment`] plus the job's `VISUTILITY_*` variables.
    pub env: BTreeMap<OsString, OsString>,
    /// Check the program's and its script's owner and mode before running it (StrictModes).
    pub check_modes: bool,
    pub stdin: Vec<u8>,
    pub timeout: Duration,
    pub model_id: String,
    pub job_id: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HookEnd {
    Exited(i32),
    Signaled(i32),
    TimedOut,
    /// It never ran: missing, not executable, ...
    SpawnFailed(String),
}

#[derive(Debug, Clone)]
pub struct HookOutcome {
    pub end: HookEnd,
    pub stdout_tail: String,
    pub stderr_tail: String,
    pub duration: Duration,
}

impl HookOutcome {
    pub fn spawn_failed(error: String) -> HookOutcome {
        HookOutcome {
            end: HookEnd::SpawnFailed(error),
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            duration: Duration::ZERO,
        }
    }

    pub fn success(&self) -> bool {
        self.end == HookEnd::Exited(0)
    }
}

/// Starts the hook; returns its process group id and a future that resolves when it ended.
pub fn spawn(
    run: HookRun,
) -> std::io::Result<(i32, impl std::future::Future<Output = HookOutcome> + use<>)> {
    // What is checked is what runs: a bare name is resolved here, on the hook's own PATH.
    let program = strict_modes::resolve_program(
        &run.command[0],
        run.env
            .get(std::ffi::OsStr::new("PATH"))
            .map(OsString::as_os_str),
    );
    if run.check_modes {
        let me = strict_modes::daemon_uid();
        let mut found = strict_modes::check_hook_args(&run.command[1..], me);
        if let Some(p) = &program {
            found.extend(strict_modes::check_file(p, me).err());
        }
        if !found.is_empty() {
            return Err(std::io::Error::other(
                strict_modes::Findings(found).to_string(),
            ));
        }
    }
    let mut cmd = match &program {
        Some(p) => {
            let mut cmd = tokio::process::Command::new(p);
            cmd.arg0(&run.command[0]);
            cmd
        }
        // Not found: spawning says why.
        None => tokio::process::Command::new(&run.command[0]),
    };
    cmd.args(&run.command[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false)
        .env_clear()
        .envs(&run.env);
    // No `pre_exec`: with none, the standard library starts the hook with posix_spawn
    // (vfork-like) instead of fork, which copies the page tables of a busy daemon (a fork took
    // the hook's start from 1.9 ms to 6 ms at p50 under load). Descriptors above 2 are not
    // inherited all the same: everything the daemon opens is close-on-exec, and the ones it
    // inherited from its launcher were made so at start ([`cloexec_inherited`]).
    let started = Instant::now();
    let mut child = cmd.spawn()?;
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    let mut stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let fut = async move {
        let input = run.stdin;
        let writer = tokio::spawn(async move {
            if let Some(s) = stdin.as_mut() {
                // A hook that does not read its stdin closes the pipe: that is its right.
                let _ = s.write_all(&input).await;
                let _ = s.shutdown().await;
            }
        });
        let out = tokio::spawn(collect(stdout, run.model_id.clone(), run.job_id, "stdout"));
        let err = tokio::spawn(collect(stderr, run.model_id.clone(), run.job_id, "stderr"));
        let end = match tokio::time::timeout(run.timeout, child.wait()).await {
            Ok(Ok(status)) => match (status.code(), status.signal()) {
                (Some(code), _) => HookEnd::Exited(code),
                (None, Some(sig)) => HookEnd::Signaled(sig),
                (None, None) => HookEnd::Exited(-1),
            },
            Ok(Err(e)) => HookEnd::SpawnFailed(format!("cannot wait for the hook: {e}")),
            Err(_) => {
                tracing::warn!(model_id = %run.model_id, job_id = run.job_id, timeout_s = run.timeout.as_secs(), "hook timed out; killing its process group");
                kill_group(pid, libc::SIGTERM);
                if tokio::time::timeout(KILL_GRACE, child.wait())
                    .await
                    .is_err()
                {
                    kill_group(pid, libc::SIGKILL);
                    let _ = child.wait().await;
                }
                // Whatever else is left in the group (a grandchild that ignored SIGTERM).
                kill_group(pid, libc::SIGKILL);
                HookEnd::TimedOut
            }
        };
        writer.abort();
        // A grandchild may hold the pipes open after the hook itself exited: wait briefly for
        // the output, never for the grandchild.
        let grab = |h: tokio::task::JoinHandle<String>| async move {
            match tokio::time::timeout(Duration::from_millis(500), h).await {
                Ok(Ok(s)) => s,
                _ => String::new(),
            }
        };
        let stdout_tail = grab(out).await;
        let stderr_tail = grab(err).await;
        HookOutcome {
            end,
            stdout_tail,
            stderr_tail,
            duration: started.elapsed(),
        }
    };
    Ok((pid, fut))
}

/// The environment every hook starts from: `PATH`, `LANG` and `TZ` as the daemon has them,
/// `HOME` of the daemon's user, then the variables `[hooks] pass_env` names (when the daemon
/// has them) and those `[hooks] env` sets. The job's `VISUTILITY_*` variables are added last.
pub fn environment(hooks: &HooksConfig) -> BTreeMap<OsString, OsString> {
    let mut env = BTreeMap::new();
    env.insert(
        "PATH".into(),
        std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
    );
    for name in ["LANG", "TZ"] {
        if let Some(v) = std::env::var_os(name) {
            env.insert(name.into(), v);
        }
    }
    env.insert("HOME".into(), daemon_home());
    for name in &hooks.pass_env {
        if SCRUBBED_ENV.contains(&name.as_str()) {
            continue;
        }
        if let Some(v) = std::env::var_os(name) {
            env.insert(name.into(), v);
        }
    }
    for (name, value) in &hooks.env {
        env.insert(name.into(), value.into());
    }
    env
}

/// The daemon user's home directory from the user database; else `$HOME`; else `/`.
fn daemon_home() -> OsString {
    use std::os::unix::ffi::OsStrExt;
    let home = crate::config::nss_lookup::<libc::passwd>(|pwd, buf, result| {
        // SAFETY: every pointer is valid for the call, and `buf.len()` is the buffer's size.
        unsafe { libc::getpwuid_r(libc::geteuid(), pwd, buf.as_mut_ptr(), buf.len(), result) }
    })
    .and_then(|(pwd, _buf)| {
        if pwd.pw_dir.is_null() {
            return None;
        }
        // SAFETY: pw_dir is a NUL-terminated string inside `_buf`, which is still alive.
        let dir = unsafe { std::ffi::CStr::from_ptr(pwd.pw_dir) };
        (!dir.to_bytes().is_empty()).then(|| std::ffi::OsStr::from_bytes(dir.to_bytes()).to_owned())
    });
    home.unwrap_or_else(|| std::env::var_os("HOME").unwrap_or_else(|| "/".into()))
}

/// How far the fallback of [`cloexec_from_3`] must look: past the soft descriptor limit and
/// past every descriptor open now (a limit lowered after descriptors were opened does not
/// close them). Computed in the parent, where reading `/proc` is allowed.
fn fd_limit() -> i32 {
    // SAFETY: getrlimit writes into `lim`, which outlives the call.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        // An unlimited limit would mean a billion fcntl calls: the open ones are enough then.
        lim.rlim_cur.min(1 << 16) as i32
    } else {
        1024
    };
    let highest_open = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    soft.max(highest_open.saturating_add(1))
}

/// At the daemon's start, before any thread or hook: every descriptor above 2 it inherited
/// from its launcher is made close-on-exec, so no hook gets one (everything the daemon opens
/// itself is close-on-exec already: the standard library, tokio and mio ask for it).
pub fn cloexec_inherited() {
    cloexec_from_3(fd_limit());
}

/// Every descriptor above 2 made close-on-exec: `close_range(CLOSE_RANGE_CLOEXEC)` (Linux
/// 5.11) does it in one call; without it, `fcntl` on each descriptor up to `limit`.
fn cloexec_from_3(limit: i32) {
    // SAFETY: close_range only changes descriptor flags; no memory is touched.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
        )
    };
    if rc == 0 {
        return;
    }
    for fd in 3..limit {
        // SAFETY: F_SETFD on a descriptor that is not open fails with EBADF, harmlessly.
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

/// Sends `signal` to the process group `pgid`. Errors (the group is gone) are expected.
pub fn kill_group(pgid: i32, signal: i32) {
    if pgid > 1 {
        // SAFETY: killpg has no memory-safety preconditions; a stale pgid at worst fails.
        unsafe {
            libc::killpg(pgid, signal);
        }
    }
}

/// Whether any process of the group `pgid` is still alive.
pub fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    pgid > 1 && unsafe { libc::killpg(pgid, 0) } == 0
}

/// Whether the group `pgid` still has a member that is not a zombie. A zombie runs nothing,
/// and one whose parent never reaps it (an orphan under a minimal init) would otherwise look
/// alive forever.
pub fn group_running(pgid: i32) -> bool {
    if !group_alive(pgid) {
        return false;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        // No /proc to tell zombies apart: trust the signal.
        return true;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|stat| stat_fields(&stat).map(|f| (f.state, f.pgrp)))
        .any(|(state, pgrp)| pgrp == pgid && !matches!(state, 'Z' | 'X' | 'x'))
}

/// The identity of the process `pid` (a hook's group leader), if `/proc` tells it.
pub fn leader_identity(pid: i32) -> Option<GroupLeader> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(GroupLeader {
        boot_id: boot_id()?,
        start_ticks: stat_fields(&stat)?.start_ticks,
    })
}

/// Whether a group recorded as `pgid` led by `leader` before a restart is still the hook's: a
/// later boot, or a live leader that started at another time, is a stranger reusing the
/// number. While any member of a group lives the kernel keeps its number, so a group whose
/// leader is gone but whose members live is still ours.
pub fn group_is_ours(pgid: i32, leader: Option<&GroupLeader>) -> bool {
    if !group_running(pgid) {
        return false;
    }
    let Some(leader) = leader else {
        return true;
    };
    if boot_id().is_some_and(|b| b != leader.boot_id) {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pgid}/stat")) {
        Ok(stat) => stat_fields(&stat).is_some_and(|f| f.start_ticks == leader.start_ticks),
        Err(_) => true,
    }
}

/// The process groups of live (not zombie) processes of our own uid whose environment has
/// every `name=value` given: how a restart finds a hook whose group was not recorded before
/// the daemon died (by its job id and its daemon's store, so never another daemon's hook).
pub fn groups_with_env(required: &[(&str, &str)]) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let needles: Vec<Vec<u8>> = required
        .iter()
        .map(|(n, v)| format!("{n}={v}").into_bytes())
        .collect();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut groups: Vec<i32> = dir
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.uid() == me))
        .filter(|e| {
            std::fs::read(e.path().join("environ")).is_ok_and(|env| {
                needles
                    .iter()
                    .all(|n| env.split(|&b| b == 0).any(|v| v == n.as_slice()))
            })
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|stat| stat_fields(&stat))
        .filter(|f| !matches!(f.state, 'Z' | 'X' | 'x') && f.pgrp > 1)
        .map(|f| f.pgrp)
        .collect();
    groups.sort_unstable();
    groups.dedup();
    groups
}

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
}

struct StatFields {
    state: char,
    pgrp: i32,
    start_ticks: u64,
}

/// The fields of `/proc/PID/stat` we need. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn stat_fields(stat: &str) -> Option<StatFields> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state), so field N is f[N - 3].
    Some(StatFields {
        state: f.first()?.chars().next()?,
        pgrp: f.get(2)?.parse().ok()?,
        start_ticks: f.get(19)?.parse().ok()?,
    })
}

/// Reads a stream to its end in bounded memory: each line is logged (cut at
/// `LOG_LINE_BYTES`), and the last `TAIL_BYTES` are returned.
async fn collect<R: AsyncRead + Unpin>(
    r: Option<R>,
    model_id: String,
    job_id: u64,
    stream: &'static str,
) -> String {
    let Some(mut r) = r else { return String::new() };
    let mut buf = vec![0u8; 8192];
    let mut tail: Vec<u8> = Vec::with_capacity(TAIL_BYTES * 2);
    let mut line: Vec<u8> = Vec::new();
    let mut line_cut = false;
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        tail.extend_from_slice(chunk);
        if tail.len() > TAIL_BYTES * 2 {
            tail.drain(..tail.len() - TAIL_BYTES);
        }
        for &b in chunk {
            if b == b'\n' {
                log_line(&model_id, job_id, stream, &line, line_cut);
                line.clear();
                line_cut = false;
            } else if line.len() < LOG_LINE_BYTES {
                line.push(b);
            } else {
                line_cut = true;
            }
        }
    }
    if !line.is_empty() {
        log_line(&model_id, job_id, stream, &line, line_cut);
    }
    let start = tail.len().saturating_sub(TAIL_BYTES);
    String::from_utf8_lossy(&tail[start..]).into_owned()
}

fn log_line(model_id: &str, job_id: u64, stream: &'static str, line: &[u8], cut: bool) {
    let text = String::from_utf8_lossy(line);
    tracing::info!(model_id, job_id, stream, cut, "hook: {text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_odd_command_names() {
        let stat = "4242 (a) b (c) S 1 4240 4240 0 -1 4194304 100 0 0 0 0 0 0 0 20 0 1 0 184369 3133440 387";
        let f = stat_fields(stat).unwrap();
        assert_eq!(f.state, 'S');
        assert_eq!(f.pgrp, 4240);
        assert_eq!(f.start_ticks, 184369);
    }

    #[test]
    fn our_own_process_is_ours_and_a_changed_start_is_not() {
        use std::os::unix::process::CommandExt;
        // A group of our own: the test runner's group leader may be long gone.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .expect("spawn sleep");
        let pgid = child.id() as i32;
        let leader = leader_identity(pgid).expect("/proc tells the group leader");
        assert!(group_running(pgid));
        assert!(group_is_ours(pgid, Some(&leader)));
        let stranger = GroupLeader {
            start_ticks: leader.start_ticks + 1,
            ..leader.clone()
        };
        assert!(!group_is_ours(pgid, Some(&stranger)));
        let other_boot = GroupLeader {
            boot_id: "not-this-boot".into(),
            ..leader
        };
        assert!(!group_is_ours(pgid, Some(&other_boot)));
        assert!(leader_identity(std::process::id() as i32).is_some());
        let _ = child.kill();
        let _ = child.wait();
    }
}
