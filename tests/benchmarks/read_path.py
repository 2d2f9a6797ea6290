"""What one read of a token file costs, per call: TokenFile.token against plain reads.

Writes a token file the size of a real JWT in a temporary directory and times,
in one run, ``TokenFile.token`` (one ``stat`` while the file is unchanged), a
bare open + read + close, and ``Path.read_text``. Prints figures; asserts nothing.

    python -m tests.benchmarks.read_path [--number 20000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path

from tokend.client import TokenFile


def time_per_call(read: Callable[[], object], number: int, repeat: int) -> float:
    """Return the best of ``repeat`` runs, in seconds per call (least noise)."""
    return min(timeit.repeat(read, number=number, repeat=repeat)) / number


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=20_000, help="calls per run")
    parser.add_argument("--repeat", type=int, default=7, help="runs; best is kept")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory, "orders")
        path.write_text(secrets.token_urlsafe(750))  # about 1 KB, as a JWT
        name = os.fspath(path)
        token_file = TokenFile(path)

        def bare_read() -> str:
            with open(name) as stream:
                return stream.read()

        candidates: dict[str, Callable[[], object]] = {
            "TokenFile.token": lambda: token_file.token,
            "open+read+close": bare_read,
            "Path.read_text": path.read_text,
        }
        costs = {
            label: time_per_call(read, args.number, args.repeat)
            for label, read in candidates.items()
        }

    baseline = costs["open+read+close"]
    for label, cost in costs.items():
        sys.stdout.write(
            f"{label:<16} {cost * 1e6:7.2f} µs per call, "
            f"{cost / baseline:4.2f}× open+read+close\n"
        )
    sys.stdout.write(
        f"({args.repeat} runs of {args.number} calls each, best run kept)\n"
    )


if __name__ == "__main__":
    main()
