"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from custody.db import Base, make_engine, upgrade


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_migrations_match_models(db: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = (f"sqlite:///{tmp_path / 'm.db'}" if db == "sqlite"
           else request.getfixturevalue("postgres").create_database())
    engine = make_engine(url)
    upgrade(engine)
    upgrade(engine)  # idempotent
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_keys_used_before_tenancy_keep_their_tenant(db: str, tmp_path: Path,
                                                    request: pytest.FixtureRequest) -> None:
    """Revision 0004 gives each existing key to its wallet's tenant, else to the tenant of
    its earliest sign request, so an upgrade locks nobody out of their own keys."""
    from alembic import command
    from sqlalchemy import text

    from custody.db import alembic_config

    url = (f"sqlite:///{tmp_path / 'm.db'}" if db == "sqlite"
           else request.getfixturevalue("postgres").create_database())
    engine = make_engine(url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0003")
        conn.execute(text(
            "INSERT INTO wallets (id, tenant, name, chain, network, key_label, address, "
            "assets, policy_config, created_at) VALUES ('w1', 'desk-w', 'ops', 'ethereum', "
            "'31337', 'wallet-key', '0x00', '[]', '{}', '2026-01-01')"))
        for rid, tenant, label, at in [("r1", "desk-b", "tutorial", "2026-01-02"),
                                       ("r0", "desk-a", "tutorial", "2026-01-01"),
                                       ("r2", "desk-b", "wallet-key", "2025-01-01"),
                                       ("r3", "desk-c", "other", "2026-01-03"),
                                       ("r4", "desk-d", "other", "2026-01-03")]:
            conn.execute(text(
                "INSERT INTO sign_requests (id, tenant, initiator, key_label, action, "
                "payload_type, payload_b64, challenge_b64, status, hsm_time, created_at, "
                "version) VALUES (:id, :t, 'app', :l, 'use', 'UNSPECIFIED', '', '', "
                "'PENDING', 0, :at, 0)"), {"id": rid, "t": tenant, "l": label, "at": at})
    upgrade(engine)
    with engine.connect() as conn:
        owners = dict(conn.execute(text("SELECT label, tenant FROM key_owners")).all())
    engine.dispose()
    assert owners == {"wallet-key": "desk-w", "tutorial": "desk-a", "other": "desk-c"}
