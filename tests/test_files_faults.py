"""File-system faults: missing, read-only, full, linked and shared directories.

The read-only and full file systems are real: small tmpfs mounts, which need
root and a sandbox that allows ``mount``; without them those tests skip and an
injected ``ENOSPC`` stands in. Every mount is undone in a ``finally``.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from pydantic import SecretStr

from tests.support.quirk_server import QuirkServer, token_response
from tokend.config import RefreshSettings, Settings
from tokend.config import VaultSettings as VaultConfig
from tokend.config_files import LoadedConfig
from tokend.daemon import prepare_workspace
from tokend.errors import FileSinkError
from tokend.files import TEMP_SUFFIX, prepare_directory, write_atomic
from tokend.lifecycle import TokenKeeper
from tokend.oauth import TokenEndpoint
from tokend.resolve import resolve_tokens
from tokend.state import StateStore
from tokend.token import ClientCredentials, fingerprint
from tokend.vault import VaultSource

NOBODY = 65534
OLD = b"old-token-" + secrets.token_hex(8).encode()


def temp_files(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if name.endswith(TEMP_SUFFIX)]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def run_mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["mount", *args], capture_output=True, text=True, timeout=10, check=False
    )


@contextmanager
def tmpfs(directory: Path, size: str = "256k") -> Iterator[Path]:
    """Mount a small tmpfs (mode 0750) at ``directory``; skip if not allowed."""
    directory.mkdir(exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = run_mount(
        "-t", "tmpfs", "-o", f"size={size},mode=0750", "tmpfs", str(directory)
    )
    if mounted.returncode != 0:
        pytest.skip(f"mount is not permitted here: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        unmounted = subprocess.run(
            ["umount", str(directory)], capture_output=True, timeout=10, check=False
        )
        if unmounted.returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], timeout=10, check=False)


def remount(directory: Path, option: str) -> None:
    result = run_mount("-o", f"remount,{option}", str(directory))
    assert result.returncode == 0, result.stderr


def fill(directory: Path) -> Path:
    """Write a filler file until the file system has no block left."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    chunk = b"\0" * 4096
    try:
        while True:
            os.write(fd, chunk)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


# --- the directory -----------------------------------------------------------


def test_missing_directory_is_created_0751_when_the_parent_is_ours(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "run" / "tokend"
    directory.parent.mkdir(mode=0o755)

    prepare_directory(directory)
    write_atomic(directory / "orders", b"token", 0o640)

    assert mode_of(directory) == 0o751
    assert (directory / "orders").read_bytes() == b"token"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown the parent")
def test_missing_directory_in_a_parent_owned_by_another_user_is_refused(
    tmp_path: Path,
) -> None:
    parent = tmp_path / "theirs"
    parent.mkdir()
    os.chown(parent, NOBODY, NOBODY)

    with pytest.raises(FileSinkError) as caught:
        prepare_directory(parent / "tokend")

    message = str(caught.value)
    assert str(parent / "tokend") in message and str(parent) in message
    assert "RuntimeDirectory" in message  # the next step is named
    assert not (parent / "tokend").exists()


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o772])
def test_daemon_workspace_refuses_a_world_writable_directory(
    tmp_path: Path, mode: int
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, mode)
    loaded = loaded_config(shared)

    with pytest.raises(FileSinkError, match="writable by every user") as caught:
        prepare_workspace(loaded)

    assert str(shared) in str(caught.value)
    assert os.listdir(shared) == []  # no lock, no state, nothing written


def test_read_only_directory_is_refused_up_front(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro") as directory:
        remount(directory, "ro")

        with pytest.raises(FileSinkError, match="not writable") as caught:
            prepare_directory(directory)

        assert str(directory) in str(caught.value)


def test_write_on_a_read_only_file_system_keeps_the_old_file(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro") as directory:
        target = directory / "orders"
        write_atomic(target, OLD, 0o640)
        remount(directory, "ro")

        with pytest.raises(FileSinkError, match="Read-only file system") as caught:
            write_atomic(target, b"new-token", 0o640)

        assert str(directory) in str(caught.value)
        assert target.read_bytes() == OLD
        assert temp_files(directory) == []


# --- a full disk -------------------------------------------------------------


def test_write_on_a_full_disk_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "full", size="64k") as directory:
        target = directory / "orders"
        write_atomic(target, OLD, 0o640)
        filler = fill(directory)
        large = secrets.token_urlsafe(96 * 1024).encode()

        with pytest.raises(FileSinkError, match="No space left on device") as caught:
            write_atomic(target, large, 0o640)

        assert str(target) in str(caught.value)
        assert target.read_bytes() == OLD
        assert mode_of(target) == 0o640
        assert temp_files(directory) == []

        filler.unlink()
        write_atomic(target, b"new-token", 0o640)
        assert target.read_bytes() == b"new-token"


def test_injected_enospc_keeps_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same fault without a mount: ``os.write`` fails as on a full disk."""
    target = tmp_path / "orders"
    write_atomic(target, OLD, 0o640)
    real_write = os.write
    written: list[int] = []

    def write_then_fail(fd: int, data: Any) -> int:
        if written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(fd)
        return real_write(fd, bytes(data)[:10])  # a short write first

    monkeypatch.setattr(os, "write", write_then_fail)

    with pytest.raises(FileSinkError, match="No space left on device"):
        write_atomic(target, b"x" * 100, 0o640)

    monkeypatch.undo()
    assert target.read_bytes() == OLD
    assert temp_files(tmp_path) == []


# --- links -------------------------------------------------------------------


def test_planted_links_at_every_temp_name_are_never_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    (tokens / "orders").write_bytes(OLD)
    planted = tokens / f".orders.deadbeef{TEMP_SUFFIX}"
    planted.symlink_to(victim)
    monkeypatch.setattr(secrets, "token_hex", lambda _n: "deadbeef")

    with pytest.raises(FileSinkError, match="temporary name"):
        write_atomic(tokens / "orders", b"new-token", 0o640)

    assert victim.read_bytes() == b"precious"
    assert planted.is_symlink()
    assert (tokens / "orders").read_bytes() == OLD


# --- through the keeper ------------------------------------------------------

SECRET = "s3cr3t-" + secrets.token_hex(8)


class FixedVault(VaultSource):
    """Serves fixed credentials without a Vault server."""

    def __init__(self) -> None:
        super().__init__(VaultConfig(address="http://127.0.0.1:9", auth="token"))

    async def read_credentials(
        self, path: str, *, fresh: bool = False
    ) -> ClientCredentials:
        return ClientCredentials("svc-client", SecretStr(SECRET))


def token_settings(directory: Path, token_url: str) -> Settings:
    return Settings.model_validate(
        {
            "vault": {"address": "http://127.0.0.1:9", "auth": "token"},
            "oauth": {"token_url": token_url},
            "files": {"directory": directory},
            "tokens": {
                "orders": {"credentials": "tokend/orders", "audience": "https://o"}
            },
        }
    )


def loaded_config(directory: Path) -> LoadedConfig:
    settings = token_settings(directory, "http://127.0.0.1:9/token")
    tokens, problems = resolve_tokens(settings)
    assert problems == []
    return LoadedConfig(settings, tokens, ())


@dataclass
class Harness:
    keeper: TokenKeeper
    endpoint: TokenEndpoint
    path: Path


def make_keeper(server: QuirkServer, directory: Path, state: Path) -> Harness:
    tokens, problems = resolve_tokens(token_settings(directory, server.token_url))
    assert problems == []
    config = tokens["orders"]
    endpoint = TokenEndpoint(server.token_url, timeout=2)
    store = StateStore(state)
    store.prepare()
    keeper = TokenKeeper(
        config,
        endpoint,
        FixedVault(),
        store,
        RefreshSettings(retry_initial=0.2, retry_max=0.5, retry_slow=0.5),
    )
    return Harness(keeper, endpoint, config.path)


@pytest.fixture
async def server(anyio_backend: str) -> AsyncIterator[QuirkServer]:
    async with QuirkServer() as quirk:
        yield quirk


async def wait_for(predicate: Any, within: float = 10) -> None:
    with anyio.fail_after(within):
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.02)


def assert_kept_first(harness: Harness, first: str, fault: str) -> None:
    status = harness.keeper.status
    assert harness.path.read_text() == first
    assert status.state == "failing"
    assert status.fingerprint == fingerprint(first)
    assert status.generation == 1
    assert status.last_error_kind == "retryable"
    assert fault in (status.last_error or "")
    assert str(harness.path) in (status.last_error or "")


@pytest.mark.anyio
async def test_keeper_on_a_full_disk_keeps_the_old_token_then_recovers(
    server: QuirkServer, tmp_path: Path
) -> None:
    first, second = "first-" + secrets.token_hex(8), "second-" + secrets.token_hex(8)
    server.enqueue(token_response(access_token=first, expires_in=3600))
    server.reply(token_response(access_token=second, expires_in=3600))
    with tmpfs(tmp_path / "run", size="64k") as directory:
        harness = make_keeper(server, directory, tmp_path / "state")
        keeper = harness.keeper
        async with anyio.create_task_group() as group:
            group.start_soon(keeper.run)
            await wait_for(lambda: keeper.status.generation == 1)
            filler = fill(directory)
            keeper.refresh_now()
            await wait_for(lambda: keeper.status.failures >= 2)

            assert_kept_first(harness, first, "No space left on device")
            assert temp_files(directory) == []

            filler.unlink()
            await wait_for(lambda: keeper.status.generation == 2)
            group.cancel_scope.cancel()
        await harness.endpoint.aclose()

        assert harness.path.read_text() == second
        assert keeper.status.state == "fresh" and keeper.status.last_error is None
        assert temp_files(directory) == []


@pytest.mark.anyio
async def test_keeper_refuses_a_link_planted_at_the_token_path(
    server: QuirkServer, tmp_path: Path
) -> None:
    first, second = "first-" + secrets.token_hex(8), "second-" + secrets.token_hex(8)
    server.enqueue(token_response(access_token=first, expires_in=3600))
    server.reply(token_response(access_token=second, expires_in=3600))
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    harness = make_keeper(server, tmp_path / "run", tmp_path / "state")
    harness.path.parent.mkdir(mode=0o750)
    keeper = harness.keeper
    async with anyio.create_task_group() as group:
        group.start_soon(keeper.run)
        await wait_for(lambda: keeper.status.generation == 1)
        harness.path.unlink()
        harness.path.symlink_to(victim)
        keeper.refresh_now()
        await wait_for(lambda: keeper.status.failures >= 1)

        assert victim.read_bytes() == b"precious"
        assert harness.path.is_symlink()
        assert "symbolic link" in (keeper.status.last_error or "")
        assert keeper.status.fingerprint == fingerprint(first)

        harness.path.unlink()
        await wait_for(lambda: keeper.status.generation == 2)
        group.cancel_scope.cancel()
    await harness.endpoint.aclose()

    assert not harness.path.is_symlink()
    assert harness.path.read_text() == second
    assert victim.read_bytes() == b"precious"


@pytest.mark.anyio
async def test_keeper_metadata_write_failure_keeps_file_and_status_in_agreement(
    server: QuirkServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refresh whose NAME.json cannot be written still publishes the token.

    The token file's rename is the commit point: status follows the file, and
    the side-file failure is a warning, so the newer token is never removed
    when the older one would have expired.

    The fault (EIO on NAME.json only) is injected: a real full disk frees the
    old token's blocks at the rename, so NAME.json usually still fits.
    """
    first, second = "first-" + secrets.token_hex(8), "second-" + secrets.token_hex(8)
    server.enqueue(token_response(access_token=first, expires_in=3600))
    server.reply(token_response(access_token=second, expires_in=3600))
    harness = make_keeper(server, tmp_path / "run", tmp_path / "state")
    harness.path.parent.mkdir(mode=0o750)
    keeper = harness.keeper
    broken = [False]

    def failing_metadata(path: Path, *args: Any, **kwargs: Any) -> None:
        if broken[0] and path.name.endswith(".json"):
            raise FileSinkError(f"cannot write {path}: Input/output error")
        write_atomic(path, *args, **kwargs)

    monkeypatch.setattr("tokend.lifecycle.write_atomic", failing_metadata)
    async with anyio.create_task_group() as group:
        group.start_soon(keeper.run)
        await wait_for(lambda: keeper.status.generation == 1)
        broken[0] = True
        keeper.refresh_now()
        await wait_for(lambda: keeper.status.generation == 2)
        on_disk = harness.path.read_text()
        status = keeper.status.as_dict()
        group.cancel_scope.cancel()
    await harness.endpoint.aclose()

    assert on_disk == second
    assert "token written, but not its metadata or state" in caplog.text
    assert "Input/output error" in caplog.text
    assert fingerprint(on_disk) == status["fingerprint"], (
        f"file holds {'second' if on_disk == second else 'first'} token, "
        f"status generation {status['generation']}"
    )
