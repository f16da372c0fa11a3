"""Scale-out on Redis: ``RedisBroker`` (rooms and broadcast across processes) and ``AsyncEmitter``.

Theory of operation
-------------------
A `RedisBroker` belongs to one app (``App(broker=...)`` binds it to the
app's registry). It runs on the event loop of the first server of the app to
start, from before that server accepts (so no member can join a room before
the broker is there) until the last server of the app has closed its
connections. With ``aio.serve`` that loop is the program's. Its I/O is
redis-py's asyncio client, on two connections:

* The subscriber, a redis-py ``PubSub`` with ``health_check_interval`` and no
  ``socket_timeout`` (a quiet channel is not an error). The listener task runs
  one *session* after another: subscribe ``{prefix}:all`` and the channel of
  every room that has a local member, then a reader (deliver what arrives) and
  a syncer (subscribe when a room gets its first local member, unsubscribe when
  it loses its last) until anything fails. A failure (refused, killed server,
  timeout) closes the session's connection; the next session starts after a
  back-off of 0.1 s doubling to 5 s, reset by a session that Redis answered
  (a subscription confirmed: sending SUBSCRIBE is not enough, since a refusal
  such as ``MOVED`` or ``NOPERM`` comes back as a reply), and fires
  ``reconnected`` once subscribed again.
* The publisher, a plain client with ``socket_timeout``. ``publish`` is called
  in the broadcasting thread after the local delivery; under ``_lock`` it takes
  the channel's next sequence number, encodes the envelope and appends it to
  a bounded deque, so the order in the deque is the order of the numbers. It
  never waits: when the publisher task is idle it is woken through the loop's
  crossing (the one way into the loop), else it finds the envelope on its next
  pass. The task sends what is queued in pipelined batches; a batch that fails
  is sent once more (receivers drop repeated numbers, so a batch that had in
  fact reached Redis costs nothing), then dropped and reported (``on_error``).
  A full deque drops the new envelope, counted and logged.

Gap-free mode (``mode="streams"``): each channel is a Redis stream instead
(``XADD ... MAXLEN ~ stream_maxlen``), and the listener's session is one loop
of ``XREAD BLOCK`` over the streams of ``all`` and of the local rooms, from the
last id this process delivered on each. The last ids outlive a session, so
after a Redis disconnection the next session reads everything published
meanwhile, in order, as far back as the streams keep. A room joined later
starts at its stream's newest entry. A change of rooms must interrupt the
blocking read: the waker appends to this node's own control stream, which the
read includes (deleted at stop).

What arrives is decoded (never unpickled), own echoes are dropped, repeats
dropped, sequence gaps counted per peer node and reported, and the message is
written to the local members through ``Registry.deliver``, as a broadcast of
this process would be.

Redis Cluster (``cluster=True``, sharded pub/sub): a channel lives on the
node that owns its hash slot, so SPUBLISH goes through redis-py's cluster
client (``redis.asyncio.cluster.RedisCluster``, which routes each command, and
each command of a pipeline, by slot and follows ``MOVED``), and a session of
the listener is `_ClusterSubscriber`: one ``PubSub`` connection per node that
owns a subscribed channel, placed by the slot map of a second cluster client,
read at the start of every session. Not redis-py's ``ClusterPubSub``: it hides
a node's failure (it reconnects and replays the subscriptions on its own), so
the broker could neither back off nor fire ``reconnected``. Here a node's
failed connection, or a slot that moves (Redis tells its subscribers with an
``sunsubscribe`` they did not ask for), puts only the channels concerned aside:
the session's repair task reads the slot map again after a back-off and
subscribes them on their owner, then fires ``reconnected``, while the other
nodes' channels go on. A session fails whole only when no node can be
subscribed (or its slot map read).

Room membership and ``app.connections`` stay per process.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from ..broker import (
    DEFAULT_MAX_MESSAGE_SIZE,
    Codec,
    Envelope,
    EnvelopeError,
    SequenceTracker,
    all_channel,
    check_codec,
    decode,
    encode,
    new_node_id,
    room_channel,
)
from ..errors import BrokerError
from ..message import Fragments, encode_message
from .crossing import LoopClosed, crossing_for
from .registry import Registry

__all__ = [
    "AsyncEmitter",
    "EmitterCore",
    "RedisBroker",
    "check_cluster",
    "check_mode",
    "cluster_retry",
    "envelope_for",
    "import_redis",
    "no_retry",
    "redis_errors",
]

logger = logging.getLogger("embedws.broker")

EVENTS = ("reconnected", "gap", "publish_failed")
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 5.0
_BATCH = 256  # envelopes per pipeline round trip
_READ_POLL = 1.0  # seconds a read waits before the pub/sub health check may run


def import_redis() -> Any:
    """The ``redis`` package, or an ``ImportError`` that names the extra to install."""
    try:
        import redis.asyncio  # noqa: PLC0415 - optional: only a broker needs it
    except ImportError as exc:
        raise ImportError(
            "embedws.RedisBroker and embedws.Emitter need redis-py: pip install 'embedws[redis]'"
        ) from exc
    return redis


def no_retry() -> Any:
    """A redis-py ``Retry`` that never retries (the broker and emitters decide)."""
    # redis-py retries failed commands by itself (three times by default); the
    # broker decides: one retry for a publish, a new session for the subscriber.
    from redis.asyncio.retry import Retry  # noqa: PLC0415
    from redis.backoff import NoBackoff  # noqa: PLC0415

    return Retry(NoBackoff(), 0)


def redis_errors(redis: Any) -> tuple[type[Exception], ...]:
    """What a failed Redis command raises: a cluster's own errors are no ``RedisError``."""
    return (redis.RedisError, redis.exceptions.RedisClusterException, OSError)


def cluster_retry(retry_class: Any = None) -> Any:
    """The ``Retry`` of a cluster client: one more try, at once.

    ``MOVED``/``ASK`` redirects do not count (redis-py follows them apart); the
    default (three tries, with a back-off of up to seconds) would make a publish
    to a node that is down take several seconds before the caller's own retry.
    ``retry_class``: redis-py's blocking ``Retry`` for a blocking client.
    """
    from redis.asyncio.retry import Retry  # noqa: PLC0415
    from redis.backoff import NoBackoff  # noqa: PLC0415

    return (retry_class or Retry)(NoBackoff(), 1)


class RedisBroker:
    """Rooms and broadcast across the processes of an app, on Redis pub/sub.

    ``App(broker=RedisBroker("redis://host:6379/0", prefix="chat"))``: every
    ``room.broadcast`` / ``app.broadcast`` is delivered locally first, then
    published; each process delivers what the others publish to its own members.
    ``broadcast(..., local=True)`` stays in-process.

    Failures: a publish that fails is retried once; then, with
    ``on_error="log"`` (default) it is logged and dropped; with
    ``on_error="raise"`` the *next* broadcast of the app raises
    `BrokerError` (sending nothing), since the broadcast
    that failed had returned long before. Either way ``publish_failed``
    listeners are called. A message larger than ``max_message_size`` makes
    ``broadcast`` raise ``BrokerError`` before sending anything. While no server
    of the app runs, nothing is published; a stopping server waits at most
    ``socket_timeout`` for the broadcasts still queued to be published.

    Events (``broker.on(event, fn)``, ``fn`` runs on the broker's loop and must
    not block): ``"reconnected"`` ``fn(broker)`` once subscribed again after a
    Redis failure; ``"gap"`` ``fn(broker, node, channel, missing)`` when a
    peer's sequence skipped numbers (also logged at WARNING, and counted in
    ``stats()["gaps"]``); ``"publish_failed"`` ``fn(broker, error, count)``.

    Thread contract: ``on`` before serving; ``stats``, ``node_id`` and the
    broadcasts that reach ``publish`` from any thread, never blocking.

    Args:
        url: the Redis URL (``redis://``, ``rediss://``, ``unix://``).
        prefix: the channel prefix, the same in every process of the app.
        codec: ``"json"`` or ``"msgpack"`` (needs ``embedws[msgpack]``), the same everywhere.
        on_error: ``"log"`` or ``"raise"``, see above.
        max_message_size: the largest payload published or accepted, in bytes.
        max_queue: envelopes waiting to be published; past it new ones are dropped.
        sharded: use sharded pub/sub (``SSUBSCRIBE``/``SPUBLISH``, Redis 7);
            unset: sharded exactly when ``cluster`` is set.
        cluster: ``url`` names a node of a Redis Cluster (any node, reachable
            when the broker starts: the others are found from it). Each room's
            channel is published to, and subscribed on, the node that owns its
            slot (redis-py's cluster client), with one subscriber connection
            per node that owns a channel of a local room. Needs sharded pub/sub
            (``sharded=False`` is refused: a plain ``PUBLISH`` in a cluster
            reaches every node, which does not scale) and ``mode="pubsub"``. A
            failure of one of those connections, or a slot that moves to another
            node, makes the broker subscribe the channels concerned again on
            the current slot map (back-off, then ``reconnected``); the rooms of
            the other nodes go on meanwhile.
        mode: ``"pubsub"`` (default) or ``"streams"``: gap-free delivery on Redis
            streams, each process reading on from the last entry it delivered,
            so what is published while it is cut off from Redis arrives once it
            is back, in order (bounded by ``stream_maxlen``). The streams stay
            in Redis (``{prefix}:all``, ``{prefix}:room:{name}``), each trimmed
            to about ``stream_maxlen`` entries. Every process of the app and
            every emitter must use the same mode. Not with ``cluster``.
        stream_maxlen: entries kept per stream in streams mode (approximately).
        health_check_interval: seconds between pings on the subscriber connection.
        socket_timeout: seconds a publish may take.
        connect_timeout: seconds to connect; also how long the first server's
            start waits for the first subscription before serving anyway.

    Raises:
        ImportError: redis-py is missing (install ``embedws[redis]``).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "embedws",
        codec: str = "json",
        on_error: str = "log",
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_queue: int = 10_000,
        sharded: bool | None = None,
        cluster: bool = False,
        mode: str = "pubsub",
        stream_maxlen: int = 10_000,
        health_check_interval: float = 5.0,
        socket_timeout: float = 5.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self._redis = import_redis()
        if on_error not in ("log", "raise"):
            raise ValueError(f"on_error must be 'log' or 'raise', not {on_error!r}")
        sharded = check_cluster(cluster, sharded, mode)
        check_mode(mode, sharded)
        if max_queue < 1 or max_message_size < 1:
            raise ValueError("max_queue and max_message_size must be positive")
        self.url = url
        self.prefix = prefix
        self.codec: Codec = check_codec(codec)
        self.on_error = on_error
        self.max_message_size = max_message_size
        self.max_queue = max_queue
        self.sharded = sharded
        self.cluster = cluster
        self.mode = mode
        self.stream_maxlen = stream_maxlen
        self.health_check_interval = health_check_interval
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self.node_id = new_node_id()
        """This process's node id: exclusions name connections ``f"{node_id}:{ws.id}"``."""
        self._all = all_channel(prefix)
        self._listeners: dict[str, list[Callable[..., Any]]] = {e: [] for e in EVENTS}
        self._registry: Registry | None = None
        # Guards _queue, _seq, _idle, _running, _pending_error and _counts.
        self._lock = threading.Lock()
        self._queue: collections.deque[tuple[str, bytes, int]] = collections.deque()
        self._seq: dict[str, int] = {}
        self._idle = False
        self._running = False
        self._pending_error: BrokerError | None = None
        self._counts = dict.fromkeys(("dropped_queue_full", "refused"), 0)
        # Counted on the broker's loop only: no lock (a reader elsewhere sees ints).
        self._loop_counts = dict.fromkeys(
            (
                "published",
                "publish_failed",
                "received",
                "delivered",
                "echoes",
                "repeats",
                "invalid",
                "refused_received",
                "reconnects",
            ),
            0,
        )
        self._users = 0  # servers using the broker; guarded by _users_lock
        self._users_lock = threading.Lock()
        # Loop-side state, made by _start on the broker's loop.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake: asyncio.Event | None = None
        self._rooms_dirty: asyncio.Event | None = None
        self._ready: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None
        self._pub: Any = None
        self._sub: Any = None
        self._subscribed: set[str] = set()
        self._tracker = SequenceTracker()
        # Streams mode: the last id delivered per stream (kept across sessions).
        self._last_ids: dict[str, bytes] = {}
        self._control = f"{prefix}:control:{self.node_id}"
        self._streams_stale = False
        self._answered = False  # Redis answered the current session (the back-off resets)

    # Configuration ----------------------------------------------------------------

    def on(self, event: str, fn: Callable[..., Any] | None = None) -> Any:
        """Call ``fn`` on ``event`` (``"reconnected"``, ``"gap"``, ``"publish_failed"``).

        Also a decorator: ``@broker.on("reconnected")``. Register before serving.
        """
        if event not in EVENTS:
            raise ValueError(f"unknown broker event {event!r}; one of {EVENTS}")
        if fn is None:

            def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
                self._listeners[event].append(fn)
                return fn

            return decorator
        self._listeners[event].append(fn)
        return fn

    def bind(self, registry: Registry) -> None:
        """Serve this app's registry (``App(broker=...)`` calls it; one app per broker)."""
        if self._registry is not None and self._registry is not registry:
            raise ValueError("this RedisBroker already serves another app")
        self._registry = registry
        registry.publisher = self

    def stats(self) -> dict[str, int]:
        """Counters (a snapshot): published, received, delivered, echoes, gaps, drops..."""
        with self._lock:
            counts = dict(self._counts)
        counts.update(self._loop_counts)
        counts["refused"] += counts.pop("refused_received")
        counts["gaps"] = self._tracker.gaps
        return counts

    @property
    def channels(self) -> frozenset[str]:
        """The channels (streams, in streams mode) this process listens to now."""
        return frozenset(self._subscribed)  # replaced whole on the loop, never changed

    def _count(self, name: str, n: int = 1) -> None:
        """Count on the loop."""
        self._loop_counts[name] += n

    def _fire(self, event: str, *args: Any) -> None:
        for fn in self._listeners[event]:
            try:
                fn(self, *args)
            except Exception:
                logger.exception("broker %s listener %r raised", event, fn)

    # Publishing (any thread) -------------------------------------------------------------

    def check_publish(self, size: int) -> None:
        """Raise ``BrokerError`` for a message that will not be published (nothing is sent)."""
        if size > self.max_message_size:
            with self._lock:
                self._counts["refused"] += 1
            raise BrokerError(
                f"a message of {size} bytes is over the broker's max_message_size "
                f"({self.max_message_size}); send it with local=True to keep it in-process"
            )
        if self._pending_error is not None:
            with self._lock:
                error, self._pending_error = self._pending_error, None
            if error is not None:
                raise error

    def publish(
        self,
        is_text: bool,
        payload: bytes,
        *,
        room: str | None,
        route: str | None,
        exclude: Iterable[int],
    ) -> None:
        """Queue a message for the other processes; never blocks (see the class docstring)."""
        channel = self._all if room is None else room_channel(self.prefix, room)
        excluded = tuple(f"{self.node_id}:{conn_id}" for conn_id in exclude)
        wake = False
        with self._lock:
            if not self._running:
                return  # no server of the app is running: there is no one to tell
            if len(self._queue) >= self.max_queue:
                self._counts["dropped_queue_full"] += 1
                dropped = self._counts["dropped_queue_full"]
                if self.on_error == "raise":
                    self._pending_error = BrokerError(
                        f"the broker's publish queue is full ({self.max_queue}): "
                        "a broadcast was not published"
                    )
            else:
                dropped = 0
                seq = self._seq[channel] = self._seq.get(channel, 0) + 1
                raw = encode(
                    Envelope(self.node_id, seq, is_text, payload, room, route, excluded),
                    self.codec,
                )
                self._queue.append((channel, raw, seq))
                if self._idle:
                    self._idle = False
                    wake = True
        if dropped and (dropped == 1 or dropped % 1000 == 0):
            logger.warning(
                "publish queue full (%d): dropped a broadcast (%d so far)", self.max_queue, dropped
            )
        if wake:
            self._wake_publisher()

    def _wake_publisher(self) -> None:
        self._set_on_loop(self._wake)

    def rooms_changed(self) -> None:
        """A room got its first local member or lost its last: (un)subscribe, on the loop."""
        # Not running: the first session subscribes to the rooms there are.
        self._set_on_loop(self._rooms_dirty)

    def _set_on_loop(self, event: asyncio.Event | None) -> None:
        """Set one of the broker's loop events from any thread; never blocks."""
        loop = self._loop
        if loop is None or event is None:
            return
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            event.set()
            return
        try:
            crossing_for(loop).call(event.set)
        except LoopClosed:  # the broker stopped with its loop
            pass

    # Starting and stopping (on a server's loop) -------------------------------------------

    async def attach(self) -> None:
        """A server of the app starts (on its loop): the first one starts the broker."""
        with self._users_lock:
            self._users += 1
            first = self._users == 1
        if first:
            try:
                await self._start()
            except BaseException:
                with self._users_lock:
                    self._users -= 1
                await self._stop()
                raise

    async def detach(self) -> None:
        """A server of the app has stopped: the last one stops the broker."""
        with self._users_lock:
            self._users -= 1
            last = self._users == 0
        if last:
            await self._stop()

    async def _start(self) -> None:
        redis = self._redis
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._rooms_dirty = asyncio.Event()
        self._ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tracker = SequenceTracker()
        self._last_ids = {}
        if self.cluster:
            from redis.asyncio.cluster import RedisCluster  # noqa: PLC0415 - optional

            self._pub = RedisCluster.from_url(
                self.url,
                socket_timeout=self.socket_timeout,
                socket_connect_timeout=self.connect_timeout,
                retry=cluster_retry(),
            )
            # The subscriber's slot map; the subscriptions have connections of their own.
            self._sub = RedisCluster.from_url(
                self.url,
                socket_timeout=self.connect_timeout,
                socket_connect_timeout=self.connect_timeout,
                retry=cluster_retry(),
            )
        else:
            self._pub = redis.asyncio.Redis.from_url(
                self.url,
                socket_timeout=self.socket_timeout,
                socket_connect_timeout=self.connect_timeout,
                retry=no_retry(),
            )
            self._sub = redis.asyncio.Redis.from_url(self.url, **self._subscriber_options())
        with self._lock:
            self._running = True
            self._idle = False
            self._queue.clear()
        loop = self._loop
        self._tasks = [
            loop.create_task(self._listen_forever(), name="embedws-broker-listen"),
            loop.create_task(self._publish_forever(), name="embedws-broker-publish"),
        ]
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self._ready.wait()
        except TimeoutError:
            logger.warning(
                "not subscribed to Redis at %s within %.1f s; serving, and retrying in the "
                "background",
                _safe_url(self.url),
                self.connect_timeout,
            )

    def _subscriber_options(self) -> dict[str, Any]:
        """How a subscriber connects (to the one server, or to each node of a cluster)."""
        return {
            "socket_timeout": None,  # a quiet channel is not a failure: health checks are
            "socket_connect_timeout": self.connect_timeout,
            "socket_keepalive": True,
            "health_check_interval": self.health_check_interval,
            "retry": no_retry(),
        }

    async def _stop(self) -> None:
        with self._lock:
            self._running = False
        if self._stopping is not None:
            self._stopping.set()
        if self._wake is not None:
            self._wake.set()  # the publisher sends what is queued, then ends
        tasks, self._tasks = self._tasks, []
        if tasks:
            publisher = tasks[1]
            try:
                async with asyncio.timeout(self.socket_timeout):
                    await asyncio.shield(publisher)
            except Exception:
                pass  # cancelled below
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.mode == "streams" and self._pub is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.socket_timeout):
                    await self._pub.delete(self._control)
        for client in (self._pub, self._sub):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()
        self._pub = self._sub = None
        self._loop = self._wake = self._rooms_dirty = self._ready = self._stopping = None
        with self._lock:
            self._queue.clear()

    # The publisher task ---------------------------------------------------------------------

    async def _publish_forever(self) -> None:
        wake, stopping = self._wake, self._stopping
        assert wake is not None and stopping is not None
        while True:
            with self._lock:
                batch = [self._queue.popleft() for _ in range(min(_BATCH, len(self._queue)))]
                if not batch:
                    self._idle = True
                    wake.clear()
            if batch:
                await self._send(batch)
            elif stopping.is_set():
                return
            else:
                await wake.wait()

    async def _send(self, batch: list[tuple[str, bytes, int]]) -> None:
        error: Exception | None = None
        for attempt in (1, 2):
            try:
                async with self._pub.pipeline(transaction=False) as pipe:
                    for channel, raw, seq in batch:
                        if seq == 0:  # streams mode: wake our own reader
                            pipe.xadd(channel, {"w": b""}, maxlen=1, approximate=False)
                        elif self.mode == "streams":
                            pipe.xadd(
                                channel, {"e": raw}, maxlen=self.stream_maxlen, approximate=True
                            )
                        elif self.sharded:
                            pipe.spublish(channel, raw)
                        else:
                            pipe.publish(channel, raw)
                    await pipe.execute()
            except redis_errors(self._redis) as exc:
                error = exc
                if attempt == 1:
                    logger.info("publishing %d broadcasts failed (%s); retrying", len(batch), exc)
                continue
            self._count("published", sum(1 for item in batch if item[2]))
            return
        self._count("publish_failed", len(batch))
        failure = BrokerError(f"{len(batch)} broadcasts could not be published: {error}")
        failure.__cause__ = error
        if self.on_error == "raise":
            with self._lock:
                self._pending_error = failure
        logger.warning("%s", failure)
        self._fire("publish_failed", failure, len(batch))

    # The listener task ----------------------------------------------------------------------

    async def _listen_forever(self) -> None:
        stopping = self._stopping
        assert stopping is not None
        delay = _BACKOFF_FIRST
        sessions = 0
        while not stopping.is_set():
            self._answered = False
            pubsub: Any = None
            if self.cluster:
                pubsub = _ClusterSubscriber(self, self._sub, fresh_map=sessions > 0)
            elif self.mode == "pubsub":
                pubsub = self._sub.pubsub()
            subscribed = False
            try:
                if pubsub is None:
                    await self._follow_everything()
                else:
                    await self._subscribe_everything(pubsub)
                    if self.cluster:
                        pubsub.check_subscribed()
                subscribed = True
                sessions += 1
                if self._ready is not None:
                    self._ready.set()
                if sessions > 1:
                    self._count("reconnects")
                    logger.info("subscribed to Redis again (%d channels)", len(self._subscribed))
                    self._fire("reconnected")
                async with asyncio.TaskGroup() as group:
                    if pubsub is None:
                        group.create_task(self._read_streams())
                        group.create_task(self._wake_reader())
                    elif self.cluster:
                        pubsub.read_in(group)
                        group.create_task(self._sync_rooms(pubsub))
                    else:
                        group.create_task(self._read(pubsub))
                        group.create_task(self._sync_rooms(pubsub))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                cause = exc.exceptions[0] if isinstance(exc, BaseExceptionGroup) else exc
                logger.warning(
                    "Redis subscriber %s: %s; again in %.1f s",
                    "lost" if subscribed else "could not subscribe",
                    cause,
                    delay,
                )
            finally:
                self._subscribed = set()
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
                else:  # the read may have been cut mid-reply: never reuse its connection
                    with contextlib.suppress(Exception):
                        await self._sub.connection_pool.disconnect()
            if self._answered:
                delay = _BACKOFF_FIRST
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stopping.wait()
            delay = min(delay * 2, _BACKOFF_MAX)

    async def _subscribe_everything(self, pubsub: Any) -> None:
        self._subscribed = set()
        if self._rooms_dirty is not None:
            self._rooms_dirty.clear()  # this session starts from the rooms there are now
        await self._subscribe(pubsub, [self._all, *self._room_channels()])

    def _room_channels(self) -> set[str]:
        assert self._registry is not None
        return {room_channel(self.prefix, name) for name in self._registry.room_names()}

    async def _subscribe(self, pubsub: Any, channels: list[str]) -> None:
        if not channels:
            return
        if self.sharded:
            # In a cluster, one SSUBSCRIBE may name only channels of one slot.
            for channel in channels:
                await pubsub.ssubscribe(channel)
        else:
            await pubsub.subscribe(*channels)
        self._subscribed = self._subscribed | set(channels)

    async def _unsubscribe(self, pubsub: Any, channels: list[str]) -> None:
        if not channels:
            return
        # Forgotten first: a cluster node's own sunsubscribe (a slot moved) is
        # told from ours by the channel still being wanted.
        self._subscribed = self._subscribed - set(channels)
        if self.sharded:
            for channel in channels:
                await pubsub.sunsubscribe(channel)
        else:
            await pubsub.unsubscribe(*channels)
        for channel in channels:
            self._tracker.forget_channel(channel)

    async def _sync_rooms(self, pubsub: Any) -> None:
        dirty = self._rooms_dirty
        assert dirty is not None
        while True:
            await dirty.wait()
            dirty.clear()
            want = self._room_channels()
            want.add(self._all)
            have = set(self._subscribed)
            await self._subscribe(pubsub, sorted(want - have))
            await self._unsubscribe(pubsub, sorted(have - want))

    async def _read(self, pubsub: Any) -> None:
        get_message = pubsub.get_message
        while True:
            message = await get_message(timeout=_READ_POLL)
            if message is None:
                continue
            if message["type"] in ("message", "smessage"):
                self._receive_safely(message["channel"], message["data"])
            else:  # a subscription confirmed: this session works, the back-off starts over
                self._answered = True

    # Streams mode ----------------------------------------------------------------------------

    async def _follow_everything(self) -> None:
        """Start a session: the streams to read, each from the last id delivered."""
        if self._rooms_dirty is not None:
            self._rooms_dirty.clear()
        self._streams_stale = False
        want = {self._all, self._control, *self._room_channels()}
        for stream in set(self._last_ids) - want:  # rooms left while cut off
            del self._last_ids[stream]
            self._tracker.forget_channel(stream)
        await self._follow(sorted(want))

    async def _follow(self, streams: list[str]) -> None:
        for stream in streams:
            if stream not in self._last_ids:
                # Start at the newest entry: a room joined now owes nothing older.
                newest = await self._sub.xrevrange(stream, count=1)
                self._last_ids[stream] = newest[0][0] if newest else b"0-0"
        self._subscribed = self._subscribed | set(streams)

    async def _wake_reader(self) -> None:
        dirty = self._rooms_dirty
        assert dirty is not None
        while True:
            await dirty.wait()
            dirty.clear()
            self._streams_stale = True
            # The reader blocks in XREAD: an entry on our control stream wakes it.
            # The publisher task sends it, so that no second task of ours is cut
            # off in the middle of a command (or a connect) when the session ends.
            with self._lock:
                if not self._running:
                    return
                self._queue.append((self._control, b"", 0))
                wake = self._idle
                self._idle = False
            if wake:
                self._wake_publisher()

    async def _read_streams(self) -> None:
        while True:
            if self._streams_stale:
                self._streams_stale = False
                want = self._room_channels() | {self._all, self._control}
                gone = self._subscribed - want
                self._subscribed = self._subscribed - gone
                for stream in gone:
                    self._last_ids.pop(stream, None)
                    self._tracker.forget_channel(stream)
                await self._follow(sorted(want - self._subscribed))
            streams = {stream: self._last_ids[stream] for stream in self._subscribed}
            replies = await self._sub.xread(streams, count=_BATCH, block=int(_READ_POLL * 1000))
            self._answered = True
            for stream, entries in replies or ():
                name = stream.decode() if isinstance(stream, bytes) else stream
                if name not in self._last_ids:
                    continue  # left while the read was on its way
                for entry_id, fields in entries:
                    self._last_ids[name] = entry_id
                    raw = fields.get(b"e")
                    if raw is not None and name != self._control:
                        self._receive_safely(name, raw)

    # Receiving (on the loop) --------------------------------------------------------------

    def _receive_safely(self, channel: bytes | str, raw: bytes) -> None:
        # A message that cannot be delivered must not cost the session (and a
        # reconnection): log it and go on.
        try:
            self.receive(channel, raw)
        except Exception:
            logger.exception("delivering a broadcast from %r failed", channel)

    def receive(self, channel: bytes | str, raw: bytes) -> None:
        """Deliver one envelope from ``channel`` to the local members (on the loop)."""
        registry = self._registry
        assert registry is not None
        self._loop_counts["received"] += 1
        # base64 makes binary data 4/3 larger in JSON; the fields add little.
        if len(raw) > self.max_message_size * 4 // 3 + 65536:
            self._count("refused_received")
            logger.warning("dropped an envelope of %d bytes (over max_message_size)", len(raw))
            return
        try:
            envelope = decode(raw, self.codec)
        except EnvelopeError as exc:
            self._count("invalid")
            logger.warning("dropped an invalid envelope: %s", exc)
            return
        if envelope.node == self.node_id:
            self._count("echoes")
            return
        if len(envelope.data) > self.max_message_size:
            self._count("refused_received")
            logger.warning("dropped a message of %d bytes (over max_message_size)", len(raw))
            return
        name = channel.decode() if isinstance(channel, bytes) else channel
        missing = self._tracker.check(envelope.node, name, envelope.seq)
        if missing is None:
            self._count("repeats")
            return
        if missing:
            logger.warning(
                "%d broadcasts from node %s on %s were lost", missing, envelope.node, name
            )
            self._fire("gap", envelope.node, name, missing)
        if envelope.room is not None:
            recipients = registry.members(envelope.room)
        else:
            recipients = registry.snapshot()
            if envelope.route is not None:
                recipients = [
                    c for c in recipients if c.route is not None and c.route.name == envelope.route
                ]
        if envelope.exclude:
            mine = f"{self.node_id}:"
            ids = {item[len(mine) :] for item in envelope.exclude if item.startswith(mine)}
            if ids:
                recipients = [c for c in recipients if str(c.id) not in ids]
        count = registry.deliver(recipients, envelope.is_text, envelope.data)
        self._count("delivered", count)

    def __repr__(self) -> str:
        return f"<RedisBroker {_safe_url(self.url)} prefix={self.prefix!r} node={self.node_id}>"


class _ClusterSubscriber:
    """One session's sharded subscriptions on a Redis Cluster: a ``PubSub`` per node.

    Each channel is subscribed on the node that owns its slot in ``topology``'s
    slot map (read again when ``fresh_map``: a session after a failure). Every
    node's connection has a reader task in the session's task group. A node
    whose connection fails, or a slot that moves away (Redis sends an
    ``sunsubscribe`` we did not ask for), costs only the channels concerned:
    they wait, and a repair task subscribes them again on a fresh slot map after
    a back-off (0.1 s doubling to 5 s, reset by a confirmed subscription), then
    fires ``reconnected``; the rooms on the other nodes go on meanwhile. The
    session itself ends only when no node could be subscribed at all, or the
    slot map cannot be read at its start.

    Thread contract: the broker's loop only.
    """

    def __init__(self, broker: RedisBroker, topology: Any, *, fresh_map: bool) -> None:
        self._broker = broker
        self._topology = topology
        self._fresh_map = fresh_map
        self._mapped = False
        self._nodes: dict[str, tuple[Any, Any]] = {}  # node name: (client, PubSub)
        self._where: dict[str, str] = {}  # channel: the name of its node
        self._reading: set[str] = set()  # the nodes whose connection has its reader task
        self._group: asyncio.TaskGroup | None = None
        self._orphans: set[str] = set()  # wanted channels that no node's connection holds now
        self._orphaned = asyncio.Event()
        self._delay = _BACKOFF_FIRST

    async def _map(self, fresh: bool) -> None:
        if fresh:  # a slot may have moved, or a node failed over
            await self._topology.nodes_manager.initialize()
        await self._topology.initialize()
        # Read once: its connections would only idle until the next read.
        for node in self._topology.get_nodes():
            await node.disconnect()

    async def ssubscribe(self, channel: str) -> None:
        if not self._mapped:
            await self._map(self._fresh_map)
            self._mapped = True
        node = self._topology.get_node_from_key(channel)
        entry = self._nodes.get(node.name)
        if entry is None:
            redis = self._broker._redis
            options = dict(redis.asyncio.connection.parse_url(self._broker.url))
            options.update(self._broker._subscriber_options(), host=node.host, port=node.port)
            client = redis.asyncio.Redis.from_pool(redis.asyncio.ConnectionPool(**options))
            entry = self._nodes[node.name] = (client, client.pubsub())
        self._where[channel] = node.name
        self._orphans.discard(channel)
        try:
            await entry[1].ssubscribe(channel)
        except redis_errors(self._broker._redis) as exc:
            await self._lose_node(node.name, entry, exc)
            return
        if self._group is not None:
            self._read_node(node.name)  # a node this session had no channel on yet

    async def sunsubscribe(self, channel: str) -> None:
        self._orphans.discard(channel)
        name = self._where.pop(channel, None)
        if name is not None:
            await self._nodes[name][1].sunsubscribe(channel)

    def check_subscribed(self) -> None:
        """Raise ``BrokerError`` when no node took a subscription (the session failed)."""
        if not self._where:
            raise BrokerError("no node of the Redis Cluster could be subscribed")

    def read_in(self, group: asyncio.TaskGroup) -> None:
        """Read every node's connection, now and as nodes are added, in ``group``."""
        self._group = group
        for name in self._nodes:
            self._read_node(name)
        group.create_task(self._repair())

    def _read_node(self, name: str) -> None:
        assert self._group is not None
        if name not in self._reading:
            self._reading.add(name)
            self._group.create_task(self._read(name, self._nodes[name]))

    async def _read(self, name: str, entry: tuple[Any, Any]) -> None:
        receive = self._broker._receive_safely
        pubsub = entry[1]
        try:
            while True:
                message = await pubsub.get_message(timeout=_READ_POLL)
                if message is None:
                    continue
                kind = message["type"]
                if kind == "smessage":
                    receive(message["channel"], message["data"])
                elif kind == "ssubscribe":
                    self._broker._answered = True
                    self._delay = _BACKOFF_FIRST
                elif kind == "sunsubscribe":
                    raw = message["channel"]
                    channel = raw.decode() if isinstance(raw, bytes) else raw
                    if self._where.get(channel) == name:
                        # Not ours: Redis drops the subscribers of a slot that moved.
                        logger.warning("the slot of %s moved: subscribing it again", channel)
                        del self._where[channel]
                        self._orphans.add(channel)
                        self._orphaned.set()
        except Exception as exc:
            if self._nodes.get(name) is not entry:
                return  # given up already (a failed subscribe closed it): an expected end
            if not isinstance(exc, redis_errors(self._broker._redis)):
                raise
            await self._lose_node(name, entry, exc)

    async def _lose_node(self, name: str, entry: tuple[Any, Any], cause: Exception) -> None:
        """A node's connection failed: its channels wait for the repair, the others go on."""
        if self._nodes.get(name) is not entry:
            return  # that connection was already given up
        del self._nodes[name]
        self._reading.discard(name)
        lost = [channel for channel, node in self._where.items() if node == name]
        for channel in lost:
            del self._where[channel]
        self._orphans.update(lost)
        self._orphaned.set()
        logger.warning(
            "Redis Cluster node %s lost: %s; %d channels wait (%.1f s)",
            name,
            cause,
            len(lost),
            self._delay,
        )
        await _close_client(entry)

    async def _repair(self) -> None:
        broker = self._broker
        while True:
            await self._orphaned.wait()
            delay = self._delay
            self._delay = min(delay * 2, _BACKOFF_MAX)  # reset by a confirmed subscription
            await asyncio.sleep(delay)
            self._orphaned.clear()
            self._orphans &= broker._subscribed  # rooms left meanwhile
            try:
                if self._orphans:
                    await self._map(True)
            except redis_errors(broker._redis) as exc:
                logger.warning("reading the Redis Cluster's slot map failed: %s", exc)
                self._orphaned.set()
                continue
            for channel in sorted(self._orphans):
                await self.ssubscribe(channel)
            if self._orphans:
                continue  # a node still failed: _lose_node set the event again
            broker._count("reconnects")
            logger.info("subscribed to Redis Cluster nodes again")
            broker._fire("reconnected")

    async def aclose(self) -> None:
        nodes, self._nodes = list(self._nodes.values()), {}
        for entry in nodes:
            await _close_client(entry)


async def _close_client(entry: tuple[Any, Any]) -> None:
    client, pubsub = entry
    with contextlib.suppress(Exception):
        await pubsub.aclose()
    with contextlib.suppress(Exception):
        await client.aclose()


def check_cluster(cluster: bool, sharded: bool | None, mode: str) -> bool:
    """Whether pub/sub is sharded (``sharded`` unset: as ``cluster``), or a ``ValueError``."""
    if not cluster:
        return bool(sharded)
    if mode != "pubsub":
        raise ValueError("cluster=True works with mode='pubsub' (sharded), not with streams")
    if sharded is False:
        raise ValueError(
            "cluster=True needs sharded pub/sub: a plain PUBLISH in a cluster reaches "
            "every node; leave sharded unset (or True)"
        )
    return True


def check_mode(mode: str, sharded: bool) -> str:
    """``mode`` itself, or a ``ValueError`` for an unknown one or a wrong combination."""
    if mode not in ("pubsub", "streams"):
        raise ValueError(f"mode must be 'pubsub' or 'streams', not {mode!r}")
    if mode == "streams" and sharded:
        raise ValueError("sharded applies to pub/sub, not to mode='streams'")
    return mode


def _safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return f"{scheme}{sep}{rest}"


class EmitterCore:
    """What both emitters share: the broker's envelope settings and one publish.

    Thread contract: as the emitter's own.
    """

    def __init__(
        self,
        *,
        prefix: str,
        codec: str,
        max_message_size: int,
        sharded: bool | None,
        mode: str,
        stream_maxlen: int,
        cluster: bool = False,
    ) -> None:
        self._redis = import_redis()
        self.prefix = prefix
        self.codec: Codec = check_codec(codec)
        self.max_message_size = max_message_size
        self.sharded = check_cluster(cluster, sharded, mode)
        self.cluster = cluster
        self.mode = check_mode(mode, self.sharded)
        self.stream_maxlen = stream_maxlen
        self.node_id = new_node_id()
        self._seq: dict[str, int] = {}

    def publish_with(self, client: Any, channel: str, raw: bytes) -> Any:
        """Publish ``raw`` on ``channel`` as the mode says: what ``client`` returns
        (an awaitable for redis-py's asyncio client)."""
        if self.mode == "streams":
            return client.xadd(channel, {"e": raw}, maxlen=self.stream_maxlen, approximate=True)
        if self.sharded:
            return client.spublish(channel, raw)
        return client.publish(channel, raw)


class AsyncEmitter(EmitterCore):
    """Broadcast to an app's rooms from an asyncio program that serves nothing.

    ``emit = AsyncEmitter(url, prefix=...)``, then ``await emit.broadcast(data)``
    or ``await emit.room(name).broadcast(data)``; ``await emit.aclose()`` (or
    ``async with``). Each call waits for Redis; a publish that fails is retried
    once, then raises `BrokerError`. The envelope is the
    broker's, so ``prefix``, ``codec``, ``sharded``, ``cluster`` and ``mode`` must
    match the app's. With ``cluster=True`` (``url`` names any node of a Redis
    Cluster) each message goes to the node that owns its channel's slot, through
    redis-py's cluster client (which follows ``MOVED`` and retries on its own).

    Thread contract: use it on one event loop.
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
        self._client: Any
        if cluster:
            from redis.asyncio.cluster import RedisCluster  # noqa: PLC0415 - optional

            self._client = RedisCluster.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
                retry=cluster_retry(),
            )
        else:
            self._client = self._redis.asyncio.Redis.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
                retry=no_retry(),
            )

    def room(self, name: str) -> _AsyncEmitterRoom:
        """The room called ``name``, in every process of the app."""
        return _AsyncEmitterRoom(self, name)

    async def broadcast(
        self,
        data: Any,
        *,
        encoding: str = "text",
        route: str | None = None,
        exclude: Iterable[str] = (),
        room: str | None = None,
    ) -> None:
        """Send ``data`` to every connection of the app (or of ``route``) in every process.

        ``exclude`` takes node-qualified ids (``f"{broker.node_id}:{ws.id}"``).

        Raises:
            BrokerError: too large, or Redis failed twice.
        """
        channel, raw = envelope_for(self, self._seq, data, encoding, room, route, exclude)
        error: Exception | None = None
        for _attempt in (1, 2):
            try:
                await self.publish_with(self._client, channel, raw)
                return
            except redis_errors(self._redis) as exc:
                error = exc
        raise BrokerError(f"could not publish to Redis: {error}") from error

    async def aclose(self) -> None:
        """Close the connection to Redis."""
        await self._client.aclose()

    async def __aenter__(self) -> AsyncEmitter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _AsyncEmitterRoom:
    __slots__ = ("_emitter", "name")

    def __init__(self, emitter: AsyncEmitter, name: str) -> None:
        self._emitter = emitter
        self.name = name

    async def broadcast(
        self, data: Any, *, encoding: str = "text", exclude: Iterable[str] = ()
    ) -> None:
        """Send ``data`` to the room's members in every process."""
        await self._emitter.broadcast(data, encoding=encoding, exclude=exclude, room=self.name)


def envelope_for(
    emitter: Any,
    seqs: dict[str, int],
    data: Any,
    encoding: str,
    room: str | None,
    route: str | None,
    exclude: Iterable[str],
) -> tuple[str, bytes]:
    """The channel and encoded envelope of one emitted message (shared with the sync Emitter)."""
    is_text, payload = encode_message(data, encoding)
    if isinstance(payload, Fragments):
        payload = b"".join(payload)
    if len(payload) > emitter.max_message_size:
        raise BrokerError(
            f"a message of {len(payload)} bytes is over max_message_size "
            f"({emitter.max_message_size})"
        )
    channel = all_channel(emitter.prefix) if room is None else room_channel(emitter.prefix, room)
    seq = seqs[channel] = seqs.get(channel, 0) + 1
    envelope = Envelope(emitter.node_id, seq, is_text, payload, room, route, tuple(exclude))
    return channel, encode(envelope, emitter.codec)
