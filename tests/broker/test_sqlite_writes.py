"""The in-process writer queue for SQLite (custody/sqlite_writes.py): writers wait for
each other on a lock, and every way a transaction ends gives the lock back."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import IntegrityError

from custody import sqlite_writes
from custody.db import make_engine


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    e = make_engine(f"sqlite:///{tmp_path / 'w.sqlite'}")
    with e.begin() as c:
        c.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
    return e


def write_within(engine: Engine, seconds: float, row: int) -> bool:
    """Whether another thread can write (and commit) within ``seconds``."""
    done = threading.Event()

    def other() -> None:
        with engine.begin() as c:
            c.execute(text("INSERT INTO t VALUES (:i, 'x')"), {"i": row})
        done.set()

    threading.Thread(target=other, daemon=True).start()
    return done.wait(seconds)


def test_a_writer_waits_for_the_one_before_it_then_goes_at_once(engine: Engine) -> None:
    with engine.connect() as c:
        c.execute(text("INSERT INTO t VALUES (1, 'a')"))
        assert not write_within(engine, 0.3, 2)  # queued behind the open transaction
        c.commit()
    time.sleep(0.2)
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM t")).scalar() == 2


@pytest.mark.parametrize("end", ["rollback", "error", "close"])
def test_every_end_of_a_transaction_releases_the_lock(engine: Engine, end: str) -> None:
    with engine.begin() as c:
        c.execute(text("INSERT INTO t VALUES (1, 'a')"))
    if end == "error":
        with pytest.raises(IntegrityError), engine.begin() as c:
            c.execute(text("INSERT INTO t VALUES (1, 'duplicate')"))
    else:
        c = engine.connect()
        c.execute(text("INSERT INTO t VALUES (5, 'b')"))
        c.rollback() if end == "rollback" else c.close()
    assert write_within(engine, 5, 2)


def test_reads_do_not_queue_behind_a_writer(engine: Engine) -> None:
    with engine.connect() as writer:
        writer.execute(text("INSERT INTO t VALUES (1, 'a')"))
        seen: list[int] = []
        reader = threading.Thread(target=lambda: seen.append(
            engine.connect().execute(text("SELECT count(*) FROM t")).scalar_one()))
        reader.start()
        reader.join(2)
        assert seen == [0]  # WAL: the reader sees the last commit, without waiting
        writer.rollback()


def test_many_writers_all_commit(engine: Engine) -> None:
    def writes(base: int) -> None:
        for i in range(50):
            with engine.begin() as c:
                c.execute(text("INSERT INTO t VALUES (:i, 'x')"), {"i": base + i})

    threads = [threading.Thread(target=writes, args=(1000 * n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    with engine.connect() as c:
        assert c.execute(text("SELECT count(*) FROM t")).scalar() == 400


def test_the_lock_spans_from_first_write_to_commit(engine: Engine) -> None:
    with engine.connect() as c:
        dbapi = c.connection.dbapi_connection
        assert isinstance(dbapi, sqlite_writes.WriterQueued)
        c.execute(text("SELECT count(*) FROM t"))
        assert not dbapi.holds  # a read takes nothing
        c.execute(text("INSERT INTO t VALUES (1, 'a')"))
        assert dbapi.holds
        c.commit()
        assert not dbapi.holds
