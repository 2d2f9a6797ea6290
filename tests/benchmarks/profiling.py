"""Where a many-token daemon spends its CPU: py-spy samples, grouped by layer.

Two recordings of ``tokend run`` with many tokens (``--nonblocking``, so the
daemon is never paused): from exec to ``READY=1`` (imports, config, Vault
login, the first request of every token), and the first refresh wave of a
daemon already running. Each sample is put in the layer of its innermost
frame that belongs to a known one (aiohttp, hvac and requests, json,
logging, file writes, ...); a sample anywhere inside an import is "imports".
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.benchmarks.deployment import Daemon, Deployment, token_names
from tests.benchmarks.measure import machine, sample, say, workspace, write_result
from tests.benchmarks.token_server import TokenServer
from tests.support.bao_server import BaoServer

RATE = 100
# (layer, pattern on a frame's file as py-spy shows it, e.g. "aiohttp/client.py");
# the innermost frame that matches one decides the layer of a sample.
LAYERS = [
    ("JSON encode/decode", r"^json/"),
    ("logging", r"^logging/"),
    ("TLS context (ssl)", r"^ssl\.py"),
    (
        "Vault client (hvac, requests, urllib3, http.client)",
        r"^(hvac|requests|urllib3|http)/",
    ),
    ("token request (aiohttp client)", r"^(aiohttp|yarl|multidict)/"),
    ("config (pydantic, TOML)", r"^(pydantic\w*|tomllib)/"),
    ("file writes (tokend.files, tokend.state)", r"^tokend/(files|state)\.py"),
    ("metrics (prometheus_client)", r"^prometheus_client/"),
    ("event loop (asyncio, anyio)", r"^(asyncio|anyio)/|^selectors\.py"),
    ("tokend (other)", r"^tokend/"),
]
COMPILED = [(name, re.compile(pattern)) for name, pattern in LAYERS]
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*):(?P<line>\d+)\)$")
# Leaves where a thread blocks: py-spy sometimes samples a thread there although
# it uses no CPU (waiting for a lock, a socket or epoll).
WAITING = {
    "Condition.wait",
    "Event.wait",
    "EpollSelector.select",
    "SocketIO.readinto",
    "WorkerThread.run",
    "Thread._wait_for_tstate_lock",
}


def find_pyspy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def parse(frame: str) -> tuple[str, str]:
    match = FRAME.match(frame)
    return (match["function"], match["file"]) if match else (frame, "")


def layer_of(frames: list[str]) -> str:
    parsed = [parse(frame) for frame in frames]
    if parsed and parsed[-1][0] in WAITING:
        return "waiting (sampled while blocked)"
    if any(function == "_find_and_load" for function, _ in parsed):
        return "imports"
    for _, file in reversed(parsed):
        for name, pattern in COMPILED:
            if pattern.search(file):
                return name
    return "other"


def read_raw(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's raw (collapsed) output: ``root;...;leaf COUNT`` per line."""
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            stacks.append((stack.split(";"), int(count)))
    return stacks


def summarise_profile(path: Path, top: int = 15) -> dict[str, Any]:
    stacks = read_raw(path)
    total = sum(count for _, count in stacks)
    layers: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for frames, count in stacks:
        layers[layer_of(frames)] += count
        function, file = parse(frames[-1])
        leaves[f"{function} ({file})"] += count
    waiting = layers.pop("waiting (sampled while blocked)", 0)
    busy = total - waiting
    return {
        "samples": total,
        "samples_waiting": waiting,
        "sampled_cpu_seconds": round(busy / RATE, 2),
        "layers_percent_of_busy": {
            name: round(100 * count / busy, 1) for name, count in layers.most_common()
        },
        "top_self_functions_percent_of_busy": {
            name: round(100 * count / busy, 1)
            for name, count in leaves.most_common(top + len(WAITING))
            if name.split(" (")[0] not in WAITING
        },
    }


def record_startup(pyspy: str, config: Path, root: Path) -> Path:
    """Record from exec to READY=1, then stop the daemon (py-spy then writes)."""
    output = root / "profile-startup.txt"
    prefix = [pyspy, "record", "--nonblocking", "-r", str(RATE), "-f", "raw"]
    daemon = Daemon(
        config, root / "profile-startup.log", [*prefix, "-o", str(output), "--"]
    )
    daemon.start()
    try:
        daemon.wait_ready()
        for child in children(daemon.pid):
            signal_process(child, signal.SIGTERM)
        assert daemon.process is not None
        daemon.process.wait(timeout=60)
    finally:
        daemon.stop()
    return output


def record_wave(
    pyspy: str, deployment: Deployment, root: Path, lifetime: int
) -> tuple[Path, int]:
    """Record a running daemon's first refresh wave; return file and refreshes."""
    output = root / "profile-wave.txt"
    with TokenServer(lifetime) as endpoint:
        run_dir = root / "profile-run"
        config = deployment.write_config(endpoint.token_url, run_dir, deployment.names)
        daemon = Daemon(config, root / "profile-wave.log")
        daemon.start()
        try:
            daemon.wait_ready()
            before = endpoint.count()
            # Due from 70 % of a lifetime after the first token was issued.
            time.sleep(max(0.0, daemon.started + 0.65 * lifetime - time.monotonic()))
            duration = int(0.3 * lifetime) + 5
            subprocess.run(
                [pyspy, "record", "--nonblocking", "-r", str(RATE), "-f", "raw"]
                + ["-o", str(output), "-d", str(duration), "-p", str(daemon.pid)],
                check=True,
                capture_output=True,
            )
            refreshed = endpoint.count() - before
        finally:
            daemon.stop()
    return output, refreshed


def record_idle(
    pyspy: str, deployment: Deployment, root: Path, seconds: int
) -> tuple[Path, float]:
    """Record a daemon with nothing due; return the file and its CPU seconds."""
    output = root / "profile-idle.txt"
    with TokenServer(3600) as endpoint:
        run_dir = root / "profile-idle"
        config = deployment.write_config(endpoint.token_url, run_dir, deployment.names)
        daemon = Daemon(config, root / "profile-idle.log")
        daemon.start()
        try:
            daemon.wait_ready()
            time.sleep(5)
            before = sample(daemon.pid)
            subprocess.run(
                [pyspy, "record", "--nonblocking", "-r", str(RATE), "-f", "raw"]
                + ["-o", str(output), "-d", str(seconds), "-p", str(daemon.pid)],
                check=True,
                capture_output=True,
            )
            cpu = sample(daemon.pid).cpu - before.cpu
        finally:
            daemon.stop()
    return output, cpu


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(child) for child in text]
    return found


def signal_process(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def profile(
    deployment: Deployment, root: Path, lifetime: int = 30, idle_seconds: int = 20
) -> dict[str, Any]:
    """Both recordings, summarised; empty when py-spy is not installed."""
    pyspy = find_pyspy()
    if pyspy is None:
        return {"skipped": "py-spy is not installed (pip install py-spy)"}
    say("profile: py-spy over start-up to READY=1")
    with TokenServer(3600) as endpoint:
        config = deployment.write_config(
            endpoint.token_url, root / "profile-cold", deployment.names
        )
        startup = summarise_profile(record_startup(pyspy, config, root))
    say("profile: py-spy over a refresh wave")
    wave_file, refreshed = record_wave(pyspy, deployment, root, lifetime)
    wave = summarise_profile(wave_file)
    wave["refreshes"] = refreshed
    wave["sampled_cpu_ms_per_refresh"] = round(
        1000 * wave["sampled_cpu_seconds"] / max(refreshed, 1), 2
    )
    say("profile: py-spy over an idle daemon")
    idle_file, idle_cpu = record_idle(pyspy, deployment, root, idle_seconds)
    idle = summarise_profile(idle_file)
    idle["seconds"] = idle_seconds
    idle["cpu_seconds_from_proc"] = round(idle_cpu, 2)

    return {"rate_hz": RATE, "startup": startup, "refresh_wave": wave, "idle": idle}


def main() -> None:
    """Only the recordings, for a daemon with ``--tokens`` tokens."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--workdir", type=Path, help="keep files and logs here")
    args = parser.parse_args()
    with workspace(args.workdir) as root, BaoServer() as bao:
        say(f"profile: seeding {args.tokens} secrets in OpenBao")
        deployment = Deployment(bao, root, token_names(args.tokens))
        profiled = profile(deployment, root)
    write_result("profile", {"benchmark": "profile", "machine": machine(), **profiled})


if __name__ == "__main__":
    main()
