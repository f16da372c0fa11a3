"""The fast paths, and the one switch of each (pure: reads the environment once).

Each fast path saves work on one platform (a selector event loop on Linux) and
is skipped elsewhere; the portable path underneath is always complete. A
switch is an environment variable read once, at import: ``0``, ``false``,
``off`` or ``no`` turns the path off. ``EMBEDWS_FAST_PATHS=0`` turns off every
one whose own variable is not set (CI runs the suite so, to test the portable
path users on other platforms run).

* ``EMBEDWS_DIRECT_WRITES``: a thread-mode handler's ``send`` writes to the
  socket from its own thread (``embedws/sync/bridge/sends.py``).
* ``EMBEDWS_WAKE_BATCH``: messages for handler threads are handed over once
  per loop pass (``embedws/sync/bridge/inbox.py``); on that loop, the 101s of
  a busy pass leave together at its end (``Connection.attach``).
* ``EMBEDWS_FAST_FRAMES``: whole text and binary frames are read without the
  Sans-I/O parser (``embedws/aio/connection.py``, ``_read_whole_frames``).
* ``EMBEDWS_FAST_UPGRADES``: the first request of a connection, when it is a
  whole plain upgrade, is parsed without h11 (``embedws/handshake.py``,
  ``parse_upgrade``; ``embedws/aio/http.py``).
* ``EMBEDWS_FAST_ACCEPT``: listening sockets stay registered with the
  selector, as under asyncio's own accept loop, rather than an accept loop on
  ``sock_accept`` (``embedws/aio/acceptor.py``).
* ``EMBEDWS_FAST_CONNECT``: a plain TCP connection accepted on an asyncio
  selector loop gets its transport at once rather than through
  ``connect_accepted_socket`` (``embedws/aio/acceptor.py``).
* ``EMBEDWS_SCHED_BATCH``: handler threads use Linux's ``SCHED_BATCH``
  policy (``embedws/sync/runner.py``; the config key ``SYNC_HANDLER_SCHED_BATCH``
  turns it off for one app), and a loop pass that woke one ends by yielding the
  CPU to it (``embedws/sync/bridge/inbox.py``).
"""

from __future__ import annotations

import os

__all__ = [
    "DIRECT_WRITES",
    "FAST_ACCEPT",
    "FAST_CONNECT",
    "FAST_FRAMES",
    "FAST_UPGRADES",
    "SCHED_BATCH",
    "WAKE_BATCH",
]


def _on(name: str) -> bool:
    value = os.environ.get(name, os.environ.get("EMBEDWS_FAST_PATHS", "1"))
    return value.strip().lower() not in ("0", "false", "off", "no")


DIRECT_WRITES = _on("EMBEDWS_DIRECT_WRITES")
WAKE_BATCH = _on("EMBEDWS_WAKE_BATCH")
SCHED_BATCH = _on("EMBEDWS_SCHED_BATCH")
FAST_FRAMES = _on("EMBEDWS_FAST_FRAMES")
FAST_UPGRADES = _on("EMBEDWS_FAST_UPGRADES")
FAST_ACCEPT = _on("EMBEDWS_FAST_ACCEPT")
FAST_CONNECT = _on("EMBEDWS_FAST_CONNECT")
