"""Concurrent searches gathered into batches: one CLIP pass per image domain and one engine call
per filter serve every request of a batch, and each request still gets exactly its own hits.

Batches form by themselves under load: while one batch runs on the worker thread, new requests
queue, and the next batch takes them all (up to ``max_batch``). A request that finds the worker
idle waits for company at most ``max_wait`` seconds, and only when other requests are already on
their way in (being read or decoded), so a lone client pays no wait. Nothing here runs on the
event loop but bookkeeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any


class Overloaded(Exception):
    """More searches are waiting than the service takes; the caller answers 503 + Retry-After."""


class Batcher:
    def __init__(self, run: Callable[[list[Any]], Sequence[Any]], executor: Executor, *, max_batch: int, max_wait: float,
                 max_pending: int) -> None:  # fmt: skip
        self.run, self.executor = run, executor
        self.max_batch, self.max_wait, self.max_pending = max_batch, max_wait, max_pending
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._task: asyncio.Task | None = None
        #: requests that are being read or decoded and will submit soon (see the module docstring)
        self.arriving = 0
        self.running = 0  # searches in the batch on the worker thread now
        self.batches = 0  # how many batches ran (for tests and metrics)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def check_room(self) -> None:
        """Refuse a search when ``max_pending`` are already arriving, queued or running."""
        busy = len(self._pending) + self.arriving + self.running
        if busy >= self.max_pending:
            raise Overloaded(f"{busy} searches are in flight; the limit is {self.max_pending}")

    async def submit(self, item: Any) -> Any:
        """The result of ``run`` for ``item``: its own result, or the exception it failed with."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._pending.append((item, future))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            if len(self._pending) < self.max_batch and self.arriving > 0 and self.max_wait > 0:
                await asyncio.sleep(self.max_wait)  # others are on their way: a bounded wait to take them too
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            self.batches += 1
            self.running = len(batch)
            try:
                results = await loop.run_in_executor(self.executor, self.run, [item for item, _ in batch])
            except Exception as exc:  # the batch as a whole failed (a bug, a dead database): every request says so
                results = [exc] * len(batch)
            finally:
                self.running = 0
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():  # the client went away
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
