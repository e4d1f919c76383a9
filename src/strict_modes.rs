//! StrictModes: the ownership and mode checks on the files whose contents decide what the
//! daemon runs (the config file and each hook) and on the state directory, as sshd's
//! `StrictModes` and cron do it.
//!
//! A file is trusted when it and every directory above it are owned by root or the daemon's
//! user and writable by no one else: group write is accepted only for group root, and a
//! directory others may write (such as `/tmp`) is accepted only when it is sticky and the
//! entry in it is owned by root or the daemon's user (then nobody else may rename or remove
//! that entry). Symlinks are followed component by component, so both the link's directory
//! and everything its target passes through are checked.
//!
//! The daemon checks at start, at every reload and before each hook run; `check-config` runs
//! the same checks as the user running it. `[daemon] allow_insecure_modes = true` turns them
//! off for development setups (and is logged as a warning at every start).

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use crate::config::{Config, HooksConfig, KeyError};

/// How many symlinks one path may pass through (the kernel's own limit).
const MAX_SYMLINKS: usize = 40;

/// A path the daemon refuses to trust, with what is wrong and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Insecure {
    #[error("{path}: {problem}; fix: {fix}")]
    Mode {
        path: PathBuf,
        problem: String,
        fix: String,
    },
    #[error("{path}: cannot check its owner and mode")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Insecure {
    pub fn path(&self) -> &Path {
        match self {
            Insecure::Mode { path, .. } | Insecure::Io { path, .. } => path,
        }
    }
}

/// What a check found, for messages that name the path and the fix.
#[derive(Debug, Default)]
pub struct Findings(pub Vec<Insecure>);

impl fmt::Display for Findings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "insecure {e}")?;
            if let Some(source) = std::error::Error::source(e) {
                write!(f, ": {source}")?;
            }
        }
        if !self.0.is_empty() {
            write!(
                f,
                "\n(or set [daemon] allow_insecure_modes = true, on a development machine only)"
            )?;
        }
        Ok(())
    }
}

/// The daemon's own uid: with root, the only owner trusted.
pub fn daemon_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn trusted_owner(uid: u32, me: u32) -> bool {
    uid == 0 || uid == me
}

/// Checks the file at `path` (and every directory above it) for the daemon's user `me`.
pub fn check_file(path: &Path, me: u32) -> Result<(), Insecure> {
    walk(path, me).map(|_| ())
}

/// Checks `dir`, which the daemon keeps its state in: its ancestors as for any trusted file,
/// and the directory itself owned by the daemon's user exactly and writable by nobody else.
pub fn check_state_dir(dir: &Path, me: u32) -> Result<(), Insecure> {
    let (resolved, meta) = walk(dir, me)?;
    let bad = |problem: String, fix: String| Insecure::Mode {
        path: resolved.clone(),
        problem,
        fix,
    };
    if !meta.is_dir() {
        return Err(bad("not a directory".into(), "remove it".into()));
    }
    if meta.uid() != me {
        return Err(bad(
            format!(
                "the state directory is owned by uid {}, not by the daemon's user (uid {me})",
                meta.uid()
            ),
            format!("chown {me} {}", resolved.display()),
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(bad(
            format!(
                "the state directory is writable by others (mode {:o})",
                meta.mode() & 0o7777
            ),
            format!("chmod go-w {}", resolved.display()),
        ));
    }
    Ok(())
}

/// The config file, each hook's program (resolved on its `PATH` when given as a bare name)
/// and each argument that is an absolute path of an existing file (the script an interpreter
/// such as `/bin/sh` is given is code too). A hook program that does not exist yet is
/// skipped: it is checked again before each run.
pub fn check_config(config: &Config, me: u32) -> Findings {
    let mut found = Vec::new();
    if let Some(path) = &config.source
        && let Err(e) = check_file(path, me)
    {
        found.push(e);
    }
    let path_var = hook_path_var(&config.hooks.env);
    for spec in [
        &config.hooks.full,
        &config.hooks.fine_tune,
        &config.hooks.escalate,
        &config.hooks.rollback,
        &config.hooks.promote,
    ]
    .into_iter()
    .flatten()
    {
        // A program not found is reported with its key path by `check_hook_programs`.
        if let Some(program) = resolve_program(&spec.command[0], path_var.as_deref()) {
            found.extend(check_file(&program, me).err());
        }
        found.extend(check_hook_args(&spec.command[1..], me));
    }
    Findings(found)
}

/// Hook programs that would fail at their first run, each under `hooks.<action>.command`.
#[derive(Debug, Default)]
pub struct HookPrograms {
    /// An absolute path that is missing, not a file or not executable: `check-config` fails.
    pub errors: Vec<KeyError>,
    /// A name not found on the hook's `PATH`, or a relative path not found from here (the
    /// daemon may run elsewhere, or the program may be installed later).
    pub warnings: Vec<KeyError>,
}

/// Finds the hook programs that cannot run as configured. The daemon only logs these: it
/// starts with a hook that is installed later, and looks the program up again at each run.
pub fn check_hook_programs(hooks: &HooksConfig) -> HookPrograms {
    use std::os::unix::fs::PermissionsExt;

    let mut out = HookPrograms::default();
    let path_var = hook_path_var(&hooks.env);
    for (action, spec) in [
        ("full", &hooks.full),
        ("fine_tune", &hooks.fine_tune),
        ("escalate", &hooks.escalate),
        ("rollback", &hooks.rollback),
        ("promote", &hooks.promote),
    ] {
        let Some(spec) = spec else { continue };
        let program = &spec.command[0];
        let key = format!("hooks.{action}.command");
        let problem = |message: String| KeyError {
            path: key.clone(),
            message,
        };
        if program.starts_with('/') {
            let fail = format!("the first {action} hook run would fail");
            match std::fs::metadata(program) {
                Err(e) => out.errors.push(problem(format!("{program}: {e}; {fail}"))),
                Ok(m) if !m.is_file() => out
                    .errors
                    .push(problem(format!("{program} is not a file; {fail}"))),
                Ok(m) if m.permissions().mode() & 0o111 == 0 => out.errors.push(problem(format!(
                    "{program} is not executable (mode {:o}); {fail}; fix: chmod +x {program}",
                    m.permissions().mode() & 0o7777
                ))),
                Ok(_) => {}
            }
        } else if resolve_program(program, path_var.as_deref()).is_none() {
            let message = if program.contains('/') {
                format!(
                    "{program} does not exist relative to this directory; the daemon resolves it from its own working directory (an absolute path is safer)"
                )
            } else {
                format!(
                    "{program:?} is not found on the hook's PATH (the daemon's, or [hooks] env PATH); the {action} hook will fail unless it is installed before it runs, or give its absolute path"
                )
            };
            out.warnings.push(problem(message));
        }
    }
    out
}

/// The `PATH` a hook gets: `[hooks] env` may set it, else it is the daemon's.
pub fn hook_path_var(env: &[(String, String)]) -> Option<std::ffi::OsString> {
    env.iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.into())
        .or_else(|| std::env::var_os("PATH"))
}

/// The arguments of a hook that are absolute paths of existing files: the script given to an
/// interpreter is code as much as the program is.
pub fn check_hook_args(args: &[String], me: u32) -> Vec<Insecure> {
    args.iter()
        .map(Path::new)
        .filter(|p| p.is_absolute() && p.is_file())
        .filter_map(|p| check_file(p, me).err())
        .collect()
}

/// Where `program` is: itself when it has a slash, else the first executable of that name in
/// `path_var`'s directories (as `execvp` would find it).
pub fn resolve_program(program: &str, path_var: Option<&OsStr>) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.exists().then_some(p);
    }
    let path_var = path_var?;
    std::env::split_paths(path_var)
        .filter(|d| d.is_absolute())
        .map(|d| d.join(program))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Walks `path` from `/`, checking every directory on the way and the final entry; returns
/// the resolved path and the final entry's metadata.
fn walk(path: &Path, me: u32) -> Result<(PathBuf, std::fs::Metadata), Insecure> {
    let io = |path: &Path, source| Insecure::Io {
        path: path.to_owned(),
        source,
    };
    let absolute = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir().map_err(|e| io(path, e))?.join(path)
    };
    // Components still to resolve, in reverse order so the next one is popped.
    let mut todo: Vec<PathBuf> = components(&absolute);
    let mut resolved = PathBuf::from("/");
    let mut links = 0;
    let mut parent = std::fs::symlink_metadata(&resolved).map_err(|e| io(&resolved, e))?;
    check_dir_entry(&resolved, &parent, me)?;
    // Whether `resolved` (a directory) lets others write entries, and is sticky.
    loop {
        let Some(name) = todo.pop() else {
            return Ok((resolved, parent));
        };
        if name.as_os_str() == ".." {
            resolved.pop();
            parent = std::fs::symlink_metadata(&resolved).map_err(|e| io(&resolved, e))?;
            continue;
        }
        let next = resolved.join(&name);
        let meta = std::fs::symlink_metadata(&next).map_err(|e| io(&next, e))?;
        check_in_dir(&resolved, &parent, &next, &meta, me)?;
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(io(
                    &next,
                    std::io::Error::other("too many levels of symbolic links"),
                ));
            }
            let target = std::fs::read_link(&next).map_err(|e| io(&next, e))?;
            if target.is_absolute() {
                resolved = PathBuf::from("/");
                parent = std::fs::symlink_metadata(&resolved).map_err(|e| io(&resolved, e))?;
            }
            todo.extend(components(&target));
            continue;
        }
        if meta.is_dir() {
            check_dir_entry(&next, &meta, me)?;
        } else if !todo.is_empty() {
            return Err(io(&next, std::io::Error::from_raw_os_error(libc::ENOTDIR)));
        } else {
            check_file_entry(&next, &meta, me)?;
        }
        resolved = next;
        parent = meta;
    }
}

/// The normal components of `p`, reversed (`.` dropped, `..` kept).
fn components(p: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect();
    v.reverse();
    v
}

/// Owner root or us; no write for a group other than root, none for others.
fn owner_and_write_bits(
    path: &Path,
    meta: &std::fs::Metadata,
    me: u32,
    what: &str,
) -> Result<(), Insecure> {
    let bad = |problem: String, fix: String| Insecure::Mode {
        path: path.to_owned(),
        problem,
        fix,
    };
    if !trusted_owner(meta.uid(), me) {
        return Err(bad(
            format!(
                "{what} owned by uid {}, not by root or the daemon's user (uid {me})",
                meta.uid()
            ),
            format!("chown root {}", path.display()),
        ));
    }
    let mode = meta.mode();
    if mode & 0o020 != 0 && meta.gid() != 0 {
        return Err(bad(
            format!(
                "{what} writable by group {} (mode {:o}; only group root may have write access)",
                meta.gid(),
                mode & 0o7777
            ),
            format!("chmod g-w {}", path.display()),
        ));
    }
    Ok(())
}

/// A file (hook program, script, config): never writable by others.
fn check_file_entry(path: &Path, meta: &std::fs::Metadata, me: u32) -> Result<(), Insecure> {
    let what = if meta.file_type().is_socket() {
        "a socket"
    } else {
        "a file"
    };
    owner_and_write_bits(path, meta, me, what)?;
    if meta.mode() & 0o002 != 0 {
        return Err(Insecure::Mode {
            path: path.to_owned(),
            problem: format!(
                "{what} writable by everyone (mode {:o})",
                meta.mode() & 0o7777
            ),
            fix: format!("chmod o-w {}", path.display()),
        });
    }
    Ok(())
}

/// A directory on the way: owned by root or us, no group write but group root's. Write for
/// others is judged per entry ([`check_in_dir`]), since a sticky directory protects the
/// entries its writers do not own.
fn check_dir_entry(path: &Path, meta: &std::fs::Metadata, me: u32) -> Result<(), Insecure> {
    let mode = meta.mode();
    // A sticky group-writable directory protects entries like a sticky world-writable one.
    if mode & 0o1000 != 0 {
        if !trusted_owner(meta.uid(), me) {
            return owner_and_write_bits(path, meta, me, "a directory");
        }
        return Ok(());
    }
    owner_and_write_bits(path, meta, me, "a directory")
}

/// The entry `next` of the directory `dir`: in a directory others may write, only a sticky
/// one, and only for an entry owned by root or us.
fn check_in_dir(
    dir: &Path,
    dir_meta: &std::fs::Metadata,
    next: &Path,
    meta: &std::fs::Metadata,
    me: u32,
) -> Result<(), Insecure> {
    let mode = dir_meta.mode();
    let others_write = mode & 0o002 != 0 || (mode & 0o020 != 0 && dir_meta.gid() != 0);
    if !others_write {
        return Ok(());
    }
    if mode & 0o1000 == 0 {
        return Err(Insecure::Mode {
            path: dir.to_owned(),
            problem: format!(
                "a directory writable by others (mode {:o}) and not sticky: anyone may replace {}",
                mode & 0o7777,
                next.display()
            ),
            fix: format!("chmod go-w {}", dir.display()),
        });
    }
    if !trusted_owner(meta.uid(), me) {
        return Err(Insecure::Mode {
            path: next.to_owned(),
            problem: format!(
                "owned by uid {}, not by root or the daemon's user (uid {me}), in the shared directory {}",
                meta.uid(),
                dir.display()
            ),
            fix: format!("chown root {}", next.display()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Issue 12.6: hook programs that would fail at their first run.
    #[test]
    fn hook_programs_that_cannot_run_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ok = d.join("ok");
        let plain = d.join("plain");
        fs::write(&ok, "#!/bin/sh\n").unwrap();
        fs::write(&plain, "#!/bin/sh\n").unwrap();
        chmod(&ok, 0o755);
        chmod(&plain, 0o644);
        fs::write(d.join("bare-ok"), "#!/bin/sh\n").unwrap();
        chmod(&d.join("bare-ok"), 0o755);
        let spec = |p: &Path| {
            Some(crate::config::HookSpec {
                command: vec![p.to_str().unwrap().to_owned()],
                timeout_s: 1,
            })
        };
        let mut hooks = crate::config::Config::defaults(&crate::config::Env::default()).hooks;
        hooks.env = vec![("PATH".into(), d.to_str().unwrap().into())];
        hooks.full = spec(&ok);
        hooks.fine_tune = spec(Path::new("bare-ok"));
        hooks.escalate = spec(Path::new("bare-missing"));
        let found = check_hook_programs(&hooks);
        assert!(found.errors.is_empty(), "{found:?}");
        assert_eq!(found.warnings.len(), 1, "{found:?}");
        assert_eq!(found.warnings[0].path, "hooks.escalate.command");
        assert!(
            found.warnings[0]
                .message
                .contains("\"bare-missing\" is not found on the hook's PATH")
        );

        hooks.full = spec(&d.join("missing"));
        hooks.fine_tune = spec(&plain);
        hooks.escalate = spec(d);
        let found = check_hook_programs(&hooks);
        assert!(found.warnings.is_empty(), "{found:?}");
        let errors: Vec<_> = found.errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].starts_with("hooks.full.command: ") && errors[0].contains("No such file"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("hooks.fine_tune.command: ")
                && errors[1].contains("is not executable (mode 644)"),
            "{errors:?}"
        );
        assert!(
            errors[2].starts_with("hooks.escalate.command: ")
                && errors[2].contains("is not a file"),
            "{errors:?}"
        );
    }

    #[test]
    fn modes_decide_trust() {
        let me = daemon_uid();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        chmod(d, 0o700);
        let f = d.join("hook");
        fs::write(&f, "#!/bin/sh\n").unwrap();
        chmod(&f, 0o755);
        check_file(&f, me).unwrap();

        chmod(&f, 0o757);
        let e = check_file(&f, me).unwrap_err();
        assert!(e.to_string().contains("chmod o-w"), "{e}");
        chmod(&f, 0o755);

        // A world-writable directory above: refused unless sticky.
        chmod(d, 0o777);
        let e = check_file(&f, me).unwrap_err();
        assert_eq!(e.path(), d, "{e}");
        chmod(d, 0o1777);
        check_file(&f, me).unwrap();
        chmod(d, 0o700);

        // A symlink is followed: its target's directories count too.
        let other = tempfile::tempdir().unwrap();
        let target = other.path().join("real");
        fs::write(&target, "x").unwrap();
        let link = d.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        check_file(&link, me).unwrap();
        chmod(other.path(), 0o777);
        let e = check_file(&link, me).unwrap_err();
        assert_eq!(e.path(), other.path(), "{e}");

        // The state directory is ours and closed to others.
        let state = d.join("state");
        fs::create_dir(&state).unwrap();
        chmod(&state, 0o750);
        check_state_dir(&state, me).unwrap();
        chmod(&state, 0o1777);
        assert!(check_state_dir(&state, me).is_err());
        assert!(check_state_dir(&state, me.wrapping_add(1)).is_err());
    }

    #[test]
    fn bare_names_resolve_on_path() {
        let p = resolve_program("sh", Some(OsStr::new("/nonexistent:/bin:/usr/bin")));
        assert!(p.is_some_and(|p| p.ends_with("sh")));
        assert_eq!(resolve_program("sh", Some(OsStr::new("relative"))), None);
        assert_eq!(resolve_program("/no/such/hook", None), None);
    }
}
