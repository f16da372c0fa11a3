"""What the benchmarks share: server and client processes, measurements, tables, profiles."""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import importlib.metadata
import json
import math
import os
import pstats
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import psutil

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
SERVER_SCRIPT = HERE / "servers.py"
CLIENT_SCRIPT = HERE / "loadclient.py"
CONNECTIONS_PER_CLIENT = 10_000  # well under the 20,000 open files a process may have
# "embedws-async@base": the embedws-async server, with embedws imported from --baseline DIR.
BASE = "@base"
# "embedws-thread+EMBEDWS_DIRECT_WRITES=0": the embedws-thread server with that variable set, so a
# fast path and the portable path under it are measured in the same rounds.
VARIANT = "+"


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


def add_run_options(
    parser: argparse.ArgumentParser, quick: str, *, client_loop: bool = True
) -> None:
    """``--no-pin``, ``--client-loop`` (unless told not to), ``--quick`` and ``--json``.

    ``quick``: the help of ``--quick``.
    """
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and clients")
    if client_loop:
        add_client_loop_option(parser)
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def parse_names(
    parser: argparse.ArgumentParser, what: str, text: str, known: Sequence[str]
) -> list[str]:
    """A comma-separated list of ``known`` names (``what``: "kinds", ...)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = {name for name in names if split_variant(name)[0] not in known}
    for name in names:
        kind, env = split_variant(name)
        if env and not (kind.startswith("embedws-") and all(k.startswith("EMBEDWS_") for k in env)):
            parser.error(f"{name}: only embedws kinds take variables, and only EMBEDWS_ ones")
    if unknown:
        parser.error(f"unknown {what} {sorted(unknown)}; choose from {', '.join(known)}")
    return names


def split_variant(kind: str) -> tuple[str, dict[str, str]]:
    """``"embedws-thread+EMBEDWS_X=0+EMBEDWS_Y=1"`` -> ``("embedws-thread", {...})``."""
    name, *assignments = kind.split(VARIANT)
    env: dict[str, str] = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key:
            raise ValueError(f"{kind}: expected {VARIANT}NAME=VALUE after the kind")
        env[key] = value
    return name, env


def parse_ints(text: str) -> list[int]:
    return [int(n) for n in text.split(",")]


def parse_counts(parser: argparse.ArgumentParser, text: str) -> list[int]:
    """``--connections``: counts in increasing order (each adds connections to the last)."""
    counts = parse_ints(text)
    if counts != sorted(counts):
        parser.error("--connections must be in increasing order (connections are added)")
    return counts


def client_processes(connections: int) -> int:
    """Load processes for ``connections``: one per CONNECTIONS_PER_CLIENT."""
    return max(1, math.ceil(connections / CONNECTIONS_PER_CLIENT))


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
    (:meth:`command`), after its ``PORT n`` line. A ``kind`` ending in ``@base``
    runs that kind with embedws imported from ``baseline`` (another checkout):
    ``PYTHONPATH=baseline``, and ``servers.py --embedws-from`` refuses to start
    if the import came from anywhere else. ``embedws_origin``: the folder the
    server imported embedws from, as it said (None for the other libraries).
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
        baseline: Path | None = None,
    ) -> None:
        self.kind = kind
        self.stderr_path = Path(tempfile.mkstemp(prefix=f"bench-{kind}-", suffix=".log")[1])
        base_kind, variables = split_variant(kind.removesuffix(BASE))
        args = [PYTHON, str(script), "--kind", base_kind, "--lifetime", str(lifetime)]
        args += _pin_args(cpus)
        if profile:
            args += ["--profile", profile]
        env = {**os.environ, **variables} if variables else None
        if kind.endswith(BASE):
            if baseline is None:
                raise ValueError(f"{kind}: a baseline kind needs the baseline checkout")
            # First on the path, before the editable install of this checkout.
            env = {**(env or os.environ), "PYTHONPATH": str(baseline)}
            args += ["--embedws-from", str(baseline)]
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(
                args,
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.PIPE if commands else subprocess.DEVNULL,
                text=True,
                env=env,
            )
        self.embedws_origin: str | None = None
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
        _, port, *extra = line.split()
        for item in extra:
            name, _, value = item.partition("=")
            if name == "embedws":
                self.embedws_origin = value
        return int(port)

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

    def fds(self) -> int:
        """Open file descriptors: sockets a closed connection left behind show here."""
        return int(self.ps.num_fds())

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


@dataclass(frozen=True)
class EchoLoad:
    """What the load clients do in one window: echo round trips on every connection."""

    size: int  # bytes (or characters) per message
    msg_type: str  # "text" or "binary"
    seconds: float
    inflight: int = 1  # messages in flight per connection
    rate: float = 0.0  # msg/s of all the connections together; 0: a closed loop
    latency: bool = False  # keep every round-trip time


@dataclass(frozen=True)
class HandshakeLoad:
    """What the load clients do in one window: open and end connections, ``inflight`` at a time.

    For ``seconds``, or for ``count`` connections in all if ``count`` is set.
    ``close``: ``frame`` (closing handshake) or ``rst`` (see ``clientlib.handshakes``).
    """

    seconds: float
    inflight: int = 50  # connections in flight, in all
    close: str = "frame"
    count: int = 0
    latency: bool = True  # keep every request-to-101 time


class ClientProcess:
    """One load-generator process (``argv``: see :class:`Clients`) and its command channel."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.proc = subprocess.Popen(
            argv,
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
    """Several load-generator processes driven as one.

    ``script`` is ``loadclient.py`` unless told otherwise; any such script takes
    ``--port``, ``--loop`` and ``--cpus`` (then ``args``) and answers each JSON
    command on stdin with one JSON line on stdout.
    """

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
        argv = [PYTHON, str(script), "--port", str(port), "--loop", loop, *_pin_args(cpus), *args]
        self.procs = [ClientProcess(argv) for _ in range(count)]

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

    def apply(self, load: EchoLoad | HandshakeLoad) -> dict[str, Any]:
        """One window's work: :meth:`run` or :meth:`handshakes`.

        ``messages`` in the result counts what the work is made of: echoes or handshakes.
        """
        if isinstance(load, HandshakeLoad):
            return self.handshakes(load)
        return self.run(load)

    def handshakes(self, load: HandshakeLoad) -> dict[str, Any]:
        """Connections opened and ended; ``inflight`` and ``count`` are for all processes."""
        counts = split(load.count, len(self.procs))
        replies = self.command(
            load.seconds + 90,
            [
                {
                    "cmd": "handshake",
                    "seconds": load.seconds,
                    "count": count,
                    "inflight": inflight,
                    "close": load.close,
                    "latency": load.latency,
                }
                for count, inflight in zip(
                    counts, split(load.inflight, len(self.procs)), strict=True
                )
            ],
        )
        return self._merge(replies, "handshakes", load.latency)

    def run(self, echo: EchoLoad) -> dict[str, Any]:
        """Echo round trips on every connection; ``echo.rate`` (msg/s) is for all processes."""
        command = {
            "cmd": "run",
            "size": echo.size,
            "type": echo.msg_type,
            "seconds": echo.seconds,
            "inflight": echo.inflight,
            "rate": echo.rate / len(self.procs),
            "latency": echo.latency,
        }
        replies = self.broadcast(echo.seconds + 90, **command)
        merged = self._merge(replies, "messages", echo.latency)
        if all("own" in r for r in replies):
            # Counters a client keeps of itself (its CPU over exactly the round trips).
            merged["own"] = {key: sum(r["own"][key] for r in replies) for key in replies[0]["own"]}
        return merged

    @staticmethod
    def _merge(replies: Sequence[dict[str, Any]], counted: str, latency: bool) -> dict[str, Any]:
        """The replies of all processes as one (``counted``: the key of what they count)."""
        merged: dict[str, Any] = {
            "messages": sum(r[counted] for r in replies),
            "seconds": max(r["seconds"] for r in replies),
            "errors": sum(r["errors"] for r in replies),
            "closed": sum(r["closed"] for r in replies),
            "unfinished": sum(r["unfinished"] for r in replies),
            "first_error": next((r["first_error"] for r in replies if r["first_error"]), ""),
        }
        if latency:
            merged["latencies_ns"] = [ns for r in replies for ns in r["latencies_ns"]]
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


def progress(text: str) -> None:
    """A line on stderr, as the benchmark goes (the results go to stdout)."""
    print(text, file=sys.stderr, flush=True)


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
    # Where each embedws server imported embedws from (kind: folder), for the output's head.
    origins: dict[str, str] = field(default_factory=dict)

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
        origin = server.embedws_origin
        if origin is not None:
            self.origins[server.kind] = origin
            # The @base servers check their own origin; the others should be this
            # checkout's, which they are not when run with another checkout's venv.
            if not server.kind.endswith(BASE) and Path(origin) != HERE.parent / "embedws":
                self.add(
                    f"{server.kind} imported embedws from {origin}, not from this checkout "
                    f"({HERE.parent}): its figures are that code's"
                )
        if not server.alive():
            self.add(f"{server.kind}: server process died (exit {server.proc.returncode})")
        lines = server.stderr_lines()
        if lines:
            self.add(
                f"{server.kind}: server wrote {lines} lines to stderr ({server.stderr_path}); "
                f"last: {server.stderr_tail(300).strip().splitlines()[-1]!r}"
            )

    def check_open(self, label: str, result: dict[str, Any]) -> int:
        """Note the connections that failed to open; how many are open."""
        if result["failed"]:
            self.add(f"{label}: {result['failed']} connections failed: {result['first_error']!r}")
        return int(result["open"])

    def check_close(self, label: str, result: dict[str, Any]) -> None:
        if result["aborted"]:
            self.add(f"{label}: {result['aborted']} connections did not finish the close")

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
    *,
    server_script: Path = SERVER_SCRIPT,
    client_script: Path = CLIENT_SCRIPT,
    commands: bool = False,
    baseline: Path | None = None,
) -> Iterator[tuple[ServerProcess, Clients]]:
    """A server of ``kind`` and ``clients`` load processes aimed at it; both stopped after.

    ``server_script``, ``client_script``, ``commands`` and ``baseline``: as in
    :class:`ServerProcess` and :class:`Clients`.
    """
    server = ServerProcess(
        kind,
        placement.server,
        profile,
        script=server_script,
        commands=commands,
        baseline=baseline,
    )
    load: Clients | None = None
    try:
        load = Clients(server.port, clients, placement.client, loop, script=client_script)
        yield server, load
    finally:
        if load is not None:
            load.stop()
        server.stop()


Fleet = dict[str, tuple[ServerProcess, Clients]]


@contextlib.contextmanager
def fleet(
    kinds: Sequence[str],
    placement: Placement,
    clients: int = 1,
    loop: str = "auto",
    **options: Any,
) -> Iterator[Fleet]:
    """Every server of ``kinds`` at once, each with its load processes.

    Measuring them in turn, round after round, spreads slow drifts of the
    machine (other load, thermal) over all of them instead of one. ``options``:
    the keyword arguments of :func:`running`.
    """
    with contextlib.ExitStack() as stack:
        yield {
            kind: stack.enter_context(running(kind, placement, clients, loop=loop, **options))
            for kind in kinds
        }


def open_fleet(
    servers: Fleet, connections: int, issues: Issues, opened: dict[str, int] | None = None
) -> dict[str, int]:
    """Up to ``connections`` on every server (``opened``: those it has); how many it has then."""
    have = opened or {}
    return {
        kind: issues.check_open(kind, load.open(connections - have.get(kind, 0)))
        for kind, (_server, load) in servers.items()
    }


def close_fleet(servers: Fleet, issues: Issues) -> None:
    """Close every connection of the fleet; note what went wrong there and in the servers."""
    for kind, (server, load) in servers.items():
        issues.check_close(kind, load.close())
        issues.check_server(server)


def measure(
    server: ServerProcess,
    load: Clients,
    issues: Issues,
    label: str,
    echo: EchoLoad | HandshakeLoad,
    warmup: float = 0.0,
) -> dict[str, Any]:
    """One measured window of ``echo`` on ``server``, after ``warmup`` seconds unmeasured.

    ``messages`` and ``us_per_msg`` count what the load is made of: echoes or handshakes.
    """
    if warmup:
        warm = load.apply(dataclasses.replace(echo, seconds=warmup, latency=False))
        issues.check_run(f"{label} warm-up", warm)
    window = Window()
    window.start(server, load)
    result = load.apply(echo)
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
    if echo.latency:
        measured["latencies_ns"] = sorted(result["latencies_ns"])
        measured["p50_us"] = percentile(measured["latencies_ns"], 0.50) / 1000
        measured["p99_us"] = percentile(measured["latencies_ns"], 0.99) / 1000
    return measured


def measure_rounds(
    servers: Fleet,
    issues: Issues,
    repeat: int,
    label: str,
    echo: EchoLoad | HandshakeLoad,
    warmup: float,
) -> dict[str, list[dict[str, Any]]]:
    """``repeat`` rounds of :func:`measure` that visit every server in turn; its windows.

    ``label`` follows the server's kind in the Issues.
    """
    windows: dict[str, list[dict[str, Any]]] = {kind: [] for kind in servers}
    for _ in range(repeat):
        for kind, (server, load) in servers.items():
            windows[kind].append(measure(server, load, issues, f"{kind} {label}", echo, warmup))
    return windows


def summarize(windows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several windows of one scenario: sums, the median µs/msg, its spread and the fast ones.

    The best (lowest) window and the mean of the fastest third of windows
    ("fast") are there because a server's cost can vary between windows (the
    machine, the allocator, the garbage collector): comparing in the fast
    windows too keeps a slow mode of one server from flattering another. The
    best is one window, the luckiest, and swings by several percent between
    runs; the fastest third is the steady fast mode.

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
        "best_us_per_msg": min(us, default=math.nan),
        "fast_us_per_msg": fastest_third(us),
        "window_us_per_msg": us,  # in round order: the same round's windows ran side by side
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


# The columns of a server's echo results (a row of summarize() with its "kind").
ECHO_COLUMNS = (
    "server",
    "messages",
    "msg/s",
    "srv CPU",
    "cli CPU",
    "other",
    "µs/msg",
    "best",
    "sys",
)


def echo_cells(row: dict[str, Any]) -> list[str]:
    """The cells of ECHO_COLUMNS."""
    return [
        row["kind"],
        f"{row['messages']:,}",
        f"{row['msg_per_s']:,.0f}",
        f"{row['server_util']:.0%}",
        f"{row['client_util']:.0%}",
        f"{row['other_load']:.0%}",
        f"{row['us_per_msg']:.1f}",
        f"{row['best_us_per_msg']:.1f}",
        f"{row['sys_us_per_msg']:.1f}",
    ]


def fastest_third(values: Sequence[float]) -> float:
    """The mean of the lowest third of ``values`` (at least one); NaN when empty."""
    if not values:
        return math.nan
    fastest = sorted(values)[: max(1, len(values) // 3)]
    return sum(fastest) / len(fastest)


def ratio(value: float, reference: float | None) -> float | None:
    if reference is None or reference <= 0 or math.isnan(value):
        return None
    return value / reference


def fmt_ratio(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}x"


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


def vs(row: dict[str, Any], reference: dict[str, Any] | None, key: str) -> str:
    """The ratio cell of ``row[key]`` to the reference row's (``-`` without one)."""
    return fmt_ratio(ratio(row[key], reference[key] if reference else None))


def verdict(value: float | None, goal: float, *, below: bool = True) -> str:
    if value is None:
        return "n/a"
    met = value <= goal if below else value >= goal
    return "MET" if met else "MISSED"


def goal(
    text: str, value: float | None, limit: float, *, below: bool = True, **about: Any
) -> dict[str, Any]:
    """A row of the Goals table: ``value`` at most ``limit`` (at least, with ``below=False``).

    ``about``: for the JSON.
    """
    return {
        "goal": text,
        **about,
        "target": f"{'<=' if below else '>='} {limit:.2f}x",
        "value": value,
        "verdict": verdict(value, limit, below=below),
    }


def ratio_goals(
    row: dict[str, Any],
    reference: dict[str, Any],
    checks: Sequence[tuple[str, str, float]],
    **about: Any,
) -> list[dict[str, Any]]:
    """For each (text, key, limit) of ``checks``: a goal, ``row[key]`` / ``reference[key]``."""
    return [
        goal(text, ratio(row[key], reference[key]), limit, **about) for text, key, limit in checks
    ]


def window_goals(
    row: dict[str, Any],
    reference: dict[str, Any],
    figure: str,
    unit: str,
    about: str,
    limit: float,
    **fields: Any,
) -> list[dict[str, Any]]:
    """One cost against a reference three ways: median, best window, fastest third.

    ``figure`` names it ("CPU/msg"), ``unit`` is its keys' suffix ("msg": ``us_per_msg``,
    ``best_us_per_msg``, ``fast_us_per_msg``), ``about`` says what is compared.
    """
    return ratio_goals(
        row,
        reference,
        [
            (f"{figure} {about}", f"us_per_{unit}", limit),
            (f"{figure} best window {about}", f"best_us_per_{unit}", limit),
            (f"{figure} fastest third {about}", f"fast_us_per_{unit}", limit),
        ],
        **fields,
    )


def print_goals(goal_rows: Sequence[dict[str, Any]], title: str = "Goals", digits: int = 2) -> None:
    """The goals table; ``digits``: of the measured ratios."""
    print(title)
    print(
        table(
            ["goal", "target", "measured", "verdict"],
            [
                [g["goal"], g["target"], fmt_ratio(g["value"], digits), g["verdict"]]
                for g in goal_rows
            ],
            {2},
        )
    )


def print_profiles(profiles: dict[str, str], what: str) -> None:
    """Each profile of ``profiles`` (name: text), headed with its name and ``what``."""
    for name, text in profiles.items():
        print(f"\nProfile: {name} {what}\n{text}")


def environment() -> dict[str, Any]:
    from websockets.version import version as websockets_version

    import embedws

    try:
        client_loop = f"uvloop {importlib.metadata.version('uvloop')} unless --client-loop"
    except importlib.metadata.PackageNotFoundError:
        client_loop = "asyncio (uvloop is not installed)"
    return {
        "git": git_state(HERE.parent),
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


def git_state(checkout: Path) -> str:
    """The commit of ``checkout``, and whether its embedws/ had uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=checkout,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "embedws"],
            cwd=checkout,
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
    target.write_text(json.dumps(data, indent=2, default=str) + "\n")  # str: Paths
    print(f"\nJSON results: {target}")


@dataclass
class Run:
    """One run of a benchmark: its options, where its processes run, its issues, its output."""

    args: argparse.Namespace  # with --no-pin, --client-loop and --json (add_run_options)
    placement: Placement
    issues: Issues
    started: float
    env: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def begin(cls, args: argparse.Namespace, start: str | None = None) -> Run:
        """The run starts; its Issues say so if other processes keep the machine busy.

        ``start``: a line for stderr, followed by where the processes run.
        """
        run = cls(args, Placement.choose(not args.no_pin), Issues(), time.perf_counter())
        noise = background_load()
        if noise > NOISE_LIMIT:
            run.issues.add(
                f"other processes keep {noise:.2f} cores busy before the start: "
                "expect noisy numbers"
            )
        if start is not None:
            progress(f"{start}, {run.placement.describe()}")
        return run

    def print_environment(self, client_loop: str | None = None) -> None:
        """The head of the results: the environment (``client_loop``: told otherwise)."""
        self.env = environment()
        if client_loop is not None:
            self.env["client_loop"] = client_loop
        print()
        print(describe_environment(self.env))
        baseline: Path | None = getattr(self.args, "baseline", None)
        if baseline is not None:
            self.env["baseline"] = {"checkout": str(baseline), "git": git_state(baseline)}
        self.env["embedws_origins"] = self.issues.origins
        for origin, kinds in _group_by_origin(self.issues.origins).items():
            where = origin
            if baseline is not None and Path(origin) == baseline / "embedws":
                where += f" (the baseline, at {git_state(baseline)}; checked at start-up)"
            print(f"embedws imported from {where}: {', '.join(kinds)}")
        print()

    def finish(self, benchmark: str, settings: str, **results: Any) -> None:
        """The end of the output: the Issues and the time taken; then ``--json``, if given.

        The JSON holds the ``settings`` (names in ``args``, space-separated, as in a
        namedtuple), the ``results`` and the issues.
        """
        issues = self.issues.summary()
        if issues:
            print("\nIssues")
            for item in issues:
                print(f"- {item}")
        print(f"\n({time.perf_counter() - self.started:.0f} s)")
        chosen = {
            "type" if name == "msg_type" else name: getattr(self.args, name)
            for name in settings.split()
        }
        chosen.update(placement=self.placement.describe(), client_loop=self.args.client_loop)
        write_json(
            self.args.json,
            {
                "benchmark": benchmark,
                "environment": self.env,
                "settings": chosen,
                **results,
                "issues": issues,
            },
        )


def _group_by_origin(origins: dict[str, str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for kind, origin in origins.items():
        grouped.setdefault(origin, []).append(kind)
    return grouped


# Baseline: another checkout of embedws, in the same run -----------------------------

BASELINE_LIMIT = 1.05  # no figure worse than the baseline's by more than 5%


def add_baseline_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        type=Path,
        help="another embedws checkout (e.g. a git worktree at an older commit): each "
        "embedws-* kind also runs as embedws-*@base, with embedws imported from DIR, "
        "in the same rounds",
    )


def check_baseline(parser: argparse.ArgumentParser, baseline: Path | None) -> Path | None:
    """``--baseline`` as an absolute path, after checking that it holds an embedws package."""
    if baseline is None:
        return None
    checkout = baseline.resolve()
    if not (checkout / "embedws" / "__init__.py").is_file():
        parser.error(f"--baseline {baseline}: no embedws package there ({checkout}/embedws)")
    return checkout


def with_baseline(kinds: Sequence[str], baseline: Path | None) -> list[str]:
    """``kinds``, each embedws kind followed by its ``@base`` twin if there is a baseline.

    Side by side, so that every round measures a kind and its baseline one after the other.
    """
    result: list[str] = []
    for kind in kinds:
        result.append(kind)
        if baseline is not None and kind.startswith("embedws-"):
            result.append(kind + BASE)
    return result


def base_row(
    row: dict[str, Any], rows: Sequence[dict[str, Any]], same: Sequence[str]
) -> dict[str, Any] | None:
    """The row of ``row``'s ``@base`` twin with the same values of the keys ``same``."""
    twin = row["kind"] + BASE
    return next((r for r in rows if r["kind"] == twin and all(r[k] == row[k] for k in same)), None)


def vs_base(
    row: dict[str, Any], rows: Sequence[dict[str, Any]], same: Sequence[str], key: str
) -> str:
    """The ratio cell of ``row[key]`` to its baseline's (``-`` without one)."""
    return vs(row, base_row(row, rows, same), key)


def baseline_checks(
    rows: Sequence[dict[str, Any]],
    same: Sequence[str],
    figures: Sequence[tuple[str, str]],
    scenario: Callable[[dict[str, Any]], str],
) -> list[dict[str, Any]]:
    """Each embedws row against its baseline: every (label, key) of ``figures`` <= 1.05x.

    ``scenario(row)`` names the row's scenario (size, connections, ...) in the text.
    """
    checks: list[dict[str, Any]] = []
    for row in rows:
        base = base_row(row, rows, same)
        if base is None:
            continue
        for label, key in figures:
            text = f"{label} {scenario(row)}: {row['kind']} / {base['kind']}"
            value = ratio(row[key], base[key])
            checks.append(goal(text, value, BASELINE_LIMIT, kind=row["kind"], figure=key))
    return checks


def print_baseline(checks: Sequence[dict[str, Any]], baseline: Path) -> None:
    print()
    print_goals(
        checks,
        f"Against the baseline ({baseline} at {git_state(baseline)}): "
        f"no figure worse by more than {BASELINE_LIMIT - 1:.0%}",
        digits=3,  # near the limit, 1.05x could be either side of it
    )


# Profiles -------------------------------------------------------------------------

# Built-ins where an idle thread blocks: their time is waiting, not work.
_WAITS = (
    "<method 'acquire' of '_thread.lock' objects>",
    "<method 'poll' of 'select.epoll' objects>",
    "<method 'get' of '_queue.SimpleQueue' objects>",
    "<built-in method time.sleep>",
    "<method 'readline' of '_io.TextIOWrapper' objects>",  # a worker waiting for commands
)


def drop_waits(stats: pstats.Stats) -> list[str]:
    """Remove blocking waits from ``stats``; return what was removed, with its time."""
    removed = []
    entries = stats.stats  # type: ignore[attr-defined]
    for key in list(entries):
        if key[0] == "~" and key[2] in _WAITS:
            calls, total = entries[key][1], entries[key][2]
            removed.append(f"{key[2]}: {calls} calls, {total:.2f} s")
            del entries[key]
    return removed


def print_cprofile(path: Path, top: int, stream: TextIO | None = None, note: str = "") -> None:
    """The top functions by own time of the cProfile stats in ``path``, blocking waits left out."""
    stats = pstats.Stats(str(path), stream=stream)
    for name in drop_waits(stats):
        print(f"(left out, time spent waiting: {name})", file=stream)
    if note:
        print(note, file=stream)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)


def py_spy_exe() -> str | None:
    """The py-spy executable (on PATH or beside this Python), None if it is not installed."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return exe if Path(exe).exists() else None


PY_SPY_MISSING = "py-spy is not installed: pip install py-spy"


def py_spy_record(
    exe: str,
    pid: int,
    rate: int,
    duration: int,
    output: Path,
    stderr: int | None = subprocess.PIPE,
) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid`` ``rate`` times a second for ``duration`` s into ``output`` (raw).

    ``--nonblocking``: the process is never paused, so it runs as fast as unprofiled.
    """
    return subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            str(rate),
            "--duration",
            str(duration),
            "--output",
            str(output),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )


def py_spy_during(
    pid: int,
    raw: Path,
    work: Callable[[], object],
    *,
    rate: int,
    duration: int,
    attach: float,
    timeout: float,
    top: int = 25,
) -> str:
    """py-spy ``pid`` while ``work()`` runs, ``attach`` s after py-spy starts; the top functions."""
    exe = py_spy_exe()
    if exe is None:
        return PY_SPY_MISSING
    spy = py_spy_record(exe, pid, rate, duration, raw)
    time.sleep(attach)  # py-spy attaches
    work()
    try:
        _, err = spy.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        spy.kill()
        return "py-spy did not finish"
    if not raw.exists():
        return f"py-spy failed: {err.decode(errors='replace').strip()[-300:]}"
    return py_spy_top(raw, top)


def py_spy_top(raw: Path, top: int) -> str:
    """Top functions by own samples and by inclusive samples, from py-spy's raw output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        # "func (path/to/file.py:123)": keep function and file, drop the line.
        frames = [_frame_name(f) for f in stack.split(";")]
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    lines = [f"{total} samples", "", f"{'own %':>7} {'incl %':>7}  function"]
    for name, count in own.most_common(top):
        lines.append(f"{count / total:7.1%} {inclusive[name] / total:7.1%}  {name}")
    return "\n".join(lines)


def _frame_name(frame: str) -> str:
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if parts else path
    return f"{name} ({short})"
