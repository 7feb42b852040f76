"""Address lists: allowlists uploaded in chunks and bound to a policy by digest
(:mod:`hsm_emulator.address_lists`), on the in-process HSM; the 100,000-address upload
through the HSM process is in ``test_address_lists_remote.py``."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from custody.approver_diff import policy_diff
from hsm_emulator import Action, Hsm, ManualClock, decoders
from hsm_emulator.address_lists import MAX_CHUNK, MAX_OPEN_UPLOADS, list_digest
from hsm_emulator.decoders import transfer_payload
from hsm_emulator.errors import InvalidInput, PolicyInvalid, PolicyNotMet, TamperDetected
from hsm_emulator.policy import parse_policy
from tests.conftest import SO, TEST_PASSPHRASE

FEE = {"asset": "TST", "max": 10}


def _open(path: Path, clock: ManualClock) -> Hsm:
    return Hsm.open(path, TEST_PASSPHRASE, so_passphrase=SO, clock=clock,
                    decoders=decoders.test_registry())


def _policy(dests: Any) -> dict[str, Any]:
    auto = {"name": "auto", "timelock": 0, "timeout": 0, "groups": [], "conditions": {
        "amounts": [{"asset": "TST", "max": 100}], "maxFee": [FEE], "destinations": dests}}
    return {"ruleUse": {"tokens": [auto]}, "openActions": ["modify"]}


def _upload(hsm: Hsm, addresses: list[str], chunk: int = MAX_CHUNK) -> str:
    upload = hsm.address_list_begin().upload_id
    for i in range(0, len(addresses), chunk):
        hsm.address_list_add(upload, i // chunk, addresses[i:i + chunk])
    digest = hsm.address_list_finish(upload).digest
    assert digest is not None
    return digest


def _pay(hsm: Hsm, dest: str, nonce: int) -> None:
    hsm.sign_now("k", transfer_payload("TST", 1, dest, 1, nonce=nonce), "TEST_TRANSFER")


def _state(hsm: Hsm) -> list[tuple[Any, ...]]:
    """Every sealed record but the audit's moving parts: what a refusal must not change."""
    return hsm.boundary.store.execute(
        "SELECT kind, id, body FROM records WHERE kind LIKE 'addrlist%' ORDER BY kind, id")


def test_the_digest_is_of_the_sorted_normalised_set_whatever_the_order() -> None:
    # the documented canonical form, computed here independently of the HSM's code
    expected = hashlib.sha256(b"ska-address-list-v1\n" + b"0xabcdef\n" + b"A1\n" + b"b2\n"
                              ).hexdigest()
    assert list_digest(["b2", "A1", "0xabcdef"]) == expected
    assert list_digest(["0xabcdef", "b2", "A1", "b2"]) == expected


def test_upload_order_and_chunking_do_not_change_the_digest(tmp_path: Path,
                                                            clock: ManualClock) -> None:
    addrs = [f"addr-{i}" for i in range(120)] + ["0xAbCdEf"]
    hsm = _open(tmp_path / "h.sqlite", clock)
    one = _upload(hsm, addrs, chunk=50)
    two = _upload(hsm, list(reversed(addrs)) + addrs[:10], chunk=7)  # repeats count once
    assert one == two == list_digest([a.lower() if a.startswith("0x") else a for a in addrs])
    info = hsm.address_list_info(one)
    assert info.size == len(addrs) and info.finished
    hsm.close()


def test_listed_address_signs_unlisted_is_refused_and_hex_compares_case_insensitively(
        tmp_path: Path, clock: ManualClock) -> None:
    hsm = _open(tmp_path / "h.sqlite", clock)
    digest = _upload(hsm, [f"addr-{i}" for i in range(12_000)] + ["0xAbCd"])
    hsm.create_key("k", "SECP256K1", policy=_policy({"list": digest}))
    assert hsm.get_key("k").policy["ruleUse"]["tokens"][0]["conditions"]["destinations"] == {
        "list": digest}
    _pay(hsm, "addr-11999", 1)
    _pay(hsm, "0xABCD", 2)
    with pytest.raises(PolicyNotMet, match="not on the allowlist"):
        _pay(hsm, "addr-12000", 3)
    hsm.close()
    hsm = _open(tmp_path / "h.sqlite", clock)  # reloaded from the store after a restart
    _pay(hsm, "addr-0", 4)
    with pytest.raises(PolicyNotMet, match="not on the allowlist"):
        _pay(hsm, "elsewhere", 5)
    hsm.close()


def test_a_list_not_held_completely_is_refused_in_a_policy(tmp_path: Path,
                                                           clock: ManualClock) -> None:
    hsm = _open(tmp_path / "h.sqlite", clock)
    addrs = [f"addr-{i}" for i in range(10)]
    upload = hsm.address_list_begin().upload_id
    hsm.address_list_add(upload, 0, addrs[:5])  # unfinished: half of it
    with pytest.raises(PolicyInvalid, match="holds no finished address list"):
        hsm.create_key("k", "SECP256K1", policy=_policy({"list": list_digest(addrs)}))
    with pytest.raises(PolicyInvalid, match=r"destinations\.list"):
        hsm.create_key("k", "SECP256K1", policy=_policy({"list": "AB" * 32}))
    with pytest.raises(PolicyInvalid, match="unknown field"):
        hsm.create_key("k", "SECP256K1", policy=_policy({"list": "ab" * 32, "size": 3}))
    hsm.create_key("k", "SECP256K1", policy=_policy(["addr-1"]))
    with pytest.raises(PolicyInvalid, match="holds no finished address list"):
        hsm.begin("k", Action.MODIFY, new_policy=_policy({"list": list_digest(addrs)}))
    assert "k" in hsm.list_keys()
    hsm.close()


def test_a_list_parsed_outside_the_hsm_fails_closed() -> None:
    """The broker parses policies without the lists: a reference there never reads as
    "no allowlist"."""
    from hsm_emulator.evaluate import condition_failures
    from hsm_emulator.model import Intent

    cond = parse_policy(_policy({"list": "ab" * 32})).rules[0][1].tokens[0].conditions
    assert not cond.empty and cond.destinations is None
    intent = Intent.from_json({"chain": "test", "network": "", "kind": "transfer", "transfers": [
        {"asset": "TST", "amount": "1", "destination": "d"}], "fee": "0", "feeAsset": "TST"})
    assert any("not loaded here" in f for f in condition_failures(cond, intent, 0.0,
                                                                  lambda *a: 0))


@pytest.mark.parametrize("hostile", [
    pytest.param(lambda h, up: h.address_list_add(up, 2, ["late"]), id="chunk-out-of-order"),
    pytest.param(lambda h, up: h.address_list_add(up, 1, ["a b"]), id="space-in-address"),
    pytest.param(lambda h, up: h.address_list_add(up, 1, [""]), id="empty-address"),
    pytest.param(lambda h, up: h.address_list_add(up, 1, ["x" * 257]), id="long-address"),
    pytest.param(lambda h, up: h.address_list_add(up, 1, ["ok", 7]), id="not-a-string"),
    pytest.param(lambda h, up: h.address_list_add(up, 1, ["é"]), id="not-ascii"),
    pytest.param(lambda h, up: h.address_list_add(up, 1, []), id="empty-chunk"),
    pytest.param(lambda h, up: h.address_list_add(
        up, 1, [f"a{i}" for i in range(MAX_CHUNK + 1)]), id="oversize-chunk"),
    pytest.param(lambda h, up: h.address_list_add("0" * 32, 0, ["a"]), id="unknown-upload"),
    pytest.param(lambda h, up: h.address_list_add("../key/k", 0, ["a"]), id="bad-upload-id"),
    pytest.param(lambda h, up: h.address_list_add(up, 0, ["changed"]), id="chunk-rewritten"),
    pytest.param(lambda h, up: h.address_list_add(up, True, ["a"]), id="bool-index"),
])
def test_a_hostile_chunk_is_refused_with_no_state_change(tmp_path: Path, clock: ManualClock,
                                                         hostile: Any) -> None:
    hsm = _open(tmp_path / "h.sqlite", clock)
    up = hsm.address_list_begin().upload_id
    hsm.address_list_add(up, 0, ["first", "second"])
    before, counter = _state(hsm), hsm.boundary.store.counter_value
    with pytest.raises(InvalidInput):
        hostile(hsm, up)
    assert _state(hsm) == before
    assert hsm.audit_entries(1, 100)[-1].event["result"] == "refused"
    assert hsm.address_list_info(up).size == 2
    assert hsm.boundary.store.counter_value.count == counter.count + 1  # the refusal's audit
    hsm.close()


def test_a_chunk_sent_again_changes_nothing_and_a_finished_list_never_changes(
        tmp_path: Path, clock: ManualClock) -> None:
    hsm = _open(tmp_path / "h.sqlite", clock)
    up = hsm.address_list_begin().upload_id
    hsm.address_list_add(up, 0, ["a", "b"])
    assert hsm.address_list_add(up, 0, ["b", "a", "a"]).chunks == 1  # a retry: same set
    done = hsm.address_list_finish(up)
    assert hsm.address_list_finish(up) == done  # a retried finish: the same list
    with pytest.raises(InvalidInput, match="finished"):
        hsm.address_list_add(up, 1, ["c"])
    with pytest.raises(InvalidInput, match="finished"):
        hsm.address_list_discard(up)
    hsm.close()


def test_unfinished_uploads_are_bounded_and_discard_frees_one(tmp_path: Path,
                                                              clock: ManualClock) -> None:
    hsm = _open(tmp_path / "h.sqlite", clock)
    ups = [hsm.address_list_begin().upload_id for _ in range(MAX_OPEN_UPLOADS)]
    hsm.address_list_add(ups[0], 0, ["a"])
    with pytest.raises(InvalidInput, match="unfinished"):
        hsm.address_list_begin()
    hsm.address_list_discard(ups[0])
    with pytest.raises(InvalidInput, match="no such"):
        hsm.address_list_info(ups[0])
    assert not [r for r in _state(hsm) if r[0] == "addrlist-chunk"]
    hsm.address_list_begin()
    hsm.close()


@pytest.mark.parametrize("kind", ["addrlist-chunk", "addrlist"])
def test_a_tampered_list_record_stops_the_hsm_opening(tmp_path: Path, clock: ManualClock,
                                                      kind: str) -> None:
    path = tmp_path / "h.sqlite"
    hsm = _open(path, clock)
    digest = _upload(hsm, ["a", "b", "c"])
    hsm.create_key("k", "SECP256K1", policy=_policy({"list": digest}))
    other = _upload(hsm, ["a", "b", "c", "evil"])
    hsm.close()
    with sqlite3.connect(path) as db:  # swap in the body of another list's record
        ident = {"addrlist-chunk": "%.0", "addrlist": "%"}[kind]
        rows = db.execute("SELECT id, nonce, body FROM records WHERE kind=? AND id LIKE ? "
                          "ORDER BY id", (kind, ident)).fetchall()
        mine = next(r for r in rows if kind == "addrlist-chunk" or r[0] == digest)
        theirs = next(r for r in rows if r[0] != mine[0])
        db.execute("UPDATE records SET nonce=?, body=? WHERE kind=? AND id=?",
                   (theirs[1], theirs[2], kind, mine[0]))
    db.close()
    assert other != digest
    with pytest.raises(TamperDetected):
        _open(path, clock)


def test_a_modify_to_another_list_shows_digest_size_and_what_changes(
        tmp_path: Path, clock: ManualClock) -> None:
    hsm = _open(tmp_path / "h.sqlite", clock)
    old = _upload(hsm, [f"addr-{i}" for i in range(100)])
    new = _upload(hsm, [f"addr-{i}" for i in range(10, 130)])
    hsm.create_key("k", "SECP256K1", policy=_policy({"list": old}))
    challenge = hsm.begin("k", Action.MODIFY, new_policy=_policy({"list": new}))
    body = challenge.body
    to = body["policyChange"]["to"]["rules"]["use"][0]["destinationsList"]
    assert to == {"digest": new, "size": 120, "added": 30, "removed": 10}
    was = body["policyChange"]["from"]["rules"]["use"][0]["destinationsList"]
    assert was == {"digest": old, "size": 100}
    lines = policy_diff(body["policyChange"]["from"], body["policyChange"]["to"])
    assert any(f"address list {old[:16]}... (100 addresses) -> {new[:16]}... "
               "(120 addresses; +30 -10)" in line for line in lines), lines
    hsm.execute(challenge.request_id)  # openActions: modify (the test's shortcut)
    _pay(hsm, "addr-129", 1)
    with pytest.raises(PolicyNotMet):
        _pay(hsm, "addr-0", 2)
    hsm.close()
