"""Backup and restore as an officers' ceremony (issue 15): backup -> wipe -> restore with 3
of 5 SLIP-39 shares brings every key back under its own policy (bit for bit), with the
same identity, ledger and audit log; 2 shares, a wrong share, a tampered backup (any
byte) and a restore over live state are refused; a restore starts a new epoch."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hsm_emulator import Action, CounterValue, Hsm, ManualClock
from hsm_emulator.attestation import verify_attestation
from hsm_emulator.audit import verify_log
from hsm_emulator.backup import MAGIC, read_header
from hsm_emulator.decoders import transfer_payload
from hsm_emulator.errors import (
    BackupInvalid,
    PolicyNotMet,
    RequestClosed,
    RestoreRefused,
)
from hsm_emulator.officers import OfficerOutcome
from tests.conftest import TEST_PASSPHRASE
from tests.helpers import Approver, group, tiered_policy, token
from tests.officer_kit import Officer, ceremony, officers
from tests.remote_kit import HsmProcess, short_dir

TT = "TEST_TRANSFER"
CREW = officers(5)
VELOCITY = {"ruleUse": {"tokens": [token("auto", [], conditions={
    "amounts": [{"asset": "TST", "max": 100}], "maxFee": [{"asset": "TST", "max": 10}],
    "velocity": [{"asset": "TST", "windowSeconds": 86400, "max": 150}]})]}}


def pay(amount: int, dest: str = "bob") -> bytes:
    return transfer_payload("TST", amount, dest, 1)


def open_hsm(where: Path, clock: ManualClock) -> Hsm:
    where.mkdir(exist_ok=True)
    return Hsm.open(where / "hsm.sqlite", TEST_PASSPHRASE, clock=clock,
                    officers=[o.credential for o in CREW], officer_threshold=3)


def restore(hsm: Hsm, data: bytes, shares: list[str],
            signers: list[Officer] = CREW[2:]) -> OfficerOutcome:
    ch = hsm.officer_begin("restore", {"backupDigest": hashlib.sha256(data).hexdigest()})
    return hsm.restore_backup(ch.request_id, [o.sign(ch) for o in signers], data, shares)


@dataclass
class Scene:
    clock: ManualClock
    tmp: Path
    people: dict[str, Approver]
    backup: bytes
    shares: list[str]
    before: dict[str, Any]
    identity: bytes
    open_request: str


@pytest.fixture
def scene(tmp_path: Path, people: dict[str, Approver]) -> Scene:
    """HSM A with three keys, ledger state and an open request, backed up 3 of 5, then
    wiped (its files deleted)."""
    clock = ManualClock(1_800_000_000.0)
    a = open_hsm(tmp_path / "a", clock)
    traders = [people["t1"], people["t2"], people["t3"]]
    a.create_key("treasury", "SECP256K1",
                 policy=tiered_policy(traders, [people["c1"], people["c2"]]))
    a.create_key("tutorial", "P256", policy={"ruleUse": {"tokens": [
        token("one", [group("g", 1, [people["t1"]])], timeout=3600)]}})
    a.create_key("velocity", "SECP256K1", policy=VELOCITY)
    a.sign_now("velocity", pay(100), TT)  # 101 of 150 used in the window
    pending = a.begin("treasury", Action.USE, pay(1000), TT)
    before = {label: (a.get_key(label).policy, a.get_key(label).policy_digest)
              for label in a.list_keys()}
    made = ceremony(a, CREW[:3], "backup", {"shares": 5, "threshold": 3})
    identity = a.identity_public_key()
    a.close()
    shutil.rmtree(tmp_path / "a")  # wiped
    return Scene(clock, tmp_path, people, bytes.fromhex(made.secret["backup"]),
                 made.secret["mnemonics"], before, identity, pending.request_id)


def test_backup_wipe_restore_every_key_signs_again_under_its_own_policy(scene: Scene) -> None:
    b = open_hsm(scene.tmp / "b", scene.clock)
    summary = restore(b, scene.backup, [scene.shares[4], scene.shares[0], scene.shares[2]])
    assert summary.summary["epoch"] == 1 and summary.summary["keys"] == 3
    assert b.identity_public_key() == scene.identity  # the same HSM to approvers
    assert {label: (b.get_key(label).policy, b.get_key(label).policy_digest)
            for label in b.list_keys()} == scene.before  # bit for bit
    statement = verify_attestation(b.attest("treasury"), scene.identity)
    assert statement["policyDigest"] == scene.before["treasury"][1]
    t1, t2 = scene.people["t1"], scene.people["t2"]
    ch = b.begin("treasury", Action.USE, pay(1000), TT)  # medium: two traders
    assert b.execute(ch.request_id, [t1.approve(ch.envelope), t2.approve(ch.envelope)]
                     ).token == "medium"
    ch = b.begin("tutorial", Action.USE, b"payload", "UNSPECIFIED", "SHA256_WITH_ECDSA")
    assert b.execute(ch.request_id, [t1.approve(ch.envelope)]).signatures
    log = b.audit_entries(1, 100_000)
    restored = [e.event for e in log if e.event["op"] == "partition.restore"]
    assert [e["result"] for e in restored] == ["ok"]
    assert restored[0]["summary"]["replacedHsmId"] != b.hsm_id
    assert verify_log(log, [*b.audit_checkpoints(), b.audit_head()], scene.identity).ok
    b.close()
    reopened = open_hsm(scene.tmp / "b", scene.clock)  # the new epoch's store opens
    assert reopened.boundary.store.counter_value.epoch == 1
    reopened.close()


def test_the_velocity_ledger_comes_back_with_its_totals(scene: Scene) -> None:
    b = open_hsm(scene.tmp / "b", scene.clock)
    restore(b, scene.backup, scene.shares[:3])
    ceremony(b, CREW[:3], "lift_freeze")
    with pytest.raises(PolicyNotMet, match="velocity"):
        b.sign_now("velocity", pay(100), TT)  # 101 + 101 > 150: the ledger remembers
    assert b.sign_now("velocity", pay(40), TT).token == "auto"
    b.close()


def test_two_shares_do_not_open_the_backup(scene: Scene) -> None:
    b = open_hsm(scene.tmp / "b", scene.clock)
    with pytest.raises(BackupInvalid, match="do not combine"):
        restore(b, scene.backup, scene.shares[:2])
    assert b.list_keys() == []
    b.close()


def test_a_wrong_share_fails_clearly(scene: Scene) -> None:
    b = open_hsm(scene.tmp / "b", scene.clock)
    b.create_key("scratch", "SECP256K1")
    other = ceremony(b, CREW[:3], "backup", {"shares": 5, "threshold": 3}).secret["mnemonics"]
    b.close()
    shutil.rmtree(scene.tmp / "b")
    c = open_hsm(scene.tmp / "c", scene.clock)
    with pytest.raises(BackupInvalid, match="do not combine"):  # another backup's share
        restore(c, scene.backup, [*scene.shares[:2], other[0]])
    with pytest.raises(BackupInvalid, match="does not open"):  # another backup's shares
        restore(c, scene.backup, other[:3])
    words = scene.shares[1].split()
    words[5] = "academic" if words[5] != "academic" else "acid"
    with pytest.raises(BackupInvalid, match="do not combine"):  # a mistyped word
        restore(c, scene.backup, [scene.shares[0], " ".join(words), scene.shares[2]])
    assert c.list_keys() == []
    c.close()


def test_a_tampered_backup_is_refused(scene: Scene) -> None:
    b = open_hsm(scene.tmp / "b", scene.clock)
    data = scene.backup
    header_at = len(MAGIC) + 4
    assert read_header(data)["shares"] == 5
    for at in (0, len(MAGIC) + 3, header_at + 2, len(data) - 40, len(data) // 2, len(data) - 1):
        tampered = bytearray(data)
        tampered[at] ^= 0x01
        with pytest.raises(BackupInvalid):
            restore(b, bytes(tampered), scene.shares[:3])
    with pytest.raises(BackupInvalid, match="not the backup the officers approved"):
        ch = b.officer_begin("restore", {"backupDigest": "00" * 32})
        b.restore_backup(ch.request_id, [o.sign(ch) for o in CREW[:3]], data, scene.shares[:3])
    assert b.list_keys() == []
    b.close()


def test_a_restore_needs_this_hsms_officers(scene: Scene) -> None:
    b = open_hsm(scene.tmp / "b", scene.clock)
    with pytest.raises(PolicyNotMet):
        restore(b, scene.backup, scene.shares[:3], signers=CREW[:2])
    b.close()


def test_a_restore_never_goes_over_live_state(scene: Scene) -> None:
    b = open_hsm(scene.tmp / "b", scene.clock)
    b.create_key("live", "SECP256K1")
    with pytest.raises(RestoreRefused, match="not empty"):
        restore(b, scene.backup, scene.shares[:3])
    b.close()
    c = open_hsm(scene.tmp / "c", scene.clock)
    restore(c, scene.backup, scene.shares[:3])
    with pytest.raises(RestoreRefused):  # twice: the first restore filled it
        restore(c, scene.backup, scene.shares[:3])
    c.close()


def test_requests_open_in_the_backup_are_void(scene: Scene) -> None:
    b = open_hsm(scene.tmp / "b", scene.clock)
    restore(b, scene.backup, scene.shares[:3])
    t1, t2 = scene.people["t1"], scene.people["t2"]
    old = b.request_challenge(scene.open_request)
    with pytest.raises(RequestClosed, match="cancelled"):
        b.execute(scene.open_request, [t1.approve(old.envelope), t2.approve(old.envelope)])
    with pytest.raises(RequestClosed, match="restored since; ask again"):
        b.request_result(scene.open_request)
    b.close()


class CutCounter:
    """A counter whose next advance into a new epoch is lost, as if the power were cut
    between the restore's commit and the counter."""

    def __init__(self) -> None:
        self.value: CounterValue | None = None
        self.cut = True

    def read(self) -> CounterValue | None:
        return self.value

    def advance(self, value: CounterValue) -> None:
        if self.cut and self.value is not None and value.epoch > self.value.epoch:
            self.cut = False
            raise OSError("power cut")
        self.value = value


def test_a_power_cut_after_the_restore_commit_is_finished_at_open(scene: Scene) -> None:
    counter = CutCounter()
    (scene.tmp / "b").mkdir()
    store = scene.tmp / "b" / "hsm.sqlite"
    creds = [o.credential for o in CREW]
    b = Hsm.open(store, TEST_PASSPHRASE, clock=scene.clock, officers=creds,
                 officer_threshold=3, nvram=counter)
    restore(b, scene.backup, scene.shares[:3])
    assert counter.value is not None and counter.value.epoch == 0  # the advance was cut
    b.close()
    again = Hsm.open(store, TEST_PASSPHRASE, clock=scene.clock, nvram=counter)
    assert counter.value.epoch == 1 and again.list_keys() == sorted(scene.before)
    again.close()


def test_backup_and_restore_through_the_hsm_process(tmp_path: Path) -> None:
    """The ceremony over the socket: the backup and its shares come back in the reply,
    and a new HSM process restores them with the same identity."""
    creds = [o.credential for o in CREW]
    first, sockdir = tmp_path / "first", short_dir()
    first.mkdir()
    server = HsmProcess.start(first, sockdir, officers=creds, officer_threshold=3)
    try:
        client = server.connect()
        client.create_key("kept", "SECP256K1", policy={"openActions": ["use"]})
        identity = client.identity_public_key()
        made = ceremony(client, CREW[:3], "backup", {"shares": 5, "threshold": 3})
        client.close()
    finally:
        server.stop()
    second = tmp_path / "second"
    second.mkdir()
    server = HsmProcess.start(second, sockdir, officers=creds, officer_threshold=3)
    try:
        client = server.connect()
        data = bytes.fromhex(made.secret["backup"])
        ch = client.officer_begin("restore",
                                  {"backupDigest": hashlib.sha256(data).hexdigest()})
        signed = [o.sign(ch, client.identity_public_key()) for o in CREW[1:4]]
        with pytest.raises(BackupInvalid):
            client.restore_backup(ch.request_id, signed, data, made.secret["mnemonics"][:2])
        client.restore_backup(ch.request_id, signed, data, made.secret["mnemonics"][2:])
        assert client.list_keys() == ["kept"] and client.identity_public_key() == identity
        client.close()
    finally:
        server.stop()
        shutil.rmtree(sockdir, ignore_errors=True)


def test_a_policy_naming_an_address_list_comes_back_with_its_list(tmp_path: Path) -> None:
    """Address lists are sealed records like keys: a backup carries them, and a restored
    key whose allowlist names a list by digest resolves it again (a restore without the
    list would leave the key unable to sign, or - worse - reading no allowlist)."""
    clock = ManualClock(1_800_000_000.0)
    hsm = open_hsm(tmp_path / "a", clock)
    listed = [f"0x{i:040x}" for i in range(1, 2_001)]
    upload = hsm.address_list_begin().upload_id
    hsm.address_list_add(upload, 0, listed[:1_000])
    hsm.address_list_add(upload, 1, listed[1_000:])
    digest = hsm.address_list_finish(upload).digest
    auto = {"name": "auto", "timelock": 0, "timeout": 0, "groups": [], "conditions": {
        "amounts": [{"asset": "TST", "max": 100}], "maxFee": [{"asset": "TST", "max": 10}],
        "destinations": {"list": digest}}}
    hsm.create_key("k", "SECP256K1", policy={"ruleUse": {"tokens": [auto]}})
    made = ceremony(hsm, CREW[:3], "backup", {"shares": 3, "threshold": 2})
    hsm.close()
    shutil.rmtree(tmp_path / "a")

    b = open_hsm(tmp_path / "b", clock)
    restore(b, bytes.fromhex(made.secret["backup"]), made.secret["mnemonics"][:2])
    ceremony(b, CREW[:3], "lift_freeze")
    assert b.address_list_info(digest).size == 2_000
    assert b.sign_now("k", pay(5, listed[1_999]), "TEST_TRANSFER").token == "auto"
    with pytest.raises(PolicyNotMet, match="allowlist"):
        b.sign_now("k", pay(5, "0x" + "ee" * 20), "TEST_TRANSFER")
    b.close()
