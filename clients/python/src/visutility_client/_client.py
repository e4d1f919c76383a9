"""The thread-backed client: a bounded queue, one writer thread, one reader per connection."""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import random
import re
import socket as _socket
import threading
import time
from collections import deque
from types import TracebackType
from typing import Any, Deque, Dict, List, Mapping, Optional, Tuple, Type, Union

from ._paths import default_socket

log = logging.getLogger("visutility_client")

Number = Union[int, float]

# The protocol's model id rule (README "The ingest protocol"): 1 to 128 bytes of
# [A-Za-z0-9._:/-], not starting with `.`, `/` or `-`, never containing `..`.
_MODEL_ID = re.compile(r"[A-Za-z0-9_:][A-Za-z0-9._:/-]{0,127}\Z")
# Metric names that need no JSON escaping (the daemon's rule for metric names).
_METRIC_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}\Z")
_FLUSH_OP = b'{"op":"flush"}\n'
_LOG_EVERY_S = 10.0
_now = time.time


def valid_model_id(model_id: object) -> bool:
    """Whether ``model_id`` follows the protocol's rule."""
    return (
        isinstance(model_id, str)
        and _MODEL_ID.match(model_id) is not None
        and ".." not in model_id
    )


class FlushTimeout(TimeoutError):
    """``flush`` did not see everything sent before it acknowledged in time."""


class ClientClosed(RuntimeError):
    """The client was closed while a ``flush`` waited."""


class _Invalid(Exception):
    """An event the client will not send (counted as rejected locally)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


def _num(x: object) -> Optional[str]:
    """JSON for a number, or None when it is not finite."""
    t = type(x)
    if t is float:
        return repr(x) if x - x == 0.0 else None  # type: ignore[operator]
    if t is int:
        return str(x)
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise _Invalid("bad_field", f"not a number: {x!r}")
    f = float(x)
    return repr(f) if math.isfinite(f) else None


def _finite_only(v: Any, counter: List[int]) -> Any:
    """A copy of a JSON-like value with non-finite floats replaced by None (counted)."""
    if isinstance(v, float) and not math.isfinite(v):
        counter[0] += 1
        return None
    if isinstance(v, dict):
        return {k: _finite_only(x, counter) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite_only(x, counter) for x in v]
    return v


class Client:
    """Sends events to the visutility daemon without ever blocking or raising in ``send``.

    ``send`` encodes the event and appends it to a bounded in-memory queue; a background
    thread writes the queue to the ingest socket, connecting (and reconnecting, with capped
    exponential backoff) as needed. When the queue is full the oldest event is dropped and
    counted in ``dropped``. Events written since the last acknowledged flush are kept (up to
    ``replay_size``) and written again on the next connection when a connection is lost, so
    delivery is at least once: an event is never lost once a ``flush`` returned after it,
    and may be applied twice if the daemon died after applying it but before acknowledging.
    """

    def __init__(
        self,
        socket: Union[str, "os.PathLike[str]", None] = None,
        *,
        queue_size: int = 100_000,
        replay_size: int = 100_000,
        flush_interval: float = 1.0,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
        connect_timeout: float = 2.0,
        stamp_ts: bool = True,
        exit_flush_timeout: float = 10.0,
    ) -> None:
        if queue_size < 1 or replay_size < 1:
            raise ValueError("queue_size and replay_size must be at least 1")
        self.socket_path: str = os.fspath(socket) if socket else default_socket()
        self._qmax = queue_size
        self._replay_max = replay_size
        self._auto_flush_lines = max(1, min(10_000, replay_size // 2))
        self._flush_interval = flush_interval
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._connect_timeout = connect_timeout
        self._stamp_ts = stamp_ts
        self._exit_flush_timeout = exit_flush_timeout

        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the writer waits here
        self._acked = threading.Condition(self._lock)  # flush() waits here
        self._q: Deque[str] = deque()
        self._enq_seq = 0  # sequence number of the newest event queued
        self._acked_seq = 0  # every event up to here is acknowledged (or was dropped)
        self._flush_target = 0  # the newest event a flush() caller waits for
        # The current connection.
        self._gen = 0
        self._alive = False
        self._sock: Optional[_socket.socket] = None
        self._markers: Deque[int] = deque()  # flush ops in flight: the seq each covers
        self._flush_op_seq = 0  # the seq the last flush op on this connection covers
        self._unflushed = 0  # lines written since the last flush op
        self._last_flush_op = time.monotonic()
        # Written but not acknowledged: (last seq, bytes, lines), oldest first.
        self._replay: Deque[Tuple[int, bytes, int]] = deque()
        self._replay_lines = 0
        # Counters.
        self._base = [0, 0, 0]  # accepted, rejected, replies_dropped of closed connections
        self._conn = [0, 0, 0]  # the same, from the last ok flush of this connection
        self._dropped = 0
        self._nonfinite = 0
        self._rejected_local = 0
        self._errors: Dict[str, int] = {}
        self._reconnects = 0
        self._replayed = 0
        self._last_error: Optional[str] = None
        self._closing = False
        self._waiting = False
        self._stop = threading.Event()
        self._ids: set = set()
        self._log_lock = threading.Lock()
        self._log_state: Dict[str, List[float]] = {}

        self._writer = threading.Thread(
            target=self._run, name="visutility-client-writer", daemon=True
        )
        self._writer.start()

    # ------------------------------------------------------------------ hot path

    def send(
        self,
        model_id: str,
        *,
        drift_score: Optional[Number] = None,
        accuracy: Optional[Number] = None,
        error: Union[bool, int, None] = None,
        value: Optional[Number] = None,
        metrics: Optional[Mapping[str, Number]] = None,
        meta: Any = None,
        ts: Optional[float] = None,
    ) -> bool:
        """Queue one event; True when queued, False when refused locally (never raises).

        ``ts`` defaults to the time of the call (Unix seconds), so an event queued while the
        daemon is down keeps its own time. NaN and infinite values are left out of the event
        and counted in ``nonfinite``; in ``meta`` they become ``null``.
        """
        # The common case (float fields) is encoded inline: this is the caller's hot path.
        try:
            if model_id not in self._ids:
                if not valid_model_id(model_id):
                    raise _Invalid("bad_model_id", f"invalid model id {model_id!r}")
                if len(self._ids) < 4096:
                    self._ids.add(model_id)
            out = '{"model_id":"' + model_id + '"'
            if ts is None:
                if self._stamp_ts:
                    out += ',"ts":' + repr(_now())
            elif type(ts) is float and ts - ts == 0.0:
                out += ',"ts":' + repr(ts)
            else:
                out = self._field(out, "ts", ts)
            if drift_score is not None:
                if type(drift_score) is float and drift_score - drift_score == 0.0:
                    out += ',"drift_score":' + repr(drift_score)
                else:
                    out = self._field(out, "drift_score", drift_score)
            if accuracy is not None:
                if type(accuracy) is float and accuracy - accuracy == 0.0:
                    out += ',"accuracy":' + repr(accuracy)
                else:
                    out = self._field(out, "accuracy", accuracy)
            if value is not None:
                if type(value) is float and value - value == 0.0:
                    out += ',"value":' + repr(value)
                else:
                    out = self._field(out, "value", value)
            if error is not None:
                if error is True:
                    out += ',"error":true'
                elif error is False:
                    out += ',"error":false'
                else:
                    out = self._field(out, "error", error)
            if metrics:
                out += self._metrics(metrics)
            if meta is not None:
                out += ',"meta":' + self._meta(meta)
            out += "}\n"
        except _Invalid as e:
            self._refuse(e.code, str(e))
            return False
        except Exception as e:  # never raise into the caller's hot path
            self._refuse("bad_field", f"cannot encode the event: {e!r}")
            return False
        with self._lock:
            if self._closing:
                self._dropped += 1
                return False
            q = self._q
            if len(q) >= self._qmax:
                q.popleft()
                self._dropped += 1
            q.append(out)
            self._enq_seq += 1
            if self._waiting:
                self._waiting = False
                self._work.notify()
        return True

    def _count_nonfinite(self, n: int = 1) -> None:
        with self._lock:
            self._nonfinite += n

    def _field(self, out: str, name: str, x: object) -> str:
        """``out`` with ``,"name":x``, or without it when x is not finite (counted)."""
        n = _num(x)
        if n is None:
            self._count_nonfinite()
            return out
        return out + ',"' + name + '":' + n

    def _metrics(self, metrics: Mapping[str, Number]) -> str:
        parts = []
        for k, x in metrics.items():
            n = _num(x)
            if n is None:
                self._count_nonfinite()
                continue
            if type(k) is str and _METRIC_NAME.match(k):
                parts.append('"' + k + '":' + n)
            else:
                parts.append(json.dumps(k) + ":" + n)
        return ',"metrics":{' + ",".join(parts) + "}"

    def _meta(self, meta: Any) -> str:
        try:
            return json.dumps(meta, separators=(",", ":"), allow_nan=False, default=str)
        except ValueError:
            counter = [0]
            clean = _finite_only(meta, counter)
            self._count_nonfinite(counter[0])
            return json.dumps(clean, separators=(",", ":"), default=str)

    def _refuse(self, code: str, detail: str) -> None:
        with self._lock:
            self._rejected_local += 1
            self._errors[code] = self._errors.get(code, 0) + 1
        self._log_limited("local:" + code, "event not sent: %s: %s", code, detail)

    # ------------------------------------------------------------------ flush / close

    def flush(self, timeout: Optional[float] = 10.0) -> Dict[str, int]:
        """Wait until every event queued before this call is acknowledged durable.

        Returns the counts (``accepted``, ``rejected`` and the local counters, see
        ``stats``). Raises ``FlushTimeout`` when that takes longer than ``timeout`` seconds
        (``None``: wait for ever), for instance while the daemon is down; the events stay
        queued and a later flush may succeed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            target = self._enq_seq
            if target > self._acked_seq:
                if target > self._flush_target:
                    self._flush_target = target
                self._waiting = False
                self._work.notify()
            while self._acked_seq < target:
                if self._closing:
                    raise ClientClosed("the client was closed before the flush completed")
                if deadline is None:
                    self._acked.wait()
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise FlushTimeout(
                        f"flush: {target - self._acked_seq} events not acknowledged after "
                        f"{timeout}s on {self.socket_path} (last error: {self._last_error})"
                    )
                self._acked.wait(remaining)
            return self._stats_locked()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the background threads; events not yet written are lost (use ``flush``)."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._work.notify_all()
            self._acked.notify_all()
            sock = self._sock
        self._stop.set()
        if sock is not None:
            try:
                sock.shutdown(_socket.SHUT_RDWR)  # unblocks a writer stuck in sendall
            except OSError:
                pass
        if self._writer is not threading.current_thread():
            self._writer.join(timeout)

    def __enter__(self) -> "Client":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        try:
            if exc_type is None:
                self.flush(self._exit_flush_timeout)
            else:
                try:
                    self.flush(self._exit_flush_timeout)
                except Exception as e:  # do not hide the body's exception
                    log.warning("visutility: flush on exit failed: %s", e)
        finally:
            self.close()

    # ------------------------------------------------------------------ counters

    def _stats_locked(self) -> Dict[str, int]:
        stats = {
            "accepted": self._base[0] + self._conn[0],
            "rejected": self._base[1] + self._conn[1] + self._rejected_local,
            "rejected_local": self._rejected_local,
            "dropped": self._dropped,
            "nonfinite": self._nonfinite,
            "reconnects": self._reconnects,
            "replayed": self._replayed,
            "queued": len(self._q),
            "unacknowledged": self._replay_lines,
        }
        replies_dropped = self._base[2] + self._conn[2]
        if replies_dropped:
            stats["replies_dropped"] = replies_dropped
        return stats

    def stats(self) -> Dict[str, int]:
        """Every counter: ``accepted`` and ``rejected`` as the daemon acknowledged them
        (summed over connections; ``rejected`` includes ``rejected_local``), ``dropped``
        (queue overflow), ``nonfinite`` (values left out), ``reconnects``, ``replayed``
        (lines written again after a reconnect), ``queued``, ``unacknowledged``."""
        with self._lock:
            return self._stats_locked()

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def nonfinite(self) -> int:
        return self._nonfinite

    @property
    def rejected_local(self) -> int:
        return self._rejected_local

    @property
    def errors(self) -> Dict[str, int]:
        """Error replies by code (and local refusals: ``bad_model_id``, ``bad_field``)."""
        with self._lock:
            return dict(self._errors)

    @property
    def connected(self) -> bool:
        return self._alive

    @property
    def last_error(self) -> Optional[str]:
        return self._last_error

    # ------------------------------------------------------------------ logging

    def _log_limited(self, key: str, msg: str, *args: object) -> None:
        """Log a warning at most once per ``_LOG_EVERY_S`` per key, with the count skipped."""
        now = time.monotonic()
        with self._log_lock:
            state = self._log_state.get(key)
            if state is not None and now - state[0] < _LOG_EVERY_S:
                state[1] += 1
                return
            skipped = int(state[1]) if state is not None else 0
            self._log_state[key] = [now, 0]
        if skipped:
            msg += " (and %d more like it)"
            args = args + (skipped,)
        log.warning("visutility: " + msg, *args)

    # ------------------------------------------------------------------ writer thread

    def _has_work_locked(self) -> bool:
        return bool(self._q) or bool(self._replay) or self._flush_target > self._acked_seq

    def _run(self) -> None:
        while True:
            try:
                self._loop()
                return
            except Exception:  # a bug here must not silently stop all delivery
                log.exception("visutility: client writer failed; restarting it")
                self._stop.wait(self._backoff_max)

    def _loop(self) -> None:
        backoff = self._backoff_initial
        while True:
            with self._lock:
                # Connect only when there is something to send.
                while not self._closing and not self._has_work_locked():
                    self._waiting = True
                    self._work.wait()
                if self._closing:
                    return
            sock = self._connect()
            if sock is None:
                self._stop.wait(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, self._backoff_max)
                continue
            started = time.monotonic()
            self._serve(sock)
            if time.monotonic() - started > 1.0:
                backoff = self._backoff_initial
            else:  # accepted then closed at once (too_many_connections, ...): back off
                self._stop.wait(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, self._backoff_max)

    def _connect(self) -> Optional[_socket.socket]:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            sock.settimeout(self._connect_timeout)
            sock.connect(self.socket_path)
            sock.settimeout(None)
        except (OSError, ValueError, TypeError) as e:
            sock.close()
            self._last_error = f"connect {self.socket_path}: {e}"
            self._log_limited(
                "connect", "cannot connect to %s: %s (retrying)", self.socket_path, e
            )
            return None
        return sock

    def _serve(self, sock: _socket.socket) -> None:
        with self._lock:
            self._gen += 1
            gen = self._gen
            if self._closing:
                sock.close()
                return
            self._alive = True
            self._sock = sock
            self._markers.clear()
            self._flush_op_seq = self._acked_seq
            self._unflushed = self._replay_lines
            self._last_flush_op = time.monotonic()
            replay = [blob for _, blob, _ in self._replay]
            if gen > 1:
                self._reconnects += 1
            if replay:
                self._replayed += self._replay_lines
        reader = threading.Thread(
            target=self._read, args=(sock, gen), name="visutility-client-reader", daemon=True
        )
        reader.start()
        if gen > 1:
            log.info("visutility: connected to %s again", self.socket_path)
        try:
            if replay:
                sock.sendall(b"".join(replay))
            while True:
                data = self._next_write(gen)
                if data is None:
                    return
                sock.sendall(data)
        except OSError as e:
            self._last_error = f"write to {self.socket_path}: {e}"
            self._log_limited("write", "connection to %s lost: %s", self.socket_path, e)
        finally:
            with self._lock:
                if self._gen == gen:
                    self._alive = False
                    self._sock = None
                    for i in range(3):
                        self._base[i] += self._conn[i]
                        self._conn[i] = 0
                    self._markers.clear()
            try:
                sock.shutdown(_socket.SHUT_RDWR)
            except OSError:
                pass
            reader.join(5.0)
            sock.close()

    def _next_write(self, gen: int) -> Optional[bytes]:
        """The next bytes to write on connection ``gen``, waiting for work; None to stop."""
        with self._lock:
            while True:
                if self._closing or not self._alive or self._gen != gen:
                    return None
                q = self._q
                room = self._replay_max - self._replay_lines
                batch: Optional[Any] = None
                if q and room > 0:
                    k = min(len(q), room, 8192)
                    last = self._enq_seq - (len(q) - k)
                    if k == len(q):
                        batch = q  # hand the whole queue over; send() appends to a new one
                        q = self._q = deque()
                    else:
                        batch = [q.popleft() for _ in range(k)]
                    self._replay_lines += k
                    self._unflushed += k
                taken = self._enq_seq - len(q)  # every seq up to here left the queue
                now = time.monotonic()
                flush = self._unflushed > 0 or self._flush_target > self._flush_op_seq
                flush = flush and (
                    (self._flush_target > self._flush_op_seq and taken >= self._flush_target)
                    or self._unflushed >= self._auto_flush_lines
                    or (room <= 0 and not self._markers)
                    or (not q and now - self._last_flush_op >= self._flush_interval)
                )
                if flush:
                    self._markers.append(taken)
                    self._flush_op_seq = taken
                    self._unflushed = 0
                    self._last_flush_op = now
                if batch is not None or flush:
                    break
                # Nothing to do now: wait for an event, an ack, or the periodic flush.
                self._waiting = True
                if self._unflushed > 0:
                    self._work.wait(
                        max(0.001, self._flush_interval - (now - self._last_flush_op))
                    )
                else:
                    self._work.wait()
                self._waiting = False
        data = b""
        if batch is not None:
            data = "".join(batch).encode("utf-8")
            with self._lock:
                self._replay.append((last, data, k))
        return data + _FLUSH_OP if flush else data

    # ------------------------------------------------------------------ reader thread

    def _read(self, sock: _socket.socket, gen: int) -> None:
        buf = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
                while True:
                    i = buf.find(b"\n")
                    if i < 0:
                        break
                    line, buf = buf[:i], buf[i + 1 :]
                    if not self._on_reply(line, gen):
                        return
        except OSError:
            pass
        finally:
            with self._lock:
                if self._gen == gen and self._alive:
                    self._alive = False
                    if not self._closing:
                        self._last_error = "the daemon closed the connection"
                    self._work.notify_all()
            try:
                sock.shutdown(_socket.SHUT_RDWR)  # the writer sees it at its next write
            except OSError:
                pass

    def _on_reply(self, line: bytes, gen: int) -> bool:
        """Handle one reply; False when the connection must be dropped."""
        try:
            v = json.loads(line)
        except ValueError:
            self._log_limited("reply", "unreadable reply from the daemon: %r", line[:200])
            return True
        if not isinstance(v, dict):
            return True
        if "ok" in v:
            with self._lock:
                if self._gen != gen or not self._alive or not self._markers:
                    return True
                upto = self._markers.popleft()
                if v.get("ok") is not True:
                    self._last_error = f"flush failed: {v.get('error')}: {v.get('detail')}"
                    ok = False
                else:
                    ok = True
                    self._conn[0] = int(v.get("accepted", 0))
                    self._conn[1] = int(v.get("rejected", 0))
                    self._conn[2] = int(v.get("replies_dropped", 0))
                    replay = self._replay
                    while replay and replay[0][0] <= upto:
                        self._replay_lines -= replay.popleft()[2]
                    if upto > self._acked_seq:
                        self._acked_seq = upto
                    self._acked.notify_all()
                    self._work.notify_all()
            if not ok:
                # The daemon could not promise durability: write everything unacknowledged
                # again on a new connection (at least once).
                self._log_limited(
                    "flush", "%s; resending on a new connection", self._last_error
                )
                return False
            return True
        code = v.get("error")
        if isinstance(code, str):
            with self._lock:
                self._errors[code] = self._errors.get(code, 0) + 1
            self._log_limited(
                "error:" + code,
                "daemon rejected line %s: %s: %s",
                v.get("line"),
                code,
                v.get("detail"),
            )
        return True
