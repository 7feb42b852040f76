"""An in-process HSM and broker with the tiered treasury key, for the unit regressions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from custody.broker import Broker, Principal
from custody.db import make_engine, make_sessions
from hsm_emulator import Hsm, ManualClock
from tests.conftest import SO, TEST_PASSPHRASE
from tests.helpers import Approver, tiered_policy

DESK = Principal("desk-user", "desk-1", frozenset({"business"}))


def treasury(tmp_path: Path, clock: ManualClock, traders: list[Approver],
             wrap: Any = None) -> tuple[Hsm, Broker]:
    """The HSM (its key ``treasury`` owned by DESK's tenant) and a broker on SQLite;
    ``wrap`` puts something between them (an unpluggable cable)."""
    hsm = Hsm.open(tmp_path / "hsm.sqlite", TEST_PASSPHRASE, so_passphrase=SO, clock=clock)
    hsm.create_key("treasury", "SECP256K1", policy=tiered_policy(traders, [Approver.new("c")]))
    client = hsm if wrap is None else wrap(hsm)
    broker = Broker(client, make_sessions(make_engine(f"sqlite:///{tmp_path / 'b.sqlite'}")),
                    clock=clock.now)
    broker.intake.claim_key("treasury", DESK.tenant)
    return hsm, broker
