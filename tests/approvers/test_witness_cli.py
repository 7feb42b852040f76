"""``custody approver`` and ``custody audit-verify`` refuse an HSM whose state went back.

Two attacks, each real: a compromised broker that replays an audit head the HSM signed
earlier (captured from the HSM, served with the task list), and the rewind the HSM's
counter cannot see - its store *and* its counter copied back together - after which the
HSM really signs a fresh head over its older log. The clients remember the highest head
per HSM identity (``CUSTODY_WITNESS_FILE``) and refuse, saying why, signing nothing.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from approvals_app.auth import issue_token
from custody import approver_keys, witness_file
from custody.cli import app
from hsm_emulator import Hsm
from hsm_emulator.audit import SignedHead
from hsm_emulator.identity import Domain
from tests.api.test_api_tutorial import SECRET
from tests.approvers.test_cli_approver import (
    Live,
    _serve,
    cli,
    new_cli_key,
    new_key,
    status,
    submit,
)
from tests.helpers import Approver

REWOUND = "the HSM's state may have been rewound; do not approve"


def _words(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Live, Hsm]]:
    for url, hsm in _serve(tmp_path):
        with httpx.Client(base_url=url, timeout=10) as http:
            yield Live(url, http, base64.b64encode(hsm.identity_public_key()).decode()), hsm


def test_a_head_replayed_by_the_broker_is_refused(
        served: tuple[Live, Hsm], tmp_path: Path, people: dict[str, Approver],
        monkeypatch: pytest.MonkeyPatch) -> None:
    live, hsm = served
    witness = {"CUSTODY_WITNESS_FILE": str(tmp_path / "witness.json")}
    key_file, me = new_cli_key(tmp_path, "p256", live)
    new_key(live, "desk-witness", [me, people["t2"]])
    early = hsm.audit_head()  # the broker keeps a head the HSM signed
    first = submit(live, "desk-witness", 1000, "bob", nonce=1)
    approved = cli("approve", first, "--yes", "--key-file", str(key_file), live=live,
                   env=witness)
    assert approved.exit_code == 0, approved.output
    fingerprint = approver_keys.hsm_fingerprint(hsm.identity_public_key())
    seen = witness_file.load(tmp_path / "witness.json", fingerprint)
    assert seen is not None and seen.head is not None and seen.head.seq > early.seq

    second = submit(live, "desk-witness", 2000, "eve", nonce=2)
    with monkeypatch.context() as broker:
        broker.setattr(hsm, "audit_head", lambda: early)  # serves the captured head
        for args in (("tasks",), ("show", second), ("approve", second, "--yes")):
            refused = cli(*args, "--key-file", str(key_file), live=live, env=witness)
            assert refused.exit_code == 1, refused.output
            assert (f"the HSM's audit head went back from seq {seen.head.seq} to "
                    f"{early.seq}: {REWOUND}") in _words(refused.output)
            assert "eve" not in refused.stdout  # nothing shown, so nothing signed
    assert status(live, second)["approvedBy"] == []
    assert witness_file.load(tmp_path / "witness.json", fingerprint) == seen

    again = cli("approve", second, "--yes", "--key-file", str(key_file), live=live,
                env=witness)  # the live head: it moved on, so accepted
    assert again.exit_code == 0, again.output
    assert len(status(live, second)["approvedBy"]) == 1


def _restored_head(hsm: Hsm, seq: int) -> SignedHead:
    """The head an HSM restored from a backup would sign: epoch 1, a shorter log. (The
    restore ceremony is built elsewhere; its head is this one's shape, signed by the
    same identity key.)"""
    unsigned = SignedHead(seq, "d" * 64, 1_900_000_000.25, b"", 1, 5)
    return SignedHead(seq, unsigned.hash, unsigned.at,
                      hsm.identity.sign(Domain.AUDIT_HEAD, unsigned.body()), 1, 5)


def test_a_restore_is_said_and_older_challenges_are_void(
        served: tuple[Live, Hsm], tmp_path: Path, people: dict[str, Approver],
        monkeypatch: pytest.MonkeyPatch) -> None:
    live, hsm = served
    witness = {"CUSTODY_WITNESS_FILE": str(tmp_path / "witness.json")}
    key_file, me = new_cli_key(tmp_path, "ed25519", live)
    new_key(live, "desk-restore", [me, people["t1"]])
    request_id = submit(live, "desk-restore")
    assert cli("tasks", "--key-file", str(key_file), live=live, env=witness).exit_code == 0
    restored = _restored_head(hsm, 4)
    with monkeypatch.context() as broker:
        broker.setattr(hsm, "audit_head", lambda: restored)
        listed = cli("tasks", "--key-file", str(key_file), live=live, env=witness)
        assert listed.exit_code == 1, listed.output
        out = _words(listed.output)
        assert "the HSM was restored from a backup: its epoch moved from 0 to 1" in out
        assert f"task {request_id}: its challenge was issued in epoch 0, before the HSM's " \
               "restore to epoch 1: it is void - do not approve" in out
        late = cli("approve", request_id, "--yes", "--key-file", str(key_file), live=live,
                   env=witness)
        assert late.exit_code == 1 and "it is void" in _words(late.output)
    back = cli("tasks", "--key-file", str(key_file), live=live, env=witness)
    assert back.exit_code == 1 and "epoch went back from 1 to 0" in _words(back.output)
    assert status(live, request_id)["approvedBy"] == []


def _audit_verify(live: Live, witness: Path) -> Any:
    token = issue_token(SECRET, "auditor-1", "default", ["auditor"])
    return CliRunner().invoke(app, ["audit-verify", "--url", live.url, "--hsm-key",
                                    live.hsm_key],
                              env={"CUSTODY_TOKEN": token, "CUSTODY_WITNESS_FILE": str(witness)})


def test_a_store_and_counter_rewound_together_are_caught_by_the_witnesses(
        tmp_path: Path, people: dict[str, Approver]) -> None:
    """Outside the counter's model (both files copied back) the HSM opens and signs a
    fresh head over its older log, which verifies; only a witness notices."""
    witness = tmp_path / "witness.json"
    env = {"CUSTODY_WITNESS_FILE": str(witness)}
    state = tmp_path / "state"
    state.mkdir()
    snapshot = tmp_path / "snapshot"
    for live, _hsm in _lives(state):  # the HSM's past, copied once it is closed
        key_file, me = new_cli_key(tmp_path, "p256", live)
        new_key(live, "desk-rewind", [me, people["t2"]])
    shutil.copytree(state, snapshot)
    for live, _hsm in _lives(state):  # it moves on; both witnesses see that
        submit(live, "desk-rewind", 1000, "bob", nonce=1)
        listed = cli("tasks", "--key-file", str(key_file), live=live, env=env)
        assert listed.exit_code == 0, listed.output
        verified = _audit_verify(live, witness)
        assert verified.exit_code == 0, verified.output
        assert "audit log verified" in verified.output
    fingerprint = approver_keys.hsm_fingerprint(base64.b64decode(live.hsm_key))
    seen = witness_file.load(witness, fingerprint)
    assert seen is not None and seen.head is not None
    for name in ("hsm.sqlite", "hsm.sqlite.nvram"):  # the rewind: store and counter
        shutil.copy2(snapshot / name, state / name)
    for live, hsm in _lives(state):
        rewound = hsm.audit_head()
        assert rewound.seq < seen.head.seq and rewound.epoch == 0
        refused = _audit_verify(live, witness)
        assert refused.exit_code == 1, refused.output
        message = f"the HSM's audit head went back from seq {seen.head.seq} to"
        assert message in _words(refused.output) and REWOUND in _words(refused.output)
        listed = cli("tasks", "--key-file", str(key_file), live=live, env=env)
        assert listed.exit_code == 1 and message in _words(listed.output), listed.output
    assert witness_file.load(witness, fingerprint) == seen


def _lives(state: Path) -> Iterator[tuple[Live, Hsm]]:
    """A server over the HSM and broker files in ``state``, until the loop body ends."""
    for url, hsm in _serve(state):
        with httpx.Client(base_url=url, timeout=10) as http:
            yield Live(url, http, base64.b64encode(hsm.identity_public_key()).decode()), hsm
