"""Alembic environment: the broker's schema, run programmatically by custody.db."""

from __future__ import annotations

from alembic import context

from custody import enrolment as _enrolment  # noqa: F401 - registers its table
from custody.db import Base
from custody.treasury import models as _treasury  # noqa: F401 - registers its tables

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes["connection"]
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
