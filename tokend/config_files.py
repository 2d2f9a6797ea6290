"""Read the configuration files and turn every problem into one clear line.

``tokend.toml`` is read first, then ``conf.d/*.toml`` beside it in name order.
Sections merge key by key (a later file wins); a token defined in two files
is an error that names both. Each problem line names the file, the key path
and what was expected.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from tokend.config import Settings, TokenConfig
from tokend.errors import ConfigError
from tokend.resolve import resolve_tokens

DEFAULT_CONFIG = Path("/etc/tokend/tokend.toml")
SECRET_SECTIONS = ("vault",)


@dataclass(frozen=True)
class LoadedConfig:
    """A validated configuration and the files it came from."""

    settings: Settings
    tokens: dict[str, TokenConfig]
    files: tuple[Path, ...]
    path: Path = field(default=DEFAULT_CONFIG)


def config_path(cli_value: str | None) -> Path:
    """Return the config file: ``-c``, else ``$TOKEND_CONFIG``, else the default."""
    if cli_value:
        return Path(cli_value)
    return Path(os.environ.get("TOKEND_CONFIG") or DEFAULT_CONFIG)


def config_files(path: Path) -> list[Path]:
    """Return the main file and its ``conf.d`` drop-ins, in reading order."""
    drop_ins = path.parent / "conf.d"
    found = drop_ins.glob("*.toml") if drop_ins.is_dir() else []
    # Editors leave hidden lock and swap files (".#orders.toml"): not config.
    extra = sorted(p for p in found if not p.name.startswith("."))
    return [path, *extra]


def load_config(path: Path) -> LoadedConfig:
    """Read, merge and validate the configuration at ``path``.

    Raises:
        ConfigError: with one line per problem, each naming its file and key.
    """
    files = config_files(path)
    merged: dict[str, Any] = {}
    origins: dict[tuple[str, ...], Path] = {}
    problems: list[str] = []
    documents = [(file, _read_toml(file, problems)) for file in files]
    if problems:
        raise ConfigError(problems)
    for file, document in documents:
        _merge(file, document or {}, merged, origins, problems)

    _apply_vault_environment(merged)
    try:
        settings = Settings(**merged)
    except ValidationError as exc:
        raise ConfigError(problems + _describe(exc, origins, path)) from None
    except SettingsError as exc:
        # An environment value for a list or table that is not JSON.
        raise ConfigError([*problems, f"environment: {exc}"]) from None
    tokens, token_problems = resolve_tokens(settings)
    for loc, message in token_problems:
        problems.append(f"{_origin(loc, origins, path)}: {'.'.join(loc)}: {message}")
    if problems:
        raise ConfigError(problems)

    return LoadedConfig(settings, tokens, tuple(files), path)


def _read_toml(file: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        with file.open("rb") as stream:
            return tomllib.load(stream)
    except FileNotFoundError:
        problems.append(f"{file}: no such file")
    except PermissionError:
        problems.append(f"{file}: permission denied")
    except IsADirectoryError:
        problems.append(f"{file}: is a directory, expected a TOML file")
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"{file}: invalid TOML: {exc}")
    except UnicodeDecodeError:
        problems.append(f"{file}: invalid TOML: not UTF-8 text")
    return None


def _merge(
    file: Path,
    document: Mapping[str, Any],
    merged: dict[str, Any],
    origins: dict[tuple[str, ...], Path],
    problems: list[str],
) -> None:
    for section, body in document.items():
        if not isinstance(body, dict):
            # Let validation report it, with this file as its origin.
            merged[section] = body
            origins[(section,)] = file
            continue
        target = merged.setdefault(section, {})
        if not isinstance(target, dict):
            continue
        for key, value in body.items():
            where = (section, key)
            if section == "tokens" and key in target:
                problems.append(
                    f"{file}: tokens.{key}: token {key!r} is already defined in "
                    f"{origins[where]}"
                )
                continue
            target[key] = value
            origins[where] = file
        origins.setdefault((section,), file)


def _apply_vault_environment(merged: dict[str, Any]) -> None:
    """Fall back to the Vault CLI's own ``VAULT_ADDR``, as operators expect."""
    address = os.environ.get("VAULT_ADDR")
    if not address:
        return
    vault = merged.setdefault("vault", {})
    if isinstance(vault, dict):
        vault.setdefault("address", address)


def _describe(
    exc: ValidationError, origins: dict[tuple[str, ...], Path], main: Path
) -> list[str]:
    problems = []
    for error in exc.errors(include_url=False):
        loc = tuple(str(part) for part in error["loc"])
        key = ".".join(loc) or "(top level)"
        message = _message(error)
        shown_input = error["type"] != "missing" and error.get("input") is not None
        if loc and loc[0] not in SECRET_SECTIONS and shown_input:
            shown = repr(error.get("input"))
            if len(shown) <= 60 and "got" not in message:
                message += f", got {shown}"
        problems.append(f"{_origin(loc, origins, main)}: {key}: {message}")

    return problems


def _message(error: Any) -> str:
    kind = error["type"]
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return "unknown key"
    text = str(error["msg"])
    text = text.removeprefix("Value error, ")

    return text[:1].lower() + text[1:]


def _origin(
    loc: tuple[str, ...], origins: dict[tuple[str, ...], Path], main: Path
) -> str:
    """Name where the value at ``loc`` came from: a variable or a file."""
    for length in range(len(loc), 0, -1):
        variable = "TOKEND_" + "__".join(loc[:length]).upper()
        if variable in os.environ:
            return f"environment ({variable})"
    for length in range(min(len(loc), 2), 0, -1):
        if loc[:length] in origins:
            return str(origins[loc[:length]])
    return str(main)
