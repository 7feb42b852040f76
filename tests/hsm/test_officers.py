"""Security officers by quorum (issue 15): officer requests are refused when forged,
replayed, signed by a non-officer, below the threshold, signed twice by one officer,
expired, or signed for other arguments - in process and through the HSM process - and
every refusal is audited. The passphrase calls are the single-officer demo mode."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hsm_emulator import Hsm, ManualClock
from hsm_emulator.client import HsmClient
from hsm_emulator.errors import (
    ApprovalRefused,
    AuthenticationFailed,
    DuplicateApprover,
    HsmError,
    InvalidInput,
    PolicyNotMet,
    RequestClosed,
    RequestExpired,
)
from hsm_emulator.flow import Approval
from hsm_emulator.officers import OFFICER_TTL
from tests.conftest import SO, TEST_PASSPHRASE
from tests.officer_kit import Officer, ceremony, officers
from tests.remote_kit import HsmProcess, TimeControl, short_dir

ATTRS = {"destroyable": True, "exportable": True}


@dataclass
class Partition:
    client: HsmClient
    officers: list[Officer]
    advance: Any  #: seconds -> None: moves the HSM's clock


@pytest.fixture(params=["in-process", "hsm-process"])
def partition(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Partition]:
    """An HSM whose first officers are three keys acting 2 of 3, with two keys."""
    crew = officers(3)
    creds = [o.credential for o in crew]
    if request.param == "in-process":
        clock = ManualClock(1_800_000_000.0)
        hsm = Hsm.open(tmp_path / "hsm.sqlite", TEST_PASSPHRASE, officers=creds,
                       officer_threshold=2, allow_export=True, clock=clock)
        client: HsmClient = hsm
        _keys(client)
        yield Partition(client, crew, clock.advance)
        hsm.close()
        return
    time, sockdir = TimeControl(), short_dir()
    server = HsmProcess.start(tmp_path, sockdir, time, officers=creds, officer_threshold=2)
    client = server.connect()
    try:
        _keys(client)
        yield Partition(client, crew, time.advance)
    finally:
        client.close()
        server.stop()
        shutil.rmtree(sockdir, ignore_errors=True)


def _keys(client: HsmClient) -> None:
    for label in ("a", "b"):
        client.create_key(label, "SECP256K1", attributes=ATTRS,
                          policy={"openActions": ["use"]})


def refused(exc: type[HsmError], fn: Any, *args: Any) -> HsmError:
    with pytest.raises(HsmError) as err:
        fn(*args)
    assert type(err.value) is exc, f"{type(err.value).__name__}: {err.value}"
    return err.value


def _last(client: HsmClient) -> dict[str, Any]:
    return client.audit_entries(1, 10_000)[-1].event


def test_a_quorum_of_officers_invalidates_restores_destroys_and_exports(
        partition: Partition) -> None:
    c, (o1, o2, o3) = partition.client, partition.officers
    assert c.officer_set().threshold == 2 and len(c.officer_set().officers) == 3
    assert ceremony(c, [o1, o3], "invalidate_key", {"label": "a"}).summary["key"]["invalidated"]
    assert _last(c)["op"] == "key.invalidate" and _last(c)["result"] == "ok"
    assert not ceremony(c, [o2, o3], "restore_key", {"label": "a"}).summary["key"][
        "invalidated"]
    secret = ceremony(c, [o1, o2], "export_key", {"label": "a"}).secret["privateKey"]
    assert len(bytes.fromhex(secret)) == 32
    assert "privateKey" not in str(_last(c))  # the secret is handed out, never logged
    ceremony(c, [o1, o2], "invalidate_key", {"label": "b"})
    assert ceremony(c, [o3, o1], "destroy_key", {"label": "b"}).summary["key"]["invalidated"]


def test_officer_challenges_are_the_hsms_and_name_action_arguments_and_expiry(
        partition: Partition) -> None:
    c, o1 = partition.client, partition.officers[0]
    challenge = c.officer_begin("destroy_key", {"label": "a"})
    body = o1.sign(challenge, c.identity_public_key()) and challenge.body
    assert body["officerAction"] == "destroy_key" and body["arguments"] == {"label": "a"}
    assert body["expiresAt"] == body["hsmTime"] + OFFICER_TTL and body["epoch"] == 0
    assert c.officer_challenge(challenge.request_id) == challenge


def test_below_the_threshold_is_refused(partition: Partition) -> None:
    c, o1 = partition.client, partition.officers[0]
    ch = c.officer_begin("invalidate_key", {"label": "a"})
    refused(PolicyNotMet, c.officer_execute, ch.request_id, [o1.sign(ch)])
    refused(PolicyNotMet, c.officer_execute, ch.request_id, [])
    assert _last(c)["result"] == "refused" and _last(c)["code"] == "hsm.policy_not_met"
    assert not c.get_key("a").invalidated


def test_a_forged_signature_is_refused(partition: Partition) -> None:
    c, (o1, o2, _) = partition.client, partition.officers
    ch = c.officer_begin("invalidate_key", {"label": "a"})
    forger = Officer.ed25519("forger")
    forged = Approval("public_key", o2.value, forger.sign(ch).signature)
    err = refused(ApprovalRefused, c.officer_execute, ch.request_id, [o1.sign(ch), forged])
    assert "does not verify" in err.reason
    assert _last(c)["code"] == "hsm.approval_refused"
    assert not c.get_key("a").invalidated


def test_a_non_officer_is_refused(partition: Partition) -> None:
    c, o1 = partition.client, partition.officers[0]
    ch = c.officer_begin("invalidate_key", {"label": "a"})
    outsider = Officer.p256("outsider")
    err = refused(ApprovalRefused, c.officer_execute, ch.request_id,
                  [o1.sign(ch), outsider.sign(ch)])
    assert "not an officer" in err.reason


def test_one_officer_twice_is_refused(partition: Partition) -> None:
    c, o1 = partition.client, partition.officers[0]
    ch = c.officer_begin("invalidate_key", {"label": "a"})
    refused(DuplicateApprover, c.officer_execute, ch.request_id, [o1.sign(ch), o1.sign(ch)])
    assert _last(c)["code"] == "hsm.duplicate_approver"


def test_a_replayed_request_is_refused(partition: Partition) -> None:
    c, (o1, o2, _) = partition.client, partition.officers
    ch = c.officer_begin("invalidate_key", {"label": "a"})
    signed = [o1.sign(ch), o2.sign(ch)]
    c.officer_execute(ch.request_id, signed)
    ceremony(c, [o1, o2], "restore_key", {"label": "a"})
    refused(RequestClosed, c.officer_execute, ch.request_id, signed)  # once only
    assert not c.get_key("a").invalidated


def test_an_expired_request_is_refused(partition: Partition) -> None:
    c, (o1, o2, _) = partition.client, partition.officers
    ch = c.officer_begin("invalidate_key", {"label": "a"})
    partition.advance(OFFICER_TTL + 1)
    refused(RequestExpired, c.officer_execute, ch.request_id, [o1.sign(ch), o2.sign(ch)])
    assert _last(c)["code"] == "hsm.request_expired"


def test_signatures_for_one_key_do_not_act_on_another(partition: Partition) -> None:
    """The challenge to destroy key A, signed, presented for the request on key B."""
    c, (o1, o2, _) = partition.client, partition.officers
    ceremony(c, [o1, o2], "invalidate_key", {"label": "a"})
    ceremony(c, [o1, o2], "invalidate_key", {"label": "b"})
    for_a = c.officer_begin("destroy_key", {"label": "a"})
    for_b = c.officer_begin("destroy_key", {"label": "b"})
    refused(ApprovalRefused, c.officer_execute, for_b.request_id,
            [o1.sign(for_a), o2.sign(for_a)])
    assert not ceremony(c, [o1, o2], "restore_key", {"label": "b"}).summary["key"][
        "invalidated"]  # b was not destroyed: it comes back


def test_changing_the_officers_needs_the_old_quorum_and_closes_open_requests(
        partition: Partition) -> None:
    c, (o1, o2, o3) = partition.client, partition.officers
    pending = c.officer_begin("invalidate_key", {"label": "a"})
    newcomer = Officer.ed25519("officer-4")
    ceremony(c, [o1, o2], "set_officers",
             {"officers": [o3.credential, newcomer.credential], "threshold": 2})
    refused(RequestClosed, c.officer_execute, pending.request_id,
            [o3.sign(pending), newcomer.sign(pending)])
    with pytest.raises(ApprovalRefused, match="not an officer"):
        ceremony(c, [o1, o3], "invalidate_key", {"label": "a"})
    ceremony(c, [newcomer, o3], "invalidate_key", {"label": "a"})


def test_malformed_requests_are_refused_before_a_challenge(partition: Partition) -> None:
    c, o1 = partition.client, partition.officers[0]
    refused(InvalidInput, c.officer_begin, "format_disk", {})
    refused(InvalidInput, c.officer_begin, "destroy_key", {"label": "a", "and": "more"})
    refused(InvalidInput, c.officer_begin, "set_officers",
            {"officers": [o1.credential, o1.credential], "threshold": 1})
    refused(InvalidInput, c.officer_begin, "set_officers",
            {"officers": [o1.credential], "threshold": 2})


def test_a_passphrase_does_not_stand_for_a_quorum(partition: Partition) -> None:
    c = partition.client
    refused(AuthenticationFailed, c.invalidate_key, "a", SO)
    assert _last(c)["op"] == "officer.passphrase" and _last(c)["result"] == "refused"


def test_single_officer_demo_mode(hsm: Hsm) -> None:
    """Initialised with an SO passphrase: one officer, derived from it; the passphrase
    calls run the officer request path (challenge, signature, execute)."""
    hsm.create_key("k", "SECP256K1", attributes={"destroyable": True})
    officer_set = hsm.officer_set()
    assert officer_set.demo and officer_set.threshold == 1 and len(officer_set.officers) == 1
    assert hsm.invalidate_key("k", SO).invalidated
    ops = [e.event["op"] for e in hsm.audit_entries(1, 100)][-3:]
    assert ops == ["officer.passphrase", "officer.begin", "key.invalidate"]
    refused(AuthenticationFailed, hsm.restore_key, "k", "not the officer")
    assert hsm.restore_key("k", SO).invalidated is False


def test_a_new_hsm_needs_its_officers(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="officers"):
        Hsm.open(tmp_path / "a.sqlite", TEST_PASSPHRASE)
    crew = officers(2)
    with pytest.raises(InvalidInput, match="not both"):
        Hsm.open(tmp_path / "b.sqlite", TEST_PASSPHRASE, so_passphrase=SO,
                 officers=[o.credential for o in crew], officer_threshold=1)
    with pytest.raises(InvalidInput, match="threshold"):
        Hsm.open(tmp_path / "c.sqlite", TEST_PASSPHRASE,
                 officers=[o.credential for o in crew], officer_threshold=3)
