"""What each ``tokend`` command does; :mod:`tokend.cli` parses and dispatches."""

from __future__ import annotations

import argparse
import grp
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import anyio
import anyio.to_thread

from tokend import __version__
from tokend.config_files import LoadedConfig, load_config
from tokend.daemon import Daemon, EndpointPool, prepare_workspace
from tokend.errors import ConfigError, TokendError
from tokend.lifecycle import TokenKeeper, build_request
from tokend.token import format_time
from tokend.vault import VaultSource

logger = logging.getLogger("tokend")

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
    rows = [("TOKEN", "AUDIENCE", "SCOPES", "FILE", "MODE", "FORMAT", "GROUP")]
    for token in loaded.tokens.values():
        rows.append(
            (
                token.name,
                token.audience or "-",
                " ".join(token.scopes) or "-",
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

    return anyio.run(_check_online, loaded)


async def _check_online(loaded: LoadedConfig) -> int:
    vault = VaultSource(loaded.settings.vault)
    endpoints = EndpointPool()
    failed = 0
    try:
        for token in loaded.tokens.values():
            try:
                credentials = await vault.read_credentials(token.credentials)
                sent_at = datetime.now(UTC)
                result = await endpoints.get(token).fetch(
                    build_request(token), credentials, sent_at
                )
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


def _group_name(gid: int | None) -> str:
    if gid is None:
        return "-"
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def not_available(path: Path, args: argparse.Namespace) -> int:
    sys.stderr.write(
        f"tokend {args.command}: not available in tokend {__version__}: the control "
        "socket it talks to is not implemented yet\n"
    )
    return EXIT_UNREACHABLE
