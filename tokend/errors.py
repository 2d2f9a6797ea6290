"""The error tree of tokend, split by what the operator does next.

::

    TokendError
    ├── ConfigError            fix the configuration file
    ├── CredentialsError       fix what Vault holds or allows (policy, path, secret_id)
    │   ├── VaultDeniedError        fix the Vault policy (403)
    │   └── VaultUnavailableError   wait: Vault is sealed, down or unreachable
    ├── TokenEndpointError     the OAuth server refused or failed
    │   ├── EndpointUnavailableError  wait: network, timeout, 5xx, 429
    │   ├── InvalidClientError        fix the client_id / client_secret
    │   └── TokenRejectedError        the response is not a token we may publish
    └── FileSinkError          fix the file system (directory, permissions, space)

Every error carries a ``kind`` that decides the retry policy:
``retryable`` (back off quickly), ``credentials`` (re-read the credentials once,
then back off slowly) and ``persistent`` (back off slowly; a person must act).
Messages never contain a secret's value.
"""

from __future__ import annotations

from typing import Literal

ErrorKind = Literal["retryable", "credentials", "persistent"]


class TokendError(Exception):
    """Base class of every error tokend raises on purpose."""

    kind: ErrorKind = "persistent"

    def __init__(self, message: str, *, kind: ErrorKind | None = None) -> None:
        super().__init__(message)
        self.message = message
        if kind is not None:
            self.kind = kind

    def __str__(self) -> str:
        return self.message


class ConfigError(TokendError):
    """The configuration is invalid; ``problems`` lists one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class CredentialsError(TokendError):
    """Vault refused, or does not hold, what a token needs."""

    kind: ErrorKind = "persistent"


class VaultDeniedError(CredentialsError):
    """Vault answered 403: the policy does not allow it, or the login ended."""


class VaultUnavailableError(CredentialsError):
    """Vault is sealed, down or unreachable; waiting may help."""

    kind: ErrorKind = "retryable"


class TokenEndpointError(TokendError):
    """The token endpoint answered with an error or not at all.

    ``error`` and ``description`` hold the RFC 6749 §5.2 fields when the
    server sent them; ``retry_after`` is in seconds when the server asked.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: ErrorKind | None = None,
        error: str | None = None,
        description: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, kind=kind)
        self.error = error
        self.description = description
        self.status = status
        self.retry_after = retry_after


class EndpointUnavailableError(TokenEndpointError):
    """Network failure, timeout, 5xx, 429 or ``temporarily_unavailable``.

    ``handshake`` marks a failed TLS handshake, which with mutual TLS may be
    the server refusing the client certificate.
    """

    kind: ErrorKind = "retryable"
    handshake: bool = False


class InvalidClientError(TokenEndpointError):
    """The server rejected the client's credentials (``invalid_client``)."""

    kind: ErrorKind = "credentials"


class TokenRejectedError(TokenEndpointError):
    """The server's answer is not a token tokend may publish."""

    kind: ErrorKind = "persistent"


class FileSinkError(TokendError):
    """A token file or its directory cannot be written safely."""

    kind: ErrorKind = "retryable"
