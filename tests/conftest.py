from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hsm_emulator import Hsm, ManualClock, Passphrase
from tests.helpers import Approver
from tests.pg import postgres  # noqa: F401 - a session fixture for every test module

#: The tests use the JSON TEST_TRANSFER decoder; production never registers it (HSMs and
#: servers the tests start inherit this; tests of the production default remove it).
os.environ["CUSTODY_TEST_DECODER"] = "1"

#: Cheap scrypt in tests only; the default cost is used everywhere else.
TEST_PASSPHRASE = Passphrase("correct horse battery staple", scrypt_n=2**10)
SO = "security-officer-passphrase"


@pytest.fixture(scope="session", autouse=True)
def _witness_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The command-line witnesses (``custody approver``, ``custody audit-verify``) remember
    HSM heads in a file of this session's, never the user's ``~/.custody/witness.json``
    (servers and commands the tests start inherit it; witness tests set their own)."""
    before = os.environ.get("CUSTODY_WITNESS_FILE")
    os.environ["CUSTODY_WITNESS_FILE"] = str(tmp_path_factory.mktemp("witness") / "w.json")
    yield
    if before is None:
        del os.environ["CUSTODY_WITNESS_FILE"]
    else:
        os.environ["CUSTODY_WITNESS_FILE"] = before


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def hsm(tmp_path: Path, clock: ManualClock) -> Iterator[Hsm]:
    h = Hsm.open(tmp_path / "hsm.sqlite", TEST_PASSPHRASE, so_passphrase=SO, clock=clock)
    yield h
    h.close()


@pytest.fixture(scope="session")
def people() -> dict[str, Approver]:
    """Three traders, two compliance officers, one outsider: real P-256/Ed25519 keys."""
    return {
        "t1": Approver.new("trader-1", "P256"),
        "t2": Approver.new("trader-2", "ED25519"),
        "t3": Approver.new("trader-3", "SECP256K1"),
        "c1": Approver.new("compliance-1", "P256"),
        "c2": Approver.new("compliance-2", "ED25519"),
        "x": Approver.new("outsider", "P256"),
    }


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test parametrised over databases (ids ``sqlite``, ``postgresql``, ...) needs
    PostgreSQL in its ``postgresql`` cases only. What else a test needs beyond Python
    (``node``: a local chain node; ``browser``: headless Chromium; ``postgres``) its
    module declares in ``pytestmark``. CI has all three; ``-m "not node and not browser
    and not postgres"`` runs the rest."""
    for item in items:
        if "postgres" in item.name:
            item.add_marker("postgres")
