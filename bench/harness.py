"""What the benchmarks share: server and client processes, measurements, tables."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
SERVER_SCRIPT = HERE / "servers.py"
CLIENT_SCRIPT = HERE / "loadclient.py"


@dataclass(frozen=True)
class Placement:
    """Which CPUs the server and the clients run on (None: wherever the kernel likes)."""

    server: str | None
    client: str | None

    @classmethod
    def choose(cls, pin: bool) -> Placement:
        # Pinning keeps the server and the load off each other's core: steadier
        # numbers on a 2-core machine, and the server's CPU% then shows at once
        # whether the server (100%) or the client was the bottleneck.
        cpus = sorted(os.sched_getaffinity(0))
        if not pin or len(cpus) < 2:
            return cls(None, None)
        return cls(str(cpus[0]), ",".join(str(c) for c in cpus[1:]))

    def describe(self) -> str:
        if self.server is None:
            return "unpinned"
        return f"server on CPU {self.server}, clients on CPU {self.client}"


def add_client_loop_option(parser: Any) -> None:
    parser.add_argument(
        "--client-loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="the load client's event loop (auto: uvloop if installed, else asyncio)",
    )


def _pin_args(cpus: str | None) -> list[str]:
    return ["--cpus", cpus] if cpus is not None else []


def _send_command(proc: subprocess.Popen[str], command: dict[str, Any]) -> None:
    """One JSON command line to a child's stdin."""
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(command) + "\n")
    proc.stdin.flush()


def _read_lines(stream: Any, lines: queue.Queue[str]) -> None:
    """Every line of ``stream`` into ``lines``, then "" for the end (a thread)."""
    for line in stream:
        lines.put(line)
    lines.put("")


class ServerProcess:
    """One server under test in its own process.

    ``script`` is ``servers.py`` unless told otherwise; with ``commands`` the
    server also takes JSON commands on stdin and answers each with a JSON line
    (:meth:`command`), after its ``PORT n`` line.
    """

    def __init__(
        self,
        kind: str,
        cpus: str | None,
        profile: str | None = None,
        lifetime: float = 900.0,
        *,
        script: Path = SERVER_SCRIPT,
        commands: bool = False,
    ) -> None:
        self.kind = kind
        self.stderr_path = Path(tempfile.mkstemp(prefix=f"bench-{kind}-", suffix=".log")[1])
        args = [PYTHON, str(script), "--kind", kind, "--lifetime", str(lifetime)]
        args += _pin_args(cpus)
        if profile:
            args += ["--profile", profile]
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                args,
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.PIPE if commands else subprocess.DEVNULL,
                text=True,
            )
        self.port = self._read_port(timeout=30)
        self.ps = psutil.Process(self.proc.pid)
        self._replies: queue.Queue[str] = queue.Queue()
        if commands:
            threading.Thread(
                target=_read_lines, args=(self.proc.stdout, self._replies), daemon=True
            ).start()

    def command(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send one command (``commands=True`` servers) and wait ``timeout`` for its reply."""
        _send_command(self.proc, command)
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(
                f"{self.kind} server did not answer {command.get('cmd')!r} in {timeout:.0f} s"
            ) from None
        if not line:
            raise RuntimeError(f"{self.kind} server exited: {self.stderr_tail()}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def _read_port(self, timeout: float) -> int:
        assert self.proc.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        stdout = self.proc.stdout
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            self.stop()
            raise RuntimeError(f"{self.kind} server did not start: {self.stderr_tail()}") from None
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"{self.kind} server failed: {line!r} {self.stderr_tail()}")
        return int(line.split()[1])

    def cpu_seconds(self) -> float:
        """User + system CPU time of the whole process (all its threads)."""
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def system_seconds(self) -> float:
        """The kernel's share of it: system calls, loopback TCP, context switches."""
        return float(self.ps.cpu_times().system)

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def threads(self) -> int:
        return int(self.ps.num_threads())

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr_tail(self, limit: int = 2000) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-limit:]

    def stderr_lines(self) -> int:
        try:
            return len(self.stderr_path.read_text(errors="replace").splitlines())
        except OSError:
            return 0

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (the server then writes its profile, if any), SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):  # a pipe the dead server left unread
                    stream.close()
        with contextlib.suppress(OSError):
            if self.stderr_path.stat().st_size == 0:  # keep only logs with something in them
                self.stderr_path.unlink()
        return self.proc.returncode


class ClientProcess:
    """One load-generator process and its command channel.

    ``script`` is ``loadclient.py`` unless told otherwise; any such script takes
    ``--port``, ``--loop`` and ``--cpus`` (then ``args``) and answers each JSON
    command on stdin with one JSON line on stdout.
    """

    def __init__(
        self,
        port: int,
        cpus: str | None,
        loop: str = "auto",
        *,
        script: Path = CLIENT_SCRIPT,
        args: Sequence[str] = (),
    ) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, str(script), "--port", str(port), "--loop", loop, *_pin_args(cpus), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.ps = psutil.Process(self.proc.pid)
        self._replies: queue.Queue[str] = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(
            target=_read_lines, args=(self.proc.stdout, self._replies), daemon=True
        ).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    def send(self, **command: Any) -> None:
        _send_command(self.proc, command)

    def reply(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"the load client did not answer in {timeout:.0f} s") from None
        if not line:
            raise RuntimeError("the load client exited: " + "".join(self._stderr[-20:]))
        reply: dict[str, Any] = json.loads(line)
        return reply

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(cmd="quit")
                self.proc.wait(15)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


class Clients:
    """Several load-generator processes driven as one."""

    def __init__(
        self,
        port: int,
        count: int,
        cpus: str | None,
        loop: str = "auto",
        *,
        script: Path = CLIENT_SCRIPT,
        args: Sequence[str] = (),
    ) -> None:
        self.procs = [
            ClientProcess(port, cpus, loop, script=script, args=args) for _ in range(count)
        ]

    def command(self, timeout: float, per_client: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        for proc, command in zip(self.procs, per_client, strict=True):
            proc.send(**command)
        return [proc.reply(timeout) for proc in self.procs]

    def broadcast(self, timeout: float, **command: Any) -> list[dict[str, Any]]:
        return self.command(timeout, [command] * len(self.procs))

    def open(self, connections: int, timeout: float = 300.0) -> dict[str, Any]:
        """Open ``connections`` in all, split evenly between the processes."""
        shares = split(connections, len(self.procs))
        replies = self.command(timeout, [{"cmd": "open", "n": n} for n in shares])
        return {
            "open": sum(r["open"] for r in replies),
            "failed": sum(r["failed"] for r in replies),
            "first_error": next((r["first_error"] for r in replies if r["first_error"]), ""),
            "seconds": max(r["seconds"] for r in replies),
        }

    def run(
        self,
        size: int,
        kind: str,
        seconds: float,
        *,
        inflight: int = 1,
        rate: float = 0.0,
        latency: bool = False,
    ) -> dict[str, Any]:
        """Echo round trips on every connection; ``rate`` (msg/s) is for all processes."""
        command = {
            "cmd": "run",
            "size": size,
            "type": kind,
            "seconds": seconds,
            "inflight": inflight,
            "rate": rate / len(self.procs),
            "latency": latency,
        }
        replies = self.broadcast(seconds + 90, **command)
        merged: dict[str, Any] = {
            "messages": sum(r["messages"] for r in replies),
            "seconds": max(r["seconds"] for r in replies),
            "errors": sum(r["errors"] for r in replies),
            "closed": sum(r["closed"] for r in replies),
            "unfinished": sum(r["unfinished"] for r in replies),
            "first_error": next((r["first_error"] for r in replies if r["first_error"]), ""),
        }
        if latency:
            merged["latencies_ns"] = [ns for r in replies for ns in r["latencies_ns"]]
        if all("own" in r for r in replies):
            # Counters a client keeps of itself (its CPU over exactly the round trips).
            merged["own"] = {key: sum(r["own"][key] for r in replies) for key in replies[0]["own"]}
        return merged

    def close(self, timeout: float = 60.0) -> dict[str, Any]:
        replies = self.broadcast(timeout, cmd="close")
        return {
            "closed": sum(r["closed"] for r in replies),
            "aborted": sum(r["aborted"] for r in replies),
        }

    def cpu_seconds(self) -> float:
        return sum(p.cpu_seconds() for p in self.procs)

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


def split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _system_busy() -> float:
    """CPU seconds all processes ran since boot (user + nice + system).

    Interrupt and softirq time is left out: the kernel charges loopback TCP
    processing there, to no process, and it is part of the benchmark's own load.
    """
    times = psutil.cpu_times()
    return times.user + times.nice + times.system


def _own_cpu() -> float:
    times = psutil.Process().cpu_times()
    return times.user + times.system


@dataclass
class Window:
    """Server CPU, client CPU, other processes' CPU and wall time over one measured window."""

    server_cpu: float = 0.0
    server_system: float = 0.0
    client_cpu: float = 0.0
    other_cpu: float = 0.0  # busy time of everything else on the machine: noise
    wall: float = 0.0
    _marks: tuple[float, ...] = ()

    def start(self, server: ServerProcess, clients: Clients) -> None:
        self._marks = (
            server.system_seconds(),
            server.cpu_seconds(),
            clients.cpu_seconds(),
            _system_busy(),
            _own_cpu(),
            time.perf_counter(),
        )

    def stop(self, server: ServerProcess, clients: Clients) -> None:
        system0, cpu0, client0, busy0, own0, wall0 = self._marks
        self.server_cpu = server.cpu_seconds() - cpu0
        self.server_system = server.system_seconds() - system0
        self.client_cpu = clients.cpu_seconds() - client0
        busy = _system_busy() - busy0
        own = _own_cpu() - own0
        self.wall = time.perf_counter() - wall0
        self.other_cpu = max(busy - self.server_cpu - self.client_cpu - own, 0.0)

    @property
    def other_load(self) -> float:
        """Other processes' CPU use, in cores."""
        return self.other_cpu / self.wall if self.wall else 0.0


def background_load(seconds: float = 1.0) -> float:
    """How many cores other processes keep busy now (before the benchmark starts)."""
    busy0, own0, wall0 = _system_busy(), _own_cpu(), time.perf_counter()
    time.sleep(seconds)
    busy = _system_busy() - busy0 - (_own_cpu() - own0)
    return max(busy, 0.0) / (time.perf_counter() - wall0)


NOISE_LIMIT = 0.1  # cores of other load above which a window is flagged


@dataclass
class Issues:
    """Anything that looked off during a run, printed after the tables."""

    items: list[str] = field(default_factory=list)

    noisy: list[tuple[float, str]] = field(default_factory=list)
    windows: int = 0

    def add(self, text: str) -> None:
        self.items.append(text)
        print(f"  ! {text}", file=sys.stderr, flush=True)

    def window(self, label: str, other_load: float) -> None:
        """Note one measured window and how busy other processes kept the machine."""
        self.windows += 1
        if other_load > NOISE_LIMIT:
            self.noisy.append((other_load, label))

    def summary(self) -> list[str]:
        """The issues, and one line on noise from other processes."""
        items = list(self.items)
        if self.noisy:
            worst, label = max(self.noisy)
            items.append(
                f"other processes used more than {NOISE_LIMIT} cores in {len(self.noisy)} of "
                f"{self.windows} measured windows (worst: {worst:.2f} cores, {label}): "
                "those numbers are noisy"
            )
        return items

    def check_server(self, server: ServerProcess) -> None:
        if not server.alive():
            self.add(f"{server.kind}: server process died (exit {server.proc.returncode})")
        lines = server.stderr_lines()
        if lines:
            self.add(
                f"{server.kind}: server wrote {lines} lines to stderr ({server.stderr_path}); "
                f"last: {server.stderr_tail(300).strip().splitlines()[-1]!r}"
            )

    def check_run(self, label: str, result: dict[str, Any]) -> None:
        if result.get("errors") or result.get("closed") or result.get("unfinished"):
            self.add(
                f"{label}: {result.get('errors', 0)} client errors, "
                f"{result.get('closed', 0)} unexpected closes, "
                f"{result.get('unfinished', 0)} replies missing; first: "
                f"{result.get('first_error', '')!r}"
            )


@contextlib.contextmanager
def running(
    kind: str,
    placement: Placement,
    clients: int = 1,
    profile: str | None = None,
    loop: str = "auto",
) -> Iterator[tuple[ServerProcess, Clients]]:
    """A server of ``kind`` and ``clients`` load processes aimed at it; both stopped after."""
    server = ServerProcess(kind, placement.server, profile)
    load: Clients | None = None
    try:
        load = Clients(server.port, clients, placement.client, loop)
        yield server, load
    finally:
        if load is not None:
            load.stop()
        server.stop()


@contextlib.contextmanager
def fleet(
    kinds: Sequence[str], placement: Placement, clients: int = 1, loop: str = "auto"
) -> Iterator[dict[str, tuple[ServerProcess, Clients]]]:
    """Every server of ``kinds`` at once, each with its load processes.

    Measuring them in turn, round after round, spreads slow drifts of the
    machine (other load, thermal) over all of them instead of one.
    """
    with contextlib.ExitStack() as stack:
        yield {
            kind: stack.enter_context(running(kind, placement, clients, loop=loop))
            for kind in kinds
        }


def measure(
    server: ServerProcess,
    load: Clients,
    issues: Issues,
    label: str,
    size: int,
    msg_type: str,
    seconds: float,
    *,
    inflight: int = 1,
    rate: float = 0.0,
    latency: bool = False,
) -> dict[str, Any]:
    """One measured window of echo load on ``server``."""
    window = Window()
    window.start(server, load)
    result = load.run(size, msg_type, seconds, inflight=inflight, rate=rate, latency=latency)
    window.stop(server, load)
    issues.check_run(label, result)
    issues.window(label, window.other_load)
    messages = result["messages"]
    measured: dict[str, Any] = {
        "messages": messages,
        "wall_s": window.wall,
        "server_cpu_s": window.server_cpu,
        "client_cpu_s": window.client_cpu,
        "other_load": window.other_load,
        "us_per_msg": window.server_cpu / messages * 1e6 if messages else math.nan,
        "sys_us_per_msg": window.server_system / messages * 1e6 if messages else math.nan,
        "errors": result["errors"],
        "closed": result["closed"],
    }
    if "own" in result:
        measured["client_own"] = result["own"]
    if latency:
        measured["latencies_ns"] = sorted(result["latencies_ns"])
        measured["p50_us"] = percentile(measured["latencies_ns"], 0.50) / 1000
        measured["p99_us"] = percentile(measured["latencies_ns"], 0.99) / 1000
    return measured


def summarize(windows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several windows of one scenario: sums, the median µs/msg and its spread.

    Latency percentiles are taken over all the windows' round trips together;
    the raw round-trip times are dropped from the windows afterwards.
    """
    wall = sum(w["wall_s"] for w in windows)
    us = [w["us_per_msg"] for w in windows]
    summary: dict[str, Any] = {
        "messages": sum(w["messages"] for w in windows),
        "msg_per_s": sum(w["messages"] for w in windows) / wall,
        "server_util": sum(w["server_cpu_s"] for w in windows) / wall,
        "client_util": sum(w["client_cpu_s"] for w in windows) / wall,
        "other_load": max(w["other_load"] for w in windows),
        "us_per_msg": median(us),
        "sys_us_per_msg": median([w["sys_us_per_msg"] for w in windows]),
        "spread": spread(us),
    }
    if windows and "latencies_ns" in windows[0]:
        pooled = sorted(ns for w in windows for ns in w.pop("latencies_ns"))
        summary["p50_us"] = percentile(pooled, 0.50) / 1000
        summary["p99_us"] = percentile(pooled, 0.99) / 1000
        summary["p99_spread"] = spread([w["p99_us"] for w in windows])
    summary["windows"] = list(windows)
    return summary


def percentile(sorted_values: Sequence[int], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return float(sorted_values[index])


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float]) -> float:
    """(max - min) / median: how far repeated windows disagree."""
    if len(values) < 2:
        return 0.0
    mid = statistics.median(values)
    return (max(values) - min(values)) / mid if mid else 0.0


def ratio(value: float, reference: float | None) -> float | None:
    if reference is None or reference <= 0 or math.isnan(value):
        return None
    return value / reference


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def fmt_size(size: int) -> str:
    if size >= 1024 and size % 1024 == 0:
        return f"{size // 1024} KiB"
    return f"{size} B"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> str:
    """A plain-text table; columns in ``right`` are right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def verdict(value: float | None, goal: float, *, below: bool = True) -> str:
    if value is None:
        return "n/a"
    met = value <= goal if below else value >= goal
    return "MET" if met else "MISSED"


def environment() -> dict[str, Any]:
    from websockets.version import version as websockets_version

    import embedws

    try:
        client_loop = f"uvloop {importlib.metadata.version('uvloop')} unless --client-loop"
    except importlib.metadata.PackageNotFoundError:
        client_loop = "asyncio (uvloop is not installed)"
    return {
        "git": _git_state(),
        "python": sys.version.split()[0],
        "embedws": embedws.__version__,
        "websockets": websockets_version,
        "client_loop": client_loop,
        "cpus": os.cpu_count(),
        "platform": sys.platform,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def describe_environment(env: dict[str, Any]) -> str:
    return (
        f"embedws {env['embedws']} at {env['git']}, websockets {env['websockets']}, "
        f"Python {env['python']}, {env['cpus']} CPUs; load client: {env['client_loop']}"
    )


def _git_state() -> str:
    """The commit measured, and whether embedws/ had uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "embedws"],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit} (embedws/ modified)" if dirty else commit


def write_json(path: str | None, data: dict[str, Any]) -> None:
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nJSON results: {target}")
