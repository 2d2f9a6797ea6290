"""What each ``tokend`` command does; :mod:`tokend.cli` parses and dispatches."""

from __future__ import annotations

import argparse
import grp
import json
import logging
import os
import sys
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import anyio.to_thread

from tokend.client_auth import make_authenticator
from tokend.config import FilesDefaults, TokenConfig
from tokend.config_files import LoadedConfig, load_config
from tokend.control import REFRESH_WAIT
from tokend.daemon import Daemon, EndpointPool, prepare_workspace
from tokend.errors import ConfigError, TokendError
from tokend.lifecycle import TokenKeeper, build_request
from tokend.token import format_time
from tokend.vault import VaultSource

logger = logging.getLogger("tokend")

DEFAULT_SOCKET = FilesDefaults().directory / "control.sock"
EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_UNREACHABLE = 0, 1, 2, 3


def run_daemon(path: Path, args: argparse.Namespace) -> int:
    code = anyio.run(Daemon(path).run)
    # A Vault call abandoned at shutdown may still wait for its timeout in a
    # worker thread; the interpreter would wait for it. Nothing is left to do.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _load_or_report(path: Path) -> LoadedConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        count = len(exc.problems)
        noun = "problem" if count == 1 else "problems"
        sys.stderr.write(f"tokend: invalid configuration ({count} {noun}):\n")
        sys.stderr.writelines(f"  {problem}\n" for problem in exc.problems)
        return None


def check_config(path: Path, args: argparse.Namespace) -> int:
    loaded = _load_or_report(path)
    if loaded is None:
        return EXIT_INVALID
    out = sys.stdout
    out.write(f"configuration ok: {', '.join(str(f) for f in loaded.files)}\n")
    out.write(
        f"vault: {loaded.settings.vault.address} auth={loaded.settings.vault.auth}\n"
    )
    control = loaded.settings.control
    out.write(f"control socket: {loaded.settings.control_socket}")
    if control.group and not _group_exists(control.group):
        out.write(f" (warning: no group {control.group!r}; it keeps tokend's group)")
    out.write("\n")
    rows = [("TOKEN", "AUDIENCE", "SCOPES", "AUTH", "FILE", "MODE", "FORMAT", "GROUP")]
    for token in loaded.tokens.values():
        rows.append(
            (
                token.name,
                token.audience or "-",
                " ".join(token.scopes) or "-",
                _auth_summary(token),
                str(token.path),
                f"{token.mode:04o}",
                token.format,
                _group_name(token.gid),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write(
            "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        )
        out.write("\n")
    if not args.online:
        return EXIT_OK
    if _spends_wrapping_token(loaded, "check --online"):
        return EXIT_INVALID

    return anyio.run(_check_online, loaded)


def _spends_wrapping_token(loaded: LoadedConfig, command: str) -> bool:
    """Refuse to unwrap the daemon's wrapping token for a one-off command."""
    vault = loaded.settings.vault
    if vault.auth != "approle" or not vault.secret_id_wrapped:
        return False
    sys.stderr.write(
        f"tokend {command}: vault.secret_id_wrapped is set, and unwrapping the "
        "wrapping token here would leave none for the daemon's next start; log "
        "in with your own token instead: VAULT_TOKEN=... TOKEND_VAULT__AUTH=token "
        f"tokend {command} ...\n"
    )
    return True


def _auth_summary(token: TokenConfig) -> str:
    """``private_key_jwt(transit:orders)``: the method and where its key is."""
    source = token.signing_key or token.client_certificate
    return f"{token.client_auth}({source})" if source else token.client_auth


async def _check_online(loaded: LoadedConfig) -> int:
    vault = VaultSource(loaded.settings.vault)
    endpoints = EndpointPool()
    failed = 0
    try:
        for token in loaded.tokens.values():
            try:
                endpoint = endpoints.get(token)
                authenticator = make_authenticator(token, vault)
                url, auth = await authenticator.prepare(
                    endpoint, datetime.now(UTC).timestamp(), retry=False
                )
                sent_at = datetime.now(UTC)
                result = await endpoint.fetch(build_request(token), auth, sent_at, url)
            except TokendError as exc:
                failed += 1
                sys.stdout.write(f"FAILED {token.name}: {exc}\n")
                continue
            sys.stdout.write(
                f"ok     {token.name}: token {result.fingerprint} expires "
                f"{format_time(result.expires_at)} scope={' '.join(result.scope)}\n"
            )
    finally:
        await endpoints.aclose()
        await vault.aclose()

    return EXIT_FAILED if failed else EXIT_OK


def fetch_once(path: Path, args: argparse.Namespace) -> int:
    loaded = _load_or_report(path)
    if loaded is None:
        return EXIT_INVALID

    return anyio.run(_fetch_all, loaded, args.force)


async def _fetch_all(loaded: LoadedConfig, force: bool) -> int:
    try:
        workspace = await anyio.to_thread.run_sync(prepare_workspace, loaded)
    except TokendError as exc:
        logger.error("cannot write token files: %s", exc)
        return EXIT_FAILED
    vault = VaultSource(loaded.settings.vault)
    endpoints = EndpointPool()
    failed: list[str] = []

    async def fetch(keeper: TokenKeeper) -> None:
        due = await keeper.restore()
        if force or keeper.status.state != "fresh" or due.remaining(keeper.clock) <= 0:
            await keeper.attempt()
        if keeper.status.state != "fresh":
            failed.append(keeper.name)

    try:
        async with anyio.create_task_group() as group:
            for token in loaded.tokens.values():
                keeper = TokenKeeper(
                    token,
                    endpoints.get(token),
                    vault,
                    workspace.store,
                    loaded.settings.refresh,
                )
                group.start_soon(fetch, keeper)
    finally:
        await endpoints.aclose()
        await vault.aclose()
        workspace.release()
    if failed:
        logger.error("failed tokens=%s", ",".join(sorted(failed)))
        return EXIT_FAILED

    return EXIT_OK


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _group_name(gid: int | None) -> str:
    if gid is None:
        return "-"
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def print_jwks(path: Path, args: argparse.Namespace) -> int:
    """``tokend jwks NAME``: the public keys to register the client with.

    Exit 0 with the JWKS on stdout; 2 for an invalid config or a token
    without private_key_jwt; 1 when Vault cannot give the key.
    """
    loaded = _load_or_report(path)
    if loaded is None:
        return EXIT_INVALID
    token = loaded.tokens.get(args.name)
    if token is None:
        known = ", ".join(sorted(loaded.tokens)) or "none"
        sys.stderr.write(f"{path}: no token {args.name!r} (tokens: {known})\n")
        return EXIT_INVALID
    if token.client_auth != "private_key_jwt":
        sys.stderr.write(
            f"{path}: token {args.name!r} uses client_auth = "
            f'"{token.client_auth}"; a JWKS exists only for "private_key_jwt" '
            "with a signing_key\n"
        )
        return EXIT_INVALID
    if _spends_wrapping_token(loaded, f"jwks {args.name}"):
        return EXIT_INVALID

    from tokend.client_assertion import make_signer

    async def read() -> list[dict[str, str]]:
        vault = VaultSource(loaded.settings.vault)
        try:
            choices = await make_signer(token, vault).keys()
        finally:
            await vault.aclose()
        return [choice.key.jwk() for choice in choices]

    try:
        keys = anyio.run(read)
    except TokendError as exc:
        sys.stderr.write(f"tokend jwks {args.name}: {exc}\n")
        return EXIT_FAILED
    sys.stdout.write(json.dumps({"keys": keys}, indent=2) + "\n")
    return EXIT_OK


def show_status(path: Path, args: argparse.Namespace) -> int:
    """``tokend status``: 0 all fresh, 1 any not fresh, 3 daemon unreachable."""
    answer = _ask_daemon(path, args, "GET", "/v1/status")
    if answer is None:
        return EXIT_UNREACHABLE
    _, document = answer
    if args.json:
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        sys.stdout.write(render_status(document))
    tokens = document.get("tokens", {})
    fresh = all(t.get("state") == "fresh" for t in tokens.values())

    return EXIT_OK if fresh else EXIT_FAILED


def render_status(document: dict[str, Any]) -> str:
    """The status as a table, with the daemon's summary and errors above it."""
    lines = [
        f"tokend {document.get('version')}: {document.get('summary')}",
        f"config {document.get('config')} loaded {document.get('loaded_at')}",
    ]
    if document.get("reload_error"):
        lines.append(f"last reload rejected: {document['reload_error']}")
    vault = document.get("vault") or {}
    vault_state = "logged in" if vault.get("logged_in") else "not logged in"
    lines.append(f"vault {vault_state}; last error: {vault.get('last_error') or '-'}")
    rows = [("TOKEN", "STATE", "EXPIRES", "NEXT REFRESH", "FILE", "LAST ERROR")]
    for name, token in document.get("tokens", {}).items():
        rows.append(
            (
                name,
                str(token.get("state")),
                token.get("expires_at") or "-",
                token.get("next_refresh") or "-",
                token.get("file") or "-",
                (token.get("last_error") or "-")[:120],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines.append("")
    for row in rows:
        cells = zip(row, widths, strict=True)
        lines.append("  ".join(v.ljust(w) for v, w in cells).rstrip())

    return "\n".join(lines) + "\n"


def refresh_token(path: Path, args: argparse.Namespace) -> int:
    """``tokend refresh NAME``: 0 refreshed, 1 failed, 3 daemon unreachable."""
    answer = _ask_daemon(path, args, "POST", f"/v1/tokens/{quote(args.name)}/refresh")
    if answer is None:
        return EXIT_UNREACHABLE
    code, document = answer
    status = document.get("status") or {}
    if code == 200:
        sys.stdout.write(
            f"refreshed {args.name}: token {status.get('fingerprint')} expires "
            f"{status.get('expires_at')}\n"
        )
        return EXIT_OK
    reason = document.get("error") or status.get("last_error") or f"HTTP {code}"
    sys.stderr.write(f"tokend refresh {args.name}: {reason}\n")

    return EXIT_FAILED


def _ask_daemon(
    path: Path, args: argparse.Namespace, method: str, route: str
) -> tuple[int, dict[str, Any]] | None:
    import aiohttp  # only the client commands need it

    socket_path = _socket_path(path, args)

    async def ask() -> tuple[int, dict[str, Any]]:
        connector = aiohttp.UnixConnector(path=str(socket_path))
        timeout = aiohttp.ClientTimeout(total=REFRESH_WAIT + 5)
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.request(method, f"http://tokend{route}") as response,
        ):
            return response.status, await response.json()

    try:
        return anyio.run(ask)
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        sys.stderr.write(
            f"tokend {args.command}: cannot reach the daemon at {socket_path}: "
            f"{reason}. Is it running (systemctl status tokend)? Is this user in "
            "the control socket's group?\n"
        )
        return None


def _socket_path(path: Path, args: argparse.Namespace) -> Path:
    if args.socket:
        return Path(args.socket)
    try:
        return load_config(path).settings.control_socket
    except ConfigError:
        # A rejected edit is when status matters most: read just the two keys.
        return _socket_from_raw(path)


def _socket_from_raw(path: Path) -> Path:
    try:
        with path.open("rb") as stream:
            document = tomllib.load(stream)
    except (OSError, tomllib.TOMLDecodeError):
        return DEFAULT_SOCKET
    control, files = document.get("control"), document.get("files")
    if isinstance(control, dict) and isinstance(control.get("socket"), str):
        return Path(control["socket"])
    if isinstance(files, dict) and isinstance(files.get("directory"), str):
        return Path(files["directory"]) / "control.sock"
    return DEFAULT_SOCKET
