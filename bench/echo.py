"""Echo benchmark: server CPU per echoed message and RSS per idle connection.

Runs every server kind of ``servers.py`` in its own process, in the same run,
under the same load client (``loadclient.py``); see ``bench/README.md``.

    python bench/echo.py                 # defaults, about 2 minutes
    python bench/echo.py --quick         # smoke run, about 30 s
    python bench/echo.py --no-echo --idle 10000 --json bench/results/idle.json
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

import harness
from servers import ALL_KINDS, KINDS

REFERENCE = "websockets-asyncio"
#: CPU per message each kind may cost, times a reference's (issues 2 and 23).
GOALS_CPU = {
    "embedws-async": (REFERENCE, 0.7),
    "embedws-greenlet": (REFERENCE, 0.8),
    "embedws-thread": ("websockets-sync", 0.6),
}
#: Issue 23 set the greenlet and thread goals at this many connections (``--connections``).
GOALS_23_CONNECTIONS = 100
GOAL_RSS = 0.6  # embedws-async RSS per idle connection, times websockets-asyncio's


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"comma-separated server kinds, of {','.join(ALL_KINDS)} (default: {','.join(KINDS)})",
    )
    parser.add_argument("--connections", type=int, default=50, help="echo connections")
    parser.add_argument(
        "--sizes", default="16,1024,65536", help="message sizes in bytes, comma-separated"
    )
    parser.add_argument("--type", choices=("text", "binary"), default="text", dest="msg_type")
    parser.add_argument("--inflight", type=int, default=1, help="messages in flight per connection")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="pace the load to this many msg/s (0: closed loop)"
    )
    parser.add_argument("--seconds", type=float, default=1.5, help="one measured window")
    parser.add_argument("--warmup", type=float, default=0.3, help="unmeasured load before each")
    parser.add_argument(
        "--repeat", type=int, default=3, help="windows per server and size (median reported)"
    )
    parser.add_argument("--clients", type=int, default=1, help="load-generator processes")
    parser.add_argument(
        "--idle", type=int, default=1000, help="idle connections for the RSS test (0: skip)"
    )
    parser.add_argument("--settle", type=float, default=1.0, help="seconds before reading RSS")
    parser.add_argument("--no-echo", action="store_true", help="skip the CPU test")
    harness.add_baseline_option(parser)
    harness.add_run_options(parser, "short smoke run (~30 s)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.repeat, args.settle = 0.7, 0.2, 2, 0.5
        args.idle = min(args.idle, 200)
    args.kinds = harness.parse_names(parser, "kinds", args.kinds, ALL_KINDS)
    args.sizes = harness.parse_ints(args.sizes)
    args.baseline = harness.check_baseline(parser, args.baseline)
    return args


def measure_echo(
    args: argparse.Namespace, placement: harness.Placement, issues: harness.Issues
) -> list[dict[str, Any]]:
    """All servers at once; per size, ``--repeat`` rounds that visit each server in turn."""
    rows: list[dict[str, Any]] = []
    kinds = harness.with_baseline(args.kinds, args.baseline)
    with harness.fleet(
        kinds, placement, args.clients, args.client_loop, baseline=args.baseline
    ) as servers:
        opened = harness.open_fleet(servers, args.connections, issues)
        for size in args.sizes:
            echo = harness.EchoLoad(size, args.msg_type, args.seconds, args.inflight, args.rate)
            windows = harness.measure_rounds(
                servers, issues, args.repeat, harness.fmt_size(size), echo, args.warmup
            )
            for kind, measured in windows.items():
                row = {"kind": kind, "size": size, "connections": opened[kind]}
                row.update(harness.summarize(measured))
                rows.append(row)
                harness.progress(
                    f"  {kind:<25} {harness.fmt_size(size):>7}: {row['us_per_msg']:7.1f} µs/msg "
                    f"({row['msg_per_s']:,.0f} msg/s, spread {row['spread']:.0%})",
                )
        harness.close_fleet(servers, issues)
    return rows


def measure_idle(
    kind: str, args: argparse.Namespace, placement: harness.Placement, issues: harness.Issues
) -> dict[str, Any]:
    """RSS of the server with ``args.idle`` idle connections, minus with none."""
    clients = harness.client_processes(args.idle)
    with harness.running(
        kind, placement, clients, loop=args.client_loop, baseline=args.baseline
    ) as (server, load):
        # A warm-up connection first: imports, caches and the first handler
        # thread are not per-connection costs.
        load.open(1)
        load.close()
        time.sleep(args.settle)
        base, base_threads = server.rss(), server.threads()
        opened = load.open(args.idle)
        if opened["failed"]:
            issues.add(
                f"{kind} idle: {opened['failed']} of {args.idle} connections failed: "
                f"{opened['first_error']!r}"
            )
        time.sleep(args.settle)
        loaded, loaded_threads = server.rss(), server.threads()
        count = opened["open"]
        issues.check_close(f"{kind} idle", load.close(timeout=120))
        issues.check_server(server)
    per_conn = (loaded - base) / count if count else math.nan
    harness.progress(
        f"  {kind:<25} idle x{count}: {per_conn / 1024:6.1f} KiB/conn "
        f"(opened in {opened['seconds']:.1f} s)",
    )
    return {
        "kind": kind,
        "connections": count,
        "rss_base": base,
        "rss_loaded": loaded,
        "threads_base": base_threads,
        "threads_loaded": loaded_threads,
        "bytes_per_conn": per_conn,
        "open_seconds": opened["seconds"],
    }


def echo_table(rows: list[dict[str, Any]], repeat: int, baseline: bool) -> str:
    references = {r["size"]: r for r in rows if r["kind"] == REFERENCE}
    headers = ["size", *harness.ECHO_COLUMNS]
    if repeat > 1:
        headers.append("spread")
    headers.append(f"vs {REFERENCE}")
    # Best window against best window: a reference whose cost varies between
    # windows is compared in its fast ones too, never only in its slow ones.
    headers.append("best vs best")
    headers.append("fast vs fast")  # the mean of the fastest third of windows
    if baseline:
        headers += ["vs base", "best vs base"]
    out = []
    for row in sorted(rows, key=lambda r: r["size"]):
        cells = [harness.fmt_size(row["size"]), *harness.echo_cells(row)]
        if repeat > 1:
            cells.append(f"{row['spread']:.0%}")
        reference = references.get(row["size"])
        cells += [
            harness.vs(row, reference, key)
            for key in ("us_per_msg", "best_us_per_msg", "fast_us_per_msg")
        ]
        if baseline:
            cells += [
                harness.vs_base(row, rows, ["size"], key)
                for key in ("us_per_msg", "best_us_per_msg")
            ]
        out.append(cells)
    right = set(range(2, len(headers)))
    return harness.table(headers, out, right)


def idle_table(rows: list[dict[str, Any]], baseline: bool) -> str:
    reference = next((r["bytes_per_conn"] for r in rows if r["kind"] == REFERENCE), None)
    headers = ["server", "conns", "RSS base", "RSS loaded", "threads", "KiB/conn"]
    headers.append(f"vs {REFERENCE}")
    if baseline:
        headers.append("vs base")
    out = [
        [
            row["kind"],
            f"{row['connections']:,}",
            f"{row['rss_base'] / 2**20:.1f} MiB",
            f"{row['rss_loaded'] / 2**20:.1f} MiB",
            f"{row['threads_base']}→{row['threads_loaded']}",
            f"{row['bytes_per_conn'] / 1024:.1f}",
            harness.fmt_ratio(harness.ratio(row["bytes_per_conn"], reference)),
            *([harness.vs_base(row, rows, [], "bytes_per_conn")] if baseline else []),
        ]
        for row in rows
    ]
    return harness.table(headers, out, set(range(1, len(headers))))


def goals(
    echo: list[dict[str, Any]], idle: list[dict[str, Any]], connections: int
) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for row in echo:
        if row["kind"] not in GOALS_CPU:
            continue
        if row["kind"] != "embedws-async" and connections != GOALS_23_CONNECTIONS:
            continue
        reference_kind, limit = GOALS_CPU[row["kind"]]
        reference = next(
            (r for r in echo if r["kind"] == reference_kind and r["size"] == row["size"]), None
        )
        if reference is None:
            continue
        about = f"{harness.fmt_size(row['size'])}: {row['kind']} / {reference_kind}"
        results += harness.window_goals(
            row, reference, "CPU/msg", "msg", about, limit, size=row["size"], kind=row["kind"]
        )
    ref_idle = next((r["bytes_per_conn"] for r in idle if r["kind"] == REFERENCE), None)
    for row in idle:
        if row["kind"] == "embedws-async":
            value = harness.ratio(row["bytes_per_conn"], ref_idle)
            text = f"RSS/idle conn x{row['connections']}: embedws-async / {REFERENCE}"
            results.append(harness.goal(text, value, GOAL_RSS))
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = harness.Run.begin(args)
    echo_rows: list[dict[str, Any]] = []
    idle_rows: list[dict[str, Any]] = []
    if not args.no_echo:
        harness.progress(
            f"echo: {args.connections} connections, {args.msg_type} messages, "
            f"{args.seconds:g} s per size, {run.placement.describe()}",
        )
        echo_rows = measure_echo(args, run.placement, run.issues)
    if args.idle > 0:
        harness.progress(f"idle: {args.idle} connections")
        for kind in harness.with_baseline(args.kinds, args.baseline):
            idle_rows.append(measure_idle(kind, args, run.placement, run.issues))

    run.print_environment()
    if echo_rows:
        print(
            f"Echo: server CPU per echoed message ({args.connections} connections, "
            f"{args.inflight} message(s) in flight each, {args.msg_type}, "
            f"{f'paced to {args.rate:g} msg/s, ' if args.rate else ''}"
            f"{args.seconds:g} s x{args.repeat} per size, "
            f"{run.placement.describe()})"
        )
        print(echo_table(echo_rows, args.repeat, args.baseline is not None))
        print()
    if idle_rows:
        print(f"Idle: server RSS per idle connection (handlers parked in recv, {args.idle})")
        print(idle_table(idle_rows, args.baseline is not None))
        print()
    goal_rows = goals(echo_rows, idle_rows, args.connections)
    if goal_rows:
        harness.print_goals(goal_rows)
    checks: list[dict[str, Any]] = []
    if args.baseline is not None:
        checks = harness.baseline_checks(
            echo_rows,
            ["size"],
            [
                ("CPU/msg", "us_per_msg"),
                ("CPU/msg best", "best_us_per_msg"),
                ("CPU/msg fastest third", "fast_us_per_msg"),
            ],
            lambda row: harness.fmt_size(row["size"]),
        ) + harness.baseline_checks(
            idle_rows,
            [],
            [("RSS/idle conn", "bytes_per_conn")],
            lambda row: f"x{row['connections']}",
        )
        harness.print_baseline(checks, args.baseline)
    run.finish(
        "echo",
        "kinds connections sizes msg_type seconds warmup repeat clients inflight rate idle "
        "baseline",
        echo=echo_rows,
        idle=idle_rows,
        goals=goal_rows,
        baseline_checks=checks,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
