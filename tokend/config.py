"""Configuration models: what each key means, its default and its checks.

The file layer (TOML, ``conf.d`` drop-ins, error messages naming files) lives
in :mod:`tokend.config_files`; this module validates the merged mapping and
resolves every token's effective settings (its own keys over the defaults of
``[oauth]`` and ``[files]``).
"""

from __future__ import annotations

import grp
import pwd
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from tokend.http import is_loopback_host

ClientAuth = Literal[
    "client_secret_basic", "client_secret_post", "private_key_jwt", "tls_client_auth"
]
SECRET_CLIENT_AUTH = ("client_secret_basic", "client_secret_post")
VaultAuth = Literal["approle", "token", "cert", "jwt"]
# JWS algorithms for private_key_jwt (RFC 7518 §3.1, RFC 8037 for EdDSA).
SigningAlg = Literal[
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
]
AssertionAudience = Literal["token_url", "issuer"]
SIGNING_KEY = re.compile(r"^(transit):([A-Za-z0-9_.-]+)$|^(kv):([^\s]+)$")
CLIENT_CERTIFICATE = re.compile(r"^(pki):([A-Za-z0-9_.-]+)$")
AudienceParam = Literal["resource", "audience", "none"]
FileFormat = Literal["raw", "header", "json"]
OnExpiry = Literal["remove", "keep"]

TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
WIDEST_MODE = 0o640


def parse_mode(value: Any) -> int:
    """Accept ``"0640"``, ``"640"`` or a TOML integer such as ``0o640``."""
    if isinstance(value, bool):
        raise ValueError('expected an octal mode such as "0640"')
    if isinstance(value, int):
        mode = value
    elif isinstance(value, str) and re.fullmatch(r"0?o?[0-7]{3,4}", value.strip()):
        mode = int(value.strip().replace("o", ""), 8)
    else:
        raise ValueError(f'expected an octal mode such as "0640", got {value!r}')
    if not 0 <= mode <= 0o777:
        raise ValueError(f"mode {mode:#o} has bits beyond 0777")
    if mode & 0o400 == 0:
        raise ValueError(f"mode {mode:04o} does not let the owner read the file")
    if mode & 0o133:
        raise ValueError(
            f"mode {mode:04o} grants write or execute beyond the owner; "
            "token files are data, at most 0640 (0644 with allow_world_readable)"
        )
    return mode


Mode = Annotated[int, BeforeValidator(parse_mode)]
# A list of scopes, or one space-separated string as in the OAuth `scope` field.
Scopes = Annotated[
    list[str], BeforeValidator(lambda v: v.split() if isinstance(v, str) else v)
]


def check_readable_file(path: Path) -> Path:
    """A CA bundle must exist and be readable now, not at the first request."""
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    return path


ReadableFile = Annotated[Path, AfterValidator(check_readable_file)]
Seconds = Annotated[float, Field(gt=0, le=86400)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VaultSettings(Section):
    address: str
    auth: VaultAuth = "approle"
    approle_mount: str = "approle"
    role_id: str | None = None
    role_id_file: str | None = None
    secret_id_file: str | None = None
    secret_id_wrapped: bool = False
    token_file: str | None = None
    cert_mount: str = "cert"
    cert_role: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    jwt_mount: str = "jwt"
    jwt_role: str | None = None
    jwt_file: str | None = None
    kv_mount: str = "secret"
    transit_mount: str = "transit"
    pki_mount: str = "pki"
    client_id_key: str = "client_id"
    client_secret_key: str = "client_secret"
    ca_file: ReadableFile | None = None
    namespace: str | None = None
    timeout: Seconds = 10.0
    allow_insecure_http: bool = False

    @model_validator(mode="after")
    def _check_address(self) -> VaultSettings:
        try:
            _check_url(("vault", "address"), self.address, self.allow_insecure_http)
        except _KeyProblem as exc:
            raise ValueError(str(exc)) from None
        return self

    @model_validator(mode="after")
    def _check_auth(self) -> VaultSettings:
        if self.auth == "approle":
            if (self.role_id is None) == (self.role_id_file is None):
                raise ValueError(
                    'auth = "approle" needs exactly one of role_id or role_id_file'
                )
            if self.secret_id_file is None:
                raise ValueError('auth = "approle" needs secret_id_file')
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise ValueError(
                "set both client_cert_file and client_key_file, or neither"
            )
        if self.auth == "cert" and self.client_cert_file is None:
            raise ValueError(
                'auth = "cert" needs client_cert_file and client_key_file '
                "(the TLS client certificate Vault's cert method checks)"
            )
        if self.auth == "jwt" and (self.jwt_role is None or self.jwt_file is None):
            raise ValueError(
                'auth = "jwt" needs jwt_role and jwt_file (the file holding the '
                "platform's identity token)"
            )
        return self


class OAuthDefaults(Section):
    """Keys of ``[oauth]``; every token may override each one."""

    token_url: str | None = None
    issuer: str | None = None
    client_auth: ClientAuth = "client_secret_basic"
    audience_param: AudienceParam = "resource"
    scopes: Scopes = Field(default_factory=list)
    extra_params: dict[str, str] = Field(default_factory=dict)
    timeout: Seconds = 10.0
    ca_file: ReadableFile | None = None
    allow_insecure_http: bool = False

    default_lifetime: Annotated[int, Field(ge=1, le=31_536_000)] = 300
    min_lifetime: Annotated[int, Field(ge=0, le=86400)] = 10
    # private_key_jwt (RFC 7523): the assertion's algorithm, audience and life.
    signing_alg: SigningAlg | None = None
    assertion_audience: AssertionAudience = "token_url"
    assertion_lifetime: Annotated[int, Field(ge=5, le=600)] = 60


class FilesDefaults(Section):
    """Keys of ``[files]``; every token may override each one."""

    directory: Path = Path("/run/tokend")
    mode: Mode = WIDEST_MODE
    format: FileFormat = "raw"
    owner: str | None = None
    group: str | None = None
    metadata: bool = True
    on_expiry: OnExpiry = "remove"
    allow_world_readable: bool = False
    readers: list[str] = Field(default_factory=list)


class RefreshSettings(Section):
    """When to refresh and how to back off; shares are of the token lifetime."""

    min_share: Annotated[float, Field(gt=0, lt=1)] = 0.7
    max_share: Annotated[float, Field(gt=0, lt=1)] = 0.8
    margin: Annotated[float, Field(ge=0, le=3600)] = 10.0
    retry_initial: Annotated[float, Field(gt=0, le=600)] = 1.0
    retry_max: Annotated[float, Field(gt=0, le=3600)] = 120.0
    retry_slow: Annotated[float, Field(gt=0, le=86400)] = 600.0

    @model_validator(mode="after")
    def _check_shares(self) -> RefreshSettings:
        if self.min_share > self.max_share:
            raise ValueError("min_share must not exceed max_share")
        if self.retry_initial > self.retry_max:
            raise ValueError("retry_initial must not exceed retry_max")
        return self


class ControlSettings(Section):
    socket: Path | None = None  # default: files.directory / control.sock
    group: str | None = "tokend"


class DaemonSettings(Section):
    startup_timeout: Seconds = 30.0
    state_directory: Path | None = None


class MetricsSettings(Section):
    """``listen = "127.0.0.1:9464"`` serves /metrics over TCP for scrapers."""

    listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"expected HOST:PORT such as 127.0.0.1:9464, got {value!r}"
            )
        return value


class TokenSettings(Section):
    """One ``[tokens.NAME]`` table. ``None`` means: inherit the default."""

    # client_id comes first: the credentials check looks at it.
    client_id: str | None = None
    credentials: str | None = Field(default=None, validate_default=True)
    audience: str | None = None
    scopes: Scopes | None = None
    path: Path | None = None
    signing_key: str | None = None
    client_certificate: str | None = None
    certificate_common_name: str | None = None
    certificate_ttl: Annotated[int, Field(ge=60, le=31_536_000)] | None = None
    # overrides of [oauth]
    token_url: str | None = None
    issuer: str | None = None
    client_auth: ClientAuth | None = None
    audience_param: AudienceParam | None = None
    extra_params: dict[str, str] | None = None
    timeout: Seconds | None = None
    ca_file: ReadableFile | None = None
    allow_insecure_http: bool | None = None
    default_lifetime: Annotated[int, Field(ge=1, le=31_536_000)] | None = None
    min_lifetime: Annotated[int, Field(ge=0, le=86400)] | None = None
    signing_alg: SigningAlg | None = None
    assertion_audience: AssertionAudience | None = None
    assertion_lifetime: Annotated[int, Field(ge=5, le=600)] | None = None
    # overrides of [files]
    directory: Path | None = None
    mode: Mode | None = None
    format: FileFormat | None = None
    owner: str | None = None
    group: str | None = None
    metadata: bool | None = None
    on_expiry: OnExpiry | None = None
    allow_world_readable: bool | None = None
    readers: list[str] | None = None

    @field_validator("credentials")
    @classmethod
    def _check_credentials(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            if info.data.get("client_id") is None:
                raise ValueError(
                    "missing; expected the KV v2 path holding client_id and "
                    "client_secret (or client_id itself, with private_key_jwt "
                    "or tls_client_auth)"
                )
            return None
        if not value.strip("/") or ".." in value.split("/"):
            raise ValueError("expected a KV v2 path such as 'tokend/orders-client'")
        return value.strip("/")


@dataclass(frozen=True)
class TokenConfig:
    """The effective settings of one token, defaults resolved."""

    name: str
    credentials: str | None  # KV v2 path; None when client_id is given inline
    audience: str | None
    scopes: tuple[str, ...]
    token_url: str | None
    issuer: str | None
    client_auth: str
    audience_param: str
    extra_params: tuple[tuple[str, str], ...]
    timeout: float
    ca_file: Path | None
    allow_insecure_http: bool
    default_lifetime: int
    min_lifetime: int
    path: Path
    mode: int
    format: str
    uid: int | None
    gid: int | None
    metadata: bool
    on_expiry: str
    acl: tuple[str, ...] = ()  # setfacl entries such as "u:1001:r"
    client_id: str | None = None  # inline, for private_key_jwt or tls_client_auth
    signing_key: str | None = None  # "transit:KEY" or "kv:PATH"
    signing_alg: str | None = None
    assertion_audience: str = "token_url"
    assertion_lifetime: int = 60
    client_certificate: str | None = None  # "pki:ROLE"
    certificate_common_name: str | None = None
    certificate_ttl: int | None = None

    @property
    def credentials_source(self) -> str:
        """Where the client_id comes from, for the request's fingerprint."""
        return self.credentials or f"client_id:{self.client_id}"

    @property
    def metadata_path(self) -> Path:
        return self.path.with_name(self.path.name + ".json")

    @property
    def endpoint_key(self) -> tuple[object, ...]:
        """Tokens with equal keys share one HTTP session and connection pool."""
        return (
            self.token_url,
            self.issuer,
            self.ca_file,
            self.timeout,
            self.allow_insecure_http,
        )


class Settings(BaseSettings):
    """The whole configuration; environment ``TOKEND_<SECTION>__<KEY>`` wins."""

    model_config = SettingsConfigDict(
        env_prefix="TOKEND_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    vault: VaultSettings
    oauth: OAuthDefaults = Field(default_factory=OAuthDefaults)
    files: FilesDefaults = Field(default_factory=FilesDefaults)
    refresh: RefreshSettings = Field(default_factory=RefreshSettings)
    control: ControlSettings = Field(default_factory=ControlSettings)
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    tokens: dict[str, TokenSettings] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier sources win: the environment overrides the files.
        return (env_settings, init_settings)

    @property
    def control_socket(self) -> Path:
        return self.control.socket or self.files.directory / "control.sock"

    @property
    def state_directory(self) -> Path:
        return self.daemon.state_directory or self.files.directory / ".state"


Location = tuple[str, ...]
Problem = tuple[Location, str]


def resolve_tokens(settings: Settings) -> tuple[dict[str, TokenConfig], list[Problem]]:
    """Resolve each token's effective settings; return them and the problems.

    A problem is the key's location, e.g. ``("tokens", "orders", "mode")`` or
    ``("files", "group")`` when the bad value is a default, and a message.
    """
    tokens: dict[str, TokenConfig] = {}
    problems: list[Problem] = []
    paths: dict[Path, str] = {}
    for name, spec in settings.tokens.items():
        try:
            token = _resolve_token(name, spec, settings)
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


class _KeyProblem(ValueError):
    def __init__(self, loc: Location, message: str) -> None:
        super().__init__(message)
        self.loc = loc


class _TokenProblems(ValueError):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(f"{len(problems)} problems")
        self.problems = problems


class _Checks:
    """Collects every problem of one token instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    @contextmanager
    def check(self) -> Iterator[None]:
        try:
            yield
        except _KeyProblem as exc:
            self.problems.append((exc.loc, str(exc)))


def _resolve_token(name: str, spec: TokenSettings, settings: Settings) -> TokenConfig:
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
            raise _KeyProblem(
                ("tokens", name),
                "a token name is 1-64 letters, digits, '.', '_' or '-', starts "
                "with a letter or digit and does not end in '.json'",
            )
    token_url, issuer, allow_http = _resolve_endpoint(name, spec, oauth, checks)
    client_auth = pick("client_auth", oauth.client_auth)
    assertion_audience = pick("assertion_audience", oauth.assertion_audience)
    _check_client_auth(name, spec, client_auth, checks)
    with checks.check():
        if (
            client_auth == "private_key_jwt"
            and assertion_audience == "issuer"
            and issuer is None
        ):
            raise _KeyProblem(
                where("assertion_audience", "oauth"),
                'assertion_audience = "issuer" needs issuer (not token_url), '
                "so that tokend knows the issuer's exact identifier",
            )
    with checks.check():
        if client_auth == "tls_client_auth" and any(
            url is not None and not url.startswith("https:")
            for url in (token_url, issuer)
        ):
            raise _KeyProblem(
                where("client_auth", "oauth"),
                "tls_client_auth needs an https token_url or issuer: the "
                "client certificate is presented in the TLS handshake",
            )
    audience_param = pick("audience_param", oauth.audience_param)
    with checks.check():
        if spec.audience is None and audience_param != "none":
            raise _KeyProblem(
                ("tokens", name, "audience"),
                f"missing; audience_param is {audience_param!r} "
                '(set audience_param = "none" to request without one)',
            )
    mode = pick("mode", files.mode)
    with checks.check():
        if mode & 0o004 and not pick(
            "allow_world_readable", files.allow_world_readable
        ):
            raise _KeyProblem(
                where("mode", "files"),
                f"{mode:04o} lets every user read the token; "
                "set allow_world_readable = true if that is really meant",
            )
    directory = pick("directory", files.directory)
    path = spec.path if spec.path is not None else directory / name
    with checks.check():
        if not path.is_absolute():
            loc = ("tokens", name, "path") if spec.path else where("directory", "files")
            raise _KeyProblem(loc, f"expected an absolute path, got {str(path)!r}")
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

    def problem(key: str, message: str) -> _KeyProblem:
        return _KeyProblem(("tokens", name, key), message)

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
            if not SIGNING_KEY.match(spec.signing_key) or ".." in spec.signing_key:
                raise problem(
                    "signing_key",
                    f'expected "transit:KEY" or "kv:PATH", got {spec.signing_key!r}',
                )
        elif spec.signing_key is not None:
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
            raise _KeyProblem(
                loc, f"expected 'user:NAME' or 'group:NAME', got {reader!r}"
            )
        number = _lookup_id(name, loc, kind)
        entries.append(f"{kind[0]}:{number}:r")
    return tuple(sorted(set(entries)))


def _resolve_endpoint(
    name: str, spec: TokenSettings, oauth: OAuthDefaults, checks: _Checks
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
            raise _KeyProblem(
                (*url_loc, "token_url"),
                "set exactly one of token_url or issuer (in the token or in [oauth])",
            )
    for key, url in (("token_url", token_url), ("issuer", issuer)):
        if url is not None:
            with checks.check():
                _check_url((*url_loc, key), url, allow_http)

    return token_url, issuer, allow_http


def _check_url(loc: Location, url: str, allow_http: bool) -> None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _KeyProblem(loc, f"not a valid URL ({exc}): {url!r}") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise _KeyProblem(loc, f"expected an https:// URL, got {url!r}")
    if port == 0 or any(not c.isprintable() or c.isspace() for c in url):
        raise _KeyProblem(loc, f"not a valid URL: {url!r}")
    if (
        parts.scheme == "http"
        and not allow_http
        and not is_loopback_host(parts.hostname)
    ):
        raise _KeyProblem(
            loc,
            f"plain http is allowed only to loopback, got {url!r}; "
            "use https or set allow_insecure_http = true",
        )


MAX_ID = 2**32 - 2


def _lookup_id(name: str | None, loc: Location, kind: str) -> int | None:
    """Return the uid or gid of a user or group given by name or number."""
    if name is None:
        return None
    if re.fullmatch(r"[0-9]+", name):
        number = int(name)
        if number > MAX_ID:
            raise _KeyProblem(loc, f"{kind} id {name} is out of range")
        return number
    try:
        if kind == "user":
            return pwd.getpwnam(name).pw_uid
        return grp.getgrnam(name).gr_gid
    except (KeyError, ValueError):
        raise _KeyProblem(loc, f"no {kind} {name!r} on this machine") from None
