"""Token files: atomic writes, formats, directory checks and the writer lock.

A reader of a token file sees the old token or the new one, never an empty
or partial file: the new content goes to a temporary file in the same
directory, created with the final mode (never wider, not even for a moment),
then it is renamed over the old file and the directory is synced.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import stat
import subprocess
from pathlib import Path
from typing import Any

from tokend.errors import FileSinkError
from tokend.token import AccessToken, format_time

logger = logging.getLogger(__name__)

TEMP_SUFFIX = ".tokend-tmp"
LOCK_NAME = ".tokend.lock"
# Readers are in a token's group, not tokend's: they need to traverse the
# directory (x for others), never to list it.
DIRECTORY_MODE = 0o751
# read_own_file reads at most this much, in reads of READ_CHUNK.
READ_LIMIT = 1 << 20
READ_CHUNK = 1 << 16


def describe_metadata(
    token: AccessToken, generation: int, last_error: str | None
) -> dict[str, Any]:
    """Return what ``NAME.json`` holds: everything but the token itself."""
    return {
        "token_type": token.token_type,
        "issued_at": format_time(token.issued_at),
        "expires_at": format_time(token.expires_at),
        "audience": token.audience,
        "scope": " ".join(token.scope),
        "generation": generation,
        "last_error": last_error,
    }


def render_metadata(metadata: dict[str, Any]) -> bytes:
    return (json.dumps(metadata, indent=2) + "\n").encode()


def render_token(token: AccessToken, fmt: str, metadata: dict[str, Any]) -> bytes:
    """Return the bytes of a token file in ``fmt`` (raw, header or json)."""
    value = token.value.get_secret_value()
    if fmt == "raw":
        return value.encode()
    if fmt == "header":
        return f"Bearer {value}".encode()
    return render_metadata({"access_token": value, **metadata})


def parse_token_file(data: bytes, fmt: str) -> str | None:
    """Return the access token held in a token file's bytes, or None."""
    try:
        text = data.decode()
        if fmt == "raw":
            return text or None
        if fmt == "header":
            scheme, _, value = text.partition(" ")
            return value if scheme == "Bearer" and value else None
        document = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        return None
    found = document.get("access_token") if isinstance(document, dict) else None

    return found if isinstance(found, str) and found else None


def prepare_directory(directory: Path) -> None:
    """Make sure ``directory`` exists and is safe to write tokens into.

    A missing directory is created with mode 0751 when its parent is ours.

    Raises:
        FileSinkError: the directory is missing and cannot be created, is not
            a directory, or others may write to it.
    """
    try:
        info = os.stat(directory)
    except FileNotFoundError:
        _create_directory(directory)
        info = os.stat(directory)
    except OSError as exc:
        raise FileSinkError(f"cannot inspect {directory}: {exc.strerror}") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise FileSinkError(f"{directory} is not a directory")
    if info.st_mode & stat.S_IWOTH:
        raise FileSinkError(
            f"{directory} is writable by every user (mode "
            f"{stat.S_IMODE(info.st_mode):04o}); tokend refuses to write tokens "
            "there: chmod o-w it or choose another directory"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise FileSinkError(
            f"{directory} is not writable by tokend (uid {os.geteuid()}); "
            "fix its owner or mode"
        )


def _create_directory(directory: Path) -> None:
    parent = directory.parent
    try:
        parent_owner = os.stat(parent).st_uid
    except OSError as exc:
        raise FileSinkError(
            f"{directory} does not exist and its parent {parent} cannot be used: "
            f"{exc.strerror}"
        ) from exc
    if parent_owner != os.geteuid():
        raise FileSinkError(
            f"{directory} does not exist and tokend does not own {parent}; "
            "create it (systemd: RuntimeDirectory=tokend) or fix files.directory"
        )
    try:
        os.mkdir(directory, DIRECTORY_MODE)
        os.chmod(directory, DIRECTORY_MODE)
    except FileExistsError:
        pass
    except OSError as exc:
        raise FileSinkError(f"cannot create {directory}: {exc.strerror}") from exc


class DirectoryLock:
    """An exclusive ``flock`` that keeps a second tokend out of a directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and remove temporary files a crash left behind.

        Raises:
            FileSinkError: another process holds the lock, or the lock file
                cannot be opened.
        """
        path = self.directory / LOCK_NAME
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise FileSinkError(f"cannot open lock {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise FileSinkError(
                    f"another tokend (pid {holder}) holds {path}; only one daemon "
                    "may write the token files in a directory"
                ) from None
            raise FileSinkError(f"cannot lock {path}: {exc.strerror}") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        remove_stale_temp_files(self.directory)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def remove_stale_temp_files(directory: Path) -> int:
    """Remove temporary files of interrupted writes; return how many."""
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except OSError as exc:
        raise FileSinkError(f"cannot list {directory}: {exc.strerror}") from exc
    for entry in entries:
        if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX):
            try:
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                pass
    if removed:
        logger.info(
            "removed stale temp files directory=%s count=%d", directory, removed
        )

    return removed


def write_atomic(
    path: Path,
    data: bytes,
    mode: int,
    uid: int | None = None,
    gid: int | None = None,
    acl: tuple[str, ...] = (),
) -> None:
    """Replace ``path`` with ``data`` so that readers never see a partial file.

    Raises:
        FileSinkError: the file cannot be written; the old file is untouched.
    """
    _refuse_links(path)
    dir_fd = _open_directory(path.parent)
    try:
        temp = _write_temp(dir_fd, path, data, mode, uid, gid, acl)
        try:
            os.rename(temp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError as exc:
            _unlink_quietly(temp, dir_fd)
            raise FileSinkError(f"cannot replace {path}: {exc.strerror}") from exc
        _sync_directory(dir_fd, path.parent)
    finally:
        os.close(dir_fd)


def _sync_directory(dir_fd: int, directory: Path) -> None:
    try:
        os.fsync(dir_fd)
    except OSError as exc:
        raise FileSinkError(f"cannot sync {directory}: {exc.strerror}") from exc


def _write_temp(
    dir_fd: int,
    path: Path,
    data: bytes,
    mode: int,
    uid: int | None,
    gid: int | None,
    acl: tuple[str, ...] = (),
) -> str:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(5):
        temp = f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
        try:
            fd = os.open(temp, flags, mode, dir_fd=dir_fd)
            break
        except FileExistsError:
            continue  # something sits at that name, maybe a planted link
        except OSError as exc:
            raise FileSinkError(
                f"cannot create a file in {path.parent}: {exc.strerror}"
            ) from exc
    else:
        raise FileSinkError(f"cannot find a free temporary name in {path.parent}")
    try:
        # The umask may have narrowed the mode; set it exactly, and the group
        # before any byte of the token exists in the file.
        os.fchmod(fd, mode)
        if uid is not None or gid is not None:
            _give(fd, path, uid, gid)
        if acl:
            grant_readers(fd, path, acl)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except (OSError, FileSinkError) as exc:
        os.close(fd)
        _unlink_quietly(temp, dir_fd)
        if isinstance(exc, FileSinkError):
            raise
        raise FileSinkError(f"cannot write {path}: {exc.strerror}") from exc
    os.close(fd)

    return temp


def _give(fd: int, path: Path, uid: int | None, gid: int | None) -> None:
    try:
        os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
    except PermissionError:
        raise FileSinkError(
            f"cannot give {path} to uid {uid if uid is not None else '-'} gid "
            f"{gid if gid is not None else '-'}: tokend may only set a group it is "
            "a member of (add it: SupplementaryGroups= in the unit, or usermod -aG)",
            kind="persistent",
        ) from None


def grant_readers(fd: int, path: Path, entries: tuple[str, ...]) -> None:
    """Add read ACL entries to the open file ``fd`` before any byte is in it.

    Uses ``setfacl`` (Debian's acl package), the reference tool, on the
    descriptor's /proc path: no compiled binding to build, nothing re-opened
    by name. The mask becomes read-only, so the mode's group bits stay r.
    """
    target = f"/proc/self/fd/{fd}"
    try:
        result = subprocess.run(
            ["setfacl", "-m", ",".join(entries), target],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            pass_fds=(fd,),  # so /proc/self/fd/N in setfacl is our file
        )
    except FileNotFoundError:
        raise FileSinkError(
            "readers needs setfacl: install the acl package", kind="persistent"
        ) from None
    except subprocess.TimeoutExpired:
        raise FileSinkError(f"setfacl on {path} timed out") from None
    if result.returncode != 0:
        reason = result.stderr.strip().rpartition(": ")[2] or "failed"
        raise FileSinkError(
            f"cannot grant readers on {path}: {reason}; the file system of "
            f"{path.parent} needs POSIX ACL support for readers",
            kind="persistent",
        )


def remove_file(path: Path) -> bool:
    """Remove ``path`` if present; return whether it existed."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise FileSinkError(f"cannot remove {path}: {exc.strerror}") from exc
    dir_fd = _open_directory(path.parent)
    try:
        _sync_directory(dir_fd, path.parent)
    finally:
        os.close(dir_fd)

    return True


def read_own_file(path: str | Path) -> bytes | None:
    """Read a file tokend wrote, without following a link; None if absent."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    # Plain reads into small buffers: a buffered stream's read(1 MiB) costs
    # a 1 MiB allocation per call, ten times the read of a token file.
    chunks: list[bytes] = []
    left = READ_LIMIT
    try:
        while left > 0:
            chunk = os.read(fd, min(left, READ_CHUNK))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks)


def _refuse_links(path: Path) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise FileSinkError(f"cannot inspect {path}: {exc.strerror}") from exc
    if stat.S_ISLNK(info.st_mode):
        raise FileSinkError(
            f"{path} is a symbolic link; tokend never writes through links: "
            "remove it and tokend writes a regular file there"
        )
    if not stat.S_ISREG(info.st_mode):
        raise FileSinkError(f"{path} exists and is not a regular file")


def _open_directory(directory: Path) -> int:
    try:
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise FileSinkError(f"cannot open {directory}: {exc.strerror}") from exc


def _unlink_quietly(name: str, dir_fd: int) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=dir_fd)
