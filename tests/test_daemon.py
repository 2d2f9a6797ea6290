"""The daemon's start: what it loads before it needs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CONFIG = """
[vault]
address = "http://127.0.0.1:8200"
role_id = "role"
secret_id_file = "/nonexistent/secret_id"

[oauth]
token_url = "https://auth.example.test/token"

[files]
directory = "{directory}"

[tokens.orders]
credentials = "tokend/orders"
audience = "https://orders.example.test"
"""
# Loaded by the first token request or Vault login, for private_key_jwt, or
# (watchfiles) when the config watch starts, after READY=1.
DEFERRED = ("aiohttp", "hvac", "requests", "cryptography", "watchfiles")


def test_daemon_and_config_load_without_http_and_vault_clients(
    tmp_path: Path,
) -> None:
    """A restart whose cached tokens are valid is ready before it needs them."""
    config = tmp_path / "tokend.toml"
    config.write_text(CONFIG.format(directory=tmp_path / "run"))
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "import tokend.cli, tokend.commands, tokend.daemon\n"
        "from tokend.config_files import load_config\n"
        f"load_config(Path({str(config)!r}))\n"
        f"print(*[name for name in {DEFERRED!r} if name in sys.modules])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )

    assert result.stdout.split() == []
