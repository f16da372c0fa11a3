"""Room broadcast through Redis between two processes, against raw redis-py pub/sub.

A redis-server of its own (Debian's, on a free port, no persistence). Two rows:

* ``redis-py``: this process publishes with redis-py; a receiver process
  subscribes with redis-py's asyncio client;
* ``embedws``: this process broadcasts to a room of an app whose broker is a
  ``RedisBroker`` (the room has no local member); the receiver process serves
  the same app, and a third process holds one websocket client in the room.

Each message carries its send time (``time.monotonic``, one clock for every
process on Linux); the receiver reports latency p50/p99 at a paced rate and the
receive rate of a burst. ``--quick`` shortens every phase.

    .venv-3.11/bin/python bench/broker.py [--quick] [--rate 1000] [--seconds 5] [--burst 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

RECEIVER = r"""
import asyncio, json, sys, time
mode, url, count = sys.argv[1], sys.argv[2], int(sys.argv[3])

def report(stamps):
    lat = sorted(received - sent for sent, received in stamps)
    span = stamps[-1][1] - stamps[0][1] if len(stamps) > 1 else 0.0
    print(json.dumps({"count": len(stamps), "p50_ms": lat[len(lat) // 2] * 1000,
                      "p99_ms": lat[int(len(lat) * 0.99) - 1] * 1000,
                      "rate": (len(stamps) - 1) / span if span else 0.0}), flush=True)

async def raw():
    import redis.asyncio
    client = redis.asyncio.Redis.from_url(url)
    pubsub = client.pubsub()
    await pubsub.subscribe("bench:room:r")
    print("ready", flush=True)
    stamps = []
    quiet = 0
    while len(stamps) < count and quiet < 10:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
        if message is None:
            quiet += 1
        else:
            quiet = 0
            stamps.append((float(message["data"].split(b" ", 1)[0]), time.monotonic()))
    report(stamps)
    await pubsub.aclose()
    await client.aclose()

def serve():
    import embedws
    app = embedws.App("receiver", broker=embedws.RedisBroker(url, prefix="bench"))

    @app.websocket("/r")
    async def member(request, ws):
        app.room("r").add(ws)
        await ws.send("joined")
        await ws.wait_closed()

    with app.serve(port=0) as server:
        print(server.url, flush=True)
        deadline = time.monotonic() + 30
        while "bench:room:r" not in app.broker.channels and time.monotonic() < deadline:
            time.sleep(0.01)
        print("ready", flush=True)
        sys.stdin.read()  # until the bench is done

def client():
    from websockets.sync.client import connect
    with connect(url + "/r") as ws:
        assert ws.recv() == "joined"
        print("ready", flush=True)
        stamps = []
        while len(stamps) < count:
            try:
                data = ws.recv(timeout=10)
            except TimeoutError:
                break
            stamps.append((float(data.split(" ", 1)[0]), time.monotonic()))
        report(stamps)

{"raw": lambda: asyncio.run(raw()), "serve": serve, "client": client}[mode]()
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    import redis

    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    client.close()
    return process, f"redis://127.0.0.1:{port}/0"


def paced(send: Any, count: int, rate: float, payload: str) -> None:
    """``count`` messages at ``rate`` per second (``rate`` 0: as fast as possible)."""
    started = time.monotonic()
    for i in range(count):
        if rate:
            due = started + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        send(f"{time.monotonic():.6f} {payload}")


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", RECEIVER, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def line_of(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return process.stdout.readline().strip()


def run(mode: str, url: str, count: int, rate: float, payload: str) -> dict[str, Any]:
    """One phase; the receiving process is redis-py alone, or an embedws server whose
    websocket client runs in a third process (so the server's process only receives)."""
    if mode == "raw":
        receiver = spawn("raw", url, str(count))
        measured = receiver
        assert line_of(receiver) == "ready"
    else:
        receiver = spawn("serve", url, "0")
        measured = spawn("client", line_of(receiver), str(count))
        assert line_of(measured) == "ready"
        assert line_of(receiver) == "ready"
    try:
        if mode == "raw":
            import redis

            client = redis.Redis.from_url(url)
            if rate:
                paced(lambda data: client.publish("bench:room:r", data), count, rate, payload)
            else:  # pipelined, as the broker's publisher does, so the receiver is the limit
                pipe = client.pipeline(transaction=False)
                for i in range(count):
                    pipe.publish("bench:room:r", f"{time.monotonic():.6f} {payload}")
                    if i % 256 == 255:
                        pipe.execute()
                pipe.execute()
            client.close()
        else:
            import embedws

            broker = embedws.RedisBroker(url, prefix="bench", max_queue=count + 1)
            app = embedws.App("sender", broker=broker)
            with app.serve(port=0):
                paced(app.room("r").broadcast, count, rate, payload)
                return dict(json.loads(line_of(measured)))  # before the sender stops
        return dict(json.loads(line_of(measured)))
    finally:
        for process in {receiver, measured}:
            assert process.stdin is not None
            process.stdin.close()
            process.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases (~15 s)")
    parser.add_argument("--rate", type=float, default=1000, help="messages/s of the latency phase")
    parser.add_argument("--seconds", type=float, default=5, help="length of the latency phase")
    parser.add_argument("--burst", type=int, default=20_000, help="messages of the rate phase")
    parser.add_argument("--size", type=int, default=100, help="payload bytes")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.burst = 2, 5000
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not installed (scripts/install-system-deps installs it)")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    print(f"embedws {commit}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    payload = "x" * args.size
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as workdir:
        process, url = start_redis(workdir)
        try:
            count = int(args.rate * args.seconds)
            for mode, label in (("raw", "redis-py"), ("embedws", "embedws")):
                latency = run(mode, url, count, args.rate, payload)
                burst = run(mode, url, args.burst, 0, payload)
                results[label] = {"latency": latency, "burst": burst}
        finally:
            process.kill()
            process.wait()
    print(f"{'row':10} {'p50 ms':>8} {'p99 ms':>8}  at {args.rate:.0f}/s   {'burst msg/s':>12}")
    for label, row in results.items():
        latency, burst = row["latency"], row["burst"]
        print(
            f"{label:10} {latency['p50_ms']:8.3f} {latency['p99_ms']:8.3f}"
            f"{'':13}{burst['rate']:12.0f}"
        )
    raw, ours = results["redis-py"], results["embedws"]
    print(
        f"ratios embedws/redis-py: p50 {ours['latency']['p50_ms'] / raw['latency']['p50_ms']:.2f}x,"
        f" receive rate {ours['burst']['rate'] / raw['burst']['rate']:.2f}x"
    )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
