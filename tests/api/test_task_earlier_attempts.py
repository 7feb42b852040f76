"""``/v1/filteredSignApprovalTask`` names a transfer's earlier attempts - transactions
signed for it that expired unlanded - from level 2 on, from the broker's record of the
transfer (``TransferLedger.earlier_attempts``; the re-sign itself is driven on the Solana
node in tests/reliability/test_solana_resign.py)."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from approvals_app.main import create_app
from approvals_app.settings import Settings
from hsm_emulator import Hsm
from hsm_emulator.decoders import transfer_payload
from tests.api.test_api_tutorial import SECRET, bearer
from tests.conftest import SO, TEST_PASSPHRASE
from tests.helpers import Approver, tiered_policy


def _tasks(api: TestClient, who: Approver, level: str) -> dict[str, Any]:
    ts = dt.datetime.now(dt.UTC).isoformat()
    r = api.post("/v1/filteredSignApprovalTask", json={
        "timestamp": ts, "timestampSignature": base64.b64encode(who.sign(ts.encode())).decode(),
        "approverCertificate": who.spki_b64, "detailLevel": level})
    assert r.status_code == 200, r.text
    return {t["id"]: t for t in r.json()["tasks"]}


def test_a_task_names_the_transfers_earlier_attempts_from_level_2(
        tmp_path: Path, people: dict[str, Approver], monkeypatch: pytest.MonkeyPatch) -> None:
    hsm = Hsm.open(tmp_path / "hsm.sqlite", TEST_PASSPHRASE, so_passphrase=SO)
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'b.sqlite'}",
                              jwt_secret=SECRET), hsm)
    with TestClient(app) as api:
        r = api.post("/v1/key", json={"label": "treasury", "algorithm": "SECP256K1",
                                      "policy": tiered_policy([people["t1"], people["t2"]],
                                                              [people["c1"]])},
                     headers=bearer("key_admin"))
        assert r.status_code == 201, r.text
        ids = []
        for nonce in (1, 2):
            payload = base64.b64encode(transfer_payload("TST", 1000, "bob", 1, nonce)).decode()
            r = api.post("/v1/sign", json={"signRequest": {
                "payload": payload, "payloadType": "TEST_TRANSFER",
                "signKeyName": "treasury"}}, headers=bearer("business"))
            assert r.status_code == 201, r.text
            ids.append(r.json()["signRequestId"])
        again, first = ids
        dead = {"txid": "ab" * 32, "reason": "blockhash expired", "at": "2026-12-07T20:00:00"}
        monkeypatch.setattr(app.state.treasury.ledger, "earlier_attempts",
                            lambda ids: {again: [dead]} if again in ids else {})
        level2 = _tasks(api, people["t1"], "level2")
        assert level2[again]["earlierAttempts"] == [{"txid": "ab" * 32,
                                                     "reason": "blockhash expired"}]
        assert "earlierAttempts" not in level2[first]  # a first attempt: nothing to say
        assert "earlierAttempts" not in _tasks(api, people["t1"], "level1")[again]
    hsm.close()
