"""The scale-out broker's envelope, channel names and sequence checks (pure).

Every broadcast that crosses processes travels as one envelope on a Redis
channel: ``{prefix}:all`` for ``app.broadcast``, ``{prefix}:room:{name}`` for a
room. The envelope is JSON (default) or msgpack, never pickle, so a peer can
never make another process run code. Fields:

* ``v``: the envelope version (`VERSION`); other versions are refused;
* ``node``: the sending broker's node id (a process drops its own echoes);
* ``seq``: a per-(node, channel) sequence number, from 1; a receiver counts
  the numbers it never saw as a gap;
* ``room``, ``route``: where it goes (``route`` filters ``app.broadcast``);
* ``exclude``: node-qualified connection ids (``"{node}:{id}"``) not to send to;
* ``kind``: ``"text"`` or ``"binary"``; ``data``: the payload (UTF-8 text in
  JSON for text, base64 for binary; raw bytes in msgpack).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import uuid
from typing import Any, Literal

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "VERSION",
    "Codec",
    "Envelope",
    "EnvelopeError",
    "SequenceTracker",
    "all_channel",
    "check_codec",
    "decode",
    "encode",
    "new_node_id",
    "room_channel",
]

VERSION = 1
DEFAULT_MAX_MESSAGE_SIZE = 1 << 20  # 1 MiB of payload

Codec = Literal["json", "msgpack"]


class EnvelopeError(ValueError):
    """Bytes that are not an envelope of this version (internal; logged and dropped)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope:
    """One broadcast on its way between processes."""

    node: str
    seq: int
    is_text: bool
    data: bytes
    room: str | None = None
    route: str | None = None
    exclude: tuple[str, ...] = ()


def new_node_id() -> str:
    """A fresh node id: one per broker or emitter, so a restarted process is a new node."""
    return uuid.uuid4().hex[:16]


def all_channel(prefix: str) -> str:
    """The channel of ``app.broadcast``."""
    return f"{prefix}:all"


def room_channel(prefix: str, room: str) -> str:
    """The channel of one room."""
    return f"{prefix}:room:{room}"


def _msgpack() -> Any:
    try:
        import msgpack  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: PLC0415
    except ImportError as exc:  # optional: imported only when chosen
        raise ImportError(
            "codec='msgpack' needs the msgpack package: pip install 'embedws[msgpack]'"
        ) from exc
    return msgpack


def check_codec(codec: str) -> Codec:
    """``codec`` itself, or a clear error (msgpack needs the ``embedws[msgpack]`` extra)."""
    if codec == "json":
        return "json"
    if codec == "msgpack":
        _msgpack()
        return "msgpack"
    raise ValueError(f"codec must be 'json' or 'msgpack', not {codec!r}")


def encode(envelope: Envelope, codec: Codec = "json") -> bytes:
    """The envelope as bytes for a Redis channel."""
    fields: dict[str, Any] = {
        "v": VERSION,
        "node": envelope.node,
        "seq": envelope.seq,
        "room": envelope.room,
        "route": envelope.route,
        "exclude": list(envelope.exclude),
        "kind": "text" if envelope.is_text else "binary",
    }
    if codec == "msgpack":
        fields["data"] = envelope.data
        packed: bytes = _msgpack().packb(fields, use_bin_type=True)
        return packed
    if envelope.is_text:
        fields["data"] = envelope.data.decode()
    else:
        fields["data"] = base64.b64encode(envelope.data).decode("ascii")
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()


def decode(raw: bytes, codec: Codec = "json") -> Envelope:
    """Parse an envelope.

    Raises:
        EnvelopeError: not an envelope of this version, or a field of the wrong type.
    """
    try:
        fields = _msgpack().unpackb(raw, raw=False) if codec == "msgpack" else json.loads(raw)
    except Exception as exc:  # each codec has errors of its own; all mean "not ours"
        raise EnvelopeError(f"undecodable envelope: {exc}") from exc
    if not isinstance(fields, dict) or fields.get("v") != VERSION:
        raise EnvelopeError("not an embedws envelope of version 1")
    try:
        node, seq, kind, data = fields["node"], fields["seq"], fields["kind"], fields["data"]
        room, route = fields.get("room"), fields.get("route")
        exclude = fields.get("exclude") or []
    except KeyError as exc:
        raise EnvelopeError(f"envelope without {exc}") from None
    if (
        not isinstance(node, str)
        or type(seq) is not int
        or kind not in ("text", "binary")
        or not (room is None or isinstance(room, str))
        or not (route is None or isinstance(route, str))
        or not isinstance(exclude, list)
        or not all(isinstance(item, str) for item in exclude)
    ):
        raise EnvelopeError("envelope with a field of the wrong type")
    is_text = kind == "text"
    if isinstance(data, str):
        if is_text:
            payload = data.encode()
        else:
            try:
                payload = base64.b64decode(data, validate=True)
            except binascii.Error as exc:
                raise EnvelopeError("binary data that is not base64") from exc
    elif isinstance(data, bytes):
        payload = data
        if is_text:
            try:
                data.decode()
            except UnicodeDecodeError as exc:
                raise EnvelopeError("text data that is not UTF-8") from exc
    else:
        raise EnvelopeError("envelope data is neither text nor bytes")
    return Envelope(node, seq, is_text, payload, room, route, tuple(exclude))


class SequenceTracker:
    """The last sequence number seen per (node, channel), and the gaps.

    Thread contract: one thread (the broker's loop).
    """

    __slots__ = ("_last", "gaps")

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], int] = {}
        self.gaps = 0  # numbers never seen, all peers together

    def check(self, node: str, channel: str, seq: int) -> int | None:
        """Record ``seq``; how many numbers were skipped (0 in order), or ``None`` for a repeat.

        A repeat (a number at or below the last one) comes from a publish retried
        after a failure that had in fact reached Redis: it is dropped.
        """
        key = (node, channel)
        last = self._last.get(key)
        if last is not None and seq <= last:
            return None
        self._last[key] = seq
        # A node's first message on a channel: we subscribed mid-stream, nothing was lost.
        missing = 0 if last is None else seq - last - 1
        self.gaps += missing
        return missing

    def forget_channel(self, channel: str) -> None:
        """Unsubscribed from ``channel``: what comes after a new subscribe starts afresh."""
        for key in [key for key in self._last if key[1] == channel]:
            del self._last[key]
