"""The Vault credential source against a real OpenBao dev server."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

import anyio
import pytest

from tests.support.bao_fixtures import WriteAppRoleFiles, root_vault
from tests.support.bao_server import BaoServer
from tokend import read_ahead
from tokend.config import VaultSettings
from tokend.errors import CredentialsError, VaultDeniedError, VaultUnavailableError
from tokend.vault import VaultSource, expand_credential_path

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


def approle_settings(bao: BaoServer, files: object, **extra: object) -> VaultSettings:
    return VaultSettings(
        address=bao.address,
        role_id_file=str(files.role_id_file),  # type: ignore[attr-defined]
        secret_id_file=str(files.secret_id_file),  # type: ignore[attr-defined]
        **extra,  # type: ignore[arg-type]
    )


async def test_approle_login_reads_client_credentials(
    bao: BaoServer, approle_files: WriteAppRoleFiles
) -> None:
    secret = secrets.token_urlsafe(16)
    creds = bao.seed_service(f"v-{secrets.token_hex(3)}", "svc-a", secret)
    source = VaultSource(approle_settings(bao, approle_files(creds)))
    try:
        result = await source.read_credentials(creds.kv_path)
    finally:
        await source.aclose()

    assert result.client_id == "svc-a"
    assert result.client_secret.get_secret_value() == secret
    assert secret not in repr(result)
    assert source.state.logged_in and source.state.ttl == 3600


async def test_missing_path_names_it(
    bao: BaoServer, approle_files: WriteAppRoleFiles
) -> None:
    creds = bao.seed_service(f"v-{secrets.token_hex(3)}", "svc", "s")
    bao.delete_secret(creds.kv_path)
    source = VaultSource(approle_settings(bao, approle_files(creds)))
    try:
        with pytest.raises(CredentialsError) as caught:
            await source.read_credentials(creds.kv_path)
    finally:
        await source.aclose()

    assert f"secret/data/{creds.kv_path}" in str(caught.value)
    assert "404" in str(caught.value)


async def test_path_outside_the_policy_is_denied(
    bao: BaoServer, approle_files: WriteAppRoleFiles
) -> None:
    creds = bao.seed_service(f"v-{secrets.token_hex(3)}", "svc", "s")
    other = bao.seed_service(f"v-{secrets.token_hex(3)}", "svc2", "s2")
    source = VaultSource(approle_settings(bao, approle_files(creds)))
    try:
        with pytest.raises(VaultDeniedError) as caught:
            await source.read_credentials(other.kv_path)
    finally:
        await source.aclose()

    assert "403" in str(caught.value) and other.kv_path in str(caught.value)
    assert caught.value.kind == "persistent"


async def test_revoked_login_is_replaced_by_a_new_one(
    bao: BaoServer, approle_files: WriteAppRoleFiles
) -> None:
    creds = bao.seed_service(f"v-{secrets.token_hex(3)}", "svc-r", "s")
    source = VaultSource(approle_settings(bao, approle_files(creds)))
    try:
        await source.read_credentials(creds.kv_path)
        assert source._client is not None
        bao.client().auth.token.revoke(source._client.token)
        again = await source.read_credentials(creds.kv_path)
    finally:
        await source.aclose()

    assert again.client_id == "svc-r"
    assert source.state.logins == 2


async def test_secret_without_expected_keys(
    bao: BaoServer, approle_files: WriteAppRoleFiles
) -> None:
    creds = bao.seed_service(f"v-{secrets.token_hex(3)}", "svc", "s")
    bao.write_secret(creds.kv_path, {"id": "svc", "secret": "s"})
    source = VaultSource(approle_settings(bao, approle_files(creds)))
    try:
        with pytest.raises(CredentialsError, match="client_id or client_secret"):
            await source.read_credentials(creds.kv_path)
        custom = VaultSource(
            approle_settings(
                bao,
                approle_files(creds),
                client_id_key="id",
                client_secret_key="secret",
            )
        )
        assert (await custom.read_credentials(creds.kv_path)).client_id == "svc"
        await custom.aclose()
    finally:
        await source.aclose()


async def test_wrong_secret_id_is_a_credentials_error(
    bao: BaoServer, approle_files: WriteAppRoleFiles, caplog: pytest.LogCaptureFixture
) -> None:
    creds = bao.seed_service(f"v-{secrets.token_hex(3)}", "svc", "s")
    files = approle_files(creds)
    wrong = secrets.token_hex(16)
    files.secret_id_file.write_text(wrong)
    source = VaultSource(approle_settings(bao, files))
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(CredentialsError) as caught:
            await source.read_credentials(creds.kv_path)
    finally:
        await source.aclose()

    assert caught.value.kind == "persistent"
    assert "auth/approle/login" in str(caught.value)
    assert wrong not in str(caught.value) and wrong not in caplog.text


async def test_sealed_vault_serves_cached_credentials(
    bao: BaoServer, approle_files: WriteAppRoleFiles
) -> None:
    creds = bao.seed_service(f"v-{secrets.token_hex(3)}", "svc", "cached")
    source = VaultSource(approle_settings(bao, approle_files(creds)))
    try:
        await source.read_credentials(creds.kv_path)
        bao.seal()
        cached = await source.read_credentials(creds.kv_path)
        with pytest.raises(VaultUnavailableError, match="sealed"):
            await source.read_credentials(creds.kv_path, fresh=True)
    finally:
        bao.unseal()
        await source.aclose()

    assert cached.client_secret.get_secret_value() == "cached"


async def test_stopped_vault_is_retryable(
    bao: BaoServer, approle_files: WriteAppRoleFiles
) -> None:
    creds = bao.seed_service(f"v-{secrets.token_hex(3)}", "svc", "s")
    files = approle_files(creds)
    bao.stop()
    source = VaultSource(approle_settings(bao, files))
    try:
        with pytest.raises(VaultUnavailableError) as caught:
            await source.read_credentials(creds.kv_path)
    finally:
        await source.aclose()

    assert caught.value.kind == "retryable"
    assert bao.address in str(caught.value)


async def test_token_auth_from_file_and_environment(
    bao: BaoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = bao.seed_service(f"v-{secrets.token_hex(3)}", "svc-t", "s")
    token = bao.create_token([creds.policy], ttl="10m")
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    from_file = VaultSource(
        VaultSettings(address=bao.address, auth="token", token_file=str(token_file))
    )
    monkeypatch.setenv("VAULT_TOKEN", token)
    from_env = VaultSource(VaultSettings(address=bao.address, auth="token"))
    try:
        assert (await from_file.read_credentials(creds.kv_path)).client_id == "svc-t"
        assert (await from_env.read_credentials(creds.kv_path)).client_id == "svc-t"
    finally:
        await from_file.aclose()
        await from_env.aclose()

    assert from_file.state.renewable and 0 < (from_file.state.ttl or 0) <= 600


async def test_percent_c_expands_to_the_credentials_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert expand_credential_path("%C/secret_id", "secret_id_file") == (
        tmp_path / "secret_id"
    )
    assert expand_credential_path("/x/100%%", "k") == Path("/x/100%")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(CredentialsError, match="CREDENTIALS_DIRECTORY"):
        expand_credential_path("%C/secret_id", "secret_id_file")


async def test_missing_secret_id_file_names_it(
    bao: BaoServer, approle_files: WriteAppRoleFiles
) -> None:
    creds = bao.seed_service(f"v-{secrets.token_hex(3)}", "svc", "s")
    files = approle_files(creds)
    files.secret_id_file.unlink()
    source = VaultSource(approle_settings(bao, files))
    try:
        with pytest.raises(CredentialsError) as caught:
            await source.read_credentials(creds.kv_path)
    finally:
        await source.aclose()

    assert str(files.secret_id_file) in str(caught.value)
    assert "does not exist" in str(caught.value)


async def test_short_ttl_is_renewed_then_logged_in_again(
    bao: BaoServer, approle_files: WriteAppRoleFiles
) -> None:
    """A token near its max TTL cannot be renewed usefully: tokend logs in anew."""
    import anyio

    name = f"v-{secrets.token_hex(3)}"
    creds = bao.seed_service(name, "svc", "s")
    bao.create_approle(
        creds.role_name, [creds.policy], token_ttl="3s", token_max_ttl="6s"
    )
    source = VaultSource(approle_settings(bao, approle_files(creds)))
    try:
        await source.read_credentials(creds.kv_path)
        async with anyio.create_task_group() as group:
            group.start_soon(source.keep_login)
            with anyio.fail_after(20):
                # Polling observed state is the point of this test.
                while source.state.renewals < 1 or source.state.logins < 2:  # noqa: ASYNC110
                    await anyio.sleep(0.1)
            group.cancel_scope.cancel()
        assert (await source.read_credentials(creds.kv_path)).client_id == "svc"
    finally:
        await source.aclose()

    assert source.state.renewals >= 1
    assert source.state.ttl is not None and source.state.ttl >= 1


async def test_many_tokens_at_once_log_in_only_once(
    bao: BaoServer, approle_files: WriteAppRoleFiles
) -> None:
    """A secret_id may allow few uses: concurrent reads share one login."""
    import anyio

    creds = bao.seed_service(f"v-{secrets.token_hex(3)}", "svc-m", "s")
    source = VaultSource(approle_settings(bao, approle_files(creds)))
    try:
        async with anyio.create_task_group() as group:
            for _ in range(10):
                group.start_soon(source.read_credentials, creds.kv_path)
    finally:
        await source.aclose()

    assert source.state.logins == 1


async def test_read_ahead_serves_planned_credentials_once(
    bao: BaoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read ahead secrets need no read of their own; a missing one reports 404."""
    prefix = f"tokend/ahead-{secrets.token_hex(3)}"
    paths = [f"{prefix}-{index}" for index in range(3)]
    for index, path in enumerate(paths):
        bao.write_secret(path, {"client_id": f"svc-{index}", "client_secret": "s"})
    missing = f"{prefix}-missing"
    source = root_vault(bao, tmp_path)
    own_reads: list[str] = []
    read_secret = source.read_secret

    async def counted(path: str, *args: str) -> dict[str, object]:
        own_reads.append(path)
        return await read_secret(path, *args)

    monkeypatch.setattr(source, "read_secret", counted)
    try:
        await source.read_ahead(source.plan_read_ahead([*paths, missing]))
        found = [await source.read_credentials(path) for path in paths]
        with pytest.raises(CredentialsError, match="404") as caught:
            await source.read_credentials(missing)
        again = await source.read_credentials(paths[0])
    finally:
        await source.aclose()

    assert [credentials.client_id for credentials in found] == [
        "svc-0",
        "svc-1",
        "svc-2",
    ]
    assert missing in str(caught.value)
    # Claimed once: a second read (another token, a reload) asks Vault.
    assert own_reads == [missing, paths[0]] and again.client_id == "svc-0"


async def test_read_ahead_answer_left_unclaimed_goes_stale(
    bao: BaoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A secret rotated after an unclaimed read-ahead is read fresh, not served old."""
    path = f"tokend/stale-{secrets.token_hex(3)}"
    bao.write_secret(path, {"client_id": "svc-old", "client_secret": "s"})
    source = root_vault(bao, tmp_path)
    try:
        await source.read_ahead(source.plan_read_ahead([path]))
        bao.write_secret(path, {"client_id": "svc-new", "client_secret": "s"})
        monkeypatch.setattr(read_ahead, "STALE_AFTER", -1.0)  # as if long ago
        credentials = await source.read_credentials(path)
    finally:
        await source.aclose()

    assert credentials.client_id == "svc-new"


async def test_read_ahead_after_an_event_logs_in_only_then(
    bao: BaoServer, tmp_path: Path
) -> None:
    """A restart's read-ahead waits for its keepers; closing the source releases it."""
    path = f"tokend/after-{secrets.token_hex(3)}"
    bao.write_secret(path, {"client_id": "svc-later", "client_secret": "s"})

    async def no_own_read(path: str, *args: str) -> dict[str, object]:
        raise AssertionError(f"{path} read on its own, not ahead")

    source = root_vault(bao, tmp_path)
    source.read_secret = no_own_read  # type: ignore[method-assign]
    restored = anyio.Event()
    try:
        async with anyio.create_task_group() as group:
            (batch,) = source.plan_read_ahead([path])
            group.start_soon(source.read_ahead, [batch], restored)
            await anyio.sleep(0.3)
            waited = not batch.done.is_set() and source.state.logins == 0
            restored.set()
            credentials = await source.read_credentials(path)
    finally:
        await source.aclose()
    # Closed before it could start: released at once, and no login.
    closed = root_vault(bao, tmp_path)
    (unread,) = closed.plan_read_ahead([path])
    await closed.aclose()
    with anyio.fail_after(5):
        await closed.read_ahead([unread], restored)

    assert waited
    assert credentials.client_id == "svc-later" and source.state.logins == 1
    assert unread.done.is_set() and not unread.found
    assert closed.state.logins == 0


async def test_read_ahead_stops_when_vault_fails(
    bao: BaoServer, approle_files: WriteAppRoleFiles
) -> None:
    """A sealed Vault ends the read-ahead; the token's own read says why."""
    creds = bao.seed_service(f"v-{secrets.token_hex(3)}", "svc", "s")
    source = VaultSource(approle_settings(bao, approle_files(creds)))
    try:
        await source.login()
        bao.seal()
        await source.read_ahead(source.plan_read_ahead([creds.kv_path]))
        with pytest.raises(VaultUnavailableError, match="sealed"):
            await source.read_credentials(creds.kv_path)
    finally:
        bao.unseal()
        await source.aclose()
