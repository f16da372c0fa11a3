"""The desktop examples: examples/tk_app.py under Xvfb, examples/qt_app.py offscreen.

Each app runs as a program with ``--automation``: it prints a JSON line for
everything its window does, and takes commands on stdin. The Tk test types and
clicks with xdotool (real X input events); the Qt test with ``QtTest`` (Qt's
own input events, as the offscreen platform has no X server to send them).
"""

from __future__ import annotations

import importlib.util
import os
import select
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator

import pytest

from embedws.sync import connect

from ..conftest import seconds
from .conftest import Program

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def xvfb() -> Iterator[str]:
    """A virtual X display of our own; its name, e.g. ``":3"``."""
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (scripts/install-system-deps installs it)")
    # -displayfd: Xvfb picks a free display number and writes it once it is
    # ready to accept clients, so there is neither a race for the number nor a
    # wait for the socket.
    read_fd, write_fd = os.pipe()
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(
            [
                "Xvfb",
                "-displayfd",
                str(write_fd),
                "-screen",
                "0",
                "1024x768x24",
                "-nolisten",
                "tcp",
            ],
            pass_fds=(write_fd,),
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        os.close(write_fd)
        try:
            with os.fdopen(read_fd, "rb") as numbers:
                ready, _, _ = select.select([numbers], [], [], 15)
                number = numbers.readline().strip().decode() if ready else ""
            if not number:
                log.seek(0)
                pytest.fail(f"Xvfb did not start: {log.read().decode(errors='replace')}")
            yield f":{number}"
        finally:
            server.terminate()
            server.wait(seconds(10))


def center(box: list[int]) -> list[str]:
    x, y, width, height = box
    return [str(x + width // 2), str(y + height // 2)]


def xdotool(display: str, *args: str) -> None:
    subprocess.run(
        ["xdotool", *args], env={**os.environ, "DISPLAY": display}, check=True, timeout=seconds(10)
    )


def talk_to_window(
    app: Program, port: int, type_and_send: Callable[[str], None], click: Callable[[str], None]
) -> None:
    """The checks both GUI tests share: client → window, window → client, stop, restart."""
    with connect(f"ws://127.0.0.1:{port}/ws") as ws:
        client_id = app.event("join")["client"]
        ws.send("hi window")
        app.event("message", client=client_id, text="hi window")
        app.command(cmd="state")
        state = app.event("state")
        assert f"#{client_id}: hi window" in state["messages"]  # shown in the list
        assert any(entry.startswith(f"#{client_id} ") for entry in state["clients"])

        type_and_send("hello from the GUI")
        assert app.event("sent", text="hello from the GUI")["recipients"] == 1
        assert ws.recv(timeout=seconds(5)) == "hello from the GUI"

        app.command(cmd="state")
        state = app.event("state")
        assert state["entry"] == ""  # sending empties it
        assert "→ all (1): hello from the GUI" in state["messages"]

        click("stop")
        app.event("stopped")
        assert ws.wait_closed(5)
        assert ws.close_code == 1001  # going away: the server stopped

    # Start again (on a new free port, as asked for port 0).
    click("start")
    port = app.event("started")["port"]
    with connect(f"ws://127.0.0.1:{port}/ws") as ws:
        app.event("join")
        # Closing the window stops the server: the client is told.
        app.command(cmd="close")
        app.event("closed")
        assert ws.wait_closed(5)
        assert ws.close_code == 1001
    assert app.wait() == 0


def test_tk_app(xvfb: str) -> None:
    if importlib.util.find_spec("tkinter") is None:
        pytest.skip("this Python has no tkinter")
    if shutil.which("xdotool") is None:
        pytest.skip("xdotool is not installed (scripts/install-system-deps installs it)")

    with Program("tk_app", "--automation", env={"DISPLAY": xvfb}, stdin=True) as app:
        port = app.event("started")["port"]
        app.event("ready")
        app.command(cmd="state")
        geometry = app.event("state")["geometry"]  # where the widgets are on the screen

        # Real input: X events through the X server, as a user's mouse and keyboard make.
        def click(widget: str) -> None:
            xdotool(xvfb, "mousemove", *center(geometry[widget]), "click", "1")

        def type_and_send(text: str) -> None:
            click("entry")  # Tk gives the entry the focus
            xdotool(xvfb, "type", "--delay", "5", text)
            click("send")

        talk_to_window(app, port, type_and_send, click)


def test_qt_app() -> None:
    pytest.importorskip("PySide6", reason="PySide6 is not installed (pip install 'embedws[qt]')")

    env = {"QT_QPA_PLATFORM": "offscreen"}
    with Program("qt_app", "--automation", env=env, stdin=True) as app:
        port = app.event("started")["port"]
        app.event("ready")

        # Qt's own input events (QtTest), made inside the app on its GUI thread.
        def click(widget: str) -> None:
            app.command(cmd="click", widget=widget)

        def type_and_send(text: str) -> None:
            app.command(cmd="type", text=text)
            click("send")

        talk_to_window(app, port, type_and_send, click)
