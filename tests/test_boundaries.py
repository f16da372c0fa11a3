"""Module boundaries the code keeps by construction (DESIGN.md §2, docs/architecture.md).

* No module reaches into another module's private names: a connection's state
  is read through its public accessors (``open``, ``reading_paused``, ...).
* Whatever touches a connection's Sans-I/O protocol does so under the
  connection's write lock when calling threads may write to it directly: every
  ``Connection`` method that drives the protocol is guarded by
  ``DirectWriteConnection`` (``embedws/sync/bridge/sends.py``).
* "The loop is gone" is one signal, ``LoopClosed``: no ``except RuntimeError``
  around a crossing.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "embedws"

#: Private-looking names that are public API of the standard library.
STDLIB_API = {"_replace", "_asdict", "_fields", "_make"}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def owned_names(tree: ast.Module) -> set[str]:
    """Private names a module defines: attributes, methods, slots, globals."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)  # __slots__ entries
    return {name for name in names if name.startswith("_")}


def foreign_private_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    own = owned_names(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or name.startswith("__") or name in STDLIB_API:
            continue
        base = node.value
        if isinstance(base, ast.Name) and base.id in ("self", "cls"):
            continue
        is_super = isinstance(base, ast.Call) and ast.unparse(base.func) == "super"
        if is_super:
            continue
        if name not in own:
            found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_module_uses_another_modules_private_names() -> None:
    found = [use for path in modules() for use in foreign_private_uses(path)]
    assert not found, "private names used across modules:\n" + "\n".join(found)


def touches_protocol(function: ast.FunctionDef) -> bool:
    """Whether a method drives the Sans-I/O protocol or writes what it produced."""
    for node in ast.walk(function):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func
            # self.protocol.send_text(...), protocol.receive_data(...), ...
            base = target.value
            if isinstance(base, ast.Attribute) and base.attr == "protocol":
                return True
            if isinstance(base, ast.Name) and base.id == "protocol":
                return True
            # self.flush(): writes the protocol's output
            if isinstance(base, ast.Name) and base.id == "self" and target.attr == "flush":
                return True
    return False


def methods(tree: ast.Module, class_name: str) -> dict[str, ast.FunctionDef]:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            return {item.name: item for item in node.body if isinstance(item, ast.FunctionDef)}
    raise AssertionError(f"no class {class_name}")


def holds_write_lock(function: ast.FunctionDef) -> bool:
    for node in ast.walk(function):
        if isinstance(node, ast.With):
            for item in node.items:
                expr = item.context_expr
                if isinstance(expr, ast.Attribute) and expr.attr == "write_lock":
                    return True
    return False


# Methods that touch the protocol but are only ever reached from a guarded one
# (the caller holds the lock), or only before direct writes are enabled.
REACHED_UNDER_THE_LOCK = {
    "frame_message",  # from write_message and try_send, both under the lock
    # Its callers hold the lock; the client's handshake flushes before direct
    # writes are enabled (DirectWriteConnection.enable_direct_writes).
    "flush",
}


def test_every_method_that_touches_the_protocol_is_guarded_for_direct_writes() -> None:
    connection = ast.parse((PACKAGE / "aio" / "connection.py").read_text())
    sends = ast.parse((PACKAGE / "sync" / "bridge" / "sends.py").read_text())
    guarded = {
        name
        for name, function in methods(sends, "DirectWriteConnection").items()
        if holds_write_lock(function)
    }
    touching = {
        name
        for class_name in ("Connection", "Websocket")
        for name, function in methods(connection, class_name).items()
        if touches_protocol(function)
    }
    unguarded = touching - guarded - REACHED_UNDER_THE_LOCK
    assert not unguarded, (
        f"{sorted(unguarded)} touch the protocol without DirectWriteConnection's write_lock: "
        "guard them in embedws/sync/bridge/sends.py (or, if a guarded method is their only "
        "caller, list them in REACHED_UNDER_THE_LOCK)"
    )
    stale = REACHED_UNDER_THE_LOCK - touching
    assert not stale, f"{sorted(stale)} no longer touch the protocol: drop them from the list"


def test_the_loop_is_gone_is_one_signal() -> None:
    """Crossings catch LoopClosed; `except RuntimeError` is only for asyncio's own API."""
    found = []
    for path in modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Try):
                continue
            for handler in node.handlers:
                names = ast.unparse(handler.type) if handler.type is not None else ""
                if "RuntimeError" not in names:
                    continue
                calls = {
                    ast.unparse(call.func)
                    for stmt in node.body
                    for call in ast.walk(stmt)
                    if isinstance(call, ast.Call)
                }
                # asyncio.get_running_loop() raises RuntimeError when no loop runs;
                # the crossing itself turns asyncio's "loop is closed" into LoopClosed.
                # Thread.start() raises it when the interpreter exits (Python 3.12).
                if calls <= {
                    "asyncio.get_running_loop",
                    "loop.call_soon_threadsafe",
                    "thread.start",
                }:
                    continue
                found.append(f"{path.relative_to(PACKAGE.parent)}:{handler.lineno}: {calls}")
    assert not found, "except RuntimeError around something else:\n" + "\n".join(found)
