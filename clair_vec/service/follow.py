"""A service started on an alias follows it: when the alias moves to another collection, the
service moves too, without an outage.

Every ``interval`` seconds (``--follow-interval``, 2 s by default) the alias is resolved again, on
the worker thread, between searches. When it names another collection:

- built by the model being served: the service answers from the new collection from the next
  request on;
- built by another model: that model is loaded first (from the directory the collection records,
  ``CollectionInfo.extra["model_dir"]``, off the worker thread, while searches go on), checked to
  be the model the collection's vectors came from, and only then are model and collection switched
  together. A collection whose model cannot be loaded is not switched to: the service keeps
  answering from the old one and logs why, once.

Requests in flight at the switch finish on what they started with (see :class:`Serving`).
Ray Serve replicas each follow on their own.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.concurrency import run_in_threadpool

from clair_vec.method.pixel_batches import autocast
from clair_vec.retrieval.indexing import collection_precision
from clair_vec.retrieval.retriever import Retriever
from clair_vec.service.context import ServiceContext, Serving
from clair_vec.store.redaction import scrub

log = logging.getLogger("clair_vec.service")


class Follower:
    def __init__(self, ctx: ServiceContext, interval: float) -> None:
        self.ctx, self.interval = ctx, interval
        self._task: asyncio.Task | None = None
        self._loop: Any = None
        self._refused: str | None = None  # the collection last refused, so its reason is logged once
        self._failing: str | None = None  # the last failure of a check, logged once while it lasts
        self.switches = 0

    def start(self) -> None:
        """Start polling on the running event loop (once per loop; a no-op when not following)."""
        if self.interval <= 0:
            return
        loop = asyncio.get_running_loop()
        if self._task is not None and self._loop is loop and not self._task.done():
            return
        self._loop, self._task = loop, loop.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
                self._failing = None
            except Exception as exc:  # a database outage or a bad model must not end the polling
                why = scrub(f"{type(exc).__name__}: {exc}")
                if why != self._failing:  # an alias dropped for good is said once, not every interval
                    log.warning("following %r: %s (said once until it changes; the service keeps serving %r)",
                                self.ctx.name, why, self.ctx.serving.collection)  # fmt: skip
                    self._failing = why

    async def check(self) -> bool:
        """Resolve the name again and switch when it points elsewhere; True if it switched."""
        ctx = self.ctx
        loop = asyncio.get_running_loop()
        target = await loop.run_in_executor(ctx.worker, ctx.backend.resolve, ctx.name)
        current = ctx.serving
        if target == current.collection:
            return False
        info = await loop.run_in_executor(ctx.worker, ctx.backend.open_collection, target)
        precision = collection_precision(info)
        try:  # the device's rule first (fp16 needs CUDA): no model is loaded, every poll, to be refused after
            with autocast(current.model.device, precision):
                pass
        except ValueError as exc:  # fp16 vectors on a CPU service: every search would fail while /readyz said ready
            return self._refuse(target, f"its vectors were encoded at precision {precision}, which this service cannot "
                                        f"run: {exc}")  # fmt: skip
        if info.model == current.model.model_id:
            retriever = current.retriever
        else:
            model_dir = info.extra.get("model_dir")
            if not model_dir:
                return self._refuse(target, f"it holds vectors of model {info.model}, and records no model directory to load "
                                            "it from (index or reindex it with this version of clair-vec)")  # fmt: skip
            try:  # seconds of loading, off the worker: searches go on meanwhile
                retriever = await run_in_threadpool(Retriever, model_dir, backend=ctx.backend, device=str(current.model.device))
            except Exception as exc:
                return self._refuse(target, f"its model {model_dir!r} cannot be loaded ({type(exc).__name__}: {exc})")
            if retriever.model.model_id != info.model:
                return self._refuse(target, f"the model at {model_dir!r} is {retriever.model.model_id}, but its vectors are "
                                            f"of {info.model}")  # fmt: skip
        try:  # what only the model can say (int8 of a CLIP with nothing to quantise); its tower is built once, here
            await run_in_threadpool(retriever.model.foundation.check_precision, precision)
        except ValueError as exc:
            return self._refuse(target, f"its vectors were encoded at precision {precision}, which this service cannot "
                                        f"run: {exc}")  # fmt: skip
        await loop.run_in_executor(ctx.worker, retriever.collection, target)
        ctx.serving = Serving(target, retriever)  # one assignment: a request sees the old pair or the new one
        self.switches += 1
        self._refused = None
        log.warning("%r now points to collection %r (model %s): serving it", ctx.name, target, retriever.model.model_id)
        return True

    def _refuse(self, target: str, why: str) -> bool:
        if self._refused != target:
            log.error("%r moved to collection %r, but the service keeps serving %r: %s", self.ctx.name, target,
                      self.ctx.serving.collection, scrub(why))  # fmt: skip
            self._refused = target
        return False
