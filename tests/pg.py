"""The session's PostgreSQL server (see :mod:`custody.pgserver`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from custody.pgserver import PostgresServer, PostgresUnavailable


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()
