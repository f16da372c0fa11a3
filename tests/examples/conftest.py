"""Helpers for the example tests: import an example, or run it as a program.

An example runs as a subprocess on port 0; it prints one line with its URL when
it listens (``... demo on http://127.0.0.1:PORT/``) and, for the GUI examples
with ``--automation``, one JSON line per thing its window does. Reader threads
collect the subprocess's lines, and tests wait on those lines, never on time.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, TracebackType
from typing import IO, Any

import pytest

from ..conftest import MS, seconds

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

#: The line an example prints once it listens.
URL_LINE = re.compile(r"demo on (?:ws|http)://127\.0\.0\.1:(\d+)/")

#: How long to wait for one line of a program (seconds): generous, as a
#: program's first line comes after Python starts and imports everything.
LINE_TIMEOUT = 15_000 * MS


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` (the folder is not a package: examples are scripts)."""
    module_name = f"_embedws_example_{name}"
    module = sys.modules.get(module_name)
    if module is not None:
        return module
    if str(EXAMPLES) not in sys.path:  # examples import each other, as when run as scripts
        sys.path.append(str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # before running it: dataclasses look themselves up
    spec.loader.exec_module(module)
    return module


class Lines:
    """The lines of one stream of a subprocess, collected by a reader thread."""

    def __init__(self, stream: IO[str], name: str) -> None:
        self.lines: list[str] = []
        self.ended = False
        self._cursor = 0  # next_line() looks from here on
        self._changed = threading.Condition()  # guards lines, ended, _cursor
        self._thread = threading.Thread(target=self._read, args=(stream,), name=name, daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.ended = True
            self._changed.notify_all()

    def next_line(self, match: Callable[[str], bool], timeout: float = LINE_TIMEOUT) -> str:
        """The first line after the previous match that ``match`` accepts.

        Raises:
            AssertionError: the stream ended, or ``timeout`` passed, before one came.
        """

        def found() -> int | None:
            for index in range(self._cursor, len(self.lines)):
                if match(self.lines[index]):
                    return index
            return None

        with self._changed:
            self._changed.wait_for(lambda: found() is not None or self.ended, timeout)
            index = found()
            if index is None:
                state = "ended" if self.ended else f"gave nothing for {timeout:.0f} s"
                raise AssertionError(f"no matching line; the stream {state}: {self.lines}")
            self._cursor = index + 1
            return self.lines[index]

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def text(self) -> str:
        with self._changed:
            return "\n".join(self.lines)


class Program:
    """An example running as a program: ``with Program("echo", "--async") as prog:``.

    The port it listens on is :attr:`port` (read from its URL line); leaving
    the block stops it (SIGTERM, which every example handles as Ctrl-C).
    """

    def __init__(
        self,
        name: str,
        *args: str,
        env: dict[str, str] | None = None,
        stdin: bool = False,
        port_arg: bool = True,
    ) -> None:
        argv = [sys.executable, str(EXAMPLES / f"{name}.py")]
        if port_arg:
            argv += ["--port", "0"]
        self.proc = subprocess.Popen(
            [*argv, *args],
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.stdout = Lines(self.proc.stdout, f"{name}-stdout")
        self.stderr = Lines(self.proc.stderr, f"{name}-stderr")
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The port from the program's URL line (waits for the line the first time)."""
        if self._port is None:
            match = URL_LINE.search(self.line(URL_LINE.search))
            assert match is not None
            self._port = int(match.group(1))
        return self._port

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def line(self, match: Callable[[str], Any], timeout: float = LINE_TIMEOUT) -> str:
        """The next stdout line ``match`` accepts (a failure shows stderr too)."""
        try:
            return self.stdout.next_line(lambda line: bool(match(line)), timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nstderr:\n{self.stderr.text()}") from None

    def event(self, name: str, timeout: float = LINE_TIMEOUT, **fields: Any) -> dict[str, Any]:
        """The next ``--automation`` JSON event called ``name`` with these field values."""

        def match(line: str) -> bool:
            if not line.startswith("{"):
                return False
            event = json.loads(line)
            return bool(
                event.get("event") == name and all(event.get(k) == v for k, v in fields.items())
            )

        event: dict[str, Any] = json.loads(self.line(match, timeout))
        return event

    def command(self, **command: Any) -> None:
        """Send one ``--automation`` command on stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def wait(self, timeout: float = LINE_TIMEOUT) -> int:
        """The exit code, once the program has ended; its output streams are read to the end."""
        code = self.proc.wait(timeout)
        self.stdout.join(timeout)
        self.stderr.join(timeout)
        return code

    def stop(self) -> int:
        """SIGTERM (a graceful stop for every example) and the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait()

    def __enter__(self) -> Program:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.proc.stdin is not None and not self.proc.stdin.closed:
                self.proc.stdin.close()
            self.stop()
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.wait()
            raise
        finally:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()


def http_get(url: str) -> tuple[int, str, str]:
    """``(status, content type, body)`` of a GET (4xx and 5xx included)."""
    try:
        with urllib.request.urlopen(url, timeout=seconds(5)) as response:
            return response.status, response.headers["content-type"], response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers["content-type"], error.read().decode()


@pytest.fixture(params=["sync", "async"])
def form(request: pytest.FixtureRequest) -> str:
    """The handler form of an example: plain functions, or ``--async``."""
    return str(request.param)


@pytest.fixture
def program_args(form: str) -> list[str]:
    return ["--async"] if form == "async" else []


def recv_json(ws: Any, timeout: float = seconds(5.0)) -> Any:
    """The next message of a websocket (embedws or ``websockets`` client), decoded."""
    return json.loads(ws.recv(timeout=timeout))


def drain_until(
    ws: Any, kind: str, timeout: float = seconds(5.0)
) -> tuple[dict[str, Any], list[Any]]:
    """Read messages until one of type ``kind``; return it and those before it."""
    before: list[Any] = []
    while True:
        message = recv_json(ws, timeout)
        if message.get("type") == kind:
            return message, before
        before.append(message)
