//! Where the process finds things: systemd's environment variables (`$CONFIGURATION_DIRECTORY`,
//! `$STATE_DIRECTORY`, `$RUNTIME_DIRECTORY`), else the user's directories from the
//! `directories` crate; the config file's look-up order; and the socket paths the operator
//! commands use, read even from a config that does not validate.

use std::path::{Path, PathBuf};

use super::{Config, ConfigError};

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

impl Config {
    /// The config the daemon runs with: `explicit` if given, else the first of the look-up
    /// order of the contract that exists, else the built-in defaults.
    pub fn discover(explicit: Option<&Path>, env: &Env) -> Result<Config, ConfigError> {
        match explicit.map(Path::to_owned).or_else(|| env.config_file()) {
            Some(path) => Config::load(&path, env),
            None => Ok(Config::defaults(env)),
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
