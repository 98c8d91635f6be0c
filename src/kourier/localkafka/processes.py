"""The broker's JVMs: format the storage, launch, kill, stop, and find them again.

A node's pid file is trusted only when the process it names is a live ``kafka.Kafka``
JVM whose command line names that node's ``server.properties``; a JVM whose command line
points into the runtime folder but has lost its pid file is a stray, and ``start`` and
``stop`` kill it, so nothing is left running. Processes are read from ``/proc`` on Linux
and through ``ps`` elsewhere. This module must never touch a process whose command line
does not point into this runtime folder.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kourier.localkafka.config import SASL_PASSWORD, SASL_USER, SCRAM_MECHANISMS
from kourier.localkafka.console import LocalKafkaError, say
from kourier.localkafka.java import require_java
from kourier.localkafka.layout import Node, State

# The heap limit is Kafka's own default (1 GiB). 512 MiB was too small for a broker
# that many test and bench sessions leave with thousands of partitions: at about 14,000
# its live set filled the old generation, and it ran a 0.8 s full collection every few
# seconds (jstat: 190 of them, 152 s), each stalling every call in flight.
BROKER_JVM_FLAGS = [
    "-Xms256m",
    "-Xmx1g",
    "-XX:+UseSerialGC",
    "-XX:+ExitOnOutOfMemoryError",
    "-XX:MaxInlineLevel=15",
    "-Djava.awt.headless=true",
]
# The storage tool runs for a second: no JIT beyond the first tier.
TOOL_JVM_FLAGS = ["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1"]

_PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessInfo:
    state: str  # one letter as in ps: R, S, Z...
    rss_kib: int | None
    cmdline: str  # arguments joined by spaces

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X", "")


def process_info(pid: int) -> ProcessInfo | None:
    """What the system says about ``pid``; None if there is no such process."""
    return _proc_info(pid) if _PROC.is_dir() else _ps_info(pid)


def _proc_info(pid: int) -> ProcessInfo | None:
    base = _PROC / str(pid)
    try:
        cmdline = (base / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        state = (base / "stat").read_text().rsplit(")", 1)[1].split()[0]
        status = (base / "status").read_text()
    except (OSError, IndexError):
        return None
    rss = next((int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmRSS:")), None)
    return ProcessInfo(state, rss, cmdline.strip())


def _ps_info(pid: int) -> ProcessInfo | None:
    for found, info in _ps("-p", str(pid)):
        if found == pid:
            return info
    return None


def _ps(*select: str) -> Iterator[tuple[int, ProcessInfo]]:
    try:
        out = subprocess.run(
            ["ps", "-ww", *select, "-o", "pid=", "-o", "stat=", "-o", "rss=", "-o", "args="],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LocalKafkaError(f"cannot list processes with ps: {exc}") from exc
    for line in out.splitlines():
        parts = line.split(None, 3)
        if len(parts) == 4 and parts[0].isdigit():
            rss = int(parts[2]) if parts[2].isdigit() else None
            yield int(parts[0]), ProcessInfo(parts[1][:1], rss, parts[3])


def all_processes() -> Iterator[tuple[int, ProcessInfo]]:
    if not _PROC.is_dir():
        yield from _ps("-A")
        return
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            info = _proc_info(int(entry.name))
            if info is not None:
                yield int(entry.name), info


def node_pid(node: Node) -> int | None:
    """The pid of this node's live broker JVM (checked, not just read), else None."""
    try:
        pid = int(node.pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    info = process_info(pid)
    if info and info.alive and "kafka.Kafka" in info.cmdline and str(node.props) in info.cmdline:
        return pid
    return None


def stray_pids(runtime: Path) -> list[int]:
    """Broker or storage-tool JVMs whose command line points into ``runtime``."""
    marker = f"{runtime}/"
    return [
        pid
        for pid, info in all_processes()
        if pid != os.getpid()
        and info.alive
        and marker in info.cmdline
        and ("kafka.Kafka" in info.cmdline or "kafka.tools.StorageTool" in info.cmdline)
    ]


def extra_jvm_opts() -> list[str]:
    return shlex.split(os.environ.get("KOURIER_KAFKA_JVM_OPTS", ""))


def tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a file (of its last 256 KiB); none if unreadable."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 256 * 1024))
            data = fh.read().decode(errors="replace")
    except OSError:
        return []
    return data.splitlines()[-lines:]


def node_log_tail(node: Node, lines: int = 40) -> str:
    parts = []
    for path in (node.logs / "server.log", node.dir / "stdout.log"):
        got = tail(path, lines)
        if got:
            parts.append(f"--- last {len(got)} lines of {path} ---\n" + "\n".join(got))
    return "\n".join(parts) or f"(no log under {node.dir})"


class NodeProcesses:
    """Start, stop and inspect the JVMs of one broker."""

    def __init__(self, state: State, log4j_config: Path, java: str | None = None) -> None:
        self.state = state
        self._java_path = java  # looked up when first needed: inspecting needs no Java
        self.log4j_config = log4j_config
        # Launched by this process: alive even before the JVM has exec'd.
        self.children: dict[int, subprocess.Popen[bytes]] = {}

    def alive(self, node: Node) -> bool:
        child = self.children.get(node.id)
        if child is not None:
            return child.poll() is None
        return node_pid(node) is not None

    def describe(self, node: Node) -> str:
        pid = node_pid(node)
        if pid is None:
            return "no process"
        info = process_info(pid)
        rss = info.rss_kib if info else None
        return f"pid {pid}" + (f", RSS {rss / 1024:.0f} MiB" if rss else "")

    def _java(self, flags: list[str], log_dir: Path, main: str, *args: str) -> list[str]:
        if self._java_path is None:
            self._java_path = require_java()
        return [
            self._java_path,
            *flags,
            f"-Dlog4j2.configurationFile={self.log4j_config}",
            f"-Dkafka.logs.dir={log_dir}",
            "-cp",
            f"{self.state.lib}/*",
            main,
            *args,
        ]

    def format(self, nodes: list[Node]) -> None:
        """Format every node's storage with the cluster id, all at once."""
        scram = []
        if self.state.security:
            for mechanism in SCRAM_MECHANISMS:
                credential = f"{mechanism}=[name={SASL_USER},password={SASL_PASSWORD}]"
                scram += ["--add-scram", credential]
        running = []
        for node in nodes:
            args = ["format", "-t", self.state.cluster_id, "-c", str(node.props), *scram]
            cmd = self._java(
                TOOL_JVM_FLAGS, node.dir / "format-log", "kafka.tools.StorageTool", *args
            )
            with open(node.dir / "format.log", "w") as out:
                proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
                )
            running.append((node, cmd, proc))
        failed = [
            f"node {node.id}: {shlex.join(cmd)}\n" + (node.dir / "format.log").read_text()
            for node, cmd, proc in running
            if proc.wait() != 0
        ]
        if failed:
            raise LocalKafkaError("formatting the storage failed:\n" + "\n".join(failed))

    def launch(self, node: Node) -> None:
        """Start the node's JVM in a session of its own (a Ctrl-C here does not reach it)."""
        node.logs.mkdir(parents=True, exist_ok=True)
        flags = [*BROKER_JVM_FLAGS, *extra_jvm_opts()]
        cmd = self._java(flags, node.logs, "kafka.Kafka", str(node.props))
        with open(node.dir / "stdout.log", "ab") as out:
            proc = subprocess.Popen(
                cmd,
                cwd=node.dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        node.pidfile.write_text(f"{proc.pid}\n")
        self.children[node.id] = proc

    def kill(self, node: Node) -> None:
        """SIGKILL, as a crash would."""
        pid = node_pid(node)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            self.wait_gone([pid], 10)
        self.children.pop(node.id, None)

    def stop_all(self, timeout: float) -> None:
        """SIGTERM to every node; SIGKILL to those still running after ``timeout``."""
        pids = []
        for node in self.state.node_list():
            pid = node_pid(node)
            child = self.children.get(node.id)
            if pid is None and child is not None and child.poll() is None:
                pid = child.pid
            if pid is not None:
                pids.append(pid)
        signal_all(pids, signal.SIGTERM)
        left = self.wait_gone(pids, timeout)
        if left:
            say(
                f"still running after {timeout:.0f}s: SIGKILL to pid(s) {', '.join(map(str, left))}"
            )
            signal_all(left, signal.SIGKILL)
            self.wait_gone(left, 10)

    def wait_gone(self, pids: list[int], timeout: float) -> list[int]:
        return wait_gone(pids, timeout, self.children.values())


def wait_gone(
    pids: list[int], timeout: float, children: Iterable[subprocess.Popen[bytes]] = ()
) -> list[int]:
    """Wait until ``pids`` have exited; those still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    left = list(pids)
    while left:
        for proc in children:
            proc.poll()  # reap our own children, or they linger as zombies
        left = [pid for pid in left if (info := process_info(pid)) and info.alive]
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    return left


def signal_all(pids: list[int], signum: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)
