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
import time
from typing import Any

from harness import (
    NOISE_LIMIT,
    Issues,
    Placement,
    add_client_loop_option,
    background_load,
    describe_environment,
    environment,
    fleet,
    fmt_ratio,
    fmt_size,
    measure,
    ratio,
    summarize,
    table,
    verdict,
    write_json,
)
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
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and clients")
    add_client_loop_option(parser)
    parser.add_argument("--quick", action="store_true", help="short smoke run (~20 s)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.repeat = 1.0, 0.2, 2
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = set(args.kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
    args.connections = [int(c) for c in args.connections.split(",")]
    if args.connections != sorted(args.connections):
        parser.error("--connections must be in increasing order (connections are added)")
    return args


def measure_all(
    args: argparse.Namespace, placement: Placement, issues: Issues
) -> list[dict[str, Any]]:
    """All servers at once; per connection count, rounds that visit each server in turn."""
    rows: list[dict[str, Any]] = []
    with fleet(args.kinds, placement, loop=args.client_loop) as servers:
        opened = dict.fromkeys(servers, 0)
        for count in args.connections:
            for kind, (_server, load) in servers.items():
                result = load.open(count - opened[kind])
                opened[kind] = result["open"]
                if result["failed"]:
                    issues.add(
                        f"{kind}: {result['failed']} connections failed: {result['first_error']!r}"
                    )
            windows: dict[str, list[dict[str, Any]]] = {kind: [] for kind in servers}
            for _ in range(args.repeat):
                for kind, (server, load) in servers.items():
                    label = f"{kind} x{count}"
                    warm = load.run(args.size, args.msg_type, args.warmup, rate=args.rate)
                    issues.check_run(f"{label} warm-up", warm)
                    windows[kind].append(
                        measure(
                            server,
                            load,
                            issues,
                            label,
                            args.size,
                            args.msg_type,
                            args.seconds,
                            rate=args.rate,
                            latency=True,
                        )
                    )
            for kind, measured in windows.items():
                row: dict[str, Any] = {"kind": kind, "connections": opened[kind]}
                row.update(summarize(measured))
                rows.append(row)
                print(
                    f"  {kind:<18} x{count:<3}: {row['us_per_msg']:6.1f} µs/msg, "
                    f"p50 {row['p50_us']:,.0f} µs, p99 {row['p99_us']:,.0f} µs "
                    f"({row['msg_per_s']:,.0f} msg/s)",
                    file=sys.stderr,
                    flush=True,
                )
        for kind, (server, load) in servers.items():
            closed = load.close()
            if closed["aborted"]:
                issues.add(f"{kind}: {closed['aborted']} connections did not finish the close")
            issues.check_server(server)
    return rows


def results_table(rows: list[dict[str, Any]]) -> str:
    reference = {r["connections"]: r for r in rows if r["kind"] == REFERENCE}
    headers = [
        "conns",
        "server",
        "messages",
        "msg/s",
        "srv CPU",
        "cli CPU",
        "other",
        "µs/msg",
        "sys",
        "spread",
        "p50 µs",
        "p99 µs",
        "CPU vs ws-sync",
        "p99 vs ws-sync",
    ]
    out = []
    for row in sorted(rows, key=lambda r: r["connections"]):
        ref = reference.get(row["connections"])
        out.append(
            [
                str(row["connections"]),
                row["kind"],
                f"{row['messages']:,}",
                f"{row['msg_per_s']:,.0f}",
                f"{row['server_util']:.0%}",
                f"{row['client_util']:.0%}",
                f"{row['other_load']:.0%}",
                f"{row['us_per_msg']:.1f}",
                f"{row['sys_us_per_msg']:.1f}",
                f"{row['spread']:.0%}",
                f"{row['p50_us']:,.0f}",
                f"{row['p99_us']:,.0f}",
                fmt_ratio(ratio(row["us_per_msg"], ref["us_per_msg"] if ref else None)),
                fmt_ratio(ratio(row["p99_us"], ref["p99_us"] if ref else None)),
            ]
        )
    return table(headers, out, {0, *range(2, len(headers))})


def goals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    subject = next(
        (r for r in rows if r["kind"] == SUBJECT and r["connections"] == GOAL_CONNECTIONS), None
    )
    reference = next(
        (r for r in rows if r["kind"] == REFERENCE and r["connections"] == GOAL_CONNECTIONS), None
    )
    if subject is None or reference is None:
        return []
    cpu = ratio(subject["us_per_msg"], reference["us_per_msg"])
    p99 = ratio(subject["p99_us"], reference["p99_us"])
    return [
        {
            "goal": f"CPU/msg x{GOAL_CONNECTIONS}: {SUBJECT} / {REFERENCE}",
            "target": f"<= {GOAL_CPU:.2f}x",
            "value": cpu,
            "verdict": verdict(cpu, GOAL_CPU),
        },
        {
            "goal": f"p99 x{GOAL_CONNECTIONS}: {SUBJECT} / {REFERENCE}",
            "target": "< 1.00x",
            "value": p99,
            "verdict": "n/a" if p99 is None else ("MET" if p99 < 1.0 else "MISSED"),
        },
    ]


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
        f"sync echo: {fmt_size(args.size)} {args.msg_type} messages, {placement.describe()}",
        file=sys.stderr,
    )
    rows = measure_all(args, placement, issues)

    env = environment()
    print()
    print(describe_environment(env))
    print()
    print(
        f"Sync echo: server CPU per message and round-trip latency ({fmt_size(args.size)} "
        f"{args.msg_type}, one message in flight per connection, "
        f"{f'paced to {args.rate:g} msg/s, ' if args.rate else ''}{args.seconds:g} s "
        f"x{args.repeat} per server and count, {placement.describe()})"
    )
    print(results_table(rows))
    goal_rows = goals(rows)
    if goal_rows:
        print("\nGoals")
        print(
            table(
                ["goal", "target", "measured", "verdict"],
                [[g["goal"], g["target"], fmt_ratio(g["value"]), g["verdict"]] for g in goal_rows],
                {2},
            )
        )
    if issues.summary():
        print("\nIssues")
        for item in issues.summary():
            print(f"- {item}")
    print(f"\n({time.perf_counter() - started:.0f} s)")
    write_json(
        args.json,
        {
            "benchmark": "sync_echo",
            "environment": env,
            "settings": {
                "kinds": args.kinds,
                "connections": args.connections,
                "size": args.size,
                "type": args.msg_type,
                "seconds": args.seconds,
                "warmup": args.warmup,
                "repeat": args.repeat,
                "rate": args.rate,
                "placement": placement.describe(),
                "client_loop": args.client_loop,
            },
            "results": rows,
            "goals": goal_rows,
            "issues": issues.summary(),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
