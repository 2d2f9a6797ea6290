"""What the benchmark scripts share: /proc readers, sd_notify, result files.

Every figure of a process comes from procfs, read from the outside, so the
measured process runs exactly as in production: CPU from ``/proc/PID/stat``
(utime + stime, dead threads included), memory from ``/proc/PID/status``
(``VmRSS``, and ``VmHWM`` for the peak) and wakeups from each thread's
``voluntary_ctxt_switches``.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "performance"
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sample:
    """One look at a process: CPU seconds so far, memory in bytes, when."""

    at: float
    cpu: float
    rss: int
    hwm: int
    threads: int


def sample(pid: int) -> Sample:
    """Read a process's CPU time (user + system) and memory now."""
    with open(f"/proc/{pid}/stat") as stream:
        # The command name may hold spaces; the fields after ")" do not.
        fields = stream.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICKS
    status = read_status(pid)

    return Sample(
        time.monotonic(),
        cpu,
        status.get("VmRSS", 0),
        status.get("VmHWM", 0),
        status.get("Threads", 0),
    )


class RunTime:
    """A process's CPU time to the nanosecond, from each thread's schedstat.

    ``/proc/PID/stat`` counts clock ticks of 10 ms, and which task a tick is
    charged to is sampled: an idle minute is a handful of ticks, too few to
    compare two idle daemons. ``/proc/PID/task/TID/schedstat`` holds the
    nanoseconds each thread ran. A thread that ends keeps the time it had at
    the last :meth:`seconds`; one that starts and ends between two is missed.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._threads: dict[str, int] = {}

    def seconds(self) -> float:
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{tid}/schedstat") as stream:
                    self._threads[tid] = int(stream.read().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                continue  # the thread ended meanwhile
        return sum(self._threads.values()) / 1e9


def read_status(pid: int) -> dict[str, int]:
    """Return the numeric fields of ``/proc/PID/status`` (kB turned into bytes)."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as stream:
        for line in stream:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                scale = 1024 if parts[1:] == ["kB"] else 1
                values[key] = int(parts[0]) * scale
    return values


def thread_wakeups(pid: int) -> dict[str, int]:
    """Voluntary context switches per thread, keyed ``TID:name``."""
    counts: dict[str, int] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as stream:
                name = stream.read().strip()
            status = read_status_task(pid, tid)
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        counts[f"{tid}:{name}"] = status
    return counts


def read_status_task(pid: int, tid: str) -> int:
    with open(f"/proc/{pid}/task/{tid}/status") as stream:
        for line in stream:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    return 0


def wakeups_per_second(
    before: dict[str, int], after: dict[str, int], seconds: float
) -> dict[str, float]:
    """Wakeups per second of each thread alive at both looks."""
    return {
        key: round((after[key] - before[key]) / seconds, 2)
        for key in sorted(after)
        if key in before
    }


class NotifySocket:
    """A service manager's ``NOTIFY_SOCKET``: an AF_UNIX datagram socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))

    def wait_for(self, field: str, timeout: float) -> float | None:
        """Return the monotonic time the first datagram with ``field`` came."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self._socket.settimeout(left)
            try:
                data = self._socket.recv(65536)
            except TimeoutError:
                return None
            if field.encode() in data.split(b"\n"):
                return time.monotonic()
        return None

    def close(self) -> None:
        self._socket.close()
        self.path.unlink(missing_ok=True)


def summarise(values: Sequence[float]) -> dict[str, Any]:
    """Median, min, max and the spread (max-min over the median) of a series."""
    middle = statistics.median(values)
    spread = (max(values) - min(values)) / middle if middle else 0.0
    return {
        "median": middle,
        "min": min(values),
        "max": max(values),
        "spread": round(spread, 3),
        "runs": list(values),
    }


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    load = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "load_average_1m_at_start": round(load[0], 2),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_result(name: str, data: dict[str, Any]) -> Path:
    """Write ``docs/performance/NAME.json`` and return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def say(text: str) -> None:
    """Progress for the person running ``make bench``."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


@contextmanager
def workspace(keep: Path | None = None) -> Iterator[Path]:
    """A scratch directory on tmpfs (as ``/run`` is), or ``keep`` to inspect."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="tokend-bench-") as tmp:
        yield Path(tmp)
