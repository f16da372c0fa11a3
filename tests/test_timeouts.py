"""Every time bound in the tests scales with EMBEDWS_TESTS_TIMEOUT_FACTOR.

A slow machine (a CPU hog, a sanitizer, a busy CI runner) stretches every wait;
a bound written as a bare number does not stretch with it and fails there. The
scan below finds such numbers, so they stay out: write ``seconds(5)`` or
``500 * MS`` (tests/conftest.py) instead. Zero is no time bound and passes.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

from .conftest import seconds

TESTS = Path(__file__).resolve().parent

#: Calls whose positional argument at this index is a timeout or a duration.
POSITIONAL = {
    "join": 0,
    "wait": 0,
    "sleep": 0,
    "result": 0,
    "communicate": 0,
    "settimeout": 0,
    "wait_for": 1,
}
#: Names that hold a measured duration, compared against a bound.
DURATIONS = {"elapsed", "latency", "took", "dropped_after"}


def _number(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
        and node.value != 0
    )


def _timeout_name(name: str | None) -> bool:
    return name is not None and (name == "timeout" or name.endswith("_timeout"))


def _called(node: ast.Call) -> str:
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return node.func.id if isinstance(node.func, ast.Name) else ""


def _monotonic(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and _called(node) == "monotonic"


def _duration(node: ast.AST) -> bool:
    if isinstance(node, ast.Name):
        return node.id in DURATIONS
    return isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub) and _monotonic(node.left)


def bare_time_bounds(source: str) -> list[tuple[int, str]]:
    """(line, what) of each time bound in ``source`` written as a bare number."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = _called(node)
            for keyword in node.keywords:
                if _timeout_name(keyword.arg) and _number(keyword.value):
                    found.append((node.lineno, f"{name}({keyword.arg}=<number>)"))
            index = POSITIONAL.get(name)
            if index is not None and len(node.args) > index and _number(node.args[index]):
                found.append((node.lineno, f"{name}(<number>)"))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            if _monotonic(node.left) and _number(node.right):
                found.append((node.lineno, "monotonic() + <number>"))
        elif isinstance(node, ast.Compare):
            left = node.left
            for op, right in zip(node.ops, node.comparators, strict=True):
                if isinstance(op, ast.Lt | ast.LtE) and _duration(left) and _number(right):
                    found.append((node.lineno, "<duration> < <number>"))
                left = right
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            args = node.args
            positional = [*args.posonlyargs, *args.args]
            pairs = [
                *zip(
                    positional[len(positional) - len(args.defaults) :], args.defaults, strict=True
                ),
                *zip(args.kwonlyargs, args.kw_defaults, strict=True),
            ]
            for arg, default in pairs:
                if default is not None and _timeout_name(arg.arg) and _number(default):
                    found.append((node.lineno, f"def {node.name}({arg.arg}=<number>)"))
    return sorted(found)


def programs_in(source: str) -> list[tuple[int, str]]:
    """(line, text) of each string in ``source`` that is a Python program (run in a child)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = textwrap.dedent(node.value)
            if "import " not in text:
                continue
            try:
                ast.parse(text)
            except SyntaxError:
                continue
            found.append((node.lineno, text))
    return found


def test_no_test_writes_a_time_bound_as_a_bare_number() -> None:
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        if "node_modules" in path.parts:
            continue
        name = path.relative_to(TESTS.parent)
        source = path.read_text()
        offenders += [f"{name}:{line}: {what}" for line, what in bare_time_bounds(source)]
        for start, program in programs_in(source):
            offenders += [
                f"{name}:{start}: a child program's {what} (scale it: EMBEDWS_TESTS_TIMEOUT_FACTOR)"
                for _, what in bare_time_bounds(program)
            ]
    assert not offenders, "scale these with seconds(...) or MS:\n" + "\n".join(offenders)


def test_the_scan_reads_the_programs_tests_run_in_a_child() -> None:
    source = 'SCRIPT = """\nimport sys\nws.recv(timeout=5)\n"""\nNOTE = "not code: join(5)"\n'
    [(line, program)] = programs_in(source)
    assert line == 1 and bare_time_bounds(program) == [(3, "recv(timeout=<number>)")]


def test_the_scan_finds_each_kind_of_bare_bound() -> None:
    source = textwrap.dedent(
        """
        ws.recv(timeout=5)
        client(url, open_timeout=2.5)
        thread.join(10)
        event.wait(0.5)
        time.sleep(0.01)
        condition.wait_for(ready, 3)
        deadline = time.monotonic() + 5
        assert elapsed < 2
        assert time.monotonic() - started <= 3
        def read(sock, timeout=5.0): ...
        def wait(*, ping_timeout=1): ...
        """
    )
    assert [line for line, _ in bare_time_bounds(source)] == list(range(2, 13))


def test_the_scan_passes_scaled_and_zero_bounds() -> None:
    source = textwrap.dedent(
        """
        ws.recv(timeout=seconds(5))
        thread.join(500 * MS)
        gate.acquire(size, 0)
        queue.get(0)
        time.sleep(0)
        assert 0.2 <= elapsed
        assert count < 3
        def read(sock, timeout=seconds(5)): ...
        """
    )
    assert bare_time_bounds(source) == []


def test_seconds_scales_like_ms() -> None:
    from .conftest import MS

    assert seconds(2) == 2000 * MS
