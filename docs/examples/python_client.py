"""Call the orders service with requests and tokend.client's TokendAuth.

    pip install 'tokend[requests]'
    TOKEN_FILE=/run/tokend/orders ORDERS_URL=https://orders.example.internal/orders \\
        python3 python_client.py

TokendAuth reads the token for every request (one ``stat`` while the file is
unchanged) and, if the service answers 401, re-reads it, asks the daemon for a
new token if the file still holds the rejected one, and retries once.
"""

from __future__ import annotations

import os
import sys

import requests

from tokend.client import TokendAuth, TokenUnavailableError

TOKEN_FILE = os.environ.get("TOKEN_FILE", "/run/tokend/orders")
ORDERS_URL = os.environ.get("ORDERS_URL", "https://orders.example.internal/orders")
# One per process, shared by every request and thread.
AUTH = TokendAuth(TOKEN_FILE)


def get_orders(session: requests.Session) -> requests.Response:
    return session.get(ORDERS_URL, auth=AUTH, timeout=10)


def main() -> int:
    with requests.Session() as session:
        try:
            response = get_orders(session)
        except TokenUnavailableError as exc:
            sys.stderr.write(f"{exc}\n")  # names the file and what to check
            return 1
    if not response.ok:
        sys.stderr.write(f"{response.status_code} {response.text}\n")
        return 1
    sys.stdout.write(response.text + "\n")

    return 0


if __name__ == "__main__":
    sys.exit(main())
