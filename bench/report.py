"""The markdown report of ``bench.run``: medians, kourier's ratios, the targets met or missed.

Ratios are kourier's median divided by the other's: for a latency above 1 is worse, for
a rate below 1 is worse. The targets judged are issue #14's (``bench/goals.py``), in
their own table at the top. "best raw" is, per metric, the better of the hand-written
Kafka baselines (``kind == "raw"``) in this run; the goals against it are the earlier
issue's ("Fast as the raw client"), shown in the main table as context, not judged, on
the native caller (``kourier``), the httpx caller's ratios beside it.

"raw with the same app" is the hand-written baseline whose service calls ``bench.app``
as kourier's does (``kind == "raw_app"``, ``raw_aiokafka_app``): that ratio leaves out
what FastAPI costs and shows kourier's own overhead. "kourier, bare app" is kourier
serving ``bench.bare_app`` (``kind == "kourier_bare"``): the same routes without a
framework, doing per request what the raw baselines' services do, so its ratio to the
best raw is kourier's cost on top of a hand-written service. Both are shown, not judged:
the targets stay as the issue states them, on kourier serving the FastAPI app.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from bench import goals
from bench.common import REPO_ROOT, Round, median
from bench.run import TARGETS, Config, Results
from kourier.settings import Settings


@dataclass(frozen=True, slots=True)
class Goal:
    """A target: kourier ÷ best raw within ``limit`` (``vs_raw``), or an absolute bound."""

    limit: float
    vs_raw: bool
    text: str

    def met(self, value: float, higher_is_better: bool) -> bool:
        return value >= self.limit if higher_is_better else value <= self.limit


@dataclass(frozen=True, slots=True)
class Metric:
    key: str
    scenario: str
    label: str
    higher_is_better: bool
    fmt: str
    goal: Goal | None = None


METRICS = [
    Metric(
        "seq_p50_ms", "seq", "p50 latency (ms)", False, "{:.2f}", Goal(1.15, True, "<= 1.15x raw")
    ),
    Metric(
        "seq_p99_ms", "seq", "p99 latency (ms)", False, "{:.2f}", Goal(1.3, True, "<= 1.3x raw")
    ),
    Metric(
        "conc_rps", "conc", "throughput (req/s)", True, "{:,.0f}", Goal(0.9, True, ">= 0.9x raw")
    ),
    Metric("conc_p99_ms", "conc", "p99 latency (ms)", False, "{:.1f}"),
    Metric("conc_cpu_us", "conc", "CPU per call, caller + service (µs)", False, "{:,.0f}"),
    Metric("conc_service_cpu_us", "conc", "... of which the service (µs)", False, "{:,.0f}"),
    Metric("conc_caller_cpu_us", "conc", "... of which the caller (µs)", False, "{:,.0f}"),
    Metric(
        "one_way_mps",
        "one_way",
        "throughput (msgs/s)",
        True,
        "{:,.0f}",
        Goal(0.9, True, ">= 0.9x raw"),
    ),
    Metric("one_way_cpu_us", "one_way", "CPU per message, caller + service (µs)", False, "{:,.0f}"),
    Metric("one_way_service_cpu_us", "one_way", "... of which the service (µs)", False, "{:,.0f}"),
    Metric("stream_ips", "stream", "items/s at the caller", True, "{:,.0f}"),
    Metric("stream_first_ms", "stream", "first item (ms)", False, "{:.1f}"),
    Metric(
        "stream_vs_one_way",
        "stream",
        "items/s ÷ its own one-way msgs/s",
        True,
        "{:.2f}",
        Goal(0.8, False, ">= 0.8"),
    ),
    Metric(
        "idle_rss_mb", "memory", "idle service RSS (MB)", False, "{:.0f}", Goal(100, False, "< 100")
    ),
    Metric("in_flight_rss_mb", "memory", "RSS growth per 1,000 in flight (MB)", False, "{:.1f}"),
    Metric("in_flight_s", "memory", "time for the in-flight batch (s)", False, "{:.2f}"),
    Metric("startup_s", "startup", "launch to ready (s)", False, "{:.2f}", Goal(1.0, False, "< 1")),
    Metric("readyz_s", "startup", "launch to /readyz 200 (s)", False, "{:.2f}"),
]


def titles(config: Config) -> dict[str, str]:
    return {
        "seq": f"(1) sequential two-way, {config.seq_n:,} calls after {config.warmup} warm-up",
        "conc": f"(2) concurrent two-way, {config.inflight} in flight for {config.seconds:g} s",
        "one_way": f"(3) one-way, {config.one_way_n:,} x {config.size} B, end to end",
        "stream": f"(4) streamed reply of {config.stream_n:,} items",
        "memory": f"(5) service memory; {config.slow_n:,} requests of {config.slow_ms} ms "
        "in flight",
        "startup": f"(6) start-up on a running broker, median of {config.startups}",
    }


def medians(config: Config, results: Results) -> dict[tuple[str, str], float]:
    """Median per (metric, target) over the rounds; derived metrics from those medians."""
    table: dict[tuple[str, str], float] = {}
    rounds = results.all()
    for metric in METRICS:
        for target in config.targets:
            values = [r.values[metric.key] for r in rounds if _has(r, target, metric.key)]
            table[(metric.key, target)] = median(values)
    for target in config.targets:
        stream = table[("stream_ips", target)]
        one_way = table[("one_way_mps", target)]
        table[("stream_vs_one_way", target)] = stream / one_way if one_way else math.nan
    return table


def _has(round_: Round, target: str, key: str) -> bool:
    return round_.target == target and key in round_.values


def best_raw(
    metric: Metric, config: Config, table: dict[tuple[str, str], float]
) -> tuple[str, float] | None:
    raw = [
        (t, table[(metric.key, t)])
        for t in config.targets
        if TARGETS[t].kind == "raw" and not math.isnan(table[(metric.key, t)])
    ]
    if not raw:
        return None
    pick: Callable[..., tuple[str, float]] = max if metric.higher_is_better else min
    return pick(raw, key=lambda item: item[1])


def _ratio(value: float, other: float | None) -> float:
    if other is None or math.isnan(value) or math.isnan(other) or other == 0:
        return math.nan
    return value / other


def _fmt_ratio(native: float, httpx: float) -> str:
    if math.isnan(native) and math.isnan(httpx):
        return ""
    text = "n/a" if math.isnan(native) else _times(native)
    if not math.isnan(httpx):
        text += f" ({_times(httpx)})"
    return text


def _times(ratio: float) -> str:
    """A ratio with two significant digits at least: 1.64x, 0.13x, 0.0044x."""
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.2g}x"


def _cell(metric: Metric, value: float) -> str:
    return "" if math.isnan(value) else metric.fmt.format(value)


def raw_app_target(config: Config) -> str | None:
    """The raw baseline that runs bench.app in its service, if this run has one."""
    return next((t for t in config.targets if TARGETS[t].kind == "raw_app"), None)


def bare_target(config: Config) -> str | None:
    """kourier serving the bare ASGI app, if this run has it."""
    return next((t for t in config.targets if TARGETS[t].kind == "kourier_bare"), None)


def kourier_targets(config: Config) -> tuple[str | None, str | None]:
    """The native and the httpx kourier target of this run, if any."""
    native = next(
        (t for t in config.targets if TARGETS[t].kind == "kourier" and TARGETS[t].one_way), None
    )
    httpx = next(
        (t for t in config.targets if TARGETS[t].kind == "kourier" and not TARGETS[t].one_way),
        None,
    )
    return native, httpx


@dataclass(frozen=True, slots=True)
class Verdict:
    metric: Metric
    value: float  # the ratio or absolute value the goal is judged on
    met: bool
    #: For a goal against raw: kourier ÷ the raw baseline with the same app (not judged).
    vs_app: float = math.nan
    #: For a goal against raw: kourier serving the bare app ÷ the best raw (not judged).
    bare_vs_raw: float = math.nan


def table_rows(config: Config, results: Results) -> tuple[list[str], list[Verdict]]:
    table = medians(config, results)
    native, httpx = kourier_targets(config)
    # The httpx one: kourier ÷ http_aiohttp is a judged target of its own (bench.goals).
    http = "http" if "http" in config.targets else None
    raw_app = raw_app_target(config)
    bare = bare_target(config)
    same_app = " kourier ÷ raw with the same app |" if raw_app else ""
    bare_column = " kourier, bare app ÷ best raw |" if bare else ""
    ratio_columns = 2 + (1 if raw_app else 0) + (1 if bare else 0)
    header = [
        "| scenario | metric | "
        + " | ".join(config.targets)
        + f" | kourier ÷ best raw |{same_app}{bare_column} kourier ÷ http (httpx) "
        + "| earlier goal (not judged) | within |",
        "|---|---|" + "---:|" * len(config.targets) + "---:|" * ratio_columns + "---|---|",
    ]
    rows: list[str] = []
    verdicts: list[Verdict] = []
    names = titles(config)
    previous = ""
    for metric in METRICS:
        values = {t: table[(metric.key, t)] for t in config.targets}
        if all(math.isnan(v) for v in values.values()):
            continue
        title = names[metric.scenario] if metric.scenario != previous else ""
        previous = metric.scenario
        best = best_raw(metric, config, table)
        best_value = None if best is None else best[1]
        http_value = None if http is None else values[http]
        mine = values[native] if native else math.nan
        theirs = values[httpx] if httpx else math.nan
        vs_raw = _fmt_ratio(_ratio(mine, best_value), _ratio(theirs, best_value))
        vs_http = _fmt_ratio(_ratio(mine, http_value), _ratio(theirs, http_value))
        app_value = None if raw_app is None else values[raw_app]
        vs_app = _fmt_ratio(_ratio(mine, app_value), _ratio(theirs, app_value))
        bare_value = values[bare] if bare else math.nan
        bare_vs_raw = _ratio(bare_value, best_value)
        vs_bare = "" if math.isnan(bare_vs_raw) else _times(bare_vs_raw)
        if metric.key == "stream_vs_one_way":
            vs_raw = vs_http = vs_app = vs_bare = ""
        vs_raw_cells = (
            vs_raw + (f" | {vs_app}" if raw_app else "") + (f" | {vs_bare}" if bare else "")
        )
        goal, met = "", ""
        if metric.goal is not None and native is not None:
            judged = _ratio(mine, best_value) if metric.goal.vs_raw else mine
            goal = metric.goal.text
            if not math.isnan(judged):
                ok = metric.goal.met(judged, metric.higher_is_better)
                same = _ratio(mine, app_value) if metric.goal.vs_raw else math.nan
                bare_judged = bare_vs_raw if metric.goal.vs_raw else math.nan
                verdicts.append(Verdict(metric, judged, ok, same, bare_judged))
                met = "yes" if ok else "no"
            else:
                met = ""
        cells = " | ".join(_cell(metric, values[t]) for t in config.targets)
        rows.append(
            f"| {title} | {metric.label} | {cells} | {vs_raw_cells} | {vs_http} | {goal} | {met} |"
        )
    return header + rows, verdicts


def rounds_table(config: Config, results: Results) -> list[str]:
    keys = [m for m in METRICS if m.key != "stream_vs_one_way"]
    present = [m for m in keys if any(m.key in r.values for r in results.all())]
    lines = [
        "| round | target | " + " | ".join(m.key for m in present) + " |",
        "|---|---|" + "---:|" * len(present),
    ]
    for kind, rounds in (
        ("rep", results.rounds),
        ("in-flight rep", results.in_flight),
        ("launch", results.startups),
    ):
        for r in rounds:
            cells = " | ".join(_cell(m, r.values.get(m.key, math.nan)) for m in present)
            lines.append(f"| {kind} {r.rep + 1} | {r.target} | {cells} |")
    return lines


def render(config: Config, results: Results, env: Sequence[str]) -> str:
    rows, verdicts = table_rows(config, results)
    missed = [v for v in verdicts if not v.met]
    summary = (
        'Earlier goals (issue "Fast as the raw client", against the best raw baseline; '
        f"shown, not judged): within {len(verdicts) - len(missed)} of {len(verdicts)}"
        + (f"; outside: {', '.join(_short(v) for v in missed)}." if missed else ".")
        if verdicts
        else "No earlier goal measured."
    )
    raw_app = raw_app_target(config)
    lines = [
        "# kourier against the raw clients, its peers and plain HTTP",
        "",
        *env,
        *_app_cost(results),
        "",
        *goals.render(results.all()),
        "",
        "## All figures",
        "",
        summary,
        *_same_app_summary(raw_app, verdicts),
        *_bare_summary(bare_target(config), verdicts),
        *_bounds(config, results),
        "",
        f"Medians of {config.reps} repetitions (start-up: of {config.startups} launches); the "
        "order of the targets rotates between repetitions. Every repetition starts a fresh "
        "service process on fresh topics (1 partition each); the caller runs in the "
        "benchmark's process. Ratios are kourier's median over the other's (latency: above 1 "
        "is slower; rates: below 1 is slower); `best raw` is the better of the raw Kafka "
        "baselines for that metric"
        + (
            f"; `raw with the same app` is {raw_app}, whose service calls bench.app as "
            "kourier's does (kourier's own overhead, FastAPI's cost left out; not judged)"
            if raw_app
            else ""
        )
        + "; in parentheses, the httpx caller "
        "(`KourierTransport`). kourier_httpx has no one-way call (httpx waits for every "
        "reply); its service is kourier's, so it is not started or timed separately."
        + _one_way_caps(config),
        "",
        *rows,
        "",
        "Each round:",
        "",
        *rounds_table(config, results),
    ]
    errors = [f"- {r.target} (round {r.rep + 1}): {e}" for r in results.all() for e in r.errors]
    if errors:
        lines += ["", "Failures:", "", *errors]
    return "\n".join(lines) + "\n"


def _same_app_summary(raw_app: str | None, verdicts: Sequence[Verdict]) -> list[str]:
    """The goals against raw, read against the raw baseline with the same app instead."""
    same = [v for v in verdicts if not math.isnan(v.vs_app)]
    if raw_app is None or not same:
        return []
    ratios = ", ".join(f"{v.metric.scenario} {v.metric.label} {_times(v.vs_app)}" for v in same)
    return [
        "",
        f"The same ratios against {raw_app} (raw aiokafka whose service calls bench.app, "
        f"so FastAPI's cost is on both sides; shown, not judged): {ratios}.",
    ]


def _bare_summary(bare: str | None, verdicts: Sequence[Verdict]) -> list[str]:
    """The goals against raw, for kourier serving the bare app (kourier's own cost)."""
    measured = [v for v in verdicts if not math.isnan(v.bare_vs_raw)]
    if bare is None or not measured:
        return []
    ratios = ", ".join(
        f"{v.metric.scenario} {v.metric.label} {_times(v.bare_vs_raw)} ("
        + ("within" if _within(v) else "outside")
        + " the target)"
        for v in measured
    )
    return [
        "",
        f"The same ratios for {bare}, kourier serving bench.bare_app (the raw baselines' "
        f"work per request, no framework: kourier's cost over a hand-written service; "
        f"shown, not judged): {ratios}.",
    ]


def _within(verdict: Verdict) -> bool:
    goal = verdict.metric.goal
    return goal is not None and goal.met(verdict.bare_vs_raw, verdict.metric.higher_is_better)


@dataclass(frozen=True, slots=True)
class RateBound:
    """A rate goal, and what bounds it for any service that runs bench.app."""

    rate: str  # the judged metric, a rate
    app_call: str  # the bench.app call the scenario makes (a key of ``Results.app_us``)
    service_cpu: str  # the scenario's service CPU per call (a metric key)


RATE_BOUNDS = [
    RateBound("conc_rps", "POST /echo", "conc_service_cpu_us"),
    RateBound("one_way_mps", "POST /events", "one_way_service_cpu_us"),
]
#: The hand-written baseline on each Kafka client kourier can run on.
RAW_ON = {"aiokafka": "raw_aiokafka", "confluent": "raw_confluent"}


def _chosen_client(config: Config) -> str | None:
    """The Kafka client the run asks kourier for, if it asks for one."""
    return config.kafka_client or os.environ.get("KOURIER_KAFKA_CLIENT")


def kafka_client_of(config: Config) -> str:
    """The Kafka client under the kourier target of this run."""
    return _chosen_client(config) or Settings().kafka_client


def _bounds(config: Config, results: Results) -> list[str]:
    """What bounds each goal against raw for any service on kourier's Kafka client that
    runs bench.app, from this run's own figures; shown, not judged.

    Rates: the service's Python code runs on one core at a time (the GIL), and per call it
    runs bench.app (``Results.app_us``, measured in this run). On aiokafka, a pure-Python
    client, it also does at least what raw_aiokafka's whole service does per call
    (consume, and produce the reply) on that core; on confluent-kafka only the app counts,
    since librdkafka's own threads run beside the GIL. One core over that CPU per call
    bounds the rate of kourier, and of any other ASGI runtime, serving bench.app.

    Latencies: the hand-written round trip on kourier's Kafka client is what that client
    takes; its ratio to the best raw, and kourier's ratio to it, say whether a latency
    goal is missed for the client or for kourier (kourier can come out below it: the
    hand-written code is competent, not optimal).

    The bounds are measured, so they carry the run's noise (a few percent); the
    hand-written same-app baseline, where the run has it, is shown against them.
    """
    if not results.app_us:
        return []
    table = medians(config, results)
    client = kafka_client_of(config)
    raw = RAW_ON.get(client)
    raw_app = raw_app_target(config)
    native, _ = kourier_targets(config)
    parts = []
    for metric in METRICS:
        goal = metric.goal
        best = best_raw(metric, config, table)
        if goal is None or not goal.vs_raw or best is None:
            continue
        rate = next((r for r in RATE_BOUNDS if r.rate == metric.key), None)
        name = f"{metric.scenario} {metric.label}"
        if rate is not None:
            app_us = results.app_us.get(rate.app_call)
            if app_us is None:
                continue
            floor_us, why = app_us, f"{rate.app_call} {app_us:.0f} µs"
            if client == "aiokafka" and raw in config.targets:
                client_us = table[(rate.service_cpu, raw)]
                if not math.isnan(client_us):
                    floor_us += client_us
                    why += f" + {raw}'s whole service {client_us:.0f} µs"
            bound = 1e6 / floor_us
            ratio = bound / best[1]
            text = f"{name}: {why} → at most about {bound:,.0f}/s, {_times(ratio)} of {best[0]}"
            if raw_app is not None and not math.isnan(table[(metric.key, raw_app)]):
                text += f" ({raw_app}: {table[(metric.key, raw_app)]:,.0f}/s)"
            reach = "within reach" if goal.met(ratio, metric.higher_is_better) else "out of reach"
            parts.append(f"{text}; the target ({goal.text}) is {reach}")
        elif raw in config.targets and native is not None:
            theirs, mine = table[(metric.key, raw)], table[(metric.key, native)]
            if math.isnan(theirs):
                continue
            ratio = theirs / best[1]
            within = "within" if goal.met(ratio, metric.higher_is_better) else "outside"
            text = f"{name}: {raw} itself {theirs:.2f}, {_times(ratio)} of {best[0]}, {within} "
            text += f"the target ({goal.text})"
            if not math.isnan(mine):
                text += f", and kourier {_times(_ratio(mine, theirs))} of {raw}"
            parts.append(text)
    if not parts:
        return []
    return [
        "",
        f"Bounds, from this run's own figures (shown, not judged); kourier runs on {client}. "
        "A rate: per call a service serving bench.app runs the app and"
        + (f", on {client}, at least what {raw}'s service does," if client == "aiokafka" else "")
        + " all in Python on one core (the GIL), and with one partition one process serves a "
        "scenario; so no such service, kourier or another, goes faster than about one core "
        "over that CPU. A latency: the hand-written round trip on the same client is what "
        f"that client takes. {'; '.join(parts)}.",
    ]


def _app_cost(results: Results) -> list[str]:
    if not results.app_us:
        return []
    costs = ", ".join(
        f"{call} {us:.0f} µs (at most {1e6 / us:,.0f}/s on one core)"
        for call, us in results.app_us.items()
    )
    return [
        f"- bench.app alone, called in process with no transport: {costs} of CPU per call; "
        "every HTTP-shaped target (kourier, raw_aiokafka_app, http, http_aiohttp) pays this "
        "in its service, the raw echo baselines (raw_aiokafka, raw_confluent) and FastStream "
        "(its own handlers) do not"
    ]


def _one_way_caps(config: Config) -> str:
    caps = []
    for target in config.targets:
        cap = TARGETS[target].one_way_max
        if cap is not None and cap < config.one_way_n:
            caps.append(f"{target}: {cap:,}")
    if not caps:
        return ""
    return f" Fewer one-way messages, to stay within the 90 s bound: {', '.join(caps)}."


def _short(verdict: Verdict) -> str:
    metric = verdict.metric
    unit = "x raw" if metric.goal is not None and metric.goal.vs_raw else ""
    value = _times(verdict.value).removesuffix("x") if unit else f"{verdict.value:.2f}"
    return f"{metric.scenario} {metric.label} {value}{unit}"


# -- the machine and the versions ------------------------------------------------------------


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _meminfo_gb() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(
    config: Config,
    kafka: str,
    load_start: tuple[float, float, float],
    load_end: tuple[float, float, float],
    command: str,
) -> list[str]:
    import confluent_kafka  # only for librdkafka's own version

    under = _chosen_client(config) or f"{Settings().kafka_client} (kourier's default)"
    return [
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {os.cpu_count()} CPUs ({_cpu_model()}), {_meminfo_gb()} memory, "
        f"{platform.system()} {platform.release()}; Python {platform.python_version()}",
        f"- Kafka: {kafka}, single node at {config.bootstrap}; the broker, the services and "
        "the caller share the machine",
        f"- kourier {_version('kourier')} ({_source()}) on {under}; "
        f"aiokafka {_version('aiokafka')}; confluent-kafka {_version('confluent-kafka')} "
        f"(librdkafka {confluent_kafka.libversion()[0]}); fastapi {_version('fastapi')}, starlette "
        f"{_version('starlette')}, uvicorn {_version('uvicorn')}, httpx {_version('httpx')}, "
        f"aiohttp {_version('aiohttp')}, faststream {_version('faststream')}",
        f"- load average (1/5/15 min) at start: {_load(load_start)}; at end: {_load(load_end)}",
        f"- command: `{command}`",
    ]


def _source() -> str:
    """The commit kourier's source is at, and whether src/ has changes not committed."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "source: unknown commit"
    return f"commit {commit}" + (", with uncommitted changes in src/" if dirty else "")


def _load(load: tuple[float, float, float]) -> str:
    return " / ".join(f"{value:.2f}" for value in load)
