"""Application configuration: every key, its default, and its validation.

``App.config`` is a `Config`. Keys are read and written as attributes
(``app.config.WEBSOCKET_TIMEOUT = 5``) or as a mapping (``app.config["..."]``,
``update``). Setting an unknown key or a value of the wrong type raises
[`ConfigError`][embedws.errors.ConfigError] naming the key; so does a value out of range.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = ["Config"]


@dataclass(frozen=True, slots=True)
class _Key:
    default: Any
    check: Callable[[str, Any], Any]
    doc: str


def _number(*, optional: bool = False, positive: bool = True) -> Callable[[str, Any], Any]:
    def check(key: str, value: Any) -> Any:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            kind = "a number or None" if optional else "a number"
            raise ConfigError(f"{key} must be {kind}, not {value!r}")
        if positive and value <= 0:
            raise ConfigError(f"{key} must be greater than 0, not {value!r}")
        return float(value)

    return check


def _integer(*, minimum: int, optional: bool = False) -> Callable[[str, Any], Any]:
    def check(key: str, value: Any) -> Any:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            kind = "an integer or None" if optional else "an integer"
            raise ConfigError(f"{key} must be {kind}, not {value!r}")
        if value < minimum:
            raise ConfigError(f"{key} must be at least {minimum}, not {value!r}")
        return value

    return check


def _choice(*choices: object) -> Callable[[str, Any], Any]:
    def check(key: str, value: Any) -> Any:
        if value not in choices:
            names = ", ".join(repr(c) for c in choices)
            raise ConfigError(f"{key} must be one of {names}, not {value!r}")
        return value

    return check


def _flag(key: str, value: Any) -> Any:
    if not isinstance(value, bool):
        raise ConfigError(f"{key} must be True or False, not {value!r}")
    return value


def _names() -> Callable[[str, Any], Any]:
    """None, ``"*"``, or a list of strings (stored as a tuple)."""

    def check(key: str, value: Any) -> Any:
        if value is None or value == "*":
            return value
        if isinstance(value, str):
            return (value,)
        if isinstance(value, (list, tuple, set, frozenset)) and all(
            isinstance(v, str) for v in value
        ):
            return tuple(value)
        raise ConfigError(f"{key} must be None, '*' or a list of strings, not {value!r}")

    return check


def _optional_str(key: str, value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    raise ConfigError(f"{key} must be a string or None, not {value!r}")


# The docs' configuration table is generated from these entries (scripts/config_table.py):
# each doc is the "meaning" column, written in Markdown.
_KEYS: dict[str, _Key] = {
    "WEBSOCKET_TIMEOUT": _Key(
        10.0, _number(), "seconds for the opening (and TLS) and the closing handshake"
    ),
    "WEBSOCKET_PING_INTERVAL": _Key(
        20.0, _number(optional=True), "seconds between keepalive pings; `None` disables them"
    ),
    "WEBSOCKET_PING_TIMEOUT": _Key(
        20.0,
        _number(optional=True),
        "seconds a pong may take; none in time closes with 1011; `None`: no deadline",
    ),
    "WEBSOCKET_MAX_SIZE": _Key(
        2**20,
        _integer(minimum=1, optional=True),
        "largest incoming message in bytes, inclusive, after decompression;"
        " bigger closes with 1009; `None` for no limit",
    ),
    "WEBSOCKET_MAX_QUEUE": _Key(
        32, _integer(minimum=1), "incoming messages buffered before reading from the socket pauses"
    ),
    "WEBSOCKET_COMPRESSION": _Key(
        None, _choice(None, "deflate"), '`"deflate"` enables permessage-deflate'
    ),
    "WEBSOCKET_ORIGINS": _Key(
        None,
        _names(),
        "origins that may open websockets and send unsafe HTTP requests, besides the page's"
        ' own: a list (`"loopback"` for every loopback origin), or `"*"`',
    ),
    "ALLOWED_HOSTS": _Key(
        None,
        _names(),
        "Host values accepted besides loopback names and route hosts"
        ' (the guard against DNS rebinding): a list (`.example.com` for subdomains), or `"*"`',
    ),
    "WEBSOCKET_WRITE_TIMEOUT": _Key(
        30.0,
        _number(),
        "seconds a peer may stop reading before it is dropped with 1011; no sender blocks longer",
    ),
    "WEBSOCKET_MAX_BACKLOG": _Key(
        32 * 2**20,
        _integer(minimum=2**16),
        "bytes waiting for one peer past which a broadcast drops it with 1011 at once"
        " (what one slow reader can cost)",
    ),
    "KEEP_ALIVE_TIMEOUT": _Key(
        5.0, _number(), "seconds an idle HTTP keep-alive connection stays open"
    ),
    "REQUEST_TIMEOUT": _Key(
        60.0, _number(), "seconds to receive a whole HTTP request (against slowloris)"
    ),
    "REQUEST_MAX_HEADER_SIZE": _Key(
        16384, _integer(minimum=256), "largest HTTP header block in bytes; bigger gets 431"
    ),
    "REQUEST_MAX_SIZE": _Key(
        10 * 2**20, _integer(minimum=0), "largest HTTP request body in bytes; bigger gets 413"
    ),
    "PROXIES_COUNT": _Key(
        0,
        _integer(minimum=0),
        "trusted reverse proxies in front of the app, for `X-Forwarded-For`"
        " and `X-Forwarded-Proto`",
    ),
    "REAL_IP_HEADER": _Key(
        None,
        _optional_str,
        "header a trusted proxy sets to the client address, for `request.remote_addr`",
    ),
    "SYNC_HANDLER_MODE": _Key(
        "thread",
        _choice("thread", "greenlet"),
        'where `def` handlers run: `"thread"` or `"greenlet"`',
    ),
    "SYNC_HANDLER_THREADS": _Key(
        1000,
        _integer(minimum=1),
        "`def` handlers running at once in thread mode; past it, new ones get 503",
    ),
    "SYNC_HANDLER_SCHED_BATCH": _Key(
        True,
        _flag,
        "Linux: handler threads use `SCHED_BATCH`, waiting for the loop's pass instead of"
        " preempting it; `False` keeps the normal policy",
    ),
    "MAX_CONNECTIONS": _Key(
        10000,
        _integer(minimum=1),
        "open connections (websockets and HTTP keep-alive) past which new ones get 503",
    ),
    "GRACEFUL_SHUTDOWN_TIMEOUT": _Key(
        15.0, _number(), "seconds `stop()` waits for handlers after sending 1001"
    ),
    "LOOP_BLOCK_WARNING": _Key(
        None,
        _number(optional=True),
        "seconds: log a warning when a greenlet handler holds the loop longer; `None` is off",
    ),
}


class Config(Mapping[str, Any]):
    """The configuration of an [`App`][embedws.App].

    Thread contract: read from any thread; change it before starting a server
    (a running server uses the values it started with).
    """

    WEBSOCKET_TIMEOUT: float
    WEBSOCKET_PING_INTERVAL: float | None
    WEBSOCKET_PING_TIMEOUT: float | None
    WEBSOCKET_MAX_SIZE: int | None
    WEBSOCKET_MAX_QUEUE: int
    WEBSOCKET_COMPRESSION: str | None
    WEBSOCKET_ORIGINS: str | tuple[str, ...] | None
    ALLOWED_HOSTS: str | tuple[str, ...] | None
    WEBSOCKET_WRITE_TIMEOUT: float
    WEBSOCKET_MAX_BACKLOG: int
    KEEP_ALIVE_TIMEOUT: float
    REQUEST_TIMEOUT: float
    REQUEST_MAX_HEADER_SIZE: int
    REQUEST_MAX_SIZE: int
    PROXIES_COUNT: int
    REAL_IP_HEADER: str | None
    SYNC_HANDLER_MODE: str
    SYNC_HANDLER_THREADS: int
    SYNC_HANDLER_SCHED_BATCH: bool
    MAX_CONNECTIONS: int
    GRACEFUL_SHUTDOWN_TIMEOUT: float
    LOOP_BLOCK_WARNING: float | None

    def __init__(self, values: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        for key, spec in _KEYS.items():
            object.__setattr__(self, key, spec.default)
        if values:
            self.update(values)
        if kwargs:
            self.update(kwargs)

    @staticmethod
    def describe(key: str) -> str:
        """One line on what ``key`` means."""
        return _KEYS[key].doc

    def _check(self, key: str, value: Any) -> Any:
        spec = _KEYS.get(key)
        if spec is None:
            close = difflib.get_close_matches(key, _KEYS, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"unknown configuration key {key!r}{hint}")
        return spec.check(key, value)

    def __setattr__(self, key: str, value: Any) -> None:
        object.__setattr__(self, key, self._check(key, value))

    def __setitem__(self, key: str, value: Any) -> None:
        self.__setattr__(key, value)

    def __getitem__(self, key: str) -> Any:
        if key not in _KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(_KEYS)

    def __len__(self) -> int:
        return len(_KEYS)

    def update(self, values: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        """Set several keys; nothing changes if one of them is invalid."""
        merged = {**(values or {}), **kwargs}
        checked = {key: self._check(key, value) for key, value in merged.items()}
        for key, value in checked.items():
            object.__setattr__(self, key, value)

    def copy(self, **overrides: Any) -> Config:
        """A new config with these values, then ``overrides``."""
        new = Config(dict(self))
        new.update(overrides)
        return new

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.items() if v != _KEYS[k].default}
        return f"Config({changed!r})"
