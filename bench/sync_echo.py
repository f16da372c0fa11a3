"""Sync-handler benchmark: embedws thread mode against ``websockets.sync.server``.

Server CPU per echoed message and client-side round-trip latency (p50, p99) at
1 and 50 connections, each connection doing sequential send/recv round trips.
Same processes and load client as ``echo.py``; see ``bench/README.md``.

    python bench/sync_echo.py             # defaults, about 45 s
    python bench/sync_echo.py --quick     # smoke run
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import harness
from servers import KINDS

REFERENCE = "websockets-sync"
SUBJECT = "embedws-thread"
GOAL_CPU = 0.7  # embedws-thread CPU per message at 50 connections, times websockets-sync's
GOAL_CONNECTIONS = 50


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--kinds",
        default=f"{SUBJECT},{REFERENCE},embedws-greenlet",
        help="comma-separated server kinds (default: %(default)s)",
    )
    parser.add_argument("--connections", default="1,50", help="connection counts, in order")
    parser.add_argument("--size", type=int, default=16, help="message size in bytes")
    parser.add_argument("--type", choices=("text", "binary"), default="text", dest="msg_type")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="pace each count's load to this many msg/s in all (0: closed loop); "
        "counts whose closed loop is slower than that stay closed loops",
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="one measured window")
    parser.add_argument("--warmup", type=float, default=0.3, help="unmeasured load before each")
    parser.add_argument(
        "--repeat", type=int, default=3, help="windows per server and count (median reported)"
    )
    harness.add_baseline_option(parser)
    harness.add_run_options(parser, "short smoke run (~20 s)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.repeat = 1.0, 0.2, 2
    args.kinds = harness.parse_names(parser, "kinds", args.kinds, KINDS)
    args.connections = harness.parse_counts(parser, args.connections)
    args.baseline = harness.check_baseline(parser, args.baseline)
    return args


def measure_all(
    args: argparse.Namespace, placement: harness.Placement, issues: harness.Issues
) -> list[dict[str, Any]]:
    """All servers at once; per connection count, rounds that visit each server in turn."""
    rows: list[dict[str, Any]] = []
    kinds = harness.with_baseline(args.kinds, args.baseline)
    with harness.fleet(kinds, placement, loop=args.client_loop, baseline=args.baseline) as servers:
        opened: dict[str, int] = {}
        for count in args.connections:
            opened = harness.open_fleet(servers, count, issues, opened)
            echo = harness.EchoLoad(
                args.size, args.msg_type, args.seconds, rate=args.rate, latency=True
            )
            windows = harness.measure_rounds(
                servers, issues, args.repeat, f"x{count}", echo, args.warmup
            )
            for kind, measured in windows.items():
                row: dict[str, Any] = {"kind": kind, "connections": opened[kind]}
                row.update(harness.summarize(measured))
                rows.append(row)
                harness.progress(
                    f"  {kind:<23} x{count:<3}: {row['us_per_msg']:6.1f} µs/msg, "
                    f"p50 {row['p50_us']:,.0f} µs, p99 {row['p99_us']:,.0f} µs "
                    f"({row['msg_per_s']:,.0f} msg/s)",
                )
        harness.close_fleet(servers, issues)
    return rows


def results_table(rows: list[dict[str, Any]], baseline: bool) -> str:
    reference = {r["connections"]: r for r in rows if r["kind"] == REFERENCE}
    headers = [
        "conns",
        *harness.ECHO_COLUMNS,
        "spread",
        "p50 µs",
        "p99 µs",
        "CPU vs ws-sync",
        "p99 vs ws-sync",
    ]
    if baseline:
        headers += ["vs base", "best vs base", "p99 vs base"]
    out = []
    for row in sorted(rows, key=lambda r: r["connections"]):
        ref = reference.get(row["connections"])
        out.append(
            [
                str(row["connections"]),
                *harness.echo_cells(row),
                f"{row['spread']:.0%}",
                f"{row['p50_us']:,.0f}",
                f"{row['p99_us']:,.0f}",
                harness.vs(row, ref, "us_per_msg"),
                harness.vs(row, ref, "p99_us"),
                *(
                    harness.vs_base(row, rows, ["connections"], key)
                    for key in ("us_per_msg", "best_us_per_msg", "p99_us")
                    if baseline
                ),
            ]
        )
    return harness.table(headers, out, {0, *range(2, len(headers))})


def goals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    subject = next(
        (r for r in rows if r["kind"] == SUBJECT and r["connections"] == GOAL_CONNECTIONS), None
    )
    reference = next(
        (r for r in rows if r["kind"] == REFERENCE and r["connections"] == GOAL_CONNECTIONS), None
    )
    if subject is None or reference is None:
        return []
    cpu = harness.ratio(subject["us_per_msg"], reference["us_per_msg"])
    p99 = harness.ratio(subject["p99_us"], reference["p99_us"])
    return [
        harness.goal(f"CPU/msg x{GOAL_CONNECTIONS}: {SUBJECT} / {REFERENCE}", cpu, GOAL_CPU),
        {
            "goal": f"p99 x{GOAL_CONNECTIONS}: {SUBJECT} / {REFERENCE}",
            "target": "< 1.00x",
            "value": p99,
            "verdict": "n/a" if p99 is None else ("MET" if p99 < 1.0 else "MISSED"),
        },
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = harness.Run.begin(
        args,
        f"sync echo: {harness.fmt_size(args.size)} {args.msg_type} messages",
    )
    rows = measure_all(args, run.placement, run.issues)

    run.print_environment()
    print(
        f"Sync echo: server CPU per message and round-trip latency ({harness.fmt_size(args.size)} "
        f"{args.msg_type}, one message in flight per connection, "
        f"{f'paced to {args.rate:g} msg/s, ' if args.rate else ''}{args.seconds:g} s "
        f"x{args.repeat} per server and count, {run.placement.describe()})"
    )
    print(results_table(rows, args.baseline is not None))
    goal_rows = goals(rows)
    if goal_rows:
        print()
        harness.print_goals(goal_rows)
    checks: list[dict[str, Any]] = []
    if args.baseline is not None:
        checks = harness.baseline_checks(
            rows,
            ["connections"],
            [
                ("CPU/msg", "us_per_msg"),
                ("CPU/msg best", "best_us_per_msg"),
                ("p50", "p50_us"),
                ("p99", "p99_us"),
            ],
            lambda row: f"x{row['connections']}",
        )
        harness.print_baseline(checks, args.baseline)
    run.finish(
        "sync_echo",
        "kinds connections size msg_type seconds warmup repeat rate baseline",
        results=rows,
        goals=goal_rows,
        baseline_checks=checks,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
