"""Profile one echo server under the echo benchmark's load: where does its CPU go?

    python bench/profile_echo.py --kind embedws-async --size 16
    python bench/profile_echo.py --kind embedws-async --profiler py-spy   # pip install py-spy

``cprofile`` (default) profiles every thread of the server and prints the top
functions by own time (tottime); its overhead inflates small functions, so
read the shares, not the absolute times. ``py-spy`` samples from outside the
process (no overhead in the server) and prints the top functions by own samples.
"""

from __future__ import annotations

import argparse
import collections
import pstats
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import Issues, Placement, add_client_loop_option, fmt_size, measure, running
from servers import KINDS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=KINDS, default="embedws-async")
    parser.add_argument("--profiler", choices=("cprofile", "py-spy"), default="cprofile")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--type", choices=("text", "binary"), default="text", dest="msg_type")
    parser.add_argument("--inflight", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--out", help="keep the profile here (.prof, or py-spy raw text)")
    parser.add_argument("--no-pin", action="store_true")
    add_client_loop_option(parser)
    return parser.parse_args(argv)


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
    table = stats.stats  # type: ignore[attr-defined]
    for key in list(table):
        if key[0] == "~" and key[2] in _WAITS:
            calls, total = table[key][1], table[key][2]
            removed.append(f"{key[2]}: {calls} calls, {total:.2f} s")
            del table[key]
    return removed


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    placement = Placement.choose(not args.no_pin)
    issues = Issues()
    workdir = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    prof = Path(args.out) if args.out else workdir / "server.out"
    profile_arg = str(prof) if args.profiler == "cprofile" else None
    spy: subprocess.Popen[bytes] | None = None
    with running(args.kind, placement, profile=profile_arg, loop=args.client_loop) as (
        server,
        load,
    ):
        load.open(args.connections)
        load.run(args.size, args.msg_type, 0.5, inflight=args.inflight)
        if args.profiler == "py-spy":
            exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            if not Path(exe).exists():
                print("py-spy is not installed: pip install py-spy", file=sys.stderr)
                return 2
            spy = subprocess.Popen(
                [
                    exe,
                    "record",
                    "--pid",
                    str(server.proc.pid),
                    "--format",
                    "raw",
                    "--rate",
                    "200",
                    "--duration",
                    str(int(args.seconds) + 1),
                    "--output",
                    str(prof),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
            )
        window = measure(
            server,
            load,
            issues,
            args.kind,
            args.size,
            args.msg_type,
            args.seconds,
            inflight=args.inflight,
        )
        if spy is not None:
            spy.wait(args.seconds + 30)
        load.close()
    print(
        f"{args.kind}, {args.connections} connections, {fmt_size(args.size)} {args.msg_type}, "
        f"{args.profiler}: {window['messages']:,} messages, {window['us_per_msg']:.1f} µs/msg"
        + (" (with cProfile's overhead)" if args.profiler == "cprofile" else "")
    )
    print()
    if args.profiler == "cprofile":
        stats = pstats.Stats(str(prof))
        for name in drop_waits(stats):
            print(f"(left out, time spent waiting: {name})")
        stats.strip_dirs().sort_stats("tottime").print_stats(args.top)
    else:
        print(py_spy_top(prof, args.top))
    for item in issues.summary():
        print(f"- {item}")
    shutil.rmtree(workdir, ignore_errors=True)  # the profile itself stays if --out named it
    return 0


if __name__ == "__main__":
    sys.exit(main())
