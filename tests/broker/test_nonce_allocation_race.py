"""Two finalizers of one transfer at once take one Ethereum nonce between them.

Found by the kill loop with transfers (tests/reliability/killloop.py --transfers, SQLite,
seed 7, iteration 25): the API releasing a medium transfer on its last approval and a
worker advancing the same request both finalized it. The nonce allocation (now
``SqlLedger.allocate_nonce``, behind ``EthereumPlanner._allocate``) read
"does this transfer own a slot?" in one transaction and "the highest slot" in another,
so the second finalizer, reading after the first committed nonce 641, reserved 642 for
the same transfer. The transfer was signed with 641; slot 642 was marked broadcast with
it and never used - a gap - so every later transfer of the wallet waited in the mempool
behind it for ever (27 transfers stuck in ``broadcast``, the account nonce 27 behind).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select

from chains.ethereum.planner import EthereumPlanner
from custody.db import make_engine, make_sessions
from custody.treasury.models import NonceSlot, Wallet
from custody.treasury.reservations import SqlLedger
from tests.pg import PostgresServer

pytestmark = pytest.mark.postgres

ADDRESS = "0x" + "ab" * 20


class Node:
    chain_id = 31337

    def __init__(self) -> None:
        self.client = self

    def pending_nonce(self, _address: str) -> int:
        return 0


@pytest.fixture(params=["sqlite", "postgres"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres")
        url = server.create_database()
    else:
        url = f"sqlite:///{tmp_path / 'b.sqlite'}"
    made = make_sessions(make_engine(url))
    with made.begin() as s:
        s.add(Wallet(id="w1", tenant="t", name="eth", chain="ethereum", network="31337",
                     key_label="wallet-w1", address=ADDRESS, assets=[], policy_config={}))
    return made


def test_concurrent_finalizers_of_one_transfer_take_one_nonce(
        sessions: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    planner = EthereumPlanner(Node(), SqlLedger())  # type: ignore[arg-type]
    with sessions() as s:
        wallet = s.get(Wallet, "w1")
    original = SqlLedger._highest

    def slow_highest(*args: Any) -> int:
        time.sleep(0.02)  # another finalizer's commit lands here
        return original(*args)

    monkeypatch.setattr(SqlLedger, "_highest", staticmethod(slow_highest))
    transfers = [SimpleNamespace(id=uuid.uuid4().hex) for _ in range(8)]
    got: dict[str, list[int]] = {t.id: [] for t in transfers}

    def finalizer(t: Any, start: threading.Barrier) -> None:
        start.wait()
        got[t.id].append(planner._allocate(sessions, t, wallet))  # type: ignore[arg-type]

    for t in transfers:  # two finalizers per transfer, racing, the rounds one by one
        start = threading.Barrier(2)
        threads = [threading.Thread(target=finalizer, args=(t, start)) for _ in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    with sessions() as s:
        slots = list(s.scalars(select(NonceSlot)))
    owners = Counter(slot.transfer_id for slot in slots)
    assert all(n == 1 for n in owners.values()), owners  # one slot per transfer
    assert sorted(slot.nonce for slot in slots) == list(range(len(transfers)))  # no gap
    assert all(len(set(v)) == 1 for v in got.values()), got  # both saw the same nonce
