"""Blocking jobs of many keepers, run a batch per worker-thread call."""

from __future__ import annotations

import threading

import anyio
import pytest

from tokend import batches
from tokend.batches import Batches

pytestmark = pytest.mark.anyio


async def test_jobs_queued_together_share_worker_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    run_all = batches._run_all

    def counted(jobs: list[batches._Job[object]]) -> None:
        calls.append(len(jobs))
        run_all(jobs)

    monkeypatch.setattr(batches, "_run_all", counted)
    runner = Batches(calls=2)
    results: dict[int, tuple[int, int]] = {}
    main = threading.get_ident()

    async def submit(index: int) -> None:
        results[index] = (index, await runner.run(lambda: threading.get_ident()))

    async with anyio.create_task_group() as group:
        for index in range(20):
            group.start_soon(submit, index)

    assert sorted(results) == list(range(20))
    assert all(ident != main for _, ident in results.values())
    assert sum(calls) == 20 and len(calls) < 20


async def test_a_failing_job_fails_only_its_caller() -> None:
    runner = Batches()
    outcomes: dict[str, object] = {}

    def fail() -> int:
        raise OSError("disk full")

    async def submit(name: str, job: object) -> None:
        try:
            outcomes[name] = await runner.run(job)  # type: ignore[arg-type]
        except OSError as exc:
            outcomes[name] = exc

    async with anyio.create_task_group() as group:
        group.start_soon(submit, "bad", fail)
        group.start_soon(submit, "good", lambda: 7)

    assert isinstance(outcomes["bad"], OSError) and outcomes["good"] == 7


async def test_a_caller_waits_for_its_own_batch_not_the_jobs_queued_behind_it() -> None:
    runner = Batches(calls=1)
    first_started, later_done = threading.Event(), threading.Event()
    seen: dict[str, bool] = {}

    def first() -> str:
        first_started.set()
        threading.Event().wait(0.2)
        return "first"

    def later() -> str:
        threading.Event().wait(0.2)
        later_done.set()
        return "later"

    async def submit_first() -> None:
        assert await runner.run(first) == "first"
        seen["later done when first returned"] = later_done.is_set()

    async def submit_later() -> None:
        assert await runner.run(later) == "later"

    async with anyio.create_task_group() as group:
        group.start_soon(submit_first)
        while not first_started.is_set():  # noqa: ASYNC110
            await anyio.sleep(0.01)
        group.start_soon(submit_later)

    assert seen == {"later done when first returned": False}
    assert later_done.is_set()
