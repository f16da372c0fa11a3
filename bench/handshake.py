"""Handshake benchmark: what opening (and ending) a connection costs each server.

Runs every server kind of ``servers.py`` in its own process, in the same run,
under the same load client (``loadclient.py``, its ``handshake`` command: K
connections in flight, each opened with a prebuilt request, ended, and
replaced by the next); see ``bench/README.md``.

    python bench/handshake.py                   # defaults, about 2 minutes
    python bench/handshake.py --quick           # smoke run, about 1 minute
    python bench/handshake.py --baseline ../old-checkout --close frame
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import harness
from clientlib import CLOSE_MODES
from servers import ALL_KINDS

REFERENCE = "websockets-asyncio"
#: Server CPU per handshake, times websockets-asyncio's, that each kind may cost (issue 23);
#: the async and greenlet kinds also owe at least websockets-asyncio's handshakes per second.
GOALS_CPU = {"embedws-async": 1.0, "embedws-greenlet": 1.0, "embedws-thread": 1.2}
GOALS_RATE = ("embedws-async", "embedws-greenlet")
LEAK_WARMUP = 200  # handshakes before the leak check's first RSS: imports, caches, pools

# summarize() counts "messages"; here they are handshakes.
_RENAMED = {
    "messages": "handshakes",
    "msg_per_s": "hs_per_s",
    "us_per_msg": "us_per_hs",
    "best_us_per_msg": "best_us_per_hs",
    "fast_us_per_msg": "fast_us_per_hs",
    "window_us_per_msg": "window_us_per_hs",
    "sys_us_per_msg": "sys_us_per_hs",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--kinds",
        default=",".join(ALL_KINDS),
        help=f"comma-separated server kinds (default: all: {','.join(ALL_KINDS)})",
    )
    parser.add_argument(
        "--inflight", type=int, default=50, help="connections in flight (in all the clients)"
    )
    parser.add_argument(
        "--close",
        default=",".join(CLOSE_MODES),
        help="how the client ends each connection, comma-separated: frame (closing "
        "handshake, the server closes TCP) and/or rst (a reset once the 101 is read) "
        "(default: %(default)s)",
    )
    parser.add_argument("--seconds", type=float, default=1.5, help="one measured window")
    parser.add_argument("--warmup", type=float, default=0.3, help="unmeasured load before each")
    parser.add_argument(
        "--repeat", type=int, default=3, help="windows per server and close mode (median reported)"
    )
    parser.add_argument("--clients", type=int, default=1, help="load-generator processes")
    parser.add_argument(
        "--leak", type=int, default=1000, help="handshakes per batch of the RSS check (0: skip)"
    )
    parser.add_argument("--batches", type=int, default=2, help="batches of the RSS check")
    parser.add_argument("--settle", type=float, default=0.5, help="seconds before reading RSS")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU test")
    harness.add_baseline_option(parser)
    harness.add_run_options(parser, "short smoke run (~1 min)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.repeat, args.settle = 0.7, 0.2, 2, 0.3
    args.kinds = harness.parse_names(parser, "kinds", args.kinds, ALL_KINDS)
    args.close = harness.parse_names(parser, "close modes", args.close, CLOSE_MODES)
    args.baseline = harness.check_baseline(parser, args.baseline)
    if args.inflight < args.clients:
        parser.error("--inflight must be at least --clients")
    return args


def _renamed(summary: dict[str, Any]) -> dict[str, Any]:
    """A summary (and its windows) with the handshake names of its counts."""
    row = {_RENAMED.get(key, key): value for key, value in summary.items()}
    if "windows" in row:
        row["windows"] = [_renamed(w) for w in row["windows"]]
    return row


def measure_cpu(
    args: argparse.Namespace, placement: harness.Placement, issues: harness.Issues
) -> list[dict[str, Any]]:
    """All servers at once; per close mode, ``--repeat`` rounds that visit each server in turn."""
    rows: list[dict[str, Any]] = []
    kinds = harness.with_baseline(args.kinds, args.baseline)
    with harness.fleet(
        kinds, placement, args.clients, args.client_loop, baseline=args.baseline
    ) as servers:
        for close in args.close:
            load = harness.HandshakeLoad(args.seconds, args.inflight, close)
            windows = harness.measure_rounds(
                servers, issues, args.repeat, f"close={close}", load, args.warmup
            )
            for kind, measured in windows.items():
                row = {"kind": kind, "close": close, **_renamed(harness.summarize(measured))}
                rows.append(row)
                harness.progress(
                    f"  {kind:<26} {close:>5}: {row['us_per_hs']:7.1f} µs/handshake "
                    f"(best {row['best_us_per_hs']:.1f}; {row['hs_per_s']:,.0f}/s, "
                    f"p50 {row['p50_us']:,.0f} µs, spread {row['spread']:.0%})",
                )
        harness.close_fleet(servers, issues)
    return rows


def measure_leak(
    kind: str, args: argparse.Namespace, placement: harness.Placement, issues: harness.Issues
) -> dict[str, Any]:
    """RSS, open files and threads of a fresh server before and after batches of handshakes.

    Every connection of a batch is closed (closing handshake) before the reading.
    """
    with harness.running(
        kind, placement, args.clients, loop=args.client_loop, baseline=args.baseline
    ) as (server, load):

        def batch(count: int, label: str) -> None:
            work = harness.HandshakeLoad(0.0, args.inflight, "frame", count, latency=False)
            result = load.apply(work)
            issues.check_run(f"{kind} {label}", result)
            if result["messages"] != count:
                issues.add(f"{kind} {label}: {result['messages']} of {count} handshakes completed")
            time.sleep(args.settle)

        batch(LEAK_WARMUP, "leak warm-up")
        rss, fds, threads = [server.rss()], [server.fds()], [server.threads()]
        for n in range(args.batches):
            batch(args.leak, f"leak batch {n + 1}")
            rss.append(server.rss())
            fds.append(server.fds())
            threads.append(server.threads())
        issues.check_server(server)
    growth = (rss[-1] - rss[-2]) / args.leak
    harness.progress(
        f"  {kind:<26} RSS {rss[0] / 2**20:.1f} → {rss[-1] / 2**20:.1f} MiB after "
        f"{args.leak * args.batches:,} handshakes (last batch {growth:+,.0f} B/handshake)"
    )
    if fds[-1] > fds[0]:
        issues.add(
            f"{kind}: {fds[-1] - fds[0]} more open files after "
            f"{args.leak * args.batches:,} closed connections ({fds[0]} → {fds[-1]})"
        )
    return {
        "kind": kind,
        "handshakes_per_batch": args.leak,
        "rss": rss,
        "fds": fds,
        "threads": threads,
        "bytes_per_handshake": growth,
    }


def cpu_table(rows: list[dict[str, Any]], repeat: int, baseline: bool) -> str:
    reference = {r["close"]: r for r in rows if r["kind"] == REFERENCE}
    headers = [
        "close",
        "server",
        "handshakes",
        "hs/s",
        "srv CPU",
        "cli CPU",
        "other",
        "µs/hs",
        "best",
        "fast",
        "sys",
        "spread",
        "p50 µs",
        "p99 µs",
        "vs ws-asyncio",
        "best vs ws",
        "fast vs ws",
    ]
    if baseline:
        headers += ["vs base", "best vs base", "p99 vs base"]
    out = []
    for row in rows:
        ref = reference.get(row["close"])
        cells = [
            row["close"],
            row["kind"],
            f"{row['handshakes']:,}",
            f"{row['hs_per_s']:,.0f}",
            f"{row['server_util']:.0%}",
            f"{row['client_util']:.0%}",
            f"{row['other_load']:.0%}",
            f"{row['us_per_hs']:.0f}",
            f"{row['best_us_per_hs']:.0f}",
            f"{row['fast_us_per_hs']:.0f}",
            f"{row['sys_us_per_hs']:.0f}",
            f"{row['spread']:.0%}" if repeat > 1 else "-",
            f"{row['p50_us']:,.0f}",
            f"{row['p99_us']:,.0f}",
            harness.vs(row, ref, "us_per_hs"),
            harness.vs(row, ref, "best_us_per_hs"),
            harness.vs(row, ref, "fast_us_per_hs"),
        ]
        if baseline:
            cells += [
                harness.vs_base(row, rows, ["close"], key)
                for key in ("us_per_hs", "best_us_per_hs", "p99_us")
            ]
        out.append(cells)
    return harness.table(headers, out, set(range(2, len(headers))))


def leak_table(rows: list[dict[str, Any]]) -> str:
    batch = rows[0]["handshakes_per_batch"]
    headers = [
        "server",
        "RSS before",
        *(f"after {batch * (n + 1):,}" for n in range(len(rows[0]["rss"]) - 1)),
        "B/hs (last batch)",
        "open files",
        "threads",
    ]
    out = [
        [
            row["kind"],
            *(f"{rss / 2**20:.1f} MiB" for rss in row["rss"]),
            f"{row['bytes_per_handshake']:+,.0f}",
            f"{row['fds'][0]}→{row['fds'][-1]}",
            f"{row['threads'][0]}→{row['threads'][-1]}",
        ]
        for row in rows
    ]
    return harness.table(headers, out, set(range(1, len(headers))))


def goals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 23's goals, per close mode: CPU per handshake (median, best window, fastest
    third) against websockets-asyncio, and handshakes per second."""
    results: list[dict[str, Any]] = []
    for row in rows:
        limit = GOALS_CPU.get(row["kind"])
        reference = next(
            (r for r in rows if r["kind"] == REFERENCE and r["close"] == row["close"]), None
        )
        if limit is None or reference is None:
            continue
        about = f"close={row['close']}: {row['kind']} / {REFERENCE}"
        results += harness.window_goals(
            row,
            reference,
            "CPU/handshake",
            "hs",
            about,
            limit,
            close=row["close"],
            kind=row["kind"],
        )
        if row["kind"] in GOALS_RATE:
            results.append(
                harness.goal(
                    f"handshakes/s {about}",
                    harness.ratio(row["hs_per_s"], reference["hs_per_s"]),
                    1.0,
                    below=False,
                    close=row["close"],
                    kind=row["kind"],
                )
            )
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = harness.Run.begin(args)
    cpu_rows: list[dict[str, Any]] = []
    leak_rows: list[dict[str, Any]] = []
    if not args.no_cpu:
        harness.progress(
            f"handshakes: {args.inflight} in flight, close={','.join(args.close)}, "
            f"{args.seconds:g} s windows, {run.placement.describe()}"
        )
        cpu_rows = measure_cpu(args, run.placement, run.issues)
    if args.leak > 0:
        harness.progress(f"leak check: {args.batches} x {args.leak:,} handshakes per server")
        for kind in harness.with_baseline(args.kinds, args.baseline):
            leak_rows.append(measure_leak(kind, args, run.placement, run.issues))

    run.print_environment()
    if cpu_rows:
        print(
            f"Handshakes: server CPU per handshake, opening and closing ({args.inflight} in "
            f"flight, a new connection as each one ends; {args.seconds:g} s x{args.repeat} per "
            f"server and close mode, {run.placement.describe()}); latency: request sent → "
            "101 read"
        )
        print(cpu_table(cpu_rows, args.repeat, args.baseline is not None))
        print()
    if leak_rows:
        print(
            f"Leak check: server RSS after batches of {args.leak:,} handshakes, every "
            f"connection closed (after {LEAK_WARMUP} unmeasured; a fresh server per kind)"
        )
        print(leak_table(leak_rows))
        print()
    goal_rows = goals(cpu_rows)
    if goal_rows:
        harness.print_goals(goal_rows)
    checks: list[dict[str, Any]] = []
    if args.baseline is not None and cpu_rows:
        checks = harness.baseline_checks(
            cpu_rows,
            ["close"],
            [
                ("CPU/handshake", "us_per_hs"),
                ("CPU/handshake best", "best_us_per_hs"),
                ("CPU/handshake fastest third", "fast_us_per_hs"),
                ("p50", "p50_us"),
                ("p99", "p99_us"),
            ],
            lambda row: f"close={row['close']}",
        )
        harness.print_baseline(checks, args.baseline)
    run.finish(
        "handshake",
        "kinds inflight close seconds warmup repeat clients leak batches settle baseline",
        handshakes=cpu_rows,
        leak=leak_rows,
        goals=goal_rows,
        baseline_checks=checks,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
