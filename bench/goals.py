"""The performance targets as issue #14 restates them, judged on one ``bench.run``'s medians.

Every target is a ratio of two medians measured in the same run: kourier's (``mine``)
over a baseline's (``theirs``), met when it is at or above ``limit`` for a rate, at or
below it for a latency or a CPU cost. A target whose two figures the run lacks (a
target left out with ``--targets``, a failed scenario) is "not measured", never met.

The groups, in the issue's words:

* kourier's own overhead, against ``raw_aiokafka_app`` (hand-written aiokafka code
  calling the same FastAPI app);
* ``kourier_bare`` against raw aiokafka (no framework on either side);
* the caller: ``enqueue`` + ``flush`` against a raw aiokafka producer (the sending
  scenario, targets ``send:<sender>``), and the httpx transport against the native
  client at 64 in flight;
* the peers a user would pick instead: FastStream (DIY request/reply on its Kafka
  broker) and HTTP with a fast client (uvicorn + aiohttp).

``--workers 2`` against one worker is the "scale" work's: its runner adds a :class:`Goal`
to :data:`GOALS` with its own target names, and its rounds to ``Results`` (any round
whose target and key a goal names is picked up by :func:`medians`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bench.common import Round, median


@dataclass(frozen=True, slots=True)
class Goal:
    """``mine``'s median of ``key`` over ``theirs``'s, within ``limit``."""

    group: str
    what: str
    key: str
    mine: str
    theirs: str
    limit: float
    higher_is_better: bool

    @property
    def text(self) -> str:
        return f"{'>=' if self.higher_is_better else '<='} {self.limit:g}x"

    def met(self, ratio: float) -> bool:
        return ratio >= self.limit if self.higher_is_better else ratio <= self.limit


OWN = "kourier's own overhead (vs hand-written aiokafka + the same FastAPI app)"
BARE = "kourier_bare vs raw aiokafka (no framework either side)"
CALLER = "caller"
PEERS = "peers"

GOALS = [
    Goal(OWN, "sequential p50", "seq_p50_ms", "kourier", "raw_aiokafka_app", 1.0, False),
    Goal(OWN, "sequential p99", "seq_p99_ms", "kourier", "raw_aiokafka_app", 1.0, False),
    Goal(OWN, "64 in flight, req/s", "conc_rps", "kourier", "raw_aiokafka_app", 1.0, True),
    Goal(OWN, "one-way, msgs/s", "one_way_mps", "kourier", "raw_aiokafka_app", 1.0, True),
    Goal(
        OWN,
        "service CPU per one-way message",
        "one_way_service_cpu_us",
        "kourier",
        "raw_aiokafka_app",
        1.15,
        False,
    ),
    Goal(BARE, "one-way, msgs/s", "one_way_mps", "kourier_bare", "raw_aiokafka", 0.5, True),
    Goal(BARE, "64 in flight, req/s", "conc_rps", "kourier_bare", "raw_aiokafka", 0.8, True),
    Goal(
        CALLER,
        "one-way sending, enqueue + flush vs a raw aiokafka producer (msgs/s)",
        "send_mps",
        "send:kourier",
        "send:aiokafka",
        0.8,
        True,
    ),
    Goal(
        CALLER,
        "httpx (KourierTransport) vs native client, 64 in flight req/s",
        "conc_rps",
        "kourier_httpx",
        "kourier",
        0.8,
        True,
    ),
    Goal(
        CALLER,
        "httpx vs native client, caller CPU per call at 64 in flight",
        "conc_caller_cpu_us",
        "kourier_httpx",
        "kourier",
        1.5,
        False,
    ),
    Goal(PEERS, "FastStream: 64 in flight, req/s", "conc_rps", "kourier", "faststream", 3.0, True),
    Goal(PEERS, "FastStream: one-way, msgs/s", "one_way_mps", "kourier", "faststream", 1.0, True),
    Goal(
        PEERS,
        "HTTP, aiohttp client: 64 in flight, req/s",
        "conc_rps",
        "kourier",
        "http_aiohttp",
        1.0,
        True,
    ),
    Goal(
        PEERS,
        "HTTP, aiohttp client: sequential p50",
        "seq_p50_ms",
        "kourier",
        "http_aiohttp",
        3.0,
        False,
    ),
]

#: Figures the sending scenario gives, per sender: (key, label, format).
SENDING_FIGURES = [
    ("send_mps", "msgs/s to the last ack", "{:,.0f}"),
    ("send_cpu_us", "caller CPU per message (µs)", "{:.1f}"),
]


@dataclass(frozen=True, slots=True)
class Verdict:
    goal: Goal
    mine: float
    theirs: float

    @property
    def ratio(self) -> float:
        if math.isnan(self.mine) or math.isnan(self.theirs) or self.theirs == 0:
            return math.nan
        return self.mine / self.theirs

    @property
    def measured(self) -> bool:
        return not math.isnan(self.ratio)

    @property
    def met(self) -> bool:
        return self.measured and self.goal.met(self.ratio)


def medians(rounds: Iterable[Round]) -> dict[tuple[str, str], float]:
    """Median per (target, key) over the rounds that have it."""
    found: dict[tuple[str, str], list[float]] = {}
    for round_ in rounds:
        for key, value in round_.values.items():
            found.setdefault((round_.target, key), []).append(value)
    return {where: median(values) for where, values in found.items()}


def judge(rounds: Iterable[Round], goals: Sequence[Goal] = GOALS) -> list[Verdict]:
    table = medians(rounds)
    return [
        Verdict(
            goal,
            table.get((goal.mine, goal.key), math.nan),
            table.get((goal.theirs, goal.key), math.nan),
        )
        for goal in goals
    ]


def _times(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.2g}x"


def _figure(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def summary(verdicts: Sequence[Verdict]) -> str:
    measured = [v for v in verdicts if v.measured]
    missed = [v for v in measured if not v.met]
    text = f"Issue #14's targets met: {len(measured) - len(missed)} of {len(measured)} measured"
    if len(measured) < len(verdicts):
        text += f" ({len(verdicts) - len(measured)} not measured in this run)"
    if missed:
        text += "; missed: " + ", ".join(
            f"{v.goal.what} ({v.goal.mine} ÷ {v.goal.theirs}) {_times(v.ratio)}" for v in missed
        )
    return text + "."


def render(rounds: Sequence[Round], goals: Sequence[Goal] = GOALS) -> list[str]:
    """The targets table, a summary line above it, and the sending scenario's figures."""
    verdicts = judge(rounds, goals)
    lines = [
        "## Targets (issue #14, restated)",
        "",
        summary(verdicts),
        "",
        "Each ratio is kourier's median over the baseline's, both from this run. "
        "`http_aiohttp` is uvicorn serving bench.app called with aiohttp (the fast HTTP "
        "client); `http` is the same service called with httpx. `send:*` are the sending "
        "scenario's callers (no service).",
        "",
        "| group | target | kourier side | median | baseline | median | ratio | limit | verdict |",
        "|---|---|---|---:|---|---:|---:|---|---|",
    ]
    previous = ""
    for v in verdicts:
        group = v.goal.group if v.goal.group != previous else ""
        previous = v.goal.group
        ratio = _times(v.ratio) if v.measured else ""
        verdict = ("met" if v.met else "**missed**") if v.measured else "not measured"
        lines.append(
            f"| {group} | {v.goal.what} | {v.goal.mine} | {_figure(v.mine)} | {v.goal.theirs} "
            f"| {_figure(v.theirs)} | {ratio} | {v.goal.text} | {verdict} |"
        )
    return lines + _sending(rounds)


def _sending(rounds: Sequence[Round]) -> list[str]:
    table = medians(rounds)
    senders = sorted({t for t, _ in table if t.startswith("send:")})
    if not senders:
        return []
    lines = [
        "",
        "Sending scenario (`bench/sending.py`): one-way messages queued without waiting "
        "for each ack, then all acks awaited; same acks (`all`) for every sender.",
        "",
        "| sender | " + " | ".join(label for _, label, _ in SENDING_FIGURES) + " |",
        "|---|" + "---:|" * len(SENDING_FIGURES),
    ]
    for sender in senders:
        cells = []
        for key, _, fmt in SENDING_FIGURES:
            value = table.get((sender, key), math.nan)
            cells.append("" if math.isnan(value) else fmt.format(value))
        lines.append(f"| {sender} | " + " | ".join(cells) + " |")
    return lines
