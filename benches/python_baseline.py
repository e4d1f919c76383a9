#!/usr/bin/env python3
"""The Python server a user would otherwise write: the baseline in examples/loadgen.rs.

An asyncio Unix socket server speaking visutility's ingest protocol (the subset the benchmark
uses): one JSON object per line, events keyed by model_id, {"op":"flush"} answered with
{"ok":true,"accepted":A,"rejected":R} once every earlier event of the connection is applied and
the touched models' state is committed to sqlite (synchronous=FULL, so fsynced), and rejected
lines answered with {"error":...,"line":N,"detail":...}.

Per model, the same policies as the benchmark's daemon config: a static threshold (drift_score
above 0.3 or accuracy below 0.9), the mean of the last 500 drift scores above 0.3, and River's
ADWIN on `error`. A decision is only counted (the daemon's benchmark streams are stationary and
fire nothing). Dirty models are pickled to sqlite at most every --flush-interval-ms, as the
daemon does, and at every flush.

    python3 benches/python_baseline.py --socket /tmp/py.sock --db /tmp/py.sqlite

Requires river 0.26.1 (pip install river==0.26.1).
"""
import argparse
import asyncio
import collections
import json
import os
import pickle
import sqlite3
import time

from river import drift

MAX_DRIFT = 0.3
MIN_ACCURACY = 0.9
WINDOW = 500
WINDOW_THRESHOLD = 0.3


class ModelState:
    __slots__ = ("events", "last_seen", "window", "window_sum", "adwin", "decisions")

    def __init__(self):
        self.events = 0
        self.last_seen = 0.0
        self.window = collections.deque(maxlen=WINDOW)
        self.window_sum = 0.0
        self.adwin = drift.ADWIN(delta=0.002)
        self.decisions = 0

    def __getstate__(self):
        return {k: getattr(self, k) for k in self.__slots__}

    def __setstate__(self, state):
        for k, v in state.items():
            setattr(self, k, v)

    def observe(self, ev, now):
        self.events += 1
        self.last_seen = ev.get("ts", now)
        fired = False
        d = ev.get("drift_score")
        a = ev.get("accuracy")
        if (d is not None and d > MAX_DRIFT) or (a is not None and a < MIN_ACCURACY):
            fired = True
        if d is not None:
            if len(self.window) == WINDOW:
                self.window_sum -= self.window[0]
            self.window.append(d)
            self.window_sum += d
            if len(self.window) == WINDOW and self.window_sum / WINDOW > WINDOW_THRESHOLD:
                fired = True
        e = ev.get("error")
        if e is not None:
            self.adwin.update(float(e))
            if self.adwin.drift_detected:
                fired = True
        if fired:
            self.decisions += 1


class Server:
    def __init__(self, db_path, flush_interval):
        self.models = {}
        self.dirty = set()
        self.db = sqlite3.connect(db_path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS models (id TEXT PRIMARY KEY, state BLOB)")
        self.db.commit()
        self.flush_interval = flush_interval

    def model(self, model_id):
        m = self.models.get(model_id)
        if m is None:
            row = self.db.execute("SELECT state FROM models WHERE id = ?", (model_id,)).fetchone()
            m = pickle.loads(row[0]) if row else ModelState()
            self.models[model_id] = m
        return m

    def persist(self):
        if not self.dirty:
            return
        rows = [(k, pickle.dumps(self.models[k], protocol=pickle.HIGHEST_PROTOCOL)) for k in self.dirty]
        self.db.executemany("INSERT OR REPLACE INTO models (id, state) VALUES (?, ?)", rows)
        self.db.commit()
        self.dirty.clear()

    async def periodic(self):
        while True:
            await asyncio.sleep(self.flush_interval)
            self.persist()

    async def handle(self, reader, writer):
        accepted = rejected = line_no = 0
        while True:
            try:
                raw = await reader.readline()
            except (ValueError, asyncio.LimitOverrunError):
                line_no += 1
                rejected += 1
                writer.write(json.dumps({"error": "line_too_long", "line": line_no, "detail": "line too long"}).encode() + b"\n")
                continue
            if not raw:
                break
            line_no += 1
            if not raw.strip():
                continue
            try:
                ev = json.loads(raw)
            except ValueError as e:
                rejected += 1
                writer.write(json.dumps({"error": "bad_json", "line": line_no, "detail": str(e)}).encode() + b"\n")
                continue
            if not isinstance(ev, dict):
                rejected += 1
                writer.write(json.dumps({"error": "bad_json", "line": line_no, "detail": "not an object"}).encode() + b"\n")
                continue
            op = ev.get("op")
            if op is not None:
                if op == "flush":
                    self.persist()
                    writer.write(json.dumps({"ok": True, "accepted": accepted, "rejected": rejected}).encode() + b"\n")
                    await writer.drain()
                elif op == "ping":
                    writer.write(b'{"ok":true}\n')
                else:
                    rejected += 1
                    writer.write(json.dumps({"error": "unknown_op", "line": line_no, "detail": str(op)}).encode() + b"\n")
                continue
            model_id = ev.get("model_id")
            if not isinstance(model_id, str) or not model_id:
                rejected += 1
                writer.write(json.dumps({"error": "bad_model_id", "line": line_no, "detail": "model_id"}).encode() + b"\n")
                continue
            self.model(model_id).observe(ev, time.time())
            self.dirty.add(model_id)
            accepted += 1
        writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--flush-interval-ms", type=int, default=200)
    args = ap.parse_args()
    try:
        os.unlink(args.socket)
    except FileNotFoundError:
        pass
    server = Server(args.db, args.flush_interval_ms / 1000.0)
    asyncio.get_running_loop().create_task(server.periodic())
    srv = await asyncio.start_unix_server(server.handle, path=args.socket, limit=64 * 1024)
    async with srv:
        await srv.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
