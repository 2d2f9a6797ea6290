"""Many tokens' credentials read from Vault in a few worker calls, at start.

A keeper reading its own secret costs a hand-off to a worker thread and back
(about 0.2 ms of CPU, more under load) on top of the request itself; with a
thousand tokens starting at once that is a second. The daemon therefore plans
the reads of every keeper's secret before the keepers start, and a few worker
threads read them in batches, one after the other over a kept-alive
connection. A keeper whose secret is planned waits for its batch and claims
the answer; one that finds nothing (not planned, already claimed, or the read
failed) reads the secret itself, which reports any error as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import anyio
import anyio.to_thread

BATCH_SIZE = 50
THREADS = 2
# An answer unclaimed this long after its batch ended (its keeper was retired
# by a reload, or failed before asking) is not handed out any more.
STALE_AFTER = 60.0

ReadOne = Callable[[str], dict[str, Any] | None]


class Batch:
    """Secrets read together in one worker call; ``done`` once it ended."""

    __slots__ = ("done", "ended", "found", "paths")

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        self.found: dict[str, dict[str, Any]] = {}
        self.done = anyio.Event()
        self.ended = 0.0

    def end(self) -> None:
        if not self.done.is_set():
            self.ended = time.monotonic()
            self.done.set()


class ReadAhead:
    """Planned secrets, each claimed by the first keeper that asks for it."""

    def __init__(self) -> None:
        self._planned: dict[str, Batch] = {}

    def plan(self, paths: Iterable[str]) -> list[Batch]:
        """Batch the paths not planned yet, in the order given (first read first)."""
        new = [path for path in dict.fromkeys(paths) if path not in self._planned]
        batches = [
            Batch(new[start : start + BATCH_SIZE])
            for start in range(0, len(new), BATCH_SIZE)
        ]
        for batch in batches:
            self._planned.update(dict.fromkeys(batch.paths, batch))
        return batches

    async def claim(self, path: str) -> dict[str, Any] | None:
        """Wait for the planned read of ``path``; its data, or None if there is none."""
        batch = self._planned.get(path)
        if batch is None:
            return None
        await batch.done.wait()
        self._planned.pop(path, None)
        data = batch.found.pop(path, None)
        if time.monotonic() - batch.ended > STALE_AFTER:
            return None
        return data

    async def read(self, batches: list[Batch], read_one: ReadOne) -> None:
        """Read ``batches`` in :data:`THREADS` worker threads, a batch per call.

        ``read_one`` returns a secret's data, or None when Vault answered
        without a usable one (the keeper's own read then says why); if it
        raises, Vault is taken to be unreachable and the reading stops, so
        that no batch waits for a timeout per secret. The caller releases
        the batches left unread (see :meth:`release`).
        """
        queue = iter(batches)
        failed = False

        def read_batch(batch: Batch) -> None:
            nonlocal failed
            for path in batch.paths:
                try:
                    data = read_one(path)
                except Exception:  # the keepers' own reads report it
                    failed = True
                    return
                if data is not None:
                    batch.found[path] = data

        async def work() -> None:
            for batch in queue:  # shared: each batch is taken once
                try:
                    if not failed:
                        await anyio.to_thread.run_sync(
                            read_batch, batch, abandon_on_cancel=True
                        )
                finally:
                    batch.end()

        async with anyio.create_task_group() as group:
            for _ in range(THREADS):
                group.start_soon(work)

    def release(self, batches: list[Batch]) -> None:
        """End ``batches``, read or not: their keepers wait no longer."""
        for batch in batches:
            batch.end()
