"""Pytest fixtures around one OpenBao dev server shared by the whole session.

``bao_server`` starts the server once. Tests take ``bao``, which repairs the
damage an earlier test's fault injection left behind (stopped or sealed), so a
failure in one test cannot cascade into the next. Data written by earlier tests
stays unless the server had to be restarted, so use distinct service names.

``tls_bao_server`` and ``tls_bao`` are the same for a second server speaking
HTTPS (needed by the cert auth method), started only when a test asks for it.
``bao_audit_log`` records what one test's requests to ``bao`` were.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.bao_server import BaoServer, ServiceCreds, write_private_file
from tokend.config import VaultSettings
from tokend.vault import VaultSource


@dataclass(frozen=True)
class AppRoleFiles:
    """Files holding one service's AppRole credentials, as tokend reads them."""

    role_id_file: Path
    secret_id_file: Path


WriteAppRoleFiles = Callable[[ServiceCreds], AppRoleFiles]
AUDIT_DEVICE = "test-audit"


@pytest.fixture(scope="session")
def bao_server() -> Iterator[BaoServer]:
    """Start one OpenBao dev server for the session, AppRole enabled."""
    with BaoServer() as server:
        server.enable_approle()
        yield server


@pytest.fixture
def bao(bao_server: BaoServer) -> BaoServer:
    """Return the session's OpenBao server, running, unsealed and with AppRole.

    A server an earlier test stopped is restarted, which empties it; a sealed
    one is unsealed and keeps its data.
    """
    repair_bao_server(bao_server)

    return bao_server


@pytest.fixture(scope="session")
def tls_bao_server() -> Iterator[BaoServer]:
    """Start one OpenBao dev server over HTTPS for the session, AppRole enabled."""
    with BaoServer(tls=True) as server:
        server.enable_approle()
        yield server


@pytest.fixture
def tls_bao(tls_bao_server: BaoServer) -> BaoServer:
    """Return the session's HTTPS OpenBao server, repaired like ``bao``.

    Its ``ca_file`` holds a new CA after a restart.
    """
    repair_bao_server(tls_bao_server)

    return tls_bao_server


@pytest.fixture
def bao_audit_log(bao: BaoServer, tmp_path: Path) -> Iterator[Path]:
    """Return the file ``bao`` audits every request to during this test.

    Read it with ``BaoServer.audit_paths``. The device is disabled afterwards,
    before ``tmp_path`` can go away.
    """
    path = tmp_path / "bao-audit.log"
    bao.enable_file_audit(path, name=AUDIT_DEVICE)

    yield path

    if bao.running:
        if bao.is_sealed():
            bao.unseal()
        bao.disable_audit(AUDIT_DEVICE)


@pytest.fixture
def approle_files(tmp_path: Path) -> WriteAppRoleFiles:
    """Return a function writing a service's role_id and secret_id files (0600).

    The files land in ``tmp_path/approle/<service name>/``.
    """

    def write(creds: ServiceCreds) -> AppRoleFiles:
        directory = tmp_path / "approle" / creds.name
        directory.mkdir(parents=True, exist_ok=True)
        files = AppRoleFiles(
            role_id_file=directory / "role_id",
            secret_id_file=directory / "secret_id",
        )
        write_private_file(files.role_id_file, creds.role_id)
        write_private_file(files.secret_id_file, creds.secret_id)

        return files

    return write


def repair_bao_server(server: BaoServer) -> None:
    """Restart a stopped server, unseal a sealed one, and make sure of AppRole."""
    if not server.running:
        server.restart()
    elif server.is_sealed():
        server.unseal()
    server.enable_approle()


def root_vault(bao: BaoServer, directory: Path) -> VaultSource:
    """tokend's VaultSource logged in with ``bao``'s root token (a 0600 file)."""
    token_file = directory / "vault-token"
    write_private_file(token_file, bao.root_token)
    return VaultSource(
        VaultSettings(address=bao.address, auth="token", token_file=str(token_file))
    )
