"""The rewind attack across a restore (issue 15): a backup is taken, then a transfer is
approved by two traders and signed; the HSM is wiped and the backup restored. The same
approvals, presented again - for the request id the restored HSM no longer knows, or for
the same request asked again under the same id and payload - are refused: one set of
approvals never yields two signatures. The auto tier refuses while it is frozen after the
restore, until the freeze ends or the officers lift it by quorum."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from custody.witness import HeadMark, WitnessRefused, check_challenge, witness_head
from hsm_emulator import Action, Hsm, ManualClock
from hsm_emulator.challenge import challenge_epoch
from hsm_emulator.decoders import transfer_payload
from hsm_emulator.errors import (
    ApprovalRefused,
    PolicyNotMet,
    RequestClosed,
    RequestNotFound,
)
from hsm_emulator.partition_restore import DEFAULT_FREEZE
from tests.conftest import TEST_PASSPHRASE
from tests.helpers import Approver, tiered_policy
from tests.officer_kit import ceremony, officers

TT = "TEST_TRANSFER"
CREW = officers(3)
MEDIUM = transfer_payload("TST", 1000, "mallory", 1)
SMALL = transfer_payload("TST", 50, "mallory", 1)


def _open(where: Path, clock: ManualClock) -> Hsm:
    where.mkdir(exist_ok=True)
    return Hsm.open(where / "hsm.sqlite", TEST_PASSPHRASE, clock=clock,
                    officers=[o.credential for o in CREW], officer_threshold=2)


def _restore(hsm: Hsm, backup: bytes, shares: list[str]) -> None:
    ch = hsm.officer_begin("restore", {"backupDigest": hashlib.sha256(backup).hexdigest()})
    hsm.restore_backup(ch.request_id, [o.sign(ch) for o in CREW[:2]], backup, shares)


@pytest.fixture
def rewound(tmp_path: Path, people: dict[str, Approver]) -> tuple[Hsm, ManualClock, list]:
    """Backup, then a medium transfer approved by two traders and signed, then the HSM
    wiped and the backup restored. Returns the restored HSM, its clock and what the
    attacker kept: the request id and the two approvals."""
    clock = ManualClock(1_800_000_000.0)
    hsm = _open(tmp_path / "hsm", clock)
    traders = [people["t1"], people["t2"], people["t3"]]
    hsm.create_key("treasury", "SECP256K1", policy=tiered_policy(traders, [people["c1"]]))
    made = ceremony(hsm, CREW[1:], "backup", {"shares": 3, "threshold": 2})
    clock.advance(60)
    ch = hsm.begin("treasury", Action.USE, MEDIUM, TT, request_id="transfer-0001")
    approvals = [people["t1"].approve(ch.envelope), people["t2"].approve(ch.envelope)]
    assert hsm.execute(ch.request_id, approvals).signatures  # signed once
    hsm.close()
    shutil.rmtree(tmp_path / "hsm")  # the store and its counter: wiped
    restored = _open(tmp_path / "hsm", clock)
    _restore(restored, bytes.fromhex(made.secret["backup"]), made.secret["mnemonics"][:2])
    return restored, clock, [ch.request_id, approvals]


def test_the_same_approvals_never_sign_twice_across_a_restore(rewound: tuple) -> None:
    hsm, _, (request_id, approvals) = rewound
    with pytest.raises(RequestNotFound):  # executed after the backup: unknown here
        hsm.execute(request_id, approvals)
    again = hsm.begin("treasury", Action.USE, MEDIUM, TT, request_id=request_id)
    with pytest.raises(ApprovalRefused, match="does not verify"):  # a new challenge
        hsm.execute(again.request_id, approvals)
    with pytest.raises(RequestClosed):  # nor after the refusal
        hsm.request_result(again.request_id)
    entries = [e.event for e in hsm.audit_entries(1, 100_000)]
    assert entries[-1]["result"] == "refused" and entries[-1]["code"] == "hsm.approval_refused"


def test_the_auto_tier_is_frozen_after_a_restore(rewound: tuple,
                                                 people: dict[str, Approver]) -> None:
    hsm, clock, _ = rewound
    with pytest.raises(PolicyNotMet, match="frozen"):
        hsm.sign_now("treasury", SMALL, TT)
    with pytest.raises(PolicyNotMet, match="frozen"):
        hsm.sign_batch("treasury", [SMALL], TT)
    ch = hsm.begin("treasury", Action.USE, SMALL, TT)
    with pytest.raises(PolicyNotMet, match="frozen"):  # nor through begin/execute
        hsm.execute(ch.request_id)
    assert not hsm.request_status(ch.request_id).released  # what the broker sees
    t1, t2 = people["t1"], people["t2"]
    assert hsm.execute(ch.request_id, [t1.approve(ch.envelope), t2.approve(ch.envelope)]
                       ).token == "medium"  # the traders release it meanwhile
    clock.advance(DEFAULT_FREEZE + 1)  # the freeze ends by itself (24 h here)
    assert hsm.sign_now("treasury", SMALL, TT).token == "small"


def test_officers_lift_the_freeze_by_quorum(rewound: tuple) -> None:
    hsm, _, _ = rewound
    with pytest.raises(PolicyNotMet):
        ceremony(hsm, CREW[:1], "lift_freeze")  # one officer is not a quorum
    ceremony(hsm, CREW[:2], "lift_freeze")
    assert hsm.sign_now("treasury", SMALL, TT).token == "small"


def test_an_officer_request_open_in_the_backup_is_void(tmp_path: Path) -> None:
    """Officers' signatures gathered before a restore do not act after it."""
    clock = ManualClock(1_800_000_000.0)
    hsm = _open(tmp_path / "a", clock)
    hsm.create_key("k", "SECP256K1", policy={"openActions": ["use"]})
    pending = hsm.officer_begin("invalidate_key", {"label": "k"})
    signed = [o.sign(pending) for o in CREW[:2]]
    made = ceremony(hsm, CREW[:2], "backup", {"shares": 2, "threshold": 2})
    hsm.close()
    shutil.rmtree(tmp_path / "a")
    b = _open(tmp_path / "b", clock)
    _restore(b, bytes.fromhex(made.secret["backup"]), made.secret["mnemonics"])
    with pytest.raises(RequestClosed, match="restored since"):
        b.officer_execute(pending.request_id, signed)
    assert not b.get_key("k").invalidated
    b.close()


def test_an_approver_s_witness_follows_a_real_restore(tmp_path: Path,
                                                      people: dict[str, Approver]) -> None:
    """The witnesses against the real ceremony: an approver who saw the HSM before the
    backup and after it accepts the restored HSM's head (a new epoch, with a lower audit
    sequence) and says so; afterwards it refuses a challenge issued before the restore
    and any head from the epoch before - which is what a broker replaying the old HSM's
    state would serve."""
    clock = ManualClock(1_800_000_000.0)
    hsm = _open(tmp_path / "hsm", clock)
    identity = hsm.identity_public_key()
    traders = [people["t1"], people["t2"], people["t3"]]
    hsm.create_key("treasury", "SECP256K1", policy=tiered_policy(traders, [people["c1"]]))
    made = ceremony(hsm, CREW[1:], "backup", {"shares": 3, "threshold": 2})
    old = hsm.begin("treasury", Action.USE, MEDIUM, TT)  # open across the restore
    for _ in range(5):
        hsm.begin("treasury", Action.USE, MEDIUM, TT)
    before = hsm.audit_head()
    assert before.verify(identity)
    seen = witness_head(None, HeadMark.of(before))
    assert challenge_epoch(old.body) == 0
    hsm.close()
    shutil.rmtree(tmp_path / "hsm")

    restored = _open(tmp_path / "hsm", clock)
    _restore(restored, bytes.fromhex(made.secret["backup"]), made.secret["mnemonics"][:2])
    assert restored.identity_public_key() == identity  # the same HSM, by its key
    after = restored.audit_head()
    assert after.verify(identity)
    assert after.epoch == 1 and after.seq < before.seq  # the log came back shorter
    now = witness_head(seen.memory, HeadMark.of(after))
    assert any("restore" in note for note in now.notes)
    with pytest.raises(WitnessRefused, match="before the HSM's restore"):
        check_challenge(now.memory, old.request_id, challenge_epoch(old.body))
    with pytest.raises(WitnessRefused, match="epoch went back"):
        witness_head(now.memory, HeadMark.of(before))
    fresh = restored.begin("treasury", Action.USE, MEDIUM, TT)
    assert challenge_epoch(fresh.body) == 1
    check_challenge(now.memory, fresh.request_id, challenge_epoch(fresh.body))
    restored.close()
