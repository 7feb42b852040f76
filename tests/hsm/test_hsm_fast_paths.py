"""The signing path's shortcuts give exactly what the plain code gives.

Audit text is byte for byte ``canonical_json`` (so entry hashes keep their definition),
also when a batch lays its entries out once; the ledger rows' seal bytes are the
``json.dumps`` stores were sealed with; ``Intent.totals`` agrees with ``total``, multi-row
inserts write every row, and a batch refused while signing names its item and commits
nothing; intents and executions come back equal from the wire's JSON; derived keys kept
per path are the keys a fresh derivation gives.
"""

from __future__ import annotations

import gc
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hsm_emulator import Hsm, keys
from hsm_emulator.audit import MAX_TEXT, _Layout, _plain, bounded, event_text, verify_log
from hsm_emulator.errors import DerivationError, InvalidInput
from hsm_emulator.keys import KeyMaterial
from hsm_emulator.model import (
    Action,
    Grant,
    Intent,
    IntentKind,
    KeyAlgorithm,
    Transfer,
    canonical_json,
)
from hsm_emulator.results import Execution
from hsm_emulator.rollback import _row_bytes
from hsm_emulator.store import MAX_ROWS_PER_INSERT

_scalars = st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=5), inner, max_size=3), max_leaves=8)


@given(st.dictionaries(st.text(), _values, max_size=10))
def test_event_text_is_canonical_json(event: dict[str, Any]) -> None:
    try:
        expected = canonical_json(event)
    except UnicodeEncodeError:  # a lone surrogate: neither can be written
        with pytest.raises(UnicodeEncodeError):
            event_text(event).encode()
        return
    assert event_text(event).encode() == expected


def test_event_text_on_awkward_strings() -> None:
    event = {"é\n\"key\"": "va\\lue\x00\u2028", "n": -12, "big": 2**200, "b": "ok",
             "zz": "😀"}
    assert event_text(event).encode() == canonical_json(event)


@given(st.lists(st.tuples(st.sampled_from(["BTC", "ETH", "USDC", "A"]),
                          st.integers(0, 2**256 - 1)), max_size=6))
def test_totals_agree_with_total(pairs: list[tuple[str, int]]) -> None:
    intent = Intent("test", "test", IntentKind.TRANSFER,
                    tuple(Transfer(a, n, "dest") for a, n in pairs))
    totals = intent.totals()
    assert list(totals) == sorted(intent.assets())
    assert totals == {a: intent.total(a) for a in intent.assets()}


def test_insert_rows_writes_every_row_in_chunks(hsm: Hsm) -> None:
    store = hsm._store
    rows = [("fam", "TST", str(i), float(i), "auto", str(i * (i + 1) // 2), str(i * (i + 1) // 2))
            for i in range(2 * MAX_ROWS_PER_INSERT + 3)]
    with store.transaction():
        store.insert_rows("spends", rows)
        store.insert_rows("spends", [])
    got = store.execute("SELECT family, asset, amount, at, token, cum_all, cum_token FROM spends "
                         "ORDER BY at")
    assert got == rows


def test_batch_refused_while_signing_names_the_item_and_commits_nothing(hsm: Hsm) -> None:
    hsm.create_key("k", "SECP256K1", policy={"openActions": ["use"]})
    before = len(hsm.audit_entries(1, 10_000))
    with pytest.raises(InvalidInput) as err:
        # the third payload is no 32-byte digest: it passes the checks, fails at signing
        hsm.sign_batch("k", [b"\x01" * 32, b"\x02" * 32, b"\x03" * 31], "UNSPECIFIED",
                       "ECDSA_SECP256K1_DIGEST")
    assert err.value.reason.startswith("batch item 2: ")
    entries = hsm.audit_entries(1, 10_000)
    assert len(entries) == before + 1  # only the refusal: no item entry was committed
    assert entries[-1].event["op"] == "sign.batch"
    assert entries[-1].event["result"] == "refused"
    assert verify_log(entries, [hsm.audit_head()], hsm.identity_public_key()).ok
    results = hsm.sign_batch("k", [b"\x01" * 32, b"\x02" * 32], "UNSPECIFIED",
                             "ECDSA_SECP256K1_DIGEST")
    items = hsm.audit_entries(before + 2, 10)
    assert [e.event["batchIndex"] for e in items[:2]] == [0, 1]
    assert [e.event["requestId"] for e in items[:2]] == [r.request_id for r in results]
    assert len({r.request_id for r in results}) == 2
    assert all(len(r.request_id) == 32 for r in results)


# -- a batch's audit entries: the shared part encoded once ------------------------------

_event_scalars = (st.none() | st.booleans() | st.integers(-(2**300), 2**300)
                  | st.text(max_size=40) | st.just("x" * (MAX_TEXT + 1)) | st.just("\ud800")
                  | st.floats(allow_nan=False))
_event_values = _event_scalars | st.lists(_event_scalars, max_size=2)


@given(st.dictionaries(st.text(max_size=12), _event_values, max_size=6),
       st.lists(st.dictionaries(st.text(max_size=12), _event_values, max_size=5),
                min_size=1, max_size=4))
def test_a_batch_layout_writes_what_bounded_and_event_text_write(
        common: dict[str, Any], each: list[dict[str, Any]]) -> None:
    """Whatever the events, the layout's text is the plain path's text, or None (then the
    plain path writes the entry); for the signing path's flat events it is never None."""
    layout = _Layout.of(common, each[0])
    for item in each:
        merged = {**common, **item}
        text = None if layout is None else layout.text(item)
        if text is not None:
            assert text == event_text(bounded(merged))
        elif _plain(merged) and not set(common) & set(item) and item.keys() == each[0].keys():
            pytest.fail("a plain event missed the layout")


@pytest.mark.parametrize(("policy", "token"), [
    ({"ruleUse": {"tokens": [{"name": "auto \"é\"", "timelock": 0, "timeout": 0,
                              "groups": []}]}}, "auto \"é\""),  # the layout's path
    ({"openActions": ["use"]}, None),  # no token: the plain path
])
def test_batch_entries_are_the_entries_sign_now_writes(
        hsm: Hsm, policy: dict[str, Any], token: str | None) -> None:
    """300 items (a checkpoint inside the batch), a label and payload type as the caller
    gave them: each entry's event is the one written the plain way, the chain verifies
    against its checkpoints, and the log records every payload's digest and token."""
    hsm.create_key("k/awk+ward@1", "SECP256K1", policy=policy)
    before = hsm.audit_head().seq
    digests = [bytes([i % 256, i // 256]) * 16 for i in range(300)]
    results = hsm.sign_batch("k/awk+ward@1", digests, "UNSPECIFIED", "ECDSA_SECP256K1_DIGEST")
    entries = hsm.audit_entries(1, 10_000)
    items = [e for e in entries if e.seq > before and e.event["op"] == "sign.now"]
    assert len(items) == 300
    for i, (entry, result) in enumerate(zip(items, results, strict=True)):
        assert entry.event == {"op": "sign.now", "label": "k/awk+ward@1",
                               "payloadType": "UNSPECIFIED", "batchIndex": i,
                               "requestId": result.request_id, "token": token,
                               "payloadDigest": hashlib.sha256(digests[i]).hexdigest(),
                               "result": "ok"}
    heads = hsm.audit_checkpoints()
    assert any(before < h.seq <= before + 300 for h in heads)
    assert verify_log(entries, [*heads, hsm.audit_head()], hsm.identity_public_key()).ok


@given(st.tuples(st.text(), st.text(), st.integers(0, 2**256).map(str),
                 st.floats(allow_nan=False, allow_infinity=False), st.text(),
                 st.integers(0, 2**260).map(str), st.integers(0, 2**260).map(str)))
def test_ledger_row_bytes_are_the_json_dumps_stores_were_sealed_with(
        row: tuple[str, str, str, float, str, str, str]) -> None:
    """The seal's chain over ledger rows keeps its definition (stores already written
    must still open): ``json.dumps`` of the seven fields as strings."""
    family, asset, amount, at, token, cum_all, cum_token = row
    expected = json.dumps([family, asset, amount, repr(float(at)), token, cum_all,
                           cum_token]).encode()
    assert _row_bytes(row) == expected


_amounts = st.integers(0, 2**256 - 1)
_intents = st.builds(
    Intent, st.text(max_size=8), st.text(max_size=8), st.sampled_from(list(IntentKind)),
    st.lists(st.builds(Transfer, st.text(max_size=5), _amounts, st.text(max_size=9)),
             max_size=3).map(tuple),
    _amounts, st.text(max_size=5),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3).map(
        lambda d: tuple(sorted(d.items()))),
    st.lists(st.builds(Grant, st.text(max_size=5), _amounts, st.text(max_size=9)),
             max_size=2).map(tuple),
    _amounts, st.lists(st.text(max_size=9), max_size=2).map(tuple))


@given(_intents, st.lists(st.binary(min_size=64, max_size=65), max_size=3))
def test_intents_and_executions_survive_the_wire(intent: Intent, sigs: list[bytes]) -> None:
    """What a remote HSM's batch reply carries per signature comes back equal, through
    JSON; the intent's JSON is its binding plus fee, fee asset and details."""
    doc = intent.to_json()
    assert {k: v for k, v in doc.items() if k not in ("fee", "feeAsset", "details")} == (
        intent.binding())
    assert Intent.from_json(json.loads(json.dumps(doc))) == intent
    done = Execution("r" * 32, "k", Action.USE, tuple(sigs), "auto", (), 1.5, intent)
    assert Execution.from_json(json.loads(json.dumps(done.to_json()))) == done


def test_a_malformed_intent_is_refused() -> None:
    good = Intent("test", "test", IntentKind.TRANSFER, (Transfer("A", 1, "d"),)).to_json()
    for bad in ({**good, "kind": "teleport"}, {**good, "kind": ["transfer"]},
                {**good, "details": []}, {**good, "grants": None},
                {**good, "transfers": [{"asset": "A", "amount": "x", "destination": "d"}]}):
        with pytest.raises((ValueError, TypeError, AttributeError)):
            Intent.from_json(bad)


def test_derived_keys_are_kept_per_path_and_equal_fresh_derivations(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A kept child is the child a fresh derivation gives; a bad path raises every time
    and is not kept; at most MAX_DERIVED paths are kept, the oldest dropped first."""
    root = KeyMaterial.generate(KeyAlgorithm.SECP256K1)
    fresh = KeyMaterial(root.algorithm, root.secret, root.chain_code)  # nothing kept
    first = root.derive("0/5")
    assert root.derive("0/5") is first
    assert first.secret == fresh.derive("0/5").secret != root.derive("0/6").secret
    assert first.public_key == fresh.derive("0/5").public_key
    for _ in range(2):
        with pytest.raises(DerivationError):
            root.derive("0/x")
    assert "0/x" not in root._derived
    monkeypatch.setattr(keys, "MAX_DERIVED", 3)
    for i in range(7, 10):
        root.derive(f"1/{i}")
    assert list(root._derived) == ["1/7", "1/8", "1/9"]


def test_derived_keys_kept_across_all_keys_are_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_DERIVED_TOTAL, the key that kept a child longest ago loses its kept
    children (derived afresh, identical, when asked again); a key object that is dropped
    takes its children out of the count."""
    budget = keys._DerivedBudget()
    monkeypatch.setattr(keys, "_BUDGET", budget)
    monkeypatch.setattr(keys, "MAX_DERIVED_TOTAL", 5)
    a, b, c = (KeyMaterial.generate(KeyAlgorithm.SECP256K1) for _ in range(3))
    a_child = a.derive("0/1").secret
    a.derive("0/2")
    for root in (b, c):
        root.derive("0/1")
        root.derive("0/2")
    assert budget.total == 4 and a._derived == {}  # a went first: 6 > 5
    assert len(b._derived) == len(c._derived) == 2
    assert a.derive("0/1").secret == a_child  # derived afresh, the same key
    assert budget.total == 5
    a.derive("0/3")  # 6 > 5 again: b kept its children longest ago now
    assert budget.total == 4 and b._derived == {} and len(c._derived) == 2
    d = KeyMaterial.generate(KeyAlgorithm.ED25519)
    d.derive("0'/1'")
    assert budget.total == 5
    del d
    gc.collect()
    assert budget.total == 4
