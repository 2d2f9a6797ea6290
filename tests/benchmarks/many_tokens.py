"""One daemon, many tokens: READY time, memory, CPU per refresh, idle CPU, restart.

Against a real OpenBao dev server (one secret per token under one AppRole
policy prefix) and a fast token endpoint in its own process, so that only
tokend's own process is measured. Each run:

1. cold start with an empty run directory: seconds to ``READY=1`` on a real
   AF_UNIX datagram ``NOTIFY_SOCKET``, CPU until then;
2. idle: CPU and per-thread wakeups over ``--idle`` seconds in which no token
   is due (the tokens live ``--lifetime`` seconds and the config has them
   refreshed at 70-80 % of it, the first time too);
3. the refresh wave: every token refreshed once; CPU per refresh is the CPU
   of the wave less the idle rate, over the requests the endpoint served;
4. restarts with every cached token still valid: seconds to ``READY=1`` and
   the token requests sent (the target is none).

    python -m tests.benchmarks.many_tokens [--tokens 1000] [--runs 3]

Writes ``docs/performance/many_tokens.json``; asserts nothing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from tests.benchmarks.deployment import Daemon, Deployment, token_names
from tests.benchmarks.measure import (
    machine,
    sample,
    say,
    summarise,
    thread_wakeups,
    wakeups_per_second,
    workspace,
    write_result,
)
from tests.benchmarks.profiling import profile
from tests.benchmarks.token_server import TokenServer
from tests.support.bao_server import BaoServer

TARGETS = {
    "ready_seconds": 5.0,
    "peak_rss_mb": 80.0,
    "idle_cpu_percent": 0.2,
    "restart_ready_seconds": 1.0,
    "restart_token_requests": 0,
}
MB = 1024 * 1024


def measure_cold(
    deployment: Deployment,
    endpoint: TokenServer,
    run_dir: Path,
    lifetime: int,
    idle: float,
) -> dict[str, Any]:
    """Cold start, idle window and one refresh wave of one daemon."""
    count = len(deployment.names)
    config = deployment.write_config(endpoint.token_url, run_dir, deployment.names)
    daemon = Daemon(config, run_dir.parent / f"{run_dir.name}.log")
    before = endpoint.count()
    daemon.start()
    try:
        ready = daemon.wait_ready()
        at_ready = sample(daemon.pid)
        issued_at_ready = endpoint.count() - before
        # The first refresh is due 70 % of a lifetime after the first token.
        first_due = daemon.started + 0.7 * lifetime
        time.sleep(3)
        idle_start, wakes_start = sample(daemon.pid), thread_wakeups(daemon.pid)
        issued_idle_start = endpoint.count()
        window = min(idle, first_due - 3 - idle_start.at)
        time.sleep(max(window, 1.0))
        idle_end, wakes_end = sample(daemon.pid), thread_wakeups(daemon.pid)
        issued_idle = endpoint.count() - issued_idle_start
        idle_seconds = idle_end.at - idle_start.at
        idle_rate = (idle_end.cpu - idle_start.cpu) / idle_seconds
        wave_start = idle_end
        issued_wave_start = issued_idle_start + issued_idle
        deadline = daemon.started + 0.8 * lifetime + 30
        while time.monotonic() < deadline:
            if endpoint.count() - issued_wave_start >= count:
                break
            time.sleep(0.5)
        time.sleep(2)  # let the last writes and log lines finish
        wave_end = sample(daemon.pid)
        refreshed = endpoint.count() - issued_wave_start
        wave_cpu = wave_end.cpu - wave_start.cpu
        wave_seconds = wave_end.at - wave_start.at
        per_refresh = (wave_cpu - idle_rate * wave_seconds) / max(refreshed, 1)
        result = {
            "ready_seconds": round(ready, 3),
            "requests_before_ready": issued_at_ready,
            "cpu_seconds_to_ready": at_ready.cpu,
            "rss_mb_at_ready": round(at_ready.rss / MB, 1),
            "idle_seconds": round(idle_seconds, 1),
            "idle_cpu_seconds": round(idle_end.cpu - idle_start.cpu, 3),
            "idle_cpu_percent": round(100 * idle_rate, 3),
            "requests_during_idle": issued_idle,
            "idle_wakeups_per_second": wakeups_per_second(
                wakes_start, wakes_end, idle_seconds
            ),
            "threads_idle": idle_end.threads,
            "refreshes_in_wave": refreshed,
            "wave_seconds": round(wave_seconds, 1),
            "wave_cpu_seconds": round(wave_cpu, 2),
            "cpu_ms_per_refresh": round(1000 * per_refresh, 2),
            "rss_mb_after_wave": round(wave_end.rss / MB, 1),
            "peak_rss_mb": round(wave_end.hwm / MB, 1),
        }
        return result
    finally:
        stopped = daemon.stop()
        say(f"  stopped in {stopped:.2f}s")
        log = daemon.log.read_text(errors="replace")
        say(
            f"  log: {log.count('Unclosed client session')} unclosed aiohttp "
            f"sessions, {log.count(' ERROR ')} ERROR lines"
        )


def measure_restart(
    deployment: Deployment,
    endpoint: TokenServer,
    run_dir: Path,
    settle: float = 3,
) -> dict[str, Any]:
    """Start again over the files a cold run left: READY time, requests sent."""
    config = deployment.write_config(endpoint.token_url, run_dir, deployment.names)
    daemon = Daemon(config, run_dir.parent / f"{run_dir.name}.log")
    before = endpoint.count()
    daemon.start()
    try:
        ready = daemon.wait_ready()
        at_ready = sample(daemon.pid)
        requests_at_ready = endpoint.count() - before
        time.sleep(settle)
        settled = sample(daemon.pid)
        return {
            "ready_seconds": round(ready, 3),
            "token_requests_to_ready": requests_at_ready,
            "token_requests_to_ready_plus_3s": endpoint.count() - before,
            "cpu_seconds_to_ready": at_ready.cpu,
            "cpu_seconds_in_3s_after_ready": round(settled.cpu - at_ready.cpu, 2),
        }
    finally:
        daemon.stop()


def verdicts(summary: dict[str, Any]) -> dict[str, Any]:
    """Each target, the median measured, and whether the target is met."""
    return {
        key: {
            "target": f"<= {target}",
            "median": summary[key]["median"],
            "met": summary[key]["median"] <= target,
        }
        for key, target in TARGETS.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--lifetime", type=int, default=125)
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--workdir", type=Path, help="keep files and logs here")
    parser.add_argument(
        "--no-profile", action="store_true", help="skip the py-spy recordings"
    )
    args = parser.parse_args()
    started = time.monotonic()
    cold: list[dict[str, Any]] = []
    restarts: list[dict[str, Any]] = []
    with (
        workspace(args.workdir) as root,
        BaoServer() as bao,
        TokenServer(args.lifetime) as endpoint,
    ):
        say(f"many tokens: seeding {args.tokens} secrets in OpenBao")
        deployment = Deployment(bao, root, token_names(args.tokens))
        for run in range(args.runs):
            run_dir = root / f"run{run}"
            say(f"many tokens: run {run + 1}/{args.runs}, cold start")
            result = measure_cold(
                deployment, endpoint, run_dir, args.lifetime, args.idle
            )
            log = (root / f"{run_dir.name}.log").read_text(errors="replace")
            result["unclosed_http_sessions_in_log"] = log.count(
                "Unclosed client session"
            )
            result["error_lines_in_log"] = log.count(" ERROR ")

            say(
                f"  READY {result['ready_seconds']:.2f}s, peak RSS "
                f"{result['peak_rss_mb']} MB, idle {result['idle_cpu_percent']}%, "
                f"{result['cpu_ms_per_refresh']} ms CPU per refresh"
            )
            cold.append(result)
            for _ in range(args.restarts):
                again = measure_restart(deployment, endpoint, run_dir)
                say(
                    f"  restart READY {again['ready_seconds']:.2f}s, "
                    f"{again['token_requests_to_ready_plus_3s']} token requests"
                )
                restarts.append(again)
        if not args.no_profile:
            profiled = profile(deployment, root)
            write_result(
                "profile", {"benchmark": "profile", "machine": machine(), **profiled}
            )
    summary = {
        key: summarise([r[key] for r in cold])
        for key in (
            "ready_seconds",
            "cpu_seconds_to_ready",
            "peak_rss_mb",
            "rss_mb_at_ready",
            "idle_cpu_percent",
            "cpu_ms_per_refresh",
            "wave_seconds",
        )
    }
    summary["restart_ready_seconds"] = summarise([r["ready_seconds"] for r in restarts])
    summary["restart_token_requests"] = summarise(
        [r["token_requests_to_ready_plus_3s"] for r in restarts]
    )
    summary["restart_cpu_seconds_in_3s_after_ready"] = summarise(
        [r["cpu_seconds_in_3s_after_ready"] for r in restarts]
    )
    write_result(
        "many_tokens",
        {
            "benchmark": "many_tokens",
            "machine": machine(),
            "setup": {
                "tokens": args.tokens,
                "token_lifetime_seconds": args.lifetime,
                "idle_window_seconds": args.idle,
                "run_directory": "tmpfs (/dev/shm), as /run/tokend is",
                "token_endpoint": "QuirkServer + TokenMint in a separate process",
                "vault": "OpenBao dev server, one AppRole, one KV v2 secret per token",
                "log_level": "info, to a file",
            },
            "targets": verdicts(summary),
            "summary": summary,
            "cold_runs": cold,
            "restarts": restarts,
            "seconds": round(time.monotonic() - started, 1),
        },
    )


if __name__ == "__main__":
    main()
