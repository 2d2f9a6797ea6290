"""Client authentication and Vault login settings: each mistake is named."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tokend.config_files import load_config
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
TOKEN = """
[tokens.orders]
audience = "https://orders.example.test"
"""


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("TOKEND_", "VAULT_")):
            monkeypatch.delenv(name)


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "tokend.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def only(tmp_path: Path, text: str) -> str:
    found = problems(tmp_path, text)
    assert len(found) == 1, found
    return found[0]


def test_transit_signing_key_with_inline_client_id_needs_no_credentials(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tokend.toml"
    path.write_text(
        VAULT
        + OAUTH
        + TOKEN
        + 'client_auth = "private_key_jwt"\nclient_id = "orders-client"\n'
        + 'signing_key = "transit:orders-client"\nsigning_alg = "PS256"\n'
    )

    token = load_config(path).tokens["orders"]

    assert token.credentials is None and token.client_id == "orders-client"
    assert token.signing_key == "transit:orders-client"
    assert (token.signing_alg, token.assertion_lifetime) == ("PS256", 60)
    assert token.assertion_audience == "token_url"


def test_assertion_settings_inherit_from_oauth(tmp_path: Path) -> None:
    path = tmp_path / "tokend.toml"
    path.write_text(
        VAULT
        + OAUTH
        + 'client_auth = "private_key_jwt"\nassertion_lifetime = 30\n'
        + TOKEN
        + 'credentials = "tokend/orders"\nsigning_key = "kv:tokend/orders-key"\n'
    )

    token = load_config(path).tokens["orders"]

    assert token.client_auth == "private_key_jwt"
    assert (
        token.assertion_lifetime == 30 and token.signing_key == "kv:tokend/orders-key"
    )


def test_a_token_without_credentials_or_client_id_is_named(tmp_path: Path) -> None:
    problem = only(tmp_path, VAULT + OAUTH + TOKEN)

    assert "tokens.orders.credentials" in problem and "missing" in problem


def test_client_id_is_refused_with_a_client_secret(tmp_path: Path) -> None:
    problem = only(tmp_path, VAULT + OAUTH + TOKEN + 'client_id = "orders-client"\n')

    assert "tokens.orders.client_id" in problem
    assert "client_secret_basic reads client_id and client_secret from Vault" in problem


def test_client_id_and_credentials_together_are_refused(tmp_path: Path) -> None:
    text = (
        VAULT
        + OAUTH
        + TOKEN
        + 'client_auth = "private_key_jwt"\nsigning_key = "transit:k"\n'
        + 'client_id = "c"\ncredentials = "tokend/orders"\n'
    )

    assert "not both" in only(tmp_path, text)


@pytest.mark.parametrize(
    "value", ["transit:", "vault:k", "transit:a/b", "kv:../x", "k"]
)
def test_a_malformed_signing_key_is_named(tmp_path: Path, value: str) -> None:
    text = (
        VAULT
        + OAUTH
        + TOKEN
        + f'client_auth = "private_key_jwt"\nclient_id = "c"\nsigning_key = "{value}"\n'
    )

    problem = only(tmp_path, text)

    assert "tokens.orders.signing_key" in problem
    assert '"transit:KEY" or "kv:PATH"' in problem


def test_signing_key_without_private_key_jwt_is_refused(tmp_path: Path) -> None:
    text = VAULT + OAUTH + TOKEN + 'credentials = "c"\nsigning_key = "transit:k"\n'

    problem = only(tmp_path, text)

    assert "tokens.orders.signing_key" in problem and "private_key_jwt" in problem


def test_an_unknown_signing_alg_is_named(tmp_path: Path) -> None:
    text = (
        VAULT
        + OAUTH
        + TOKEN
        + 'client_auth = "private_key_jwt"\nclient_id = "c"\n'
        + 'signing_key = "transit:k"\nsigning_alg = "HS256"\n'
    )

    problem = only(tmp_path, text)

    assert "tokens.orders.signing_alg" in problem and "RS256" in problem


def test_issuer_audience_needs_an_issuer(tmp_path: Path) -> None:
    text = (
        VAULT
        + OAUTH
        + TOKEN
        + 'client_auth = "private_key_jwt"\nclient_id = "c"\n'
        + 'signing_key = "transit:k"\nassertion_audience = "issuer"\n'
    )

    problem = only(tmp_path, text)

    assert "tokens.orders.assertion_audience" in problem and "needs issuer" in problem


def test_tls_client_auth_needs_https(tmp_path: Path) -> None:
    text = (
        VAULT
        + '[oauth]\ntoken_url = "http://127.0.0.1:8080/token"\n'
        + TOKEN
        + 'client_auth = "tls_client_auth"\nclient_id = "c"\n'
        + 'client_certificate = "pki:orders"\n'
    )

    problem = only(tmp_path, text)

    assert "tokens.orders.client_auth" in problem and "https" in problem


@pytest.mark.parametrize("value", ["orders", "pki:", "pki:a/b", "kv:x"])
def test_a_malformed_client_certificate_is_named(tmp_path: Path, value: str) -> None:
    text = (
        VAULT
        + OAUTH
        + TOKEN
        + 'client_auth = "tls_client_auth"\nclient_id = "c"\n'
        + f'client_certificate = "{value}"\n'
    )

    problem = only(tmp_path, text)

    assert "tokens.orders.client_certificate" in problem and '"pki:ROLE"' in problem


def test_certificate_keys_without_tls_client_auth_are_refused(tmp_path: Path) -> None:
    text = (
        VAULT
        + OAUTH
        + TOKEN
        + 'credentials = "c"\ncertificate_common_name = "x"\ncertificate_ttl = 3600\n'
    )

    found = problems(tmp_path, text)

    assert any("tokens.orders.certificate_common_name" in p for p in found), found
    assert all("tls_client_auth" in p for p in found), found


@pytest.mark.parametrize(
    ("vault", "expected"),
    [
        ('auth = "cert"\n', "needs client_cert_file and client_key_file"),
        ('auth = "jwt"\njwt_file = "/run/identity"\n', "needs jwt_role and jwt_file"),
        ('auth = "jwt"\njwt_role = "tokend"\n', "needs jwt_role and jwt_file"),
        ('client_cert_file = "/c.pem"\n', "both client_cert_file and client_key_file"),
    ],
)
def test_vault_login_methods_name_what_they_need(
    tmp_path: Path, vault: str, expected: str
) -> None:
    text = (
        '[vault]\naddress = "https://vault.example.test:8200"\n'
        + ('role_id = "r"\nsecret_id_file = "/s"\n' if "auth" not in vault else "")
        + vault
        + OAUTH
        + TOKEN
        + 'credentials = "c"\n'
    )

    problem = only(tmp_path, text)

    assert "vault" in problem and expected in problem


def test_vault_cert_and_jwt_logins_load(tmp_path: Path) -> None:
    path = tmp_path / "tokend.toml"
    for vault in (
        # An operator's own token for `tokend jwks`, over a wrapped-AppRole config.
        'auth = "token"\nsecret_id_wrapped = true\n',
        'auth = "cert"\nclient_cert_file = "%C/c.pem"\nclient_key_file = "%C/k.pem"\n',
        'auth = "jwt"\njwt_role = "tokend"\njwt_file = "%C/identity"\n',
        'role_id = "r"\nsecret_id_file = "%C/wrapped"\nsecret_id_wrapped = true\n',
    ):
        path.write_text(
            '[vault]\naddress = "https://v.test"\n'
            + vault
            + OAUTH
            + TOKEN
            + 'credentials = "c"\n'
        )
        assert load_config(path).settings.vault.address == "https://v.test"


@pytest.mark.parametrize("value", ["", "a b", "svc\n", "zwölf"])
def test_an_inline_client_id_must_be_printable_without_spaces(
    tmp_path: Path, value: str
) -> None:
    text = (
        VAULT
        + OAUTH
        + TOKEN
        + 'client_auth = "private_key_jwt"\nsigning_key = "transit:k"\n'
        + f"client_id = {json.dumps(value)}\n"
    )

    found = problems(tmp_path, text)

    assert any("tokens.orders.client_id" in p for p in found), found


@pytest.mark.parametrize(
    "value", ["transit:.", "transit:..", "kv:/abs", "kv:a//b", "kv:a/./b", "kv:a/"]
)
def test_signing_key_paths_without_empty_or_dot_segments(
    tmp_path: Path, value: str
) -> None:
    text = (
        VAULT
        + OAUTH
        + TOKEN
        + f'client_auth = "private_key_jwt"\nclient_id = "c"\nsigning_key = "{value}"\n'
    )

    assert "tokens.orders.signing_key" in only(tmp_path, text)


def test_a_dot_pki_role_is_refused(tmp_path: Path) -> None:
    text = (
        VAULT
        + OAUTH
        + TOKEN
        + 'client_auth = "tls_client_auth"\nclient_id = "c"\n'
        + 'client_certificate = "pki:.."\n'
    )

    assert "tokens.orders.client_certificate" in only(tmp_path, text)


@pytest.mark.parametrize(
    "setting",
    [
        'signing_alg = "ES256"',
        'assertion_audience = "issuer"',
        "assertion_lifetime = 30",
    ],
)
def test_assertion_settings_without_private_key_jwt_are_refused(
    tmp_path: Path, setting: str
) -> None:
    text = VAULT + OAUTH + TOKEN + f'credentials = "c"\n{setting}\n'

    problem = only(tmp_path, text)

    assert f"tokens.orders.{setting.split()[0]}" in problem
    assert "private_key_jwt" in problem


def test_an_empty_certificate_common_name_is_refused(tmp_path: Path) -> None:
    text = (
        VAULT
        + OAUTH
        + TOKEN
        + 'client_auth = "tls_client_auth"\nclient_id = "c"\n'
        + 'client_certificate = "pki:r"\ncertificate_common_name = ""\n'
    )

    assert "tokens.orders.certificate_common_name" in only(tmp_path, text)
