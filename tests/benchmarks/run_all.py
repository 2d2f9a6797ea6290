"""``make bench``: every benchmark in turn, then ``docs/performance.md``.

The simulations run first (they load both cores); the measurements of real
processes follow one at a time, so they do not disturb one another. Scripts
that only print (``read_path``, ``outage``) are run several times and their
lines turned into JSON here.

    python -m tests.benchmarks.run_all [--quick]

``--quick`` shrinks every benchmark (a smoke run of the whole pipeline; its
figures are not the published ones).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from typing import Any

from tests.benchmarks.measure import ROOT, machine, say, write_result

READ_LINE = re.compile(
    r"^(?P<label>\S+)\s+(?P<us>[\d.]+) µs per call, "
    r"(?P<ratio>[\d.]+)× open\+read\+close"
)


def run(module: str, *args: str) -> str:
    """Run ``python -m MODULE ARGS``; return its stdout (also shown)."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    sys.stdout.write(done.stdout)
    return done.stdout


def read_path(runs: int, number: int, repeat: int) -> dict[str, Any]:
    """tokend.client's read path, or why it is missing."""
    if not (ROOT / "tests" / "benchmarks" / "read_path.py").exists():
        return {"pending": "tests/benchmarks/read_path.py is not there yet"}
    extra = ["--number", str(number), "--repeat", str(repeat)]
    per_label: dict[str, list[dict[str, float]]] = {}
    for _ in range(runs):
        for line in run("tests.benchmarks.read_path", *extra).splitlines():
            match = READ_LINE.match(line)
            if match:
                per_label.setdefault(match["label"], []).append(
                    {"us": float(match["us"]), "ratio": float(match["ratio"])}
                )
    return {
        label: {
            "us_per_call_median": statistics.median(r["us"] for r in rows),
            "ratio_to_bare_read_median": statistics.median(r["ratio"] for r in rows),
            "ratio_runs": [r["ratio"] for r in rows],
        }
        for label, rows in per_label.items()
    }


def commit() -> str:
    """The commit measured, ``-dirty`` if the working tree differs from it."""
    done = subprocess.run(
        ["git", "describe", "--always", "--dirty", "--abbrev=12"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "unknown"


def outage_text() -> str:
    return run("tests.benchmarks.outage", "--minutes", "15").strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    started = time.monotonic()
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    measured = commit()
    steps: dict[str, float] = {}

    def step(name: str, *command: str) -> None:
        say(f"== {name}")
        began = time.monotonic()
        run(*command)
        steps[name] = round(time.monotonic() - began, 1)

    quick = args.quick
    step("fleet", "tests.benchmarks.fleet", *(["--daemons", "500"] if quick else []))
    say("== read_path")
    began = time.monotonic()
    read_settings = {
        "runs": 1 if quick else 3,
        "number": 2000 if quick else 20_000,
        "repeat": 3 if quick else 7,
    }
    read = read_path(**read_settings)
    outage = outage_text()
    steps["read_path"] = round(time.monotonic() - began, 1)
    step("imports", "tests.benchmarks.imports", *(["--runs", "2"] if quick else []))
    step("peer", "tests.benchmarks.peer", *(["--seconds", "6"] if quick else []))
    many = ["--tokens", "60", "--runs", "1", "--lifetime", "30", "--idle", "5"]
    step("many_tokens", "tests.benchmarks.many_tokens", *(many if quick else []))
    write_result(
        "bench",
        {
            "benchmark": "bench",
            "machine": machine(),
            "quick": quick,
            "commit": measured,
            "started_at": started_at,
            "read_path": read,
            "read_path_settings": read_settings,
            "outage_script": outage,
            "step_seconds": steps,
            "total_seconds": round(time.monotonic() - started, 1),
        },
    )
    step("report", "tests.benchmarks.report")
    say(f"make bench: {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
