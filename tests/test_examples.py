"""Every consumer example in docs/examples/ calls the example resource service.

The token file is written by a real ``tokend once``; the service verifies the
token against the real OAuth server's keys. An example whose toolchain is not
installed is skipped, naming the missing tool.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.bao_fixtures import repair_bao_server
from tests.support.bao_server import BaoServer
from tests.support.oauth_server import OAuthServer
from tests.support.stack import ROOT, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

EXAMPLES = ROOT / "docs" / "examples"
BUILD_TIMEOUT = 240


@dataclass(frozen=True)
class Example:
    """How to build (if need be) and run one example; ``tools`` must be on PATH."""

    tools: tuple[str, ...]
    prepare: Callable[[Path], list[str]]


def build(command: list[str], cwd: Path = ROOT, **env: str) -> None:
    result = subprocess.run(
        command,
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"


def prepare_java(out: Path) -> list[str]:
    build(["javac", "-d", str(out), str(EXAMPLES / "Client.java")])
    return ["java", "-cp", str(out), "Client"]


def prepare_go(out: Path) -> list[str]:
    build(
        ["go", "build", "-o", str(out / "go_client"), "."],
        cwd=EXAMPLES / "go_client",
        GOCACHE=str(out / "cache"),
        GOPATH=str(out / "path"),
        GOTOOLCHAIN="local",
        GOFLAGS="-mod=mod",
    )
    return [str(out / "go_client")]


def prepare_rust(out: Path) -> list[str]:
    manifest = EXAMPLES / "rust_client" / "Cargo.toml"
    build(
        ["cargo", "build", "--offline", "--quiet", "--manifest-path", str(manifest)],
        CARGO_TARGET_DIR=str(out),
    )
    return [str(out / "debug" / "rust_client")]


def prepare_dotnet(out: Path) -> list[str]:
    project = EXAMPLES / "dotnet_client" / "dotnet_client.csproj"
    build(
        ["dotnet", "build", str(project), "--nologo", "--artifacts-path", str(out)],
        DOTNET_CLI_TELEMETRY_OPTOUT="1",
        DOTNET_NOLOGO="1",
    )
    return ["dotnet", str(next(out.rglob("dotnet_client.dll")))]


ALL_EXAMPLES: dict[str, Example] = {
    "curl": Example(("curl",), lambda out: ["sh", str(EXAMPLES / "curl.sh")]),
    "python-plain": Example(
        (), lambda out: [sys.executable, str(EXAMPLES / "python_plain.py")]
    ),
    "python-tokend-client": Example(
        (), lambda out: [sys.executable, str(EXAMPLES / "python_client.py")]
    ),
    "node": Example(("node",), lambda out: ["node", str(EXAMPLES / "node_client.mjs")]),
    "java": Example(("javac", "java"), prepare_java),
    "go": Example(("go",), prepare_go),
    "rust": Example(("cargo",), prepare_rust),
    "dotnet": Example(("dotnet",), prepare_dotnet),
}


@dataclass(frozen=True)
class Orders:
    """The example resource service and a caller's token file for it."""

    url: str
    token_file: Path
    client_id: str


@pytest.fixture(scope="module")
def orders(
    bao_server: BaoServer,
    oauth_server: OAuthServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Orders]:
    """One token for the whole module: each example only reads it."""
    repair_bao_server(bao_server)
    if not oauth_server.running:
        oauth_server.restart()
    stack = Stack(bao_server, oauth_server, tmp_path_factory.mktemp("examples"))
    service = stack.add_service("orders")
    stack.write_config({"orders": stack.token_entry("orders")})
    once = stack.tokend("once")
    assert once.returncode == 0, once.stderr

    command = [
        sys.executable,
        str(EXAMPLES / "resource_service.py"),
        "--issuer",
        oauth_server.issuer,
        "--audience",
        service.audience,
        "--scope",
        "read",
    ]
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            started = process.stdout.readline()
            assert started, "the resource service exited before listening"
            url = json.loads(started)["url"] + "/orders"
            yield Orders(url, stack.token_path("orders"), service.client_id)
        finally:
            process.terminate()
            stack.close()


def run_example(
    command: list[str], env: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("name", ALL_EXAMPLES)
def test_example_calls_the_service_with_the_token_file(
    name: str, orders: Orders, tmp_path: Path
) -> None:
    example = ALL_EXAMPLES[name]
    missing = [tool for tool in example.tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed")
    command = example.prepare(tmp_path / "build")
    forged = tmp_path / "forged"
    forged.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln")

    accepted = run_example(
        command, {"TOKEN_FILE": str(orders.token_file), "ORDERS_URL": orders.url}
    )
    rejected = run_example(
        command, {"TOKEN_FILE": str(forged), "ORDERS_URL": orders.url}
    )

    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    answer = json.loads(accepted.stdout.strip().splitlines()[-1])
    assert answer["hello"] == orders.client_id
    assert rejected.returncode != 0
    assert "invalid_token" in rejected.stdout + rejected.stderr
