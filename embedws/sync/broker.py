"""``embedws.Emitter``: broadcast to an app's rooms from a process that serves nothing.

A worker or a cron job publishes the same envelope as the app's
`embedws.RedisBroker` (``embedws/aio/broker.py``), with redis-py's
blocking client: each call waits for Redis, which is what such a program wants.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from ..aio.broker import EmitterCore, cluster_retry, envelope_for, redis_errors
from ..broker import DEFAULT_MAX_MESSAGE_SIZE
from ..errors import BrokerError

__all__ = ["Emitter"]


class Emitter(EmitterCore):
    """Broadcast to an app's connections and rooms in every process, from any program.

    ``emit = Emitter("redis://...", prefix="chat")``; ``emit.broadcast(data)``
    reaches every connection of the app (``route=`` those of one route),
    ``emit.room(name).broadcast(data)`` the members of a room. ``prefix``,
    ``codec``, ``sharded``, ``cluster`` and ``mode`` must match the app's broker.
    ``cluster=True``: ``url`` names any node of a Redis Cluster, and each message
    goes to the node that owns its channel's slot (redis-py's cluster client,
    which follows ``MOVED`` and retries on its own). Each call blocks
    until Redis has the message (at most ``socket_timeout``, twice: a failed
    publish is retried once, then raises `BrokerError`).
    ``close()`` (or ``with``) closes the connection.
    For asyncio programs: `embedws.AsyncEmitter`.

    Thread contract: safe from any thread.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "embedws",
        codec: str = "json",
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        sharded: bool | None = None,
        cluster: bool = False,
        mode: str = "pubsub",
        stream_maxlen: int = 10_000,
        socket_timeout: float = 5.0,
    ) -> None:
        super().__init__(
            prefix=prefix,
            codec=codec,
            max_message_size=max_message_size,
            sharded=sharded,
            mode=mode,
            stream_maxlen=stream_maxlen,
            cluster=cluster,
        )
        from redis.backoff import NoBackoff  # noqa: PLC0415 - optional
        from redis.retry import Retry  # noqa: PLC0415 - optional

        # Guards _seq, so that the order on a channel is the order of the numbers.
        self._lock = threading.Lock()
        self._client: Any
        if cluster:
            from redis.cluster import RedisCluster  # noqa: PLC0415 - optional

            self._client = RedisCluster.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
                retry=cluster_retry(Retry),
            )
        else:
            self._client = self._redis.Redis.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
                retry=Retry(NoBackoff(), 0),
            )

    def room(self, name: str) -> _EmitterRoom:
        """The room called ``name``, in every process of the app."""
        return _EmitterRoom(self, name)

    def broadcast(
        self,
        data: Any,
        *,
        encoding: str = "text",
        route: str | None = None,
        exclude: Iterable[str] = (),
        room: str | None = None,
    ) -> None:
        """Send ``data`` to every connection of the app (or of ``route``), every process.

        ``exclude`` takes node-qualified ids (``f"{broker.node_id}:{ws.id}"``).

        Raises:
            BrokerError: too large, or Redis failed twice.
        """
        with self._lock:
            channel, raw = envelope_for(self, self._seq, data, encoding, room, route, exclude)
            error: Exception | None = None
            for _attempt in (1, 2):
                try:
                    self.publish_with(self._client, channel, raw)
                    return
                except redis_errors(self._redis) as exc:
                    error = exc
        raise BrokerError(f"could not publish to Redis: {error}") from error

    def close(self) -> None:
        """Close the connection to Redis."""
        self._client.close()

    def __enter__(self) -> Emitter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _EmitterRoom:
    __slots__ = ("_emitter", "name")

    def __init__(self, emitter: Emitter, name: str) -> None:
        self._emitter = emitter
        self.name = name

    def broadcast(self, data: Any, *, encoding: str = "text", exclude: Iterable[str] = ()) -> None:
        """Send ``data`` to the room's members in every process."""
        self._emitter.broadcast(data, encoding=encoding, exclude=exclude, room=self.name)
