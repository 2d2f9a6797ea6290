"""Crash safety with real processes: torn reads and ``kill -9`` at any moment.

A fast local token endpoint (:class:`tests.support.fast_endpoint.TokenMint`)
hands out a fresh self-checking token per request with a 12 s lifetime, and
tiny refresh shares make ``tokend run`` replace its files every few
milliseconds. Credentials still come from the real OpenBao server.

Knobs (environment of the test run): ``TOKEND_CRASH_READ_SECONDS`` (how long
the readers read, default 40) and ``TOKEND_CRASH_ROUNDS`` (kill -9 rounds,
default 90, about 100 s on two cores).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

from tests.support.bao_server import BaoServer
from tests.support.fast_endpoint import TokenMint, token_sequence
from tests.support.oauth_server import OAuthServer
from tests.support.quirk_server import QuirkServer
from tests.support.stack import ROOT, Stack, TokendProcess, TomlValue

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NAMES = ("alpha", "beta")
STORM_REFRESH: dict[str, TomlValue] = {
    "min_share": 0.0002,
    "max_share": 0.0005,
    "margin": 1.0,
}
READ_SECONDS = float(os.environ.get("TOKEND_CRASH_READ_SECONDS", "40"))
ROUNDS = int(os.environ.get("TOKEND_CRASH_ROUNDS", "90"))
TEMP_SUFFIX = ".tokend-tmp"
STARTED: list[TokendProcess] = []  # every daemon a test started, killed after it


class _NoIssuer:
    """Stands in for the OAuth server: tokens use the mint's token_url instead.

    ``Stack.write_config`` always puts ``issuer`` into ``[oauth]``; each token
    sets its own ``token_url``, which overrides the pair, so the issuer is
    never used.
    """

    def __init__(self, url: str) -> None:
        self.issuer = url

    def put_client(self, *args: object, **kwargs: object) -> None:
        """The mint accepts any client."""


@pytest.fixture
def mint() -> Iterator[tuple[QuirkServer, TokenMint]]:
    token_mint = TokenMint(lifetime=12)
    with QuirkServer() as server:
        server.reply(token_mint)
        yield server, token_mint


@pytest.fixture
def stack(
    bao: BaoServer, mint: tuple[QuirkServer, TokenMint], tmp_path: Path
) -> Iterator[Stack]:
    server, _ = mint
    deployment = Stack(bao, cast(OAuthServer, _NoIssuer(server.url)), tmp_path)
    for name in NAMES:
        deployment.add_service(name)
    yield deployment
    for process in STARTED:
        process.kill()
    STARTED.clear()


def write_config(
    stack: Stack, server: QuirkServer, refresh: dict[str, TomlValue] | None
) -> None:
    stack.write_config(
        {n: stack.token_entry(n, token_url=server.token_url) for n in NAMES},
        oauth={"min_lifetime": 1},
        refresh=refresh,
    )


def start_quiet(stack: Stack) -> TokendProcess:
    """``tokend run`` logging at info: a debug line per Vault read is too much."""
    process = stack.start("--log-level", "info")
    STARTED.append(process)
    return process


def temp_files(stack: Stack) -> set[str]:
    found = set()
    for directory in (stack.run_dir, stack.run_dir / ".state"):
        if directory.is_dir():
            found |= {
                str(directory / n) for n in os.listdir(directory) if TEMP_SUFFIX in n
            }
    return found


def read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except FileNotFoundError:
        return None


@pytest.mark.timeout(300)
def test_readers_in_other_processes_never_see_a_torn_file(
    stack: Stack, mint: tuple[QuirkServer, TokenMint]
) -> None:
    server, token_mint = mint
    write_config(stack, server, STORM_REFRESH)
    daemon = start_quiet(stack)
    daemon.wait_for_log("ready")
    issued_before = token_mint.count

    readers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.fast_endpoint",
                str(READ_SECONDS),
                str(stack.run_dir),
                *NAMES,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(2)
    ]
    results = []
    try:
        for reader in readers:
            out, err = reader.communicate(timeout=READ_SECONDS + 60)
            assert reader.returncode == 0, err
            results.append(json.loads(out))
    finally:
        for reader in readers:
            if reader.poll() is None:
                reader.kill()
                reader.wait()
    refreshes = token_mint.count - issued_before
    assert daemon.process is not None and daemon.process.poll() is None, daemon.log()
    code, _ = daemon.stop()
    log = daemon.log()

    reads = sum(r["reads"] for r in results)
    torn = sum(r["bad"] for r in results)
    metadata_reads = sum(r["metadata_reads"] for r in results)
    metadata_bad = sum(r["metadata_bad"] for r in results)
    seen = set().union(*(r["seen"] for r in results))
    never_issued = {s for s in seen if not 1 <= s <= token_mint.count}
    examples = [e for r in results for e in r["examples"]]
    summary = (
        f"torn-read run: {reads} token reads checked by 2 readers in "
        f"{READ_SECONDS:g}s, {torn} torn/empty/partial, {metadata_reads} "
        f"NAME.json reads, {metadata_bad} unparsable, {len(seen)} distinct "
        f"tokens seen, {refreshes} refreshes (files replaced) meanwhile"
    )
    sys.stdout.write("\n" + summary + "\n")

    assert torn == 0 and metadata_bad == 0, f"{summary}; examples: {examples}"
    assert not never_issued, f"{summary}; tokens never issued: {never_issued}"
    assert reads >= 2000, f"too few reads to mean anything: {summary}"
    assert refreshes >= 1000, f"too few file replacements: {summary}"
    assert len(seen) >= 500, f"readers saw too few replacements: {summary}"
    assert code == 0, log
    assert "Traceback" not in log and "refresh failed" not in log, log[-3000:]
    assert temp_files(stack) == set()


@pytest.mark.timeout(900)
def test_kill_9_at_random_moments_never_damages_the_files(
    stack: Stack, mint: tuple[QuirkServer, TokenMint]
) -> None:
    server, token_mint = mint
    write_config(stack, server, STORM_REFRESH)
    rng = random.Random()
    watched = [stack.token_path(n) for n in NAMES]
    damaged: list[str] = []
    stale: set[str] = set()  # temp files the last kill left behind
    left_by_kills = not_cleaned = reused = generation_resets = 0
    generations = dict.fromkeys(NAMES, 0)
    delays: list[float] = []
    started = time.monotonic()

    for round_number in range(1, ROUNDS + 1):
        before = [inode(p) for p in watched]
        daemon = start_quiet(stack)

        def written(before: list[int | None] = before) -> bool:
            return [inode(p) for p in watched] != before

        daemon.wait_until(
            written,
            timeout=30,
            what=f"a first write in round {round_number}",
        )
        # The workspace is prepared (stale temp files removed) before any write.
        not_cleaned += len({p for p in stale if os.path.lexists(p)})
        delay = rng.uniform(0, 0.3)
        delays.append(delay)
        time.sleep(delay)
        assert daemon.process is not None and daemon.process.poll() is None, (
            daemon.log()
        )
        daemon.kill()  # SIGKILL, by PID
        log = daemon.log()
        reused += log.count("cached token reused")
        assert "Traceback" not in log, log

        for name, path in zip(NAMES, watched, strict=True):
            data = read_bytes(path)
            if not token_mint.issued(data):
                size = None if data is None else len(data)
                damaged.append(f"round {round_number}: {path} ({size} bytes)")
            elif stat.S_IMODE(path.stat().st_mode) != 0o640:
                damaged.append(f"round {round_number}: {path} mode changed")
            for document in (
                stack.run_dir / f"{name}.json",
                stack.run_dir / ".state" / f"{name}.json",
            ):
                try:
                    parsed = json.loads(document.read_bytes())
                except (OSError, ValueError) as exc:
                    damaged.append(f"round {round_number}: {document}: {exc}")
                    continue
                if document.parent == stack.run_dir:
                    generation_resets += parsed["generation"] < generations[name]
                    generations[name] = parsed["generation"]
        stale = temp_files(stack)
        left_by_kills += len(stale)

    kill_seconds = time.monotonic() - started

    # Last: a kill -9 while a long-lived token is cached; the restart reuses it.
    token_mint.lifetime = 3600
    write_config(stack, server, None)  # default shares: next refresh in ~45 min
    daemon = start_quiet(stack)
    daemon.wait_for_log("ready")

    def long_token_cached() -> bool:
        for name, path in zip(NAMES, watched, strict=True):
            data = read_bytes(path)
            if token_mint.lifetime_of(data) != 3600 or data is None:
                return False
            record = read_bytes(stack.run_dir / ".state" / f"{name}.json")
            digest = hashlib.sha256(data).hexdigest()
            if record is None or json.loads(record)["digest"] != digest:
                return False
        return True

    daemon.wait_until(long_token_cached, timeout=30, what="long-lived tokens")
    not_cleaned += len({p for p in stale if os.path.lexists(p)})
    daemon.kill()
    cached = [read_bytes(p) for p in watched]
    requests_before = token_mint.count

    again = start_quiet(stack)
    again.wait_for_log("ready")
    for name in NAMES:
        again.wait_for_log(f"cached token reused token={name}")
    time.sleep(1)  # give a wrong implementation the chance to ask anyway
    new_requests = token_mint.count - requests_before
    code, _ = again.stop()
    leftover = temp_files(stack)

    summary = (
        f"kill -9 run: {ROUNDS} rounds in {kill_seconds:.0f}s (kill "
        f"{min(delays) * 1000:.0f}-{max(delays) * 1000:.0f} ms after the first "
        f"write was seen), {len(damaged)} damaged files, {left_by_kills} temp "
        f"files left by kills, {not_cleaned} not removed by the next start, "
        f"{len(leftover)} left after a clean stop, {reused} of "
        f"{ROUNDS * len(NAMES)} token restarts reused the cache, "
        f"{generation_resets} generation counter resets, "
        f"{token_mint.count} tokens issued; final restart: "
        f"{new_requests} new token requests"
    )
    sys.stdout.write("\n" + summary + "\n")

    assert not damaged, f"{summary}; {damaged[:10]}"
    assert not_cleaned == 0 and not leftover, f"{summary}; {sorted(leftover)}"
    assert new_requests == 0, f"{summary}\n{again.log()}"
    assert [read_bytes(p) for p in watched] == cached, summary
    assert all(token_sequence(data) is not None for data in cached), summary
    assert code == 0, again.log()
