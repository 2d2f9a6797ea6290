"""State records: a restarted daemon reuses a token only when nothing changed."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from tokend.files import describe_metadata, render_token, write_atomic
from tokend.state import STATE_VERSION, StateRecord, StateStore
from tokend.token import AccessToken

SECRET = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJvcmRlcnMifQ.state-secret"
REQUEST = "fingerprint-of-url-client-audience-scopes"


@contextmanager
def umask(value: int) -> Iterator[None]:
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def make_token(value: str = SECRET) -> AccessToken:
    return AccessToken(
        value=SecretStr(value),
        token_type="Bearer",
        issued_at=datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC),
        lifetime=3600,
        scope=("orders:read",),
        audience="https://orders.example.test",
    )


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    store = StateStore(tmp_path / "state")
    store.prepare()
    return store


def publish(
    store: StateStore,
    directory: Path,
    token: AccessToken,
    fmt: str = "raw",
    request: str = REQUEST,
) -> Path:
    """Do what a refresh does: write the token file, then its state record."""
    path = directory / "orders"
    write_atomic(
        path, render_token(token, fmt, describe_metadata(token, 4, None)), 0o640
    )
    store.save(StateRecord.of("orders", request, token, 4, path, fmt, "orders-client"))

    return path


@pytest.mark.parametrize("fmt", ["raw", "header", "json"])
def test_state_store_restores_what_was_saved(
    store: StateStore, tmp_path: Path, fmt: str
) -> None:
    token = make_token()
    publish(store, tmp_path, token, fmt)

    restored = store.restore("orders", REQUEST)

    assert restored is not None
    again, generation, client_id = (
        restored.token,
        restored.generation,
        restored.client_id,
    )
    assert restored.same_request
    assert again.value.get_secret_value() == SECRET
    assert again.token_type == "Bearer"
    assert again.issued_at == token.issued_at
    assert again.expires_at == token.expires_at
    assert again.scope == ("orders:read",)
    assert again.audience == "https://orders.example.test"
    assert (generation, client_id) == (4, "orders-client")


def test_state_store_restored_expiry_is_never_later(
    store: StateStore, tmp_path: Path
) -> None:
    """Sub-second issue times may be rounded, but only towards earlier expiry."""
    token = AccessToken(
        value=SecretStr(SECRET),
        token_type="Bearer",
        issued_at=datetime(2024, 5, 1, 12, 0, 0, 999_999, tzinfo=UTC),
        lifetime=299.75,
    )
    publish(store, tmp_path, token)

    restored = store.restore("orders", REQUEST)

    assert restored is not None
    expires_at = restored.token.expires_at
    assert expires_at <= token.expires_at
    assert (token.expires_at - expires_at).total_seconds() < 1


def test_state_store_marks_record_of_another_request(
    store: StateStore, tmp_path: Path
) -> None:
    """A changed request is not reused, but its token is known until it expires."""
    publish(store, tmp_path, make_token())

    changed = store.restore("orders", REQUEST + "-new-audience")
    same = store.restore("orders", REQUEST)

    assert changed is not None and not changed.same_request
    assert same is not None and same.same_request


def test_state_store_ignores_record_when_token_file_holds_another_token(
    store: StateStore, tmp_path: Path
) -> None:
    path = publish(store, tmp_path, make_token())
    path.write_text("someone-elses-token")

    assert store.restore("orders", REQUEST) is None


def test_state_store_ignores_record_when_token_file_is_gone(
    store: StateStore, tmp_path: Path
) -> None:
    publish(store, tmp_path, make_token()).unlink()

    assert store.restore("orders", REQUEST) is None


def test_state_store_does_not_follow_a_link_at_the_token_path(
    store: StateStore, tmp_path: Path
) -> None:
    path = publish(store, tmp_path, make_token())
    elsewhere = tmp_path / "copy"
    elsewhere.write_text(SECRET)
    path.unlink()
    path.symlink_to(elsewhere)

    assert store.restore("orders", REQUEST) is None


def test_state_store_without_record_restores_nothing(store: StateStore) -> None:
    assert store.restore("orders", REQUEST) is None
    assert store.load("orders") is None


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"[]", b'"orders"', b"\xff\xfe", b'{"name": "orders"}', b"null"],
    ids=["empty", "truncated", "list", "string", "not-utf8", "fields-missing", "null"],
)
def test_state_store_ignores_corrupt_record(
    store: StateStore, tmp_path: Path, data: bytes
) -> None:
    publish(store, tmp_path, make_token())
    (store.directory / "orders.json").write_bytes(data)

    assert store.restore("orders", REQUEST) is None


def _saved_fields(store: StateStore) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((store.directory / "orders.json").read_text())
    return document


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("issued_at", 1714564800),
        ("issued_at", "yesterday"),
        ("issued_at", "2024-05-01T12:00:00"),
        ("scope", 5),
        ("path", None),
        ("lifetime", "long"),
    ],
)
def test_state_store_ignores_record_with_wrong_field_type(
    store: StateStore, tmp_path: Path, field: str, value: Any
) -> None:
    """A record edited by hand or half-migrated is a cache miss, not a crash."""
    publish(store, tmp_path, make_token())
    fields = _saved_fields(store)
    fields[field] = value
    (store.directory / "orders.json").write_text(json.dumps(fields))

    assert store.restore("orders", REQUEST) is None


def test_state_store_ignores_record_of_another_version(
    store: StateStore, tmp_path: Path
) -> None:
    publish(store, tmp_path, make_token())
    fields = _saved_fields(store)
    fields["version"] = STATE_VERSION + 1
    (store.directory / "orders.json").write_text(json.dumps(fields))

    assert store.restore("orders", REQUEST) is None


def test_state_store_forget_drops_the_record(store: StateStore, tmp_path: Path) -> None:
    publish(store, tmp_path, make_token())

    store.forget("orders")
    store.forget("never-saved")

    assert store.restore("orders", REQUEST) is None
    assert not (store.directory / "orders.json").exists()


@pytest.mark.parametrize("mask", [0o000, 0o022])
def test_state_store_keeps_records_private(tmp_path: Path, mask: int) -> None:
    store = StateStore(tmp_path / "state")

    with umask(mask):
        store.prepare()
        publish(store, tmp_path, make_token())

    assert mode_of(store.directory) == 0o700
    assert mode_of(store.directory / "orders.json") == 0o600


def test_state_store_prepare_narrows_an_existing_directory(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    directory.mkdir()
    os.chmod(directory, 0o755)

    StateStore(directory).prepare()

    assert mode_of(directory) == 0o700


def test_state_store_never_writes_the_token(store: StateStore, tmp_path: Path) -> None:
    publish(store, tmp_path, make_token(), fmt="json")

    for entry in store.directory.iterdir():
        assert SECRET.encode() not in entry.read_bytes()
    record = store.load("orders")
    assert record is not None
    assert SECRET not in json.dumps(asdict(record))
    assert SECRET not in repr(record)
