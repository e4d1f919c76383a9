"""Where the daemon's ingest socket is by default: the same look-up the daemon makes.

The daemon (``src/config.rs``) takes ``[daemon] socket`` from its config file when one is
found (``$CONFIGURATION_DIRECTORY/config.toml``, ``/etc/visutility/config.toml`` when root,
``$XDG_CONFIG_HOME/visutility/config.toml``), else ``<runtime dir>/ingest.sock`` where the
runtime dir is ``$RUNTIME_DIRECTORY``, else ``$XDG_RUNTIME_DIR/visutility``, else
``<state dir>/run`` (state dir: ``$STATE_DIRECTORY``, else ``$XDG_STATE_HOME/visutility`` or
``~/.local/state/visutility``, else ``/var/lib/visutility``).
"""

from __future__ import annotations

import json
import os
import re
from typing import Mapping, Optional

_APP = "visutility"


def _first(env: Mapping[str, str], var: str) -> Optional[str]:
    # systemd passes colon-separated lists when a unit names several directories.
    value = env.get(var)
    if not value:
        return None
    first = value.split(":")[0]
    return first or None


def _xdg(env: Mapping[str, str], var: str, fallback: str) -> Optional[str]:
    # The `directories` crate ignores relative XDG values, as the spec asks.
    value = env.get(var)
    if value and os.path.isabs(value):
        return value
    home = _home(env)
    return os.path.join(home, fallback) if home else None


def _home(env: Mapping[str, str]) -> Optional[str]:
    home = env.get("HOME")
    if home:
        return home
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_dir or None
    except (ImportError, KeyError):
        return None


def _state_dir(env: Mapping[str, str]) -> str:
    systemd = _first(env, "STATE_DIRECTORY")
    if systemd:
        return systemd
    base = _xdg(env, "XDG_STATE_HOME", os.path.join(".local", "state"))
    return os.path.join(base, _APP) if base else "/var/lib/visutility"


def runtime_dir(env: Optional[Mapping[str, str]] = None) -> str:
    """The daemon's runtime directory (``Env::runtime_dir`` in ``src/config.rs``)."""
    env = os.environ if env is None else env
    systemd = _first(env, "RUNTIME_DIRECTORY")
    if systemd:
        return systemd
    xdg = env.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg):
        return os.path.join(xdg, _APP)
    return os.path.join(_state_dir(env), "run")


def _config_file(env: Mapping[str, str]) -> Optional[str]:
    candidates = []
    conf = _first(env, "CONFIGURATION_DIRECTORY")
    if conf:
        candidates.append(os.path.join(conf, "config.toml"))
    if os.geteuid() == 0:
        candidates.append("/etc/visutility/config.toml")
    base = _xdg(env, "XDG_CONFIG_HOME", ".config")
    if base:
        candidates.append(os.path.join(base, _APP, "config.toml"))
    for path in candidates:
        if os.path.isfile(path):
            return path
    return None


_SECTION = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\"-]+)\s*\]\s*(#.*)?$")
_BASIC = re.compile(r'^\s*socket\s*=\s*("(?:[^"\\]|\\.)*")\s*(#.*)?$')
_LITERAL = re.compile(r"^\s*socket\s*=\s*'([^']*)'\s*(#.*)?$")


def _socket_from_toml(text: str) -> Optional[str]:
    try:
        import tomllib  # Python 3.11+
    except ImportError:
        tomllib = None  # type: ignore[assignment]
    if tomllib is not None:
        try:
            daemon = tomllib.loads(text).get("daemon")
        except ValueError:
            daemon = None
        if isinstance(daemon, dict):
            value = daemon.get("socket")
            if isinstance(value, str) and value:
                return value
        if daemon is not None or "[daemon" not in text:
            return None
    # Python 3.9/3.10 (or a file tomllib refuses, as the daemon reads its socket paths even
    # from a config that does not validate): `socket = "..."` or '...' in `[daemon]`.
    section = ""
    for line in text.splitlines():
        m = _SECTION.match(line)
        if m:
            section = m.group(1)
            continue
        if section != "daemon":
            continue
        m = _BASIC.match(line)
        if m:
            try:
                value = json.loads(m.group(1))
            except ValueError:
                return None
            return value or None
        m = _LITERAL.match(line)
        if m:
            return m.group(1) or None
    return None


def default_socket(env: Optional[Mapping[str, str]] = None) -> str:
    """The ingest socket a ``Client(socket=None)`` connects to.

    ``$VISUTILITY_SOCKET``, else the daemon's own default: ``[daemon] socket`` of the config
    file the daemon would read, else ``<runtime dir>/ingest.sock``.
    """
    env = os.environ if env is None else env
    explicit = env.get("VISUTILITY_SOCKET")
    if explicit:
        return explicit
    config = _config_file(env)
    if config is not None:
        try:
            with open(config, encoding="utf-8") as f:
                configured = _socket_from_toml(f.read())
        except (OSError, UnicodeDecodeError):
            configured = None
        if configured:
            return configured
    return os.path.join(runtime_dir(env), "ingest.sock")
