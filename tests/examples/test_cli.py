"""examples/cli.py: a script that serves, talks to itself, stops and exits 0."""

from __future__ import annotations

import subprocess
import sys

from .conftest import EXAMPLES, LINE_TIMEOUT, ROOT, load_example

EXPECTED = [
    "echo: hello",
    "echo json: {'answer': 42}",
    "echo binary: b'\\x00\\x01\\x02'",
    "broadcast to 2 subscribers",
    "subscriber 1 got: extra! extra!",
    "subscriber 2 got: extra! extra!",
    "subprotocol: chat.v1; server says: you speak chat.v1",
    "server stopped",
]


def test_cli_program() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "cli.py")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=LINE_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("server listening on ws://127.0.0.1:")
    assert lines[1:-1] == EXPECTED
    assert lines[-1] == "no threads left: bye"  # the script checked it itself
    assert done.stderr == ""


def test_cli_run_in_process() -> None:
    # The same steps inside the test process: no_leaked_threads checks the threads.
    lines = load_example("cli").run(verbose=False)
    assert lines[1:] == EXPECTED
