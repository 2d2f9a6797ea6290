"""State records: what a restarted daemon needs to reuse a still-valid token.

One small JSON file per token in the state directory (mode 0700, files
0600). It holds the request fingerprint, the token's expiry and a hash of
the token, never the token itself: the token is read back from its own file
and accepted only if its hash matches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import SecretStr, TypeAdapter, ValidationError

from tokend.errors import FileSinkError
from tokend.files import (
    parse_token_file,
    read_own_file,
    remove_file,
    remove_stale_temp_files,
    write_atomic,
)
from tokend.token import AccessToken, format_time, parse_time

logger = logging.getLogger(__name__)

STATE_VERSION = 1


def token_digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class StateRecord:
    name: str
    request: str
    digest: str
    token_type: str
    issued_at: str
    lifetime: float
    scope: list[str]
    audience: str | None
    generation: int
    path: str
    format: str
    client_id: str | None
    version: int = STATE_VERSION

    @classmethod
    def of(
        cls,
        name: str,
        request: str,
        token: AccessToken,
        generation: int,
        path: Path,
        fmt: str,
        client_id: str | None,
    ) -> StateRecord:
        return cls(
            name=name,
            request=request,
            digest=token_digest(token.value.get_secret_value()),
            token_type=token.token_type,
            issued_at=format_time(token.issued_at),
            lifetime=token.lifetime,
            scope=list(token.scope),
            audience=token.audience,
            generation=generation,
            path=str(path),
            format=fmt,
            client_id=client_id,
        )


RECORD = TypeAdapter(StateRecord)


@dataclass(frozen=True)
class Restored:
    """A token found on disk at start, with what its state record says."""

    token: AccessToken
    generation: int
    client_id: str | None
    same_request: bool
    path: str  # as the record has it: compared with str(TokenConfig.path)
    format: str


class StateStore:
    """The state directory; every method is blocking file I/O."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def prepare(self) -> None:
        """Create the directory (0700) and remove temp files of a crashed write."""
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            os.chmod(self.directory, 0o700)
        except OSError as exc:
            raise FileSinkError(
                f"cannot create state directory {self.directory}: {exc.strerror}"
            ) from exc
        remove_stale_temp_files(self.directory)

    def save(self, record: StateRecord) -> None:
        data = json.dumps(asdict(record), indent=2).encode()
        write_atomic(self._path(record.name), data, 0o600)

    def forget(self, name: str) -> None:
        remove_file(self._path(name))

    def load(self, name: str) -> StateRecord | None:
        data = read_own_file(self._path(name))
        if data is None:
            return None
        try:
            record = RECORD.validate_json(data)
        except ValidationError:
            logger.warning("ignoring unreadable state record token=%s", name)
            return None

        return record if record.version == STATE_VERSION else None

    def restore(self, name: str, request: str) -> Restored | None:
        """Return the token an earlier run published for ``name``, if intact.

        Intact means: the record exists and the token file still holds
        exactly the token the record describes. Whether it was made for the
        same ``request``, and whether it is still valid, the caller judges.
        """
        record = self.load(name)
        if record is None:
            return None
        data = read_own_file(record.path)
        value = parse_token_file(data, record.format) if data else None
        if value is None or token_digest(value) != record.digest:
            return None
        try:
            issued_at = parse_time(record.issued_at)
        except ValueError:
            return None
        token = AccessToken(
            value=SecretStr(value),
            token_type=record.token_type,
            issued_at=issued_at,
            lifetime=record.lifetime,
            scope=tuple(record.scope),
            audience=record.audience,
        )

        return Restored(
            token,
            record.generation,
            record.client_id,
            record.request == request,
            record.path,
            record.format,
        )

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.json"
