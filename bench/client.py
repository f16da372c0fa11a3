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
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import harness
from client_worker import SYNC_VARIANTS, VARIANTS
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
    harness.add_run_options(parser, "short smoke run (~30 s)", client_loop=False)
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.repeat, args.profile_seconds = 0.7, 0.2, 2, 2.0
    args.variants = harness.parse_names(parser, "variants", args.variants, VARIANTS)
    args.connections = harness.parse_counts(parser, args.connections)
    args.sizes = harness.parse_ints(args.sizes)
    return args


def takes_part(variant: str, connections: int) -> bool:
    return connections == 1 or variant not in SYNC_VARIANTS


@contextmanager
def clients(
    variants: list[str], port: int, placement: harness.Placement, loop: str
) -> Iterator[dict[str, harness.Clients]]:
    """One worker process per client library, all aimed at the same server."""
    with ExitStack() as stack:
        workers: dict[str, harness.Clients] = {}
        for variant in variants:
            worker = harness.Clients(
                port,
                1,
                placement.client,
                loop,
                script=harness.HERE / "client_worker.py",
                args=["--variant", variant],
            )
            stack.callback(worker.stop)
            workers[variant] = worker
        yield workers


def measure_all(
    args: argparse.Namespace, placement: harness.Placement, issues: harness.Issues
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Per connection count and size, rounds that visit every client in turn."""
    rows: list[dict[str, Any]] = []
    profiles: dict[str, str] = {}
    server = harness.ServerProcess(args.server, placement.server)
    try:
        with clients(args.variants, server.port, placement, args.client_loop) as workers:
            opened = dict.fromkeys(workers, 0)
            for count in args.connections:
                present = [v for v in workers if takes_part(v, count)]
                for variant in present:
                    result = workers[variant].open(count - opened[variant])
                    opened[variant] = issues.check_open(variant, result)
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
                        harness.progress(
                            f"  {variant:<18} x{count:<3} {harness.fmt_size(size):>6}: "
                            f"{row['client_us']:6.1f} µs CPU/rt, p50 {row['p50_us']:,.0f} µs, "
                            f"p99 {row['p99_us']:,.0f} µs ({row['msg_per_s']:,.0f} rt/s)",
                        )
                for goal in goals(rows):
                    key = (
                        f"{goal['variant']} x{goal['connections']} {harness.fmt_size(goal['size'])}"
                    )
                    wanted = args.profile == "always" or (
                        args.profile == "missed" and goal["verdict"] == "MISSED"
                    )
                    if wanted and goal["connections"] == count and key not in profiles:
                        harness.progress(f"  profiling {key}")
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
                issues.check_close(variant, worker.close())
        issues.check_server(server)
    finally:
        server.stop()
    return rows, profiles


def window(
    server: harness.ServerProcess,
    worker: harness.Clients,
    args: argparse.Namespace,
    issues: harness.Issues,
    variant: str,
    count: int,
    size: int,
) -> dict[str, Any]:
    """A warm-up, then one measured window of round trips."""
    label = f"{variant} x{count} {harness.fmt_size(size)}"
    echo = harness.EchoLoad(size, args.msg_type, args.seconds, latency=True)
    measured = harness.measure(server, worker, issues, label, echo, args.warmup)
    # The worker's own counts cover exactly its round trips, not the command channel.
    own, messages = measured["client_own"], measured["messages"]
    measured["client_us"] = own["cpu_s"] / messages * 1e6 if messages else math.nan
    measured["client_sys_us"] = own["sys_s"] / messages * 1e6 if messages else math.nan
    measured["switches_per_rt"] = own["ctx_switches"] / messages if messages else math.nan
    return measured


def summarize_client(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """harness.summarize, plus the client's CPU per round trip (median) and its spread."""
    client_us = [w["client_us"] for w in windows]
    summary = harness.summarize(windows)
    summary["client_us"] = harness.median(client_us)
    summary["client_sys_us"] = harness.median([w["client_sys_us"] for w in windows])
    summary["switches_per_rt"] = harness.median([w["switches_per_rt"] for w in windows])
    summary["client_spread"] = harness.spread(client_us)
    return summary


def profile(
    variant: str,
    count: int,
    size: int,
    worker: harness.Clients,
    server: harness.ServerProcess,
    placement: harness.Placement,
    args: argparse.Namespace,
    issues: harness.Issues,
) -> str:
    """Where the client's CPU goes in one scenario: its top functions."""
    with tempfile.TemporaryDirectory(prefix="bench-client-") as tmp:
        if args.profiler == "py-spy":
            return py_spy_profile(worker, size, Path(tmp) / "profile.txt", args, issues)
        # A fresh worker, profiled from its start: cProfile sees only the threads
        # started after it was enabled (the loop thread of embedws.sync among them).
        stats_path = Path(tmp) / "client.prof"
        profiled = harness.Clients(
            server.port,
            1,
            placement.client,
            args.client_loop,
            script=harness.HERE / "client_worker.py",
            args=["--variant", variant, "--cprofile", str(stats_path)],
        )
        try:
            profiled.open(count)
            profiled.run(harness.EchoLoad(size, args.msg_type, args.warmup))
            result = profiled.run(harness.EchoLoad(size, args.msg_type, args.profile_seconds))
            issues.check_run(f"{variant} profile", result)
        finally:
            profiled.stop()  # the worker writes its stats as it exits
        if not stats_path.exists():
            return "the profiled client wrote no stats"
        out = io.StringIO()
        note = (
            f"{result['messages']:,} round trips in {result['seconds']:.1f} s under cProfile "
            "(its overhead inflates small functions: read shares and call counts)"
        )
        harness.print_cprofile(stats_path, 25, out, note)
        return out.getvalue().rstrip()


def py_spy_profile(
    worker: harness.Clients, size: int, raw: Path, args: argparse.Namespace, issues: harness.Issues
) -> str:
    """py-spy the running worker over a window of round trips."""

    def work() -> None:
        result = worker.run(harness.EchoLoad(size, args.msg_type, args.profile_seconds + 0.5))
        issues.check_run("profile", result)

    return harness.py_spy_during(
        worker.procs[0].proc.pid,
        raw,
        work,
        rate=250,
        duration=math.ceil(args.profile_seconds),
        attach=0.5,
        timeout=args.profile_seconds + 30,
    )


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
                harness.fmt_size(row["size"]),
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
                harness.vs(row, ref, "client_us"),
                harness.vs(row, ref, "p50_us"),
                harness.vs(row, ref, "p99_us"),
            ]
        )
    return harness.table(headers, out, {0, *range(3, len(headers))})


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
        against = (
            f"x{row['connections']} {harness.fmt_size(row['size'])}: "
            f"{row['variant']} / {ref['variant']}"
        )
        checks = (
            (f"CPU/rt {against}", "client_us", GOAL),
            (f"p50 {against}", "p50_us", GOAL),
            (f"p99 {against}", "p99_us", GOAL),
        )
        about = {key: row[key] for key in ("variant", "connections", "size")}
        results += harness.ratio_goals(row, ref, checks, **about)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = harness.Run.begin(
        args,
        f"clients: {args.msg_type} echo round trips against {args.server}",
    )
    rows, profiles = measure_all(args, run.placement, run.issues)
    goal_rows = goals(rows)

    run.print_environment(f"{args.client_loop} for the aio clients")
    print(
        f"Clients: echo round trips against a {args.server} server, one message in flight per "
        f"connection, {args.msg_type}, {args.seconds:g} s x{args.repeat} per client and "
        f"scenario, {run.placement.describe()}; cli µs/rt: the client process's CPU (all threads)"
    )
    print(results_table(rows))
    print()
    harness.print_goals(goal_rows)
    harness.print_profiles(profiles, f"client ({args.profiler})")
    run.finish(
        "client",
        "variants server connections sizes msg_type seconds warmup repeat",
        results=rows,
        goals=goal_rows,
        profiles=profiles,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
