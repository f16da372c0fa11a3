"""The thread bridge: how calls and messages cross between user threads and the loop.

This package is the map; ``docs/architecture.md`` draws it. Everything that
moves between a thread other than the loop's and the event loop goes through
one of the ways below, and through nothing else.

Into the loop: one way
----------------------
`Crossing.call <embedws.aio.crossing.Crossing.call>()` (``embedws/aio/
crossing.py``), the loop's batched call queue: calls from one thread run in
the order they were made, and one self-pipe wake-up serves every call queued
meanwhile. Sends, broadcasts, pings, closes, resuming reads, stopping a server
(``aio.Server.close_threadsafe``), stopping the loop, a handler thread's
result (``sync/runner.py``) and `run_on_loop()` (a
coroutine whose result a thread waits for) all cross there. A closed loop
answers `LoopClosed`, which each caller turns into
what it means for the user.

Out of the loop
---------------
* Messages: the connection hands each complete message to the websocket's
  `Inbox` (its ``Consumer``), a thread-safe queue a ``recv``
  blocks on; a greenlet handler parks there instead (``greenlets.py``).
* "Writable again" and "closed": the inbox relays them to the websocket's
  `SendGate`, where senders wait, and to parked greenlets.
* Pongs: a `PingWaiter` (an Event).
* Everything the loop logs: a logging thread (``logs.py``).

Sending: three paths (``sends.py`` has the conditions)
------------------------------------------------------
On the loop thread, write at once; from another thread, write to the socket
directly when that keeps the order (a fast path), else hand the message to
the loop through the crossing, bounded by the send gate.

Who holds what
--------------
* ``Connection.write_lock`` (direct-write connections only): the Sans-I/O
  protocol and every write, on the loop and in calling threads.
* ``SendGate._lock``: bytes in flight, paused, closed.
* The registry's lock (``embedws/aio/registry.py``): rooms and open connections.
* Everything else of a connection lives on the loop thread only.

Threads
-------
The loop thread runs the loop, the protocol and every loop-side method. A
handler pool thread runs a thread-mode handler for the life of its
connection; a hook pool thread runs ``def`` middleware and listeners
(``embedws/sync/runner.py``). Greenlet handlers run on the loop thread in
greenlets and switch to the loop where a thread would block. The logging
thread writes log records. User threads call the sync API and broadcast.

Fast paths (``embedws/switches.py`` has one switch each)
------------------------------------------------
* Direct writes (``EMBEDWS_DIRECT_WRITES``): thread mode at one connection,
  11% less server CPU per echo (``bench/sync_echo.py``).
* Wake batching (``EMBEDWS_WAKE_BATCH``): thread mode, 19% less server CPU per
  echo at one connection and 9% at 50, two context switches fewer.
* ``SCHED_BATCH`` (``EMBEDWS_SCHED_BATCH``) keeps woken handler threads from
  preempting the loop: 27% less server CPU per echo at 50 connections. A loop
  pass that woke one ends by yielding the CPU to it (``inbox.py``), or a busy
  loop would leave it waiting for the GIL.
The figures, with the commands that measured them, are in the fast-path table
of ``docs/architecture.md``.
The portable path underneath each is complete: Windows' proactor loop, uvloop
and macOS take none of them.
"""

from __future__ import annotations

from .inbox import Inbox
from .loop_thread import LoopThread, check_can_block, close_at_exit, run_on_loop
from .pings import PingWaiter
from .sends import DirectWriteConnection, SendGate, send_from_thread, send_on_loop

__all__ = [
    "DirectWriteConnection",
    "Inbox",
    "LoopThread",
    "PingWaiter",
    "SendGate",
    "check_can_block",
    "close_at_exit",
    "run_on_loop",
    "send_from_thread",
    "send_on_loop",
]
