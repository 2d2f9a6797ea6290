"""Blocking jobs of many keepers, run a batch per worker-thread call.

Each ``anyio.to_thread.run_sync`` costs a hand-off to a worker and back
(about 0.2 ms of CPU, more when a thousand tokens start at once) and, when
many overlap, a thread each. :class:`Batches` queues the jobs instead: a few
worker calls at a time each take every job queued so far and run them one
after the other, in the order they came. The caller that starts a call runs
that one batch and no more: a keeper waits for its own write, not for every
write queued behind it; when a call ends, a caller whose job is still queued
starts the next. A job's own steps keep their order
(a token file, then its metadata, then its state record); jobs of different
keepers are independent, so running several batches at once is safe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")
CALLS = 2  # worker calls at a time: overlaps the fsyncs of a disk-backed directory


class _Job(Generic[T]):
    __slots__ = ("done", "error", "function", "result", "taken")

    def __init__(self, function: Callable[[], T]) -> None:
        self.function = function
        self.done = anyio.Event()
        self.taken = False  # in a batch a worker call runs
        self.result: T | None = None
        self.error: BaseException | None = RuntimeError("the job did not run")

    def run(self) -> None:
        try:
            self.result, self.error = self.function(), None
        except BaseException as exc:  # handed to the waiting keeper
            self.error = exc


def _run_all(jobs: list[_Job[Any]]) -> None:
    for job in jobs:
        job.run()


class Batches:
    """Runs blocking jobs in worker threads, many per call."""

    def __init__(self, calls: int = CALLS) -> None:
        self.calls = calls
        self._queued: list[_Job[Any]] = []
        self._running = 0
        self._freed = anyio.Event()  # set (and replaced) as each call ends

    async def run(self, function: Callable[[], T]) -> T:
        """Run ``function`` in a worker thread with the jobs queued beside it.

        Not cancellable once queued (callers shield it, as a started write
        must finish). Raises what ``function`` raised.
        """
        job = _Job(function)
        self._queued.append(job)
        while not job.taken:
            if self._running < self.calls:
                await self._run_queued()
            else:
                await self._freed.wait()
        await job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    async def _run_queued(self) -> None:
        """Run every job queued so far in one worker call."""
        batch, self._queued = self._queued, []
        for queued in batch:
            queued.taken = True
        self._running += 1
        try:
            await anyio.to_thread.run_sync(_run_all, batch)
        finally:
            self._running -= 1
            for queued in batch:
                queued.done.set()
            freed, self._freed = self._freed, anyio.Event()
            freed.set()
