"""Call the orders service with the token tokend keeps, using only the standard library.

    TOKEN_FILE=/run/tokend/orders ORDERS_URL=https://orders.example.internal/orders \\
        python3 python_plain.py

Prints the answer; exits 1 if the call fails.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TOKEN_FILE = os.environ.get("TOKEN_FILE", "/run/tokend/orders")
ORDERS_URL = os.environ.get("ORDERS_URL", "https://orders.example.internal/orders")


def read_token() -> str:
    """Return the current token: read the file on every call, never keep it."""
    with open(TOKEN_FILE, encoding="ascii") as stream:
        return stream.read().strip()


def get_orders() -> str:
    request = urllib.request.Request(
        ORDERS_URL, headers={"Authorization": f"Bearer {read_token()}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body: bytes = response.read()

    return body.decode()


def main() -> int:
    try:
        sys.stdout.write(get_orders() + "\n")
    except urllib.error.HTTPError as exc:
        sys.stderr.write(f"{exc.code} {exc.read().decode(errors='replace')}\n")
        return 1

    return 0


if __name__ == "__main__":
    sys.exit(main())
