"""Each token's effective settings: its own keys over ``[oauth]`` and ``[files]``.

Problems are collected, not raised one at a time, so that a new user fixes a
file in one pass; each names the key in force (the token's own, or the
default it inherits).
"""

from __future__ import annotations

import grp
import pwd
import re
from pathlib import Path
from types import TracebackType
from typing import Any

from tokend.config import (
    CLIENT_CERTIFICATE,
    SECRET_CLIENT_AUTH,
    SIGNING_KEY,
    TOKEN_NAME,
    KeyProblem,
    Location,
    OAuthDefaults,
    Settings,
    TokenConfig,
    TokenSettings,
    check_url,
)

Problem = tuple[Location, str]


def resolve_tokens(settings: Settings) -> tuple[dict[str, TokenConfig], list[Problem]]:
    """Resolve each token's effective settings; return them and the problems.

    A problem is the key's location, e.g. ``("tokens", "orders", "mode")`` or
    ``("files", "group")`` when the bad value is a default, and a message.
    """
    tokens: dict[str, TokenConfig] = {}
    problems: list[Problem] = []
    paths: dict[Path, str] = {}
    # A thousand tokens inheriting [oauth]'s token_url check it once.
    good_urls: set[tuple[str, bool]] = set()
    for name, spec in settings.tokens.items():
        try:
            token = _resolve_token(name, spec, settings, good_urls)
        except _TokenProblems as exc:
            # A bad default shows up once, not once per token that inherits it.
            problems += [p for p in exc.problems if p not in problems]
            continue
        clash = paths.get(token.path) or paths.get(token.metadata_path)
        if clash is not None:
            problems.append(
                (
                    ("tokens", name, "path"),
                    f"{token.path} (or its .json metadata) is already used by "
                    f"token {clash!r}",
                )
            )
            continue
        paths[token.path] = paths[token.metadata_path] = name
        tokens[name] = token
    if not settings.tokens:
        problems.append((("tokens",), "no [tokens.NAME] table; nothing to do"))

    return tokens, problems


class _TokenProblems(ValueError):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(f"{len(problems)} problems")
        self.problems = problems


class _Checks:
    """Collects every problem of one token instead of stopping at the first.

    ``with checks.check():`` records a :class:`KeyProblem` raised inside and
    goes on. A plain context manager, not a ``@contextmanager`` generator:
    a thousand tokens enter it 14 000 times at every start.
    """

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def check(self) -> _Checks:
        return self

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if isinstance(exc, KeyProblem):
            self.problems.append((exc.loc, str(exc)))
            return True
        return False


def _resolve_token(
    name: str,
    spec: TokenSettings,
    settings: Settings,
    good_urls: set[tuple[str, bool]],
) -> TokenConfig:
    oauth, files = settings.oauth, settings.files
    checks = _Checks()

    def where(key: str, section: str) -> Location:
        """The location of the value in force: the token's own, or the default."""
        own = getattr(spec, key, None) is not None
        return ("tokens", name, key) if own else (section, key)

    def pick(key: str, default: Any) -> Any:
        value = getattr(spec, key)
        return default if value is None else value

    with checks.check():
        if not TOKEN_NAME.match(name) or name.endswith(".json"):
            raise KeyProblem(
                ("tokens", name),
                "a token name is 1-64 letters, digits, '.', '_' or '-', starts "
                "with a letter or digit and does not end in '.json'",
            )
    token_url, issuer, allow_http = _resolve_endpoint(
        name, spec, oauth, checks, good_urls
    )
    client_auth = pick("client_auth", oauth.client_auth)
    assertion_audience = pick("assertion_audience", oauth.assertion_audience)
    _check_client_auth(name, spec, client_auth, checks)
    with checks.check():
        if (
            client_auth == "private_key_jwt"
            and assertion_audience == "issuer"
            and issuer is None
        ):
            raise KeyProblem(
                where("assertion_audience", "oauth"),
                'assertion_audience = "issuer" needs issuer (not token_url), '
                "so that tokend knows the issuer's exact identifier",
            )
    with checks.check():
        if client_auth == "tls_client_auth" and any(
            url is not None and not url.startswith("https:")
            for url in (token_url, issuer)
        ):
            raise KeyProblem(
                where("client_auth", "oauth"),
                "tls_client_auth needs an https token_url or issuer: the "
                "client certificate is presented in the TLS handshake",
            )
    audience_param = pick("audience_param", oauth.audience_param)
    with checks.check():
        if spec.audience is None and audience_param != "none":
            raise KeyProblem(
                ("tokens", name, "audience"),
                f"missing; audience_param is {audience_param!r} "
                '(set audience_param = "none" to request without one)',
            )
    mode = pick("mode", files.mode)
    with checks.check():
        if mode & 0o004 and not pick(
            "allow_world_readable", files.allow_world_readable
        ):
            raise KeyProblem(
                where("mode", "files"),
                f"{mode:04o} lets every user read the token; "
                "set allow_world_readable = true if that is really meant",
            )
    directory = pick("directory", files.directory)
    path = spec.path if spec.path is not None else directory / name
    with checks.check():
        if not path.is_absolute():
            loc = ("tokens", name, "path") if spec.path else where("directory", "files")
            raise KeyProblem(loc, f"expected an absolute path, got {str(path)!r}")
    acl: tuple[str, ...] = ()
    with checks.check():
        acl = _reader_entries(pick("readers", files.readers), where("readers", "files"))
    uid = gid = None
    with checks.check():
        uid = _lookup_id(pick("owner", files.owner), where("owner", "files"), "user")
    with checks.check():
        gid = _lookup_id(pick("group", files.group), where("group", "files"), "group")
    if checks.problems:
        raise _TokenProblems(checks.problems)

    return TokenConfig(
        name=name,
        credentials=spec.credentials,
        audience=spec.audience,
        scopes=tuple(pick("scopes", oauth.scopes)),
        token_url=token_url,
        issuer=issuer,
        client_auth=client_auth,
        audience_param=audience_param,
        extra_params=tuple(sorted(pick("extra_params", oauth.extra_params).items())),
        timeout=pick("timeout", oauth.timeout),
        ca_file=pick("ca_file", oauth.ca_file),
        allow_insecure_http=allow_http,
        default_lifetime=pick("default_lifetime", oauth.default_lifetime),
        min_lifetime=pick("min_lifetime", oauth.min_lifetime),
        path=path,
        mode=mode,
        format=pick("format", files.format),
        uid=uid,
        gid=gid,
        metadata=pick("metadata", files.metadata),
        on_expiry=pick("on_expiry", files.on_expiry),
        acl=acl,
        client_id=spec.client_id,
        signing_key=spec.signing_key,
        signing_alg=pick("signing_alg", oauth.signing_alg),
        assertion_audience=assertion_audience,
        assertion_lifetime=pick("assertion_lifetime", oauth.assertion_lifetime),
        client_certificate=spec.client_certificate,
        certificate_common_name=spec.certificate_common_name,
        certificate_ttl=spec.certificate_ttl,
    )


def _check_client_auth(
    name: str, spec: TokenSettings, client_auth: str, checks: _Checks
) -> None:
    """Each client_auth method needs its own keys, and no other method's."""

    def problem(key: str, message: str) -> KeyProblem:
        return KeyProblem(("tokens", name, key), message)

    secret_based = client_auth in SECRET_CLIENT_AUTH
    with checks.check():
        if spec.client_id is not None and secret_based:
            raise problem(
                "client_id",
                f"{client_auth} reads client_id and client_secret from Vault: "
                "remove client_id and set credentials to their KV v2 path",
            )
        if spec.client_id is not None and spec.credentials is not None:
            raise problem(
                "client_id",
                "set either credentials (client_id read from Vault) or client_id, "
                "not both",
            )
    with checks.check():
        if client_auth == "private_key_jwt":
            if spec.signing_key is None:
                raise problem(
                    "signing_key",
                    'missing; private_key_jwt needs signing_key = "transit:KEY" '
                    '(Vault Transit) or "kv:PATH" (a PEM key in KV v2)',
                )
            if not SIGNING_KEY.match(spec.signing_key):
                raise problem(
                    "signing_key",
                    f'expected "transit:KEY" or "kv:PATH", got {spec.signing_key!r}',
                )
        else:
            for key in ("signing_alg", "assertion_audience", "assertion_lifetime"):
                if getattr(spec, key) is not None:
                    raise problem(
                        key,
                        f'used only with client_auth = "private_key_jwt", '
                        f"not {client_auth!r}",
                    )
        if client_auth != "private_key_jwt" and spec.signing_key is not None:
            raise problem(
                "signing_key",
                f'used only with client_auth = "private_key_jwt", not {client_auth!r}',
            )
    with checks.check():
        if client_auth == "tls_client_auth":
            if spec.client_certificate is None:
                raise problem(
                    "client_certificate",
                    'missing; tls_client_auth needs client_certificate = "pki:ROLE" '
                    "(issued by Vault's PKI engine)",
                )
            if not CLIENT_CERTIFICATE.match(spec.client_certificate):
                raise problem(
                    "client_certificate",
                    f'expected "pki:ROLE", got {spec.client_certificate!r}',
                )
        else:
            for key in (
                "client_certificate",
                "certificate_common_name",
                "certificate_ttl",
            ):
                if getattr(spec, key) is not None:
                    raise problem(
                        key,
                        f'used only with client_auth = "tls_client_auth", '
                        f"not {client_auth!r}",
                    )


def _reader_entries(readers: list[str], loc: Location) -> tuple[str, ...]:
    """Turn ``["user:alice", "group:billing"]`` into ACL entries by number."""
    entries = []
    for reader in readers:
        kind, _, name = reader.partition(":")
        if kind not in ("user", "group") or not name:
            raise KeyProblem(
                loc, f"expected 'user:NAME' or 'group:NAME', got {reader!r}"
            )
        number = _lookup_id(name, loc, kind)
        entries.append(f"{kind[0]}:{number}:r")
    return tuple(sorted(set(entries)))


def _resolve_endpoint(
    name: str,
    spec: TokenSettings,
    oauth: OAuthDefaults,
    checks: _Checks,
    good_urls: set[tuple[str, bool]],
) -> tuple[str | None, str | None, bool]:
    """The token's token_url or issuer (its own pair wins over [oauth]'s)."""
    if spec.token_url is not None or spec.issuer is not None:
        token_url, issuer = spec.token_url, spec.issuer
        url_loc: Location = ("tokens", name)
    else:
        token_url, issuer = oauth.token_url, oauth.issuer
        url_loc = ("oauth",)
    allow_http = (
        oauth.allow_insecure_http
        if spec.allow_insecure_http is None
        else spec.allow_insecure_http
    )
    with checks.check():
        if (token_url is None) == (issuer is None):
            raise KeyProblem(
                (*url_loc, "token_url"),
                "set exactly one of token_url or issuer (in the token or in [oauth])",
            )
    for key, url in (("token_url", token_url), ("issuer", issuer)):
        if url is not None and (url, allow_http) not in good_urls:
            with checks.check():
                check_url((*url_loc, key), url, allow_http)
                good_urls.add((url, allow_http))

    return token_url, issuer, allow_http


MAX_ID = 2**32 - 2


def _lookup_id(name: str | None, loc: Location, kind: str) -> int | None:
    """Return the uid or gid of a user or group given by name or number."""
    if name is None:
        return None
    if re.fullmatch(r"[0-9]+", name):
        number = int(name)
        if number > MAX_ID:
            raise KeyProblem(loc, f"{kind} id {name} is out of range")
        return number
    try:
        if kind == "user":
            return pwd.getpwnam(name).pw_uid
        return grp.getgrnam(name).gr_gid
    except (KeyError, ValueError):
        raise KeyProblem(loc, f"no {kind} {name!r} on this machine") from None
