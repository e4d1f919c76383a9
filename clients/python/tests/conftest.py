"""Runs the real daemon binary, each test in its own private temp directory.

The binary is ``$VISUTILITY_BIN``, else ``target/debug/visutility`` of the repository
(build it with ``cargo build --locked``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[3]
DEADLINE = 30.0


def binary() -> str:
    path = os.environ.get("VISUTILITY_BIN") or str(REPO / "target" / "debug" / "visutility")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no daemon binary at {path}: run `cargo build --locked` or set VISUTILITY_BIN")
    return path


class Daemon:
    """One daemon in ``root`` (0700): config 0600, sockets and state inside."""

    def __init__(self, root: Path, extra: str = "", default_socket: bool = False) -> None:
        self.root = root
        # Without `socket` in the config the daemon binds its default, under XDG_RUNTIME_DIR.
        self.socket = (
            root / "xdg/run/visutility/ingest.sock" if default_socket else root / "ingest.sock"
        )
        self.control = root / "control.sock"
        self.state = root / "state"
        self.config = root / "config.toml"
        self.log = root / "daemon.log"
        for d in ("home", "xdg/run", "xdg/config", "xdg/state"):
            (root / d).mkdir(parents=True, exist_ok=True, mode=0o700)
        lines = ["[daemon]"]
        if not default_socket:
            lines.append(f"socket = {json.dumps(str(self.socket))}")
        lines += [
            f"control_socket = {json.dumps(str(self.control))}",
            f"state_dir = {json.dumps(str(self.state))}",
            "flush_interval_ms = 50",
            extra,
        ]
        self.config.write_text("\n".join(lines) + "\n")
        self.config.chmod(0o600)
        self.env = dict(
            os.environ,
            HOME=str(root / "home"),
            XDG_RUNTIME_DIR=str(root / "xdg/run"),
            XDG_CONFIG_HOME=str(root / "xdg/config"),
            XDG_STATE_HOME=str(root / "xdg/state"),
            RUST_LOG="info",
        )
        for k in ("RUNTIME_DIRECTORY", "STATE_DIRECTORY", "CONFIGURATION_DIRECTORY"):
            self.env.pop(k, None)
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "Daemon":
        assert self.proc is None or self.proc.poll() is not None
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [binary(), "daemon", "--config", str(self.config)],
            env=self.env,
            stdout=logf,
            stderr=logf,
            stdin=subprocess.DEVNULL,
        )
        logf.close()
        deadline = time.monotonic() + DEADLINE
        while not self.socket.is_socket():
            if self.proc.poll() is not None:
                pytest.fail(f"daemon exited ({self.proc.returncode}):\n{self.logs()}")
            if time.monotonic() > deadline:
                pytest.fail(f"daemon did not bind its socket:\n{self.logs()}")
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(DEADLINE)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(DEADLINE)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def logs(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    def cli(self, *args: str) -> Any:
        out = subprocess.run(
            [binary(), *args, "--config", str(self.config)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=DEADLINE,
        )
        assert out.returncode == 0, f"{args}: {out.stderr}\n{self.logs()}"
        return json.loads(out.stdout)

    def models(self) -> Dict[str, Dict[str, Any]]:
        return {m["model_id"]: m for m in self.cli("models", "--json")}

    def events(self, model_id: str) -> int:
        return int(self.models().get(model_id, {}).get("events", 0))


@pytest.fixture
def tmp_root() -> Iterator[Path]:
    # Short paths: a Unix socket path must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="vc-") as d:
        root = Path(d)
        root.chmod(0o700)
        yield root


@pytest.fixture
def make_daemon(tmp_root: Path) -> Iterator[Any]:
    started: List[Daemon] = []

    def make(extra: str = "", start: bool = True, **kw: Any) -> Daemon:
        d = Daemon(tmp_root / f"d{len(started)}", extra, **kw)
        started.append(d)
        return d.start() if start else d

    yield make
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            try:
                d.resume()
            except Exception:
                pass
            d.stop()


@pytest.fixture
def daemon(make_daemon: Any) -> Daemon:
    return make_daemon()


def wait_for(pred: Any, timeout: float = DEADLINE, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
