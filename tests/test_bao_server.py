"""The real OpenBao dev server behaves the way tokend relies on.

These tests also pin which hvac exception each failure surfaces as, since
tokend's vault module translates exactly those into its own errors.
"""

from __future__ import annotations

import dataclasses
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import hvac
import hvac.exceptions
import pytest
import requests

from tests.support.bao_fixtures import WriteAppRoleFiles, repair_bao_server
from tests.support.bao_server import BaoServer, ServiceCreds, build_child_env

pytestmark = pytest.mark.integration


@contextmanager
def open_client(bao: BaoServer, token: str = "") -> Iterator[hvac.Client]:
    client = bao.client(token=token)
    try:
        yield client
    finally:
        client.adapter.close()


@contextmanager
def log_in(bao: BaoServer, creds: ServiceCreds) -> Iterator[hvac.Client]:
    with open_client(bao) as client:
        client.auth.approle.login(role_id=creds.role_id, secret_id=creds.secret_id)
        yield client


def read_kv(client: hvac.Client, path: str) -> dict[str, Any]:
    response = client.secrets.kv.v2.read_secret_version(
        path=path, mount_point="secret", raise_on_deleted_version=True
    )
    data: dict[str, Any] = response["data"]["data"]

    return data


def test_seed_service_token_reads_only_its_own_secret(bao: BaoServer) -> None:
    creds = bao.seed_service("reader", "reader-id", "reader-secret")
    other = bao.seed_service("neighbour", "neighbour-id", "neighbour-secret")

    with log_in(bao, creds) as client:
        assert read_kv(client, creds.kv_path) == {
            "client_id": "reader-id",
            "client_secret": "reader-secret",
        }
        with pytest.raises(hvac.exceptions.Forbidden):
            read_kv(client, other.kv_path)


def test_approle_token_ttl_is_the_role_ttl_and_renews(bao: BaoServer) -> None:
    creds = bao.seed_service("ttl", "ttl-id", "ttl-secret", ttl="90s")

    with log_in(bao, creds) as client:
        looked_up = client.auth.token.lookup_self()["data"]
        renewed = client.auth.token.renew_self()["auth"]

    assert looked_up["renewable"] is True
    assert 80 <= looked_up["ttl"] <= 90
    assert sorted(looked_up["policies"]) == ["default", creds.policy]
    assert renewed["lease_duration"] == 90


def test_login_with_wrong_secret_id_raises_invalid_request(bao: BaoServer) -> None:
    creds = bao.seed_service("wrong-secret", "id", "secret")

    with open_client(bao) as client, pytest.raises(hvac.exceptions.InvalidRequest):
        client.auth.approle.login(role_id=creds.role_id, secret_id="not-the-secret")


def test_wrapped_secret_id_unwraps_to_a_working_secret_id(bao: BaoServer) -> None:
    creds = bao.seed_service("wrapped", "wrapped-id", "wrapped-secret")
    wrapping_token = bao.new_wrapped_secret_id(creds.role_name)

    with open_client(bao, token=wrapping_token) as client:
        secret_id = client.sys.unwrap()["data"]["secret_id"]

    unwrapped = dataclasses.replace(creds, secret_id=secret_id)
    with log_in(bao, unwrapped) as client:
        assert read_kv(client, creds.kv_path)["client_id"] == "wrapped-id"


def test_create_token_has_requested_ttl_and_policies(bao: BaoServer) -> None:
    token = bao.create_token(["default"], ttl="2m", renewable=False)

    with open_client(bao, token=token) as client:
        looked_up = client.auth.token.lookup_self()["data"]

    assert looked_up["renewable"] is False
    assert 110 <= looked_up["ttl"] <= 120
    assert looked_up["policies"] == ["default"]


def test_delete_secret_makes_reads_raise_invalid_path(bao: BaoServer) -> None:
    creds = bao.seed_service("deleted", "deleted-id", "deleted-secret")
    bao.delete_secret(creds.kv_path)

    with log_in(bao, creds) as client, pytest.raises(hvac.exceptions.InvalidPath):
        read_kv(client, creds.kv_path)


def test_sealed_server_raises_vault_down_until_unsealed(bao: BaoServer) -> None:
    creds = bao.seed_service("sealed", "sealed-id", "sealed-secret")

    with log_in(bao, creds) as client:
        bao.seal()
        assert bao.is_sealed()
        with pytest.raises(hvac.exceptions.VaultDown, match="sealed"):
            read_kv(client, creds.kv_path)
        with pytest.raises(hvac.exceptions.VaultDown, match="sealed"):
            client.auth.token.renew_self()

        bao.unseal()
        assert read_kv(client, creds.kv_path)["client_id"] == "sealed-id"


def test_restart_loses_data_but_keeps_address_and_root_token(
    bao: BaoServer,
) -> None:
    creds = bao.seed_service("restarted", "old-id", "old-secret")
    address, root_token = bao.address, bao.root_token

    with log_in(bao, creds) as client:
        bao.restart()
        with pytest.raises(hvac.exceptions.Forbidden):
            read_kv(client, creds.kv_path)

    assert (bao.address, bao.root_token) == (address, root_token)
    with open_client(bao) as client, pytest.raises(hvac.exceptions.Forbidden):
        # AppRole is gone with the rest of the data. Without a token an unknown
        # route is "permission denied"; only a root client would see a 404.
        client.auth.approle.login(role_id=creds.role_id, secret_id=creds.secret_id)

    bao.enable_approle()
    reseeded = bao.seed_service("restarted", "new-id", "new-secret")
    with log_in(bao, reseeded) as client:
        assert read_kv(client, reseeded.kv_path)["client_id"] == "new-id"


def test_stopped_server_raises_connection_error(bao: BaoServer) -> None:
    """The next test's ``bao`` fixture restarts the server this one stops."""
    with open_client(bao, token=bao.root_token) as client:
        bao.stop()
        with pytest.raises(requests.ConnectionError):
            read_kv(client, "tokend/anything")


def test_repair_bao_server_restarts_a_stopped_server(bao: BaoServer) -> None:
    bao.stop()

    repair_bao_server(bao)

    assert bao.running
    with open_client(bao, token=bao.root_token) as client:
        assert "approle/" in client.sys.list_auth_methods()["data"]


def test_repair_bao_server_unseals_a_sealed_server(bao: BaoServer) -> None:
    creds = bao.seed_service("repaired", "repaired-id", "repaired-secret")
    bao.seal()

    repair_bao_server(bao)

    with log_in(bao, creds) as client:
        assert read_kv(client, creds.kv_path)["client_id"] == "repaired-id"


def test_approle_files_are_private_and_hold_the_credentials(
    bao: BaoServer, approle_files: WriteAppRoleFiles
) -> None:
    creds = bao.seed_service("files", "files-id", "files-secret")
    files = approle_files(creds)

    for path, expected in [
        (files.role_id_file, creds.role_id),
        (files.secret_id_file, creds.secret_id),
    ]:
        assert path.read_text() == expected
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_child_env_drops_vault_and_bao_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VAULT_ADDR", "http://elsewhere:8200")
    monkeypatch.setenv("BAO_TOKEN", "someone-elses")
    monkeypatch.setenv("TOKEND_UNRELATED", "kept")

    env = build_child_env()

    assert "VAULT_ADDR" not in env
    assert "BAO_TOKEN" not in env
    assert env["TOKEND_UNRELATED"] == "kept"
