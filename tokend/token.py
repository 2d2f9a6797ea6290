"""The value of one access token, with no I/O."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import SecretStr


def fingerprint(secret: str) -> str:
    """Return a short, non-reversible identifier of a secret for logs."""
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


def decode_jwt_claims(value: str) -> dict[str, Any] | None:
    """Return the unverified claims of a JWS compact token, or None if not one.

    tokend never trusts these claims for security; it reads ``exp`` and ``aud``
    only to schedule refreshes and to catch a misconfigured audience early.
    """
    parts = value.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        return None
    return claims if isinstance(claims, dict) else None


def format_time(moment: datetime) -> str:
    """Format a moment as RFC 3339 in UTC with second precision."""
    utc = moment.astimezone(UTC)
    # Not strftime: a restart formats a few moments per token, and this is
    # three times quicker.
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % (  # noqa: UP031 (half an f-string's cost)
        utc.year,
        utc.month,
        utc.day,
        utc.hour,
        utc.minute,
        utc.second,
    )


def parse_time(text: str) -> datetime:
    """Parse a moment written by :func:`format_time`; raise ValueError if not one."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"time without a zone: {text!r}")
    return moment


@dataclass(frozen=True)
class AccessToken:
    """An access token and what tokend knows about it.

    ``issued_at`` is the wall-clock moment the request was sent, so that
    ``expires_at`` errs early rather than late.
    """

    value: SecretStr
    token_type: str
    issued_at: datetime
    lifetime: float
    scope: tuple[str, ...] = ()
    audience: str | None = None
    claims: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    # Computed once: status, metrics and every log line of the token ask again.
    @functools.cached_property
    def expires_at(self) -> datetime:
        return self.issued_at + timedelta(seconds=self.lifetime)

    @functools.cached_property
    def fingerprint(self) -> str:
        return fingerprint(self.value.get_secret_value())

    def remaining(self, now: datetime) -> float:
        """Seconds of validity left at ``now`` (negative once expired)."""
        return (self.expires_at - now).total_seconds()

    def __repr__(self) -> str:
        return (
            f"AccessToken(fingerprint={self.fingerprint!r}, "
            f"expires_at={format_time(self.expires_at)!r}, "
            f"audience={self.audience!r}, scope={self.scope!r})"
        )


@dataclass(frozen=True)
class ClientCredentials:
    """An OAuth client's id and secret, as read from Vault."""

    client_id: str
    client_secret: SecretStr
