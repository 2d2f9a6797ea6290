"""The daemon: supervises one keeper per token, reloads, signals, readiness.

It owns no token logic; :mod:`tokend.lifecycle` does. Here live the task
group, the reload path (validate first, then start, stop or keep keepers),
the writer locks, and what systemd is told.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread

from tokend import __version__, systemd
from tokend.config import TokenConfig
from tokend.config_files import LoadedConfig, load_config
from tokend.early import reload_was_requested
from tokend.errors import ConfigError, TokendError
from tokend.files import DirectoryLock, prepare_directory, remove_file
from tokend.lifecycle import TokenKeeper
from tokend.oauth import TokenEndpoint
from tokend.state import StateStore
from tokend.vault import VaultSource
from tokend.watch import watch_config

logger = logging.getLogger(__name__)

STOP_GRACE = 1.5
KEEPER_RESTART_DELAY = 5.0


class EndpointPool:
    """One :class:`TokenEndpoint` (HTTP session) per distinct endpoint."""

    def __init__(self) -> None:
        self._endpoints: dict[tuple[object, ...], TokenEndpoint] = {}

    def get(self, token: TokenConfig) -> TokenEndpoint:
        key = token.endpoint_key
        if key not in self._endpoints:
            location = token.token_url or token.issuer or ""
            self._endpoints[key] = TokenEndpoint(
                location,
                discover=token.token_url is None,
                ca_file=token.ca_file,
                timeout=token.timeout,
                allow_http=token.allow_insecure_http,
            )
        return self._endpoints[key]

    async def retain(self, tokens: dict[str, TokenConfig]) -> None:
        """Close the sessions no token uses any more."""
        used = {token.endpoint_key for token in tokens.values()}
        for key in [key for key in self._endpoints if key not in used]:
            await self._endpoints.pop(key).aclose()

    async def aclose(self) -> None:
        for endpoint in self._endpoints.values():
            await endpoint.aclose()
        self._endpoints.clear()


@dataclass
class Workspace:
    """Prepared directories, their locks and the state store of a config."""

    store: StateStore
    locks: dict[Path, DirectoryLock] = field(default_factory=dict)

    def prepare(self, loaded: LoadedConfig) -> None:
        """Check and lock every directory the config writes to (blocking)."""
        directories = {token.path.parent for token in loaded.tokens.values()}
        for directory in sorted(directories):
            if directory in self.locks:
                continue
            prepare_directory(directory)
            lock = DirectoryLock(directory)
            lock.acquire()
            self.locks[directory] = lock
        self.store.prepare()

    def release(self) -> None:
        for lock in self.locks.values():
            lock.release()
        self.locks.clear()


def prepare_workspace(loaded: LoadedConfig) -> Workspace:
    workspace = Workspace(StateStore(loaded.settings.state_directory))
    try:
        workspace.prepare(loaded)
    except TokendError:
        workspace.release()
        raise
    return workspace


@dataclass
class _Running:
    keeper: TokenKeeper
    scope: anyio.CancelScope
    done: anyio.Event = field(default_factory=anyio.Event)

    async def stop(self) -> None:
        """Cancel the keeper and wait until a write it started has finished."""
        self.scope.cancel()
        with anyio.move_on_after(STOP_GRACE):
            await self.done.wait()


class Daemon:
    """``tokend run``: keeps every configured token fresh until stopped."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.loaded: LoadedConfig | None = None
        self.reload_error: str | None = None
        self._running: dict[str, _Running] = {}
        self._endpoints = EndpointPool()
        self._vault: VaultSource | None = None
        self._workspace: Workspace | None = None

    async def run(self) -> int:
        """Run until SIGTERM or SIGINT; return the exit code."""
        self._reload_wanted = anyio.Event()
        self._vault_scope = anyio.CancelScope()
        self._stop = anyio.Event()
        with anyio.open_signal_receiver(
            signal.SIGTERM, signal.SIGINT, signal.SIGHUP
        ) as signals:
            if reload_was_requested():
                logger.info("SIGHUP received during startup; reloading after it")
                self._reload_wanted.set()
            try:
                self.loaded = await anyio.to_thread.run_sync(
                    load_config, self.config_path
                )
                self._workspace = await anyio.to_thread.run_sync(
                    prepare_workspace, self.loaded
                )
            except ConfigError as exc:
                for problem in exc.problems:
                    logger.error("invalid configuration: %s", problem)
                return 2
            except TokendError as exc:
                logger.error("cannot start: %s", exc)
                return 1
            try:
                async with anyio.create_task_group() as group:
                    group.start_soon(self._handle_signals, signals, group.cancel_scope)
                    self._start(group, self.loaded)
                    group.start_soon(self._announce_ready, self.loaded)
                    group.start_soon(self._reload_loop, group)
                    group.start_soon(self._watchdog)
                    group.start_soon(
                        watch_config, self.config_path, self.request_reload, self._stop
                    )
            finally:
                with anyio.CancelScope(shield=True):
                    await self._endpoints.aclose()
                    if self._vault is not None:
                        await self._vault.aclose()
                    self._workspace.release()
        logger.info("stopped; token files stay in place")

        return 0

    def _start(self, group: anyio.abc.TaskGroup, loaded: LoadedConfig) -> None:
        settings = loaded.settings
        self._vault = VaultSource(settings.vault)
        self._vault_scope = anyio.CancelScope()
        group.start_soon(self._keep_vault_login, self._vault, self._vault_scope)
        logger.info(
            "starting version=%s config=%s files=%d tokens=%d vault=%s auth=%s",
            __version__,
            loaded.path,
            len(loaded.files),
            len(loaded.tokens),
            settings.vault.address,
            settings.vault.auth,
        )
        for token in loaded.tokens.values():
            self._start_keeper(group, token)

    def _start_keeper(self, group: anyio.abc.TaskGroup, token: TokenConfig) -> None:
        assert self.loaded is not None and self._vault is not None
        assert self._workspace is not None
        keeper = TokenKeeper(
            token,
            self._endpoints.get(token),
            self._vault,
            self._workspace.store,
            self.loaded.settings.refresh,
        )
        running = _Running(keeper, anyio.CancelScope())
        self._running[token.name] = running
        group.start_soon(self._supervise, running)
        logger.debug(
            "token configured token=%s file=%s audience=%s scopes=%s",
            token.name,
            token.path,
            token.audience,
            " ".join(token.scopes),
        )

    async def _supervise(self, running: _Running) -> None:
        try:
            await self._keep_running(running)
        finally:
            running.done.set()

    async def _keep_running(self, running: _Running) -> None:
        with running.scope:
            while True:
                try:
                    await running.keeper.run()
                except TokendError as exc:
                    logger.error(
                        "keeper stopped token=%s error=%s", running.keeper.name, exc
                    )
                except Exception as exc:  # a bug: keep the other tokens going
                    logger.error(
                        "keeper crashed token=%s error=%s; restarting in %.0fs",
                        running.keeper.name,
                        type(exc).__name__,
                        KEEPER_RESTART_DELAY,
                    )
                    logger.debug("keeper crash detail", exc_info=True)
                running.keeper.settled.set()
                await anyio.sleep(KEEPER_RESTART_DELAY)

    async def _keep_vault_login(
        self, vault: VaultSource, scope: anyio.CancelScope
    ) -> None:
        with scope:
            await vault.keep_login()

    async def _announce_ready(self, loaded: LoadedConfig) -> None:
        timeout = loaded.settings.daemon.startup_timeout
        with anyio.move_on_after(timeout) as waited:
            for running in list(self._running.values()):
                await running.keeper.settled.wait()
        summary = self.summary()
        if waited.cancelled_caught:
            logger.warning("startup_timeout of %.0fs reached; ready anyway", timeout)
        systemd.notify_ready(summary)
        logger.info("ready %s", summary)
        while True:
            await anyio.sleep(10)
            systemd.notify_status(self.summary())

    def summary(self) -> str:
        """One line for STATUS=, e.g. ``3/3 tokens fresh``."""
        states = [r.keeper.status.state for r in self._running.values()]
        fresh = states.count("fresh")
        line = f"{fresh}/{len(states)} tokens fresh"
        failing = [
            n
            for n, r in self._running.items()
            if r.keeper.status.state in ("failing", "expired")
        ]
        if failing:
            line += "; not fresh: " + ", ".join(sorted(failing)[:5])
        if self.reload_error:
            line += "; last reload failed"
        return line

    async def _handle_signals(
        self, signals: AsyncIterator[int], scope: anyio.CancelScope
    ) -> None:
        async for signum in signals:
            if signum == signal.SIGHUP:
                logger.info("SIGHUP received; reloading configuration")
                self._reload_wanted.set()
                continue
            logger.info(
                "%s received; stopping, in-flight writes complete first",
                signal.Signals(signum).name,
            )
            systemd.notify_stopping()
            self._stop.set()
            await (
                anyio.lowlevel.checkpoint()
            )  # let the file watcher see it before cancelling
            scope.cancel()
            return

    async def _reload_loop(self, group: anyio.abc.TaskGroup) -> None:
        while True:
            await self._reload_wanted.wait()
            # Let a burst of signals or file events settle into one reload.
            await anyio.sleep(0.2)
            self._reload_wanted = anyio.Event()
            await self.reload(group)

    def request_reload(self) -> None:
        self._reload_wanted.set()

    async def reload(self, group: anyio.abc.TaskGroup) -> None:
        """Apply a changed configuration, or keep the running one if invalid."""
        systemd.notify_reloading()
        try:
            await self._apply(group)
        finally:
            systemd.notify_ready(self.summary())

    async def _apply(self, group: anyio.abc.TaskGroup) -> None:
        assert self.loaded is not None and self._workspace is not None
        try:
            new = await anyio.to_thread.run_sync(load_config, self.config_path)
            await anyio.to_thread.run_sync(self._workspace.prepare, new)
        except ConfigError as exc:
            self.reload_error = "; ".join(exc.problems)
            for problem in exc.problems:
                logger.error("reload rejected, keeping the running config: %s", problem)
            return
        except TokendError as exc:
            self.reload_error = str(exc)
            logger.error("reload rejected, keeping the running config: %s", exc)
            return
        old = self.loaded
        self.loaded, self.reload_error = new, None
        restart_all = old.settings.vault != new.settings.vault or (
            old.settings.refresh != new.settings.refresh
        )
        if restart_all and self._vault is not None:
            self._vault_scope.cancel()
            await self._vault.aclose()
        removed = [n for n in old.tokens if n not in new.tokens]
        changed = [
            n
            for n in old.tokens
            if n in new.tokens and (restart_all or old.tokens[n] != new.tokens[n])
        ]
        added = [n for n in new.tokens if n not in old.tokens]
        for name in removed + changed:
            running = self._running.pop(name)
            await running.stop()
            moved = name in removed or old.tokens[name].path != new.tokens[name].path
            if moved:
                await running.keeper.remove_files()
            elif not new.tokens[name].metadata:
                await anyio.to_thread.run_sync(
                    remove_file, old.tokens[name].metadata_path
                )
        if restart_all:
            self._vault = VaultSource(new.settings.vault)
            self._vault_scope = anyio.CancelScope()
            group.start_soon(self._keep_vault_login, self._vault, self._vault_scope)
        for name in changed + added:
            self._start_keeper(group, new.tokens[name])
        await self._endpoints.retain(new.tokens)
        logger.info(
            "reloaded added=%s removed=%s changed=%s unchanged=%d",
            ",".join(added) or "-",
            ",".join(removed) or "-",
            ",".join(changed) or "-",
            len(new.tokens) - len(added) - len(changed),
        )

    async def _watchdog(self) -> None:
        interval = systemd.watchdog_interval()
        if interval is None:
            return
        while True:
            systemd.notify("WATCHDOG=1")
            await anyio.sleep(interval)
