"""The ``tokend`` command line: parse, then hand over to :mod:`tokend.commands`.

This module imports little, so the SIGHUP handler is in place within
milliseconds of start: a reload asked for while the daemon is still loading
is remembered, not fatal.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

from tokend import __version__
from tokend.early import catch_early_reload

logger = logging.getLogger("tokend")

EXIT_FAILED = 1


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
    for sub in (status, refresh):
        sub.add_argument(
            "--socket",
            metavar="PATH",
            help="control socket (default: control.socket of the config)",
        )
    jwks = command("jwks", "print the public JWKS of a token's signing key")
    jwks.add_argument("name", help="token name")

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    catch_early_reload()
    args = build_parser().parse_args(argv)
    # No pydantic plugins: they would run code from any installed package's
    # entry points inside a daemon that holds secrets, and finding them
    # scans every installed distribution at each start (9 ms here).
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

    from tokend import commands
    from tokend.config_files import config_path
    from tokend.logs import setup_logging

    setup_logging(args.log_level, args.log_target)
    handlers = {
        "run": commands.run_daemon,
        "check": commands.check_config,
        "once": commands.fetch_once,
        "status": commands.show_status,
        "refresh": commands.refresh_token,
        "jwks": commands.print_jwks,
    }
    try:
        return handlers[args.command](config_path(args.config), args)
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except Exception as exc:  # a bug: one line for the operator, detail at debug
        logger.error(
            "unexpected error, please report it: %s: %s", type(exc).__name__, exc
        )
        logger.debug("unexpected error detail", exc_info=True)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
