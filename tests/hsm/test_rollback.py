"""Anti-rollback: the store bound to the HSM's monotonic counter, checked at open.

Attacks here play someone with the HSM's disk while it is stopped: they copy back an
older store, rewind one sealed record, edit the velocity ledger or the audit log, or
remove the state the counter binds. A power cut between the store's commit and the
counter's advance must never brick the HSM (a process killed there, then reopened).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hsm_emulator import CounterValue, Hsm, ManualClock, SealedFileCounter, decoders, nvram
from hsm_emulator.decoders import transfer_payload
from hsm_emulator.errors import CounterFailure, StoreRolledBack, TamperDetected
from hsm_emulator.store import default_nvram
from tests.conftest import SO, TEST_PASSPHRASE

ROOT = Path(__file__).resolve().parents[2]
AUTO = {"ruleUse": {"tokens": [{"name": "auto", "timelock": 0, "timeout": 0, "groups": [],
                                "conditions": {
                                    "velocity": [{"asset": "TST", "windowSeconds": 3600,
                                                  "max": 10}],
                                    "maxFee": [{"asset": "TST", "max": 0}]}}]}}


def _open(path: Path, clock: ManualClock, **kw: object) -> Hsm:
    return Hsm.open(path, TEST_PASSPHRASE, so_passphrase=SO, clock=clock,
                    decoders=decoders.test_registry(), **kw)  # type: ignore[arg-type]


def _spend(hsm: Hsm, amount: int, nonce: int) -> None:
    hsm.sign_now("k", transfer_payload("TST", amount, "d", 0, nonce=nonce), "TEST_TRANSFER")


def _copy(src: Path, dst: Path) -> None:
    """The store file as the attacker copies it (the HSM is stopped: no WAL left)."""
    assert not Path(f"{src}-wal").exists() or Path(f"{src}-wal").stat().st_size == 0
    shutil.copyfile(src, dst)


def _counter(store: Path, clock: ManualClock) -> SealedFileCounter:
    """The store's counter file as the HSM reads it (with its key: the HSM is opened
    and closed once to learn it; an open that changes nothing does not advance it)."""
    hsm = _open(store, clock)
    counter = hsm._store._counter
    hsm.close()
    assert isinstance(counter, SealedFileCounter)
    return counter


def _held(counter: SealedFileCounter) -> int:
    value = counter.read()
    assert value is not None
    return value.count


def _sql(path: Path, sql: str, *args: object) -> None:
    with sqlite3.connect(path) as db:
        db.execute(sql, args)
    db.close()


@pytest.fixture
def store(tmp_path: Path, clock: ManualClock) -> Path:
    path = tmp_path / "h.sqlite"
    hsm = _open(path, clock)
    hsm.create_key("k", "SECP256K1", policy=AUTO)
    _spend(hsm, 6, 0)
    hsm.close()
    return path


def test_each_commit_advances_the_counter_and_reads_do_not(store: Path,
                                                           clock: ManualClock) -> None:
    hsm = _open(store, clock)
    before = hsm._store.counter_value
    hsm.list_keys()
    hsm.audit_entries(1, 10)
    assert hsm._store.counter_value == before
    _spend(hsm, 1, 1)
    after = hsm._store.counter_value
    assert after > before and after.epoch == 0
    counter = hsm._store._counter
    hsm.close()
    assert isinstance(counter, SealedFileCounter) and _held(counter) == after.count


def test_an_older_copy_of_the_whole_store_is_refused(store: Path, tmp_path: Path,
                                                     clock: ManualClock) -> None:
    """Copy the store aside, spend up to the velocity limit, put the copy back: the
    copy is consistent in itself (its own audit head verifies) but behind the counter."""
    _copy(store, tmp_path / "old.sqlite")
    hsm = _open(store, clock)
    _spend(hsm, 4, 1)  # the 10 TST window is full
    hsm.close()
    _copy(tmp_path / "old.sqlite", store)
    with pytest.raises(StoreRolledBack, match="older copy of the store") as err:
        _open(store, clock)
    assert err.value.code == "hsm.store_rolled_back"
    _copy(tmp_path / "old.sqlite", tmp_path / "elsewhere.sqlite")  # and moved aside:
    with pytest.raises(StoreRolledBack):  # its counter is the one named, not a new one
        _open(tmp_path / "elsewhere.sqlite", clock, nvram=default_nvram(store))


def test_one_sealed_record_rewound_is_refused(store: Path, clock: ManualClock) -> None:
    """An older version of one record still authenticates by itself: the store's sealed
    state is what shows it is not the current one."""
    with sqlite3.connect(store) as db:
        old = db.execute("SELECT nonce, body FROM records WHERE kind='key' AND id='k'"
                         ).fetchone()
    db.close()
    hsm = _open(store, clock)
    hsm.invalidate_key("k", SO)
    hsm.close()
    _sql(store, "UPDATE records SET nonce=?, body=? WHERE kind='key' AND id='k'", *old)
    with pytest.raises(TamperDetected, match="record was rewound"):
        _open(store, clock)


@pytest.mark.parametrize("edit", [
    "DELETE FROM spends",
    "UPDATE spends SET amount='1'",
    "UPDATE spends SET at=at-7200",
    "INSERT INTO spends (family, asset, amount, at, token) VALUES ('x', 'TST', '1', 0, '')",
    # the running totals the velocity checks read (an edit would lower what a limit counts)
    "UPDATE spends SET cum_all='0'",
    "UPDATE spends SET cum_token='0'",
])
def test_the_velocity_ledger_edited_is_refused(store: Path, clock: ManualClock,
                                               edit: str) -> None:
    _sql(store, edit)
    with pytest.raises(TamperDetected, match="velocity ledger"):
        _open(store, clock)


def test_the_audit_log_is_verified_at_start(store: Path, tmp_path: Path,
                                            clock: ManualClock) -> None:
    _copy(store, tmp_path / "pristine.sqlite")
    _sql(store, "UPDATE audit SET event=replace(event, 'ok', 'ko') WHERE seq=2")
    with pytest.raises(TamperDetected, match="audit entry 2 does not match"):
        _open(store, clock)
    _copy(tmp_path / "pristine.sqlite", store)
    _sql(store, "DELETE FROM audit WHERE seq=(SELECT MAX(seq) FROM audit)")
    with pytest.raises(TamperDetected, match="audit log ends at entry"):
        _open(store, clock)
    _copy(tmp_path / "pristine.sqlite", store)
    _open(store, clock).close()  # untouched, it opens


def test_a_forged_audit_checkpoint_is_refused(tmp_path: Path, clock: ManualClock) -> None:
    from hsm_emulator.audit import CHECKPOINT_EVERY

    path = tmp_path / "h.sqlite"
    hsm = _open(path, clock)
    hsm.create_key("k", "SECP256K1", policy={"openActions": ["use"]})
    hsm.sign_batch("k", [bytes([i % 256]) * 8 for i in range(CHECKPOINT_EVERY)],
                   "UNSPECIFIED", "SHA256_WITH_ECDSA")
    hsm.close()
    with sqlite3.connect(path) as db:
        body = json.loads(db.execute("SELECT body FROM audit_heads").fetchone()[0])
        sig = body["signature"]  # its first byte changed (never "00" over "00")
        body["signature"] = ("11" if sig[:2] == "00" else "00") + sig[2:]
        db.execute("UPDATE audit_heads SET body=?", (json.dumps(body),))
    db.close()
    with pytest.raises(TamperDetected, match="checkpoint 256: bad signature"):
        _open(path, clock)


def test_the_counter_file_removed_edited_or_foreign_is_refused(store: Path, tmp_path: Path,
                                                               clock: ManualClock) -> None:
    nvram = default_nvram(store)
    saved = nvram.read_bytes()
    nvram.unlink()
    with pytest.raises(StoreRolledBack, match="holds nothing"):
        _open(store, clock)
    nvram.write_text(re.sub(r"(ska-nvram-v2 \d{20} )(\d{20})",  # both slots raised by 5
                            lambda m: f"{m[1]}{int(m[2]) + 5:020d}", saved.decode()))
    with pytest.raises(TamperDetected, match="failed authentication"):
        _open(store, clock)
    nvram.write_bytes(saved[:512])
    with pytest.raises(TamperDetected, match="wrong size"):
        _open(store, clock)
    _open(tmp_path / "other.sqlite", clock).close()  # another HSM's counter file
    shutil.copyfile(default_nvram(tmp_path / "other.sqlite"), nvram)
    with pytest.raises(TamperDetected, match="another HSM's"):
        _open(store, clock)
    nvram.write_bytes(saved)
    _open(store, clock).close()


def test_an_advance_overwrites_the_older_slot_in_place_and_syncs_once(
        store: Path, clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """After the file's creation an advance is one in-place write and one data sync: no
    rename, no directory sync; the two slots take turns, so the newer value is never
    the one being overwritten."""
    syncs: list[int] = []

    def datasync(fd: int) -> None:  # counted, and done
        syncs.append(fd)
        os.fdatasync(fd)

    monkeypatch.setattr(nvram, "_datasync", datasync)
    monkeypatch.setattr(nvram, "_fsync_dir", _never)
    monkeypatch.setattr(nvram.os, "replace", _never)
    path, inode = default_nvram(store), default_nvram(store).stat().st_ino
    hsm = _open(store, clock)
    counter = hsm._store._counter
    assert isinstance(counter, SealedFileCounter)
    for nonce in (1, 2, 3):
        newer = path.read_bytes()
        newer_slot = newer.index(counter._slot(hsm._store.counter_value))
        _spend(hsm, 1, nonce)
        after = path.read_bytes()
        assert after[newer_slot:newer_slot + nvram.SLOT_SIZE] == \
            newer[newer_slot:newer_slot + nvram.SLOT_SIZE]  # the newer slot untouched
        assert counter._slot(hsm._store.counter_value) in after
    assert len(syncs) == 3 and path.stat().st_ino == inode and path.stat().st_size == 1024
    hsm.close()


def _never(*args: object) -> None:
    raise AssertionError("the counter file was replaced or its directory synced")


def test_one_spoilt_slot_is_a_torn_write_both_are_tampering(store: Path, tmp_path: Path,
                                                           clock: ManualClock) -> None:
    """A power cut can spoil only the slot being written (the older): the value read is
    then the newer one, unchanged. Spoiling the newer slot too takes writing the counter
    file (outside the model): even then the counter goes back one step at most, so a
    store two commits old is still refused; both slots spoilt is tampering."""
    nvram_path = default_nvram(store)
    _copy(store, tmp_path / "two-behind.sqlite")
    hsm = _open(store, clock)
    _spend(hsm, 1, 1)
    _spend(hsm, 1, 2)
    now = hsm._store.counter_value
    counter = hsm._store._counter
    hsm.close()
    assert isinstance(counter, SealedFileCounter)
    saved = nvram_path.read_bytes()
    older, newer = (saved.index(counter._slot(CounterValue(0, now.count - step)))
                    for step in (1, 0))

    def spoil(*offsets: int) -> None:
        raw = bytearray(saved)
        for offset in offsets:
            raw[offset + 60:offset + 70] = b"0123456789"  # inside the MAC
        nvram_path.write_bytes(bytes(raw))

    spoil(older)
    assert counter.read() == now
    _open(store, clock).close()
    spoil(newer)
    assert counter.read() == CounterValue(0, now.count - 1)
    shutil.copyfile(tmp_path / "two-behind.sqlite", tmp_path / "old.sqlite")
    with pytest.raises(StoreRolledBack, match="older copy"):
        _open(tmp_path / "old.sqlite", clock, nvram=nvram_path)
    spoil(older, newer)
    with pytest.raises(TamperDetected, match="failed authentication"):
        _open(store, clock)
    spoil(newer)
    hsm = _open(store, clock)  # the store one ahead: the open writes the spoilt slot again
    assert counter.read() == now == hsm._store.counter_value
    hsm.close()


def test_a_counter_file_from_before_the_slots_opens_and_is_rewritten_once(
        store: Path, tmp_path: Path, clock: ManualClock) -> None:
    """The single-value file the HSM wrote before the two slots is read as it is, still
    binds the store (an older copy is refused), and becomes two slots at the next
    advance."""
    _copy(store, tmp_path / "old.sqlite")
    hsm = _open(store, clock)
    _spend(hsm, 1, 1)
    now = hsm._store.counter_value
    hsm.close()
    _to_single_value_file(store, clock)
    assert default_nvram(store).read_text().startswith("{")
    shutil.copyfile(tmp_path / "old.sqlite", tmp_path / "elsewhere.sqlite")
    with pytest.raises(StoreRolledBack, match="older copy"):
        _open(tmp_path / "elsewhere.sqlite", clock, nvram=default_nvram(store))
    hsm = _open(store, clock)
    assert hsm._store.counter_value == now
    _spend(hsm, 1, 2)
    counter = hsm._store._counter
    hsm.close()
    assert isinstance(counter, SealedFileCounter)
    assert counter.read() == now.next()
    assert default_nvram(store).read_bytes() == counter._slot(now.next()) * 2


def test_the_state_record_removed_is_refused(store: Path, clock: ManualClock) -> None:
    _sql(store, "DELETE FROM meta WHERE name='state'")
    with pytest.raises(StoreRolledBack, match="no state record"):
        _open(store, clock)


def test_a_store_from_before_the_counter_is_bound_at_first_open(store: Path,
                                                                clock: ManualClock) -> None:
    """Neither a state record nor a counter: a store made before anti-rollback (or a
    new one) is bound as it is, and refused once rewound from then on."""
    _sql(store, "DELETE FROM meta WHERE name='state'")
    default_nvram(store).unlink()
    hsm = _open(store, clock)
    assert hsm._store.counter_value == CounterValue(0, 1)
    _spend(hsm, 1, 1)
    hsm.close()
    _sql(store, "DELETE FROM spends")
    with pytest.raises(TamperDetected):
        _open(store, clock)


class MemoryCounter:
    """A counter kept outside any file, as a TPM NV counter would be."""

    def __init__(self) -> None:
        self.value: CounterValue | None = None
        self.fail = False

    def read(self) -> CounterValue | None:
        return self.value

    def advance(self, value: CounterValue) -> None:
        if self.fail:
            raise OSError("NV write failed")
        assert self.value is None or value >= self.value
        self.value = value


def test_another_monotonic_counter_can_stand_in(tmp_path: Path, clock: ManualClock) -> None:
    path, counter = tmp_path / "h.sqlite", MemoryCounter()
    hsm = _open(path, clock, nvram=counter)
    hsm.create_key("k", "SECP256K1", policy=AUTO)
    hsm.close()
    _copy(path, tmp_path / "old.sqlite")
    hsm = _open(path, clock, nvram=counter)
    _spend(hsm, 1, 0)
    hsm.close()
    assert not default_nvram(path).exists()
    _copy(tmp_path / "old.sqlite", path)
    with pytest.raises(StoreRolledBack):
        _open(path, clock, nvram=counter)


def test_a_counter_that_cannot_advance_stops_the_next_change(tmp_path: Path,
                                                             clock: ManualClock) -> None:
    """The call that committed succeeds (it is done); the next state change is refused
    until the counter catches up, so the store never runs two steps ahead of it."""
    path, counter = tmp_path / "h.sqlite", MemoryCounter()
    hsm = _open(path, clock, nvram=counter)
    hsm.create_key("k", "SECP256K1", policy=AUTO)
    counter.fail = True
    _spend(hsm, 1, 0)
    with pytest.raises(CounterFailure):
        _spend(hsm, 1, 1)
    counter.fail = False
    _spend(hsm, 1, 2)
    assert counter.value == hsm._store.counter_value
    hsm.close()
    _open(path, clock, nvram=counter).close()


# -- a power cut between the store's commit and the counter's advance ------------------

_KILLED = """
import os, signal, sys
from hsm_emulator import Hsm, ManualClock, nvram
from hsm_emulator.decoders import test_registry, transfer_payload
from tests.conftest import SO, TEST_PASSPHRASE

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def torn(fd, data, offset):  # half the slot reaches the disk, then the power goes
    os.pwrite(fd, data[:100], offset)  # the new count, half of its new MAC
    os.fsync(fd)
    die()

hsm = Hsm.open(sys.argv[1], TEST_PASSPHRASE, so_passphrase=SO, clock=ManualClock(),
               decoders=test_registry())
if sys.argv[2] == "before-advance":  # the store committed, the counter not touched
    nvram.SealedFileCounter.advance = die
elif sys.argv[2] == "torn-slot":  # the slot being written is left half old, half new
    nvram.os = type("os", (), {**vars(os), "pwrite": staticmethod(torn)})
else:  # migrating a counter file from before the slots: written, not renamed over it
    nvram.os.replace = die
hsm.sign_now("k", transfer_payload("TST", 2, "d", 0, nonce=7), "TEST_TRANSFER")
"""


def _to_single_value_file(store: Path, clock: ManualClock) -> None:
    """Write the store's counter as the counter file this emulator kept before the
    two slots (one JSON value, its MAC under the ``ska-nvram-v1`` domain; the format of
    ``hsm_emulator/nvram.py`` at b628360); returns its count."""
    hsm = _open(store, clock)
    key, value = hsm._store._counter._key, hsm._store.counter_value  # type: ignore[attr-defined]
    hsm.close()
    mac = hmac.new(key, b"ska-nvram-v1\0" + f"{value.epoch}\0{value.count}".encode(),
                   hashlib.sha256).hexdigest()
    default_nvram(store).write_text(json.dumps({"epoch": value.epoch, "count": value.count,
                                                "mac": mac}))


@pytest.mark.parametrize("where", ["before-advance", "torn-slot", "mid-migration"])
def test_kill_between_the_commit_and_the_counter_does_not_brick(store: Path, where: str,
                                                                clock: ManualClock) -> None:
    counter = _counter(store, clock)
    before = _held(counter)
    if where == "mid-migration":
        _to_single_value_file(store, clock)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_KILLED), str(store), where],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert _held(counter) == before  # not moved: a torn slot does not authenticate
    raw = default_nvram(store).read_bytes()
    if where == "torn-slot":  # one slot torn; the other, untouched, holds the value before
        assert raw.count(counter._slot(CounterValue(0, before))) == 1
        assert counter._slot(CounterValue(0, before + 1)) not in raw
    hsm = _open(store, clock)  # one step ahead: the open finishes the advance
    assert hsm._store.counter_value.count == before + 1
    assert _held(counter) == before + 1
    assert default_nvram(store).stat().st_size == 2 * nvram.SLOT_SIZE  # slots, migrated
    spent = [e.event for e in hsm.audit_entries(1, 1000) if e.event.get("op") == "sign.now"]
    assert len(spent) == 2  # the killed call's signature was committed, and counts
    _spend(hsm, 2, 8)  # and it signs: 6 + 2 + 2 of the 10 TST window
    with pytest.raises(Exception, match="velocity"):
        _spend(hsm, 1, 9)
    hsm.close()
    _open(store, clock).close()


def test_the_hsm_process_reads_its_counter_where_told(store: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m hsm_emulator.remote --nvram`` (or ``SKA_HSM_NVRAM``): an empty counter
    there is refused for this store, in one line, before anything listens."""
    from hsm_emulator.remote.__main__ import main

    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 32)
    secret.chmod(0o600)
    argv = ["--store", str(store), "--listen", f"unix:{tmp_path}/s.sock", "--secret-file",
            str(secret), "--scrypt-n", str(TEST_PASSPHRASE.scrypt_n)]
    for extra, env in (([], str(tmp_path / "none")), (["--nvram", str(tmp_path / "no")], "")):
        monkeypatch.setenv("SKA_HSM_PASSPHRASE", TEST_PASSPHRASE.value)
        monkeypatch.setenv("SKA_HSM_NVRAM", env)
        assert main([*argv, *extra]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("hsm-server: [hsm.store_rolled_back]") and "\n" not in err, err
        assert "holds nothing" in err
