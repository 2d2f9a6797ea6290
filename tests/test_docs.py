"""The documentation: configuration.md follows the models, and the site builds.

The reference tables in ``docs/configuration.md`` are parsed per section, so a
key added to or renamed in :mod:`tokend.config` fails here until the page
follows, and so does a documented default that the model no longer has.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from tokend.config import (
    ControlSettings,
    DaemonSettings,
    FilesDefaults,
    MetricsSettings,
    OAuthDefaults,
    RefreshSettings,
    Settings,
    TokenSettings,
    VaultSettings,
)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
MKDOCS_CONFIG = ROOT / "mkdocs.yml"

SECTION_MODELS: dict[str, type[BaseModel]] = {
    "vault": VaultSettings,
    "oauth": OAuthDefaults,
    "files": FilesDefaults,
    "refresh": RefreshSettings,
    "daemon": DaemonSettings,
    "control": ControlSettings,
    "metrics": MetricsSettings,
    "tokens": TokenSettings,
}
# The rows of the [tokens.NAME] table that stand for every key of a defaults section.
OVERRIDE_ROWS: dict[str, type[BaseModel]] = {
    "any `[oauth]` key": OAuthDefaults,
    "any `[files]` key": FilesDefaults,
}

HEADING = re.compile(r"^## `\[(?P<section>[a-z]+)(?:\.NAME)?\]`")
# Table cells are split on pipes that are not escaped as \|.
CELL_BORDER = re.compile(r"(?<!\\)\|")
KEY_CELL = re.compile(r"^`([a-z_]+)`$")


def split_row(line: str) -> list[str]:
    return [cell.strip() for cell in CELL_BORDER.split(line.strip())[1:-1]]


def read_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """Return the rows of the first table under each ``## `[section]``` heading."""
    tables: dict[str, list[dict[str, str]]] = {}
    section: str | None = None
    header: list[str] | None = None
    for line in text.splitlines():
        match = HEADING.match(line)
        if match:
            section, header = match["section"], None
            tables[section] = []
        elif line.startswith("## "):
            section = None
        elif section is not None and line.startswith("|"):
            cells = split_row(line)
            if header is None:
                header = cells
            elif not set("".join(cells)) <= set("-: "):
                tables[section].append(dict(zip(header, cells, strict=True)))

    return tables


@pytest.fixture(scope="module")
def tables() -> dict[str, list[dict[str, str]]]:
    return read_tables(CONFIGURATION.read_text())


def documented_keys(rows: list[dict[str, str]]) -> set[str]:
    return {match[1] for row in rows if (match := KEY_CELL.match(row["key"]))}


def test_configuration_has_a_section_for_every_settings_section(
    tables: dict[str, list[dict[str, str]]],
) -> None:
    assert set(tables) == set(Settings.model_fields)
    assert set(SECTION_MODELS) == set(Settings.model_fields)


@pytest.mark.parametrize("section", [s for s in SECTION_MODELS if s != "tokens"])
def test_configuration_section_lists_exactly_the_model_keys(
    section: str, tables: dict[str, list[dict[str, str]]]
) -> None:
    documented = documented_keys(tables[section])
    fields = set(SECTION_MODELS[section].model_fields)

    assert fields - documented == set(), f"[{section}] keys missing from the page"
    assert documented - fields == set(), f"[{section}] keys the model does not have"


def test_configuration_token_table_covers_every_token_key(
    tables: dict[str, list[dict[str, str]]],
) -> None:
    """Own keys are listed; the rest are the overrides of [oauth] and [files]."""
    rows = tables["tokens"]
    fields = set(TokenSettings.model_fields)
    covered = documented_keys(rows)
    for row_key, defaults in OVERRIDE_ROWS.items():
        assert any(row["key"] == row_key for row in rows), f"no {row_key!r} row"
        # "any [oauth] key" must be true: each of them is a token key.
        assert set(defaults.model_fields) <= fields, f"{row_key}: not all overridable"
        covered |= set(defaults.model_fields)

    assert fields - covered == set(), "[tokens.NAME] keys missing from the page"
    assert documented_keys(rows) - fields == set(), "keys TokenSettings lacks"


def literal_default(cell: str) -> Any:
    """Return the TOML value of a default cell such as ``"0640"``, or raise KeyError."""
    match = re.fullmatch(r"`([^`]+)`", cell)
    if match is None:
        raise KeyError(cell)
    try:
        return tomllib.loads(f"value = {match[1]}")["value"]
    except tomllib.TOMLDecodeError:
        raise KeyError(cell) from None


def field_adapter(field: FieldInfo) -> TypeAdapter[Any]:
    """Validate a value as the field would, constraints and validators included."""
    form: Any = field.annotation
    if field.metadata:
        form = Annotated[(form, *field.metadata)]

    return TypeAdapter(form)


@pytest.mark.parametrize("section", list(SECTION_MODELS))
def test_configuration_literal_defaults_match_the_model(
    section: str, tables: dict[str, list[dict[str, str]]]
) -> None:
    """A default written as a TOML value (`"raw"`, `10`, `[]`) is the model's."""
    model = SECTION_MODELS[section]
    checked = 0
    for row in tables[section]:
        match = KEY_CELL.match(row["key"])
        if match is None or match[1] not in model.model_fields:
            continue
        try:
            documented = literal_default(row["default"])
        except KeyError:
            continue  # prose such as "system trust" or "tokend's user"
        field = model.model_fields[match[1]]
        try:
            value = field_adapter(field).validate_python(documented)
        except ValidationError as exc:
            pytest.fail(f"[{section}] {match[1]}: documented default invalid: {exc}")
        default = field.get_default(call_default_factory=True)
        assert default is not PydanticUndefined, f"[{section}] {match[1]} is required"
        assert value == default, f"[{section}] {match[1]}"
        checked += 1

    assert checked or section in ("tokens", "daemon", "control", "metrics")


def test_read_tables_splits_escaped_pipes_and_skips_separators() -> None:
    text = (
        "## `[files]` — defaults\n\n"
        "| key | type | default | meaning |\n"
        "|---|---|---|---|\n"
        '| `format` | `"raw"` \\| `"json"` | `"raw"` | how |\n'
        "## Other\n| key | default |\n|---|---|\n| `x` | `1` |\n"
    )

    assert read_tables(text) == {
        "files": [
            {
                "key": "`format`",
                "type": '`"raw"` \\| `"json"`',
                "default": '`"raw"`',
                "meaning": "how",
            }
        ]
    }


def nav_pages() -> set[str]:
    pages = re.findall(r"^\s+- [^:]+: (\S+\.md)\s*$", MKDOCS_CONFIG.read_text(), re.M)
    return set(pages)


def test_every_top_level_page_is_in_the_site_navigation() -> None:
    pages = {path.name for path in DOCS.glob("*.md")}

    assert pages - nav_pages() == set()
    assert nav_pages() - pages == set()


def test_site_builds_in_strict_mode(tmp_path: Path) -> None:
    """Broken links, anchors and nav entries fail the build (``make docs``)."""
    pytest.importorskip(
        "mkdocs", reason="mkdocs is not installed: pip install -e '.[docs]'"
    )
    pytest.importorskip(
        "material", reason="mkdocs-material is not installed: pip install -e '.[docs]'"
    )
    site = tmp_path / "site"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(MKDOCS_CONFIG),
            "--site-dir",
            str(site),
        ],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert (site / "index.html").is_file()
    assert (site / "onboarding.html").is_file()
    assert (site / "images" / "flow.svg").is_file()
