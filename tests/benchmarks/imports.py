"""What importing the daemon costs, by package: seconds and memory.

``tokend run`` imports tokend's modules and their libraries before it does
anything. This splits that cost by top-level package:

- time: ``python -X importtime`` self-times summed per package;
- memory: the growth of ``VmRSS`` as the packages are imported one after
  another in a fresh interpreter (each row includes what that package pulls
  in and no earlier row already did), and, in a second interpreter,
  ``tracemalloc``'s count of the bytes Python objects hold per row.

    python -m tests.benchmarks.imports [--runs 5]

Writes ``docs/performance/imports.json``; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from typing import Any

from tests.benchmarks.deployment import daemon_environment, warm_bytecode
from tests.benchmarks.measure import ROOT, machine, say, summarise, write_result

DAEMON_IMPORTS = "import tokend.cli, tokend.commands"
# In the order the daemon's dependencies build on each other.
STAGES = [
    ("stdlib (asyncio, ssl, json, logging)", "import asyncio, ssl, json, logging"),
    ("anyio", "import anyio, anyio.to_thread"),
    ("pydantic", "import pydantic"),
    ("pydantic_settings", "import pydantic_settings"),
    ("aiohttp (client and web server)", "import aiohttp, aiohttp.web"),
    ("requests (+ urllib3, charset_normalizer, idna)", "import requests"),
    ("hvac", "import hvac"),
    ("watchfiles", "import watchfiles"),
    ("prometheus_client", "import prometheus_client"),
    ("systemd (systemd-python)", "import systemd.journal"),
    ("tokend's own modules", DAEMON_IMPORTS),
]
STAGE_PROBE = """
import json, sys
tracing = sys.argv[1] == "tracemalloc"
if tracing:
    import tracemalloc
    tracemalloc.start()
def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
def measure():
    return tracemalloc.get_traced_memory()[0] if tracing else rss()
rows = [("interpreter", measure())]
for name, code in json.loads(sys.argv[2]):
    exec(code)
    rows.append((name, measure()))
print(json.dumps(rows))
"""
MB = 1024 * 1024
PACKAGE_GROUPS = {
    "urllib3": "requests",
    "charset_normalizer": "requests",
    "idna": "requests",
    "certifi": "requests",
    "pydantic_core": "pydantic",
    "annotated_types": "pydantic",
    "typing_inspection": "pydantic",
    "multidict": "aiohttp",
    "yarl": "aiohttp",
    "frozenlist": "aiohttp",
    "aiosignal": "aiohttp",
    "propcache": "aiohttp",
    "aiohappyeyeballs": "aiohttp",
    "attr": "aiohttp",
    "dotenv": "pydantic_settings",
    "sniffio": "anyio",
}


def import_times(env: dict[str, str]) -> dict[str, float]:
    """Self-time of each package (seconds) while importing the daemon once."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", DAEMON_IMPORTS],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=env,
    )
    by_package: dict[str, float] = defaultdict(float)
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _cumulative, name = line.removeprefix("import time:").split("|")
        top = name.strip().split(".")[0]
        if top.startswith("__editable__"):
            top = "tokend"
        elif top.lstrip("_") in sys.stdlib_module_names or top == "site":
            top = "stdlib"
        by_package[PACKAGE_GROUPS.get(top, top)] += int(self_us) / 1e6
    by_package["total"] = sum(by_package.values())
    return dict(by_package)


def stage_memory(env: dict[str, str], mode: str) -> list[tuple[str, int]]:
    done = subprocess.run(
        [sys.executable, "-c", STAGE_PROBE, mode, json.dumps(STAGES)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=env,
    )
    rows: list[tuple[str, int]] = json.loads(done.stdout)
    return rows


def wall_seconds(env: dict[str, str], code: str) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env)
    return time.monotonic() - started


def growth(runs: list[list[tuple[str, int]]]) -> list[dict[str, Any]]:
    """Per stage: the median of its total and of its growth over the previous."""
    table = []
    for index, (name, _) in enumerate(runs[0]):
        totals = [run[index][1] for run in runs]
        added = [run[index][1] - (run[index - 1][1] if index else 0) for run in runs]
        table.append(
            {
                "stage": name,
                "total_mb": round(statistics.median(totals) / MB, 1),
                "added_mb": round(statistics.median(added) / MB, 1),
            }
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    warm_bytecode()
    env = daemon_environment()
    say("imports: -X importtime, RSS and tracemalloc by package")
    times = [import_times(env) for _ in range(args.runs)]
    packages = sorted({key for run in times for key in run})
    time_table = {
        package: round(statistics.median(run.get(package, 0.0) for run in times), 3)
        for package in packages
    }
    rss = growth([stage_memory(env, "rss") for _ in range(args.runs)])
    traced = growth([stage_memory(env, "tracemalloc") for _ in range(args.runs)])
    bare = summarise([wall_seconds(env, "pass") for _ in range(args.runs)])
    daemon = summarise([wall_seconds(env, DAEMON_IMPORTS) for _ in range(args.runs)])
    write_result(
        "imports",
        {
            "benchmark": "imports",
            "machine": machine(),
            "imports": DAEMON_IMPORTS,
            "wall_seconds_bare_interpreter": bare,
            "wall_seconds_interpreter_and_daemon_imports": daemon,
            "import_self_seconds_by_package": dict(
                sorted(time_table.items(), key=lambda item: -item[1])
            ),
            "rss_by_stage": rss,
            "tracemalloc_by_stage": traced,
        },
    )
    say(
        f"  imports {time_table['total']:.2f}s, RSS after imports "
        f"{rss[-1]['total_mb']} MB (bare interpreter {rss[0]['total_mb']} MB)"
    )


if __name__ == "__main__":
    main()
