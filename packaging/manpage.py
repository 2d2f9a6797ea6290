"""Write the tokend(8) manual page, in roff, from the command line's own parser.

Commands, options and their help come from :func:`tokend.cli.build_parser`, so
the page cannot drift from ``tokend --help``; files, environment, exit status
and signals come from the product contract and are written here. Run it with
the Python that has tokend installed::

    python packaging/manpage.py > tokend.8
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from tokend import __version__
from tokend.cli import build_parser

FILES = [
    ("/etc/tokend/tokend.toml", "the configuration (a conffile: edit it)"),
    ("/etc/tokend/conf.d/*.toml", "drop-ins, merged in name order"),
    ("/etc/tokend/secret_id", "the AppRole secret ID, handed over by LoadCredential="),
    ("/run/tokend/NAME", "the token file of token NAME"),
    ("/run/tokend/NAME.json", "its metadata: expiry, generation, last error"),
    ("/run/tokend/control.sock", "the control socket"),
]
ENVIRONMENT = [
    ("TOKEND_CONFIG", "the config file when -c is not given"),
    ("TOKEND_SECTION__KEY", "overrides one key, e.g. TOKEND_VAULT__ADDRESS"),
    ("VAULT_ADDR, VAULT_TOKEN", 'the Vault address and token (auth = "token")'),
    ("CREDENTIALS_DIRECTORY", "set by systemd; %C in a path stands for it"),
]
EXIT_STATUS = [
    ("0", "success; for run: stopped by SIGTERM or SIGINT"),
    ("1", "a token or an online check failed, or the daemon cannot start"),
    ("2", "the configuration is invalid"),
    ("3", "the daemon is unreachable"),
]
SIGNALS = [
    ("SIGHUP", "reload the configuration; an invalid one is logged and ignored"),
    ("SIGTERM, SIGINT", "stop within 2 seconds; token files stay"),
]


def escape(text: str) -> str:
    """Escape text for roff: backslashes, hyphens and a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Return the subcommand parsers by name, in the order they were added."""
    # argparse has no public way to walk its subparsers.
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def metavar_of(action: argparse.Action, default: str) -> str:
    metavar = action.metavar
    if isinstance(metavar, tuple):
        return " ".join(metavar)
    return metavar or default


def option_label(action: argparse.Action) -> str:
    """Return the bold option names and the italic metavar of one option."""
    if not action.option_strings:
        return f"\\fI{escape(metavar_of(action, action.dest))}\\fR"
    names = ", ".join(f"\\fB{escape(name)}\\fR" for name in action.option_strings)
    if action.choices is not None and action.nargs != 0:
        return f"{names} {{{escape(','.join(map(str, action.choices)))}}}"
    if action.nargs != 0:
        return f"{names} \\fI{escape(metavar_of(action, action.dest.upper()))}\\fR"
    return names


def help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    formatter = parser._get_formatter()
    return escape(formatter._expand_help(action)) if action.help else ""


def write_options(
    out: list[str],
    parser: argparse.ArgumentParser,
    shared: frozenset[str],
    *,
    only_shared: bool = False,
) -> None:
    """Append a tagged paragraph per option, the shared ones or all others."""
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(
            action, argparse._SubParsersAction
        ):
            continue
        if bool(shared.intersection(action.option_strings)) == only_shared:
            out += [".TP", option_label(action), help_text(parser, action)]


def shared_options(commands: dict[str, argparse.ArgumentParser]) -> frozenset[str]:
    """Return the option strings that every subcommand accepts."""
    sets = [
        {name for action in sub._actions for name in action.option_strings}
        for sub in commands.values()
    ]
    return frozenset(set.intersection(*sets)) if sets else frozenset()


def command_synopsis(sub: argparse.ArgumentParser) -> str:
    operands = [
        f" \\fI{escape(metavar_of(action, action.dest))}\\fR"
        for action in sub._actions
        if not action.option_strings
    ]
    return f"\\fB{escape(sub.prog)}\\fR [\\fIoptions\\fR]{''.join(operands)}"


def write_table(out: list[str], title: str, rows: list[tuple[str, str]]) -> None:
    out.append(f".SH {title}")
    for term, text in rows:
        out += [".TP", f"\\fB{escape(term)}\\fR", escape(text)]


def render_manpage(parser: argparse.ArgumentParser, version: str, date: str) -> str:
    """Return the whole manual page for ``parser`` as roff source."""
    commands = subcommands(parser)
    shared = shared_options(commands)
    summary = (parser.description or "").rstrip(".")
    out = [
        f'.TH TOKEND 8 "{date}" "tokend {escape(version)}" "System Administration"',
        ".SH NAME",
        f"tokend \\- {escape(summary[:1].lower() + summary[1:])}",
        ".SH SYNOPSIS",
        f".B tokend\n.RB {{ {' | '.join(commands)} }}\n.RI [ options ]",
        ".br\n.B tokend \\-\\-version",
        ".SH DESCRIPTION",
        escape(parser.description or ""),
        "Each token is read from Vault, requested with the client_credentials "
        "grant and written atomically to its file well before it expires.",
        ".SH OPTIONS",
    ]
    write_options(out, parser, frozenset())
    if commands:
        out.append(".SS Options of every command")
        first = next(iter(commands.values()))
        write_options(out, first, shared, only_shared=True)
    out.append(".SH COMMANDS")
    for sub in commands.values():
        name = sub.prog.removeprefix(f"{parser.prog} ")
        out += [f".SS {escape(name)}", command_synopsis(sub), ".br"]
        out.append(escape(sub.description or ""))
        write_options(out, sub, shared)
    write_table(out, "FILES", FILES)
    write_table(out, "ENVIRONMENT", ENVIRONMENT)
    write_table(out, "EXIT STATUS", EXIT_STATUS)
    write_table(out, "SIGNALS", SIGNALS)
    out += [
        ".SH SEE ALSO",
        ".BR systemctl (1),",
        ".BR journalctl (1),",
        ".BR systemd.exec (5),",
        "/usr/share/doc/tokend/README.md",
    ]

    return "\n".join(out) + "\n"


def main() -> int:
    # dpkg sets SOURCE_DATE_EPOCH from debian/changelog: a reproducible date.
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH") or time.time())
    date = time.strftime("%Y-%m-%d", time.gmtime(epoch))
    sys.stdout.write(render_manpage(build_parser(), __version__, date))

    return 0


if __name__ == "__main__":
    sys.exit(main())
