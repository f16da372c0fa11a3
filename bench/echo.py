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
    running,
    summarize,
    table,
    verdict,
    write_json,
)
from servers import KINDS

REFERENCE = "websockets-asyncio"
GOAL_CPU = 0.7  # embedws-async CPU per message, times websockets-asyncio's
GOAL_RSS = 0.6  # embedws-async RSS per idle connection, times websockets-asyncio's
_CONNECTIONS_PER_CLIENT = 10_000  # well under the 20,000 open files a process may have


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"comma-separated server kinds (default: all: {','.join(KINDS)})",
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
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and clients")
    add_client_loop_option(parser)
    parser.add_argument("--quick", action="store_true", help="short smoke run (~30 s)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.repeat, args.settle = 0.7, 0.2, 2, 0.5
        args.idle = min(args.idle, 200)
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = set(args.kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
    args.sizes = [int(s) for s in args.sizes.split(",")]
    return args


def measure_echo(
    args: argparse.Namespace, placement: Placement, issues: Issues
) -> list[dict[str, Any]]:
    """All servers at once; per size, ``--repeat`` rounds that visit each server in turn."""
    rows: list[dict[str, Any]] = []
    with fleet(args.kinds, placement, args.clients, args.client_loop) as servers:
        opened: dict[str, int] = {}
        for kind, (_server, load) in servers.items():
            result = load.open(args.connections)
            opened[kind] = result["open"]
            if result["failed"]:
                issues.add(
                    f"{kind}: {result['failed']} connections failed: {result['first_error']!r}"
                )
        options = {"inflight": args.inflight, "rate": args.rate}
        for size in args.sizes:
            windows: dict[str, list[dict[str, Any]]] = {kind: [] for kind in servers}
            for _ in range(args.repeat):
                for kind, (server, load) in servers.items():
                    label = f"{kind} {fmt_size(size)}"
                    warm = load.run(size, args.msg_type, args.warmup, **options)
                    issues.check_run(f"{label} warm-up", warm)
                    windows[kind].append(
                        measure(
                            server,
                            load,
                            issues,
                            label,
                            size,
                            args.msg_type,
                            args.seconds,
                            **options,
                        )
                    )
            for kind, measured in windows.items():
                row = {"kind": kind, "size": size, "connections": opened[kind]}
                row.update(summarize(measured))
                rows.append(row)
                print(
                    f"  {kind:<20} {fmt_size(size):>7}: {row['us_per_msg']:7.1f} µs/msg "
                    f"({row['msg_per_s']:,.0f} msg/s, spread {row['spread']:.0%})",
                    file=sys.stderr,
                    flush=True,
                )
        for kind, (server, load) in servers.items():
            closed = load.close()
            if closed["aborted"]:
                issues.add(f"{kind}: {closed['aborted']} connections did not finish the close")
            issues.check_server(server)
    return rows


def measure_idle(
    kind: str, args: argparse.Namespace, placement: Placement, issues: Issues
) -> dict[str, Any]:
    """RSS of the server with ``args.idle`` idle connections, minus with none."""
    clients = max(1, math.ceil(args.idle / _CONNECTIONS_PER_CLIENT))
    with running(kind, placement, clients, loop=args.client_loop) as (server, load):
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
        closed = load.close(timeout=120)
        if closed["aborted"]:
            issues.add(f"{kind} idle: {closed['aborted']} connections did not finish the close")
        issues.check_server(server)
    per_conn = (loaded - base) / count if count else math.nan
    print(
        f"  {kind:<20} idle x{count}: {per_conn / 1024:6.1f} KiB/conn "
        f"(opened in {opened['seconds']:.1f} s)",
        file=sys.stderr,
        flush=True,
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


def echo_table(rows: list[dict[str, Any]], repeat: int) -> str:
    reference = {r["size"]: r["us_per_msg"] for r in rows if r["kind"] == REFERENCE}
    headers = [
        "size",
        "server",
        "messages",
        "msg/s",
        "srv CPU",
        "cli CPU",
        "other",
        "µs/msg",
        "sys",
    ]
    if repeat > 1:
        headers.append("spread")
    headers.append(f"vs {REFERENCE}")
    out = []
    for row in sorted(rows, key=lambda r: r["size"]):
        cells = [
            fmt_size(row["size"]),
            row["kind"],
            f"{row['messages']:,}",
            f"{row['msg_per_s']:,.0f}",
            f"{row['server_util']:.0%}",
            f"{row['client_util']:.0%}",
            f"{row['other_load']:.0%}",
            f"{row['us_per_msg']:.1f}",
            f"{row['sys_us_per_msg']:.1f}",
        ]
        if repeat > 1:
            cells.append(f"{row['spread']:.0%}")
        cells.append(fmt_ratio(ratio(row["us_per_msg"], reference.get(row["size"]))))
        out.append(cells)
    right = set(range(2, len(headers)))
    return table(headers, out, right)


def idle_table(rows: list[dict[str, Any]]) -> str:
    reference = next((r["bytes_per_conn"] for r in rows if r["kind"] == REFERENCE), None)
    headers = ["server", "conns", "RSS base", "RSS loaded", "threads", "KiB/conn"]
    headers.append(f"vs {REFERENCE}")
    out = [
        [
            row["kind"],
            f"{row['connections']:,}",
            f"{row['rss_base'] / 2**20:.1f} MiB",
            f"{row['rss_loaded'] / 2**20:.1f} MiB",
            f"{row['threads_base']}→{row['threads_loaded']}",
            f"{row['bytes_per_conn'] / 1024:.1f}",
            fmt_ratio(ratio(row["bytes_per_conn"], reference)),
        ]
        for row in rows
    ]
    return table(headers, out, set(range(1, len(headers))))


def goals(echo: list[dict[str, Any]], idle: list[dict[str, Any]]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    reference = {r["size"]: r["us_per_msg"] for r in echo if r["kind"] == REFERENCE}
    for row in echo:
        if row["kind"] == "embedws-async":
            value = ratio(row["us_per_msg"], reference.get(row["size"]))
            results.append(
                {
                    "goal": f"CPU/msg {fmt_size(row['size'])}: embedws-async / {REFERENCE}",
                    "target": f"<= {GOAL_CPU:.2f}x",
                    "value": value,
                    "verdict": verdict(value, GOAL_CPU),
                }
            )
    ref_idle = next((r["bytes_per_conn"] for r in idle if r["kind"] == REFERENCE), None)
    for row in idle:
        if row["kind"] == "embedws-async":
            value = ratio(row["bytes_per_conn"], ref_idle)
            results.append(
                {
                    "goal": f"RSS/idle conn x{row['connections']}: embedws-async / {REFERENCE}",
                    "target": f"<= {GOAL_RSS:.2f}x",
                    "value": value,
                    "verdict": verdict(value, GOAL_RSS),
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
    echo_rows: list[dict[str, Any]] = []
    idle_rows: list[dict[str, Any]] = []
    if not args.no_echo:
        print(
            f"echo: {args.connections} connections, {args.msg_type} messages, "
            f"{args.seconds:g} s per size, {placement.describe()}",
            file=sys.stderr,
        )
        echo_rows = measure_echo(args, placement, issues)
    if args.idle > 0:
        print(f"idle: {args.idle} connections", file=sys.stderr)
        for kind in args.kinds:
            idle_rows.append(measure_idle(kind, args, placement, issues))

    env = environment()
    print()
    print(describe_environment(env))
    print()
    if echo_rows:
        print(
            f"Echo: server CPU per echoed message ({args.connections} connections, "
            f"{args.inflight} message(s) in flight each, {args.msg_type}, "
            f"{f'paced to {args.rate:g} msg/s, ' if args.rate else ''}"
            f"{args.seconds:g} s x{args.repeat} per size, "
            f"{placement.describe()})"
        )
        print(echo_table(echo_rows, args.repeat))
        print()
    if idle_rows:
        print(f"Idle: server RSS per idle connection (handlers parked in recv, {args.idle})")
        print(idle_table(idle_rows))
        print()
    goal_rows = goals(echo_rows, idle_rows)
    if goal_rows:
        print("Goals")
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
            "benchmark": "echo",
            "environment": env,
            "settings": {
                "kinds": args.kinds,
                "connections": args.connections,
                "sizes": args.sizes,
                "type": args.msg_type,
                "seconds": args.seconds,
                "warmup": args.warmup,
                "repeat": args.repeat,
                "clients": args.clients,
                "inflight": args.inflight,
                "rate": args.rate,
                "idle": args.idle,
                "placement": placement.describe(),
                "client_loop": args.client_loop,
            },
            "echo": echo_rows,
            "idle": idle_rows,
            "goals": goal_rows,
            "issues": issues.summary(),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
