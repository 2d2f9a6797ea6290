"""A tokend deployment with many tokens: OpenBao, its secrets, config, daemon.

As an operator would set it up (see :class:`tests.support.stack.Stack`): one
AppRole whose policy reads every secret under one KV prefix, one secret per
token under that prefix, and one ``tokend.toml`` naming them all. The token
endpoint is a :class:`tests.benchmarks.token_server.TokenServer` in its own
process. :meth:`Deployment.start` runs ``tokend run`` with a real
``NOTIFY_SOCKET``.
"""

from __future__ import annotations

import grp
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.benchmarks.measure import ROOT, NotifySocket
from tests.support.bao_server import BaoServer
from tests.support.stack import tokend_environment, toml_table

PREFIX = "tokend/bench"
POLICY = "tokend-bench"
# Installed packages run from compiled bytecode; a developer's environment
# may forbid writing it (PYTHONDONTWRITEBYTECODE), which would make every
# start compile tokend's modules anew. Bytecode goes here instead.
PYCACHE = Path(tempfile.gettempdir()) / "tokend-bench-pycache"


def daemon_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """tokend's environment: no VAULT_*/TOKEND_*, bytecode cached as installed."""
    env = tokend_environment({"PYTHONPYCACHEPREFIX": str(PYCACHE), **(extra or {})})
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def warm_bytecode() -> None:
    """Compile what the daemon imports, so the measured starts load bytecode."""
    subprocess.run(
        [sys.executable, "-c", "import tokend.cli, tokend.commands"],
        check=True,
        cwd=ROOT,
        env=daemon_environment(),
    )


def token_names(count: int) -> list[str]:
    return [f"t{index:05d}" for index in range(count)]


class Deployment:
    """OpenBao with one secret per token, and tokend's config for them."""

    def __init__(self, bao: BaoServer, root: Path, names: Sequence[str]) -> None:
        self.bao, self.root, self.names = bao, root, list(names)
        warm_bytecode()
        bao.enable_approle()
        bao.write_policy(
            POLICY,
            f'path "secret/data/{PREFIX}/*" {{ capabilities = ["read"] }}\n'
            'path "auth/token/renew-self" { capabilities = ["update"] }\n'
            'path "auth/token/lookup-self" { capabilities = ["read"] }\n',
        )
        role_id = bao.create_approle(POLICY, [POLICY], token_ttl="1h")
        credentials = root / "credentials"
        credentials.mkdir(mode=0o700)
        self.role_id_file = credentials / "role_id"
        self.secret_id_file = credentials / "secret_id"
        self.role_id_file.write_text(role_id)
        self.secret_id_file.write_text(bao.new_secret_id(POLICY))
        for name in self.names:
            bao.write_secret(
                f"{PREFIX}/{name}",
                {"client_id": f"client-{name}", "client_secret": f"secret-{name}"},
            )

    def write_config(self, token_url: str, run_dir: Path, names: Sequence[str]) -> Path:
        """Write a config for ``names`` that keeps their files in ``run_dir``."""
        etc = run_dir.parent / f"etc-{run_dir.name}"
        etc.mkdir(exist_ok=True)
        text = toml_table(
            "vault",
            {
                "address": self.bao.address,
                "role_id_file": str(self.role_id_file),
                "secret_id_file": str(self.secret_id_file),
            },
        )
        text += toml_table("oauth", {"token_url": token_url})
        text += toml_table("files", {"directory": str(run_dir)})
        text += toml_table("control", {"group": grp.getgrgid(os.getgid()).gr_name})
        # One daemon measured alone: its refreshes, the first ones too, fall
        # in a 70-80 % window, so that an idle minute with nothing due follows
        # READY and a restart finds nothing due (by default tokend refreshes at
        # 50-60 %, the first time from 5 % so that a fleet started together
        # drifts apart; fleet.py measures that). Neither READY, memory nor
        # the CPU per refresh depends on the window.
        text += toml_table(
            "refresh", {"min_share": 0.7, "max_share": 0.8, "first_min_share": 0.7}
        )
        for name in names:
            text += toml_table(
                f"tokens.{name}",
                {
                    "credentials": f"{PREFIX}/{name}",
                    "audience": f"https://{name}.example.test",
                    "scopes": ["read"],
                },
            )
        path = etc / "tokend.toml"
        path.write_text(text)
        return path


class Daemon:
    """``tokend run`` as a subprocess, announcing itself on a notify socket."""

    def __init__(
        self,
        config: Path,
        log: Path,
        prefix: Sequence[str] = (),
    ) -> None:
        self.config, self.log, self.prefix = config, log, list(prefix)
        self.notify = NotifySocket(config.parent / "notify.sock")
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def start(self) -> None:
        env = daemon_environment({"NOTIFY_SOCKET": str(self.notify.path)})
        with self.log.open("ab") as log:
            self.started = time.monotonic()
            self.process = subprocess.Popen(
                [
                    *self.prefix,
                    sys.executable,
                    "-m",
                    "tokend.cli",
                    "run",
                    "-c",
                    str(self.config),
                    "--log-target",
                    "stderr",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=ROOT,
                env=env,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def wait_ready(self, timeout: float = 120) -> float:
        """Seconds from start to READY=1.

        Raises:
            RuntimeError: tokend did not send READY=1 within ``timeout``.
        """
        ready = self.notify.wait_for("READY=1", timeout)
        if ready is None:
            raise RuntimeError(f"no READY=1 within {timeout:.0f}s; see {self.log}")
        return ready - self.started

    def stop(self) -> float:
        """SIGTERM, wait; return the seconds the daemon took to exit."""
        assert self.process is not None
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.notify.close()
        return time.monotonic() - started
