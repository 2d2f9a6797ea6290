"""Configuration models: what each key means, its default and its checks.

The file layer (TOML, ``conf.d`` drop-ins, error messages naming files) lives
in :mod:`tokend.config_files`, and each token's effective settings (its own
keys over the defaults of ``[oauth]`` and ``[files]``) in :mod:`tokend.resolve`;
this module validates the merged mapping.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
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
# A Vault name ("orders-client") or a KV path ("tokend/orders-key"): no empty,
# "." or ".." segment, no leading slash, no spaces.
_NAME = r"(?!\.\.?(?:/|$))[A-Za-z0-9_.-]+"
SIGNING_KEY = re.compile(rf"^transit:{_NAME}$|^kv:{_NAME}(?:/{_NAME})*$")
CLIENT_CERTIFICATE = re.compile(rf"^pki:{_NAME}$")
PrintableId = Annotated[str, Field(min_length=1, pattern=r"^[!-~]+$")]
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
            check_url(("vault", "address"), self.address, self.allow_insecure_http)
        except KeyProblem as exc:
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

    # 50-60 %: a 1-h token is renewed with 24-30 min left, so a 15-min outage
    # of the OAuth server expires none and a fleet catches up within 2x its
    # steady rate (docs/reliability.md); 70-80 % did neither.
    min_share: Annotated[float, Field(gt=0, lt=1)] = 0.5
    max_share: Annotated[float, Field(gt=0, lt=1)] = 0.6
    # The window for a token obtained off schedule (see schedule.refresh_after);
    # a larger value than min_share acts as min_share.
    first_min_share: Annotated[float, Field(gt=0, lt=1)] = 0.05
    # Share of the remaining validity a retry may wait (see schedule.retry_after).
    retry_spread: Annotated[float, Field(ge=0, le=1)] = 1.0
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
    client_id: PrintableId | None = None
    credentials: str | None = Field(default=None, validate_default=True)
    audience: str | None = None
    scopes: Scopes | None = None
    path: Path | None = None
    signing_key: str | None = None
    client_certificate: str | None = None
    certificate_common_name: Annotated[str, Field(min_length=1)] | None = None
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


@dataclass(frozen=True, slots=True)
class TokenConfig:
    """The effective settings of one token, defaults resolved.

    Slots: with 31 attributes an instance dict would not share its keys
    (CPython 3.11 shares up to 29) and cost 1.5 KB a token.
    """

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
    # NAME.json beside the token file; derived from path.
    metadata_path: Path = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "metadata_path", self.path.with_name(self.path.name + ".json")
        )

    @property
    def credentials_source(self) -> str:
        """Where the client_id comes from, for the request's fingerprint."""
        return self.credentials or f"client_id:{self.client_id}"

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


class KeyProblem(ValueError):
    def __init__(self, loc: Location, message: str) -> None:
        super().__init__(message)
        self.loc = loc


def check_url(loc: Location, url: str, allow_http: bool) -> None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise KeyProblem(loc, f"not a valid URL ({exc}): {url!r}") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise KeyProblem(loc, f"expected an https:// URL, got {url!r}")
    # Every white space but " " is unprintable: one C call per URL.
    if port == 0 or " " in url or not url.isprintable():
        raise KeyProblem(loc, f"not a valid URL: {url!r}")
    if (
        parts.scheme == "http"
        and not allow_http
        and not is_loopback_host(parts.hostname)
    ):
        raise KeyProblem(
            loc,
            f"plain http is allowed only to loopback, got {url!r}; "
            "use https or set allow_insecure_http = true",
        )
