"""The public names: every ``__all__`` entry exists, and nothing public is missing."""

from __future__ import annotations

import importlib
import inspect

import pytest

MODULES = [
    "embedws",
    "embedws.errors",
    "embedws.response",
    "embedws.config",
    "embedws.request",
    "embedws.routing",
    "embedws.security",
    "embedws.static",
    "embedws.assembler",
    "embedws.message",
    "embedws.broker",
    "embedws.aio.broker",
    "embedws.sync.broker",
    "embedws.aio",
    "embedws.aio.client",
    "embedws.aio.connection",
    "embedws.aio.crossing",
    "embedws.aio.registry",
    "embedws.aio.server",
    "embedws.sync",
    "embedws.sync.client",
    "embedws.sync.bridge",
    "embedws.sync.bridge.inbox",
    "embedws.sync.bridge.loop_thread",
    "embedws.sync.bridge.sends",
    "embedws.sync.bridge.pings",
    "embedws.sync.bridge.greenlets",
    "embedws.sync.bridge.logs",
    "embedws.switches",
    "embedws.sync.server",
    "embedws.sync.websocket",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_lists_existing_public_names(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(exported) == len(set(exported))
    for attribute in exported:
        assert hasattr(module, attribute), f"{name}.__all__ names a missing {attribute}"
    defined_here = {
        attr
        for attr, value in vars(module).items()
        if not attr.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == name
    }
    assert defined_here <= set(exported) | {"describe_close"}, defined_here - set(exported)


def test_the_top_level_api() -> None:
    import embedws

    for attribute in ("App", "Blueprint", "Room", "State", "WebsocketClosed", "aio", "sync"):
        assert attribute in embedws.__all__
    assert callable(embedws.sync.connect) and callable(embedws.aio.connect)
    assert callable(embedws.aio.serve)


def test_every_public_class_and_function_has_a_docstring() -> None:
    for name in MODULES:
        module = importlib.import_module(name)
        for attribute in module.__all__:
            value = getattr(module, attribute)
            if inspect.isclass(value) or inspect.isfunction(value):
                assert inspect.getdoc(value), f"{name}.{attribute} has no docstring"
