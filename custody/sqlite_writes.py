"""One writer at a time per SQLite database, queued in this process instead of by sleeping.

SQLite lets one connection write at a time. A second writer gets SQLITE_BUSY and the
driver retries by *sleeping* (SQLite's busy handler backs off in steps of milliseconds,
up to 100 ms), so a dozen handler threads that all record a request take turns by
napping: measured by ``custody bench api``, it was most of the latency and a cap on
throughput. Here a writer in this process waits on a lock instead, and is woken the
moment the one before it has committed.

The lock spans what SQLite's own write lock spans - from a connection's first statement
that writes (the driver opens the transaction there) until its commit or rollback has
returned - so it adds no ordering SQLite did not already impose. A waiter that gives up
(``timeout``) goes on to SQLite, which decides as before; other processes on the same
file still meet SQLite's busy handler.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

from sqlalchemy import Engine, event

#: Statements that never take SQLite's write lock; everything else counts as a write.
_READS = ("SELECT", "PRAGMA")


class WriterQueued(sqlite3.Connection):
    """A connection that takes its class's writer lock before writing and gives it back
    once its commit or rollback has returned (or when it closes)."""

    lock: threading.Lock  #: one per engine (:func:`connection_factory`)
    holds = False

    def take(self, timeout: float) -> None:
        if not self.holds and self.lock.acquire(timeout=timeout):
            self.holds = True

    def give(self) -> None:
        if self.holds:
            self.holds = False
            self.lock.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self.give()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self.give()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.give()


def connection_factory() -> type[WriterQueued]:
    """A connection class with a lock of its own, for one engine: pass it as
    ``connect_args={"factory": ...}`` and call :func:`install` on the engine."""
    return type("WriterQueued", (WriterQueued,), {"lock": threading.Lock()})


def install(engine: Engine, timeout: float) -> None:
    """Take the writer lock before the first writing statement of a transaction."""

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        dbapi = conn.connection.dbapi_connection
        if isinstance(dbapi, WriterQueued) and not statement.lstrip()[:6].upper().startswith(
                _READS):
            dbapi.take(timeout)
