"""Loading the configuration: what operators write and the problems they see."""

from __future__ import annotations

import grp
import os
import pwd
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokend.config_files import LoadedConfig, load_config
from tokend.errors import ConfigError

VAULT = """
[vault]
address = "https://vault.example.test:8200"
role_id = "tokend-role"
secret_id_file = "/run/credentials/tokend.service/secret_id"
"""
OAUTH = """
[oauth]
token_url = "https://auth.example.test/oauth2/token"
"""
ORDERS = """
[tokens.orders]
credentials = "tokend/orders-client"
audience = "https://orders.example.test"
"""
MINIMAL = VAULT + OAUTH + ORDERS


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the caller's TOKEND_* and VAULT_* variables out of every test."""
    for name in list(os.environ):
        if name.startswith(("TOKEND_", "VAULT_")):
            monkeypatch.delenv(name)


def write_config(directory: Path, text: str, **drop_ins: str) -> Path:
    """Write ``tokend.toml`` and ``conf.d/<key>.toml`` files; return the main one."""
    main = directory / "tokend.toml"
    main.write_text(text)
    if drop_ins:
        (directory / "conf.d").mkdir()
    for name, body in drop_ins.items():
        (directory / "conf.d" / f"{name}.toml").write_text(body)

    return main


def load_problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)

    return caught.value.problems


def problems_of(directory: Path, text: str, **drop_ins: str) -> list[str]:
    return load_problems(write_config(directory, text, **drop_ins))


def load_text(directory: Path, text: str, **drop_ins: str) -> LoadedConfig:
    return load_config(write_config(directory, text, **drop_ins))


def only_problem(problems: list[str]) -> str:
    assert len(problems) == 1, problems
    return problems[0]


def test_load_config_minimal_file_uses_documented_defaults(tmp_path: Path) -> None:
    loaded = load_text(tmp_path, MINIMAL)

    token = loaded.tokens["orders"]
    assert loaded.files == (tmp_path / "tokend.toml",)
    assert loaded.settings.vault.address == "https://vault.example.test:8200"
    assert loaded.settings.vault.kv_mount == "secret"
    assert token.credentials == "tokend/orders-client"
    assert token.audience == "https://orders.example.test"
    assert token.token_url == "https://auth.example.test/oauth2/token"
    assert token.issuer is None
    assert token.path == Path("/run/tokend/orders")
    assert token.metadata_path == Path("/run/tokend/orders.json")
    assert token.mode == 0o640
    assert token.format == "raw"
    assert token.client_auth == "client_secret_basic"
    assert token.audience_param == "resource"
    assert token.timeout == 10
    assert token.metadata is True
    assert token.on_expiry == "remove"
    assert token.scopes == ()
    assert (token.uid, token.gid) == (None, None)


def _user_name() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def _group_name() -> str:
    return grp.getgrgid(os.getegid()).gr_name


# (section, key, TOML default, TOML override, effective default, effective override)
OVERRIDABLE = [
    (
        "oauth",
        "token_url",
        '"https://a.example.test/token"',
        '"https://b.example.test/token"',
        "https://a.example.test/token",
        "https://b.example.test/token",
    ),
    (
        "oauth",
        "client_auth",
        '"client_secret_post"',
        '"client_secret_basic"',
        "client_secret_post",
        "client_secret_basic",
    ),
    ("oauth", "audience_param", '"audience"', '"resource"', "audience", "resource"),
    ("oauth", "scopes", '["a", "b"]', '["c"]', ("a", "b"), ("c",)),
    (
        "oauth",
        "extra_params",
        '{ tenant = "x" }',
        '{ tenant = "y", realm = "z" }',
        (("tenant", "x"),),
        (("realm", "z"), ("tenant", "y")),
    ),
    ("oauth", "timeout", "3", "7.5", 3.0, 7.5),
    (
        "oauth",
        "ca_file",
        # Any readable files do: the keys are checked to exist at load time.
        '"/etc/passwd"',
        '"/etc/hostname"',
        Path("/etc/passwd"),
        Path("/etc/hostname"),
    ),
    ("oauth", "default_lifetime", "600", "60", 600, 60),
    ("oauth", "min_lifetime", "30", "0", 30, 0),
    ("files", "mode", '"0600"', '"0640"', 0o600, 0o640),
    ("files", "format", '"json"', '"header"', "json", "header"),
    ("files", "metadata", "false", "true", False, True),
    ("files", "on_expiry", '"keep"', '"remove"', "keep", "remove"),
    ("files", "owner", '"4321"', f'"{_user_name()}"', 4321, os.geteuid()),
    ("files", "group", f'"{_group_name()}"', '"4321"', os.getegid(), 4321),
]


@pytest.mark.parametrize(
    ("section", "key", "default", "override", "inherited", "overridden"),
    OVERRIDABLE,
    ids=[f"{row[0]}.{row[1]}" for row in OVERRIDABLE],
)
def test_load_config_token_inherits_default_or_overrides_it(
    tmp_path: Path,
    section: str,
    key: str,
    default: str,
    override: str,
    inherited: Any,
    overridden: Any,
) -> None:
    """A token without the key takes the section's value; a token with it wins."""
    sections = {"oauth": OAUTH, "files": "[files]\n"}
    if key == "token_url":
        sections["oauth"] = "[oauth]\n"
    sections[section] += f"{key} = {default}\n"
    text = (
        VAULT
        + "".join(sections.values())
        + '[tokens.plain]\ncredentials = "p"\naudience = "https://a.test"\n'
        + '[tokens.custom]\ncredentials = "c"\naudience = "https://a.test"\n'
        + f"{key} = {override}\n"
    )

    tokens = load_text(tmp_path, text).tokens

    attribute = {"owner": "uid", "group": "gid"}.get(key, key)
    assert getattr(tokens["plain"], attribute) == inherited
    assert getattr(tokens["custom"], attribute) == overridden


def test_load_config_token_directory_and_path_override_files_directory(
    tmp_path: Path,
) -> None:
    text = (
        VAULT
        + OAUTH
        + '[files]\ndirectory = "/srv/tokens"\n'
        + '[tokens.a]\ncredentials = "a"\naudience = "https://a.test"\n'
        + '[tokens.b]\ncredentials = "b"\naudience = "https://a.test"\n'
        + 'directory = "/srv/other"\n'
        + '[tokens.c]\ncredentials = "c"\naudience = "https://a.test"\n'
        + 'path = "/srv/elsewhere/c-token"\n'
    )

    tokens = load_text(tmp_path, text).tokens

    assert tokens["a"].path == Path("/srv/tokens/a")
    assert tokens["b"].path == Path("/srv/other/b")
    assert tokens["c"].path == Path("/srv/elsewhere/c-token")
    assert tokens["c"].metadata_path == Path("/srv/elsewhere/c-token.json")


def test_load_config_token_issuer_replaces_default_token_url(tmp_path: Path) -> None:
    text = MINIMAL + 'issuer = "https://idp.example.test"\n'

    token = load_text(tmp_path, text).tokens["orders"]

    assert token.issuer == "https://idp.example.test"
    assert token.token_url is None


def test_load_config_scopes_may_be_a_space_separated_string(tmp_path: Path) -> None:
    """``scopes = "a b"`` means the same in [oauth] as in a token."""
    text = (
        VAULT
        + OAUTH
        + 'scopes = "read write"\n'
        + ORDERS
        + '[tokens.other]\ncredentials = "o"\naudience = "https://o.test"\n'
        + 'scopes = "admin audit"\n'
    )

    tokens = load_text(tmp_path, text).tokens

    assert tokens["orders"].scopes == ("read", "write")
    assert tokens["other"].scopes == ("admin", "audit")


def test_load_config_drop_ins_merge_in_name_order(tmp_path: Path) -> None:
    # Written out of order: the name decides, not the creation time.
    main = write_config(
        tmp_path,
        MINIMAL + "timeout = 5\n",
        **{
            "20-late": "[oauth]\ntimeout = 30\n",
            "10-early": '[oauth]\ntimeout = 20\nscopes = ["x"]\n'
            '[tokens.billing]\ncredentials = "b"\naudience = "https://b.test"\n',
        },
    )
    (tmp_path / "conf.d" / "30-ignored.toml.bak").write_text("not = [toml")
    (tmp_path / "conf.d" / "README").write_text("not toml either")

    loaded = load_config(main)

    assert loaded.files == (
        main,
        tmp_path / "conf.d" / "10-early.toml",
        tmp_path / "conf.d" / "20-late.toml",
    )
    assert set(loaded.tokens) == {"orders", "billing"}
    assert loaded.tokens["billing"].timeout == 30
    assert loaded.tokens["billing"].scopes == ("x",)
    # The token's own key still beats any file's [oauth] default.
    assert loaded.tokens["orders"].timeout == 5


def test_load_config_token_in_two_files_is_one_problem_naming_both(
    tmp_path: Path,
) -> None:
    problems = problems_of(tmp_path, MINIMAL, extra=ORDERS)

    problem = only_problem(problems)
    assert str(tmp_path / "tokend.toml") in problem
    assert str(tmp_path / "conf.d" / "extra.toml") in problem
    assert "orders" in problem


@pytest.mark.parametrize("where", ["main", "drop-in"])
def test_load_config_toml_syntax_error_names_the_file(
    tmp_path: Path, where: str
) -> None:
    broken = '[tokens.orders\ncredentials = "x"\n'
    if where == "main":
        problems = problems_of(tmp_path, broken)
        bad_file = tmp_path / "tokend.toml"
    else:
        problems = problems_of(tmp_path, MINIMAL, broken=broken)
        bad_file = tmp_path / "conf.d" / "broken.toml"

    problem = only_problem(problems)
    assert problem.startswith(f"{bad_file}: ")
    assert "TOML" in problem


def test_load_config_missing_file_is_named(tmp_path: Path) -> None:
    problem = only_problem(load_problems(tmp_path / "absent.toml"))

    assert str(tmp_path / "absent.toml") in problem


@pytest.mark.parametrize(
    ("snippet", "key"),
    [
        ("[oauth]\ntoken_uri = 'https://x.test/t'\n", "oauth.token_uri"),
        ("[vault]\nadress = 'https://v.test'\n", "vault.adress"),
        (
            "[tokens.extra]\ncredentials = 'c'\naudience = 'a'\nscope = ['x']\n",
            "tokens.extra.scope",
        ),
        ("[fils]\nmode = '0600'\n", "fils"),
    ],
)
def test_load_config_unknown_key_is_named(
    tmp_path: Path, snippet: str, key: str
) -> None:
    problems = problems_of(tmp_path, MINIMAL, typo=snippet)

    problem = only_problem(problems)
    assert f"{tmp_path / 'conf.d' / 'typo.toml'}: {key}: " in problem
    assert "unknown key" in problem


@pytest.mark.parametrize(
    "mode",
    [
        '"abc"',
        '"0666"',
        '"0660"',
        '"0740"',
        '"0644"',
        '"0700"',
        '"1640"',
        "640",
        "true",
    ],
)
def test_load_config_refuses_unsafe_or_malformed_mode(
    tmp_path: Path, mode: str
) -> None:
    problems = problems_of(tmp_path, MINIMAL + f"mode = {mode}\n")

    problem = only_problem(problems)
    assert problem.startswith(f"{tmp_path / 'tokend.toml'}: tokens.orders.mode: ")


@pytest.mark.parametrize(
    ("mode", "expected"),
    [('"0600"', 0o600), ('"440"', 0o440), ("0o640", 0o640), ('"0400"', 0o400)],
)
def test_load_config_accepts_octal_mode_spellings(
    tmp_path: Path, mode: str, expected: int
) -> None:
    token = load_text(tmp_path, MINIMAL + f"mode = {mode}\n").tokens["orders"]

    assert token.mode == expected


def test_load_config_world_readable_mode_needs_explicit_consent(
    tmp_path: Path,
) -> None:
    allowed = MINIMAL + 'mode = "0644"\nallow_world_readable = true\n'

    assert load_text(tmp_path, allowed).tokens["orders"].mode == 0o644
    # Consent to reading is not consent to writing.
    problems = problems_of(
        tmp_path, MINIMAL + 'mode = "0666"\nallow_world_readable = true\n'
    )
    assert "tokens.orders.mode" in only_problem(problems)


def test_load_config_world_readable_default_mode_is_refused(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, MINIMAL + '[files]\nmode = "0644"\n')

    assert "mode" in only_problem(problems)
    assert "0644" in only_problem(problems)


def test_load_config_refuses_unknown_format(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, MINIMAL + 'format = "yaml"\n')

    problem = only_problem(problems)
    assert "tokens.orders.format" in problem
    assert "raw" in problem


def test_load_config_token_without_credentials_is_named(tmp_path: Path) -> None:
    text = VAULT + OAUTH + '[tokens.orders]\naudience = "https://o.test"\n'

    problem = only_problem(problems_of(tmp_path, text))

    assert problem.startswith(f"{tmp_path / 'tokend.toml'}: tokens.orders.credentials")


@pytest.mark.parametrize("credentials", ['""', '"/"', '"tokend/../admin"'])
def test_load_config_refuses_credentials_path_outside_kv(
    tmp_path: Path, credentials: str
) -> None:
    text = VAULT + OAUTH + f"[tokens.orders]\ncredentials = {credentials}\n"

    problems = problems_of(tmp_path, text + 'audience = "https://o.test"\n')

    assert "tokens.orders.credentials" in only_problem(problems)


def test_load_config_token_without_audience_is_refused(tmp_path: Path) -> None:
    text = VAULT + OAUTH + '[tokens.orders]\ncredentials = "tokend/orders"\n'

    problem = only_problem(problems_of(tmp_path, text))

    assert "tokens.orders.audience" in problem
    assert 'audience_param = "none"' in problem


def test_load_config_audience_param_none_needs_no_audience(tmp_path: Path) -> None:
    text = (
        VAULT
        + OAUTH
        + 'audience_param = "none"\n[tokens.orders]\ncredentials = "tokend/orders"\n'
    )

    token = load_text(tmp_path, text).tokens["orders"]

    assert token.audience is None
    assert token.audience_param == "none"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (VAULT + OAUTH + 'issuer = "https://idp.test"\n' + ORDERS, "oauth.token_url"),
        (VAULT + ORDERS, "oauth.token_url"),
        (
            VAULT
            + ORDERS
            + 'token_url = "https://a.test/t"\nissuer = "https://idp.test"\n',
            "tokens.orders.token_url",
        ),
    ],
    ids=["both-in-oauth", "neither", "both-in-token"],
)
def test_load_config_needs_exactly_one_of_token_url_or_issuer(
    tmp_path: Path, text: str, key: str
) -> None:
    """The problem is reported where the conflicting values are."""
    problem = only_problem(problems_of(tmp_path, text))

    assert key in problem
    assert "issuer" in problem


@pytest.mark.parametrize("key", ["token_url", "issuer"])
def test_load_config_refuses_plain_http_to_remote_host(
    tmp_path: Path, key: str
) -> None:
    text = VAULT + ORDERS + f'{key} = "http://auth.example.test/token"\n'

    problem = only_problem(problems_of(tmp_path, text))

    assert f"tokens.orders.{key}" in problem
    assert "allow_insecure_http" in problem


@pytest.mark.parametrize(
    "url", ["http://localhost:8080/t", "http://127.0.0.1/t", "http://[::1]:9000/t"]
)
def test_load_config_allows_plain_http_to_loopback(tmp_path: Path, url: str) -> None:
    token = load_text(tmp_path, VAULT + ORDERS + f'token_url = "{url}"\n').tokens[
        "orders"
    ]

    assert token.token_url == url


@pytest.mark.parametrize("where", ["oauth", "token"])
def test_load_config_allow_insecure_http_permits_remote_http(
    tmp_path: Path, where: str
) -> None:
    url = "http://auth.example.test/token"
    flag = "allow_insecure_http = true\n"
    if where == "oauth":
        text = VAULT + f'[oauth]\ntoken_url = "{url}"\n{flag}' + ORDERS
    else:
        text = VAULT + ORDERS + f'token_url = "{url}"\n{flag}'

    token = load_text(tmp_path, text).tokens["orders"]

    assert token.token_url == url
    assert token.allow_insecure_http is True


@pytest.mark.parametrize(
    "url", ["ftp://auth.example.test/token", "auth.example.test/token", "https://"]
)
def test_load_config_refuses_non_http_token_url(tmp_path: Path, url: str) -> None:
    text = VAULT + ORDERS + f'token_url = "{url}"\n'

    assert "tokens.orders.token_url" in only_problem(problems_of(tmp_path, text))


@pytest.mark.parametrize(
    ("method", "key", "expected"),
    [
        ("private_key_jwt", "signing_key", "transit:KEY"),
        ("tls_client_auth", "client_certificate", "pki:ROLE"),
    ],
)
def test_load_config_key_based_client_auth_names_the_missing_key(
    tmp_path: Path, method: str, key: str, expected: str
) -> None:
    problem = only_problem(
        problems_of(tmp_path, MINIMAL + f'client_auth = "{method}"\n')
    )

    assert f"tokens.orders.{key}" in problem
    assert expected in problem


def test_load_config_unknown_client_auth_is_refused(tmp_path: Path) -> None:
    problem = only_problem(problems_of(tmp_path, MINIMAL + 'client_auth = "magic"\n'))

    assert "tokens.orders.client_auth" in problem


@pytest.mark.parametrize("name", ["../x", "a.json", ".hidden", "", "a/b", "x" * 65])
def test_load_config_refuses_bad_token_name(tmp_path: Path, name: str) -> None:
    text = (
        VAULT
        + OAUTH
        + f'[tokens."{name}"]\ncredentials = "c"\naudience = "https://a.test"\n'
    )

    problem = only_problem(problems_of(tmp_path, text))

    assert f"tokens.{name}: a token name is" in problem
    assert str(tmp_path / "tokend.toml") in problem


@pytest.mark.parametrize("name", ["orders", "Orders-2", "svc.v2", "a_b", "x" * 64])
def test_load_config_accepts_good_token_name(tmp_path: Path, name: str) -> None:
    text = (
        VAULT
        + OAUTH
        + f'[tokens."{name}"]\ncredentials = "c"\naudience = "https://a.test"\n'
    )

    assert load_text(tmp_path, text).tokens[name].path == Path("/run/tokend") / name


def _two_tokens_on_one_path() -> str:
    return (
        MINIMAL
        + '[tokens.billing]\ncredentials = "b"\naudience = "https://b.test"\n'
        + 'path = "/run/tokend/orders"\n'
    )


def test_load_config_two_tokens_with_one_path_are_refused(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, _two_tokens_on_one_path())

    assert problems
    assert all("billing" in problem for problem in problems)
    assert any("/run/tokend/orders" in p and "orders" in p for p in problems)


def test_load_config_two_tokens_with_one_path_is_one_problem(tmp_path: Path) -> None:
    """One mistake, one line: the clash of the metadata files follows from it."""
    problems = problems_of(tmp_path, _two_tokens_on_one_path())

    only_problem(problems)


def test_load_config_token_path_on_other_tokens_metadata_is_refused(
    tmp_path: Path,
) -> None:
    text = (
        MINIMAL
        + '[tokens.billing]\ncredentials = "b"\naudience = "https://b.test"\n'
        + 'path = "/run/tokend/orders.json"\n'
    )

    problem = only_problem(problems_of(tmp_path, text))

    assert "tokens.billing.path" in problem


def test_load_config_relative_token_path_is_refused(tmp_path: Path) -> None:
    problem = only_problem(problems_of(tmp_path, MINIMAL + 'path = "orders"\n'))

    assert "tokens.orders.path" in problem


def test_load_config_environment_overrides_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKEND_VAULT__ADDRESS", "https://vault-from-env.test:8200")
    monkeypatch.setenv("TOKEND_FILES__MODE", "0600")
    monkeypatch.setenv("TOKEND_TOKENS__ORDERS__FORMAT", "json")
    text = MINIMAL + 'format = "header"\n[files]\nmode = "0640"\n'

    loaded = load_text(tmp_path, text)

    assert loaded.settings.vault.address == "https://vault-from-env.test:8200"
    assert loaded.settings.vault.role_id == "tokend-role"
    assert loaded.tokens["orders"].mode == 0o600
    assert loaded.tokens["orders"].format == "json"
    assert loaded.tokens["orders"].audience == "https://orders.example.test"


def test_load_config_bad_environment_value_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file's value is fine; the line must point at the environment."""
    monkeypatch.setenv("TOKEND_FILES__MODE", "abc")
    main = write_config(tmp_path, MINIMAL + '[files]\nmode = "0640"\n')

    problem = only_problem(load_problems(main))

    assert "files.mode" in problem
    assert "environment" in problem or "TOKEND_FILES__MODE" in problem
    assert not problem.startswith(str(main))


@pytest.mark.parametrize(
    ("variable", "value"),
    [("TOKEND_TOKENS", "{"), ("TOKEND_OAUTH__SCOPES", "read write")],
)
def test_load_config_unparsable_environment_value_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)

    assert load_problems(write_config(tmp_path, MINIMAL))


def test_load_config_ignores_tokend_config_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TOKEND_CONFIG picks the file; it is not a configuration key itself."""
    main = write_config(tmp_path, MINIMAL)
    monkeypatch.setenv("TOKEND_CONFIG", str(main))

    assert set(load_config(main).tokens) == {"orders"}


def test_load_config_vault_addr_fills_missing_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_ADDR", "https://vault-addr.test:8200")
    text = MINIMAL.replace('address = "https://vault.example.test:8200"\n', "")

    loaded = load_text(tmp_path, text)

    assert loaded.settings.vault.address == "https://vault-addr.test:8200"


def test_load_config_vault_addr_loses_to_file_and_tokend_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_ADDR", "https://vault-addr.test:8200")
    main = write_config(tmp_path, MINIMAL)

    assert load_config(main).settings.vault.address == "https://vault.example.test:8200"
    monkeypatch.setenv("TOKEND_VAULT__ADDRESS", "https://tokend-var.test:8200")
    assert load_config(main).settings.vault.address == "https://tokend-var.test:8200"


def test_load_config_missing_vault_address_is_named(tmp_path: Path) -> None:
    text = MINIMAL.replace('address = "https://vault.example.test:8200"\n', "")

    problem = only_problem(problems_of(tmp_path, text))

    assert "vault.address" in problem


@pytest.mark.parametrize(
    ("lines", "needle"),
    [
        ('role_id_file = "/etc/tokend/role_id"\n', "role_id"),
        ("", "secret_id_file"),
    ],
    ids=["both-role-id-and-file", "no-secret-id-file"],
)
def test_load_config_approle_needs_one_role_id_and_secret_id_file(
    tmp_path: Path, lines: str, needle: str
) -> None:
    vault = VAULT + lines
    if needle == "secret_id_file":
        vault = vault.replace(
            'secret_id_file = "/run/credentials/tokend.service/secret_id"\n', ""
        )

    problem = only_problem(problems_of(tmp_path, vault + OAUTH + ORDERS))

    assert problem.startswith(f"{tmp_path / 'tokend.toml'}: vault")
    assert needle in problem


def test_load_config_approle_without_any_role_id_is_refused(tmp_path: Path) -> None:
    vault = VAULT.replace('role_id = "tokend-role"\n', "")

    problem = only_problem(problems_of(tmp_path, vault + OAUTH + ORDERS))

    assert "role_id" in problem


def test_load_config_approle_accepts_role_id_file(tmp_path: Path) -> None:
    vault = VAULT.replace(
        'role_id = "tokend-role"', 'role_id_file = "/etc/tokend/role_id"'
    )

    loaded = load_text(tmp_path, vault + OAUTH + ORDERS)

    assert loaded.settings.vault.role_id is None
    assert loaded.settings.vault.role_id_file == "/etc/tokend/role_id"


def test_load_config_token_auth_needs_no_approle_keys(tmp_path: Path) -> None:
    vault = '[vault]\naddress = "https://v.test"\nauth = "token"\n'

    loaded = load_text(tmp_path, vault + OAUTH + ORDERS)

    assert loaded.settings.vault.auth == "token"


def test_load_config_vault_secret_values_are_not_echoed(tmp_path: Path) -> None:
    """A problem in [vault] must not repeat what the operator typed there."""
    vault = VAULT.replace('"tokend-role"', "12345678")

    problem = only_problem(problems_of(tmp_path, vault + OAUTH + ORDERS))

    assert "vault.role_id" in problem
    assert "12345678" not in problem


@pytest.mark.parametrize("key", ["group", "owner"])
def test_load_config_unknown_user_or_group_names_the_key(
    tmp_path: Path, key: str
) -> None:
    text = MINIMAL + f'{key} = "no-such-{key}-on-this-host"\n'

    problem = only_problem(problems_of(tmp_path, text))

    assert f"tokens.orders.{key}" in problem
    assert f"no-such-{key}-on-this-host" in problem


@pytest.mark.parametrize(
    "line",
    [
        'token_url = "https://[oops/token"',
        'token_url = "https://ex\\uff03ample.test/token"',
        'group = "\u00b2"',
        'owner = "svc\\u0000"',
    ],
    ids=["unclosed-ipv6", "nfkc-netloc", "superscript-digit", "nul-in-name"],
)
def test_load_config_odd_value_is_a_problem_not_a_crash(
    tmp_path: Path, line: str
) -> None:
    problem = only_problem(problems_of(tmp_path, MINIMAL + line + "\n"))

    assert "tokens.orders." in problem


def test_load_config_without_tokens_says_nothing_to_do(tmp_path: Path) -> None:
    problem = only_problem(problems_of(tmp_path, VAULT + OAUTH))

    assert "tokens" in problem


BAD_CONFIGS = {
    "syntax": "[vault\n",
    "wrong-type": MINIMAL + "timeout = 'soon'\n",
    "bad-mode": MINIMAL + 'mode = "0777"\n',
    "bad-url": MINIMAL + 'token_url = "http://remote.test/t"\n',
    "section-not-table": "files = 3\n" + MINIMAL,
    "no-vault": OAUTH + ORDERS,
    "token-not-table": VAULT + OAUTH + "[tokens]\norders = 'x'\n",
}


@pytest.mark.parametrize("text", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_load_config_problem_is_one_line_naming_file(tmp_path: Path, text: str) -> None:
    problems = problems_of(tmp_path, text)

    assert problems
    for problem in problems:
        assert problem.startswith(f"{tmp_path / 'tokend.toml'}: ")
        assert "\n" not in problem
        assert "Traceback" not in problem
        assert "pydantic" not in problem


def test_load_config_reports_every_problem_of_a_file(tmp_path: Path) -> None:
    text = (
        VAULT
        + OAUTH
        + 'timeout = "soon"\n'
        + '[tokens.orders]\naudience = "https://o.test"\nmode = "abc"\nbogus = 1\n'
    )

    problems = problems_of(tmp_path, text)

    keys = {problem.split(": ")[1] for problem in problems}
    assert keys == {
        "oauth.timeout",
        "tokens.orders.credentials",
        "tokens.orders.mode",
        "tokens.orders.bogus",
    }


def test_load_config_reports_every_token_problem(tmp_path: Path) -> None:
    text = (
        VAULT
        + OAUTH
        + '[tokens.a]\ncredentials = "a"\n'
        + '[tokens.b]\ncredentials = "b"\naudience = "x"\n'
        + 'client_auth = "private_key_jwt"\n'
    )

    problems = problems_of(tmp_path, text)

    assert len(problems) == 2
    assert any("tokens.a.audience" in problem for problem in problems)
    assert any("tokens.b.signing_key" in problem for problem in problems)


def test_load_config_reports_token_problems_once_types_are_right(
    tmp_path: Path,
) -> None:
    """Checks across keys need valid defaults, so they come in a second round.

    This is documented in docs/configuration.md; both rounds name file and key.
    """
    token = '[tokens.orders]\ncredentials = "tokend/orders"\n'
    first = problems_of(tmp_path, VAULT + OAUTH + '[files]\nformat = "yaml"\n' + token)
    second = problems_of(tmp_path, VAULT + OAUTH + '[files]\nformat = "raw"\n' + token)

    assert [p for p in first if "files.format" in p] == first
    assert len(first) == 1
    assert len(second) == 1 and "tokens.orders.audience" in second[0]


def test_load_config_token_problem_names_the_drop_in_it_came_from(
    tmp_path: Path,
) -> None:
    """Also for token names with a dot, which look like key paths."""
    drop_in = '[tokens."svc.v2"]\ncredentials = "tokend/svc"\n'

    problem = only_problem(problems_of(tmp_path, MINIMAL, svc=drop_in))

    assert problem.startswith(f"{tmp_path / 'conf.d' / 'svc.toml'}: tokens.svc.v2.")


# A property test: whatever TOML an operator writes, the outcome is a config
# or a list of problems, never a crash.


def _toml_string(text: str) -> str:
    escaped = []
    for char in text:
        if char in '"\\':
            escaped.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\u{ord(char):04x}")
        else:
            escaped.append(char)

    return '"' + "".join(escaped) + '"'


def _toml_float(value: float) -> str:
    if value != value:
        return "nan"
    if value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    text = repr(value)

    return text if any(c in text for c in ".en") else text + ".0"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _toml_float(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    items = (f"{_toml_string(k)} = {_toml_value(v)}" for k, v in value.items())

    return "{" + ", ".join(items) + "}"


def dump_toml(document: dict[str, Any]) -> str:
    """Serialize a document as top-level keys with inline tables."""
    return "".join(
        f"{_toml_string(k)} = {_toml_value(v)}\n" for k, v in document.items()
    )


KNOWN_KEYS = sorted(
    {
        "vault", "oauth", "files", "refresh", "control", "daemon", "tokens",
        "address", "auth", "role_id", "role_id_file", "secret_id_file", "token_file",
        "kv_mount", "ca_file", "credentials", "audience", "scopes", "path", "mode",
        "format", "owner", "group", "token_url", "issuer", "client_auth",
        "audience_param", "extra_params", "timeout", "allow_insecure_http",
        "default_lifetime", "min_lifetime", "directory", "metadata", "on_expiry",
        "allow_world_readable", "min_share", "max_share", "margin", "orders",
    }
)  # fmt: skip
KNOWN_STRINGS = [
    "approle", "token", "raw", "json", "header", "none", "resource", "audience",
    "client_secret_basic", "private_key_jwt", "0640", "0644", "0600", "640",
    "https://auth.example.test/t", "http://127.0.0.1/t", "http://[", "https://[::1",
    "/run/tokend", "relative/dir", "root", "0", "..", "a.json", "remove", "keep",
]  # fmt: skip

keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(max_size=8))
# What URLs are made of, plus look-alikes that NFKC folds into delimiters.
URL_CHARACTERS = "az09.-:/?#@[]%\x00\uff03\uff0f"
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    st.sampled_from(KNOWN_STRINGS),
    st.text(max_size=10),
    # Unicode digits and control characters, where str.isdigit() and C
    # library calls disagree with what a user meant.
    st.text(st.characters(categories=["Nd", "No", "Cc"]), min_size=1, max_size=3),
    st.builds(
        lambda scheme, rest: scheme + rest,
        st.sampled_from(["http://", "https://"]),
        st.text(URL_CHARACTERS, max_size=10),
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)
    ),
    max_leaves=6,
)


def _base_document() -> dict[str, Any]:
    token = {"credentials": "c", "audience": "https://o.test"}
    return {
        "vault": {"address": "https://v.test", "role_id": "r", "secret_id_file": "/s"},
        "oauth": {"token_url": "https://auth.example.test/t"},
        "tokens": {"orders": dict(token), "other": dict(token)},
    }


SECTION_KEYS = {
    "vault": ["address", "auth", "role_id", "role_id_file", "secret_id_file"],
    "oauth": ["token_url", "issuer", "client_auth", "audience_param", "timeout"],
    "files": ["directory", "mode", "format", "owner", "group", "metadata"],
    "refresh": ["min_share", "max_share", "margin", "retry_max"],
    "control": ["socket", "group"],
}
TOKEN_KEYS = [
    "credentials", "audience", "scopes", "path", "mode", "format", "owner",
    "group", "token_url", "issuer", "client_auth", "extra_params", "directory",
    "audience_param", "allow_insecure_http", "allow_world_readable",
]  # fmt: skip
KEY_PATHS = [(s, k) for s, section in SECTION_KEYS.items() for k in section] + [
    ("tokens", "orders", key) for key in TOKEN_KEYS
]


def _replace(document: dict[str, Any], path: tuple[str, ...], value: Any) -> str:
    """Put ``value`` at ``path`` inside ``document``; return the document as TOML."""
    target = document
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value

    return dump_toml(document)


def load_any(text: str) -> None:
    """Load ``text``; a config or a ConfigError with problems are both fine."""
    with tempfile.TemporaryDirectory() as scratch:
        main = Path(scratch) / "tokend.toml"
        main.write_text(text)
        try:
            loaded = load_config(main)
        except ConfigError as exc:
            assert exc.problems
            assert all(isinstance(p, str) and p.strip() for p in exc.problems)
        else:
            assert isinstance(loaded, LoadedConfig)


@settings(max_examples=100, deadline=None, database=None)
@given(document=st.dictionaries(keys, values, max_size=6))
def test_load_config_any_toml_is_a_config_or_problems(document: dict[str, Any]) -> None:
    load_any(dump_toml(document))


@settings(max_examples=150, deadline=None, database=None)
@given(
    text=st.builds(
        _replace, st.builds(_base_document), st.sampled_from(KEY_PATHS), scalars
    )
)
def test_load_config_any_value_of_a_known_key_is_a_config_or_problems(
    text: str,
) -> None:
    """One key of a valid config replaced: this reaches the per-token checks."""
    load_any(text)


def test_dump_toml_round_trips_through_tomllib() -> None:
    """The property tests' serializer writes what tomllib reads back."""
    document = {"a b": {"x": [1, 2.5, 'q"\n\x00é'], "y": {"": True}}, "n": -3}

    assert tomllib.loads(dump_toml(document)) == document


@pytest.mark.parametrize("section", ["oauth", "vault"])
def test_load_config_missing_ca_file_is_a_problem(tmp_path: Path, section: str) -> None:
    """A CA bundle that is not there fails `tokend check`, not the first request."""
    missing = tmp_path / "no-ca.pem"
    text = MINIMAL.replace(f"[{section}]\n", f'[{section}]\nca_file = "{missing}"\n')

    problem = only_problem(problems_of(tmp_path, text))

    assert f"{section}.ca_file" in problem
    assert str(missing) in problem and "No such file" in problem


def test_load_config_reports_every_token_problem_at_once(tmp_path: Path) -> None:
    """A new user fixes a file in one pass: all cross-key problems come together."""
    text = (
        VAULT
        + '[files]\nmode = "0644"\n'
        + '[tokens.orders]\ncredentials = "a"\n'
        + '[tokens.billing]\ncredentials = "b"\naudience = "https://b"\n'
        + 'client_auth = "private_key_jwt"\n'
    )

    problems = problems_of(tmp_path, text)

    keys = sorted(problem.split(": ")[1] for problem in problems)
    assert keys == [
        "files.mode",
        "oauth.token_url",
        "tokens.billing.signing_key",
        "tokens.orders.audience",
    ]


def test_load_config_refuses_plain_http_to_a_remote_vault(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        "https://vault.example.test:8200", "http://vault.example.test:8200"
    )

    problem = only_problem(problems_of(tmp_path, text))

    assert "vault" in problem and "plain http is allowed only to loopback" in problem
    assert load_text(
        tmp_path, text.replace("[vault]\n", "[vault]\nallow_insecure_http = true\n")
    ).settings.vault.allow_insecure_http


def test_load_config_readers_become_acl_entries(tmp_path: Path) -> None:
    text = MINIMAL + 'readers = ["user:0", "group:0", "user:0"]\n'

    token = load_text(tmp_path, text).tokens["orders"]

    assert token.acl == ("g:0:r", "u:0:r")


@pytest.mark.parametrize(
    ("reader", "expected"),
    [
        ("alice", "expected 'user:NAME' or 'group:NAME'"),
        ("user:", "expected 'user:"),
        ("group:no-such-group-x", "no group 'no-such-group-x'"),
    ],
)
def test_load_config_bad_readers_are_problems(
    tmp_path: Path, reader: str, expected: str
) -> None:
    problem = only_problem(problems_of(tmp_path, MINIMAL + f'readers = ["{reader}"]\n'))

    assert "tokens.orders.readers" in problem and expected in problem
