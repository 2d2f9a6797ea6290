"""A tokend deployment for end-to-end tests: Vault role, clients, config, daemon.

:class:`Stack` sets up what an operator would: one AppRole for the daemon
whose policy reads every secret under one KV prefix, one OAuth client per
service stored under that prefix, and a ``tokend.toml``. :class:`TokendProcess`
runs ``tokend`` as a real subprocess and reads its log.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.support.bao_server import BaoServer
from tests.support.oauth_server import OAuthServer

ROOT = Path(__file__).resolve().parents[2]
TomlValue = str | int | float | bool | list[str] | dict[str, str]


def toml_value(value: TomlValue) -> str:
    """Render the few TOML values tests need (strings are JSON-compatible)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    inner = ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items())
    return "{ " + inner + " }"


def toml_table(name: str, body: Mapping[str, TomlValue]) -> str:
    lines = [f"[{name}]"]
    lines += [f"{key} = {toml_value(value)}" for key, value in body.items()]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Service:
    """One OAuth client, registered with the server and stored in Vault."""

    name: str
    client_id: str
    client_secret: str
    kv_path: str
    audience: str


class Stack:
    """Vault role, OAuth clients and config files for one test's daemon."""

    def __init__(self, bao: BaoServer, oauth: OAuthServer, root: Path) -> None:
        self.bao, self.oauth, self.root = bao, oauth, root
        self.prefix = f"tokend/e2e-{secrets.token_hex(4)}"
        self.run_dir = root / "run"
        self.config_path = root / "etc" / "tokend.toml"
        self.config_path.parent.mkdir(parents=True)
        policy = f"tokend-{self.prefix.split('/')[-1]}"
        bao.write_policy(
            policy,
            f'path "secret/data/{self.prefix}/*" {{ capabilities = ["read"] }}\n'
            'path "auth/token/renew-self" { capabilities = ["update"] }\n'
            'path "auth/token/lookup-self" { capabilities = ["read"] }\n',
        )
        self.role_name = policy
        role_id = bao.create_approle(policy, [policy], token_ttl="1h")
        self.role_id_file = self._private("role_id", role_id)
        self.secret_id_file = self._private("secret_id", bao.new_secret_id(policy))
        self.services: dict[str, Service] = {}
        self.processes: list[TokendProcess] = []

    def _private(self, name: str, text: str) -> Path:
        path = self.root / "credentials" / name
        path.parent.mkdir(exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as stream:
            stream.write(text)
        return path

    def add_service(
        self,
        name: str,
        scopes: tuple[str, ...] = ("read",),
        auth_method: str = "client_secret_basic",
    ) -> Service:
        client_id = f"{name}-{secrets.token_hex(4)}"
        client_secret = secrets.token_urlsafe(24)
        self.oauth.put_client(client_id, client_secret, list(scopes), auth_method)
        kv_path = f"{self.prefix}/{name}"
        self.bao.write_secret(
            kv_path, {"client_id": client_id, "client_secret": client_secret}
        )
        service = Service(
            name, client_id, client_secret, kv_path, f"https://{name}.example.test"
        )
        self.services[name] = service
        return service

    def rotate_secret(self, name: str, *, in_vault: bool = True) -> str:
        """Give the client a new secret at the server (and in Vault)."""
        service = self.services[name]
        new_secret = secrets.token_urlsafe(24)
        self.oauth.put_client(service.client_id, new_secret, ["read"])
        if in_vault:
            self.bao.write_secret(
                service.kv_path,
                {"client_id": service.client_id, "client_secret": new_secret},
            )
        return new_secret

    def token_entry(self, name: str, **overrides: TomlValue) -> dict[str, TomlValue]:
        service = self.services[name]
        entry: dict[str, TomlValue] = {
            "credentials": service.kv_path,
            "audience": service.audience,
            "scopes": ["read"],
        }
        entry.update(overrides)
        return entry

    def write_config(
        self,
        tokens: Mapping[str, Mapping[str, TomlValue]],
        *,
        oauth: Mapping[str, TomlValue] | None = None,
        files: Mapping[str, TomlValue] | None = None,
        refresh: Mapping[str, TomlValue] | None = None,
        raw: str = "",
    ) -> Path:
        """Write ``tokend.toml`` atomically (as an editor saving by rename)."""
        text = toml_table(
            "vault",
            {
                "address": self.bao.address,
                "role_id_file": str(self.role_id_file),
                "secret_id_file": str(self.secret_id_file),
            },
        )
        text += toml_table("oauth", {"issuer": self.oauth.issuer, **(oauth or {})})
        text += toml_table("files", {"directory": str(self.run_dir), **(files or {})})
        if refresh:
            text += toml_table("refresh", refresh)
        for name, entry in tokens.items():
            text += toml_table(f"tokens.{name}", entry)
        text += raw
        temp = self.config_path.with_suffix(".tmp")
        temp.write_text(text)
        temp.rename(self.config_path)
        return self.config_path

    def token_path(self, name: str) -> Path:
        return self.run_dir / name

    def read_token(self, name: str) -> str:
        return self.token_path(name).read_text()

    def temp_files(self) -> list[str]:
        if not self.run_dir.exists():
            return []
        return [n for n in os.listdir(self.run_dir) if n.endswith(".tokend-tmp")]

    def tokend(
        self, *args: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run a short tokend command (check, once) against this stack."""
        return subprocess.run(
            [sys.executable, "-m", "tokend.cli", *args, "-c", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            env=tokend_environment(),
        )

    def start(self, *extra: str, env: Mapping[str, str] | None = None) -> TokendProcess:
        process = TokendProcess(self.config_path, self.root / "tokend.log", extra, env)
        process.start()
        self.processes.append(process)
        return process

    def close(self) -> None:
        """Kill every daemon this stack started (a stopped one is continued first)."""
        for process in self.processes:
            if process.process is not None and process.process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
            process.kill()


def tokend_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VAULT_", "TOKEND_", "NOTIFY_SOCKET", "JOURNAL_STREAM"))
    }
    env.update(extra or {})
    return env


class TokendProcess:
    """``tokend run`` as a subprocess, its log in a file."""

    def __init__(
        self,
        config: Path,
        log_path: Path,
        extra: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config, self.log_path, self.extra = config, log_path, extra
        self.env = tokend_environment(env)
        self.process: subprocess.Popen[bytes] | None = None
        self._offset = 0

    def start(self) -> None:
        self._offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tokend.cli",
                "run",
                "-c",
                str(self.config),
                "--log-level",
                "debug",
                "--log-target",
                "stderr",
                *self.extra,
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env=self.env,
        )
        log.close()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        """The log of this run (not earlier runs sharing the file)."""
        with self.log_path.open("rb") as stream:
            stream.seek(self._offset)
            return stream.read().decode(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 20, count: int = 1) -> None:
        self.wait_until(lambda: self.log().count(text) >= count, timeout, text)

    def wait_until(
        self, predicate: Callable[[], bool], timeout: float = 20, what: str = ""
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    f"tokend exited ({self.process.returncode}) waiting for "
                    f"{what or predicate}; log:\n{self.log()}"
                )
            time.sleep(0.05)
        raise AssertionError(
            f"timed out waiting for {what or predicate}:\n{self.log()}"
        )

    def send(self, signum: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, signum: signal.Signals = signal.SIGTERM) -> tuple[int, float]:
        """Signal the daemon and wait; return its exit code and the seconds taken."""
        assert self.process is not None
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            code = self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
