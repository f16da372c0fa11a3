"""A real-time sensor data stream.

    python examples/stream.py                  # sync handler (a plain function on a thread)
    python examples/stream.py --async          # the same with an async handler
    python examples/stream.py --interval 0.2   # a reading every 0.2 s (default 1 s)

``/ws/stream`` sends ``{"type": "connected", "client_id", "interval",
"sensors", "subscribed"}``, then every interval one ``{"type": "data",
"timestamp", "sensor", "value", "unit"}`` per sensor the client subscribes to
(``temperature`` at first). The client may send, as JSON:

* ``{"type": "ping"}`` → ``{"type": "pong", "timestamp"}``;
* ``{"type": "subscribe", "sensor_id": "humidity"}`` →
  ``{"type": "subscribed", "sensor_id"}``, and that sensor's data from the
  next tick on; ``{"type": "unsubscribe", "sensor_id"}`` → ``unsubscribed``;
* anything else → ``{"type": "error", "message"}``.

One handler both waits for messages and ticks: ``recv(timeout=...)`` waits at
most until the next tick is due, and a ``TimeoutError`` (which loses nothing)
means "tick now". No second thread, no lock: the handler is the only one that
sends. The sync and async handlers are the same loop, line for line.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from typing import Any

import embedws

logger = logging.getLogger("examples.stream")

#: The simulated sensors: name → (typical value, spread, unit).
SENSORS: dict[str, tuple[float, float, str]] = {
    "temperature": (21.0, 2.0, "°C"),
    "humidity": (45.0, 8.0, "%"),
    "pressure": (1013.0, 6.0, "hPa"),
}
DEFAULT_SENSOR = "temperature"


class Session:
    """What one client asked for, and the answers to its messages (no I/O here).

    Thread contract: used by its connection's handler only.
    """

    def __init__(self, client_id: int, interval: float) -> None:
        self.client_id = client_id
        self.interval = interval
        self.subscribed: list[str] = [DEFAULT_SENSOR]
        self._random = random.Random()

    def connected(self) -> dict[str, Any]:
        return {
            "type": "connected",
            "client_id": self.client_id,
            "interval": self.interval,
            "sensors": sorted(SENSORS),
            "subscribed": list(self.subscribed),
        }

    def readings(self) -> list[dict[str, Any]]:
        """One data message per subscribed sensor, stamped now."""
        now = round(time.time(), 3)
        readings = []
        for sensor in self.subscribed:
            typical, spread, unit = SENSORS[sensor]
            value = round(self._random.gauss(typical, spread / 3), 2)
            readings.append(
                {"type": "data", "timestamp": now, "sensor": sensor, "value": value, "unit": unit}
            )
        return readings

    def answer(self, message: str | bytes) -> dict[str, Any]:
        """The reply to one client message."""
        try:
            data = json.loads(message)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return {"type": "error", "message": "Invalid JSON format"}
        kind = data.get("type")
        if kind == "ping":
            return {"type": "pong", "timestamp": round(time.time(), 3)}
        if kind in ("subscribe", "unsubscribe"):
            sensor = data.get("sensor_id")
            if sensor not in SENSORS:
                return {
                    "type": "error",
                    "message": f"Unknown sensor {sensor!r}; sensors: {', '.join(sorted(SENSORS))}",
                }
            if kind == "subscribe" and sensor not in self.subscribed:
                self.subscribed.append(sensor)
            elif kind == "unsubscribe" and sensor in self.subscribed:
                self.subscribed.remove(sensor)
            return {"type": f"{kind}d", "sensor_id": sensor}
        return {"type": "error", "message": f"Unknown message type: {kind!r}"}


def next_tick_after(tick: float, interval: float, now: float) -> float:
    """The next tick: at a fixed rate (no drift), skipping ticks a slow client missed."""
    tick += interval
    return tick if tick > now else now + interval


def make_app(use_async: bool = False, interval: float = 1.0) -> embedws.App:
    """The stream app: ``/ws/stream`` sends a reading every ``interval`` seconds."""
    app = embedws.App("stream")

    if use_async:

        @app.websocket("/ws/stream", name="stream")
        async def stream_async(request: Any, ws: Any) -> None:
            session = Session(ws.id, interval)
            tick = time.monotonic() + interval
            try:
                await ws.send(session.connected())
                while True:
                    now = time.monotonic()
                    if now >= tick:  # checked first, so a chatty client cannot delay ticks
                        for reading in session.readings():
                            await ws.send(reading)
                        tick = next_tick_after(tick, interval, now)
                        continue
                    try:
                        message = await ws.recv(timeout=tick - now)
                    except TimeoutError:  # nothing came before the tick: loses nothing
                        continue
                    await ws.send(session.answer(message))
            except embedws.WebsocketClosed:
                logger.info("client %s went away", ws.id)  # a normal end

    else:

        @app.websocket("/ws/stream", name="stream")
        def stream_sync(request: Any, ws: Any) -> None:
            session = Session(ws.id, interval)
            tick = time.monotonic() + interval
            try:
                ws.send(session.connected())
                while True:
                    now = time.monotonic()
                    if now >= tick:  # checked first, so a chatty client cannot delay ticks
                        for reading in session.readings():
                            ws.send(reading)
                        tick = next_tick_after(tick, interval, now)
                        continue
                    try:
                        message = ws.recv(timeout=tick - now)
                    except TimeoutError:  # nothing came before the tick: loses nothing
                        continue
                    ws.send(session.answer(message))
            except embedws.WebsocketClosed:
                logger.info("client %s went away", ws.id)  # a normal end

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--async", dest="use_async", action="store_true", help="async handler")
    parser.add_argument(
        "--interval", type=float, default=1.0, help="seconds between readings (default 1)"
    )
    args = parser.parse_args()
    if args.interval <= 0:
        parser.error("--interval must be positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = make_app(args.use_async, args.interval)

    @app.after_server_start
    def announce(app: embedws.App) -> None:
        for server in app.servers:
            print(f"stream demo on {server.url}/ws/stream  (Ctrl-C to stop)", flush=True)

    app.run(args.host, args.port)


if __name__ == "__main__":
    main()
