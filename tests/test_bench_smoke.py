"""The benchmark suite (bench/run.py) in miniature, so that it cannot rot unnoticed.

It runs every scenario against kourier (both callers, and serving the bare app) and every
baseline (raw aiokafka, raw confluent-kafka, raw aiokafka calling bench.app, plain HTTP
with httpx and with aiohttp, FastStream), the variants on confluent-kafka, and the
sending scenario's senders, with tiny counts, and checks that the numbers are sane
(positive rates, latencies above zero), never that a target is met: that is what
``python -m bench.run`` on a quiet machine is for.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Sequence

import httpx
import pytest
from bench import goals, layers, report
from bench.common import (
    ECHO_BODY,
    JSON_CONTENT,
    Round,
    call_asgi,
    echo_reply,
    http_scope,
    stream_item,
)
from bench.run import DEFAULT_TARGETS, TARGETS, Config, Results, run_all
from bench.sending import SENDERS, kourier_record
from bench.targets.kourier import SERVICE

from kourier import Client, Settings
from kourier.transports.base import TopicSpec
from kourier.transports.memory import MemoryTransport
from tests.conftest import kafka_bootstrap


@pytest.mark.parametrize("module", ["bench.app", "bench.bare_app"])
async def test_the_apps_answer_what_the_raw_baselines_emulate(module: str) -> None:
    """bench.app and bench.bare_app (the kourier_bare target) give the raw baselines'
    bytes: the echo's reply, one of their records per item, 202 for an event."""
    app = importlib.import_module(module).app
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        echo = await client.post(
            "/echo", content=ECHO_BODY, headers={"content-type": "application/json"}
        )
        items = await client.get("/items", params={"n": 3})
        event = await client.post("/events", content=b"x" * 200)
        missing = await client.get("/nowhere")
    assert (echo.status_code, echo.content) == (200, echo_reply(ECHO_BODY))
    assert items.headers["content-type"] == "application/x-ndjson"
    assert items.content.splitlines() == [stream_item(i) for i in range(3)]
    assert (event.status_code, event.content) == (202, b"")
    assert missing.status_code == 404


async def test_the_hand_written_asgi_call_gets_what_the_app_sends() -> None:
    """raw_aiokafka_app's ASGI call: the echo's status and body, one chunk per item."""
    from bench.app import app

    sent: list[tuple[int, bytes, bool]] = []

    async def collect(status: int, body: bytes, more: bool) -> None:
        sent.append((status, body, more))

    scope = http_scope("POST", "/echo", headers=JSON_CONTENT)
    assert await call_asgi(app, scope, ECHO_BODY, collect) == 200
    assert sent == [(200, echo_reply(ECHO_BODY), False)]
    sent.clear()
    assert await call_asgi(app, http_scope("GET", "/items", b"n=3"), b"", collect) == 200
    items = [(200, stream_item(i) + b"\n", True) for i in range(3)]
    assert sent == [*items, (200, b"", False)]


def tiny(bootstrap: str) -> Config:
    return Config.quick(
        bootstrap,
        seq_n=30,
        warmup=5,
        seconds=0.5,
        warmup_s=0.2,
        one_way_n=300,
        stream_n=100,
        settle_s=0.1,
        slow_n=20,
        slow_ms=300,
        startups=1,
        send_n=200,
    )


@pytest.mark.kafka
@pytest.mark.timeout(240)
async def test_every_scenario_runs_end_to_end_with_sane_numbers() -> None:
    """Each target measures each of its scenarios, and the report renders them."""
    config = tiny(kafka_bootstrap())
    results = await run_all(config)

    errors = [f"{r.target}: {e}" for r in results.all() for e in r.errors]
    assert errors == []
    assert results.app_us and all(us > 0 for us in results.app_us.values())
    assert {r.target for r in results.rounds} == set(DEFAULT_TARGETS)
    for round_ in results.rounds:
        values = round_.values
        expected = {"seq_p50_ms", "seq_p99_ms", "conc_rps", "conc_p99_ms", "idle_rss_mb"}
        if TARGETS[round_.target].stream:
            expected |= {"stream_ips", "stream_first_ms"}
        # CPU time comes in clock ticks (10 ms): a tiny run may well use none in a service.
        cpu = {"conc_cpu_us", "conc_service_cpu_us", "conc_caller_cpu_us"}
        if TARGETS[round_.target].one_way:
            expected.add("one_way_mps")
            cpu |= {"one_way_cpu_us", "one_way_service_cpu_us"}
        assert expected | cpu <= set(values), round_.target
        assert all(values[key] > 0 for key in expected), (round_.target, values)
        assert all(values[key] >= 0 for key in cpu), (round_.target, values)
        assert values["seq_p99_ms"] >= values["seq_p50_ms"]
    assert_in_flight_and_startup(config, results)
    sent = {r.target: r.values for r in results.sending}
    assert set(sent) == {f"send:{sender}" for sender in SENDERS}
    assert all(values["send_mps"] > 0 for values in sent.values()), sent

    text = report.render(config, results, ["- environment: smoke test"])
    assert "| scenario | metric | kourier | kourier_httpx | kourier_bare |" in text
    assert "kourier, bare app ÷ best raw" in text
    assert "The same ratios for kourier_bare" in text
    assert "Bounds, from this run's own figures" in text
    assert "## Targets (issue #14, restated)" in text
    # every target of issue #14 in bench.goals got both its figures from this run
    assert f" of {len(goals.GOALS)} measured" in text
    assert "not measured" not in text


@pytest.mark.kafka
@pytest.mark.timeout(180)
async def test_the_variant_targets_run_end_to_end_too() -> None:
    """The targets outside the default list (kourier and the raw baseline on
    confluent-kafka) measure their scenarios without a failure."""
    variants = [t for t in TARGETS if t not in DEFAULT_TARGETS]
    config = dataclasses.replace(tiny(kafka_bootstrap()), targets=variants)
    results = await run_all(config)

    assert [f"{r.target}: {e}" for r in results.all() for e in r.errors] == []
    assert {r.target for r in results.rounds} == set(variants)
    assert all(r.values["conc_rps"] > 0 and r.values["seq_p50_ms"] > 0 for r in results.rounds)


def assert_in_flight_and_startup(config: Config, results: Results) -> None:
    in_flight = {r.target: r.values for r in results.in_flight}
    assert set(in_flight) == {t for t in DEFAULT_TARGETS if TARGETS[t].in_flight}
    serialized_s = config.slow_n * config.slow_ms / 1000
    for target, values in in_flight.items():
        assert math.isfinite(values["in_flight_rss_mb"]), target
        # The slow calls overlapped: they took about one call's time, not all of theirs.
        assert config.slow_ms / 1000 <= values["in_flight_s"] < serialized_s / 2, target

    startups = {r.target: r.values for r in results.startups}
    assert set(startups) == {t for t in DEFAULT_TARGETS if TARGETS[t].startup}
    assert all(values["startup_s"] > 0 for values in startups.values())
    assert startups["kourier"]["readyz_s"] >= startups["kourier"]["startup_s"]


def test_the_report_marks_an_earlier_goal_outside_its_bound() -> None:
    """A kourier p50 far above the raw baselines' is shown outside the earlier goal."""
    config = Config("127.0.0.1:9092", targets=["kourier", "raw_aiokafka"], reps=1)
    results = Results(
        rounds=[
            Round(0, "kourier", {"seq_p50_ms": 4.0, "idle_rss_mb": 50.0}),
            Round(0, "raw_aiokafka", {"seq_p50_ms": 2.0, "idle_rss_mb": 30.0}),
        ]
    )
    text = report.render(config, results, [])
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    p50 = next(row for row in rows if "p50 latency" in row)
    assert "2.00x" in p50 and p50.endswith("| no |")
    rss = next(row for row in rows if "idle service RSS" in row)
    assert rss.endswith("| yes |")


def test_the_report_sets_kourier_beside_the_raw_baseline_with_the_same_app() -> None:
    """The extra column divides by raw_aiokafka_app, which is never the "best raw"."""
    targets = ["kourier", "raw_aiokafka", "raw_aiokafka_app"]
    config = Config("127.0.0.1:9092", targets=targets, reps=1)
    p50 = {"kourier": 4.0, "raw_aiokafka": 2.0, "raw_aiokafka_app": 1.0}
    results = Results(rounds=[Round(0, t, {"seq_p50_ms": v}) for t, v in p50.items()])
    text = report.render(config, results, [])
    assert "| kourier ÷ best raw | kourier ÷ raw with the same app |" in text
    row = next(line for line in text.splitlines() if line.startswith("| (1)"))
    assert "| 2.00x | 4.00x |" in row and row.endswith("| no |")
    assert "seq p50 latency (ms) 4.00x." in text


def test_issue_14_targets_are_judged_on_ratios_from_the_same_run() -> None:
    """A ratio past its limit is missed, one within it met, each with both medians."""
    rounds = [
        Round(0, "kourier", {"seq_p50_ms": 2.0, "conc_rps": 6000.0}),
        Round(1, "kourier", {"seq_p50_ms": 4.0, "conc_rps": 6000.0}),
        Round(0, "raw_aiokafka_app", {"seq_p50_ms": 1.0, "conc_rps": 5000.0}),
        Round(0, "send:kourier", {"send_mps": 20_000.0, "send_cpu_us": 30.0}),
        Round(0, "send:aiokafka", {"send_mps": 40_000.0, "send_cpu_us": 15.0}),
    ]
    by_what = {(v.goal.group, v.goal.what): v for v in goals.judge(rounds)}
    p50 = by_what[(goals.OWN, "sequential p50")]
    assert (p50.mine, p50.theirs, p50.ratio, p50.met) == (3.0, 1.0, 3.0, False)
    conc = by_what[(goals.OWN, "64 in flight, req/s")]
    assert conc.met and conc.ratio == 1.2
    sending = next(v for v in by_what.values() if v.goal.key == "send_mps")
    assert sending.ratio == 0.5 and not sending.met

    text = "\n".join(goals.render(rounds))
    assert "| sequential p50 | kourier | 3.00 | raw_aiokafka_app | 1.00 | 3.00x | <= 1x |" in text
    assert "| send:kourier | 20,000 | 30.0 |" in text
    assert "missed: sequential p50 (kourier ÷ raw_aiokafka_app) 3.00x, " in text


async def test_the_raw_sender_sends_the_very_record_kourier_enqueues() -> None:
    """bench.sending's raw producer gets kourier's value and headers for the same message
    (all but the request id), so the sending ratio is kourier's client cost alone."""
    settings = Settings(partitions=1)
    transport = MemoryTransport()
    topic = settings.request_topic(SERVICE)
    await transport.ensure_topics([TopicSpec(topic, 1)])
    async with Client(settings, transport=transport) as client:
        await client.enqueue(SERVICE, "POST", "/events", content=b"x" * 200)
        await client.flush()
    (record,) = transport.broker.topics[topic][0]
    value, headers = kourier_record(200)

    def without_id(pairs: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        return [(name, v) for name, v in pairs if name != "kourier-id"]

    assert record.value == value
    assert without_id(record.headers) == without_id(headers)
    assert len(headers) == len(record.headers)


@pytest.mark.parametrize("size", [200, 11])
def test_faststreams_event_is_the_benchs_size_in_json(size: int) -> None:
    """The pydantic event FastStream's caller publishes is ``size`` bytes of JSON (what
    FastStream puts in the record for a model)."""
    from bench.baselines.faststream_rpc import event_of_size

    assert len(event_of_size(size).model_dump_json()) == size


def test_a_target_without_its_baseline_is_not_measured_nor_met() -> None:
    """A goal whose baseline the run lacks is shown as not measured and counts for neither."""
    rounds = [Round(0, "kourier", {"conc_rps": 6000.0, "seq_p50_ms": 1.0})]
    verdicts = goals.judge(rounds)
    assert not any(v.measured or v.met for v in verdicts)
    assert goals.summary(verdicts).startswith(
        f"Issue #14's targets met: 0 of 0 measured ({len(goals.GOALS)} not measured"
    )


BOUNDED = ["kourier", "raw_aiokafka", "raw_confluent", "raw_aiokafka_app"]


def bounds_of(client: str | None, app_us: dict[str, float], targets: list[str] = BOUNDED) -> str:
    """The report's "Bounds" line for a run on ``client`` with made-up figures."""
    config = Config("127.0.0.1:9092", targets=targets, reps=1, kafka_client=client)
    figures = {
        "kourier": {"conc_rps": 4000.0, "one_way_mps": 8000.0, "seq_p50_ms": 1.8},
        "raw_aiokafka": {
            "conc_rps": 10_000.0,
            "one_way_mps": 60_000.0,
            "conc_service_cpu_us": 40.0,
            "one_way_service_cpu_us": 10.0,
            "seq_p50_ms": 2.0,
        },
        "raw_confluent": {"conc_rps": 5000.0, "one_way_mps": 200_000.0, "seq_p50_ms": 1.0},
        "raw_aiokafka_app": {"conc_rps": 5000.0, "one_way_mps": 9000.0},
    }
    results = Results(
        rounds=[Round(0, t, v) for t, v in figures.items() if t in config.targets], app_us=app_us
    )
    text = report.render(config, results, [])
    return next((line for line in text.splitlines() if line.startswith("Bounds")), "")


def test_the_report_bounds_the_goals_for_any_service_running_the_app_on_aiokafka() -> None:
    """Rates: one core over the app's CPU plus the raw service's; latency: raw aiokafka's."""
    line = bounds_of("aiokafka", {"POST /echo": 60.0, "POST /events": 90.0})
    # 1e6 / (60 + 40) = 10,000/s against raw_aiokafka's 10,000: within 0.9x.
    assert (
        "conc throughput (req/s): POST /echo 60 µs + raw_aiokafka's whole service 40 µs → at "
        "most about 10,000/s, 1.00x of raw_aiokafka (raw_aiokafka_app: 5,000/s); the target "
        "(>= 0.9x raw) is within reach"
    ) in line
    # 1e6 / (90 + 10) = 10,000/s against raw_confluent's 200,000.
    assert (
        "one_way throughput (msgs/s): POST /events 90 µs + raw_aiokafka's whole service 10 µs "
        "→ at most about 10,000/s, 0.05x of raw_confluent (raw_aiokafka_app: 9,000/s); the "
        "target (>= 0.9x raw) is out of reach"
    ) in line
    assert (
        "seq p50 latency (ms): raw_aiokafka itself 2.00, 2.00x of raw_confluent, outside the "
        "target (<= 1.15x raw), and kourier 0.90x of raw_aiokafka"
    ) in line


def test_the_bound_on_confluent_counts_only_the_app() -> None:
    """librdkafka's threads run beside the GIL: only the app's CPU bounds the rate."""
    line = bounds_of("confluent", {"POST /echo": 80.0, "POST /events": 90.0})
    assert "POST /echo 80 µs → at most about 12,500/s, 1.25x of raw_aiokafka (" in line
    assert "whole service" not in line
    # the latency is set against raw_confluent, the client kourier runs on
    assert "seq p50 latency (ms): raw_confluent itself 1.00, 1.00x of raw_confluent, within" in line


def test_the_latency_bound_stands_without_a_kourier_figure() -> None:
    """A kourier round that measured no latency still gets the client's own round trip."""
    config = Config("127.0.0.1:9092", targets=BOUNDED, reps=1, kafka_client="aiokafka")
    rounds = [
        Round(0, "kourier", {"conc_rps": 4000.0}),
        Round(0, "raw_aiokafka", {"seq_p50_ms": 2.0, "conc_rps": 10_000.0}),
        Round(0, "raw_confluent", {"seq_p50_ms": 1.0}),
    ]
    text = report.render(config, Results(rounds=rounds, app_us={"POST /echo": 60.0}), [])
    line = next(line for line in text.splitlines() if line.startswith("Bounds"))
    assert (
        "seq p50 latency (ms): raw_aiokafka itself 2.00, 2.00x of raw_confluent, outside the "
        "target (<= 1.15x raw); "
    ) in line
    assert "kourier nan" not in line and "nanx" not in line


def test_no_bounds_without_the_apps_cost_or_a_raw_baseline() -> None:
    assert bounds_of("aiokafka", {}) == ""
    assert bounds_of("aiokafka", {"POST /echo": 80.0}, targets=["kourier", "http"]) == ""


@pytest.mark.parametrize("app", ["bench", "bare"])
async def test_the_layers_tool_times_every_layer_of_the_service(app: str) -> None:
    """``bench.layers`` runs each layer on fresh records; the whole path costs more than
    the app alone, and the consume loop finishes every record (it raises otherwise)."""
    rows = await layers.measure(app, two_way=True, n=300, reps=1)
    assert [label for label, _ in rows][: len(layers.LAYERS)] == list(layers.LAYERS)
    values = dict(rows)
    assert all(us > 0 for us in values.values()), values
    assert values[layers.LAYERS[-1]] > values[layers.LAYERS[0]], values


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--records", "0"], "must be at least 1, got 0"),
        (["--reps", "-1"], "must be at least 1, got -1"),
        (["--records", "many"], "'many' is not a whole number"),
    ],
)
def test_the_layers_tool_refuses_counts_it_cannot_time(
    args: list[str], why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        layers.main(args)
    assert exit_.value.code == 2
    assert why in capsys.readouterr().err
