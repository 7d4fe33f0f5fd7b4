"""Concurrent searches gathered into batches: one CLIP pass per image domain and one engine call
per filter serve every request of a batch, and each request still gets exactly its own hits.

Batches form by themselves under load: while one batch runs on the worker thread, new requests
queue, and the next batch takes them all (up to ``max_batch``). A request that finds the worker
idle waits for company only when company is expected, so a lone client pays no wait:

- for requests already on their way in (being read or decoded): at most ``max_wait`` seconds;
- for the clients of the batch that just finished, when fewer searches wait than were recently in
  flight together: until ``wait_share`` of the last batch's run time has passed since it ended
  (clients answered longer ago than that are not on their way back). Without this, N steady
  clients split into two cohorts that take turns on the worker, each half the batch it could be
  (the other half is between its answer and its next request): a CPU forward of ViT-B-32 costs
  10 % more an image at batch 8 than at 16, and waiting the few ms for them costs far less.

Nothing here runs on the event loop but bookkeeping.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any


class Overloaded(Exception):
    """More searches are waiting than the service takes; the caller answers 503 + Retry-After."""


class Batcher:
    def __init__(self, run: Callable[[list[Any]], Sequence[Any]], executor: Executor, *, max_batch: int, max_wait: float,
                 max_pending: int, wait_share: float = 0.05) -> None:  # fmt: skip
        self.run, self.executor = run, executor
        self.max_batch, self.max_wait, self.max_pending = max_batch, max_wait, max_pending
        self.wait_share = wait_share
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._task: asyncio.Task | None = None
        self._wake: asyncio.Future | None = None  # set by a submit while the drain waits for company
        self._last_run = 0.0  # seconds the last batch took on the worker thread
        self._last_end = 0.0  # when it ended (the event loop's clock)
        #: the most searches in flight at once since each of the last few batches started (the load
        #: the clients put on the service now; it forgets a burst four batches later)
        self._peaks: deque[int] = deque(maxlen=3)
        self._peak = 0
        #: requests that are being read or decoded and will submit soon (see the module docstring)
        self.arriving = 0
        self.running = 0  # searches in the batch on the worker thread now
        self.batches = 0  # how many batches ran (for tests and metrics)
        self.waits = 0  # how many times a batch waited for company

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def in_flight(self) -> int:
        return len(self._pending) + self.arriving + self.running

    def _note_load(self) -> None:
        self._peak = max(self._peak, self.in_flight)

    def check_room(self) -> None:
        """Refuse a search when ``max_pending`` are already arriving, queued or running."""
        busy = self.in_flight
        if busy >= self.max_pending:
            raise Overloaded(f"{busy} searches are in flight; the limit is {self.max_pending}")

    async def submit(self, item: Any) -> Any:
        """The result of ``run`` for ``item``: its own result, or the exception it failed with."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._pending.append((item, future))
        self._note_load()
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            if self.max_wait > 0:
                await self._company(loop)
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            self.batches += 1
            self.running = len(batch)
            self._peaks.append(self._peak)
            self._peak = self.in_flight
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self.executor, self.run, [item for item, _ in batch])
            except Exception as exc:  # the batch as a whole failed (a bug, a dead database): every request says so
                results = [exc] * len(batch)
            finally:
                self.running = 0
                self._last_run = time.perf_counter() - started
                self._last_end = loop.time()
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():  # the client went away
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def _company(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait, within the bounds in the module docstring, for the searches the batch may still take."""
        target = min(self.max_batch, max(self._peaks, default=0))
        now = loop.time()
        arriving_until = now + self.max_wait
        returning_until = self._last_end + min(self.wait_share * self._last_run, 1.0)
        waited = False
        while len(self._pending) < self.max_batch:
            until = max(arriving_until if self.arriving > 0 else now, returning_until if len(self._pending) < target else now)
            if until <= now:
                return
            if not waited:
                waited, self.waits = True, self.waits + 1
            self._wake = loop.create_future()
            try:
                await asyncio.wait_for(self._wake, until - now)
            except TimeoutError:
                return
            finally:
                self._wake = None
            now = loop.time()
