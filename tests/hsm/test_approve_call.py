"""``approve``: one approval checked and, if with it the policy is met now, the request
executed in the same transaction - in process and over the socket, refusals the same
error class in both. What the two calls it replaces did must all still happen: the
approval verified over the HSM's own challenge, each approver counted once, a rebuilt
payload bound to the approved intent and fee cap, velocity counted, and audit entries
for the approval and for the execution."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import coincurve
import pytest

from hsm_emulator import Action, Hsm, Passphrase
from hsm_emulator.client import HsmClient, local_client
from hsm_emulator.credentials import parse_credential
from hsm_emulator.errors import ApprovalRefused, IntentMismatch, PolicyNotMet, RequestClosed
from hsm_emulator.flow import Approval
from tests.conftest import SO
from tests.helpers import Approver, tiered_policy
from tests.hsm.test_conformance import PASSPHRASE, HsmProcess, TimeControl, pay, refused

TT = "TEST_TRANSFER"


@pytest.fixture
def time_control() -> TimeControl:
    return TimeControl()


@pytest.fixture
def advance(time_control: TimeControl) -> Callable[[float], None]:
    return time_control.advance


@pytest.fixture(params=["local", "remote"])
def client(request: pytest.FixtureRequest, tmp_path: Path,
           time_control: TimeControl) -> Iterator[HsmClient]:
    if request.param == "local":
        hsm = Hsm.open(tmp_path / "hsm.sqlite", Passphrase(PASSPHRASE, scrypt_n=2**10),
                       so_passphrase=SO, clock=time_control.clock)
        yield local_client(hsm)
        hsm.close()
        return
    sockdir = Path(tempfile.mkdtemp(prefix="ska-", dir="/tmp" if os.path.isdir("/tmp")
                                    else None))
    server = HsmProcess.start(tmp_path, sockdir, time_control)
    try:
        remote = server.connect()
        yield remote
        remote.close()
        assert server.proc.poll() is None, "the HSM process died during the test"
    finally:
        server.stop()
        shutil.rmtree(sockdir, ignore_errors=True)


@pytest.fixture
def treasury(client: HsmClient, people: dict[str, Approver]) -> str:
    """Small <= 100 auto, medium <= 5000 by 2 of 3 traders, large: 2 traders and 1 of 2
    compliance after a 24 h hold; velocity limits none (the ledger still counts)."""
    client.create_key("treasury", "SECP256K1", policy=tiered_policy(
        [people["t1"], people["t2"], people["t3"]], [people["c1"], people["c2"]]))
    return "treasury"


def events_since(client: HsmClient, seq: int) -> list[dict[str, object]]:
    return [e.event for e in client.audit_entries(seq + 1, 100)]


def fingerprint(who: Approver) -> str:
    return parse_credential("public_key", who.spki_b64).fingerprint


def head(client: HsmClient) -> int:
    return client.audit_head().seq


def signed_by(client: HsmClient, label: str, payload: bytes, signature: bytes) -> bool:
    digest = hashlib.sha256(payload).digest()
    recovered = coincurve.PublicKey.from_signature_and_message(signature, digest, hasher=None)
    return recovered.format() == client.get_key(label).public_key


def test_the_last_approval_executes_in_the_same_call(
        client: HsmClient, treasury: str, people: dict[str, Approver]) -> None:
    t1, t2 = people["t1"], people["t2"]
    ch = client.begin(treasury, Action.USE, pay(1000), TT)
    seq = head(client)
    first = client.approve(ch.request_id, t1.approve(ch.envelope))
    assert first.approver == t1.spki_b64 and first.execution is None  # one of two: checked
    assert [(e["op"], e["result"]) for e in events_since(client, seq)] == [
        ("approval.check", "ok")]
    assert not client.request_status(ch.request_id, [t1.approve(ch.envelope)]).released

    seq = head(client)
    last = client.approve(ch.request_id, t2.approve(ch.envelope), [t1.approve(ch.envelope)])
    done = last.execution
    assert last.approver == t2.spki_b64 and done is not None
    assert done.token == "medium" and set(done.approved_by) == {t1.spki_b64, t2.spki_b64}
    assert signed_by(client, treasury, pay(1000), done.signatures[0])
    check, execute = events_since(client, seq)
    assert (check["op"], check["result"]) == ("approval.check", "ok")
    assert (execute["op"], execute["result"], execute["token"]) == (
        "request.execute", "ok", "medium")
    assert check["approver"] == fingerprint(t2)
    assert execute["approvers"] == sorted([fingerprint(t1), fingerprint(t2)])
    assert client.request_result(ch.request_id) == done  # a crashed broker finds it here
    # executed once: neither call releases it again, and its status is closed
    refused(RequestClosed, client.approve, ch.request_id, people["t3"].approve(ch.envelope),
            [t1.approve(ch.envelope)])
    refused(RequestClosed, client.execute, ch.request_id, [t1.approve(ch.envelope),
                                                           t2.approve(ch.envelope)])
    refused(RequestClosed, client.request_status, ch.request_id)


def test_a_forged_approval_is_refused_and_changes_nothing(
        client: HsmClient, treasury: str, people: dict[str, Approver]) -> None:
    t1, t2 = people["t1"], people["t2"]
    ch = client.begin(treasury, Action.USE, pay(1000), TT)
    other = client.begin(treasury, Action.USE, pay(1000, nonce=1), TT)
    ok = [t1.approve(ch.envelope)]
    forgeries = [
        Approval("public_key", t2.spki_b64, people["x"].sign(ch.envelope)),  # wrong key
        t2.approve(other.envelope),  # another request's challenge
        people["x"].approve(ch.envelope),  # in no group
        Approval("public_key", t2.spki_b64, t2.sign(ch.envelope), "MD5"),
    ]
    for forged in forgeries:
        seq = head(client)
        refused(ApprovalRefused, client.approve, ch.request_id, forged, ok)
        (entry,) = events_since(client, seq)  # the refusal, audited; nothing else
        assert (entry["op"], entry["result"]) == ("approval.check", "refused")
    # a forged approval among the others is refused the same way
    refused(ApprovalRefused, client.approve, ch.request_id, t2.approve(ch.envelope),
            [forgeries[0]])
    assert client.approve(ch.request_id, t2.approve(ch.envelope), ok).execution is not None


def test_an_approver_counts_once(client: HsmClient, treasury: str,
                                 people: dict[str, Approver]) -> None:
    t1 = people["t1"]
    ch = client.begin(treasury, Action.USE, pay(1000), TT)
    again = t1.approve(ch.envelope)  # a second signature by the same key: still t1
    err = refused(ApprovalRefused, client.approve, ch.request_id, again,
                  [t1.approve(ch.envelope)])
    assert "counts once" in err.reason
    # repeated among the others, t1 still counts once: with a compliance officer (in
    # no trader group) that is one trader of the two medium needs
    outcome = client.approve(ch.request_id, people["c1"].approve(ch.envelope),
                             [t1.approve(ch.envelope), t1.approve(ch.envelope)])
    assert outcome.execution is None
    refused(RequestClosed, client.request_result, ch.request_id)  # still open


def test_not_yet_met_is_an_approval_checked(client: HsmClient, treasury: str,
                                            people: dict[str, Approver]) -> None:
    """One of two traders: checked and audited as ``check_approval`` would, the request
    open; a rebuilt payload is not even read (nothing is signed)."""
    t1 = people["t1"]
    ch = client.begin(treasury, Action.USE, pay(1000), TT)
    seq = head(client)
    outcome = client.approve(ch.request_id, t1.approve(ch.envelope),
                             payload=pay(1000, dest="mallory"))
    assert outcome.execution is None and outcome.approver == t1.spki_b64
    assert [e["op"] for e in events_since(client, seq)] == ["approval.check"]
    assert client.check_approval(ch.request_id, t1.approve(ch.envelope)) == outcome.approver
    refused(RequestClosed, client.request_result, ch.request_id)  # open, not executed


def test_met_but_the_hold_is_not_over(client: HsmClient, treasury: str,
                                      advance: Callable[[float], None],
                                      people: dict[str, Approver]) -> None:
    t1, t2, c1, c2 = people["t1"], people["t2"], people["c1"], people["c2"]
    ch = client.begin(treasury, Action.USE, pay(10**6), TT)  # large: 24 h hold
    traders = [t1.approve(ch.envelope), t2.approve(ch.envelope)]
    held = client.approve(ch.request_id, c1.approve(ch.envelope), traders)
    assert held.execution is None  # every group met, the hold is not over
    advance(86399)
    assert client.approve(ch.request_id, c2.approve(ch.envelope), traders).execution is None
    advance(1)
    done = client.approve(ch.request_id, c2.approve(ch.envelope), traders).execution
    assert done is not None and done.token == "large"


def test_a_rebuilt_payload_must_match_the_approved_intent(
        client: HsmClient, treasury: str, people: dict[str, Approver]) -> None:
    t1, t2 = people["t1"], people["t2"]
    ch = client.begin(treasury, Action.USE, pay(1000, fee=5), TT, fee_cap=10)
    first = [t1.approve(ch.envelope)]
    for bad in (pay(4000, fee=5), pay(1000, fee=5, dest="mallory"), pay(1000, fee=11)):
        seq = head(client)
        refused(IntentMismatch, client.approve, ch.request_id, t2.approve(ch.envelope), first,
                payload=bad)
        check, execute = events_since(client, seq)  # the approval was good; the release not
        assert (check["op"], check["result"]) == ("approval.check", "ok")
        assert (execute["op"], execute["result"], execute["code"]) == (
            "request.execute", "refused", IntentMismatch.code)
    bumped = pay(1000, fee=9)
    done = client.approve(ch.request_id, t2.approve(ch.envelope), first, payload=bumped)
    assert done.execution is not None
    assert signed_by(client, treasury, bumped, done.execution.signatures[0])


def test_a_rebuilt_fee_that_breaks_the_token_is_not_signed(
        client: HsmClient, people: dict[str, Approver]) -> None:
    """Met on the approved intent, but the rebuilt payload's fee (within the request's
    cap) is over the token's maxFee: evaluated again on what is signed, refused."""
    client.create_key("tight", "SECP256K1", policy=tiered_policy(
        [people["t1"], people["t2"]], [people["c1"]], max_fee=8))
    ch = client.begin("tight", Action.USE, pay(1000, fee=5), TT, fee_cap=20)
    refused(PolicyNotMet, client.approve, ch.request_id, people["t2"].approve(ch.envelope),
            [people["t1"].approve(ch.envelope)], payload=pay(1000, fee=9))
    assert client.approve(ch.request_id, people["t2"].approve(ch.envelope),
                          [people["t1"].approve(ch.envelope)]).execution is not None


def test_velocity_is_counted_by_the_release(client: HsmClient, people: dict[str, Approver],
                                            ) -> None:
    """What ``approve`` releases enters the key's velocity window, as ``execute``'s does:
    a second release that would pass the limit is refused."""
    policy = tiered_policy([people["t1"], people["t2"]], [people["c1"]])
    medium = policy["ruleUse"]["tokens"][1]
    medium["conditions"]["velocity"] = [{"asset": "TST", "max": 2000, "windowSeconds": 3600}]
    client.create_key("capped", "SECP256K1", policy=policy)
    t1, t2 = people["t1"], people["t2"]
    chs = [client.begin("capped", Action.USE, pay(1500, nonce=n), TT) for n in (1, 2)]
    assert client.approve(chs[0].request_id, t2.approve(chs[0].envelope),
                          [t1.approve(chs[0].envelope)]).execution is not None
    outcome = client.approve(chs[1].request_id, t2.approve(chs[1].envelope),
                             [t1.approve(chs[1].envelope)])
    assert outcome.execution is None  # over the window: an approval, not a release
    assert any("velocity" in m for m in client.request_status(
        chs[1].request_id, [t1.approve(chs[1].envelope), t2.approve(chs[1].envelope)]
    ).missing())


def test_a_block_request_approved_last_blocks_the_key(
        client: HsmClient, treasury: str, people: dict[str, Approver]) -> None:
    """Not only signing: any action released by its last approval is performed (one
    admin blocks)."""
    ch = client.begin(treasury, Action.BLOCK)
    outcome = client.approve(ch.request_id, people["t3"].approve(ch.envelope))
    assert outcome.execution is not None and outcome.execution.action is Action.BLOCK
    assert client.get_key(treasury).blocked
