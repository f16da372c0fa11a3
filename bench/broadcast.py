"""Broadcast benchmark: embedws rooms against ``websockets.asyncio.server.broadcast``.

1,000 clients (``broadcast_client.py``, on the other CPUs) connected to each
server (``broadcast_server.py``, its own process on CPU 0); the server
broadcasts a 1 KiB text message to all of them on a fixed schedule, from a
plain thread or from a task on its event loop. Measures the latency from the
broadcast call to the last client's reception, and the server CPU per
broadcast; see ``bench/README.md``.

    python bench/broadcast.py             # defaults, about 2 minutes
    python bench/broadcast.py --quick     # smoke run, about 30 s
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
from broadcast_server import HEADER, KINDS, TRIGGERS

REFERENCE = "websockets-asyncio"
GOAL_LATENCY = 1.0  # embedws last-client latency (p50 and p99), times websockets'
GOAL_CPU = 1.0  # embedws server CPU per broadcast, times websockets'


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help="comma-separated server kinds (default: all)"
    )
    parser.add_argument(
        "--triggers",
        default=",".join(TRIGGERS),
        help="where the broadcast call is made: 'thread' (a plain thread of the server "
        "process) and/or 'loop' (a task on its event loop) (default: both)",
    )
    parser.add_argument("--connections", type=int, default=1000, help="clients per server")
    parser.add_argument("--size", type=int, default=1024, help="message size in bytes")
    parser.add_argument("--count", type=int, default=100, help="broadcasts per measured window")
    parser.add_argument(
        "--interval", type=float, default=0.05, help="seconds between broadcasts (no overlap)"
    )
    parser.add_argument(
        "--warmup", type=int, default=5, help="unmeasured broadcasts before each window"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="windows per variant (latencies pooled)"
    )
    parser.add_argument(
        "--clients", type=int, default=0, help="receiver processes per server (0: 1 per 10,000)"
    )
    parser.add_argument("--idle", type=float, default=1.0, help="seconds of idle server CPU")
    parser.add_argument(
        "--profile",
        choices=("missed", "always", "never"),
        default="missed",
        help="py-spy the embedws server of each variant that missed a goal (or all, or none)",
    )
    harness.add_run_options(parser, "short smoke run (~30 s)")
    args = parser.parse_args(argv)
    if args.quick:
        args.count, args.repeat, args.warmup, args.idle = 40, 2, 3, 0.5
    args.kinds = harness.parse_names(parser, "kinds", args.kinds, KINDS)
    args.triggers = harness.parse_names(parser, "triggers", args.triggers, TRIGGERS)
    if args.size < HEADER:
        parser.error(f"--size must hold the sequence number and the timestamp ({HEADER} bytes)")
    if not args.clients:
        args.clients = harness.client_processes(args.connections)
    return args


def broadcast(
    server: harness.ServerProcess,
    clients: harness.Clients,
    args: argparse.Namespace,
    count: int,
    trigger: str,
) -> dict[str, Any]:
    """``count`` broadcasts, then what every receiver saw of them, merged."""
    sent = server.command(
        {
            "cmd": "broadcast",
            "count": count,
            "interval": args.interval,
            "size": args.size,
            "trigger": trigger,
        },
        timeout=count * args.interval + 60,
    )
    command = {"cmd": "collect", "first": sent["first"], "count": count, "timeout": 10.0}
    replies = clients.command(30, [command] * len(clients.procs))
    received = [sum(r["received"][i] for r in replies) for i in range(count)]
    last = [max(r["last_ns"][i] for r in replies) for i in range(count)]
    first = [
        min((r["first_ns"][i] for r in replies if r["first_ns"][i]), default=0)
        for i in range(count)
    ]
    stamp = [max(r["sent_ns"][i] for r in replies) for i in range(count)]
    return {
        "connections": sum(r["connections"] for r in replies),
        "received": received,
        "last_ns": [t - s for t, s, n in zip(last, stamp, received, strict=True) if n],
        "first_ns": [f - s for f, s, n in zip(first, stamp, received, strict=True) if n],
        "call_ns": sent["call_ns"],
        "reached": sent["reached"],
        "stray": sum(r["stray"] for r in replies),
        "errors": sum(r["errors"] for r in replies),
        "closed": sum(r["closed"] for r in replies),
        "first_error": next((r["first_error"] for r in replies if r["first_error"]), ""),
    }


def check(label: str, result: dict[str, Any], expected: int, issues: harness.Issues) -> None:
    """Every broadcast reached every client, once, and nothing else came."""
    short = [n for n in result["received"] if n != expected]
    if short:
        issues.add(
            f"{label}: {len(short)} broadcasts not received by all {expected} clients "
            f"(e.g. {short[0]})"
        )
    wrong = [n for n in result["reached"] if n not in (-1, expected)]
    if wrong:
        issues.add(f"{label}: the broadcast call reported {wrong[0]} recipients, not {expected}")
    if result["stray"] or result["errors"] or result["closed"]:
        issues.add(
            f"{label}: {result['stray']} stray messages, {result['errors']} client errors, "
            f"{result['closed']} unexpected closes; first: {result['first_error']!r}"
        )


def measure_window(
    server: harness.ServerProcess,
    clients: harness.Clients,
    args: argparse.Namespace,
    trigger: str,
    issues: harness.Issues,
    label: str,
    expected: int,
) -> dict[str, Any]:
    """Warm-up broadcasts, then one measured window of ``args.count`` broadcasts."""
    if args.warmup:
        check(
            f"{label} warm-up",
            broadcast(server, clients, args, args.warmup, trigger),
            expected,
            issues,
        )
    window = harness.Window()
    window.start(server, clients)
    result = broadcast(server, clients, args, args.count, trigger)
    window.stop(server, clients)
    check(label, result, expected, issues)
    issues.window(label, window.other_load)
    return {
        "wall_s": window.wall,
        "server_cpu_s": window.server_cpu,
        "server_sys_s": window.server_system,
        "client_cpu_s": window.client_cpu,
        "other_load": window.other_load,
        "server_us": window.server_cpu / args.count * 1e6,
        "sys_us": window.server_system / args.count * 1e6,
        "client_us": window.client_cpu / args.count * 1e6,
        "last_p50_ms": harness.percentile(sorted(result["last_ns"]), 0.50) / 1e6,
        "last_p99_ms": harness.percentile(sorted(result["last_ns"]), 0.99) / 1e6,
        "last_ns": result["last_ns"],
        "first_ns": result["first_ns"],
        "call_ns": result["call_ns"],
    }


def idle_cpu(
    server: harness.ServerProcess, clients: harness.Clients, seconds: float, issues: harness.Issues
) -> float:
    """The server's CPU use, in cores, with every client connected and no broadcast."""
    window = harness.Window()
    window.start(server, clients)
    time.sleep(seconds)
    window.stop(server, clients)
    issues.window(f"{server.kind} idle", window.other_load)
    return window.server_cpu / window.wall


def summarize(windows: list[dict[str, Any]], interval: float) -> dict[str, Any]:
    """The windows of one variant: latencies pooled, CPU per broadcast as the median."""
    last = sorted(ns for w in windows for ns in w.pop("last_ns"))
    first = sorted(ns for w in windows for ns in w.pop("first_ns"))
    calls = sorted(ns for w in windows for ns in w.pop("call_ns"))
    wall = sum(w["wall_s"] for w in windows)
    server_us = [w["server_us"] for w in windows]
    return {
        "broadcasts": len(last),
        "server_us": harness.median(server_us),
        "sys_us": harness.median([w["sys_us"] for w in windows]),
        "spread": harness.spread(server_us),
        "client_us": harness.median([w["client_us"] for w in windows]),
        "server_util": sum(w["server_cpu_s"] for w in windows) / wall,
        "client_util": sum(w["client_cpu_s"] for w in windows) / wall,
        "other_load": max(w["other_load"] for w in windows),
        "first_p50_ms": harness.percentile(first, 0.50) / 1e6,
        "last_p50_ms": harness.percentile(last, 0.50) / 1e6,
        "last_p99_ms": harness.percentile(last, 0.99) / 1e6,
        "last_max_ms": (last[-1] / 1e6) if last else math.nan,
        "call_p50_us": harness.percentile(calls, 0.50) / 1e3,
        "call_p99_us": harness.percentile(calls, 0.99) / 1e3,
        # A broadcast still arriving when the next one starts: their latencies mix.
        "overlapping": sum(1 for ns in last if ns > interval * 1e9),
        "windows": windows,
    }


def profile(
    server: harness.ServerProcess,
    clients: harness.Clients,
    args: argparse.Namespace,
    trigger: str,
    issues: harness.Issues,
    expected: int,
    top: int = 25,
) -> str:
    """py-spy the server over a window of broadcasts; its top functions."""
    count = max(args.count, 100)

    def work() -> None:
        result = broadcast(server, clients, args, count, trigger)
        check(f"{server.kind} {trigger} profile", result, expected, issues)

    with tempfile.TemporaryDirectory(prefix="bench-broadcast-") as tmp:
        # 1000 Hz: the work comes in short bursts, one per broadcast, and only
        # busy samples are kept.
        return harness.py_spy_during(
            server.proc.pid,
            Path(tmp) / "profile.txt",
            work,
            rate=1000,
            duration=math.ceil(count * args.interval) + 2,
            attach=1.0,
            timeout=count * args.interval + 60,
            top=top,
        )


def measure_all(
    args: argparse.Namespace, placement: harness.Placement, issues: harness.Issues
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """All servers at once; rounds that visit every (server, trigger) in turn."""
    rows: list[dict[str, Any]] = []
    profiles: dict[str, str] = {}
    with harness.fleet(
        args.kinds,
        placement,
        args.clients,
        args.client_loop,
        server_script=harness.HERE / "broadcast_server.py",
        client_script=harness.HERE / "broadcast_client.py",
        commands=True,
    ) as servers:
        opened: dict[str, int] = {}
        idle: dict[str, float] = {}
        for kind, (server, clients) in servers.items():
            result = clients.open(args.connections)
            issues.check_open(kind, result)
            members = server.command(
                {"cmd": "wait", "n": result["open"], "timeout": 30.0}, timeout=60
            )["members"]
            if members != result["open"]:
                issues.add(f"{kind}: {members} clients in the group, {result['open']} connected")
            opened[kind] = result["open"]
            harness.progress(
                f"  {kind:<20} {opened[kind]} clients connected in {result['seconds']:.1f} s",
            )
        for kind, (server, clients) in servers.items():
            idle[kind] = idle_cpu(server, clients, args.idle, issues)
        variants = [(kind, trigger) for kind in servers for trigger in args.triggers]
        windows: dict[tuple[str, str], list[dict[str, Any]]] = {v: [] for v in variants}
        for _ in range(args.repeat):
            for kind, trigger in variants:
                server, clients = servers[kind]
                label = f"{kind} {trigger}"
                windows[(kind, trigger)].append(
                    measure_window(server, clients, args, trigger, issues, label, opened[kind])
                )
        for (kind, trigger), measured in windows.items():
            row: dict[str, Any] = {
                "kind": kind,
                "trigger": trigger,
                "connections": opened[kind],
                "idle_util": idle[kind],
            }
            row.update(summarize(measured, args.interval))
            rows.append(row)
            if row["overlapping"]:
                issues.add(
                    f"{kind} {trigger}: {row['overlapping']} broadcasts still arriving when the "
                    f"next one started (last client after more than {args.interval * 1e3:g} ms): "
                    "raise --interval"
                )
            harness.progress(
                f"  {kind:<20} {trigger:<6}: last client p50 {row['last_p50_ms']:6.2f} ms, "
                f"p99 {row['last_p99_ms']:6.2f} ms; {row['server_us']:7.0f} µs CPU/broadcast",
            )
        goal_rows = goals(rows)
        wanted = {
            (g["kind"], g["trigger"])
            for g in goal_rows
            if args.profile == "always" or (args.profile == "missed" and g["verdict"] == "MISSED")
        }
        for kind, trigger in variants:
            if (kind, trigger) in wanted:
                harness.progress(f"  profiling {kind} {trigger}")
                server, clients = servers[kind]
                profiles[f"{kind} {trigger}"] = profile(
                    server, clients, args, trigger, issues, opened[kind]
                )
        harness.close_fleet(servers, issues)
    return rows, profiles


def reference_of(rows: list[dict[str, Any]], trigger: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["kind"] == REFERENCE and r["trigger"] == trigger), None)


def results_table(rows: list[dict[str, Any]]) -> str:
    headers = [
        "trigger",
        "server",
        "bcasts",
        "srv µs/bc",
        "sys",
        "spread",
        "cli µs/bc",
        "idle",
        "other",
        "call p50 µs",
        "first p50 ms",
        "last p50 ms",
        "last p99 ms",
        "last max ms",
        "CPU vs ws",
        "p50 vs ws",
        "p99 vs ws",
    ]
    out = []
    for row in sorted(rows, key=lambda r: TRIGGERS.index(r["trigger"])):
        ref = reference_of(rows, row["trigger"])
        out.append(
            [
                row["trigger"],
                row["kind"],
                f"{row['broadcasts']:,}",
                f"{row['server_us']:,.0f}",
                f"{row['sys_us']:,.0f}",
                f"{row['spread']:.0%}",
                f"{row['client_us']:,.0f}",
                f"{row['idle_util']:.1%}",
                f"{row['other_load']:.0%}",
                f"{row['call_p50_us']:,.0f}",
                f"{row['first_p50_ms']:.2f}",
                f"{row['last_p50_ms']:.2f}",
                f"{row['last_p99_ms']:.2f}",
                f"{row['last_max_ms']:.2f}",
                harness.vs(row, ref, "server_us"),
                harness.vs(row, ref, "last_p50_ms"),
                harness.vs(row, ref, "last_p99_ms"),
            ]
        )
    return harness.table(headers, out, set(range(2, len(headers))))


def goals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per embedws variant, against websockets with the same trigger."""
    results: list[dict[str, Any]] = []
    for row in rows:
        ref = reference_of(rows, row["trigger"])
        if row["kind"] == REFERENCE or ref is None:
            continue
        against = f"{row['kind']} {row['trigger']} / {REFERENCE} {row['trigger']}"
        checks = (
            (f"last-client latency p50: {against}", "last_p50_ms", GOAL_LATENCY),
            (f"last-client latency p99: {against}", "last_p99_ms", GOAL_LATENCY),
            (f"server CPU/broadcast: {against}", "server_us", GOAL_CPU),
        )
        results += harness.ratio_goals(row, ref, checks, kind=row["kind"], trigger=row["trigger"])
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = harness.Run.begin(
        args,
        f"broadcast: {args.connections} clients per server, {harness.fmt_size(args.size)} text",
    )
    rows, profiles = measure_all(args, run.placement, run.issues)
    goal_rows = goals(rows)

    run.print_environment()
    print(
        f"Broadcast: {harness.fmt_size(args.size)} text to {args.connections} clients, one every "
        f"{args.interval * 1e3:g} ms, {args.count} x{args.repeat} per variant, "
        f"{run.placement.describe()}; latency from the call to the last client's reception"
    )
    print(results_table(rows))
    print()
    harness.print_goals(goal_rows)
    harness.print_profiles(profiles, f"server (py-spy, {args.connections} clients)")
    run.finish(
        "broadcast",
        "kinds triggers connections size count interval warmup repeat clients",
        results=rows,
        goals=goal_rows,
        profiles=profiles,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
