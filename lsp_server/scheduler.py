"""Latest-wins scheduling of model work on one worker thread, off the event loop.

Each job has a key (a document and a kind of work). A newer job with the same key stops the
older one: before it starts (it is skipped without touching the model), or while it runs (its
`should_stop` turns True and the engine stops between denoising steps). A job also stops when
its own check says it is stale (the document moved to a newer version) or when its awaiting
request is cancelled (`$/cancelRequest`). Stopped jobs never deliver results.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class Job(Generic[T]):
    """One unit of model work. `should_stop` is safe to call from any thread."""

    def __init__(self, key: object, is_stale: Callable[[], bool] | None = None) -> None:
        self.key = key
        self._stop = threading.Event()
        self._is_stale = is_stale or (lambda: False)
        self.reason = ""
        self.started = False
        self.queued_ms = 0.0

    def stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self.reason = reason
            self._stop.set()

    def should_stop(self) -> bool:
        if self._stop.is_set():
            return True
        if self._is_stale():
            self.stop("stale")
            return True
        return False


class Stopped(Exception):
    """The job was superseded, went stale or was cancelled; `reason` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Scheduler:
    """One worker thread; at most one live job per key.

    Args:
        rest_s: once no job has been live for this long, `rest()` runs on the worker (once per
            quiet spell; None = never). The engine hands back what only its runs need there.
        rest: the work for a quiet spell.
    """

    def __init__(self, rest_s: float | None = None, rest: Callable[[], object] | None = None) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlsp-engine")
        self._latest: dict[object, Job] = {}
        self._rest_s, self._rest = rest_s, rest
        self._quiet = 0  # bumped by every claim and every end of the last live job: a stale timer's token
        self.rests = 0  # quiet spells whose `rest` was queued

    def claim(self, key: object, is_stale: Callable[[], bool] | None = None) -> Job:
        """Register a new job for `key`, stopping the previous one."""
        prev = self._latest.get(key)
        if prev is not None:
            prev.stop("superseded")
        job: Job = Job(key, is_stale)
        self._latest[key] = job
        self._quiet += 1  # a timer armed before this claim no longer fires
        return job

    async def debounce(self, job: Job, seconds: float) -> None:
        """Wait; raise Stopped if a newer job (or staleness) stopped this one meanwhile."""
        if seconds > 0:
            await self._await(job, asyncio.sleep(seconds))
        if job.should_stop():
            self.release(job)
            raise Stopped(job.reason)

    async def run(self, job: Job, work: Callable[[Callable[[], bool]], T]) -> T:
        """Run `work(should_stop)` on the worker; raise Stopped if the job stopped at any point."""
        t0 = time.perf_counter()

        def call() -> Any:
            job.queued_ms = (time.perf_counter() - t0) * 1e3
            if job.should_stop():
                return None
            job.started = True
            return work(job.should_stop)

        try:
            result = await self._await(job, asyncio.wrap_future(self._executor.submit(call)))
        finally:
            self.release(job)
        if job.should_stop():
            raise Stopped(job.reason)
        return result

    async def _await(self, job: Job, aw: Any) -> Any:
        try:
            return await aw
        except asyncio.CancelledError:
            job.stop("cancelled")
            self.release(job)
            raise

    def after(self, work: Callable[[], object]) -> None:
        """Run `work()` on the worker once what is queued before it is done; nothing awaits it
        (housekeeping that must not run on the event loop or beside a job, e.g. the engine
        dropping a closed document's cache). Its exceptions are logged."""

        def call() -> None:
            try:
                work()
            except Exception:
                log.exception("background work failed")

        try:
            self._executor.submit(call)
        except RuntimeError:  # shut down
            pass

    def release(self, job: Job) -> None:
        if self._latest.get(job.key) is job:
            del self._latest[job.key]
            if not self._latest:
                self._arm_rest()

    def _arm_rest(self) -> None:
        """The last live job ended (on the event loop): `rest` after `rest_s` unless a job is
        claimed meanwhile."""
        if self._rest is None or self._rest_s is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on a loop (a test driving the scheduler by hand): no timer
            return
        self._quiet += 1
        loop.call_later(self._rest_s, self._quiet_for, self._quiet)

    def _quiet_for(self, token: int) -> None:
        if token == self._quiet and not self._latest and self._rest is not None:
            self.rests += 1
            self.after(self._rest)

    def stop_all(self, predicate: Callable[[object], bool], reason: str) -> None:
        """Stop every live job whose key matches (e.g. all jobs of a closed document)."""
        for key, job in list(self._latest.items()):
            if predicate(key):
                job.stop(reason)

    def shutdown(self) -> None:
        self.stop_all(lambda _: True, "shutdown")
        self._executor.shutdown(wait=False, cancel_futures=True)
