"""``tokend`` with candidate fixes patched in, to measure them before they land.

``BENCH_FIXES=session_lock,watch_step python -m tests.benchmarks.fixes run -c
FILE`` runs ``tokend.cli`` after replacing, in this process only:

- ``session_lock``: :meth:`tokend.oauth.TokenEndpoint.session` holds a lock
  across the creation of its HTTP session, so concurrent first requests share
  one session and one TLS context;
- ``watch_step``: :func:`watchfiles.awatch` checks its stop event once a
  second (``step=1000``) and never times out into Python (``rust_timeout=0``),
  instead of every 50 ms and 5 s.

Nothing in ``tokend/`` changes; the benchmarks compare these runs with the
unpatched daemon.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

import anyio
import watchfiles

from tokend import cli, oauth

FIXES = ("session_lock", "watch_step")


def patch_session_lock() -> None:
    create = oauth.TokenEndpoint.session

    async def session(self: oauth.TokenEndpoint) -> Any:
        lock = self.__dict__.setdefault("_bench_session_lock", anyio.Lock())
        async with lock:
            return await create(self)

    oauth.TokenEndpoint.session = session  # type: ignore[method-assign]


def patch_watch_step() -> None:
    watchfiles.awatch = functools.partial(watchfiles.awatch, step=1000, rust_timeout=0)


def main() -> int:
    wanted = [f for f in os.environ.get("BENCH_FIXES", "").split(",") if f]
    unknown = sorted(set(wanted) - set(FIXES))
    if unknown:
        raise SystemExit(f"unknown fixes {unknown}; known: {', '.join(FIXES)}")
    for fix in wanted:
        globals()[f"patch_{fix}"]()
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
