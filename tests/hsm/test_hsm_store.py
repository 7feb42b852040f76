"""The HSM's store and boundary: encryption at rest, tampering, audit, attestation, keys.

Attacks here play someone with the HSM's disk: they edit the SQLite file directly.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import coincurve
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding

from hsm_emulator import Action, Hsm, KeyFile, ManualClock, Passphrase
from hsm_emulator.attestation import verify_attestation
from hsm_emulator.audit import AuditEntry, verify_log
from hsm_emulator.errors import (
    AttributeDenied,
    AuditFailure,
    AuthenticationFailed,
    InvalidInput,
    KeyExists,
    KeyInvalidated,
    StoreLocked,
    TamperDetected,
)
from hsm_emulator.results import Attestation
from tests.conftest import SO, TEST_PASSPHRASE


def reopen(path: Path, clock: ManualClock, unlock: Passphrase | KeyFile = TEST_PASSPHRASE) -> Hsm:
    return Hsm.open(path, unlock, clock=clock)


# -- encryption at rest ------------------------------------------------------------------


def test_private_keys_are_not_in_the_file_in_clear(tmp_path: Path, clock: ManualClock) -> None:
    path = tmp_path / "h.sqlite"
    hsm = Hsm.open(path, TEST_PASSPHRASE, so_passphrase=SO, clock=clock, allow_export=True)
    hsm.create_key("k", "SECP256K1", attributes={"exportable": True})
    secret = hsm.export_private_key_unsafe("k", SO)
    hsm.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert secret not in raw and secret.hex().encode() not in raw
    again = reopen(path, clock)
    assert again.export_private_key_unsafe("k", SO) == secret  # and it survives a restart
    again.close()


def test_wrong_passphrase_fails_clearly(tmp_path: Path, clock: ManualClock) -> None:
    path = tmp_path / "h.sqlite"
    Hsm.open(path, TEST_PASSPHRASE, so_passphrase=SO, clock=clock).close()
    with pytest.raises(StoreLocked, match="wrong passphrase"):
        reopen(path, clock, Passphrase("not the passphrase", scrypt_n=2**10))
    with pytest.raises(StoreLocked, match="passphrase, not a key file"):
        reopen(path, clock, KeyFile(tmp_path / "key", create=True))


def test_sealed_key_file(tmp_path: Path, clock: ManualClock) -> None:
    path, kf = tmp_path / "h.sqlite", KeyFile(tmp_path / "master.key")
    Hsm.open(path, kf, so_passphrase=SO, clock=clock).close()
    assert oct((tmp_path / "master.key").stat().st_mode & 0o777) == "0o600"
    reopen(path, clock, kf).close()
    (tmp_path / "master.key").write_bytes(b"\x01" * 32)
    with pytest.raises(StoreLocked):
        reopen(path, clock, kf)


def _tamper(path: Path, sql: str, *args: object) -> None:
    db = sqlite3.connect(path)
    db.execute(sql, args)
    db.commit()
    db.close()


def test_tampered_key_record_is_refused(tmp_path: Path, clock: ManualClock) -> None:
    path = tmp_path / "h.sqlite"
    hsm = Hsm.open(path, TEST_PASSPHRASE, so_passphrase=SO, clock=clock)
    hsm.create_key("a", "SECP256K1", policy={"openActions": ["use"]})
    hsm.create_key("b", "SECP256K1")
    hsm.close()
    # flip one ciphertext bit of a's record
    db = sqlite3.connect(path)
    body = bytearray(db.execute("SELECT body FROM records WHERE kind='key' AND id='a'").fetchone()[0])
    body[10] ^= 1
    pristine = db.execute("SELECT nonce, body FROM records WHERE kind='key' AND id='a'"
                          ).fetchone()
    db.execute("UPDATE records SET body=? WHERE kind='key' AND id='a'", (bytes(body),))
    db.commit()
    db.close()
    # the store's sealed state no longer matches: refused at open, before any use
    with pytest.raises(TamperDetected, match="sealed records do not match"):
        reopen(path, clock)
    # b's (restrictive) record swapped onto a's id: authenticated data binds the id
    _tamper(path, "UPDATE records SET nonce=(SELECT nonce FROM records WHERE id='b'), "
                  "body=(SELECT body FROM records WHERE id='b') WHERE kind='key' AND id='a'")
    with pytest.raises(TamperDetected, match="sealed records do not match"):
        reopen(path, clock)
    # each record still authenticates itself when read (a live store edited under it)
    _tamper(path, "UPDATE records SET nonce=?, body=? WHERE kind='key' AND id='a'", *pristine)
    hsm = reopen(path, clock)
    hsm._store.unsafe_connection().execute(
        "UPDATE records SET body=? WHERE kind='key' AND id='a'", (bytes(body),))
    hsm.records.clear()
    with pytest.raises(TamperDetected):
        hsm.sign_now("a", b"m", "UNSPECIFIED", "SHA256_WITH_ECDSA")
    hsm.close()


def test_one_hsm_process_per_store(tmp_path: Path, clock: ManualClock) -> None:
    path = tmp_path / "h.sqlite"
    hsm = Hsm.open(path, TEST_PASSPHRASE, so_passphrase=SO, clock=clock)
    hsm.create_key("a", "ED25519")
    with pytest.raises(StoreLocked):
        reopen(path, clock)  # exclusive lock: replay protection cannot be split
    hsm.close()


# -- audit ---------------------------------------------------------------------------------


def _log(hsm: Hsm) -> list[AuditEntry]:
    return hsm.audit_entries(1, 100_000)


def test_audit_verifies_and_detects_edits(hsm: Hsm) -> None:
    hsm.create_key("k", "SECP256K1", policy={"openActions": ["use"]})
    for i in range(5):
        hsm.sign_now("k", bytes([i]) * 32, "UNSPECIFIED", "SHA256_WITH_ECDSA")
    with pytest.raises(AttributeDenied):
        hsm.export_private_key_unsafe("k", SO)
    entries, head, pub = _log(hsm), hsm.audit_head(), hsm.identity_public_key()
    assert verify_log(entries, [head], pub).ok
    assert entries[-1].event["result"] == "refused" and entries[-1].event["op"] == "key.export"

    edited = list(entries)
    edited[3] = AuditEntry(edited[3].seq, edited[3].at, {**edited[3].event, "label": "other"},
                           edited[3].prev, edited[3].hash)
    assert "edited" in verify_log(edited, [head], pub).problems[0]
    removed = entries[:2] + entries[3:]
    assert not verify_log(removed, [head], pub).ok
    reordered = [entries[0], entries[2], entries[1], *entries[3:]]
    assert not verify_log(reordered, [head], pub).ok
    truncated = entries[:-2]
    assert "truncated" in " ".join(verify_log(truncated, [head], pub).problems)
    forged_head = type(head)(head.seq, head.hash, head.at + 1, head.signature)
    assert not verify_log(entries, [forged_head], pub).ok


def test_audit_checkpoints_are_signed(hsm: Hsm) -> None:
    from hsm_emulator.audit import CHECKPOINT_EVERY

    hsm.create_key("k", "SECP256K1", policy={"openActions": ["use"]})
    hsm.sign_batch("k", [bytes([i % 256]) * 8 for i in range(CHECKPOINT_EVERY)], "UNSPECIFIED",
                   "SHA256_WITH_ECDSA")
    checkpoints = hsm.audit_checkpoints()
    assert checkpoints and checkpoints[0].seq == CHECKPOINT_EVERY
    assert verify_log(_log(hsm), checkpoints, hsm.identity_public_key()).ok


def test_audit_failure_fails_closed(hsm: Hsm) -> None:
    hsm.create_key("k", "SECP256K1", policy={"openActions": ["use"]})
    conn = hsm._store.unsafe_connection()
    conn.execute("CREATE TRIGGER no_audit BEFORE INSERT ON audit "
                 "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    with pytest.raises(AuditFailure):
        hsm.sign_now("k", b"m", "UNSPECIFIED", "SHA256_WITH_ECDSA")
    with pytest.raises(AuditFailure):
        hsm.create_key("k2", "SECP256K1")
    conn.execute("DROP TRIGGER no_audit")
    assert hsm.list_keys() == ["k"]  # the refused creation left nothing behind
    assert verify_log(_log(hsm), [hsm.audit_head()], hsm.identity_public_key()).ok


# -- keys, attributes, attestation -----------------------------------------------------------


@pytest.mark.parametrize("algo", ["SECP256K1", "ED25519", "P256", "RSA"])
def test_general_signing_verifies_independently(hsm: Hsm, algo: str) -> None:
    scheme = {"SECP256K1": "SHA256_WITH_ECDSA", "ED25519": "EDDSA", "P256": "SHA256_WITH_ECDSA",
              "RSA": "SHA256_WITH_RSA"}[algo]
    hsm.create_key("k", algo, policy={"openActions": ["use"]})
    msg = b"ApproveSignTaskPayload"
    sig = hsm.sign_now("k", msg, "UNSPECIFIED", scheme).signatures[0]
    pub = serialization.load_der_public_key(hsm.get_key("k").public_key_spki)
    if isinstance(pub, ed25519.Ed25519PublicKey):
        pub.verify(sig, msg)
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        pub.verify(sig, msg, ec.ECDSA(hashes.SHA256()))
    else:
        pub.verify(sig, msg, padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr]
    if algo == "SECP256K1":
        assert coincurve.PublicKey(hsm.get_key("k").public_key).verify(sig, msg)


def test_rsa_pss_and_key_sizes(hsm: Hsm) -> None:
    info = hsm.create_key("r", "RSA", key_size=3072, policy={"openActions": ["use"]})
    assert info.key_size == 3072
    sig = hsm.sign_now("r", b"x", "UNSPECIFIED", "SHA256_WITH_RSA_PSS").signatures[0]
    pub = serialization.load_der_public_key(info.public_key_spki)
    pub.verify(sig, b"x", padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())  # type: ignore[union-attr,call-arg]
    with pytest.raises(InvalidInput):
        hsm.create_key("r2", "RSA", key_size=1024)
    with pytest.raises(InvalidInput):
        hsm.create_key("r3", "RSA", key_size=8192)


def test_attributes_are_enforced(hsm: Hsm) -> None:
    hsm.create_key("nosign", "SECP256K1", attributes={"sign": False},
                   policy={"openActions": ["use"]})
    with pytest.raises(AttributeDenied):
        hsm.sign_now("nosign", b"m", "UNSPECIFIED", "SHA256_WITH_ECDSA")
    hsm.create_key("noderive", "SECP256K1", attributes={"derive": False})
    with pytest.raises(AttributeDenied):
        hsm.address("noderive", "p2wpkh", "regtest", "m/84'/1'/0'/0/0")
    with pytest.raises(AttributeDenied):
        hsm.derive_key("noderive", "0/1", "child")
    with pytest.raises(InvalidInput):
        hsm.create_key("bad", "SECP256K1", attributes={"sign": "yes"})
    with pytest.raises(InvalidInput):
        hsm.create_key("bad", "SECP256K1", attributes={"teleport": True})
    with pytest.raises(KeyExists):
        hsm.create_key("nosign", "ED25519")


def test_export_needs_attribute_partition_and_officer(tmp_path: Path, clock: ManualClock) -> None:
    closed = Hsm.open(tmp_path / "c.sqlite", TEST_PASSPHRASE, so_passphrase=SO, clock=clock)
    closed.create_key("e", "SECP256K1", attributes={"exportable": True})
    with pytest.raises(AttributeDenied, match="partition"):
        closed.export_private_key_unsafe("e", SO)
    closed.close()
    opened = Hsm.open(tmp_path / "o.sqlite", TEST_PASSPHRASE, so_passphrase=SO, clock=clock,
                      allow_export=True)
    opened.create_key("e", "SECP256K1", attributes={"exportable": True})
    opened.create_key("n", "SECP256K1")
    with pytest.raises(AttributeDenied, match="not exportable"):
        opened.export_private_key_unsafe("n", SO)
    with pytest.raises(AuthenticationFailed):
        opened.export_private_key_unsafe("e", "wrong officer")
    secret = opened.export_private_key_unsafe("e", SO)
    assert coincurve.PrivateKey(secret).public_key.format() == opened.get_key("e").public_key
    opened.close()


def test_invalidate_restore_destroy(hsm: Hsm) -> None:
    hsm.create_key("k", "ED25519", policy={"openActions": ["use"]})
    hsm.derive_key("k", "0'/1'", "k-child")
    hsm.invalidate_key("k", SO)
    for label in ("k", "k-child"):  # the child is invalidated with its parent
        with pytest.raises(KeyInvalidated):
            hsm.sign_now(label, b"m", "UNSPECIFIED", "EDDSA")
    with pytest.raises(AuthenticationFailed):
        hsm.restore_key("k", "not the officer")
    hsm.restore_key("k", SO)
    assert hsm.sign_now("k-child", b"m", "UNSPECIFIED", "EDDSA").signatures
    with pytest.raises(InvalidInput):
        hsm.destroy_key("k", SO)  # must be invalidated first
    hsm.invalidate_key("k", SO)
    hsm.destroy_key("k", SO)
    with pytest.raises(KeyInvalidated):
        hsm.restore_key("k", SO)
    with pytest.raises(KeyExists):
        hsm.create_key("k", "ED25519")  # labels are never reused


def test_derived_key_inherits_policy_and_block(hsm: Hsm, people: dict) -> None:  # type: ignore[type-arg]
    from tests.helpers import group, token

    admin = people["t1"]
    hsm.create_key("root", "SECP256K1", policy={
        "ruleUse": {"tokens": [token("auto", [])]},
        "ruleBlock": {"tokens": [token("b", [group("a", 1, [admin])])]}})
    child = hsm.derive_key("root", "m/84'/0'/0'", "acct0")
    assert child.policy_digest == hsm.get_key("root").policy_digest
    assert child.public_key == hsm.public_key("root", "84'/0'/0'")
    ch = hsm.begin("root", Action.BLOCK)
    hsm.execute(ch.request_id, [admin.approve(ch.envelope)])
    assert hsm.get_key("acct0").blocked


def test_attestation_verifies_offline(hsm: Hsm) -> None:
    hsm.create_key("k", "SECP256K1", policy={"openActions": ["use"]})
    att = hsm.attest("k")
    statement = verify_attestation(att, hsm.identity_public_key())
    info = hsm.get_key("k")
    assert statement["publicKeySpki"] == info.public_key_spki.hex()
    assert statement["policyDigest"] == info.policy_digest and statement["nonExportable"]
    doc = json.loads(att.statement)
    doc["attributes"]["exportable"] = True
    forged = Attestation(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode(),
                         att.signature)
    with pytest.raises(TamperDetected):
        verify_attestation(forged, hsm.identity_public_key())
    round_trip = Attestation.from_json(att.to_json())
    assert verify_attestation(round_trip, hsm.identity_public_key()) == statement


def test_new_hsm_needs_officer(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        Hsm.open(tmp_path / "x.sqlite", TEST_PASSPHRASE)
