"""Conformance: the same tests against the in-process HSM and the HSM as its own process.

``client`` is the :class:`Hsm` itself ("local") or a :class:`RemoteHsmClient` talking to
``python -m hsm_emulator.remote`` in a subprocess ("remote"); ``advance`` moves either
HSM's clock (a ManualClock, or the remote process's ``--clock-file``). Every refusal must
be the same error class, with the same details, in both modes. The remote-only tests at
the end attack the wire protocol and check the server keeps serving.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import coincurve
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from hsm_emulator import Action, Hsm, KeyAttributes, ManualClock, Passphrase
from hsm_emulator.addresses import AddressKind, Network
from hsm_emulator.attestation import verify_attestation
from hsm_emulator.audit import SignedHead, verify_log
from hsm_emulator.challenge import Challenge, open_challenge
from hsm_emulator.client import CALLS, HsmClient, local_client
from hsm_emulator.decoders import transfer_payload
from hsm_emulator.errors import (
    ApprovalRefused,
    AttributeDenied,
    AuthenticationFailed,
    DecodeError,
    DerivationError,
    HsmError,
    IntentMismatch,
    InvalidInput,
    KeyBlocked,
    KeyExists,
    KeyInvalidated,
    KeyNotFound,
    PolicyInvalid,
    PolicyNotMet,
    RequestClosed,
    RequestExists,
    RequestNotFound,
    TamperDetected,
    TransportError,
)
from hsm_emulator.flow import Approval
from hsm_emulator.remote import HANDLERS, MAX_FRAME, RemoteHsmClient, main, serve
from hsm_emulator.results import Attestation
from tests.helpers import Approver, tiered_policy, token
from tests.remote_kit import (  # noqa: F401 - re-exported for the tests that import them here
    PASSPHRASE,
    ROOT,
    SO,
    START,
    HsmProcess,
    TimeControl,
    _die_with_parent,
    short_dir,
    stop_all,
)

TT = "TEST_TRANSFER"


# -- time in both modes -----------------------------------------------------------------


@pytest.fixture
def time_control() -> TimeControl:
    return TimeControl()


@pytest.fixture
def advance(time_control: TimeControl) -> Callable[[float], None]:
    return time_control.advance


@pytest.fixture(scope="module", autouse=True)
def _no_orphans() -> Iterator[None]:
    yield
    stop_all()


@pytest.fixture
def sockdir() -> Iterator[Path]:
    d = short_dir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def server(tmp_path: Path, sockdir: Path, time_control: TimeControl) -> Iterator[HsmProcess]:
    srv = HsmProcess.start(tmp_path, sockdir, time_control)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(params=["local", "remote"])
def client(request: pytest.FixtureRequest, tmp_path: Path,
           time_control: TimeControl) -> Iterator[HsmClient]:
    if request.param == "local":
        hsm = Hsm.open(tmp_path / "hsm.sqlite", Passphrase(PASSPHRASE, scrypt_n=2**10),
                       so_passphrase=SO, allow_export=True, clock=time_control.clock)
        yield local_client(hsm)
        hsm.close()
    else:
        srv: HsmProcess = request.getfixturevalue("server")
        remote = srv.connect()
        yield remote
        remote.close()
        assert srv.proc.poll() is None, "the HSM process died during the test"


# -- helpers ----------------------------------------------------------------------------


def pay(amount: int, fee: int = 1, dest: str = "bob", nonce: int = 0) -> bytes:
    return transfer_payload("TST", amount, dest, fee, nonce)


def approve(ch: Challenge, *who: Approver) -> list[Approval]:
    return [w.approve(ch.envelope) for w in who]


def refused(exc: type[HsmError], fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """``fn`` raises exactly ``exc`` (not a subclass, not a parent) with a reason."""
    with pytest.raises(HsmError) as err:
        fn(*args, **kw)
    assert type(err.value) is exc, f"{type(err.value).__name__}: {err.value}"
    assert err.value.code == exc.code and err.value.reason
    return err.value


def recovers_to(pub: bytes, digest: bytes, sig: bytes) -> bool:
    recovered = coincurve.PublicKey.from_signature_and_message(sig, digest, hasher=None)
    return recovered.format() == pub


@pytest.fixture
def treasury(client: HsmClient, people: dict[str, Approver]) -> str:
    traders = [people["t1"], people["t2"], people["t3"]]
    client.create_key("treasury", "SECP256K1",
                      policy=tiered_policy(traders, [people["c1"], people["c2"]]))
    return "treasury"


OPEN_USE = {"openActions": ["use"]}


# -- keys -------------------------------------------------------------------------------


def test_client_is_an_hsm_client(client: HsmClient) -> None:
    assert isinstance(client, HsmClient)


def test_keys_of_all_four_algorithms(client: HsmClient) -> None:
    message = b"conformance"
    schemes = {"SECP256K1": "SHA256_WITH_ECDSA", "P256": "SHA256_WITH_ECDSA",
               "ED25519": "EDDSA", "RSA": "SHA256_WITH_RSA"}
    for algo, scheme in schemes.items():
        info = client.create_key(f"k-{algo}", algo, policy=OPEN_USE,
                                 attributes=KeyAttributes(derive=algo != "RSA"))
        assert info.algorithm.value == algo and info.label == f"k-{algo}"
        assert client.get_key(info.label) == info
        assert client.public_key(info.label) == info.public_key
        assert info.key_size == (2048 if algo == "RSA" else None)
        pub = serialization.load_der_public_key(info.public_key_spki)
        sig = client.sign_now(info.label, message, "UNSPECIFIED", scheme).signatures[0]
        if isinstance(pub, ec.EllipticCurvePublicKey):
            pub.verify(sig, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(pub, ed25519.Ed25519PublicKey):
            pub.verify(sig, message)
        else:
            assert isinstance(pub, rsa.RSAPublicKey)
            pub.verify(sig, message, padding.PKCS1v15(), hashes.SHA256())
    assert client.list_keys() == sorted(f"k-{a}" for a in schemes)
    refused(KeyExists, client.create_key, "k-P256", "P256")
    refused(InvalidInput, client.create_key, "k-dsa", "DSA")
    refused(InvalidInput, client.create_key, "bad label!", "P256")
    refused(InvalidInput, client.create_key, "k-size", "P256", key_size=3072)
    refused(InvalidInput, client.create_key, "k-attr", "P256", attributes={"fly": True})
    refused(KeyNotFound, client.get_key, "nope")
    refused(InvalidInput, client.sign_now, "k-P256", message, "UNSPECIFIED", "EDDSA")


def test_public_keys_and_addresses_at_paths(client: HsmClient) -> None:
    client.create_key("btc", "SECP256K1", policy=OPEN_USE)
    root = client.public_key("btc")
    child = client.public_key("btc", "0/1")
    assert len(root) == len(child) == 33 and root != child
    assert client.public_key("btc", "m/0/1") == child
    derived = client.derive_key("btc", "0/1", "btc-0-1")
    assert derived.public_key == child and derived.parent == "btc" and derived.path == "0/1"
    addr = client.address("btc", AddressKind.P2WPKH, Network.MAINNET, "0/1")
    assert addr.startswith("bc1q") and addr == client.address("btc-0-1", "p2wpkh", "mainnet")
    assert client.address("btc", "p2tr", "testnet").startswith("tb1p")
    assert client.address("btc", "ethereum", "mainnet", "0/2").startswith("0x")
    client.create_key("sol", "ED25519", policy=OPEN_USE)
    assert client.public_key("sol", "0'/1'") != client.public_key("sol")
    assert len(client.address("sol", "solana", "mainnet", "0'/1'")) >= 32
    client.create_key("flat", "SECP256K1", attributes={"derive": False})
    refused(AttributeDenied, client.public_key, "flat", "0/1")
    refused(DerivationError, client.public_key, "btc", "0/x")
    refused(KeyNotFound, client.address, "ghost", "p2wpkh", "mainnet")


def test_derived_key_inherits_policy(client: HsmClient, treasury: str,
                                     people: dict[str, Approver]) -> None:
    parent = client.get_key(treasury)
    child = client.derive_key(treasury, "0/5", "treasury-0-5")
    assert child.policy_digest == parent.policy_digest
    assert client.sign_now("treasury-0-5", pay(50), TT).token == "small"
    refused(PolicyNotMet, client.sign_now, "treasury-0-5", pay(101), TT)
    # a child signs for the parent's addresses: no call gives it a weaker policy
    refused(AttributeDenied, client.derive_key, treasury, "0/6", "treasury-0-6", OPEN_USE)
    refused(KeyNotFound, client.get_key, "treasury-0-6")
    refused(KeyExists, client.derive_key, treasury, "0/7", "treasury-0-5")
    refused(InvalidInput, client.derive_key, treasury, "", "treasury-root")
    refused(AttributeDenied, client.derive_key, treasury, "0/8", "t8", {"ruleUse": "yes"})
    derive = [e.event for e in client.audit_entries(1, 10_000)
              if e.event.get("op") == "key.derive" and e.event.get("result") == "ok"]
    assert derive[-1]["policyDigest"] == parent.policy_digest


# -- the approval flow ------------------------------------------------------------------


def test_small_auto_and_medium_with_two_traders(client: HsmClient, treasury: str,
                                                people: dict[str, Approver]) -> None:
    small = client.sign_now(treasury, pay(100), TT)
    pub = client.get_key(treasury).public_key
    assert small.token == "small" and small.intent is not None
    assert recovers_to(pub, hashlib.sha256(pay(100)).digest(), small.signatures[0])

    err = refused(PolicyNotMet, client.sign_now, treasury, pay(101), TT)
    assert err.missing and all(isinstance(m, str) for m in err.missing)
    assert any("medium" in m for m in err.missing)

    ch = client.begin(treasury, Action.USE, pay(101), TT)
    assert client.check_approval(ch.request_id, people["t1"].approve(ch.envelope)) == (
        people["t1"].spki_b64)
    refused(PolicyNotMet, client.execute, ch.request_id, approve(ch, people["t1"]))
    result = client.execute(ch.request_id, approve(ch, people["t1"], people["t3"]))
    assert result.token == "medium" and result.action is Action.USE
    assert set(result.approved_by) == {people["t1"].spki_b64, people["t3"].spki_b64}
    assert recovers_to(pub, hashlib.sha256(pay(101)).digest(), result.signatures[0])
    assert client.request_result(ch.request_id) == result


def test_large_is_held_then_released(client: HsmClient, advance: Callable[[float], None],
                                     treasury: str, people: dict[str, Approver]) -> None:
    ch = client.begin(treasury, Action.USE, pay(10**9), TT)
    full = approve(ch, people["t1"], people["t2"], people["c2"])
    err = refused(PolicyNotMet, client.execute, ch.request_id, full)
    assert "hold ends in 86400s" in err.reason
    advance(86399)
    err = refused(PolicyNotMet, client.execute, ch.request_id, full)
    assert "hold ends in 1s" in err.reason and any("hold ends in 1s" in m for m in err.missing)
    advance(1)
    refused(PolicyNotMet, client.execute, ch.request_id, full[:2])  # no compliance yet
    result = client.execute(ch.request_id, full)
    assert result.token == "large" and result.executed_at == START + 86400


def test_replayed_approvals_are_refused(client: HsmClient, treasury: str,
                                        people: dict[str, Approver]) -> None:
    small_ch = client.begin(treasury, Action.USE, pay(200), TT)
    big_ch = client.begin(treasury, Action.USE, pay(4000, dest="mallory"), TT)
    stolen = approve(small_ch, people["t1"], people["t2"])
    refused(ApprovalRefused, client.execute, big_ch.request_id, stolen)
    first = client.execute(small_ch.request_id, stolen)
    refused(RequestClosed, client.execute, small_ch.request_id, stolen)  # never twice
    assert client.request_result(small_ch.request_id) == first
    refused(RequestClosed, client.request_result, big_ch.request_id)


def test_forged_approvals_are_refused(client: HsmClient, treasury: str,
                                      people: dict[str, Approver]) -> None:
    ch = client.begin(treasury, Action.USE, pay(200), TT)
    t1 = people["t1"]
    forged = Approval("public_key", t1.spki_b64, people["x"].sign(ch.envelope))
    refused(ApprovalRefused, client.execute, ch.request_id,
            [forged, people["t2"].approve(ch.envelope)])
    refused(ApprovalRefused, client.check_approval, ch.request_id, forged)
    garbage = Approval("public_key", t1.spki_b64, b"\x30\x06\x02\x01\x01\x02\x01\x01")
    refused(ApprovalRefused, client.check_approval, ch.request_id, garbage)
    refused(ApprovalRefused, client.check_approval, ch.request_id,
            Approval("public_key", "not base64 !", b"sig"))
    refused(ApprovalRefused, client.execute, ch.request_id, approve(ch, people["x"], t1))
    refused(ApprovalRefused, client.check_approval, ch.request_id,
            Approval("public_key", t1.spki_b64, t1.sign(ch.envelope), "MD5"))
    # the request is still open and releasable by the real approvers
    assert client.execute(ch.request_id, approve(ch, t1, people["t2"])).token == "medium"


def test_initiator_cannot_approve(client: HsmClient, treasury: str,
                                  people: dict[str, Approver]) -> None:
    t1 = people["t1"]
    ch = client.begin(treasury, Action.USE, pay(200), TT, initiator=t1.spki_b64)
    assert ch.body["initiator"] == t1.spki_b64
    refused(ApprovalRefused, client.execute, ch.request_id, approve(ch, t1, people["t2"]))


def test_rebuilt_payload_within_fee_cap(client: HsmClient, treasury: str,
                                        people: dict[str, Approver]) -> None:
    ch = client.begin(treasury, Action.USE, pay(200, fee=5), TT, fee_cap=10)
    ok = approve(ch, people["t1"], people["t2"])
    for bad in (pay(4000, fee=5), pay(200, fee=5, dest="mallory"), pay(200, fee=11)):
        refused(IntentMismatch, client.execute, ch.request_id, ok, payload=bad)
    bumped = pay(200, fee=9)
    result = client.execute(ch.request_id, ok, payload=bumped)
    pub = client.get_key(treasury).public_key
    assert recovers_to(pub, hashlib.sha256(bumped).digest(), result.signatures[0])
    refused(InvalidInput, client.begin, treasury, Action.USE, pay(200, fee=5), TT, fee_cap=4)


def test_block_and_unblock(client: HsmClient, treasury: str,
                           people: dict[str, Approver]) -> None:
    t1, t2 = people["t1"], people["t2"]
    block = client.begin(treasury, Action.BLOCK)
    refused(PolicyNotMet, client.execute, block.request_id)
    assert client.execute(block.request_id, approve(block, t1)).signatures == ()
    info = client.get_key(treasury)
    assert info.blocked and info.policy["keyStatus"] == {"blocked": True}
    refused(KeyBlocked, client.sign_now, treasury, pay(1), TT)
    refused(KeyBlocked, client.begin, treasury, Action.USE, pay(1), TT)
    refused(InvalidInput, client.begin, treasury, "block")  # already blocked
    unblock = client.begin(treasury, "unblock")
    refused(PolicyNotMet, client.execute, unblock.request_id, approve(unblock, t1))
    client.execute(unblock.request_id, approve(unblock, t1, t2))
    assert not client.get_key(treasury).blocked
    assert client.sign_now(treasury, pay(1), TT).token == "small"


def test_modify_policy(client: HsmClient, treasury: str, people: dict[str, Approver]) -> None:
    t1, t2 = people["t1"], people["t2"]
    loose = {"ruleUse": {"tokens": [token("anything", [])]}}
    refused(PolicyInvalid, client.begin, treasury, Action.MODIFY, new_policy={"ruleUse": 1})
    refused(InvalidInput, client.begin, treasury, Action.MODIFY)
    modify = client.begin(treasury, Action.MODIFY, new_policy=loose)
    pending = client.begin(treasury, Action.USE, pay(200), TT)
    before = client.get_key(treasury).policy_digest
    client.execute(modify.request_id, approve(modify, t1, t2))
    assert client.get_key(treasury).policy_digest != before
    refused(RequestClosed, client.execute, pending.request_id)  # made under the old policy
    assert client.sign_now(treasury, pay(10**9), TT).token == "anything"


def test_cancel_status_and_challenge(client: HsmClient, treasury: str,
                                     people: dict[str, Approver]) -> None:
    t1, t2, t3 = people["t1"], people["t2"], people["t3"]
    ch = client.begin(treasury, Action.USE, pay(200), TT)
    assert client.request_challenge(ch.request_id) == ch
    status = client.request_status(ch.request_id, approve(ch, t1))
    assert not status.released and status.attainable
    assert any("group 'traders' needs 1 more" in m for m in status.missing())
    medium = next(t for t in status.tokens if t.name == "medium")
    assert len(medium.groups[0].approved) == 1 and medium.groups[0].quorum == 2
    status = client.request_status(ch.request_id, approve(ch, t1), rejected=[
        t2.spki_b64, t3.spki_b64])
    assert not status.attainable
    assert client.request_status(ch.request_id, approve(ch, t1, t2)).released_by == "medium"
    refused(ApprovalRefused, client.request_status, ch.request_id, approve(ch, people["x"]))
    client.cancel(ch.request_id, "desk withdrew it")
    refused(RequestClosed, client.execute, ch.request_id, approve(ch, t1, t2))
    refused(RequestClosed, client.request_status, ch.request_id, approve(ch, t1, t2))
    refused(RequestClosed, client.cancel, ch.request_id)
    refused(RequestClosed, client.request_result, ch.request_id)
    refused(RequestNotFound, client.request_status, "no-such-request")
    refused(RequestNotFound, client.execute, "../../etc/passwd")
    refused(RequestNotFound, client.request_challenge, "x" * 100)


def test_a_request_under_the_callers_id_is_made_once(client: HsmClient, treasury: str,
                                                     people: dict[str, Approver]) -> None:
    """A caller that crashed mid-call retries under the id it chose: the HSM says the
    request exists and gives its challenge or result; it never signs a second time."""
    signed = client.sign_now(treasury, pay(99, nonce=7), TT, request_id="idem-auto-0001")
    assert signed.request_id == "idem-auto-0001"
    again = refused(RequestExists, client.sign_now, treasury, pay(99, nonce=7), TT,
                    request_id="idem-auto-0001")
    assert "idem-auto-0001" in again.reason
    assert client.request_result("idem-auto-0001") == signed
    refused(RequestClosed, client.cancel, "idem-auto-0001")
    refused(RequestClosed, client.execute, "idem-auto-0001")
    # the same id for an approval-flow request, or any other call, is refused too
    refused(RequestExists, client.begin, treasury, Action.USE, pay(500), TT,
            request_id="idem-auto-0001")

    ch = client.begin(treasury, Action.USE, pay(500), TT, request_id="idem-flow-0001")
    assert ch.request_id == "idem-flow-0001"
    refused(RequestExists, client.begin, treasury, Action.USE, pay(500), TT,
            request_id="idem-flow-0001")
    refused(RequestExists, client.sign_now, treasury, pay(5), TT, request_id="idem-flow-0001")
    assert client.request_challenge("idem-flow-0001") == ch
    done = client.execute(ch.request_id, approve(ch, people["t1"], people["t2"]))
    assert client.request_result("idem-flow-0001") == done

    for bad in ["short", "x" * 65, "../../etc/passwd", "id with space", ""]:
        refused(InvalidInput, client.sign_now, treasury, pay(1), TT, request_id=bad)
        refused(InvalidInput, client.begin, treasury, Action.USE, pay(500), TT,
                request_id=bad)
    # a refused call under a fresh id leaves it free
    refused(PolicyNotMet, client.sign_now, treasury, pay(500), TT, request_id="idem-free-0001")
    assert client.sign_now(treasury, pay(1), TT, request_id="idem-free-0001").signatures
    ops = [e.event for e in client.audit_entries(1, 10_000)
           if e.event.get("op") in ("sign.now", "request.execute")
           and e.event.get("result") == "ok"]
    assert [e["requestId"] for e in ops] == ["idem-auto-0001", "idem-flow-0001",
                                             "idem-free-0001"]


def test_dry_run(client: HsmClient, treasury: str, people: dict[str, Approver]) -> None:
    before = len(client.audit_entries(1, 10_000))
    ev = client.dry_run(treasury, pay(10**9), TT, approvers=[people["t1"].spki_b64])
    assert not ev.released and any("hold ends in" in m for m in ev.missing())
    ev = client.dry_run(treasury, pay(10**9), TT, elapsed=86400, approvers=[
        people["t1"].spki_b64, people["t2"].spki_b64, people["c1"].spki_b64])
    assert ev.released_by == "large" and ev.action is Action.USE
    assert client.dry_run(treasury, pay(5), TT).released_by == "small"
    assert client.dry_run(treasury, action=Action.BLOCK, approvers=[
        people["t1"].spki_b64]).released_by == "block"
    refused(InvalidInput, client.dry_run, treasury, action="launch")
    assert len(client.audit_entries(1, 10_000)) == before  # a dry run changes nothing


def test_invalidate_restore_destroy(client: HsmClient) -> None:
    client.create_key("old", "ED25519", policy=OPEN_USE)
    refused(InvalidInput, client.destroy_key, "old", SO)  # invalidate first
    assert client.invalidate_key("old", SO).invalidated
    refused(KeyInvalidated, client.sign_now, "old", b"m", "UNSPECIFIED", "EDDSA")
    refused(AuthenticationFailed, client.restore_key, "old", "wrong passphrase")
    assert not client.restore_key("old", SO).invalidated
    assert client.sign_now("old", b"m", "UNSPECIFIED", "EDDSA").signatures
    client.invalidate_key("old", SO)
    refused(AuthenticationFailed, client.destroy_key, "old", "wrong passphrase")
    assert client.destroy_key("old", SO).invalidated
    refused(KeyInvalidated, client.restore_key, "old", SO)
    refused(KeyExists, client.create_key, "old", "ED25519")  # labels are never reused
    client.create_key("kept", "P256", attributes={"destroyable": False})
    client.invalidate_key("kept", SO)
    refused(AttributeDenied, client.destroy_key, "kept", SO)


def test_export_needs_exportable_key_and_so(client: HsmClient) -> None:
    client.create_key("sealed", "SECP256K1")
    refused(AttributeDenied, client.export_private_key_unsafe, "sealed", SO)
    info = client.create_key("hot", "SECP256K1", attributes={"exportable": True})
    refused(AuthenticationFailed, client.export_private_key_unsafe, "hot", "not the SO")
    secret = client.export_private_key_unsafe("hot", SO)
    assert coincurve.PrivateKey(secret).public_key.format() == info.public_key


def test_attestation_verifies_offline(client: HsmClient) -> None:
    info = client.create_key("att", "P256", policy=OPEN_USE)
    att = client.attest("att")
    statement = verify_attestation(att, client.identity_public_key())
    assert statement["label"] == "att" and statement["nonExportable"] is True
    assert statement["policyDigest"] == info.policy_digest
    assert statement["publicKeySpki"] == info.public_key_spki.hex()
    tampered = Attestation(att.statement.replace(b'"att"', b'"xyz"'), att.signature)
    with pytest.raises(TamperDetected):
        verify_attestation(tampered, client.identity_public_key())
    refused(KeyNotFound, client.attest, "ghost")


def test_identity_and_challenge_open_offline(client: HsmClient, treasury: str) -> None:
    identity = client.identity_public_key()
    pub = serialization.load_der_public_key(identity)
    assert isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1"
    ch = client.begin(treasury, Action.USE, pay(300), TT)
    body = open_challenge(ch.approval_to_be_signed, identity)
    assert body == ch.body and body["keyLabel"] == treasury
    assert body["hsmId"] == hashlib.sha256(identity).hexdigest()[:16]
    assert body["hsmTime"] == START
    assert body["intent"]["transfers"][0]["amount"] == "300"
    doc = json.loads(ch.envelope)
    doc["body"]["intent"]["transfers"][0]["destination"] = "mallory"
    with pytest.raises(ApprovalRefused):
        open_challenge(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode(), identity)


def test_heads_and_challenges_carry_the_counter(client: HsmClient, treasury: str) -> None:
    """Witnesses' inputs (issue 15): every head and challenge names the HSM's epoch and
    count, signed, and they only move forward while the HSM lives."""
    identity = client.identity_public_key()
    before = client.audit_head()
    assert before.epoch == 0 and isinstance(before.counter, int) and before.verify(identity)
    ch = client.begin(treasury, Action.USE, pay(300), TT)
    body = open_challenge(ch.approval_to_be_signed, identity)
    assert json.loads(ch.envelope)["version"] == 3
    assert body["epoch"] == 0 and body["seq"] >= before.counter
    after = client.audit_head()
    assert after.verify(identity) and after.seq > before.seq
    assert (after.epoch, after.counter) > (before.epoch, before.counter) and \
        after.counter > body["seq"]
    forged = SignedHead(after.seq, after.hash, after.at, after.signature, 0, before.counter)
    assert not forged.verify(identity)  # the counter is signed, not decoration


def test_sign_batch(client: HsmClient, people: dict[str, Approver]) -> None:
    client.create_key("bulk", "SECP256K1", policy={"ruleUse": {"tokens": [
        token("auto", [], conditions={"amounts": [{"asset": "TST", "max": 100}],
                                      "maxFee": [{"asset": "TST", "max": 1}],
                                      "velocity": [{"asset": "TST", "windowSeconds": 86400,
                                                    "max": 1010}]})]}})
    payloads = [pay(100, nonce=i) for i in range(3)]
    results = client.sign_batch("bulk", payloads, TT)
    pub = client.get_key("bulk").public_key
    assert [r.token for r in results] == ["auto"] * 3
    assert len({r.request_id for r in results}) == 3
    for p, r in zip(payloads, results, strict=True):
        assert recovers_to(pub, hashlib.sha256(p).digest(), r.signatures[0])
    err = refused(PolicyNotMet, client.sign_batch, "bulk", [pay(1), pay(101), pay(1)], TT)
    assert err.reason.startswith("batch item 1: ")
    # all or nothing: the refused batch spent nothing; velocity counts the total outflow,
    # fees included (101 per payload): 707 of the 1010 remain
    assert len(client.sign_batch("bulk", [pay(100, nonce=10 + i) for i in range(7)], TT)) == 7
    refused(PolicyNotMet, client.sign_now, "bulk", pay(1, nonce=99), TT)
    refused(InvalidInput, client.sign_batch, "bulk", [], TT)


def test_audit_log_verifies(client: HsmClient, treasury: str,
                            people: dict[str, Approver]) -> None:
    client.sign_now(treasury, pay(10), TT)
    refused(PolicyNotMet, client.sign_now, treasury, pay(10**6), TT)
    client.create_key("many", "SECP256K1", policy=OPEN_USE)
    client.sign_batch("many", [b"\x01" * 32] * 1000, "UNSPECIFIED", "ECDSA_SECP256K1_DIGEST")
    entries = client.audit_entries(1, 10_000)  # > 1000 entries: two pages remotely
    assert [e.seq for e in entries] == list(range(1, 1007))
    assert entries[0].event["op"] == "hsm.init"
    assert entries[-1].event == {"op": "sign.batch", "label": "many", "size": 1000,
                                 "result": "ok"}
    assert any(e.event.get("result") == "refused" and e.event.get("code") == PolicyNotMet.code
               for e in entries)
    head = client.audit_head()
    checkpoints = client.audit_checkpoints()
    assert head.seq == len(entries) and [c.seq for c in checkpoints] == [256, 512, 768]
    report = verify_log(entries, [head, *checkpoints], client.identity_public_key())
    assert report.ok, report.problems
    assert [e.seq for e in client.audit_entries(2, 3)] == [2, 3, 4]
    assert [e.seq for e in client.audit_entries(990, 1500)] == list(range(990, 1007))
    assert client.audit_entries(len(entries) + 1) == []
    edited = [*entries[:5], type(entries[5])(entries[5].seq, entries[5].at,
                                             {**entries[5].event, "label": "x"},
                                             entries[5].prev, entries[5].hash), *entries[6:]]
    assert not verify_log(edited, [head], client.identity_public_key()).ok


def test_error_details_survive(client: HsmClient, people: dict[str, Approver]) -> None:
    err = refused(PolicyInvalid, client.create_key, "p", "SECP256K1", policy={"ruleUse": "yes"})
    assert err.field == "policy.ruleUse" and err.reason.startswith("policy.ruleUse: ")
    assert str(err).startswith("[hsm.policy_invalid] policy.ruleUse: ")
    client.create_key("bare", "ED25519")
    err = refused(PolicyNotMet, client.sign_now, "bare", b"hello", "UNSPECIFIED", "EDDSA")
    assert err.missing == ("no rule for action 'use' and the policy does not leave it open",)
    refused(InvalidInput, client.begin, "bare", "launch")
    refused(InvalidInput, client.sign_now, "bare", b"x", "UNSPECIFIED", "MD5_WITH_RSA")
    refused(InvalidInput, client.sign_now, "bare", "not bytes", "UNSPECIFIED", "EDDSA")
    refused(KeyNotFound, client.sign_now, "ghost", b"x", "UNSPECIFIED", "EDDSA")
    client.create_key("tt", "SECP256K1", policy=OPEN_USE)
    refused(DecodeError, client.sign_now, "tt", b"{not json", TT)
    refused(DecodeError, client.sign_now, "tt", b"{}", "NO_SUCH_TYPE")


def test_unknown_address_kind_is_invalid_input(client: HsmClient) -> None:
    client.create_key("a", "SECP256K1")
    refused(InvalidInput, client.address, "a", "p2pkh", "mainnet")
    refused(InvalidInput, client.address, "a", "p2wpkh", "moon")


# -- remote only: the wire, attacked ----------------------------------------------------


def _frame(sock: socket.socket, obj: Any) -> None:
    data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    sock.sendall(struct.pack(">I", len(data)) + data)


def _read(sock: socket.socket) -> Any:
    header = _exact(sock, 4)
    return json.loads(_exact(sock, struct.unpack(">I", header)[0]))


def _exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def _raw(server: HsmProcess, secret: bytes | None = None) -> socket.socket:
    """A raw connection, authenticated by hand as the protocol describes."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(15)
    sock.connect(str(server.sock))
    hello = _read(sock)
    assert hello["protocol"] == "ska-hsm-v1"
    nonce = base64.b64decode(hello["nonce"])
    assert len(nonce) == 32
    mac = hmac.new(server.secret if secret is None else secret, b"ska-hsm-auth-v1" + nonce,
                   hashlib.sha256).digest()
    _frame(sock, {"auth": base64.b64encode(mac).decode(),
                  "nonce": base64.b64encode(os.urandom(32)).decode()})
    reply = _read(sock)
    assert "ok" in reply, reply
    return sock


def _closed(sock: socket.socket) -> bool:
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    return True


def test_handlers_cover_every_call() -> None:
    assert set(HANDLERS) == set(CALLS)


def test_remote_wrong_secret_is_refused(server: HsmProcess) -> None:
    err = refused(AuthenticationFailed, server.connect, b"not-the-secret-at-all")
    assert "authentication failed" in err.reason
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(15)
    sock.connect(str(server.sock))
    _read(sock)
    _frame(sock, {"auth": base64.b64encode(b"\0" * 32).decode(),
                  "nonce": base64.b64encode(b"\0" * 32).decode()})
    assert _read(sock)["error"]["code"] == AuthenticationFailed.code
    assert _closed(sock)
    with server.connect() as ok:
        assert ok.list_keys() == []


def test_remote_rate_limits_failed_authentication(tmp_path: Path, sockdir: Path) -> None:
    hsm = Hsm.open(tmp_path / "rl.sqlite", Passphrase(PASSPHRASE, scrypt_n=2**10),
                   so_passphrase=SO, clock=ManualClock())
    address, secret = f"unix:{sockdir / 'rl.sock'}", b"0123456789abcdef0123"
    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=serve, args=(hsm, address, secret),
                              kwargs={"ready": ready, "stop": stop}, daemon=True)
    thread.start()
    try:
        assert ready.wait(10)
        with RemoteHsmClient(address, secret) as good:
            assert good.list_keys() == []
        for _ in range(5):
            refused(AuthenticationFailed, RemoteHsmClient, address, b"wrong-secret-0123456")
        err = refused(AuthenticationFailed, RemoteHsmClient, address, secret)
        assert "too many failed authentications" in err.reason
    finally:
        stop.set()
        thread.join(10)
        hsm.close()
    assert not (sockdir / "rl.sock").exists()


def test_remote_refuses_names_outside_calls(server: HsmProcess) -> None:
    sock = _raw(server)
    for i, name in enumerate(["close", "_state", "__init__", "__class__", "open", "locked",
                              "_store", "audit", "clock", "identity", "get_key ", "GET_KEY",
                              "", 7, None, ["get_key"]]):
        _frame(sock, {"id": i, "call": name, "args": {}})
        reply = _read(sock)
        assert reply["id"] == i and reply["error"]["code"] == InvalidInput.code, reply
        assert "Traceback" not in reply["error"]["reason"]
    _frame(sock, {"id": 99, "call": "list_keys", "args": {}})
    assert _read(sock) == {"id": 99, "ok": []}
    with server.connect() as c:  # the client never sends close to the server
        c.close()
    with server.connect() as c:
        assert c.list_keys() == []


def test_remote_malformed_frames_get_errors(server: HsmProcess) -> None:
    sock = _raw(server)
    bad_frames: list[Any] = [
        b"not json", b"", b"\xff\xfe\x00", b"[" * 200_000, b'{"id": 1, "call": NaN}', [],
        {"id": 1}, {"id": "one", "call": "list_keys", "args": {}},
        {"id": True, "call": "list_keys"}, {"id": -1, "call": "list_keys"},
        {"id": 1, "call": "list_keys", "args": [], "extra": 1},
        {"id": 2, "call": "list_keys", "args": []},
        {"id": 3, "call": "get_key", "args": {"label": 5}},
        {"id": 4, "call": "get_key", "args": {}},
        {"id": 5, "call": "get_key", "args": {"label": "x", "evil": "__import__('os')"}},
        {"id": 6, "call": "sign_now", "args": {"label": "x", "payload": "!!not base64"}},
        {"id": 7, "call": "audit_entries", "args": {"start": 1, "limit": 10**30}},
        {"id": 8, "call": "dry_run", "args": {"label": "x", "elapsed": "soon"}},
        {"id": 9, "call": "execute", "args": {"request_id": "r", "approvals": [{"a": 1}]}},
        {"id": 10, "call": "create_key", "args": {"label": "k", "algorithm": "P256",
                                                  "key_size": True}},
        {"id": 11, "call": "address", "args": {"label": "k", "kind": "nope",
                                               "network": "mainnet"}},
        {"id": 12, "call": "sign_batch", "args": {"label": "k", "payloads": "abc"}},
    ]
    for frame in bad_frames:
        _frame(sock, frame)
        reply = _read(sock)
        assert reply["error"]["code"] == InvalidInput.code, (frame, reply)
        assert set(reply) == {"id", "error"} and "Traceback" not in reply["error"]["reason"]
        if isinstance(frame, dict) and frame.get("id") in range(2, 13):
            assert reply["id"] == frame["id"]
    _frame(sock, {"id": 50, "call": "list_keys"})  # args may be left out
    assert _read(sock) == {"id": 50, "ok": []}

    other = server.connect()  # a second client, connected before the oversized frame
    sock.sendall(struct.pack(">I", MAX_FRAME + 1) + b"{" * 1024)
    reply = _read(sock)
    assert reply["error"]["code"] == InvalidInput.code and _closed(sock)
    assert other.list_keys() == []  # other clients are still served
    other.close()

    pre_auth = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    pre_auth.settimeout(15)
    pre_auth.connect(str(server.sock))
    _read(pre_auth)
    pre_auth.sendall(struct.pack(">I", 5000) + b" " * 5000)  # 4 KiB at most before auth
    assert _read(pre_auth)["error"]["code"] == AuthenticationFailed.code
    assert _closed(pre_auth)
    with server.connect() as c:
        assert c.identity_public_key()


def test_remote_survives_clients_killed_mid_request(server: HsmProcess) -> None:
    # 1. a client process killed halfway through sending a frame
    script = (
        "import socket, struct, sys, time, json, base64, hmac, hashlib, os\n"
        "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
        "def rd():\n"
        "    n = struct.unpack('>I', s.recv(4, socket.MSG_WAITALL))[0]\n"
        "    return json.loads(s.recv(n, socket.MSG_WAITALL))\n"
        "nonce = base64.b64decode(rd()['nonce'])\n"
        "mac = hmac.new(sys.argv[2].encode(), b'ska-hsm-auth-v1' + nonce, hashlib.sha256)\n"
        "a = {'auth': base64.b64encode(mac.digest()).decode(),\n"
        "     'nonce': base64.b64encode(os.urandom(32)).decode()}\n"
        "d = json.dumps(a).encode(); s.sendall(struct.pack('>I', len(d)) + d); rd()\n"
        "s.sendall(struct.pack('>I', 1000) + b'{\"id\": 1, '); print('sent', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(server.sock),
                             server.secret.decode()], stdout=subprocess.PIPE,
                            preexec_fn=_die_with_parent)  # noqa: PLW1509 - see remote_kit._die_with_parent
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"sent\n"
    finally:
        proc.kill()
        proc.wait(5)
    # 2. a client gone (connection reset) before the HSM answers a slow request
    sock = _raw(server)
    _frame(sock, {"id": 1, "call": "create_key", "args": {"label": "gone", "algorithm": "RSA",
                                                          "key_size": 3072}})
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    # 3. the RemoteHsmClient itself, its socket yanked from under it
    c = server.connect()
    c._sock.close()  # type: ignore[union-attr]
    assert c.list_keys() in ([], ["gone"])  # reconnects once, transparently
    deadline = time.monotonic() + 30
    while "gone" not in c.list_keys() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert c.get_key("gone").key_size == 3072  # the request was carried out, once
    assert server.proc.poll() is None
    c.close()
    refused(TransportError, c.list_keys)


def test_remote_client_reconnects_after_server_restart(tmp_path: Path, sockdir: Path,
                                                       time_control: TimeControl) -> None:
    first = HsmProcess.start(tmp_path, sockdir, time_control)
    c = RemoteHsmClient(first.address, first.secret)
    try:
        c.create_key("persist", "ED25519")
        first.stop()
        refused(TransportError, c.list_keys)  # nobody there
        second = HsmProcess.start(tmp_path, sockdir, time_control)
        try:
            assert c.list_keys() == ["persist"]  # same store, new connection
            audit = c.audit_entries()
            assert verify_log(audit, [c.audit_head()], c.identity_public_key()).ok
        finally:
            second.stop()
    finally:
        c.close()
        first.stop()


def test_remote_addresses_are_checked(tmp_path: Path) -> None:
    hsm = Hsm.open(tmp_path / "a.sqlite", Passphrase(PASSPHRASE, scrypt_n=2**10),
                   so_passphrase=SO, clock=ManualClock())
    try:
        for address in ["tcp:10.0.0.1:9000", "tcp:0.0.0.0:9000", "tcp:example.com:80",
                        "tcp:[2001:db8::1]:80", "udp:127.0.0.1:1", "unix:", "tcp:127.0.0.1:x"]:
            refused(InvalidInput, serve, hsm, address, b"0123456789abcdef")
            refused(InvalidInput, RemoteHsmClient, address, b"0123456789abcdef")
        refused(InvalidInput, serve, hsm, f"unix:{tmp_path}/s", b"short")
        refused(TransportError, RemoteHsmClient, "unix:/nonexistent/hsm.sock", b"x" * 16)
        with socket.socket() as probe:  # a free loopback port for a TCP round trip
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        stop, ready = threading.Event(), threading.Event()
        thread = threading.Thread(target=serve, args=(hsm, f"tcp:127.0.0.1:{port}",
                                                      b"0123456789abcdef"),
                                  kwargs={"ready": ready, "stop": stop}, daemon=True)
        thread.start()
        try:
            assert ready.wait(10)
            with RemoteHsmClient(f"tcp:localhost:{port}", b"0123456789abcdef") as c:
                assert c.identity_public_key() == hsm.identity_public_key()
        finally:
            stop.set()
            thread.join(10)
    finally:
        hsm.close()


def test_remote_main_help_and_refusals(capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--clock-file" in text and "--scrypt-n" in text and text.count("TEST ONLY") >= 2
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 32)
    secret.chmod(0o644)
    args = ["--store", str(tmp_path / "s.sqlite"), "--listen", f"unix:{tmp_path}/x.sock",
            "--secret-file", str(secret), "--scrypt-n", "1024"]
    monkeypatch.delenv("SKA_HSM_PASSPHRASE", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2 and "SKA_HSM_PASSPHRASE" in capsys.readouterr().err
    monkeypatch.setenv("SKA_HSM_PASSPHRASE", PASSPHRASE)
    assert main(args) == 1  # a world-readable secret file
    assert "chmod 600" in capsys.readouterr().err
    monkeypatch.setenv("SKA_HSM_PASSPHRASE", PASSPHRASE)
    secret.chmod(0o600)
    monkeypatch.delenv("SKA_HSM_SO_PASSPHRASE", raising=False)
    assert main(args) == 1  # a new store needs the security officer
    assert "security officer" in capsys.readouterr().err
