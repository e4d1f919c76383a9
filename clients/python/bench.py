#!/usr/bin/env python3
"""Events per second one Python thread sends through ``Client.send`` vs a bare
``socket.sendall`` of pre-encoded lines, median of 3 runs each, both ending with a flush
acknowledged by the daemon (so both count only what the daemon made durable).

    python clients/python/bench.py [--socket PATH | --bin target/release/visutility] [-n N]

With ``--bin`` it starts that daemon binary in a temporary directory (and stops it after);
otherwise it uses the running daemon at ``--socket`` (default: as ``Client()`` finds it).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, List, Optional, Tuple

from visutility_client import Client, default_socket


def bare(path: str, n: int, run: int) -> Tuple[float, float]:
    now = time.time()
    lines = [
        (
            '{"model_id":"bench-bare-%d","ts":%r,"drift_score":0.12,"accuracy":0.93,"value":%d}\n'
            % (run, now, i)
        ).encode()
        for i in range(n)
    ]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    t0 = time.perf_counter()
    for line in lines:
        s.sendall(line)
    t_send = time.perf_counter() - t0
    s.sendall(b'{"op":"flush"}\n')
    buf = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("daemon closed the connection")
        buf += chunk
        replies = [json.loads(x) for x in buf.split(b"\n")[:-1]]
        done = [r for r in replies if "ok" in r]
        if done:
            break
    t_total = time.perf_counter() - t0
    s.close()
    assert done[0].get("accepted") == n, done[0]
    return n / t_send, n / t_total


def client(path: str, n: int, run: int) -> Tuple[float, float]:
    c = Client(path, queue_size=n)
    model = f"bench-client-{run}"
    t0 = time.perf_counter()
    for i in range(n):
        c.send(model, drift_score=0.12, accuracy=0.93, value=i)
    t_send = time.perf_counter() - t0
    reply = c.flush(timeout=120)
    t_total = time.perf_counter() - t0
    c.close()
    assert reply["accepted"] == n and reply["dropped"] == 0, reply
    return n / t_send, n / t_total


def start_daemon(binary: str, root: str) -> Tuple[subprocess.Popen, str]:
    sock = os.path.join(root, "ingest.sock")
    config = os.path.join(root, "config.toml")
    with open(config, "w") as f:
        f.write(
            "[daemon]\n"
            f"socket = {json.dumps(sock)}\n"
            f"control_socket = {json.dumps(os.path.join(root, 'control.sock'))}\n"
            f"state_dir = {json.dumps(os.path.join(root, 'state'))}\n"
        )
    os.chmod(config, 0o600)
    proc = subprocess.Popen(
        [binary, "daemon", "--config", config],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not os.path.exists(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the daemon did not start")
        time.sleep(0.05)
    return proc, sock


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--socket", help="a running daemon's ingest socket")
    ap.add_argument("--bin", help="start this daemon binary in a temporary directory")
    ap.add_argument("-n", type=int, default=100_000, help="events per run (default 100000)")
    args = ap.parse_args()

    proc: Optional[subprocess.Popen] = None
    tmp = None
    if args.bin:
        tmp = tempfile.TemporaryDirectory(prefix="vbench-")
        os.chmod(tmp.name, 0o700)
        proc, path = start_daemon(args.bin, tmp.name)
    else:
        path = args.socket or default_socket()
    try:
        results = {"bare": [], "client": []}  # type: dict
        runs: List[Tuple[str, Callable[[str, int, int], Tuple[float, float]]]] = [
            ("bare", bare),
            ("client", client),
        ]
        for run in range(3):
            for name, fn in runs:
                results[name].append(fn(path, args.n, run))
        print(f"{args.n} events per run, median of 3 runs, Python {sys.version.split()[0]}")
        med = {}
        for name in ("bare", "client"):
            send = statistics.median(r[0] for r in results[name])
            total = statistics.median(r[1] for r in results[name])
            med[name] = (send, total)
            label = "socket.sendall, pre-encoded" if name == "bare" else "Client.send"
            print(
                f"  {label:28} {send:>10,.0f} events/s returned to the caller, "
                f"{total:>10,.0f} events/s acknowledged by a flush"
            )
        print(
            f"  Client.send / bare: {med['client'][0] / med['bare'][0]:.2f}x (calls), "
            f"{med['client'][1] / med['bare'][1]:.2f}x (acknowledged)"
        )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
