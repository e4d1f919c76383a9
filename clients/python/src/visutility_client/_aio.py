"""The asyncio variant: the same engine, with an awaitable flush."""

from __future__ import annotations

import asyncio
from types import TracebackType
import os
from typing import Any, Dict, Mapping, Optional, Type, Union

from ._client import Client, Number, log


class AsyncClient:
    """``Client`` for asyncio code.

    ``send`` is a plain (non-async) call that only appends to the client's bounded queue, so
    it never blocks the event loop; ``await flush(timeout)`` waits for the acknowledgement
    without blocking the loop; ``async with AsyncClient() as client:`` flushes on exit. The
    socket I/O runs on the same background threads as ``Client``'s, so the behaviour (queue
    bound, dropping, replay, reconnection, counters) is the same.
    """

    def __init__(
        self, socket: Union[str, "os.PathLike[str]", None] = None, **options: Any
    ) -> None:
        self._client = Client(socket, **options)
        self.socket_path = self._client.socket_path

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
        """Queue one event (see ``Client.send``); never blocks, never raises."""
        return self._client.send(
            model_id,
            drift_score=drift_score,
            accuracy=accuracy,
            error=error,
            value=value,
            metrics=metrics,
            meta=meta,
            ts=ts,
        )

    async def flush(self, timeout: Optional[float] = 10.0) -> Dict[str, int]:
        """Like ``Client.flush``, awaited (raises ``FlushTimeout`` on timeout)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._client.flush, timeout)

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._client.close)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        try:
            if exc_type is None:
                await self.flush(self._client._exit_flush_timeout)
            else:
                try:
                    await self.flush(self._client._exit_flush_timeout)
                except Exception as e:  # do not hide the body's exception
                    log.warning("visutility: flush on exit failed: %s", e)
        finally:
            await self.aclose()

    def stats(self) -> Dict[str, int]:
        return self._client.stats()

    @property
    def dropped(self) -> int:
        return self._client.dropped

    @property
    def nonfinite(self) -> int:
        return self._client.nonfinite

    @property
    def rejected_local(self) -> int:
        return self._client.rejected_local

    @property
    def errors(self) -> Dict[str, int]:
        return self._client.errors

    @property
    def connected(self) -> bool:
        return self._client.connected
