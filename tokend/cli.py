"""The ``tokend`` command line: run, check, once, status, refresh, jwks."""

from __future__ import annotations

import argparse
import grp
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import anyio
import anyio.to_thread

from tokend import __version__
from tokend.config_files import LoadedConfig, config_path, load_config
from tokend.daemon import Daemon, EndpointPool, prepare_workspace
from tokend.errors import ConfigError, TokendError
from tokend.lifecycle import TokenKeeper, build_request
from tokend.logs import setup_logging
from tokend.token import format_time
from tokend.vault import VaultSource

logger = logging.getLogger("tokend")

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_UNREACHABLE = 0, 1, 2, 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokend",
        description="Keep OAuth 2.0 client_credentials tokens fresh in files.",
    )
    parser.add_argument("--version", action="version", version=f"tokend {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument(
            "-c",
            "--config",
            metavar="FILE",
            help="config file (default: $TOKEND_CONFIG or /etc/tokend/tokend.toml)",
        )
        sub.add_argument(
            "--log-level",
            default="info",
            choices=["debug", "info", "warning", "error"],
            help="least severe level logged (default: info)",
        )
        sub.add_argument(
            "--log-target",
            default="auto",
            choices=["auto", "journal", "stderr"],
            help="where logs go (default: the journal under systemd, else stderr)",
        )
        return sub

    command("run", "run the daemon in the foreground (systemd runs this)")
    check = command("check", "validate the configuration and print a summary")
    check.add_argument(
        "--online",
        action="store_true",
        help="also log into Vault and request one token per entry (no files written)",
    )
    once = command("once", "fetch every token, write the files and exit")
    once.add_argument(
        "--force",
        action="store_true",
        help="request new tokens even where the cached ones are not yet due",
    )
    status = command("status", "show the running daemon's tokens")
    status.add_argument("--json", action="store_true", help="print JSON")
    refresh = command("refresh", "ask the running daemon to refresh a token now")
    refresh.add_argument("name", help="token name")
    jwks = command("jwks", "print the public JWKS of a token's signing key")
    jwks.add_argument("name", help="token name")

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_target)
    path = config_path(args.config)
    handlers = {
        "run": run_daemon,
        "check": check_config,
        "once": fetch_once,
        "status": not_available,
        "refresh": not_available,
        "jwks": not_available,
    }
    try:
        return handlers[args.command](path, args)
    except KeyboardInterrupt:
        return EXIT_FAILED


def run_daemon(path: Path, args: argparse.Namespace) -> int:
    return anyio.run(Daemon(path).run)


def _load_or_report(path: Path) -> LoadedConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        count = len(exc.problems)
        sys.stderr.write(f"tokend: invalid configuration ({count} problems):\n")
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


if __name__ == "__main__":
    sys.exit(main())
