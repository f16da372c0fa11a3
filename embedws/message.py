"""Turning what users pass to ``send`` into websocket payloads (pure).

``send`` accepts:

* ``str`` → one text frame; bytes-like → one binary frame;
* ``dict``, ``list``, ``tuple``, or anything with ``encoding="json"`` → JSON text;
* ``str`` with ``encoding="bytes"`` → its UTF-8 bytes in a binary frame;
* any other iterable (a generator, an iterator) of ``str`` or of bytes-like →
  one fragmented message, a frame per item.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Literal

__all__ = ["Encoding", "Fragments", "encode_message", "fragment_payload"]

Encoding = Literal["text", "bytes", "binary", "json"]

_ENCODINGS = frozenset({"text", "bytes", "binary", "json"})
_BYTES_LIKE = (bytes, bytearray, memoryview)


class Fragments(list[bytes]):
    """The payloads of one fragmented message (a subclass, to tell it apart)."""


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def encode_message(data: Any, encoding: str = "text") -> tuple[bool, bytes | Fragments]:
    """Return ``(is_text, payload)``; ``payload`` is `Fragments` when fragmented.

    Raises:
        TypeError: ``data`` is of a type ``send`` does not take.
        ValueError: ``encoding`` is not a known encoding.
    """
    if type(data) is str and encoding == "text":  # the hot path
        return True, data.encode()
    if encoding not in _ENCODINGS:
        raise ValueError(f"encoding must be 'text', 'bytes' or 'json', not {encoding!r}")
    if encoding == "json":
        return True, _dumps(data)
    if isinstance(data, str):
        return encoding == "text", data.encode()
    if isinstance(data, _BYTES_LIKE):
        return False, bytes(data)
    if isinstance(data, (dict, list, tuple)):
        return True, _dumps(data)
    if isinstance(data, Iterable):
        return _fragments(data)
    raise TypeError(
        f"cannot send {type(data).__name__}: send str, bytes, a dict/list "
        "(sent as JSON) or an iterable of str or bytes"
    )


def _fragments(items: Iterable[Any]) -> tuple[bool, Fragments]:
    is_text: bool | None = None
    parts = Fragments()
    for item in items:
        item_is_text = fragment_payload(item)
        if is_text is None:
            is_text = item_is_text
        elif is_text != item_is_text:
            raise TypeError("a fragmented message mixes str and bytes fragments")
        parts.append(item.encode() if item_is_text else bytes(item))
    return bool(is_text), parts


def fragment_payload(item: Any) -> bool:
    """True for a text fragment, False for a binary one.

    Raises:
        TypeError: the item is neither.
    """
    if isinstance(item, str):
        return True
    if isinstance(item, _BYTES_LIKE):
        return False
    raise TypeError(f"fragments must be str or bytes, not {type(item).__name__}")
