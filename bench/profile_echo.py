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
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import harness
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
    harness.add_client_loop_option(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    placement = harness.Placement.choose(not args.no_pin)
    issues = harness.Issues()
    workdir = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    prof = Path(args.out) if args.out else workdir / "server.out"
    profile_arg = str(prof) if args.profiler == "cprofile" else None
    spy: subprocess.Popen[bytes] | None = None
    with harness.running(args.kind, placement, profile=profile_arg, loop=args.client_loop) as (
        server,
        load,
    ):
        load.open(args.connections)
        load.run(harness.EchoLoad(args.size, args.msg_type, 0.5, args.inflight))
        if args.profiler == "py-spy":
            exe = harness.py_spy_exe()
            if exe is None:
                print(harness.PY_SPY_MISSING, file=sys.stderr)
                return 2
            spy = harness.py_spy_record(
                exe, server.proc.pid, 200, int(args.seconds) + 1, prof, stderr=None
            )
        echo = harness.EchoLoad(args.size, args.msg_type, args.seconds, args.inflight)
        window = harness.measure(server, load, issues, args.kind, echo)
        if spy is not None:
            spy.wait(args.seconds + 30)
        load.close()
    print(
        f"{args.kind}, {args.connections} connections, "
        f"{harness.fmt_size(args.size)} {args.msg_type}, "
        f"{args.profiler}: {window['messages']:,} messages, {window['us_per_msg']:.1f} µs/msg"
        + (" (with cProfile's overhead)" if args.profiler == "cprofile" else "")
    )
    print()
    if args.profiler == "cprofile":
        harness.print_cprofile(prof, args.top)
    else:
        print(harness.py_spy_top(prof, args.top))
    for item in issues.summary():
        print(f"- {item}")
    shutil.rmtree(workdir, ignore_errors=True)  # the profile itself stays if --out named it
    return 0


if __name__ == "__main__":
    sys.exit(main())
