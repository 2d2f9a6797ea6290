"""The life of one token: credentials, request, checks, files, sleep, again.

A :class:`TokenKeeper` runs as one task per token, so at most one request is
in flight per token. It keeps the last good token published while it is
valid, whatever later refreshes do.
"""

from __future__ import annotations

import logging
import os
import random
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.lowlevel
import anyio.to_thread

from tokend.batches import Batches
from tokend.client_auth import make_authenticator
from tokend.config import RefreshSettings, TokenConfig
from tokend.errors import (
    EndpointUnavailableError,
    FileSinkError,
    InvalidClientError,
    TokendError,
)
from tokend.files import (
    describe_metadata,
    remove_file,
    render_metadata,
    render_token,
    write_atomic,
)
from tokend.logs import TokenLog, event
from tokend.oauth import TokenEndpoint, TokenRequest
from tokend.schedule import Clock, Deadline, SystemClock, refresh_after, retry_after
from tokend.state import Restored, StateRecord, StateStore
from tokend.token import AccessToken, format_time
from tokend.vault import VaultSource

logger = logging.getLogger(__name__)

State = Literal["starting", "fresh", "refreshing", "failing", "expired"]


@dataclass
class TokenStatus:
    """What ``tokend status`` shows of one token; never the token itself."""

    state: State = "starting"
    fingerprint: str | None = None
    expires_at: str | None = None
    last_success: str | None = None
    next_refresh: str | None = None
    last_error: str | None = None
    last_error_kind: str | None = None
    generation: int = 0
    requests: int = 0
    failures: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    client_auth: str = ""
    # key_id (private_key_jwt) or certificate_expires_at (tls_client_auth)
    auth: dict[str, str | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        shown = {k: v for k, v in self.__dict__.items() if k != "auth"}
        return {**shown, **self.auth, "outcomes": dict(self.outcomes)}


@dataclass
class _Current:
    token: AccessToken
    expiry: Deadline
    client_id: str | None
    generation: int


def build_request(config: TokenConfig) -> TokenRequest:
    return TokenRequest(
        endpoint=config.token_url or f"issuer:{config.issuer}",
        client_auth=config.client_auth,
        audience=config.audience,
        audience_param=config.audience_param,
        scopes=config.scopes,
        extra_params=config.extra_params,
        default_lifetime=config.default_lifetime,
        min_lifetime=config.min_lifetime,
    )


class Flag:
    """A one-way event that makes an :class:`anyio.Event` only for a waiter.

    For what every token holds but few wait for (an Event costs about 0.8 KB):
    a keeper's ``settled``, which only the start waits for, and the daemon's
    record that a keeper's task ended, which only a reload or removal waits for.
    """

    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._set = False
        self._event: anyio.Event | None = None

    def set(self) -> None:
        self._set = True
        if self._event is not None:
            self._event.set()
            self._event = None

    def is_set(self) -> bool:
        return self._set

    async def wait(self) -> None:
        if self._set:
            await anyio.lowlevel.checkpoint()
            return
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()


@dataclass
class TokenKeeper:
    """Keeps one token fresh in its file until cancelled."""

    config: TokenConfig
    endpoint: TokenEndpoint
    vault: VaultSource
    store: StateStore
    policy: RefreshSettings
    clock: Clock = field(default_factory=SystemClock)
    rng: random.Random = field(default_factory=random.Random)
    # Called after each attempt with (token, outcome, seconds), for metrics.
    observer: Callable[[str, str, float], None] | None = None
    # Longest sleep before looking at the clocks again; None: schedule.WAKE_SLICE.
    # The daemon sets it long and calls recheck() when its ClockWatch sees a jump.
    wake_slice: float | None = None
    # File writes in worker calls; the daemon shares one among all keepers.
    batches: Batches = field(default_factory=Batches)
    # Called once, when the first restore() ended (however it ended).
    on_restored: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        self.status = TokenStatus(client_auth=self.config.client_auth)
        self.request = build_request(self.config)
        self.fingerprint = self.request.fingerprint(self.config.credentials_source)
        self.authenticator = make_authenticator(self.config, self.vault)
        self.settled = Flag()  # set after the first attempt, good or bad
        self._current: _Current | None = None
        # The sleep between attempts, while there is one: refresh_now() and
        # recheck() cancel it (an Event per keeper would cost 0.8 KB).
        self._nap: anyio.CancelScope | None = None
        self._forced = False
        self._attempt = 0
        # True until a token is obtained or reused on schedule. The next
        # refresh after a start without a usable cached token, a changed
        # request, a forced refresh, or any refresh that found no valid token
        # is drawn from the wider first window (schedule.refresh_after).
        self._off_schedule = True
        self._sent_boot = 0.0
        self.heartbeat = self.clock.boottime()
        self.log = TokenLog(logger, self.config.name)
        # Made only when someone waits for an attempt's end (an Event costs
        # about 0.9 KB; only ``tokend refresh`` waits).
        self._attempted: anyio.Event | None = None
        self._bound_warned = False
        self.next_due: Deadline | None = None
        # What load_cache() read ahead for restore(), if the daemon called it;
        # or, once restore_cached() took the token over, when to refresh it.
        # (No attribute of its own: CPython 3.11 shares one key table among
        # instances of up to 29 attributes, and a 30th costs each keeper
        # 1.3 KB, 1.3 MB of a thousand-token daemon.)
        self._cached: tuple[Restored | None, int, bool] | Deadline | None = None

    @property
    def name(self) -> str:
        return self.config.name

    def refresh_now(self) -> None:
        """Ask the keeper to refresh at once (e.g. ``tokend refresh NAME``)."""
        self._forced = True
        self._off_schedule = True
        self.recheck()

    def recheck(self) -> None:
        """Look at the clocks again now (after a resume or a clock step)."""
        # Not sleeping: the keeper looks at the clocks (and _forced) before
        # its next sleep anyway.
        if self._nap is not None:
            self._nap.cancel()

    async def run(self) -> None:
        try:
            due = await self.restore()
        finally:
            # Once: a keeper run again after a crash has restored before.
            restored, self.on_restored = self.on_restored, None
            if restored is not None:
                restored()
        if self.status.state == "fresh":
            due = await self._check_client(due)
        while True:
            self.next_due = due
            await self._sleep_until(due)
            due = await self.attempt()

    async def restore(self) -> Deadline:
        """Take over the token an earlier run left; return when to refresh next.

        A still-valid token for the same request is republished and reused.
        A token for a changed request, or one about to expire, stays in its
        file until the refresh (due now) replaces it or it expires; an expired
        one is removed at once (with ``on_expiry = "remove"``).
        """
        cached, self._cached = self._cached, None
        if isinstance(cached, Deadline):  # restore_cached() took it over
            return cached
        if cached is None:
            cached = await anyio.to_thread.run_sync(self._read_cache)
        restored, generation, as_configured = cached
        now = Deadline.after(self.clock, 0)
        if restored is None:
            # A crash between the token file and its record: keep counting up.
            self.status.generation = generation
            return now
        remaining = self._remaining(restored.token)
        current = self._take_over(restored, remaining)
        if not self._reusable(restored, remaining):
            return now
        # Rewrite the files only if the config changed how they look: a restart
        # with a thousand intact tokens then costs a stat each, not 3 writes.
        try:
            if not as_configured:
                await self._publish(current)
        except TokendError as exc:
            self.log.warning(
                "cached token not republished token=%s error=%s", self.name, exc
            )
            return now

        return self._reuse(current)

    def restore_cached(self) -> bool:
        """Reuse the cached token :meth:`load_cache` found, if its files need
        no rewrite; :meth:`restore` then only returns when to refresh it.

        Blocks on nothing, so that the daemon can send ``READY=1`` for a
        restart whose tokens are all intact before it starts their tasks.
        Returns True if the token was reused.
        """
        if not isinstance(self._cached, tuple):
            return False
        restored, _, as_configured = self._cached
        if restored is None or not as_configured:
            return False
        remaining = self._remaining(restored.token)
        if not self._reusable(restored, remaining):
            return False
        self._cached = self._reuse(self._take_over(restored, remaining))
        return True

    def _take_over(self, restored: Restored, remaining: float) -> _Current:
        """Hold the token an earlier run published, reusable or not."""
        current = _Current(
            restored.token,
            Deadline.after(self.clock, remaining),
            restored.client_id,
            restored.generation,
        )
        self._current = current
        self.status.generation = restored.generation
        return current

    def _reuse(self, current: _Current) -> Deadline:
        """Serve the taken-over token as fresh; return when to refresh it."""
        token = current.token
        self._adopt(current)
        self._off_schedule = False
        self.settled.set()
        self.log.info(
            "cached token reused token=%s file=%s expires_at=%s",
            self.name,
            self.config.path,
            format_time(token.expires_at),
            extra=event("reused", token),
        )

        return self._refresh_deadline(token)

    def reuses_cache(self) -> bool:
        """True if :meth:`restore` will reuse the token :meth:`load_cache` found."""
        if isinstance(self._cached, Deadline):
            return True  # restore_cached() took it over
        restored = self._cached[0] if self._cached else None
        return restored is not None and self._reusable(
            restored, self._remaining(restored.token)
        )

    def _reusable(self, restored: Restored, remaining: float) -> bool:
        """A cached token is reused if made for this request and not about to expire."""
        return restored.same_request and remaining > max(self.config.min_lifetime, 1)

    def _remaining(self, token: AccessToken) -> float:
        return token.remaining(datetime.fromtimestamp(self.clock.wall(), UTC))

    def load_cache(self) -> None:
        """Read what an earlier run left for this token (blocking file I/O).

        The daemon calls this for every keeper in one worker thread before
        they start, so that :meth:`restore` needs no thread of its own.
        """
        self._cached = self._read_cache()

    def _read_cache(self) -> tuple[Restored | None, int, bool]:
        """The intact cached token, the generation to count on from, and
        whether its files look as configured (so need no rewrite)."""
        restored = self.store.restore(self.name, self.fingerprint)
        if restored is None:
            record = self.store.load(self.name)
            return None, record.generation if record else 0, False
        # Only a token of the same request is kept: only its files are looked at.
        as_configured = (
            restored.same_request
            and (restored.path, restored.format)
            == (str(self.config.path), self.config.format)
            and self._files_as_configured()
        )
        return restored, restored.generation, as_configured

    def _files_as_configured(self) -> bool:
        """True if the token file (and metadata) have the configured mode and owner."""
        config = self.config
        paths = [config.path] + ([config.metadata_path] if config.metadata else [])
        for path in paths:
            try:
                info = os.lstat(path)
            except OSError:
                return False
            if stat.S_IMODE(info.st_mode) != config.mode or not stat.S_ISREG(
                info.st_mode
            ):
                return False
            if config.uid is not None and info.st_uid != config.uid:
                return False
            if config.gid is not None and info.st_gid != config.gid:
                return False
        # ACL entries are not compared: with readers, rewrite to be sure.
        return not config.acl

    async def _check_client(self, due: Deadline) -> Deadline:
        """Refresh at once if Vault now holds another client_id than the cache's.

        This also warms the in-memory credentials, so a later Vault outage
        does not stop refreshes.
        """
        try:
            client_id = await self.authenticator.client_id()
        except TokendError as exc:
            self.log.warning(
                "credentials not checked token=%s error=%s", self.name, exc
            )
            return due
        current = self._current
        if current is not None and current.client_id != client_id:
            self.log.info("client_id changed, refreshing token=%s", self.name)
            return Deadline.after(self.clock, 0)
        return due

    async def refresh_and_wait(self) -> None:
        """Refresh now and return once that attempt ended, well or not."""
        if self._attempted is None:
            self._attempted = anyio.Event()
        attempted = self._attempted
        self.refresh_now()
        await attempted.wait()

    def _attempt_ended(self, outcome: str, started: float) -> None:
        self.status.outcomes[outcome] = self.status.outcomes.get(outcome, 0) + 1
        if self.observer is not None:
            self.observer(self.name, outcome, self.clock.boottime() - started)
        if self._attempted is not None:
            self._attempted.set()
            self._attempted = None

    async def attempt(self) -> Deadline:
        """Refresh once; return when to try again (success or failure)."""
        self.status.state = "refreshing"
        started = self.clock.boottime()
        bridged = self._is_valid()  # a valid token covers the services meanwhile
        try:
            current = await self._refresh()
        except TokendError as exc:
            self._attempt_ended(exc.kind, started)
            self._attempt += 1
            # Waiting within the validity spares a failing server; a failing
            # disk here is not helped by it, so retry that at backoff pace.
            previous = self._current
            valid_for = (
                previous.expiry.remaining(self.clock)
                if previous and not isinstance(exc, FileSinkError)
                else None
            )
            delay = retry_after(
                exc.kind,
                self._attempt,
                self.policy,
                self.rng,
                getattr(exc, "retry_after", None),
                valid_for,
            )
            await self._record_failure(exc, delay)
            self.settled.set()
            return Deadline.after(self.clock, delay)
        self._attempt = 0
        self._adopt(current)
        self._attempt_ended("ok", started)
        self.settled.set()
        first = self._off_schedule or not bridged
        self._off_schedule = False

        return self._refresh_deadline(current.token, first)

    async def _refresh(self) -> _Current:
        try:
            token, client_id = await self._request(retry=False)
        except (InvalidClientError, EndpointUnavailableError) as exc:
            refused = isinstance(exc, InvalidClientError) or (
                exc.handshake and self.authenticator.mtls
            )
            if not refused:
                raise
            # The secret, key or certificate may have been rotated in Vault:
            # read it again (a certificate: issue a new one), once.
            self.log.info(
                "%s, re-reading credentials token=%s error=%s",
                "invalid_client"
                if isinstance(exc, InvalidClientError)
                else "TLS handshake failed",
                self.name,
                exc,
            )
            token, client_id = await self._request(retry=True)
        if "cnf" in token.claims and not self._bound_warned:
            # RFC 8705 §3 / RFC 9449: a bound token is useless without the key.
            self._bound_warned = True
            self.log.warning(
                "the token carries a cnf claim: the server bound it to tokend's "
                "certificate or key, and services reading the file cannot present "
                "that; turn certificate binding off for this client token=%s",
                self.name,
            )
        generation = self.status.generation + 1
        # Both clocks count the lifetime from the moment the request was sent.
        expiry = Deadline(
            self._sent_boot + token.lifetime, token.expires_at.timestamp()
        )
        current = _Current(token, expiry, client_id, generation)
        await self._publish(current)
        self.log.info(
            "token refreshed token=%s file=%s expires_at=%s lifetime=%.0fs "
            "fingerprint=%s generation=%d",
            self.name,
            self.config.path,
            format_time(token.expires_at),
            token.lifetime,
            token.fingerprint,
            generation,
            extra=event("refreshed", token),
        )
        return current

    async def _request(self, retry: bool) -> tuple[AccessToken, str]:
        try:
            url, auth = await self.authenticator.prepare(
                self.endpoint, self.clock.wall(), retry
            )
        finally:
            self.status.auth = self.authenticator.status()
        self._sent_boot = self.clock.boottime()
        sent_at = datetime.fromtimestamp(self.clock.wall(), UTC)
        self.status.requests += 1
        token = await self.endpoint.fetch(self.request, auth, sent_at, url)
        return token, auth.client_id

    async def _publish(self, current: _Current) -> None:
        """Write the token file, then its metadata and the state record.

        The token file's rename is the commit point: once it happened the
        token is published, and a failure of the side files is only a warning.

        Raises:
            FileSinkError: the token file could not be written (the old one
                stays as it was).
        """
        config = self.config
        metadata = describe_metadata(current.token, current.generation, None)
        record = StateRecord.of(
            config.name,
            self.fingerprint,
            current.token,
            current.generation,
            config.path,
            config.format,
            current.client_id,
        )
        data = render_token(current.token, config.format, metadata)

        def write_files() -> TokendError | None:
            """All three in one worker thread; the side files' error, if any."""
            self._write_file(config.path, data)  # raises: nothing published
            try:
                if config.metadata:
                    self._write_file(config.metadata_path, render_metadata(metadata))
                self.store.save(record)
            except TokendError as exc:
                return exc
            return None

        # Shielded: a shutdown waits for a started write to finish.
        with anyio.CancelScope(shield=True):
            side_error = await self.batches.run(write_files)
        if side_error is not None:
            self.log.warning(
                "token written, but not its metadata or state token=%s error=%s",
                self.name,
                side_error,
            )

    def _adopt(self, current: _Current) -> None:
        self._current = current
        status = self.status
        status.state = "fresh"
        status.fingerprint = current.token.fingerprint
        status.expires_at = format_time(current.token.expires_at)
        status.last_success = format_time(datetime.now(UTC))
        status.generation = current.generation
        status.last_error = status.last_error_kind = None

    async def _record_failure(self, exc: TokendError, delay: float) -> None:
        status = self.status
        status.failures += 1
        changed = (str(exc), exc.kind) != (status.last_error, status.last_error_kind)
        status.last_error, status.last_error_kind = str(exc), exc.kind
        retry_at = datetime.fromtimestamp(self.clock.wall() + delay, UTC)
        status.next_refresh = format_time(retry_at)
        # "expired" only for a token that was there and ran out; a token never
        # obtained since start is "failing".
        never_had = self._current is None and status.generation == 0
        status.state = "failing" if self._is_valid() or never_had else "expired"
        level = logging.ERROR if exc.kind != "retryable" else logging.WARNING
        if not changed:
            # A wait longer than any backoff is the spread over the validity
            # left (schedule.retry_after): say so, as a repeat would hide it.
            spread = exc.kind == "retryable" and delay > self.policy.retry_max
            level = logging.INFO if spread else logging.DEBUG
        self.log.log(
            level,
            "refresh failed token=%s kind=%s retry_in=%.0fs keeping=%s error=%s",
            self.name,
            exc.kind,
            delay,
            "valid token" if self._is_valid() else "nothing",
            exc,
            extra=event("refresh_failed", kind=exc.kind),
        )
        if changed and self._current is not None and self._is_valid():
            try:
                await self._write_metadata_error(str(exc))
            except TokendError as write_error:
                self.log.warning(
                    "metadata not updated token=%s error=%s", self.name, write_error
                )

    async def _write_metadata_error(self, message: str) -> None:
        config, current = self.config, self._current
        if not config.metadata or current is None:
            return
        metadata = describe_metadata(current.token, current.generation, message)
        data = render_metadata(metadata)
        with anyio.CancelScope(shield=True):
            await self.batches.run(lambda: self._write_file(config.metadata_path, data))

    def _write_file(self, path: Path, data: bytes) -> None:
        """Write one of this token's files with its mode, owner and readers."""
        config = self.config
        write_atomic(path, data, config.mode, config.uid, config.gid, config.acl)

    def _is_valid(self) -> bool:
        current = self._current
        return current is not None and current.expiry.remaining(self.clock) > 0

    def _refresh_deadline(self, token: AccessToken, first: bool = False) -> Deadline:
        assert self._current is not None
        lifetime = token.lifetime
        policy = self.policy
        delay = refresh_after(lifetime, policy, self.rng, first)
        remaining = self._current.expiry.remaining(self.clock)
        wait = delay - (lifetime - remaining)
        if wait < 0:
            # A restored token whose moment passed while no tokend ran, or
            # that a new window put in the past (an upgrade, a reload with
            # smaller shares): refreshed over the window's width, not all
            # such tokens at once, and the next moment comes from the first
            # window, so that they do not stay in step.
            width = (policy.max_share - policy.min_share) * lifetime
            wait = self.rng.uniform(
                0.0, max(0.0, min(remaining - policy.margin, width))
            )
            self._off_schedule = True
        due = Deadline.after(self.clock, wait)
        self.status.next_refresh = format_time(datetime.fromtimestamp(due.wall, UTC))
        return due

    def expires_at(self) -> float | None:
        """Wall-clock expiry (seconds since the epoch) of the published token."""
        current = self._current
        return current.token.expires_at.timestamp() if current else None

    def seconds_until_refresh(self) -> float | None:
        return None if self.next_due is None else self.next_due.remaining(self.clock)

    def stalled_for(self) -> float:
        """Seconds this keeper has been busy without a rest (for the watchdog).

        A sleeping keeper is waiting, not stuck; a busy one is bounded by its
        Vault and token request timeouts.
        """
        return 0.0 if self._nap is not None else self.clock.boottime() - self.heartbeat

    async def _sleep_until(self, due: Deadline) -> None:
        while True:
            await self._expire_if_due()
            pause = due.next_sleep(self.clock, self.wake_slice)
            if self._current is not None and self._is_valid():
                pause = min(
                    pause, self._current.expiry.next_sleep(self.clock, self.wake_slice)
                )
            if pause <= 0 or self._forced:
                self._forced = False
                self.heartbeat = self.clock.boottime()
                return
            try:
                with anyio.CancelScope() as self._nap:
                    await anyio.sleep(pause)
            finally:
                # Woken or not, loop and look at the clocks again.
                self._nap = None
                self.heartbeat = self.clock.boottime()

    async def _expire_if_due(self) -> None:
        current = self._current
        if current is None or current.expiry.remaining(self.clock) > 0:
            return
        self._current = None
        self.status.state = "expired"
        config = self.config
        if config.on_expiry == "remove":
            await self.remove_files()
        self.log.error(
            "token expired token=%s file=%s action=%s last_error=%s",
            self.name,
            config.path,
            "removed" if config.on_expiry == "remove" else "kept",
            self.status.last_error,
            extra=event("expired"),
        )

    async def remove_files(self) -> None:
        """Remove this token's files (the token left the configuration)."""
        config = self.config

        def remove() -> None:
            remove_file(config.path)
            remove_file(config.metadata_path)
            self.store.forget(config.name)

        with anyio.CancelScope(shield=True):
            await self.batches.run(remove)
