"""Client benchmark: embedws's sync and aio clients against the ``websockets`` clients.

Every client library runs in its own process (``client_worker.py``, on the
other CPUs) and does sequential echo round trips against the same echo server
(``servers.py``, its own process on CPU 0): client CPU per round trip and
round-trip latency; see ``bench/README.md``.

    python bench/client.py                # defaults, about 2 minutes
    python bench/client.py --quick        # smoke run, about 30 s
"""

from __future__ import annotations

import argparse
import io
import math
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from client_worker import SYNC_VARIANTS, VARIANTS
from harness import (
    HERE,
    NOISE_LIMIT,
    Clients,
    Issues,
    Placement,
    ServerProcess,
    background_load,
    describe_environment,
    environment,
    fmt_ratio,
    fmt_size,
    measure,
    median,
    ratio,
    spread,
    summarize,
    table,
    verdict,
    write_json,
)
from profile_echo import drop_waits, py_spy_top
from servers import KINDS

REFERENCES = {"embedws-sync": "websockets-sync", "embedws-aio": "websockets-asyncio"}
GOAL = 1.0  # embedws client CPU per round trip and latency, times the websockets client's


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated clients (default: all)"
    )
    parser.add_argument(
        "--server",
        choices=KINDS,
        default="websockets-asyncio",
        help="the echo server every client talks to (default: %(default)s)",
    )
    parser.add_argument(
        "--connections",
        default="1,50",
        help="connection counts, in order; the sync clients take part at 1 only",
    )
    parser.add_argument(
        "--sizes", default="16,1024", help="message sizes in bytes, comma-separated"
    )
    parser.add_argument("--type", choices=("text", "binary"), default="text", dest="msg_type")
    parser.add_argument("--seconds", type=float, default=2.0, help="one measured window")
    parser.add_argument("--warmup", type=float, default=0.3, help="unmeasured round trips before")
    parser.add_argument(
        "--repeat", type=int, default=3, help="windows per client and scenario (median reported)"
    )
    parser.add_argument(
        "--client-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the event loop of the aio clients (default: %(default)s, as most programs)",
    )
    parser.add_argument(
        "--profile",
        choices=("missed", "always", "never"),
        default="missed",
        help="py-spy the embedws client of each scenario that missed a goal (or all, or none)",
    )
    parser.add_argument(
        "--profiler",
        choices=("cprofile", "py-spy"),
        default="cprofile",
        help="cprofile (default: every thread, call counts; a fresh client process) or "
        "py-spy (no overhead, but a thread waiting for the CPU counts as busy)",
    )
    parser.add_argument("--profile-seconds", type=float, default=5.0, help="length of each profile")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and clients")
    parser.add_argument("--quick", action="store_true", help="short smoke run (~30 s)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.repeat, args.profile_seconds = 0.7, 0.2, 2, 2.0
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    args.connections = [int(c) for c in args.connections.split(",")]
    if args.connections != sorted(args.connections):
        parser.error("--connections must be in increasing order (connections are added)")
    args.sizes = [int(s) for s in args.sizes.split(",")]
    return args


def takes_part(variant: str, connections: int) -> bool:
    return connections == 1 or variant not in SYNC_VARIANTS


@contextmanager
def clients(
    variants: list[str], port: int, placement: Placement, loop: str
) -> Iterator[dict[str, Clients]]:
    """One worker process per client library, all aimed at the same server."""
    with ExitStack() as stack:
        workers: dict[str, Clients] = {}
        for variant in variants:
            worker = Clients(
                port,
                1,
                placement.client,
                loop,
                script=HERE / "client_worker.py",
                args=["--variant", variant],
            )
            stack.callback(worker.stop)
            workers[variant] = worker
        yield workers


def measure_all(
    args: argparse.Namespace, placement: Placement, issues: Issues
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Per connection count and size, rounds that visit every client in turn."""
    rows: list[dict[str, Any]] = []
    profiles: dict[str, str] = {}
    server = ServerProcess(args.server, placement.server)
    try:
        with clients(args.variants, server.port, placement, args.client_loop) as workers:
            opened = dict.fromkeys(workers, 0)
            for count in args.connections:
                present = [v for v in workers if takes_part(v, count)]
                for variant in present:
                    result = workers[variant].open(count - opened[variant])
                    opened[variant] = result["open"]
                    if result["failed"]:
                        issues.add(
                            f"{variant}: {result['failed']} connections failed: "
                            f"{result['first_error']!r}"
                        )
                for size in args.sizes:
                    windows: dict[str, list[dict[str, Any]]] = {v: [] for v in present}
                    for _ in range(args.repeat):
                        for variant in present:
                            windows[variant].append(
                                window(server, workers[variant], args, issues, variant, count, size)
                            )
                    for variant, measured in windows.items():
                        row = summarize_client(measured)
                        row.update(variant=variant, connections=opened[variant], size=size)
                        rows.append(row)
                        print(
                            f"  {variant:<18} x{count:<3} {fmt_size(size):>6}: "
                            f"{row['client_us']:6.1f} µs CPU/rt, p50 {row['p50_us']:,.0f} µs, "
                            f"p99 {row['p99_us']:,.0f} µs ({row['msg_per_s']:,.0f} rt/s)",
                            file=sys.stderr,
                            flush=True,
                        )
                for goal in goals(rows):
                    key = f"{goal['variant']} x{goal['connections']} {fmt_size(goal['size'])}"
                    wanted = args.profile == "always" or (
                        args.profile == "missed" and goal["verdict"] == "MISSED"
                    )
                    if wanted and goal["connections"] == count and key not in profiles:
                        print(f"  profiling {key}", file=sys.stderr, flush=True)
                        profiles[key] = profile(
                            goal["variant"],
                            count,
                            goal["size"],
                            workers[goal["variant"]],
                            server,
                            placement,
                            args,
                            issues,
                        )
            for variant, worker in workers.items():
                closed = worker.close()
                if closed["aborted"]:
                    issues.add(f"{variant}: {closed['aborted']} connections did not close cleanly")
        issues.check_server(server)
    finally:
        server.stop()
    return rows, profiles


def window(
    server: ServerProcess,
    worker: Clients,
    args: argparse.Namespace,
    issues: Issues,
    variant: str,
    count: int,
    size: int,
) -> dict[str, Any]:
    """A warm-up, then one measured window of round trips."""
    label = f"{variant} x{count} {fmt_size(size)}"
    warm = worker.run(size, args.msg_type, args.warmup)
    issues.check_run(f"{label} warm-up", warm)
    measured = measure(
        server, worker, issues, label, size, args.msg_type, args.seconds, latency=True
    )
    # The worker's own counts cover exactly its round trips, not the command channel.
    own, messages = measured["client_own"], measured["messages"]
    measured["client_us"] = own["cpu_s"] / messages * 1e6 if messages else math.nan
    measured["client_sys_us"] = own["sys_s"] / messages * 1e6 if messages else math.nan
    measured["switches_per_rt"] = own["ctx_switches"] / messages if messages else math.nan
    return measured


def summarize_client(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """harness.summarize, plus the client's CPU per round trip (median) and its spread."""
    client_us = [w["client_us"] for w in windows]
    summary = summarize(windows)
    summary["client_us"] = median(client_us)
    summary["client_sys_us"] = median([w["client_sys_us"] for w in windows])
    summary["switches_per_rt"] = median([w["switches_per_rt"] for w in windows])
    summary["client_spread"] = spread(client_us)
    return summary


def profile(
    variant: str,
    count: int,
    size: int,
    worker: Clients,
    server: ServerProcess,
    placement: Placement,
    args: argparse.Namespace,
    issues: Issues,
) -> str:
    """Where the client's CPU goes in one scenario: its top functions."""
    with tempfile.TemporaryDirectory(prefix="bench-client-") as tmp:
        if args.profiler == "py-spy":
            return py_spy_profile(worker, size, Path(tmp) / "profile.txt", args, issues)
        # A fresh worker, profiled from its start: cProfile sees only the threads
        # started after it was enabled (the loop thread of embedws.sync among them).
        stats_path = Path(tmp) / "client.prof"
        profiled = Clients(
            server.port,
            1,
            placement.client,
            args.client_loop,
            script=HERE / "client_worker.py",
            args=["--variant", variant, "--cprofile", str(stats_path)],
        )
        try:
            profiled.open(count)
            profiled.run(size, args.msg_type, args.warmup)
            result = profiled.run(size, args.msg_type, args.profile_seconds)
            issues.check_run(f"{variant} profile", result)
        finally:
            profiled.stop()  # the worker writes its stats as it exits
        if not stats_path.exists():
            return "the profiled client wrote no stats"
        out = io.StringIO()
        stats = pstats.Stats(str(stats_path), stream=out)
        for name in drop_waits(stats):
            print(f"(left out, time spent waiting: {name})", file=out)
        print(
            f"{result['messages']:,} round trips in {result['seconds']:.1f} s under cProfile "
            "(its overhead inflates small functions: read shares and call counts)",
            file=out,
        )
        stats.strip_dirs().sort_stats("tottime").print_stats(25)
        return out.getvalue().rstrip()


def py_spy_profile(
    worker: Clients, size: int, raw: Path, args: argparse.Namespace, issues: Issues
) -> str:
    """py-spy the running worker over a window of round trips."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        return "py-spy is not installed: pip install py-spy"
    spy = subprocess.Popen(
        [
            exe,
            "record",
            "--pid",
            str(worker.procs[0].proc.pid),
            "--format",
            "raw",
            "--rate",
            "250",
            "--duration",
            str(math.ceil(args.profile_seconds)),
            "--output",
            str(raw),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(0.5)  # py-spy attaches
    result = worker.run(size, args.msg_type, args.profile_seconds + 0.5)
    issues.check_run("profile", result)
    try:
        _, err = spy.communicate(timeout=args.profile_seconds + 30)
    except subprocess.TimeoutExpired:
        spy.kill()
        return "py-spy did not finish"
    if not raw.exists():
        return f"py-spy failed: {err.decode(errors='replace').strip()[-300:]}"
    return py_spy_top(raw, 25)


def results_table(rows: list[dict[str, Any]]) -> str:
    headers = [
        "conns",
        "size",
        "client",
        "round trips",
        "rt/s",
        "cli CPU",
        "srv CPU",
        "other",
        "cli µs/rt",
        "sys",
        "cs/rt",
        "spread",
        "srv µs/rt",
        "p50 µs",
        "p99 µs",
        "CPU vs ws",
        "p50 vs ws",
        "p99 vs ws",
    ]
    out = []
    for row in sorted(rows, key=lambda r: (r["connections"] > 1, r["size"])):
        ref = reference_of(rows, row)
        out.append(
            [
                str(row["connections"]),
                fmt_size(row["size"]),
                row["variant"],
                f"{row['messages']:,}",
                f"{row['msg_per_s']:,.0f}",
                f"{row['client_util']:.0%}",
                f"{row['server_util']:.0%}",
                f"{row['other_load']:.0%}",
                f"{row['client_us']:.1f}",
                f"{row['client_sys_us']:.1f}",
                f"{row['switches_per_rt']:.1f}",
                f"{row['client_spread']:.0%}",
                f"{row['us_per_msg']:.1f}",
                f"{row['p50_us']:,.0f}",
                f"{row['p99_us']:,.0f}",
                fmt_ratio(ratio(row["client_us"], ref["client_us"] if ref else None)),
                fmt_ratio(ratio(row["p50_us"], ref["p50_us"] if ref else None)),
                fmt_ratio(ratio(row["p99_us"], ref["p99_us"] if ref else None)),
            ]
        )
    return table(headers, out, {0, *range(3, len(headers))})


def reference_of(rows: list[dict[str, Any]], row: dict[str, Any]) -> dict[str, Any] | None:
    """The websockets row that ``row`` compares with (itself for a websockets row)."""
    name = REFERENCES.get(row["variant"], row["variant"])
    return next(
        (
            r
            for r in rows
            if r["variant"] == name
            and r["connections"] == row["connections"]
            and r["size"] == row["size"]
        ),
        None,
    )


def goals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for row in rows:
        ref = reference_of(rows, row)
        if row["variant"] not in REFERENCES or ref is None:
            continue
        scenario = f"x{row['connections']} {fmt_size(row['size'])}"
        for what, key in (("CPU/rt", "client_us"), ("p50", "p50_us"), ("p99", "p99_us")):
            value = ratio(row[key], ref[key])
            results.append(
                {
                    "goal": f"{what} {scenario}: {row['variant']} / {ref['variant']}",
                    "variant": row["variant"],
                    "connections": row["connections"],
                    "size": row["size"],
                    "target": f"<= {GOAL:.2f}x",
                    "value": value,
                    "verdict": verdict(value, GOAL),
                }
            )
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    placement = Placement.choose(not args.no_pin)
    issues = Issues()
    started = time.perf_counter()
    noise = background_load()
    if noise > NOISE_LIMIT:
        issues.add(
            f"other processes keep {noise:.2f} cores busy before the start: expect noisy numbers"
        )
    print(
        f"clients: {args.msg_type} echo round trips against {args.server}, {placement.describe()}",
        file=sys.stderr,
    )
    rows, profiles = measure_all(args, placement, issues)
    goal_rows = goals(rows)

    env = environment()
    env["client_loop"] = f"{args.client_loop} for the aio clients"
    print()
    print(describe_environment(env))
    print()
    print(
        f"Clients: echo round trips against a {args.server} server, one message in flight per "
        f"connection, {args.msg_type}, {args.seconds:g} s x{args.repeat} per client and "
        f"scenario, {placement.describe()}; cli µs/rt: the client process's CPU (all threads)"
    )
    print(results_table(rows))
    print()
    print("Goals")
    print(
        table(
            ["goal", "target", "measured", "verdict"],
            [[g["goal"], g["target"], fmt_ratio(g["value"]), g["verdict"]] for g in goal_rows],
            {2},
        )
    )
    for name, text in profiles.items():
        print(f"\nProfile: {name} client ({args.profiler})\n{text}")
    if issues.summary():
        print("\nIssues")
        for item in issues.summary():
            print(f"- {item}")
    print(f"\n({time.perf_counter() - started:.0f} s)")
    write_json(
        args.json,
        {
            "benchmark": "client",
            "environment": env,
            "settings": {
                "variants": args.variants,
                "server": args.server,
                "connections": args.connections,
                "sizes": args.sizes,
                "type": args.msg_type,
                "seconds": args.seconds,
                "warmup": args.warmup,
                "repeat": args.repeat,
                "placement": placement.describe(),
                "client_loop": args.client_loop,
            },
            "results": rows,
            "goals": goal_rows,
            "profiles": profiles,
            "issues": issues.summary(),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
