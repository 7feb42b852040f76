"""The HSM's canonical JSON against RFC 8785 (JCS): where it agrees, and exactly where not.

The reference is outside us twice: the RFC 8785 test data of its author (stored verbatim
in ``tests/vectors/rfc8785/``, source in its ``SOURCE.md``) and the ``rfc8785`` package
(Trail of Bits). The decision to keep our form is in :mod:`hsm_emulator.canonical` and
``docs/decisions/0001-canonical-json.md``; these tests keep its stated facts true.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm_emulator import Action, Hsm, ManualClock
from hsm_emulator.canonical import canonical_json, canonical_text
from hsm_emulator.challenge import open_challenge
from hsm_emulator.credentials import encode_assertion
from hsm_emulator.decoders import transfer_payload
from hsm_emulator.errors import ApprovalRefused
from tests.conftest import SO, TEST_PASSPHRASE
from tests.helpers import Approver, tiered_policy

rfc8785 = pytest.importorskip("rfc8785")

VECTORS = Path(__file__).parents[1] / "vectors" / "rfc8785"
NAMES = sorted(p.name for p in (VECTORS / "input").glob("*.json"))
#: The RFC 8785 vectors our form does not reproduce, and why (see hsm_emulator.canonical).
DIFFERENT = {"structures.json": "integral float 56.0", "weird.json": "a key outside the BMP"}


def _vector(name: str) -> tuple[Any, bytes]:
    return (json.loads((VECTORS / "input" / name).read_bytes()),
            (VECTORS / "output" / name).read_bytes())


def test_the_vectors_are_all_there() -> None:
    assert NAMES == ["arrays.json", "french.json", "structures.json", "unicode.json",
                     "values.json", "weird.json"]


@pytest.mark.parametrize("name", NAMES)
def test_the_reference_package_passes_the_rfc_vectors(name: str) -> None:
    doc, expected = _vector(name)
    assert rfc8785.dumps(doc) == expected


@pytest.mark.parametrize("name", sorted(set(NAMES) - set(DIFFERENT)))
def test_ours_is_jcs_on_the_rfc_vectors_within_its_domain(name: str) -> None:
    doc, expected = _vector(name)
    assert canonical_json(doc) == expected


def test_ours_differs_on_an_integral_float_only_in_its_spelling() -> None:
    doc, expected = _vector("structures.json")
    ours = canonical_json(doc)
    assert ours != expected
    assert ours.replace(b'"\\n":56.0', b'"\\n":56') == expected


def _utf16(key: str) -> bytes:
    return key.encode("utf-16-be")


def test_ours_differs_on_a_non_bmp_key_only_in_key_order() -> None:
    doc, expected = _vector("weird.json")
    ours = canonical_json(doc)
    assert ours != expected and json.loads(ours) == json.loads(expected)
    # sorted by code point here, by UTF-16 code unit in JCS: U+1F602 < U+FB33 in UTF-16
    assert list(json.loads(ours)) == sorted(doc)
    assert list(json.loads(expected)) == sorted(doc, key=_utf16)
    assert "\U0001f602" in doc and "\ufb33" in doc


def test_what_jcs_refuses_or_spells_otherwise() -> None:
    assert canonical_json({"t": 1_800_000_000.0}) == b'{"t":1800000000.0}'
    assert rfc8785.dumps({"t": 1_800_000_000.0}) == b'{"t":1800000000}'
    assert canonical_json({"n": 2**53}) == b'{"n":9007199254740992}'
    with pytest.raises(rfc8785.IntegerDomainError):
        rfc8785.dumps({"n": 2**53})
    with pytest.raises(UnicodeEncodeError):
        canonical_json({"s": "\ud800"})
    with pytest.raises(rfc8785.CanonicalizationError):
        rfc8785.dumps({"s": "\ud800"})
    assert canonical_text({"s": "\ud800"}) == '{"s":"\ud800"}'  # the audit digest's way in


#: Hostile strings: controls, DEL, line separators, quotes, HTML, combining marks, astral.
HOSTILE = ["\x00\x01\x1f\x7f", "\u2028\u2029", '"\\/', "</script><!--", "e\u0301 \u00e9",
           "\ufeff\ufffd\uffff", "\U0001f602\U0010ffff", "\u0080\u009f", "\t\n\r\b\f"]

_BMP_KEYS = st.text(st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs",)),
                    max_size=12)
_LEAVES = (st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1)
           | st.text(st.characters(exclude_categories=("Cs",)), max_size=24)
           | st.sampled_from(HOSTILE))
_DOCS = st.recursive(_LEAVES, lambda inner: st.lists(inner, max_size=5)
                     | st.dictionaries(_BMP_KEYS, inner, max_size=6), max_leaves=30)


@settings(max_examples=400, deadline=None)
@given(_DOCS)
def test_ours_is_jcs_on_the_i_json_the_hsm_emits(doc: Any) -> None:
    """BMP keys, any valid strings (hostile ones too), safe integers, literals."""
    assert canonical_json(doc) == rfc8785.dumps(doc)


def test_hostile_strings_are_escaped_as_jcs_escapes_them() -> None:
    doc = {s: s for s in HOSTILE if not any(ord(c) > 0xFFFF for c in s)}
    doc["astral value"] = "\U0001f602\U0010ffff"
    assert canonical_json(doc) == rfc8785.dumps(doc)
    assert b'"\\u0000\\u0001\\u001f\x7f"' in canonical_json(doc)


def test_a_passkey_assertion_is_jcs() -> None:
    doc = encode_assertion(b"\x00" * 37, b'{"type":"webauthn.get"}', b"\xff" * 70)
    assert doc == rfc8785.dumps(json.loads(doc))


def _challenge(tmp_path: Path, start: float) -> tuple[bytes, bytes]:
    traders = [Approver.new(f"t{i}", "P256") for i in range(3)]
    hsm = Hsm.open(tmp_path / "hsm.sqlite", TEST_PASSPHRASE, so_passphrase=SO,
                   clock=ManualClock(start))
    try:
        hsm.create_key("treasury", "SECP256K1",
                       policy=tiered_policy(traders, [Approver.new("c1", "P256")]))
        payload = transfer_payload("TST", 200, "b\u00f6b \U0001f602\u2028", 1)
        ch = hsm.begin("treasury", Action.USE, payload, "TEST_TRANSFER")
        return ch.envelope, hsm.identity_public_key()
    finally:
        hsm.close()


def test_a_real_challenge_is_jcs_when_the_clock_reads_a_fraction(tmp_path: Path) -> None:
    envelope, hsm_key = _challenge(tmp_path, 1_800_000_000.25)
    body = open_challenge(envelope, hsm_key)
    assert body["intent"]["transfers"][0]["destination"] == "b\u00f6b \U0001f602\u2028"
    assert rfc8785.dumps(json.loads(envelope)) == envelope


def test_a_real_challenge_on_a_whole_second_is_not_jcs(tmp_path: Path) -> None:
    """Why JCS would need challenge version 2: ``hsmTime`` 1800000000.0 loses its
    ``.0``, the signed body bytes change, and the version-1 verifier refuses them."""
    envelope, hsm_key = _challenge(tmp_path, 1_800_000_000.0)
    jcs = rfc8785.dumps(json.loads(envelope))
    assert jcs != envelope
    assert jcs == envelope.replace(b'"hsmTime":1800000000.0', b'"hsmTime":1800000000')
    with pytest.raises(ApprovalRefused, match="altered"):
        open_challenge(jcs, hsm_key)
