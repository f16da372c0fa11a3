"""A Qt (PySide6) desktop app that hosts a websocket server.

    pip install 'embedws[qt]'
    python examples/qt_app.py                  # serve ws://127.0.0.1:8765/ws
    python examples/qt_app.py --port 0         # any free port (shown in the window, printed)
    python examples/qt_app.py --automation     # also: JSON events out, commands in (tests)

The same app as ``tk_app.py``: a list of connected clients, the messages they
send, an entry whose text goes to every client (``app.broadcast``), Start and
Stop, and a clean stop when the window closes.

Threads: widgets belong to the GUI thread. Handlers run on embedws's handler
threads and never touch a widget: they emit a signal of a ``Bridge`` object
that lives on the GUI thread. Emitted from another thread, a signal is queued
and its slot runs on the receiver's thread, the GUI's (the Qt counterpart of
Tk's queue polled with ``root.after``; a ``queue.Queue`` polled by a
``QTimer`` would do as well). The GUI thread calls ``app.broadcast`` directly:
it is safe from any thread and never blocks.

``--automation`` is for tests and scripts: the GUI thread prints one JSON line
on stdout for everything it shows, and reads JSON commands on stdin, one a
line: ``{"cmd": "state"}``, ``{"cmd": "type", "text": ...}`` (key presses
into the entry), ``{"cmd": "click", "widget": "send" | "start" | "stop"}``
(a mouse click on a button; both through ``QtTest``, so they go through Qt's
event handling like real input), ``{"cmd": "close"}``. Runs headless with
``QT_QPA_PLATFORM=offscreen``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any

from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtGui import QCloseEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import (
    QApplication,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

import embedws
import embedws.sync


class Bridge(QObject):
    """Carries events from any thread to the GUI thread.

    Thread contract: ``happened.emit`` from any thread; the connected slot runs on
    the thread this object belongs to (the GUI thread, where it is made).
    """

    # Not "event": that name is QObject's virtual event handler.
    happened = Signal(str, object, object)  # (kind, client id or command, detail)


def make_app(bridge: Bridge) -> embedws.App:
    """The server: ``/ws`` reports joins, messages and leaves through ``bridge``."""
    app = embedws.App("qt-demo")

    @app.websocket("/ws")
    def client(request: Any, ws: Any) -> None:
        # A handler thread: no widget here, only the thread-safe signal.
        host, port = ws.remote_address[:2]
        bridge.happened.emit("join", ws.id, f"{host}:{port}")
        try:
            for message in ws:
                text = message if isinstance(message, str) else f"<{len(message)} bytes>"
                bridge.happened.emit("message", ws.id, text)
        finally:
            bridge.happened.emit("leave", ws.id, None)

    return app


class ServerWindow(QWidget):
    """The window. Thread contract: every method runs on the GUI thread."""

    def __init__(self, port: int, *, automation: bool = False) -> None:
        super().__init__()
        self.port = port
        self.automation = automation
        self.bridge = Bridge()
        # Queued explicitly: the slot always runs later on the GUI thread,
        # even for an emit made on it.
        self.bridge.happened.connect(self.handle, Qt.ConnectionType.QueuedConnection)
        self.app = make_app(self.bridge)
        self.server: embedws.sync.Server | None = None
        self.clients: dict[int, str] = {}  # id → peer address, in the order they came
        self.interrupted = False  # set by a signal handler, acted on by a timer

        self.setWindowTitle("embedws — Qt server")
        self.status = QLabel("stopped")
        self.start_button = QPushButton("Start")
        self.start_button.clicked.connect(self.start)
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop)
        self.client_list = QListWidget()
        self.message_list = QListWidget()
        self.entry = QLineEdit()
        self.entry.setPlaceholderText("A message for every client")
        self.entry.returnPressed.connect(self.send)
        self.send_button = QPushButton("Send to all")
        self.send_button.clicked.connect(self.send)
        self.buttons = {"start": self.start_button, "stop": self.stop_button}
        self.buttons["send"] = self.send_button

        top = QHBoxLayout()
        top.addWidget(self.status, 1)
        top.addWidget(self.start_button)
        top.addWidget(self.stop_button)
        lists = QHBoxLayout()
        lists.addWidget(self.client_list, 1)
        lists.addWidget(self.message_list, 2)
        bottom = QHBoxLayout()
        bottom.addWidget(self.entry, 1)
        bottom.addWidget(self.send_button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(QLabel("Clients / Messages"))
        layout.addLayout(lists, 1)
        layout.addLayout(bottom)
        self.resize(640, 400)

        # Python runs signal handlers only while Python code runs; this timer
        # gives it the chance while Qt's loop sits in C++.
        self.signal_timer = QTimer(self)
        self.signal_timer.timeout.connect(self._check_interrupted)
        self.signal_timer.start(200)
        if automation:
            threading.Thread(target=self._read_commands, name="stdin-commands", daemon=True).start()
        self.start()

    # Buttons ----------------------------------------------------------------------

    def start(self) -> None:
        if self.server is not None:
            return
        try:
            self.server = self.app.start(port=self.port)
        except OSError as exc:  # the port is taken, most likely
            self.status.setText(f"cannot listen: {exc.strerror}")
            self.report("error", message=str(exc))
            return
        url = f"{self.server.url}/ws"
        self.status.setText(f"listening on port {self.server.port}")
        self.start_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        print(f"qt demo on {url}", flush=True)
        self.report("started", port=self.server.port, url=url)

    def stop(self) -> None:
        if self.server is None:
            return
        # Blocks the GUI while the handlers end (at once: their connections get
        # close 1001); slower handlers would call for a worker thread here.
        self.server.stop()
        self.server = None
        self.clients.clear()
        self.client_list.clear()
        self.status.setText("stopped")
        self.start_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        self.report("stopped")

    def send(self) -> None:
        text = self.entry.text()
        if not text:
            return
        count = self.app.broadcast(text)  # from the GUI thread: never blocks
        self.entry.clear()
        self.message_list.addItem(f"→ all ({count}): {text}")
        self.message_list.scrollToBottom()
        self.report("sent", text=text, recipients=count)

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 (Qt names it)
        self.stop()
        self.report("closed")
        event.accept()

    def _check_interrupted(self) -> None:
        if self.interrupted:
            self.close()

    def interrupt(self, signum: int, frame: Any) -> None:
        """Ctrl-C or SIGTERM: only note it (a signal handler must not touch widgets)."""
        self.interrupted = True

    # Events from the handler threads and the command reader ---------------------------

    def handle(self, kind: str, who: Any, detail: Any) -> None:
        if kind == "join":
            self.clients[who] = detail
            self.client_list.addItem(f"#{who}  {detail}")
            self.report("join", client=who, peer=detail)
        elif kind == "leave":
            if self.clients.pop(who, None) is not None:
                self.client_list.clear()
                self.client_list.addItems([f"#{c}  {p}" for c, p in self.clients.items()])
            self.report("leave", client=who)
        elif kind == "message":
            self.message_list.addItem(f"#{who}: {detail}")
            self.message_list.scrollToBottom()
            self.report("message", client=who, text=detail)
        elif kind == "command":
            self.command(who)

    # Automation -----------------------------------------------------------------------

    def report(self, event: str, **fields: Any) -> None:
        """Report what the window just did, as one JSON line (``--automation`` only)."""
        if self.automation:
            print(json.dumps({"event": event, **fields}), flush=True)

    def _read_commands(self) -> None:
        # The reader thread: it only parses and signals; the GUI thread acts.
        for line in sys.stdin:
            if line.strip():
                self.bridge.happened.emit("command", json.loads(line), None)
        self.bridge.happened.emit("command", {"cmd": "close"}, None)  # stdin closed: done

    def command(self, command: dict[str, Any]) -> None:
        name = command.get("cmd")
        if name == "state":
            self.report("state", **self.state())
        elif name == "type":
            self.entry.setFocus()
            QTest.keyClicks(self.entry, command["text"])
        elif name == "click":
            QTest.mouseClick(self.buttons[command["widget"]], Qt.MouseButton.LeftButton)
        elif name == "close":
            self.close()
        else:
            self.report("error", message=f"unknown command {command!r}")

    def state(self) -> dict[str, Any]:
        """What the window shows."""

        def items(widget: QListWidget) -> list[str]:
            return [widget.item(i).text() for i in range(widget.count())]

        return {
            "status": self.status.text(),
            "port": self.server.port if self.server is not None else None,
            "clients": items(self.client_list),
            "messages": items(self.message_list),
            "entry": self.entry.text(),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765, help="0: any free port")
    parser.add_argument(
        "--automation", action="store_true", help="JSON events on stdout, commands on stdin"
    )
    args = parser.parse_args()
    qt_app = QApplication(sys.argv[:1])
    window = ServerWindow(args.port, automation=args.automation)
    signal.signal(signal.SIGINT, window.interrupt)
    signal.signal(signal.SIGTERM, window.interrupt)
    window.show()
    window.report("ready")
    sys.exit(qt_app.exec())


if __name__ == "__main__":
    main()
