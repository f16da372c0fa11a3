"""A Tkinter desktop app that hosts a websocket server.

    python examples/tk_app.py                  # serve ws://127.0.0.1:8765/ws
    python examples/tk_app.py --port 0         # any free port (shown in the window, printed)
    python examples/tk_app.py --automation     # also: JSON events out, commands in (tests)

The window lists the connected clients and the messages they send; what you
type in the entry box goes to every client (``app.broadcast``); Stop and Start
stop the server and start it again; closing the window stops it cleanly. Try
it with ``python -m websockets ws://127.0.0.1:8765/ws`` in a terminal or two.

Threads: Tk is single-threaded, so only the GUI thread touches widgets. The
websocket handlers run on embedws's handler threads and *never* call Tk: they
put events on a ``queue.Queue`` that the GUI thread drains every
``POLL_MS`` milliseconds (``root.after``). The other direction needs no queue:
``app.broadcast`` (and ``ws.send``) may be called from any thread, the GUI's
included, and never block it.

``--automation`` is for tests and scripts: the GUI thread prints one JSON line
on stdout for everything it shows, and reads JSON commands on stdin, one a line
(``{"cmd": "state"}``: print the window's contents and where its widgets are;
``{"cmd": "click", "widget": "send" | "start" | "stop"}``: press a button, as
a click does (``invoke``); real clicks can go to the places ``state`` gives;
``{"cmd": "close"}``: close the window, as the window manager's close button
does). A reader thread passes them to the GUI thread through the same queue.
"""

from __future__ import annotations

import argparse
import json
import queue
import signal
import sys
import threading
import tkinter as tk
from tkinter import ttk
from typing import Any

import embedws
import embedws.sync

#: How often the GUI thread looks at the event queue (milliseconds).
POLL_MS = 50
#: Events handled per look, so a flood of messages cannot freeze the window.
EVENTS_PER_POLL = 200

Event = tuple[str, Any, Any]  # (kind, client id or command, detail)


def make_app(events: queue.Queue[Event]) -> embedws.App:
    """The server: ``/ws`` reports joins, messages and leaves on ``events``."""
    app = embedws.App("tk-demo")

    @app.websocket("/ws")
    def client(request: Any, ws: Any) -> None:
        # A handler thread: no Tk call here, only the thread-safe queue.
        host, port = ws.remote_address[:2]
        events.put(("join", ws.id, f"{host}:{port}"))
        try:
            for message in ws:
                text = message if isinstance(message, str) else f"<{len(message)} bytes>"
                events.put(("message", ws.id, text))
        finally:
            events.put(("leave", ws.id, None))

    return app


class ServerWindow:
    """The window. Thread contract: every method runs on the GUI thread."""

    def __init__(self, root: tk.Tk, port: int, *, automation: bool = False) -> None:
        self.root = root
        self.port = port
        self.automation = automation
        self.events: queue.Queue[Event] = queue.Queue()
        self.app = make_app(self.events)
        self.server: embedws.sync.Server | None = None
        self.clients: dict[int, str] = {}  # id → peer address, in the order they came
        self.closed = False
        self.interrupted = False  # set by a signal handler, acted on by poll()

        root.title("embedws — Tk server")
        root.protocol("WM_DELETE_WINDOW", self.close)
        top = ttk.Frame(root, padding=6)
        top.pack(fill="x")
        self.status = ttk.Label(top, name="status", text="stopped", width=34)
        self.status.pack(side="left")
        self.start_button = ttk.Button(top, name="start", text="Start", command=self.start)
        self.start_button.pack(side="left")
        self.stop_button = ttk.Button(top, name="stop", text="Stop", command=self.stop)
        self.stop_button.pack(side="left")

        lists = ttk.Frame(root, padding=6)
        lists.pack(fill="both", expand=True)
        ttk.Label(lists, text="Clients").grid(row=0, column=0, sticky="w")
        ttk.Label(lists, text="Messages").grid(row=0, column=1, sticky="w")
        self.client_list = tk.Listbox(lists, name="clients", width=22, height=12)
        self.client_list.grid(row=1, column=0, sticky="nsew", padx=(0, 6))
        self.message_list = tk.Listbox(lists, name="messages", width=48, height=12)
        self.message_list.grid(row=1, column=1, sticky="nsew")
        lists.columnconfigure(1, weight=1)
        lists.rowconfigure(1, weight=1)

        bottom = ttk.Frame(root, padding=6)
        bottom.pack(fill="x")
        self.entry = ttk.Entry(bottom, name="entry")
        self.entry.pack(side="left", fill="x", expand=True)
        self.entry.bind("<Return>", lambda _event: self.send())
        self.send_button = ttk.Button(bottom, name="send", text="Send to all", command=self.send)
        self.send_button.pack(side="left", padx=(6, 0))
        self.buttons = {"start": self.start_button, "stop": self.stop_button}
        self.buttons["send"] = self.send_button

        if automation:
            threading.Thread(target=self._read_commands, name="stdin-commands", daemon=True).start()
        self.start()
        root.after(POLL_MS, self.poll)

    # Buttons ----------------------------------------------------------------------

    def start(self) -> None:
        if self.server is not None:
            return
        try:
            self.server = self.app.start(port=self.port)
        except OSError as exc:  # the port is taken, most likely
            self.status.config(text=f"cannot listen: {exc.strerror}")
            self.report("error", message=str(exc))
            return
        url = f"{self.server.url}/ws"
        self.status.config(text=f"listening on port {self.server.port}")
        self.start_button.state(["disabled"])
        self.stop_button.state(["!disabled"])
        print(f"tk demo on {url}", flush=True)
        self.report("started", port=self.server.port, url=url)

    def stop(self) -> None:
        if self.server is None:
            return
        # Blocks the GUI while the handlers end (they do at once: their
        # connections get close 1001); a program whose handlers may take long
        # would call stop() from a worker thread and re-enable Start when done.
        self.server.stop()
        self.server = None
        self.clients.clear()
        self.client_list.delete(0, "end")
        self.status.config(text="stopped")
        self.start_button.state(["!disabled"])
        self.stop_button.state(["disabled"])
        self.report("stopped")

    def send(self) -> None:
        text = self.entry.get()
        if not text:
            return
        # From the GUI thread, straight to every client: broadcast never blocks.
        count = self.app.broadcast(text)
        self.entry.delete(0, "end")
        self.message_list.insert("end", f"→ all ({count}): {text}")
        self.message_list.see("end")
        self.report("sent", text=text, recipients=count)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.stop()
        self.report("closed")
        self.root.destroy()

    # Events from the handler threads and the command reader ---------------------------

    def poll(self) -> None:
        if self.interrupted:
            self.close()
        for _ in range(EVENTS_PER_POLL):
            if self.closed:
                return  # the window is gone: no more polling
            try:
                kind, who, detail = self.events.get_nowait()
            except queue.Empty:
                break
            self.handle(kind, who, detail)
        if not self.closed:
            self.root.after(POLL_MS, self.poll)

    def interrupt(self, signum: int, frame: Any) -> None:
        """Ctrl-C or SIGTERM: only note it (a signal handler must not touch Tk or locks)."""
        self.interrupted = True

    def handle(self, kind: str, who: Any, detail: Any) -> None:
        if kind == "join":
            self.clients[who] = detail
            self.client_list.insert("end", f"#{who}  {detail}")
            self.report("join", client=who, peer=detail)
        elif kind == "leave":
            if self.clients.pop(who, None) is not None:
                self._redraw_clients()
            self.report("leave", client=who)
        elif kind == "message":
            self.message_list.insert("end", f"#{who}: {detail}")
            self.message_list.see("end")
            self.report("message", client=who, text=detail)
        elif kind == "command":
            self.command(who)

    def _redraw_clients(self) -> None:
        self.client_list.delete(0, "end")
        for client_id, peer in self.clients.items():
            self.client_list.insert("end", f"#{client_id}  {peer}")

    # Automation -----------------------------------------------------------------------

    def report(self, event: str, **fields: Any) -> None:
        """Report what the window just did, as one JSON line (``--automation`` only)."""
        if self.automation:
            print(json.dumps({"event": event, **fields}), flush=True)

    def _read_commands(self) -> None:
        # The reader thread: it only parses and queues; the GUI thread acts.
        for line in sys.stdin:
            if line.strip():
                self.events.put(("command", json.loads(line), None))
        self.events.put(("command", {"cmd": "close"}, None))  # stdin closed: the test is done

    def command(self, command: dict[str, Any]) -> None:
        name = command.get("cmd")
        if name == "state":
            self.report("state", **self.state())
        elif name == "click":
            self.buttons[command["widget"]].invoke()
        elif name == "close":
            self.close()
        else:
            self.report("error", message=f"unknown command {command!r}")

    def state(self) -> dict[str, Any]:
        """What the window shows, and where its widgets are on the screen."""
        self.root.update_idletasks()
        widgets = {"entry": self.entry, **self.buttons}
        return {
            "status": str(self.status.cget("text")),
            "port": self.server.port if self.server is not None else None,
            "clients": list(self.client_list.get(0, "end")),
            "messages": list(self.message_list.get(0, "end")),
            "entry": self.entry.get(),
            "geometry": {
                name: [w.winfo_rootx(), w.winfo_rooty(), w.winfo_width(), w.winfo_height()]
                for name, w in widgets.items()
            },
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765, help="0: any free port")
    parser.add_argument(
        "--automation", action="store_true", help="JSON events on stdout, commands on stdin"
    )
    args = parser.parse_args()
    root = tk.Tk()
    window = ServerWindow(root, args.port, automation=args.automation)
    root.wait_visibility(root)  # mapped: the widgets have their places on the screen
    # Ctrl-C in the terminal, or SIGTERM: close as the window's close button does.
    # (A KeyboardInterrupt would surface inside some Tk callback, which Tk reports and ignores.)
    signal.signal(signal.SIGINT, window.interrupt)
    signal.signal(signal.SIGTERM, window.interrupt)
    window.report("ready")
    root.mainloop()


if __name__ == "__main__":
    main()
