"""Log records of the loop thread, written by a thread of their own.

A host whose stderr nobody reads (a pipe nobody drains, ``pythonw``) would
otherwise freeze the event loop on its first log line: while the loop thread
runs, the ``embedws`` loggers hand their records to a bounded queue
(``logging.handlers.QueueHandler``) and a ``QueueListener`` thread passes them
on, as if they had propagated from ``embedws``. When the queue is full, records
are dropped and counted instead of blocking.
"""

from __future__ import annotations

import copy
import logging
import logging.handlers
import queue
from typing import Any

__all__ = ["LogHandoff"]

#: Records waiting for the logging thread before new ones are dropped.
QUEUE_SIZE = 10000

_FORMATTER = logging.Formatter()


class _DroppingQueueHandler(logging.handlers.QueueHandler):
    """A ``QueueHandler`` that drops a record when the queue is full."""

    def __init__(self, records: queue.Queue[Any]) -> None:
        super().__init__(records)
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Render the message now (its arguments may change, or not pickle),
        # but keep the traceback apart in exc_text, as a record that was not
        # queued has it: QueueHandler's own prepare() would fold it into the
        # message, and handlers that format exceptions apart would lose it.
        record = copy.copy(record)
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = _FORMATTER.formatException(record.exc_info)
        record.exc_info = None
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class _Parent(logging.Handler):
    """What the listener hands records to: the handlers above ``embedws``."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self._logger = logger

    def handle(self, record: logging.LogRecord) -> bool:
        parent = self._logger.parent
        if parent is not None:
            # As if the record had propagated from "embedws": the handlers
            # above it, or logging's last resort when there are none.
            parent.handle(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:  # pragma: no cover - handle() does it
        self.handle(record)


class _Listener(logging.handlers.QueueListener):
    """A ``QueueListener`` whose thread is named, and whose stop cannot hang."""

    def start(self) -> None:
        super().start()
        if self._thread is not None:
            self._thread.name = "embedws-log"

    def stop_within(self, timeout: float) -> None:
        # A stuck log output must not hang the shutdown: stop() would join
        # the thread for ever. The thread is a daemon, abandoned if it does
        # not finish in time. (Nothing is logged about dropped records: that
        # output is the one that is stuck.)
        try:
            self.enqueue_sentinel()
        except queue.Full:
            pass
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None


class LogHandoff:
    """Routes the ``embedws`` loggers through a logging thread while installed.

    Thread contract: ``install`` and ``uninstall`` from the thread that starts
    and stops the loop thread.
    """

    def __init__(self) -> None:
        self._logger = logging.getLogger("embedws")
        records: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_SIZE)
        self._handler = _DroppingQueueHandler(records)
        self._listener = _Listener(records, _Parent(self._logger))
        self._propagate = True

    @property
    def dropped(self) -> int:
        """Records dropped because the queue was full."""
        return self._handler.dropped

    def install(self) -> None:
        self._propagate = self._logger.propagate
        self._logger.addHandler(self._handler)
        self._logger.propagate = False
        self._listener.start()

    def uninstall(self) -> None:
        self._logger.removeHandler(self._handler)
        self._logger.propagate = self._propagate
        self._listener.stop_within(1.0)
