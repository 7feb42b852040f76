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


#: What a test needs beyond Python, by module: a local chain node (anvil, the Bitcoin
#: regtest node on Core's consensus code, the Solana dev node or LiteSVM), headless
#: Chromium, or a PostgreSQL server (also any test whose parameter id names it). CI has all
#: three; ``-m "not node and not browser and not postgres"`` runs the rest (1,826 tests).
NEEDS: dict[str, frozenset[str]] = {
    "node": frozenset({
        "test_sol_devnode", "test_sol_runtime", "test_sol_decoder", "test_btc_rpc",
        "test_btc_node", "test_btc_integration", "test_btc_prev_tx", "test_eth_anvil",
        "test_chain_specs", "test_treasury_e2e", "test_treasury_resume",
        "test_attack_chains", "test_attack_template", "test_invariant_outflow",
        "test_node_outage", "test_crash_and_soak", "test_notebooks"}),
    "browser": frozenset({"test_approver_page", "test_approver_page_canonical"}),
    "postgres": frozenset({"test_replicas", "test_nonce_allocation_race"}),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = item.path.stem
        for marker, modules in NEEDS.items():
            if module in modules:
                item.add_marker(marker)
        if "postgres" in item.name:  # parametrised over databases: sqlite, postgresql, ...
            item.add_marker("postgres")
