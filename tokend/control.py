"""The control socket: status, refresh on demand, Prometheus metrics.

An HTTP server on a Unix socket (mode 0660, group ``control.group``), so that
access is granted with file permissions. Nothing it answers holds a secret:
tokens appear as fingerprints only.

- ``GET /v1/status`` — the daemon and every token, as JSON
- ``POST /v1/tokens/NAME/refresh`` — refresh now, wait for the outcome
- ``GET /metrics`` — Prometheus exposition

The socket is bound (and listening) before the tokens start; aiohttp's
server, a third of a second of imports, is set up on it afterwards, so a
restart with valid cached tokens is ready first. A request that comes in
between waits in the socket's backlog.
"""

from __future__ import annotations

import contextlib
import grp
import importlib
import logging
import os
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from tokend.errors import FileSinkError
from tokend.lifecycle import TokenKeeper
from tokend.metrics import CONTENT_TYPE, Metrics

if TYPE_CHECKING:
    from aiohttp import web

logger = logging.getLogger(__name__)

SOCKET_MODE = 0o660
REFRESH_WAIT = 30.0
REFRESH_INTERVAL = 10.0  # at most one forced refresh per token this often


@dataclass
class ControlState:
    """What the control server reads from the daemon (callables: always current)."""

    keepers: Callable[[], dict[str, TokenKeeper]]
    status: Callable[[], dict[str, Any]]
    metrics: Metrics


class ControlServer:
    def __init__(self, path: Path, group: str | None, state: ControlState) -> None:
        self.path, self.group, self.state = path, group, state
        self._socket: socket.socket | None = None
        self._runner: web.AppRunner | None = None
        self._tcp_runner: web.AppRunner | None = None
        self._last_forced: dict[str, float] = {}

    async def bind(self) -> None:
        """Create the socket and listen; requests wait until :meth:`serve`.

        Raises:
            FileSinkError: the socket cannot be created (the daemon goes on
                without it; the caller logs why).
        """
        self._socket = await anyio.to_thread.run_sync(self._bind)

    async def serve(self) -> None:
        """Answer requests on the socket bound by :meth:`bind`."""
        # Loaded in a worker thread: the keepers go on meanwhile.
        await anyio.to_thread.run_sync(importlib.import_module, "aiohttp.web")
        from aiohttp import web

        assert self._socket is not None
        app = web.Application()
        app.router.add_get("/v1/status", self._status)
        app.router.add_post("/v1/tokens/{name}/refresh", self._refresh)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.SockSite(self._runner, self._socket)
        await site.start()
        logger.info("control socket listening path=%s", self.path)

    async def serve_metrics_on(self, listen: str) -> None:
        """Also serve /metrics (only) on TCP, for scrapers that cannot use a socket."""
        from aiohttp import web

        host, _, port = listen.rpartition(":")
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._tcp_runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._tcp_runner.setup()
        site = web.TCPSite(self._tcp_runner, host.strip("[]"), int(port))
        try:
            await site.start()
        except OSError as exc:
            raise FileSinkError(
                f"cannot listen on metrics.listen = {listen!r}: {exc.strerror}"
            ) from exc
        logger.info("metrics listening address=%s", listen)

    async def aclose(self) -> None:
        if self._tcp_runner is not None:
            await self._tcp_runner.cleanup()
            self._tcp_runner = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        elif self._socket is not None:  # bound, never served
            self._socket.close()
        self._socket = None
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def _bind(self) -> socket.socket:
        _remove_stale_socket(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o117)  # never wider than 0660, not even briefly
        try:
            sock.bind(str(self.path))
        except OSError as exc:
            sock.close()
            raise FileSinkError(
                f"cannot create control socket {self.path}: {exc.strerror}"
            ) from exc
        finally:
            os.umask(old_umask)
        os.chmod(self.path, SOCKET_MODE)
        if self.group:
            try:
                os.chown(self.path, -1, grp.getgrnam(self.group).gr_gid)
            except (KeyError, PermissionError) as exc:
                logger.warning(
                    "control socket keeps tokend's group path=%s group=%s error=%s",
                    self.path,
                    self.group,
                    "no such group" if isinstance(exc, KeyError) else "not permitted",
                )
        sock.listen(128)
        sock.setblocking(False)
        return sock

    async def _status(self, request: web.Request) -> web.Response:
        return _json_response(self.state.status())

    async def _metrics(self, request: web.Request) -> web.Response:
        from aiohttp import web

        body = self.state.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def _refresh(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        keeper = self.state.keepers().get(name)
        if keeper is None:
            return _json_response({"error": f"no token {name!r}"}, status=404)
        now = time.monotonic()
        wait = self._last_forced.get(name, -REFRESH_INTERVAL) + REFRESH_INTERVAL - now
        if wait > 0:
            return _json_response(
                {"error": f"token {name!r} was refreshed on demand just now"},
                status=429,
                headers={"Retry-After": str(int(wait) + 1)},
            )
        self._last_forced[name] = now
        with anyio.move_on_after(REFRESH_WAIT) as waited:
            await keeper.refresh_and_wait()
        status = keeper.status.as_dict()
        if waited.cancelled_caught:
            return _json_response(
                {"error": "refresh still running", "status": status}, status=504
            )
        code = 200 if status["state"] == "fresh" else 502
        return _json_response({"token": name, "status": status}, status=code)


def _json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    from aiohttp import web

    return web.json_response(data, status=status, headers=headers)


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket a crashed daemon left; refuse anything else there."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise FileSinkError(f"{path} exists and is not a socket; remove it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        os.unlink(path)  # nobody listens: left by a crash
        return
    finally:
        probe.close()
    raise FileSinkError(f"another daemon answers on {path}")
