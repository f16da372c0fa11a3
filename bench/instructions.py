"""Instructions per handshake and per echo, by callgrind: figures a busy machine cannot move.

Each server kind of ``servers.py`` runs under ``valgrind --tool=callgrind``;
a plain-socket client in this process drives it. Counting is zeroed after a
warm-up (``callgrind_control --zero``) and dumped after the measured load
(``--dump``), so start-up and imports are not counted. The count is every
user-space instruction of the server process, all threads together; it leaves
out the kernel (syscalls, context switches), so it complements the CPU-time
benchmarks (``handshake.py``, ``echo.py``) rather than replacing them: use it
when other work shares the machine, or to see a change of a few percent.

    python bench/instructions.py                       # async kinds and websockets, ~3 min
    python bench/instructions.py --kinds embedws-async,embedws-async+EMBEDWS_FAST_FRAMES=0
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import harness
from clientlib import CLOSE_FRAME, FIXED_KEY, MASK, opening_request
from servers import ALL_KINDS

REFERENCES = {
    "embedws-async": "websockets-asyncio",
    "embedws-greenlet": "websockets-asyncio",
    "embedws-thread": "websockets-sync",
    "embedws-trio": "websockets-trio",
}
START_TIMEOUT = 180.0  # a Python server under valgrind takes tens of seconds to import
IO_TIMEOUT = 60.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--kinds",
        default="embedws-async,embedws-greenlet,websockets-asyncio",
        help="comma-separated server kinds, variants allowed (default: %(default)s)",
    )
    parser.add_argument("--handshakes", type=int, default=200, help="measured handshakes")
    parser.add_argument("--connections", type=int, default=50, help="connections for the echo")
    parser.add_argument("--rounds", type=int, default=20, help="echo round trips per connection")
    parser.add_argument("--size", type=int, default=16, help="echo message size in bytes")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    harness.add_baseline_option(parser)
    args = parser.parse_args(argv)
    args.kinds = harness.parse_names(parser, "kinds", args.kinds, ALL_KINDS)
    args.baseline = harness.check_baseline(parser, args.baseline)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        parser.error("needs valgrind and callgrind_control (Debian: apt install valgrind)")
    return args


class CallgrindServer:
    """One ``servers.py`` process under callgrind, with counting under our control."""

    def __init__(self, kind: str, out_dir: Path, baseline: Path | None) -> None:
        base_kind, variables = harness.split_variant(kind.removesuffix(harness.BASE))
        origin: list[str] = []
        if kind.endswith(harness.BASE):
            assert baseline is not None
            # First on the path, and servers.py refuses to start if embedws came from elsewhere.
            variables["PYTHONPATH"] = str(baseline)
            origin = ["--embedws-from", str(baseline)]
        self.out = out_dir / f"callgrind.{re.sub(r'[^A-Za-z0-9]+', '_', kind)}"
        args = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={self.out}.%p",
            "--instr-atstart=no",  # imports run uninstrumented (fast); counted: zero..dump
            str(harness.PYTHON),
            str(harness.SERVER_SCRIPT),
            "--kind",
            base_kind,
            "--lifetime",
            "1800",
            *origin,
        ]
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={**os.environ, **variables},
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        line = ""
        while not line.startswith("PORT "):
            line = self.proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"{kind}: the server did not start under valgrind")
        self.port = int(line.split()[1])

    def _control(self, *options: str) -> None:
        done = subprocess.run(
            ["callgrind_control", *options, str(self.proc.pid)],
            check=False,
            capture_output=True,
            text=True,
            timeout=IO_TIMEOUT,
        )
        if done.returncode:
            raise RuntimeError(
                f"callgrind_control {' '.join(options)}: {done.stderr or done.stdout}"
            )

    def count(self, load: Callable[[], None]) -> int:
        """User-space instructions the server spent while ``load()`` ran."""
        before = set(self.out.parent.glob(self.out.name + ".*"))
        self._control("--instr=on")
        self._control("--zero")
        load()
        self._control("--dump")
        self._control("--instr=off")
        dumps = set(self.out.parent.glob(self.out.name + ".*")) - before
        total = 0
        for dump in dumps:
            for text in dump.read_text(errors="replace").splitlines():
                if text.startswith(("summary:", "totals:")):
                    total = max(total, int(text.split()[1]))
            dump.unlink()
        if not total:
            raise RuntimeError(f"no callgrind dump with a total in {sorted(map(str, dumps))}")
        return total

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(IO_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for leftover in self.out.parent.glob(self.out.name + ".*"):
            leftover.unlink()


def _read_until(sock: socket.socket, end: bytes) -> bytes:
    data = b""
    while end not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before {end!r}: {data[:200]!r}")
        data += chunk
    return data


def _open(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(opening_request(b"127.0.0.1:%d" % port, FIXED_KEY))
    head = _read_until(sock, b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"no 101: {head[:200]!r}")
    return sock


def handshakes(port: int, count: int) -> None:
    """``count`` connections, one at a time: open, closing handshake, wait for the server's FIN."""
    for _ in range(count):
        with _open(port) as sock:
            sock.sendall(CLOSE_FRAME)
            while sock.recv(65536):
                pass


def _frame(payload: bytes) -> bytes:
    masked = bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    return bytes((0x82, 0x80 | len(payload))) + MASK + masked


def echoes(socks: list[socket.socket], rounds: int, size: int) -> None:
    """``rounds`` lockstep round trips: one binary message on every connection, then every echo."""
    payload = base64.b64encode(os.urandom(size))[:size]
    frame = _frame(payload)
    reply_size = 2 + size
    for _ in range(rounds):
        for sock in socks:
            sock.sendall(frame)
        for sock in socks:
            got = b""
            while len(got) < reply_size:
                chunk = sock.recv(reply_size - len(got))
                if not chunk:
                    raise ConnectionError("closed during the echo")
                got += chunk
            if got[2:] != payload:
                raise AssertionError(f"wrong echo {got!r}")


def measure(kind: str, args: argparse.Namespace, out_dir: Path) -> dict[str, float]:
    harness.progress(f"  {kind}: starting under valgrind")
    server = CallgrindServer(kind, out_dir, args.baseline)
    try:
        # Warm-up, uncounted: first-use imports, caches, the thread pool.
        handshakes(server.port, 20)
        per_handshake = server.count(lambda: handshakes(server.port, args.handshakes))
        # The connections open and warm up before counting, and close after it.
        socks = [_open(server.port) for _ in range(args.connections)]
        try:
            echoes(socks, 3, args.size)
            per_echo = server.count(lambda: echoes(socks, args.rounds, args.size))
        finally:
            for sock in socks:
                sock.close()
    finally:
        server.stop()
    row = {
        "instr_per_handshake": per_handshake / args.handshakes,
        "instr_per_echo": per_echo / (args.connections * args.rounds),
    }
    harness.progress(
        f"  {kind}: {row['instr_per_handshake'] / 1000:,.0f} K instr/handshake, "
        f"{row['instr_per_echo'] / 1000:,.1f} K instr/echo"
    )
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"callgrind: {args.handshakes} handshakes one at a time; {args.connections} connections x "
        f"{args.rounds} lockstep round trips of {args.size} B binary (user-space instructions)"
    )
    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-callgrind-") as out_dir:
        for kind in harness.with_baseline(args.kinds, args.baseline):
            rows[kind] = measure(kind, args, Path(out_dir))
    print()
    header = f"{'server':<44} {'K instr/hs':>11} {'vs ref':>7} {'K instr/echo':>13} {'vs ref':>7}"
    print(header)
    print("-" * len(header))
    for kind, row in rows.items():
        plain = harness.split_variant(kind.removesuffix(harness.BASE))[0]
        reference = rows.get(REFERENCES.get(plain, ""))
        hs, echo = (
            f"{row[key] / reference[key]:.2f}x" if reference and reference[key] else "-"
            for key in ("instr_per_handshake", "instr_per_echo")
        )
        print(
            f"{kind:<44} {row['instr_per_handshake'] / 1000:>11,.0f} {hs:>7}"
            f" {row['instr_per_echo'] / 1000:>13,.1f} {echo:>7}"
        )
    if args.baseline is not None:
        print(f"\nAgainst the baseline ({args.baseline} at {harness.git_state(args.baseline)}):")
        for kind, row in rows.items():
            base = rows.get(kind + harness.BASE)
            if base is not None:
                hs_ratio, echo_ratio = (
                    row[key] / base[key] for key in ("instr_per_handshake", "instr_per_echo")
                )
                print(f"  {kind:<42} handshake {hs_ratio:.3f}x  echo {echo_ratio:.3f}x")
    if args.json:
        import json

        Path(args.json).write_text(
            json.dumps({"settings": vars(args), "results": rows}, indent=2, default=str)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
