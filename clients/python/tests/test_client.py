"""The Python client against the real daemon binary."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from visutility_client import AsyncClient, Client, FlushTimeout, default_socket, runtime_dir

from conftest import Daemon, wait_for

HOOK = """#!/bin/sh
cat >> "$(dirname "$0")/hook.out"
echo >> "$(dirname "$0")/hook.out"
"""


def hooked(root: Path) -> str:
    """Config: every event with drift_score above 0.5 or accuracy below 0.5 runs a hook that
    appends its stdin (the decision, with the event as the daemon parsed it) to hook.out."""
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    hook = root / "hook.sh"
    hook.write_text(HOOK)
    hook.chmod(0o700)
    cmd = json.dumps([str(hook)])
    return f"""
[hooks]
max_concurrent = 1
cooldown_s = 0
retries = 0
full = {{ command = {cmd}, timeout_s = 60 }}
fine_tune = {{ command = {cmd}, timeout_s = 60 }}

[[models]]
match = "*"
reset_on_retrain = false
[[models.policies]]
kind = "static_threshold"
max_drift = 0.5
min_accuracy = 0.5
"""


def hook_events(root: Path, n: int) -> List[Dict[str, Any]]:
    out = root / "hook.out"

    def read() -> Any:
        if not out.exists():
            return None
        decisions = [json.loads(l) for l in out.read_text().splitlines() if l.strip()]
        return decisions if len(decisions) >= n else None

    return [d["event"] for d in wait_for(read, what=f"{n} hook runs")]


def test_events_arrive_with_their_fields(make_daemon: Any, tmp_root: Path) -> None:
    """Every field of send() reaches the daemon as given; flush reports the daemon's counts."""
    d = make_daemon(hooked(tmp_root / "d0"))
    with Client(d.socket) as c:
        assert c.send(
            "fraud-v3",
            drift_score=0.9,
            accuracy=0.93,
            error=True,
            value=4.25,
            metrics={"latency_ms": 12.5, "n": 3},
            meta={"request": "r-1", "nested": [1, "x", None]},
            ts=1764172800.25,
        )
        for i in range(99):
            assert c.send("fraud-v3", drift_score=0.1, accuracy=0.99, meta={"seq": i})
        reply = c.flush(timeout=30)
    assert reply["accepted"] == 100
    assert reply["rejected"] == 0
    assert reply["dropped"] == 0
    assert d.events("fraud-v3") == 100
    (event,) = hook_events(d.root, 1)
    assert event["model_id"] == "fraud-v3"
    assert event["ts"] == 1764172800.25
    assert event["drift_score"] == 0.9
    assert event["accuracy"] == 0.93
    assert event["value"] == 4.25
    assert event["error"] in (True, 1, 1.0)
    assert event["metrics"] == {"latency_ms": 12.5, "n": 3}
    assert event["meta"] == {"request": "r-1", "nested": [1, "x", None]}


def test_nan_and_infinity_are_left_out(make_daemon: Any, tmp_root: Path) -> None:
    """NaN and infinite values are not sent (the event is, without them) and are counted."""
    d = make_daemon(hooked(tmp_root / "d0"))
    c = Client(d.socket)
    try:
        assert c.send(
            "m",
            drift_score=math.nan,
            accuracy=0.1,
            value=math.inf,
            metrics={"bad": -math.inf, "good": 2.0},
            meta={"x": math.nan, "y": 1},
        )
        reply = c.flush(timeout=30)
    finally:
        c.close()
    assert reply["accepted"] == 1 and reply["rejected"] == 0
    assert c.nonfinite == 4
    (event,) = hook_events(d.root, 1)
    assert "drift_score" not in event and "value" not in event
    assert event["accuracy"] == 0.1
    assert event["metrics"] == {"good": 2.0}
    assert event["meta"] == {"x": None, "y": 1}


def test_invalid_model_id_is_rejected_locally(daemon: Daemon) -> None:
    """A model id breaking the protocol rule is never sent; it counts as rejected."""
    with Client(daemon.socket) as c:
        assert not c.send("../etc", drift_score=0.1)
        assert not c.send("", drift_score=0.1)
        assert not c.send("m", drift_score="high")  # type: ignore[arg-type]
        assert c.send("ok-1", drift_score=0.1)
        reply = c.flush(timeout=30)
    assert reply["accepted"] == 1
    assert reply["rejected"] == 3 and reply["rejected_local"] == 3
    assert c.errors == {"bad_model_id": 2, "bad_field": 1}
    assert set(daemon.models()) == {"ok-1"}


def test_daemon_error_replies_are_counted_and_logged(
    daemon: Daemon, caplog: pytest.LogCaptureFixture
) -> None:
    """A line the daemon refuses is counted by its code and logged, rate-limited."""
    caplog.set_level(logging.WARNING, logger="visutility_client")
    far_future = time.time() + 10 * 86400
    with Client(daemon.socket) as c:
        for _ in range(5):
            c.send("m", drift_score=0.1, ts=far_future)  # more than a day ahead: bad_field
        c.send("m", drift_score=0.1)
        reply = c.flush(timeout=30)
        assert reply == {**reply, "accepted": 1, "rejected": 5}
        wait_for(lambda: c.errors.get("bad_field") == 5, what="5 error replies")
    logged = [r for r in caplog.records if "bad_field" in r.getMessage()]
    assert len(logged) == 1, [r.getMessage() for r in logged]


def test_killed_daemon_loses_no_acknowledged_event(daemon: Daemon) -> None:
    """SIGKILL and restart under a sending client: it reconnects by itself, resends what was
    not acknowledged, and every event sent before a successful flush is in the daemon."""
    c = Client(daemon.socket, backoff_max=0.2)
    sent = 0
    stop = threading.Event()

    def sender() -> None:
        nonlocal sent
        while not stop.is_set():
            for _ in range(50):
                c.send("crash", drift_score=0.1, meta={"seq": sent})
                sent += 1
            time.sleep(0.005)

    t = threading.Thread(target=sender)
    t.start()
    try:
        time.sleep(0.5)
        first = c.flush(timeout=30)  # acknowledged: must survive the crash
        acked = first["accepted"]
        assert acked > 0
        time.sleep(0.3)
        daemon.kill()
        time.sleep(0.5)  # the client keeps queueing meanwhile
        daemon.start()
        time.sleep(0.5)
        stop.set()
        t.join()
        reply = c.flush(timeout=30)
    finally:
        stop.set()
        c.close()
    stats = c.stats()
    assert stats["reconnects"] >= 1
    assert stats["dropped"] == 0 and stats["queued"] == 0
    stored = daemon.events("crash")
    # At least once: nothing lost; duplicates only among lines written again.
    assert sent <= stored <= sent + stats["replayed"], (sent, stored, stats)
    assert acked <= reply["accepted"]
    assert reply["rejected"] == 0


def test_flush_while_the_daemon_is_down_raises_then_recovers(daemon: Daemon) -> None:
    """A flush never claims success for events no daemon acknowledged."""
    c = Client(daemon.socket, backoff_max=0.2)
    try:
        daemon.stop()
        for i in range(10):
            c.send("late", value=i)
        with pytest.raises(FlushTimeout):
            c.flush(timeout=0.5)
        daemon.start()
        reply = c.flush(timeout=30)
    finally:
        c.close()
    assert reply["accepted"] == 10
    assert daemon.events("late") == 10


def test_send_never_blocks_when_the_daemon_is_down(tmp_root: Path) -> None:
    """No daemon at all: 100,000 sends return within a second."""
    c = Client(str(tmp_root / "nobody.sock"))
    try:
        start = time.perf_counter()
        for i in range(100_000):
            c.send("m", drift_score=0.1, accuracy=0.9)
        elapsed = time.perf_counter() - start
    finally:
        c.close()
    assert elapsed < 1.0, f"100,000 sends took {elapsed:.2f}s"
    assert c.dropped == 0


def test_send_never_blocks_when_the_daemon_is_stopped(daemon: Daemon) -> None:
    """A SIGSTOPped daemon (connections accepted, nothing read): sends still return at
    once; the full queue drops its oldest events and counts them; after SIGCONT the newest
    arrive."""
    c = Client(daemon.socket, queue_size=20_000, replay_size=20_000)
    try:
        c.send("warm", value=1)
        c.flush(timeout=30)
        daemon.pause()
        start = time.perf_counter()
        for i in range(100_000):
            c.send("stopped", value=i)
        elapsed = time.perf_counter() - start
        assert elapsed < 1.0, f"100,000 sends took {elapsed:.2f}s"
        assert c.dropped > 0
        daemon.resume()
        reply = c.flush(timeout=60)
    finally:
        daemon.resume()
        c.close()
    assert reply["dropped"] == c.dropped
    assert daemon.events("stopped") == 100_000 - c.dropped
    assert reply["accepted"] == 1 + 100_000 - c.dropped


def test_eight_threads_send_at_once(daemon: Daemon) -> None:
    """One client shared by 8 threads: every event arrives once, per model."""
    per_thread = 5000
    with Client(daemon.socket) as c:
        barrier = threading.Barrier(8)

        def work(n: int) -> None:
            barrier.wait()
            for i in range(per_thread):
                c.send(f"t{n}", value=i)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        reply = c.flush(timeout=60)
    assert reply["accepted"] == 8 * per_thread and reply["dropped"] == 0
    models = daemon.models()
    assert {m: models[m]["events"] for m in models} == {f"t{n}": per_thread for n in range(8)}


def test_async_client(daemon: Daemon) -> None:
    """AsyncClient: the same sends, an awaitable flush, a context manager that flushes."""

    async def main() -> Dict[str, int]:
        async with AsyncClient(daemon.socket) as c:
            for i in range(500):
                assert c.send("aio", accuracy=0.9, value=i)
            reply = await c.flush(timeout=30)
            assert reply["accepted"] == 500
            for i in range(10):
                c.send("aio", value=i)
        return c.stats()

    stats = asyncio.run(main())
    assert stats["accepted"] == 510
    assert daemon.events("aio") == 510


def test_context_manager_flushes_on_exit(daemon: Daemon) -> None:
    with Client(daemon.socket) as c:
        for i in range(1000):
            c.send("ctx", value=i)
    assert daemon.events("ctx") == 1000


def test_default_socket_is_the_daemons(make_daemon: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a socket argument the client finds the daemon's default socket."""
    d = make_daemon(default_socket=True)
    for k in ("VISUTILITY_SOCKET", "RUNTIME_DIRECTORY", "CONFIGURATION_DIRECTORY"):
        monkeypatch.delenv(k, raising=False)
    for k in ("HOME", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_STATE_HOME"):
        monkeypatch.setenv(k, d.env[k])
    assert default_socket() == str(d.socket)
    with Client() as c:
        c.send("default", value=1)
    assert d.events("default") == 1
    monkeypatch.setenv("VISUTILITY_SOCKET", "/elsewhere.sock")
    assert Client().socket_path == "/elsewhere.sock"


def test_default_socket_lookup_order(tmp_path: Path) -> None:
    env = {"HOME": "/h", "XDG_RUNTIME_DIR": "/run/user/1"}
    assert runtime_dir(env) == "/run/user/1/visutility"
    assert runtime_dir({**env, "RUNTIME_DIRECTORY": "/run/v:/run/w"}) == "/run/v"
    assert runtime_dir({"HOME": "/h"}) == "/h/.local/state/visutility/run"
    assert runtime_dir({"HOME": "/h", "STATE_DIRECTORY": "/var/lib/v"}) == "/var/lib/v/run"
    assert default_socket({**env, "VISUTILITY_SOCKET": "/x.sock"}) == "/x.sock"
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "config.toml").write_text('[daemon]\nsocket = "/run/v/in.sock" # here\n')
    assert default_socket({**env, "CONFIGURATION_DIRECTORY": str(conf)}) == "/run/v/in.sock"
    (conf / "config.toml").write_text("[daemon]\nstate_dir = '/s'\n")
    assert (
        default_socket({**env, "CONFIGURATION_DIRECTORY": str(conf)})
        == "/run/user/1/visutility/ingest.sock"
    )
