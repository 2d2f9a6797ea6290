"""Token files: atomic writes, exact modes, safe directories and the writer lock."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from tokend import files
from tokend.errors import FileSinkError
from tokend.files import (
    TEMP_SUFFIX,
    DirectoryLock,
    describe_metadata,
    parse_token_file,
    prepare_directory,
    remove_file,
    render_metadata,
    render_token,
    write_atomic,
)
from tokend.token import AccessToken

REPO = Path(__file__).resolve().parent.parent
SECRET = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJvcmRlcnMifQ.sig-value"
running_as_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to hand files to another user"
)


@contextmanager
def umask(value: int) -> Iterator[None]:
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def temp_files(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if name.endswith(TEMP_SUFFIX)]


@pytest.fixture
def token() -> AccessToken:
    return AccessToken(
        value=SecretStr(SECRET),
        token_type="Bearer",
        issued_at=datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC),
        lifetime=300,
        scope=("orders:read", "orders:write"),
        audience="https://orders.example.test",
    )


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077, 0o277])
@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644, 0o400])
def test_write_atomic_gives_exactly_the_requested_mode(
    tmp_path: Path, mask: int, mode: int
) -> None:
    target = tmp_path / "orders"

    with umask(mask):
        write_atomic(target, b"token", mode)

    assert mode_of(target) == mode
    assert target.read_bytes() == b"token"


def test_write_atomic_file_is_never_wider_than_its_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under umask 0 the file is created with the final mode, before any byte."""
    created: list[int] = []
    seen_while_writing: list[int] = []
    real_open, real_write = os.open, os.write

    def spy_open(path: Any, flags: int, mode: int = 0o777, **kwargs: Any) -> int:
        if flags & os.O_CREAT:
            created.append(mode)
        return real_open(path, flags, mode, **kwargs)

    def spy_write(fd: int, data: Any) -> int:
        seen_while_writing.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_write(fd, data)

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "write", spy_write)
    with umask(0):
        write_atomic(tmp_path / "orders", b"token", 0o640)

    assert created
    assert all(requested & ~0o640 == 0 for requested in created)
    assert seen_while_writing
    assert set(seen_while_writing) == {0o640}


def test_write_atomic_replaces_the_file_in_one_step(tmp_path: Path) -> None:
    """A reader holding the old file keeps the old token; the name gets the new."""
    target = tmp_path / "orders"
    write_atomic(target, b"old-token", 0o640)
    old_inode = os.stat(target).st_ino

    with target.open("rb") as reader:
        write_atomic(target, b"new-token", 0o640)
        assert reader.read() == b"old-token"

    assert os.stat(target).st_ino != old_inode
    assert target.read_bytes() == b"new-token"


def test_write_atomic_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "orders"

    for generation in range(5):
        write_atomic(target, f"token-{generation}".encode(), 0o640)

    assert os.listdir(tmp_path) == ["orders"]
    assert target.read_bytes() == b"token-4"


def test_write_atomic_writes_empty_and_large_content(tmp_path: Path) -> None:
    big = os.urandom(3 * 1024 * 1024)

    write_atomic(tmp_path / "big", big, 0o600)
    write_atomic(tmp_path / "empty", b"", 0o600)

    assert (tmp_path / "big").read_bytes() == big
    assert (tmp_path / "empty").read_bytes() == b""


@pytest.mark.parametrize("dangling", [False, True])
def test_write_atomic_refuses_symlink_at_final_path(
    tmp_path: Path, dangling: bool
) -> None:
    victim = tmp_path / "elsewhere" / "passwd"
    victim.parent.mkdir()
    if not dangling:
        victim.write_bytes(b"precious")
    target = tmp_path / "tokens" / "orders"
    target.parent.mkdir()
    target.symlink_to(victim)

    with pytest.raises(FileSinkError, match="symbolic link") as caught:
        write_atomic(target, b"token", 0o640)

    assert str(target) in str(caught.value)
    assert target.is_symlink()
    assert os.readlink(target) == str(victim)
    if dangling:
        assert not victim.exists()
    else:
        assert victim.read_bytes() == b"precious"
    assert temp_files(target.parent) == []


def test_write_atomic_refuses_directory_at_final_path(tmp_path: Path) -> None:
    (tmp_path / "orders").mkdir()

    with pytest.raises(FileSinkError, match="not a regular file"):
        write_atomic(tmp_path / "orders", b"token", 0o640)

    assert temp_files(tmp_path) == []


def test_write_atomic_missing_directory_is_a_file_sink_error(tmp_path: Path) -> None:
    target = tmp_path / "absent" / "orders"

    with pytest.raises(FileSinkError) as caught:
        write_atomic(target, b"token", 0o640)

    assert str(target.parent) in str(caught.value)


def _predictable_names(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make the random part of temp names come from ``names``, in order."""
    queue = list(names)
    monkeypatch.setattr(secrets, "token_hex", lambda _n: queue.pop(0))


def test_write_atomic_steps_around_a_planted_temp_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A link planted where the temp file would go is neither followed nor fatal."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    planted = tokens / f".orders.deadbeef{TEMP_SUFFIX}"
    planted.symlink_to(victim)
    _predictable_names(monkeypatch, "deadbeef", "cafef00d")

    write_atomic(tokens / "orders", b"token", 0o640)

    assert (tokens / "orders").read_bytes() == b"token"
    assert victim.read_bytes() == b"precious"
    assert planted.is_symlink()


def test_write_atomic_gives_up_when_every_temp_name_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "orders"
    target.write_bytes(b"old-token")
    (tmp_path / f".orders.deadbeef{TEMP_SUFFIX}").write_bytes(b"")
    monkeypatch.setattr(secrets, "token_hex", lambda _n: "deadbeef")

    with pytest.raises(FileSinkError, match="temporary name"):
        write_atomic(target, b"new-token", 0o640)

    assert target.read_bytes() == b"old-token"


@running_as_root
def test_write_atomic_hands_the_file_to_owner_and_group(tmp_path: Path) -> None:
    target = tmp_path / "orders"

    write_atomic(target, b"token", 0o640, uid=65534, gid=65534)

    info = os.stat(target)
    assert (info.st_uid, info.st_gid) == (65534, 65534)
    assert mode_of(target) == 0o640


@running_as_root
def test_write_atomic_changes_only_the_group_when_asked(tmp_path: Path) -> None:
    target = tmp_path / "orders"

    write_atomic(target, b"token", 0o640, gid=65534)

    info = os.stat(target)
    assert (info.st_uid, info.st_gid) == (os.geteuid(), 65534)


@pytest.mark.parametrize("mask", [0o000, 0o077])
def test_prepare_directory_creates_missing_directory_with_0751(
    tmp_path: Path, mask: int
) -> None:
    directory = tmp_path / "tokend"

    with umask(mask):
        prepare_directory(directory)

    assert directory.is_dir()
    assert mode_of(directory) == 0o751


def test_prepare_directory_keeps_an_existing_safe_directory(tmp_path: Path) -> None:
    directory = tmp_path / "tokend"
    directory.mkdir(mode=0o700)
    os.chmod(directory, 0o700)

    prepare_directory(directory)

    assert mode_of(directory) == 0o700


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o753])
def test_prepare_directory_refuses_world_writable_directory(
    tmp_path: Path, mode: int
) -> None:
    directory = tmp_path / "shared"
    directory.mkdir()
    os.chmod(directory, mode)

    with pytest.raises(FileSinkError) as caught:
        prepare_directory(directory)

    assert str(directory) in str(caught.value)
    assert "writable by every user" in str(caught.value)


def test_prepare_directory_refuses_a_file(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "tokend"
    not_a_directory.write_bytes(b"")

    with pytest.raises(FileSinkError, match="not a directory") as caught:
        prepare_directory(not_a_directory)

    assert str(not_a_directory) in str(caught.value)


def test_prepare_directory_missing_parent_is_a_file_sink_error(tmp_path: Path) -> None:
    directory = tmp_path / "absent" / "tokend"

    with pytest.raises(FileSinkError) as caught:
        prepare_directory(directory)

    assert str(directory) in str(caught.value)
    assert not directory.parent.exists()


@running_as_root
def test_prepare_directory_does_not_create_inside_someone_elses_parent(
    tmp_path: Path,
) -> None:
    parent = tmp_path / "theirs"
    parent.mkdir()
    os.chown(parent, 65534, 65534)

    with pytest.raises(FileSinkError, match="does not own") as caught:
        prepare_directory(parent / "tokend")

    assert str(parent) in str(caught.value)
    assert not (parent / "tokend").exists()


HOLD_LOCK = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from tokend.files import DirectoryLock

    DirectoryLock(Path(sys.argv[1])).acquire()
    print("locked", flush=True)
    sys.stdin.readline()
    """
)


@contextmanager
def lock_held_by_other_process(directory: Path) -> Iterator[subprocess.Popen[str]]:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(directory)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "locked"
        yield child
    finally:
        child.stdin.close()
        child.wait(timeout=10)
        child.stdout.close()


def test_directory_lock_refuses_second_daemon_naming_its_pid(tmp_path: Path) -> None:
    with lock_held_by_other_process(tmp_path) as child:
        with pytest.raises(FileSinkError) as caught:
            DirectoryLock(tmp_path).acquire()

        assert f"pid {child.pid}" in str(caught.value)
        assert str(tmp_path) in str(caught.value)


def test_directory_lock_is_free_once_the_holder_exits(tmp_path: Path) -> None:
    with lock_held_by_other_process(tmp_path) as child:
        child.kill()
        child.wait(timeout=10)

    lock = DirectoryLock(tmp_path)
    lock.acquire()
    lock.release()


def test_directory_lock_refuses_second_lock_in_one_process(tmp_path: Path) -> None:
    first = DirectoryLock(tmp_path)
    first.acquire()
    try:
        with pytest.raises(FileSinkError, match=f"pid {os.getpid()}"):
            DirectoryLock(tmp_path).acquire()
    finally:
        first.release()

    second = DirectoryLock(tmp_path)
    second.acquire()
    second.release()


def test_directory_lock_removes_stale_temp_files_only(tmp_path: Path) -> None:
    stale = [f".orders.0a1b2c3d{TEMP_SUFFIX}", f".orders.json.99887766{TEMP_SUFFIX}"]
    kept = ["orders", "orders.json", f"svc{TEMP_SUFFIX}", ".profile"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x")

    lock = DirectoryLock(tmp_path)
    lock.acquire()
    lock.release()

    assert temp_files(tmp_path) == [f"svc{TEMP_SUFFIX}"]
    assert all((tmp_path / name).exists() for name in kept)


def test_directory_lock_refuses_a_linked_lock_file(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    (tokens / files.LOCK_NAME).symlink_to(victim)

    with pytest.raises(FileSinkError):
        DirectoryLock(tokens).acquire()

    assert victim.read_bytes() == b"precious"


def test_render_token_raw_is_the_bare_token(token: AccessToken) -> None:
    data = render_token(token, "raw", describe_metadata(token, 1, None))

    assert data == SECRET.encode()
    assert not data.endswith(b"\n")


def test_render_token_header_is_a_bearer_header_value(token: AccessToken) -> None:
    data = render_token(token, "header", describe_metadata(token, 1, None))

    assert data == f"Bearer {SECRET}".encode()


def test_render_token_json_carries_token_and_metadata(token: AccessToken) -> None:
    data = render_token(token, "json", describe_metadata(token, 7, None))

    document = json.loads(data)
    assert document["access_token"] == SECRET
    assert document["token_type"] == "Bearer"
    assert document["expires_at"] == "2024-05-01T12:05:00Z"
    assert document["scope"] == "orders:read orders:write"
    assert document["audience"] == "https://orders.example.test"
    assert document["generation"] == 7


def test_render_token_json_expiry_is_utc(token: AccessToken) -> None:
    """A token issued in another zone still expires at an RFC 3339 UTC time."""
    zone = timezone(timedelta(hours=2))
    local = AccessToken(
        value=token.value,
        token_type="Bearer",
        issued_at=datetime(2024, 5, 1, 14, 0, 0, 987654, tzinfo=zone),
        lifetime=3600,
    )

    document = json.loads(
        render_token(local, "json", describe_metadata(local, 1, None))
    )

    assert document["expires_at"] == "2024-05-01T13:00:00Z"
    assert datetime.fromisoformat(document["expires_at"]) <= local.expires_at


def test_render_metadata_never_holds_the_token(token: AccessToken) -> None:
    data = render_metadata(describe_metadata(token, 2, "server said no"))

    assert SECRET.encode() not in data
    assert json.loads(data)["last_error"] == "server said no"


@pytest.mark.parametrize("fmt", ["raw", "header", "json"])
def test_parse_token_file_reads_back_what_render_token_wrote(
    token: AccessToken, fmt: str
) -> None:
    data = render_token(token, fmt, describe_metadata(token, 1, None))

    assert parse_token_file(data, fmt) == SECRET


@pytest.mark.parametrize(
    ("data", "fmt"),
    [
        (b"", "raw"),
        (b"\xff\xfe", "raw"),
        (b"Basic abc", "header"),
        (b"Bearer ", "header"),
        (b"{", "json"),
        (b"[]", "json"),
        (b'{"access_token": ""}', "json"),
        (b'{"access_token": 5}', "json"),
        (b'{"token_type": "Bearer"}', "json"),
    ],
)
def test_parse_token_file_rejects_what_is_not_a_token(data: bytes, fmt: str) -> None:
    assert parse_token_file(data, fmt) is None


def test_remove_file_removes_and_reports(tmp_path: Path) -> None:
    target = tmp_path / "orders"
    write_atomic(target, b"token", 0o640)

    assert remove_file(target) is True
    assert not target.exists()
    assert remove_file(target) is False


def test_remove_file_removes_a_link_not_its_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = tmp_path / "orders"
    link.symlink_to(victim)

    assert remove_file(link) is True
    assert not link.is_symlink()
    assert victim.read_bytes() == b"precious"


def test_write_atomic_names_the_group_fix_when_chown_is_refused(
    tmp_path: Path,
) -> None:
    """Without CAP_CHOWN a foreign group is refused: say how to fix it."""
    import subprocess
    import sys
    import tempfile

    if os.geteuid() != 0:
        pytest.skip("needs root to drop to an unprivileged user")
    # pytest's tmp_path sits below a 0700 directory nobody else may enter.
    holder = tempfile.TemporaryDirectory(dir="/tmp")
    directory = Path(holder.name)
    os.chmod(directory, 0o777)
    code = (
        "import os, sys; from pathlib import Path;"
        "from tokend.files import write_atomic;"
        "from tokend.errors import FileSinkError;"
        "os.setgid(65534); os.setgroups([]); os.setuid(65534)\n"
        "try:\n"
        f"    write_atomic(Path({str(directory / 'tok')!r}), b'x', 0o640, None, 0)\n"
        "except FileSinkError as e:\n"
        "    print(e.kind, e)\n"
    )
    try:
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        left = [p.name for p in directory.iterdir()]
    finally:
        holder.cleanup()

    assert result.stdout.startswith("persistent "), result.stdout
    assert "SupplementaryGroups=" in result.stdout
    assert left == []


def test_write_atomic_grants_readers_by_acl_without_widening_the_mode(
    tmp_path: Path,
) -> None:
    """A reader outside the file's group can read it through its ACL entry."""
    import shutil
    import subprocess
    import sys
    import tempfile

    if shutil.which("setfacl") is None or os.geteuid() != 0:
        pytest.skip("needs setfacl (Debian package acl) and root to switch users")
    holder = tempfile.TemporaryDirectory(dir="/tmp")
    directory = Path(holder.name)
    os.chmod(directory, 0o751)
    path = directory / "orders"
    try:
        write_atomic(path, b"tok", 0o640, None, None, ("u:65534:r",))
        acl = subprocess.run(
            ["getfacl", "-c", str(path)], capture_output=True, text=True, check=True
        ).stdout
        as_nobody = subprocess.run(
            [
                sys.executable,
                "-c",
                "import os; os.setgid(65534); os.setgroups([]); os.setuid(65534);"
                f"print(open({str(path)!r}).read())",
            ],
            capture_output=True,
            text=True,
        )
        mode = mode_of(path)
    finally:
        holder.cleanup()

    assert "user:65534:r--" in acl or "user:nobody:r--" in acl
    assert mode == 0o640
    assert as_nobody.stdout.strip() == "tok", as_nobody.stderr


def test_readers_on_a_file_system_without_acls_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """setfacl's "Operation not supported" becomes an error naming the directory.

    The refusal is injected with a stand-in setfacl: no file system without
    ACL support can be mounted here.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "setfacl"
    fake.write_text(
        '#!/bin/sh\necho "setfacl: $3: Operation not supported" >&2\nexit 1\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    directory = tmp_path / "run"
    directory.mkdir()
    path = directory / "orders"

    with pytest.raises(FileSinkError) as caught:
        write_atomic(path, b"tok", 0o640, None, None, ("u:65534:r",))

    assert caught.value.kind == "persistent"
    assert "Operation not supported" in str(caught.value)
    assert "POSIX ACL support" in str(caught.value) and str(directory) in str(
        caught.value
    )
    assert list(directory.iterdir()) == []
