"""The live connection registry, rooms, and broadcast, safe from any thread.

Theory of operation
-------------------
The registry holds every open websocket of an app (across its servers) and the
room memberships. Connections enter and leave it on the event loop (when the
handshake completes, when the TCP connection is gone); rooms change from any
thread. One lock guards both maps and each connection's ``rooms_joined``; it is
held only for dictionary and set operations, never while writing.

A broadcast encodes the message once in the caller's thread, takes a snapshot
of the recipients under the lock, and writes on the loop: directly when called
on the loop thread (so it keeps its order with the caller's own ``send``), or
with one call per loop through the loop's batched call queue otherwise (so it
keeps its order with sends made from the same thread, which cross the same
way). On the loop,
the frame is serialized once and the same bytes go to every recipient's
transport; recipients that compress (permessage-deflate) or mask (clients) get
their own frame from their protocol. Recipients that are closing are skipped.
A recipient never makes the others wait: its buffer grows instead, and the
connection's write timer drops it with 1011 if it stays above the limit for
``WEBSOCKET_WRITE_TIMEOUT``; one whose buffer holds more than
``WEBSOCKET_MAX_BACKLOG`` bytes when a broadcast reaches it is dropped at once,
which bounds the memory a slow reader can cost. The cap is far above the
write limit, so that readers that keep up take bursts of large messages.

With a scale-out broker (``App(broker=...)``, ``embedws/aio/broker.py``) the
registry is its `Publisher`'s source: a broadcast is delivered locally
first, then handed to the publisher (which never waits for Redis); and the
first member joining a room or the last leaving it tells the publisher
(``rooms_changed``) after the lock is released, so it can subscribe or
unsubscribe on its loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from websockets.frames import BINARY, CONT, TEXT, Frame
from websockets.protocol import SERVER

from ..message import Fragments, encode_message
from .connection import Connection
from .crossing import LoopClosed

__all__ = ["Connections", "Publisher", "Registry", "Room", "connection_of", "write_to_all"]

logger = logging.getLogger("embedws.broadcast")


def connection_of(ws: Any) -> Connection:
    """The loop-side connection behind a sync or async websocket."""
    conn = getattr(ws, "connection", ws)
    if not isinstance(conn, Connection):
        raise TypeError(f"expected a websocket, not {type(ws).__name__}")
    return conn


class Publisher(Protocol):
    """What the registry needs of a scale-out broker (``embedws.RedisBroker``).

    Thread contract: every method is safe from any thread and never blocks.
    """

    def check_publish(self, size: int) -> None:
        """Raise ``BrokerError`` if a message of ``size`` bytes cannot be published."""

    def publish(
        self,
        is_text: bool,
        payload: bytes,
        *,
        room: str | None,
        route: str | None,
        exclude: Iterable[int],
    ) -> None:
        """Hand a message already delivered locally to the other processes."""

    def rooms_changed(self) -> None:
        """A room got its first member or lost its last one."""


class Registry:
    """Open connections and rooms of one app.

    Thread contract: every method is safe from any thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _open, _rooms and every rooms_joined
        self._open: dict[int, Connection] = {}
        self._rooms: dict[str, set[Connection]] = {}
        self.publisher: Publisher | None = None  # set once, before serving

    # Connections (called on the loop) -------------------------------------------

    def opened(self, conn: Connection) -> None:
        with self._lock:
            self._open[conn.id] = conn

    def closed(self, conn: Connection) -> None:
        emptied = False
        with self._lock:
            self._open.pop(conn.id, None)
            for name in conn.rooms_joined or ():
                members = self._rooms.get(name)
                if members is not None:
                    members.discard(conn)
                    if not members:
                        del self._rooms[name]
                        emptied = True
            conn.rooms_joined = None
        if emptied:
            self._rooms_changed()

    def _rooms_changed(self) -> None:
        # Outside the lock: the publisher only schedules work on its loop.
        publisher = self.publisher
        if publisher is not None:
            publisher.rooms_changed()

    def snapshot(self) -> list[Connection]:
        with self._lock:
            return list(self._open.values())

    def get(self, conn_id: int) -> Connection | None:
        with self._lock:
            return self._open.get(conn_id)

    # What users see of the connections: their facades, read under the lock, because a
    # connection drops its facade once it has left the registry (Connection.connection_lost).

    def facades(self, room: str | None = None) -> list[Any]:
        """The open connections' (or a room's members') facades, as a snapshot."""
        with self._lock:
            conns = self._open.values() if room is None else self._rooms.get(room, ())
            return [conn.facade for conn in conns]

    def facade(self, conn_id: int) -> Any:
        """The facade of the open connection ``conn_id``, or ``None``."""
        with self._lock:
            conn = self._open.get(conn_id)
            return conn.facade if conn is not None else None

    def facades_by_route(self, name: str) -> list[Any]:
        """The facades of the open connections of the route named ``name``."""
        with self._lock:
            return [
                conn.facade
                for conn in self._open.values()
                if conn.route is not None and conn.route.name == name
            ]

    # Rooms -----------------------------------------------------------------------

    def join(self, name: str, conn: Connection) -> None:
        with self._lock:
            if conn.lost or conn.id not in self._open:
                return  # closed already: it would leave at once
            members = self._rooms.get(name)
            created = members is None
            if members is None:
                members = self._rooms[name] = set()
            members.add(conn)
            if conn.rooms_joined is None:
                conn.rooms_joined = set()
            conn.rooms_joined.add(name)
        if created:
            self._rooms_changed()

    def leave(self, name: str, conn: Connection) -> None:
        with self._lock:
            members = self._rooms.get(name)
            if members is None or conn not in members:
                return
            members.discard(conn)
            emptied = not members
            if emptied:
                del self._rooms[name]
            if conn.rooms_joined is not None:
                conn.rooms_joined.discard(name)
        if emptied:
            self._rooms_changed()

    def members(self, name: str) -> list[Connection]:
        with self._lock:
            return list(self._rooms.get(name, ()))

    def is_member(self, name: str, conn: Connection) -> bool:
        with self._lock:
            return conn in self._rooms.get(name, ())

    def size(self, name: str) -> int:
        with self._lock:
            return len(self._rooms.get(name, ()))

    def room_names(self) -> set[str]:
        with self._lock:
            return set(self._rooms)

    def room_sizes(self) -> dict[str, int]:
        with self._lock:
            return {name: len(members) for name, members in self._rooms.items()}

    # Broadcast -------------------------------------------------------------------

    def broadcast(
        self,
        recipients: Iterable[Connection],
        data: Any,
        *,
        encoding: str = "text",
        exclude: Any = None,
        local: bool = False,
        room: str | None = None,
        route: str | None = None,
    ) -> int:
        """Send ``data`` to ``recipients`` minus ``exclude``; never blocks.

        With a publisher and not ``local``, the message then goes to the other
        processes too, for the members of ``room`` (or, with no room, every
        connection, or those of ``route``).

        Returns:
            How many recipients in this process the message was handed to.

        Raises:
            TypeError: ``data`` has a type that cannot be sent.
            BrokerError: the publisher refuses the message (nothing is sent).
        """
        is_text, payload = encode_message(data, encoding)
        excluded = _excluded(exclude)
        publisher = None if local else self.publisher
        whole = b""
        if publisher is not None:
            # One message between processes; each side frames it as it sees fit.
            whole = b"".join(payload) if isinstance(payload, Fragments) else payload
            publisher.check_publish(len(whole))
        count = self.deliver(recipients, is_text, payload, excluded)
        if publisher is not None:
            publisher.publish(
                is_text,
                whole,
                room=room,
                route=route,
                exclude=[conn.id for conn in excluded],
            )
        return count

    def deliver(
        self,
        recipients: Iterable[Connection],
        is_text: bool,
        payload: bytes | Fragments,
        excluded: frozenset[Connection] = frozenset(),
    ) -> int:
        """Write an encoded message to ``recipients`` minus ``excluded``, on their loops."""
        by_loop: dict[asyncio.AbstractEventLoop, list[Connection]] = {}
        for conn in recipients:
            if conn not in excluded:
                by_loop.setdefault(conn.loop, []).append(conn)
        count = 0
        for loop, conns in by_loop.items():
            count += len(conns)
            if _on_loop(loop):
                write_to_all(conns, is_text, payload)
            else:
                try:
                    conns[0].crossing.call(write_to_all, conns, is_text, payload)
                except LoopClosed:  # so are its connections
                    count -= len(conns)
        return count


def write_to_all(conns: list[Connection], is_text: bool, payload: bytes | Fragments) -> None:
    """On the loop: write one message to each connection that is still open."""
    shared: list[bytes] | None = None
    for conn in conns:
        protocol = conn.protocol
        transport = conn.transport
        if not conn.open or transport.is_closing():
            continue
        # Only a paused transport (above its high-water mark) can be that full.
        if conn.writing_paused and conn.over_backlog():
            conn.drop_for_backlog()
            continue
        if protocol.extensions or protocol.side is not SERVER or protocol.expect_continuation_frame:
            conn.write_message(is_text, payload)  # its own frames: compressed or masked
            continue
        if shared is None:
            shared = _serialize(is_text, payload)
        conn.write_frames(shared)


def _serialize(is_text: bool, payload: bytes | Fragments) -> list[bytes]:
    """The frames of one message, unmasked and uncompressed, serialized once."""
    first = TEXT if is_text else BINARY
    if not isinstance(payload, Fragments):
        return [Frame(first, payload).serialize(mask=False)]
    last = len(payload) - 1
    return [
        Frame(first if i == 0 else CONT, part, fin=i == last).serialize(mask=False)
        for i, part in enumerate(payload)
    ]


def _excluded(exclude: Any) -> frozenset[Connection]:
    if exclude is None:
        return frozenset()
    if isinstance(exclude, (list, tuple, set, frozenset)) or (
        isinstance(exclude, Iterable) and not hasattr(exclude, "send")
    ):
        return frozenset(connection_of(ws) for ws in exclude)
    return frozenset({connection_of(exclude)})


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:  # no asyncio loop here; a trio one knows its thread
        is_current = getattr(loop, "is_current", None)
        return is_current is not None and bool(is_current())


class Room:
    """A named group of websockets (``app.room(name)``), made on first use.

    A room exists while it has members; a closing websocket leaves its rooms
    by itself. Thread contract: every method is safe from any thread;
    ``broadcast`` never blocks.
    """

    __slots__ = ("_registry", "name")

    def __init__(self, registry: Registry, name: str) -> None:
        self._registry = registry
        self.name = name

    def add(self, ws: Any) -> None:
        """Add a websocket (sync or async); a closed one is ignored."""
        self._registry.join(self.name, connection_of(ws))

    def discard(self, ws: Any) -> None:
        """Remove a websocket if it is a member."""
        self._registry.leave(self.name, connection_of(ws))

    def broadcast(
        self, data: Any, *, encoding: str = "text", exclude: Any = None, local: bool = False
    ) -> int:
        """Send ``data`` to every member but ``exclude`` (one websocket or several).

        With a broker (``App(broker=...)``) the members in the other processes
        get it too, unless ``local`` is true; publishing never waits for Redis.

        Returns:
            How many members in this process it was handed to.

        Raises:
            BrokerError: the broker refuses the message (too large, or a
                failed publish reported with ``on_error="raise"``); nothing was sent.
        """
        return self._registry.broadcast(
            self._registry.members(self.name),
            data,
            encoding=encoding,
            exclude=exclude,
            local=local,
            room=self.name,
        )

    def __contains__(self, ws: object) -> bool:
        try:
            return self._registry.is_member(self.name, connection_of(ws))
        except TypeError:
            return False

    def __len__(self) -> int:
        return self._registry.size(self.name)

    def __iter__(self) -> Iterator[Any]:
        """The members' websockets, as a snapshot."""
        return iter(self._registry.facades(self.name))

    def __repr__(self) -> str:
        return f"<Room {self.name!r}: {len(self)} members>"


class Connections:
    """``app.connections``: a live view of the open websockets.

    Thread contract: every method is safe from any thread; iteration is over a
    snapshot. The items are the very objects the handlers got.
    """

    __slots__ = ("_registry",)

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def __len__(self) -> int:
        return len(self._registry.snapshot())

    def __iter__(self) -> Iterator[Any]:
        return iter(self._registry.facades())

    def __contains__(self, ws: object) -> bool:
        try:
            conn = connection_of(ws)
        except TypeError:
            return False
        return self._registry.get(conn.id) is conn

    def get(self, conn_id: int) -> Any:
        """The websocket with this ``id``, or ``None``."""
        return self._registry.facade(conn_id)

    def by_route(self, name: str) -> list[Any]:
        """The websockets of the route named ``name``."""
        return self._registry.facades_by_route(name)

    def __repr__(self) -> str:
        return f"<Connections: {len(self)} open>"
