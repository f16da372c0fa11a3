"""examples/stream.py: the connected message, periodic data, ping/pong, subscriptions."""

from __future__ import annotations

import json

import pytest

import embedws

from ..conftest import MS, client, seconds, serving
from .conftest import Program, drain_until, load_example, recv_json

#: A fast tick, so a test sees several readings in a fraction of a second.
INTERVAL = 50 * MS


@pytest.fixture
def app(form: str) -> embedws.App:
    return load_example("stream").make_app(form == "async", INTERVAL)  # type: ignore[no-any-return]


def test_connected_then_periodic_data(app: embedws.App) -> None:
    with serving(app) as server, server.connect("/ws/stream") as ws:
        connected = recv_json(ws)
        assert connected["type"] == "connected"
        assert connected["interval"] == INTERVAL
        assert connected["subscribed"] == ["temperature"]
        assert set(connected["sensors"]) >= {"temperature", "humidity", "pressure"}
        readings = [recv_json(ws) for _ in range(4)]
        for reading in readings:
            assert reading["type"] == "data"
            assert reading["sensor"] == "temperature"
            assert reading["unit"] == "°C"
            assert isinstance(reading["value"], float)
        stamps = [reading["timestamp"] for reading in readings]
        assert stamps == sorted(stamps)
        assert stamps[-1] > stamps[0]  # one reading per tick, not a burst of one instant


def test_ping_pong_and_errors(app: embedws.App) -> None:
    with serving(app) as server, server.connect("/ws/stream") as ws:
        assert recv_json(ws)["type"] == "connected"
        ws.send(json.dumps({"type": "ping"}))
        pong, before = drain_until(ws, "pong")
        assert isinstance(pong["timestamp"], float)
        assert all(message["type"] == "data" for message in before)
        ws.send("{oops")
        error, _ = drain_until(ws, "error")
        assert error["message"] == "Invalid JSON format"
        ws.send(json.dumps({"type": "subscribe", "sensor_id": "nope"}))
        error, _ = drain_until(ws, "error")
        assert "nope" in error["message"]


def test_subscribe_and_unsubscribe(app: embedws.App) -> None:
    with serving(app) as server, server.connect("/ws/stream") as ws:
        assert recv_json(ws)["type"] == "connected"
        ws.send(json.dumps({"type": "subscribe", "sensor_id": "humidity"}))
        subscribed, _ = drain_until(ws, "subscribed")
        assert subscribed == {"type": "subscribed", "sensor_id": "humidity"}
        # From the next tick on: both sensors, in subscription order.
        ticks = [recv_json(ws) for _ in range(4)]
        assert [t["sensor"] for t in ticks] == ["temperature", "humidity"] * 2
        assert ticks[1]["unit"] == "%"
        ws.send(json.dumps({"type": "unsubscribe", "sensor_id": "temperature"}))
        unsubscribed, _ = drain_until(ws, "unsubscribed")
        assert unsubscribed["sensor_id"] == "temperature"
        assert {recv_json(ws)["sensor"] for _ in range(3)} == {"humidity"}


def test_stream_program(program_args: list[str]) -> None:
    with Program("stream", *program_args, "--interval", str(INTERVAL)) as program:
        ws = client(program.ws_url + "/ws/stream")  # the `websockets` client
        try:
            assert json.loads(ws.recv(timeout=seconds(5)))["type"] == "connected"
            assert json.loads(ws.recv(timeout=seconds(5)))["type"] == "data"
            ws.send(json.dumps({"type": "ping"}))
            while (message := json.loads(ws.recv(timeout=seconds(5))))["type"] != "pong":
                assert message["type"] == "data"
        finally:
            ws.close()
        assert program.stop() == 0
