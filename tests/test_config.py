"""Configuration: every key, attribute and mapping access, clear errors."""

from __future__ import annotations

from typing import Any

import pytest

import embedws
from embedws.config import Config
from embedws.errors import ConfigError

DEFAULTS = {
    "WEBSOCKET_TIMEOUT": 10,
    "WEBSOCKET_PING_INTERVAL": 20,
    "WEBSOCKET_PING_TIMEOUT": 20,
    "WEBSOCKET_MAX_SIZE": 1048576,
    "WEBSOCKET_MAX_QUEUE": 32,
    "WEBSOCKET_COMPRESSION": None,
    "WEBSOCKET_ORIGINS": None,
    "ALLOWED_HOSTS": None,
    "WEBSOCKET_WRITE_TIMEOUT": 30,
    "WEBSOCKET_MAX_BACKLOG": 32 * 2**20,
    "KEEP_ALIVE_TIMEOUT": 5,
    "REQUEST_TIMEOUT": 60,
    "REQUEST_MAX_HEADER_SIZE": 16384,
    "REQUEST_MAX_SIZE": 10485760,
    "PROXIES_COUNT": 0,
    "REAL_IP_HEADER": None,
    "SYNC_HANDLER_MODE": "thread",
    "SYNC_HANDLER_THREADS": 1000,
    "SYNC_HANDLER_SCHED_BATCH": True,
    "MAX_CONNECTIONS": 10000,
    "GRACEFUL_SHUTDOWN_TIMEOUT": 15,
    "LOOP_BLOCK_WARNING": None,
}


def test_every_key_has_its_documented_default() -> None:
    config = Config()
    assert dict(config) == DEFAULTS
    for key, value in DEFAULTS.items():
        assert getattr(config, key) == value
        assert config[key] == value


def test_attribute_and_mapping_access_set_the_same_value() -> None:
    config = Config()
    config.WEBSOCKET_TIMEOUT = 3
    assert config["WEBSOCKET_TIMEOUT"] == 3.0
    config["WEBSOCKET_MAX_QUEUE"] = 8
    assert config.WEBSOCKET_MAX_QUEUE == 8
    config.update({"KEEP_ALIVE_TIMEOUT": 1}, PROXIES_COUNT=2)
    assert (config.KEEP_ALIVE_TIMEOUT, config.PROXIES_COUNT) == (1.0, 2)


def test_an_unknown_key_is_a_clear_error_with_a_suggestion() -> None:
    config = Config()
    with pytest.raises(
        ConfigError, match=r"unknown configuration key 'WEBSOCKET_TIMEOT'.*WEBSOCKET_TIMEOUT"
    ):
        config.WEBSOCKET_TIMEOT = 3
    with pytest.raises(ConfigError, match="unknown configuration key"):
        config["NOPE"] = 1
    with pytest.raises(KeyError):
        config["NOPE"]
    with pytest.raises(ConfigError):
        embedws.App(config={"MAX_CONECTIONS": 5})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("WEBSOCKET_TIMEOUT", "10", "WEBSOCKET_TIMEOUT must be a number"),
        ("WEBSOCKET_TIMEOUT", 0, "greater than 0"),
        ("WEBSOCKET_TIMEOUT", True, "must be a number"),
        ("WEBSOCKET_MAX_QUEUE", 1.5, "WEBSOCKET_MAX_QUEUE must be an integer"),
        ("WEBSOCKET_MAX_QUEUE", 0, "at least 1"),
        ("WEBSOCKET_COMPRESSION", "gzip", "one of None, 'deflate'"),
        ("SYNC_HANDLER_MODE", "process", "one of 'thread', 'greenlet'"),
        ("WEBSOCKET_ORIGINS", 5, "None, '\\*' or a list of strings"),
        ("ALLOWED_HOSTS", ["ok", 1], "a list of strings"),
        ("REAL_IP_HEADER", 1, "a string or None"),
        ("SYNC_HANDLER_SCHED_BATCH", 1, "SYNC_HANDLER_SCHED_BATCH must be True or False"),
    ],
)
def test_a_wrong_type_or_value_is_a_clear_error_naming_the_key(
    key: str, value: Any, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Config()[key] = value


def test_update_is_all_or_nothing() -> None:
    config = Config()
    with pytest.raises(ConfigError):
        config.update(WEBSOCKET_TIMEOUT=1, WEBSOCKET_MAX_QUEUE="many")
    assert config.WEBSOCKET_TIMEOUT == 10


def test_optional_values_and_lists() -> None:
    config = Config(
        WEBSOCKET_PING_INTERVAL=None,
        WEBSOCKET_MAX_SIZE=None,
        WEBSOCKET_ORIGINS=["https://a.example"],
        ALLOWED_HOSTS="app.example",
    )
    assert config.WEBSOCKET_PING_INTERVAL is None and config.WEBSOCKET_MAX_SIZE is None
    assert config.WEBSOCKET_ORIGINS == ("https://a.example",)
    assert config.ALLOWED_HOSTS == ("app.example",)


def test_server_overrides_do_not_change_the_app_config() -> None:
    app = embedws.App("overrides")
    seen: list[float] = []

    @app.after_server_start
    def started(a: Any) -> None:
        seen.append(a.config.WEBSOCKET_TIMEOUT)

    with app.serve(port=0, WEBSOCKET_TIMEOUT=2) as server:
        assert server.config.WEBSOCKET_TIMEOUT == 2
    assert app.config.WEBSOCKET_TIMEOUT == 10
    assert seen == [10]
    with pytest.raises(ConfigError):
        app.start(port=0, WEBSOCKET_TIMEOUTS=2)
