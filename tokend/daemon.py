"""The daemon: supervises one keeper per token, reloads, signals, readiness.

It owns no token logic; :mod:`tokend.lifecycle` does. Here live the task
group, the reload path (validate first, then start, stop or keep keepers),
the writer locks, and what systemd is told.
"""

from __future__ import annotations

import logging
import random
import signal
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread

from tokend import __version__, schedule, systemd
from tokend.batches import Batches
from tokend.config import TokenConfig
from tokend.config_files import LoadedConfig, load_config
from tokend.control import ControlServer, ControlState
from tokend.early import reload_was_requested
from tokend.errors import ConfigError, TokendError
from tokend.files import DirectoryLock, prepare_directory, remove_file
from tokend.lifecycle import Flag, TokenKeeper
from tokend.metrics import Metrics
from tokend.oauth import TokenEndpoint
from tokend.state import StateStore
from tokend.token import format_time
from tokend.vault import VaultSource
from tokend.watch import watch_config

logger = logging.getLogger(__name__)

STOP_GRACE = 1.5
WATCHDOG_SLACK = 30.0
# Keepers sleep up to this long; the clock watch wakes them after a jump.
KEEPER_WAKE_SLICE = 300.0
CLOCK_CHECK = 10.0
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


class _Countdown:
    """``done`` is set after :meth:`count` was called ``total`` times."""

    def __init__(self, total: int) -> None:
        self.left = total
        self.done = anyio.Event()
        if total <= 0:
            self.done.set()

    def count(self) -> None:
        self.left -= 1
        if self.left <= 0:
            self.done.set()


def _load_caches(keepers: list[TokenKeeper]) -> None:
    for keeper in keepers:
        try:
            keeper.load_cache()
        except Exception:  # the keeper reads again itself, where a failure shows
            logger.debug("cache not read ahead token=%s", keeper.name, exc_info=True)


def _take_over_cache(keeper: TokenKeeper) -> bool:
    """Reuse an intact cached token now; True if the keeper reuses its cache.

    A token whose files are intact is taken over here, in one pass without a
    task switch, and its keeper's restore() only looks it up.
    """
    try:
        return keeper.restore_cached() or keeper.reuses_cache()
    except Exception:  # the keeper restores again itself, under its crash guard
        logger.debug("cache not taken over token=%s", keeper.name, exc_info=True)
        return False


@dataclass(frozen=True)
class TokenDiff:
    added: list[str]
    removed: list[str]
    changed: list[str]


def diff_tokens(
    old: dict[str, TokenConfig], new: dict[str, TokenConfig], restart_all: bool
) -> TokenDiff:
    """Which tokens a reload adds, removes, or must restart (settings differ)."""
    return TokenDiff(
        added=[name for name in new if name not in old],
        removed=[name for name in old if name not in new],
        changed=[
            name
            for name in old
            if name in new and (restart_all or old[name] != new[name])
        ],
    )


class _Running:
    """A keeper's task: its cancel scope, and whether it has ended."""

    __slots__ = ("ended", "keeper", "scope")

    def __init__(self, keeper: TokenKeeper, scope: anyio.CancelScope) -> None:
        self.keeper, self.scope = keeper, scope
        # A Flag, not an Event: only a reload or a removal ever waits.
        self.ended = Flag()

    async def stop(self) -> None:
        """Cancel the keeper and wait until a write it started has finished.

        The wait has no limit: a file written after the next step removed or
        replaced it would undo that step. A slow disk is said in the log.
        """
        self.scope.cancel()
        with anyio.move_on_after(STOP_GRACE):
            await self.ended.wait()
        if not self.ended.is_set():
            logger.warning(
                "waiting for a file write to finish token=%s", self.keeper.name
            )
            await self.ended.wait()


class Daemon:
    """``tokend run``: keeps every configured token fresh until stopped."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.loaded: LoadedConfig | None = None
        self.reload_error: str | None = None
        self._running: dict[str, _Running] = {}
        self._endpoints = EndpointPool()
        # One generator for every keeper's jitter: a Random of its own costs
        # each keeper 2.5 KB of state and a seed from os.urandom.
        self._rng = random.Random()
        # Every keeper's file writes, a batch per worker call.
        self._batches = Batches()
        self._vault: VaultSource | None = None
        self._workspace: Workspace | None = None
        self.loaded_at: str | None = None
        self.metrics = Metrics(
            keepers=lambda: [r.keeper for r in self._running.values()],
            vault=lambda: self._vault.state if self._vault else None,
        )

    async def run(self) -> int:
        """Run until SIGTERM or SIGINT; return the exit code."""
        self._reload_wanted = anyio.Event()
        self._vault_scope = anyio.CancelScope()
        self._stop = anyio.Event()
        self._ready_sent = False
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
            control = await self._open_control(self.loaded)
            try:
                async with anyio.create_task_group() as group:
                    group.start_soon(self._handle_signals, signals, group.cancel_scope)
                    await self._start(group, self.loaded)
                    group.start_soon(self._announce_ready, self.loaded)
                    if control is not None:
                        # Queued after READY=1, which a restart whose cached
                        # tokens are valid sends before aiohttp.web is loaded.
                        group.start_soon(self._serve_control, control, self.loaded)
                    group.start_soon(self._reload_loop, group)
                    group.start_soon(self._watchdog)
                    group.start_soon(self._watch_clocks)
                    group.start_soon(
                        watch_config, self.config_path, self.request_reload, self._stop
                    )
            finally:
                with anyio.CancelScope(shield=True):
                    if control is not None:
                        await control.aclose()
                    await self._endpoints.aclose()
                    if self._vault is not None:
                        await self._vault.aclose()
                    self._workspace.release()
        logger.info("stopped; token files stay in place")

        return 0

    async def _start(self, group: anyio.abc.TaskGroup, loaded: LoadedConfig) -> None:
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
        await self._start_keepers(group, list(loaded.tokens.values()), start=True)

    async def _start_keepers(
        self, group: anyio.abc.TaskGroup, tokens: list[TokenConfig], start: bool = False
    ) -> None:
        """Start a keeper per token; at ``start``, READY=1 early if all reused."""
        keepers = [self._new_keeper(token) for token in tokens]
        # Every cached token and state record in one worker thread, not one
        # (or two) per token: a restart, or a reload that restarts every
        # keeper, is ready sooner. Their secrets likewise, in a few batches.
        await anyio.to_thread.run_sync(_load_caches, keepers)
        vault = self._vault
        assert vault is not None and self.loaded is not None
        # Secrets for tokens to request now are read at once. A keeper that
        # reuses its cached token reads its secret only to check the
        # client_id (and hold the secret for later): those wait until every
        # keeper has restored, so that hvac's import, the login and the reads
        # do not share the CPU with a restart on its way to READY=1.
        paths: dict[bool, list[str]] = {False: [], True: []}
        restored = _Countdown(len(keepers))
        for keeper in keepers:
            keeper.on_restored = restored.count
            reused = _take_over_cache(keeper)
            if path := keeper.authenticator.credentials_path:
                paths[reused].append(path)
        now = vault.plan_read_ahead(paths[False])
        later = vault.plan_read_ahead(paths[True])
        runs = [self._register(keeper) for keeper in keepers]
        if start and all(keeper.settled.is_set() for keeper in keepers):
            # A restart that reused every token is ready before a thousand
            # tasks are spawned and stepped once each.
            await self._send_ready()
        for running in runs:
            group.start_soon(self._supervise, running)
        group.start_soon(vault.read_ahead, now)
        # Not for ever: a restore stuck in a file write holds up no one's check.
        patience = self.loaded.settings.daemon.startup_timeout
        group.start_soon(vault.read_ahead, later, restored.done, patience)

    def _new_keeper(self, token: TokenConfig) -> TokenKeeper:
        assert self.loaded is not None and self._vault is not None
        assert self._workspace is not None
        return TokenKeeper(
            token,
            self._endpoints.get(token),
            self._vault,
            self._workspace.store,
            self.loaded.settings.refresh,
            rng=self._rng,
            observer=self.metrics.observe,
            wake_slice=KEEPER_WAKE_SLICE,
            batches=self._batches,
        )

    def _register(self, keeper: TokenKeeper) -> _Running:
        token = keeper.config
        running = _Running(keeper, anyio.CancelScope())
        self._running[token.name] = running
        logger.debug(
            "token configured token=%s file=%s audience=%s scopes=%s",
            token.name,
            token.path,
            token.audience,
            " ".join(token.scopes),
        )
        return running

    async def _supervise(self, running: _Running) -> None:
        try:
            await self._keep_running(running)
        finally:
            running.keeper.settled.set()  # a stopped keeper holds up nothing
            running.ended.set()

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
        if not self._ready_sent:
            timeout = loaded.settings.daemon.startup_timeout
            with anyio.move_on_after(timeout) as waited:
                for running in list(self._running.values()):
                    if not running.keeper.settled.is_set():  # no checkpoint per token
                        await running.keeper.settled.wait()
            if waited.cancelled_caught:
                logger.warning(
                    "startup_timeout of %.0fs reached; ready anyway", timeout
                )
            await self._send_ready()
        while True:
            await anyio.sleep(10)
            systemd.notify_status(self.summary())

    async def _send_ready(self) -> None:
        summary = self.summary()
        await systemd.notify_ready(summary)
        self._ready_sent = True
        logger.info("ready %s", summary)

    async def _open_control(self, loaded: LoadedConfig) -> ControlServer | None:
        """Bind the control socket; without it tokens are still kept fresh."""
        self.loaded_at = format_time(datetime.now(UTC))
        server = ControlServer(
            loaded.settings.control_socket,
            loaded.settings.control.group,
            ControlState(
                keepers=lambda: {n: r.keeper for n, r in self._running.items()},
                status=self.describe,
                metrics=self.metrics,
            ),
        )
        try:
            await server.bind()
        except TokendError as exc:
            logger.error(
                "control socket not available (status, refresh, metrics): %s", exc
            )
            return None
        return server

    async def _serve_control(self, server: ControlServer, loaded: LoadedConfig) -> None:
        await server.serve()
        listen = loaded.settings.metrics.listen
        if listen:
            try:
                await server.serve_metrics_on(listen)
            except TokendError as exc:
                logger.error("metrics not served over TCP: %s", exc)

    def describe(self) -> dict[str, Any]:
        """The daemon's state for ``tokend status``; never a secret."""
        loaded = self.loaded
        vault = self._vault.state if self._vault else None
        return {
            "version": __version__,
            "config": str(self.config_path),
            "config_files": [str(f) for f in loaded.files] if loaded else [],
            "loaded_at": self.loaded_at,
            "reload_error": self.reload_error,
            "ready": self._ready_sent,
            "summary": self.summary(),
            "vault": asdict(vault) if vault else None,
            "tokens": {
                name: {
                    **running.keeper.status.as_dict(),
                    "file": str(running.keeper.config.path),
                }
                for name, running in sorted(self._running.items())
            },
        }

    def summary(self) -> str:
        """One line for STATUS=, e.g. ``3/3 tokens fresh``."""
        states = [r.keeper.status.state for r in self._running.values()]
        fresh = states.count("fresh")
        line = f"{fresh}/{len(states)} tokens fresh"
        failing = [
            n for n, r in self._running.items() if r.keeper.status.state != "fresh"
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
            await systemd.notify_stopping()
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
        # Before the first READY=1 systemd is not waiting for a reload's end.
        announce = self._ready_sent
        if announce:
            await systemd.notify_reloading()
        try:
            new = await self._load_new()
            if new is not None:
                await self._apply(group, new)
        finally:
            if announce:
                await systemd.notify_ready(self.summary())

    async def _load_new(self) -> LoadedConfig | None:
        assert self._workspace is not None
        try:
            new = await anyio.to_thread.run_sync(load_config, self.config_path)
            await anyio.to_thread.run_sync(self._workspace.prepare, new)
        except ConfigError as exc:
            self.reload_error = "; ".join(exc.problems)
            self.metrics.count_reload("rejected")
            for problem in exc.problems:
                logger.error("reload rejected, keeping the running config: %s", problem)
            return None
        except TokendError as exc:
            self.reload_error = str(exc)
            self.metrics.count_reload("rejected")
            logger.error("reload rejected, keeping the running config: %s", exc)
            return None
        return new

    async def _apply(self, group: anyio.abc.TaskGroup, new: LoadedConfig) -> None:
        old = self.loaded
        assert old is not None
        self.loaded, self.reload_error = new, None
        self.loaded_at = format_time(datetime.now(UTC))
        self.metrics.count_reload("applied")
        restart_all = (old.settings.vault, old.settings.refresh) != (
            new.settings.vault,
            new.settings.refresh,
        )
        diff = diff_tokens(old.tokens, new.tokens, restart_all)
        if restart_all and self._vault is not None:
            self._vault_scope.cancel()
            await self._vault.aclose()
        stopping = [self._running.pop(name) for name in diff.removed + diff.changed]
        async with anyio.create_task_group() as stops:
            for running in stopping:
                stops.start_soon(self._retire, running, old, new)
        if restart_all:
            previous = self._vault
            self._vault = VaultSource(new.settings.vault)
            if previous is not None:
                self._vault.inherit_login(previous)
            self._vault_scope = anyio.CancelScope()
            group.start_soon(self._keep_vault_login, self._vault, self._vault_scope)
        await self._start_keepers(
            group, [new.tokens[name] for name in diff.changed + diff.added]
        )
        await self._endpoints.retain(new.tokens)
        logger.info(
            "reloaded added=%s removed=%s changed=%s unchanged=%d",
            ",".join(diff.added) or "-",
            ",".join(diff.removed) or "-",
            ",".join(diff.changed) or "-",
            len(new.tokens) - len(diff.added) - len(diff.changed),
        )

    async def _retire(
        self, running: _Running, old: LoadedConfig, new: LoadedConfig
    ) -> None:
        """Stop a removed or changed token's keeper and clean up what it leaves."""
        name = running.keeper.name
        await running.stop()
        before, after = old.tokens[name], new.tokens.get(name)
        try:
            if after is None or after.path != before.path:
                await running.keeper.remove_files()
            elif before.metadata and not after.metadata:
                await anyio.to_thread.run_sync(remove_file, before.metadata_path)
        except TokendError as exc:
            logger.error("old files not removed token=%s error=%s", name, exc)

    async def _watchdog(self) -> None:
        """Ping systemd's watchdog while the event loop and every keeper progress.

        A blocked loop cannot run this task; a keeper stuck longer than its
        longest honest wait (a wake slice plus a Vault and a token request)
        stops the pings too, so systemd restarts the daemon.
        """
        interval = systemd.watchdog_interval()
        if interval is None:
            return
        stuck_before: list[str] = []
        while True:
            stuck = self.stuck_keepers()
            if not stuck:
                systemd.notify("WATCHDOG=1")
            elif stuck != stuck_before:
                logger.error(
                    "no progress, withholding the watchdog ping tokens=%s",
                    ",".join(stuck),
                )
            stuck_before = stuck
            await anyio.sleep(interval)

    async def _watch_clocks(self) -> None:
        """Wake every keeper to recheck its deadlines after a resume or a step."""
        watch = schedule.ClockWatch()
        while True:
            await anyio.sleep(CLOCK_CHECK)
            if watch.jumped():
                logger.info("clock jump or resume noticed; rechecking every token")
                for running in list(self._running.values()):
                    running.keeper.recheck()

    def stuck_keepers(self) -> list[str]:
        """Tokens busy for longer than their longest honest attempt allows."""
        vault_timeout = self.loaded.settings.vault.timeout if self.loaded else 0.0
        stuck = []
        for name, running in self._running.items():
            # An attempt: Vault read and token request, twice on invalid_client.
            limit = WATCHDOG_SLACK + 2 * (running.keeper.config.timeout + vault_timeout)
            if running.keeper.stalled_for() > limit:
                stuck.append(name)
        return sorted(stuck)
