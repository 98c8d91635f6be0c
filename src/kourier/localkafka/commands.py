"""The commands: start, stop, status, env, logs, kill-node, start-node.

Shared by ``kourier kafka`` and ``python -m kourier.localkafka`` (and so by the
repository's ``scripts/kafka``): :func:`add_commands` adds them to an argparse
sub-parser set, and each command returns its exit code or raises ``LocalKafkaError``.
When ``KOURIER_BOOTSTRAP_SERVERS`` names another broker, ``start`` and ``env`` use it and
``stop`` leaves it alone. This module must never stop or kill a broker it did not start
(one whose runtime folder is not this one).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from kourier.localkafka import java as java_lookup
from kourier.localkafka import requirements
from kourier.localkafka.certs import ensure_certs, security_lines
from kourier.localkafka.config import LOG4J2_PROPERTIES, new_cluster_id, server_properties
from kourier.localkafka.console import LocalKafkaError, print_env, say
from kourier.localkafka.jars import fetch
from kourier.localkafka.layout import (
    DEFAULT_PORT,
    State,
    env_int,
    load_state,
    locked,
    runtime_dir,
    save_state,
    state_file,
)
from kourier.localkafka.probe import answers
from kourier.localkafka.processes import NodeProcesses, signal_all, stray_pids, tail, wait_gone
from kourier.localkafka.readiness import check_ports, wait_external, wait_ready


def _log4j_file() -> Path:
    return runtime_dir() / "log4j2.properties"


def _certs_dir() -> Path:
    return runtime_dir() / "certs"


def _processes(state: State, java: str | None = None) -> NodeProcesses:
    return NodeProcesses(state, _log4j_file(), java)


def _env_extra(state: State) -> list[tuple[str, str]]:
    return security_lines(state.node_list(), _certs_dir()) if state.security else []


def external_bootstrap(state: State | None) -> str | None:
    """``KOURIER_BOOTSTRAP_SERVERS``, unless it names the broker managed here."""
    value = os.environ.get("KOURIER_BOOTSTRAP_SERVERS", "").strip()
    if not value or (state is not None and value == state.bootstrap):
        return None
    return value


def running_state() -> State | None:
    """The state of the broker managed here if at least one node runs."""
    state = load_state()
    if state is None:
        return None
    processes = _processes(state)
    return state if any(processes.alive(n) for n in state.node_list()) else None


def cmd_start(args: argparse.Namespace) -> int:
    state = load_state()
    external = external_bootstrap(state)
    if external:
        view = wait_external(external, args.timeout)
        say(
            f"using the broker KOURIER_BOOTSTRAP_SERVERS names "
            f"({len(view.brokers)} broker(s), cluster {view.cluster_id})"
        )
        print_env(external)
        return 0
    with locked():
        running = running_state()
        if running is not None:
            return _already_running(running, args)
        return _fresh_start(args)


def _already_running(state: State, args: argparse.Namespace) -> int:
    if args.nodes is not None and args.nodes != state.nodes:
        raise LocalKafkaError(
            f"a {state.nodes}-node broker is already running; "
            f"run `{args.prog} stop` before starting {args.nodes} node(s)"
        )
    if args.security and not state.security:
        raise LocalKafkaError(
            "the running broker has no security listeners; "
            f"run `{args.prog} stop`, then `{args.prog} start --security`"
        )
    if args.port is not None and args.port != state.port:
        raise LocalKafkaError(
            f"the running broker uses base port {state.port}; run `{args.prog} stop` first"
        )
    processes = _processes(state)
    down = [n for n in state.node_list() if not processes.alive(n)]
    for node in down:
        say(f"node {node.id} is down: restarting it (no reformat)")
        processes.launch(node)
    if down:
        wait_ready(processes, state.node_list(), args.timeout, expect=state.nodes)
    say(f"already running ({state.nodes} node(s), Kafka {state.version})")
    print_env(state.bootstrap, _env_extra(state))
    return 0


def _refuse_docker_settings() -> None:
    """The settings of the removed Docker path are an error rather than ignored."""
    runtime = os.environ.get("KOURIER_KAFKA_RUNTIME", "")
    if runtime not in ("", "auto", "local") or os.environ.get("KOURIER_KAFKA_IMAGE"):
        raise LocalKafkaError(
            "KOURIER_KAFKA_RUNTIME=docker and KOURIER_KAFKA_IMAGE are no longer supported: "
            "run the apache/kafka image yourself and set KOURIER_BOOTSTRAP_SERVERS to it, "
            "or unset them to run the broker on this machine's Java"
        )


def _fresh_start(args: argparse.Namespace) -> int:
    began = time.monotonic()
    _refuse_docker_settings()
    java, source = requirements.check()
    port = args.port if args.port is not None else env_int("KOURIER_KAFKA_PORT", DEFAULT_PORT)
    state = State(
        version=source.version,
        nodes=args.nodes or 1,
        port=port,
        security=args.security,
        cluster_id=new_cluster_id(),
    )
    nodes = state.node_list()
    processes = _processes(state, java)
    # Leftovers of an earlier run (a lost pid file): nothing of ours may keep running.
    strays = stray_pids(runtime_dir())
    if strays:
        say(f"killing leftover broker JVM(s) from this runtime folder: {strays}")
        signal_all(strays, signal.SIGKILL)
        processes.wait_gone(strays, 10)
    check_ports(nodes, args.security)
    say(f"using {source.describe()}")
    state.lib = str(fetch(source))
    for entry in runtime_dir().glob("node-*"):  # a fresh broker for every start
        shutil.rmtree(entry, ignore_errors=True)
    _log4j_file().write_text(LOG4J2_PROPERTIES)
    if args.security:
        ensure_certs(_certs_dir(), java, java_lookup.find_tool(java, "keytool"))
    for node in nodes:
        node.data.mkdir(parents=True)
        node.logs.mkdir(parents=True)
        node.props.write_text(server_properties(node, nodes, args.security, _certs_dir()))
    save_state(state)
    formatting = time.monotonic()
    processes.format(nodes)
    say(
        f"formatted {len(nodes)} node(s) (cluster id {state.cluster_id}) in "
        f"{time.monotonic() - formatting:.1f}s; starting Kafka {state.version}..."
    )
    launched = time.monotonic()
    for node in nodes:
        processes.launch(node)
    try:
        wait_ready(processes, nodes, args.timeout, expect=len(nodes))
    except LocalKafkaError:
        processes.stop_all(5)
        raise
    now = time.monotonic()
    say(
        f"ready: {len(nodes)} node(s) answering in {now - launched:.1f}s after launch, "
        f"{now - began:.1f}s in all (logs: {args.prog} logs)"
    )
    print_env(state.bootstrap, _env_extra(state))
    return 0


def _managed(args: argparse.Namespace) -> State:
    state = load_state()
    if state is None:
        raise LocalKafkaError(
            f"no broker was started in {runtime_dir()} (no {state_file().name}): "
            f"run `{args.prog} start` (or set KOURIER_KAFKA_DIR to the broker's folder)"
        )
    return state


def cmd_stop(args: argparse.Namespace) -> int:
    state = load_state()
    if external_bootstrap(state) and running_state() is None:
        say("KOURIER_BOOTSTRAP_SERVERS names a broker not managed here: nothing to stop")
        return 0
    with locked():
        if state is None:
            say("not running")
        else:
            processes = _processes(state)
            live = [n for n in state.node_list() if processes.alive(n)]
            if live:
                began = time.monotonic()
                processes.stop_all(args.timeout)
                say(f"stopped {len(live)} node(s) in {time.monotonic() - began:.1f}s")
            else:
                say("not running")
            for node in state.node_list():
                node.pidfile.unlink(missing_ok=True)
        strays = stray_pids(runtime_dir())
        if strays:
            say(f"killing leftover JVM(s) from this runtime folder: {strays}")
            signal_all(strays, signal.SIGKILL)
            left = wait_gone(strays, 10)
            if left:
                raise LocalKafkaError(f"could not kill pid(s) {left}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state = load_state()
    external = external_bootstrap(state)
    if external:
        reachable = False
        for address in (a.strip() for a in external.split(",") if a.strip()):
            view = answers(address)
            print(f"external {address}: " + ("answering" if view else "not answering"))
            reachable = reachable or view is not None
        return 0 if reachable else 1
    if state is None:
        print(f"not running (never started in {runtime_dir()})")
        return 1
    processes = _processes(state)
    healthy = True
    print(
        f"Kafka {state.version}, {state.nodes} node(s), "
        f"security listeners: {'yes' if state.security else 'no'} ({runtime_dir()})"
    )
    for node in state.node_list():
        if not processes.alive(node):
            healthy = False
            print(f"node {node.id} {node.address}: down")
            continue
        view = answers(node.address)
        healthy = healthy and view is not None and node.id in view.brokers
        seen = f"{len(view.brokers)} live broker(s) seen" if view else "not answering"
        print(f"node {node.id} {node.address}: {processes.describe(node)}; {seen}")
    return 0 if healthy else 1


def cmd_env(args: argparse.Namespace) -> int:
    external = external_bootstrap(load_state())
    if external:
        print_env(external)
        return 0
    state = running_state()
    if state is None:
        say(f"not running: use `{args.prog} start`")
        return 1
    print_env(state.bootstrap, _env_extra(state))
    return 0


def cmd_kill_node(args: argparse.Namespace) -> int:
    with locked():
        state = _managed(args)
        node = state.node(args.node)
        processes = _processes(state)
        if not processes.alive(node):
            say(f"node {node.id} is not running")
            return 0
        processes.kill(node)
        say(f"node {node.id} ({node.address}) killed with SIGKILL")
    return 0


def cmd_start_node(args: argparse.Namespace) -> int:
    with locked():
        state = _managed(args)
        node = state.node(args.node)
        processes = _processes(state)
        # Also when every node is down (a killed single node): its data is kept, so this
        # is a broker restart, which the fault tests need.
        if processes.alive(node):
            say(f"node {node.id} is already running")
        else:
            began = time.monotonic()
            # Keep the old log for post-mortems; the data is reused, not reformatted.
            log = node.logs / "server.log"
            if log.exists():
                log.replace(node.logs / f"server.log.killed-{int(time.time())}")
            processes.launch(node)
            wait_ready(processes, [node], args.timeout, expect=1)
            say(f"node {node.id} ({node.address}) back in {time.monotonic() - began:.1f}s")
        print_env(state.bootstrap, _env_extra(state))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    state = _managed(args)
    nodes = [state.node(args.node)] if args.node else state.node_list()
    if args.follow:
        _follow(nodes[0].logs / "server.log", args.lines)
        return 0
    for node in nodes:
        path = node.logs / "server.log"
        if len(nodes) > 1:
            print(f"==> node {node.id}: {path} <==")
        for line in tail(path, args.lines):
            print(line)
    return 0


def _follow(path: Path, lines: int) -> None:
    for line in tail(path, lines):
        print(line)
    with contextlib.suppress(KeyboardInterrupt), open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        while True:
            chunk = fh.read()
            if chunk:
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
            else:
                time.sleep(0.3)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser], prog: str) -> None:
    """Add the commands to ``sub``; ``prog`` is how the user calls them, for hints."""
    timeout = float(env_int("KOURIER_KAFKA_START_TIMEOUT", 120))

    def command(
        name: str, summary: str, func: Callable[[argparse.Namespace], int]
    ) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, help=summary, description=summary)
        parser.set_defaults(run_command=func, prog=prog)
        return parser

    p = command("start", "start (or reuse) a broker and wait until it is ready", cmd_start)
    p.add_argument("--nodes", type=int, choices=(1, 3), default=None, help="1 (default) or 3")
    p.add_argument(
        "--security", action="store_true", help="add SASL_PLAINTEXT, SSL and mutual-TLS listeners"
    )
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"first broker port (default: KOURIER_KAFKA_PORT or {DEFAULT_PORT})",
    )
    p.add_argument("--timeout", type=float, default=timeout, help="seconds to wait (120)")

    p = command("stop", "SIGTERM every node, SIGKILL after --timeout", cmd_stop)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds (30)")

    command("status", "exit 0 if every node runs and answers, else 1", cmd_status)
    command("env", "print the KEY=VALUE lines of the running broker", cmd_env)

    p = command("kill-node", "SIGKILL one node (fault tests)", cmd_kill_node)
    p.add_argument("node", type=int)

    p = command("start-node", "restart a node on its data; wait until it is back", cmd_start_node)
    p.add_argument("node", type=int)
    p.add_argument("--timeout", type=float, default=timeout, help="seconds to wait (120)")

    p = command("logs", "print the end of the broker log(s)", cmd_logs)
    p.add_argument("--node", type=int, default=None, help="one node's log only")
    p.add_argument("-n", "--lines", type=int, default=50, help="lines (50)")
    p.add_argument("-f", "--follow", action="store_true", help="follow one node's log")


def run(args: argparse.Namespace) -> int:
    """Run the command ``args`` names; its exit code (``LocalKafkaError`` propagates)."""
    code: int = args.run_command(args)
    return code


def build_parser(prog: str) -> argparse.ArgumentParser:
    """The parser of the standalone command (``python -m kourier.localkafka``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run a real Apache Kafka 4.x broker on 127.0.0.1 for tests and "
        "development. stdout carries only KEY=VALUE lines (the last: "
        "KOURIER_BOOTSTRAP_SERVERS=...); messages go to stderr.",
    )
    add_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"), prog)
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m kourier.localkafka") -> int:
    """The standalone command: parse, run, print an error in one line, exit code."""
    args = build_parser(prog).parse_args(argv)
    try:
        return run(args)
    except LocalKafkaError as exc:
        say(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130
