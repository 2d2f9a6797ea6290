"""``make demo``: tokend end to end on loopback, in about half a minute.

Starts OpenBao and the OAuth test server, onboards one service the way an
operator would, runs ``tokend run`` against them, waits for one refresh and calls
the example resource service (``docs/examples/resource_service.py``) with the
token file. Everything it writes lives in ``.demo/`` at the repository root,
wiped at every start. With ``TOKEND_DEMO_KEEP=1`` everything keeps running after
the steps, until Ctrl-C.

Secrets never reach the screen: the client secret and the secret_id not at all,
access tokens only as their first characters and tokend's fingerprint.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any

from tests.support.bao_server import BaoServer, build_child_env
from tests.support.oauth_server import OAuthServer
from tokend.token import fingerprint

ROOT = Path(__file__).resolve().parents[2]
# The test points this elsewhere, so it never wipes a demo a developer keeps.
DEMO_DIR = Path(os.environ.get("TOKEND_DEMO_DIR", ROOT / ".demo")).absolute()
# Written into DEMO_DIR; only a directory holding it is ever wiped.
DEMO_MARKER = ".tokend-demo"
RUN_DIR = DEMO_DIR / "run"
CONFIG_FILE = DEMO_DIR / "tokend.toml"
TOKEND_LOG = DEMO_DIR / "tokend.log"
SERVICE_LOG = DEMO_DIR / "resource_service.log"
RESOURCE_SERVICE = ROOT / "docs" / "examples" / "resource_service.py"
TOKEND = Path(sys.executable).with_name("tokend")

TOKEN_NAME = "orders"
TOKEN_FILE = RUN_DIR / TOKEN_NAME
METADATA_FILE = RUN_DIR / f"{TOKEN_NAME}.json"
CLIENT_ID = "orders-client"
AUDIENCE = "https://orders.demo.test"
SCOPE = "orders:read"
# Short enough that a refresh comes within seconds of the first token.
TOKEN_TTL = 20
WIDEST_MODE = 0o640
PREVIEW_CHARS = 12
STARTUP_TIMEOUT = 20.0
REFRESH_TIMEOUT = TOKEN_TTL + 10.0
STOP_TIMEOUT = 5.0
POLL_INTERVAL = 0.2

# Loopback calls must not go through an HTTP(S)_PROXY from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class DemoError(Exception):
    """A step failed; the message says which and what to look at."""


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: str


class Narrator:
    """Prints numbered step headings and indented detail lines."""

    def __init__(self) -> None:
        self._step = 0

    def step(self, title: str) -> None:
        self._step += 1
        print(f"\n== {self._step}. {title}", flush=True)

    def say(self, text: str = "") -> None:
        for line in text.splitlines() or [""]:
            print(f"   {line}".rstrip(), flush=True)


def show_path(path: Path) -> str:
    """Return ``path`` relative to the repository when run from its root."""
    if Path.cwd() == ROOT and path.is_relative_to(ROOT):
        return str(path.relative_to(ROOT))
    return str(path)


def preview(token: str) -> str:
    return token[:PREVIEW_CHARS] + "…"


def describe_file(path: Path) -> str:
    """Return an ``ls -l``-style line for ``path``."""
    info = path.lstat()
    owner = pwd.getpwuid(info.st_uid).pw_name
    group = grp.getgrgid(info.st_gid).gr_name
    modified = datetime.fromtimestamp(info.st_mtime).strftime("%H:%M:%S")
    return (
        f"{stat.filemode(info.st_mode)} {owner} {group} "
        f"{info.st_size:>5} {modified} {show_path(path)}"
    )


def format_claim(name: str, value: Any) -> str:
    if name in ("iat", "exp", "nbf") and isinstance(value, int):
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if name == "jti":
        return preview(str(value))
    return str(value)


def write_private_file(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 from the start, never wider."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)


def wipe_demo_dir() -> None:
    """Empty DEMO_DIR; a directory named by TOKEND_DEMO_DIR only if it is a demo's.

    ``.demo/`` in the repository belongs to the demo (and ``make clean``), so
    it is always wiped.

    Raises:
        DemoError: TOKEND_DEMO_DIR names a directory with files but no marker.
    """
    if DEMO_DIR.exists():
        foreign = not (DEMO_DIR / DEMO_MARKER).exists() and any(DEMO_DIR.iterdir())
        if foreign and DEMO_DIR != ROOT / ".demo":
            raise DemoError(f"refusing to wipe {DEMO_DIR}: not made by the demo")
        shutil.rmtree(DEMO_DIR)
    DEMO_DIR.mkdir(mode=0o700, parents=True)
    (DEMO_DIR / DEMO_MARKER).touch()


def toml_string(value: str) -> str:
    # JSON's string escapes are all valid in a TOML basic string.
    return json.dumps(value)


def build_config(vault_address: str, issuer: str, kv_path: str) -> str:
    return f"""\
# Written by the tokend demo. tokend logs into OpenBao with AppRole, reads the
# client's credentials from KV v2 and keeps one token file fresh.
[vault]
address = {toml_string(vault_address)}
auth = "approle"
role_id_file = {toml_string(str(DEMO_DIR / "role_id"))}
secret_id_file = {toml_string(str(DEMO_DIR / "secret_id"))}
kv_mount = "secret"

[oauth]
issuer = {toml_string(issuer)}
client_auth = "client_secret_basic"
audience_param = "resource"

[files]
directory = {toml_string(str(RUN_DIR))}
mode = "0640"
format = "raw"

[control]
socket = {toml_string(str(RUN_DIR / "control.sock"))}
group = {toml_string(grp.getgrgid(os.getegid()).gr_name)}

[tokens.{TOKEN_NAME}]
credentials = {toml_string(kv_path)}
audience = {toml_string(AUDIENCE)}
scopes = [{toml_string(SCOPE)}]
"""


def build_tokend_env() -> dict[str, str]:
    """Return an environment where no TOKEND_*, VAULT_* or BAO_* variable leaks in.

    tokend reads TOKEND_<SECTION>__<KEY>, VAULT_ADDR and VAULT_TOKEN, so a
    developer's shell could otherwise point the demo at another server.
    """
    return {
        key: value
        for key, value in build_child_env().items()
        if not key.startswith("TOKEND_")
    }


def wait_until(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    process: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> float:
    """Poll ``condition`` and return the seconds it took to hold.

    Raises:
        DemoError: it did not hold within ``timeout`` seconds, or ``process``
            exited first; the message carries the end of ``log``.
    """
    started = time.monotonic()
    while not condition():
        if process is not None and process.poll() is not None:
            raise DemoError(
                f"{what}: the process exited with {process.returncode}"
                + read_log_tail(log)
            )
        if time.monotonic() - started > timeout:
            raise DemoError(f"{what}: not within {timeout:.0f} s" + read_log_tail(log))
        time.sleep(POLL_INTERVAL)

    return time.monotonic() - started


def read_log_tail(log: Path | None, lines: int = 15) -> str:
    if log is None or not log.exists():
        return ""
    tail = log.read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- last lines of {show_path(log)}:\n" + "\n".join(tail)


def read_metadata() -> dict[str, Any]:
    """Return the token's metadata, or {} while it is not written yet."""
    try:
        metadata: dict[str, Any] = json.loads(METADATA_FILE.read_text())
    except FileNotFoundError:
        return {}

    return metadata


def start_child(
    command: list[str], log: IO[bytes], **kwargs: Any
) -> subprocess.Popen[bytes]:
    """Start a child in its own process group, so Ctrl-C reaches only us.

    The demo then stops it itself, with SIGTERM, in a known order.
    """
    return subprocess.Popen(
        command,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stderr=log,
        process_group=0,
        **kwargs,
    )


def stop_child(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then SIGKILL after 5 seconds; return the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    return process.returncode


def read_ready_line(process: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    """Return the JSON line the resource service prints once it listens."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise DemoError(
                f"resource service did not report ready within {timeout:.0f} s"
                + read_log_tail(SERVICE_LOG)
            )
    line = process.stdout.readline()
    if not line:
        raise DemoError(
            f"resource service exited with {process.wait()}"
            + read_log_tail(SERVICE_LOG)
        )
    ready: dict[str, Any] = json.loads(line)

    return ready


def call(url: str, headers: dict[str, str] | None = None) -> HttpAnswer:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with _OPENER.open(request, timeout=5) as response:
            return HttpAnswer(
                response.status, dict(response.headers), response.read().decode()
            )
    except urllib.error.HTTPError as exc:
        with exc:
            return HttpAnswer(exc.code, dict(exc.headers), exc.read().decode())


class Demo:
    """The steps, and the stack of things to stop once they are done."""

    def __init__(self, cleanup: contextlib.ExitStack, narrator: Narrator) -> None:
        self.cleanup = cleanup
        self.out = narrator
        self.bao = BaoServer()
        self.oauth = OAuthServer(ttl=TOKEN_TTL)
        self.tokend: subprocess.Popen[bytes] | None = None
        self.service_url = ""

    def run_steps(self) -> None:
        self.start_servers()
        kv_path = self.onboard_service()
        self.write_config(kv_path)
        self.check_config()
        self.start_tokend()
        self.show_token_file()
        self.wait_for_refresh()
        self.call_resource_service()

    def start_servers(self) -> None:
        self.out.step("Start OpenBao (dev mode) and the OAuth server on loopback")
        if not TOKEND.exists():
            raise DemoError(f"{TOKEND} not found; run `make dev` first")
        wipe_demo_dir()
        self.cleanup.callback(self._stop_server, "OpenBao", self.bao.stop)
        self.bao.start()
        self.out.say(f"OpenBao       {self.bao.address}")
        self.cleanup.callback(self._stop_server, "the OAuth server", self.oauth.close)
        self.oauth.start()
        self.out.say(f"OAuth server  {self.oauth.issuer}  (tokens live {TOKEN_TTL} s)")

    def onboard_service(self) -> str:
        self.out.step(f"Onboard the client {CLIENT_ID}, as a service owner would")
        client_secret = secrets.token_urlsafe(24)
        self.oauth.put_client(CLIENT_ID, client_secret, [SCOPE])
        self.out.say(
            f"OAuth server: client {CLIENT_ID}, scope {SCOPE}, random secret "
            f"({len(client_secret)} chars, never shown)"
        )
        self.bao.enable_approle()
        creds = self.bao.seed_service(CLIENT_ID, CLIENT_ID, client_secret)
        self.out.say(
            f"OpenBao: {creds.kv_mount}/{creds.kv_path} holds client_id and "
            "client_secret"
        )
        self.out.say(
            f"OpenBao: AppRole {creds.role_name}, policy {creds.policy} "
            "(reads only that path)"
        )
        write_private_file(DEMO_DIR / "role_id", creds.role_id)
        write_private_file(DEMO_DIR / "secret_id", creds.secret_id)
        self.out.say(describe_file(DEMO_DIR / "role_id"))
        self.out.say(describe_file(DEMO_DIR / "secret_id"))

        return creds.kv_path

    def write_config(self, kv_path: str) -> None:
        self.out.step(f"The config: {show_path(CONFIG_FILE)}")
        config = build_config(self.bao.address, self.oauth.issuer, kv_path)
        CONFIG_FILE.write_text(config)
        self.out.say(config)

    def check_config(self) -> None:
        self.out.step(f"tokend check --online -c {show_path(CONFIG_FILE)}")
        result = subprocess.run(
            [str(TOKEND), "check", "--online", "-c", str(CONFIG_FILE)],
            cwd=ROOT,
            env=build_tokend_env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.out.say(result.stdout)
        if result.returncode != 0:
            raise DemoError(
                f"tokend check exited with {result.returncode}:\n{result.stderr}"
            )

    def start_tokend(self) -> None:
        self.out.step(f"Start tokend run -c {show_path(CONFIG_FILE)}")
        with TOKEND_LOG.open("wb") as log:
            self.tokend = start_child(
                [str(TOKEND), "run", "-c", str(CONFIG_FILE)],
                log,
                stdout=log,
                env=build_tokend_env(),
            )
        self.cleanup.callback(self._stop_tokend)
        self.out.say(f"pid {self.tokend.pid}, logs in {show_path(TOKEND_LOG)}")
        # The metadata is written just after the token; the next step shows both.
        took = wait_until(
            lambda: TOKEN_FILE.exists() and METADATA_FILE.exists(),
            STARTUP_TIMEOUT,
            f"waiting for {show_path(TOKEN_FILE)}",
            self.tokend,
            TOKEND_LOG,
        )
        self.out.say(f"{show_path(TOKEN_FILE)} appeared after {took:.1f} s")

    def show_token_file(self) -> None:
        self.out.step("The token file")
        for path in (TOKEN_FILE, METADATA_FILE):
            self.out.say(describe_file(path))
        mode = stat.S_IMODE(TOKEN_FILE.stat().st_mode)
        if mode & ~WIDEST_MODE:
            raise DemoError(f"{TOKEN_FILE} has mode {mode:04o}, wider than 0640")
        self.out.say(f"mode {mode:04o}: ok, 0640 or tighter (others cannot read it)")

        token = TOKEN_FILE.read_text()
        self.out.say(
            f"token {preview(token)} ({len(token)} chars, no newline), "
            f"fingerprint {fingerprint(token)}"
        )
        claims = self.oauth.decode_access_token(token, AUDIENCE)
        self.out.say("claims, verified against the issuer's JWKS:")
        for name, value in claims.items():
            self.out.say(f"  {name:<10} {format_claim(name, value)}")
        self.out.say(f"{show_path(METADATA_FILE)}:")
        self.out.say(METADATA_FILE.read_text())

    def wait_for_refresh(self) -> None:
        self.out.step("Wait for tokend to refresh the token before it expires")
        before = read_metadata()["generation"]
        old_print = fingerprint(TOKEN_FILE.read_text())
        took = wait_until(
            lambda: read_metadata().get("generation", before) > before,
            REFRESH_TIMEOUT,
            "waiting for a refresh",
            self.tokend,
            TOKEND_LOG,
        )
        metadata = read_metadata()
        new_print = fingerprint(TOKEN_FILE.read_text())
        if new_print == old_print:
            raise DemoError("the generation went up but the token did not change")
        self.out.say(
            f"refreshed after {took:.1f} s: generation {before} → "
            f"{metadata['generation']}"
        )
        self.out.say(
            f"fingerprint {old_print} → {new_print}, "
            f"expires_at {metadata['expires_at']}"
        )

    def call_resource_service(self) -> None:
        self.out.step(f"Call the resource service ({show_path(RESOURCE_SERVICE)})")
        command = [
            sys.executable,
            str(RESOURCE_SERVICE),
            *("--issuer", self.oauth.issuer),
            *("--audience", AUDIENCE),
            *("--scope", SCOPE),
            *("--port", "0"),
        ]
        with SERVICE_LOG.open("wb") as log:
            service = start_child(command, log, stdout=subprocess.PIPE)
        self.cleanup.callback(self._stop_service, service)
        self.service_url = str(read_ready_line(service, STARTUP_TIMEOUT)["url"])
        self.out.say(
            f"listening on {self.service_url}, logs in {show_path(SERVICE_LOG)}"
        )

        orders = f"{self.service_url}/orders"
        # Read fresh on every call, as a service should: tokend may have
        # replaced the file since the last one.
        token = TOKEN_FILE.read_text()
        answer = call(orders, {"Authorization": f"Bearer {token}"})
        self.out.say(
            f'GET /orders  "Authorization: Bearer $(cat {show_path(TOKEN_FILE)})"'
        )
        self.out.say(f"  → {answer.status} {answer.body}")
        if answer.status != 200:
            raise DemoError(f"the resource service refused the token: {answer.body}")

        answer = call(orders)
        self.out.say("GET /orders  without a token")
        self.out.say(
            f"  → {answer.status} WWW-Authenticate: "
            f"{answer.headers.get('WWW-Authenticate')}"
        )
        # Flipping the signature's last characters must break it.
        tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        answer = call(orders, {"Authorization": f"Bearer {tampered}"})
        self.out.say("GET /orders  with the token's signature tampered with")
        self.out.say(
            f"  → {answer.status} WWW-Authenticate: "
            f"{answer.headers.get('WWW-Authenticate')}"
        )

    def stop_tokend(self) -> None:
        self.out.step("Stop tokend with SIGTERM")
        assert self.tokend is not None
        started = time.monotonic()
        status = stop_child(self.tokend)
        took = time.monotonic() - started
        self.out.say(f"tokend exited with {status} after {took:.2f} s")
        if status != 0:
            raise DemoError(
                f"tokend exited with {status} on SIGTERM" + read_log_tail(TOKEND_LOG)
            )
        kept = ", ".join(sorted(p.name for p in RUN_DIR.iterdir()))
        self.out.say(f"the files stay: {kept}")

    def write_root_token(self) -> Path:
        """The dev server's root token, for exploring: a 0600 file, never printed."""
        path = DEMO_DIR / "root_token"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as stream:
            stream.write(self.bao.root_token)
        return path

    def keep_running(self) -> None:
        self.out.step("Keep running (TOKEND_DEMO_KEEP=1): explore, Ctrl-C stops all")
        tokend = show_path(TOKEND)
        config = show_path(CONFIG_FILE)
        token_file = show_path(TOKEN_FILE)
        self.out.say(
            f"token file    {token_file}  (metadata: {show_path(METADATA_FILE)})\n"
            f"tokend log    {show_path(TOKEND_LOG)}  (pid {self.tokend_pid})\n"
            f"config        {config}\n"
            f"check         {tokend} check --online -c {config}\n"
            f"follow        tail -f {show_path(TOKEND_LOG)}\n"
            f"watch         watch -n1 cat {show_path(METADATA_FILE)}\n"
            f"status        {tokend} status -c {config}\n"
            f"call          {{ printf 'Authorization: Bearer '; cat {token_file}; }}"
            f" | curl -s -H @- {self.service_url}/orders\n"
            f"OpenBao       {self.bao.address}  (dev server, throwaway):\n"
            f"              export VAULT_ADDR={self.bao.address} "
            f"VAULT_TOKEN=$(cat {show_path(self.write_root_token())})\n"
            f"OAuth admin   curl -X PUT {self.oauth.issuer}/admin/clients/ID "
            '-d \'{"client_secret": ..., "scope": ...}\' (test server only)\n'
            f"OAuth server  {self.oauth.issuer}/.well-known/openid-configuration"
        )
        while True:
            if self.tokend is not None and self.tokend.poll() is not None:
                raise DemoError(
                    f"tokend exited with {self.tokend.returncode}"
                    + read_log_tail(TOKEND_LOG)
                )
            time.sleep(1)

    @property
    def tokend_pid(self) -> int:
        return self.tokend.pid if self.tokend is not None else 0

    def _stop_tokend(self) -> None:
        if self.tokend is not None and self.tokend.poll() is None:
            status = stop_child(self.tokend)
            self.out.say(f"stopped tokend (SIGTERM), exit status {status}")

    def _stop_service(self, service: subprocess.Popen[bytes]) -> None:
        stop_child(service)
        if service.stdout is not None:
            service.stdout.close()
        self.out.say("stopped the resource service")

    def _stop_server(self, name: str, stop: Callable[[], None]) -> None:
        stop()
        self.out.say(f"stopped {name}")


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Let cleanup finish even if Ctrl-C is pressed again meanwhile."""
    previous = {
        signum: signal.signal(signum, signal.SIG_IGN)
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def main() -> int:
    # SIGINT too: a shell that starts us in the background ignores it, and
    # Ctrl-C must still clean up whatever the demo started.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, raise_interrupt)
    keep = os.environ.get("TOKEND_DEMO_KEEP") == "1"
    out = Narrator()
    print(f"tokend demo: everything on 127.0.0.1, files in {show_path(DEMO_DIR)}/")
    cleanup = contextlib.ExitStack()
    steps_done = False
    try:
        demo = Demo(cleanup, out)
        demo.run_steps()
        steps_done = True
        if keep:
            demo.keep_running()
        else:
            demo.stop_tokend()
        status = 0
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
        # Ctrl-C is how keep mode ends; before that it cut the demo short.
        status = 0 if steps_done else 130
    except DemoError as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr, flush=True)
        status = 1
    except Exception as exc:
        # BaoServerError, OAuthServerError, OSError, ...: the type says where.
        print(
            f"\ndemo failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True
        )
        status = 1
    finally:
        with signals_ignored():
            out.step("Clean up")
            cleanup.close()
    if status == 0:
        print("\ndone", flush=True)

    return status


if __name__ == "__main__":
    sys.exit(main())
