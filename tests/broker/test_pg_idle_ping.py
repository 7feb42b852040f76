"""PostgreSQL's pooled connections are pinged only after sitting idle (custody.db):
a dead one is replaced before use, a busy one costs no extra round trip."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from custody import db
from custody.db import make_engine
from tests.pg import PostgresServer

pytestmark = pytest.mark.postgres


@pytest.fixture
def url(postgres: PostgresServer) -> str:
    return postgres.create_database()


def _pid(engine: Engine) -> int:
    with engine.connect() as c:
        return int(c.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _kill(url: str, pid: int) -> None:
    admin = create_engine(url)
    with admin.connect() as c:
        assert c.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar_one()
    admin.dispose()


def _count_pings(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    pings: list[int] = []
    real = engine.dialect.do_ping

    def counted(conn: Any) -> bool:
        pings.append(1)
        return real(conn)

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    return pings


def test_a_connection_killed_while_idle_is_replaced_before_use(
        url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine(url)
    pid = _pid(engine)
    _kill(url, pid)
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.0)  # it has sat idle long enough
    pings = _count_pings(engine, monkeypatch)
    assert _pid(engine) != pid  # no error: the ping found it dead, the pool connected anew
    assert len(pings) == 2  # the dead one; then, the threshold being 0, the new one
    engine.dispose()


def test_a_connection_used_a_moment_ago_is_not_pinged(
        url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine(url)
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 60.0)
    pings = _count_pings(engine, monkeypatch)
    pid = _pid(engine)
    assert [_pid(engine) for _ in range(5)] == [pid] * 5
    assert pings == []
    engine.dispose()


def test_one_killed_within_the_window_fails_once_and_the_pool_recovers(
        url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = make_engine(url)
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 60.0)
    pid = _pid(engine)
    _kill(url, pid)
    with pytest.raises(OperationalError) as failed:
        _pid(engine)
    assert failed.value.connection_invalidated
    assert _pid(engine) != pid
    engine.dispose()
