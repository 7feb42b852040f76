"""The web page's challenge check and Python's agree on hostile strings (in Chromium).

The page (``approvals_app/approver_page/crypto.js``) verifies the HSM's signature over
the body bytes exactly as received and shows their parse; the CLI approver calls
:func:`hsm_emulator.challenge.open_challenge`, which re-encodes with the one canonical
JSON. Both must accept the same challenges, show the same body, and refuse the same
re-serialisation - here with control characters, non-ASCII, astral-plane keys and
values, and a JCS (RFC 8785) re-encoding whose key order differs from the HSM's.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

from hsm_emulator.challenge import open_challenge, seal_challenge
from hsm_emulator.errors import ApprovalRefused
from hsm_emulator.identity import IdentityKey
from tests.approvers.page_kit import BROWSER_MARKS, blank_page

pytestmark = BROWSER_MARKS

pytest.importorskip("playwright.sync_api")
rfc8785 = pytest.importorskip("rfc8785")

#: Bodies no HSM writes today but any HSM string may carry: the page must agree anyway.
HOSTILE_BODIES: dict[str, dict[str, Any]] = {
    "controls": {"memo": "\x00\x01\x1f\x7f\t\n\r\b\f\"\\/", "\u2028": "\u2029"},
    "non-ascii": {"destination": "b\u00f6b \u00e9 e\u0301 \u20ac \ufeff\ufffd\uffff",
                  "\u00f6": "\u0080\u009f", "</script>": "<!--"},
    "astral keys": {"\U0001f602": "smiley", "\ufb33": "dalet", "\U0010ffff": "max",
                    "\ue000": "private use", "10": "ten", "9": "nine"},
    "astral values": {"name": "\U0001f602\U0001d11e\U0010ffff", "nested": [
        {"\U0001f600": ["\U0001f602", None, True, 7, 1.5]}]},
}

#: What every version 3 body carries beside the strings under test.
V3 = {"units": {}, "epoch": 0, "seq": 1}

JS_VERIFY = """async ([keyB64, challenge, requestId]) => {
  const c = await import("/crypto.js");
  try {
    const key = await c.importHsmKey(keyB64);
    const { bytes, body } = await c.verifyChallenge(key, challenge, requestId);
    return { ok: true, body: JSON.stringify(body), bytes: c.b64(bytes) };
  } catch (e) {
    return { ok: false, error: String(e.message) };
  }
}"""


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    with blank_page("crypto.js") as p:
        yield p


@pytest.fixture(scope="module")
def identity() -> IdentityKey:
    return IdentityKey.generate()


def _verify_in_page(page: Any, identity: IdentityKey, envelope: bytes,
                    request_id: str) -> dict[str, Any]:
    key = base64.b64encode(identity.public_der).decode()
    out: dict[str, Any] = page.evaluate(
        JS_VERIFY, [key, base64.b64encode(envelope).decode(), request_id])
    return out


@pytest.mark.parametrize("case", sorted(HOSTILE_BODIES))
def test_page_and_python_show_the_same_body(page: Any, identity: IdentityKey,
                                             case: str) -> None:
    body = {"requestId": f"req-{case}", **V3, **HOSTILE_BODIES[case]}
    envelope = seal_challenge(identity, body)
    python = open_challenge(envelope, identity.public_der)
    js = _verify_in_page(page, identity, envelope, body["requestId"])
    assert js["ok"], js
    assert base64.b64decode(js["bytes"]) == envelope
    assert json.loads(js["body"]) == python == body


def test_a_jcs_reencoding_is_refused_by_both(page: Any, identity: IdentityKey) -> None:
    """Same document, JCS's key order (UTF-16 units put U+1F602 before U+FB33): the
    signed bytes differ, so the page's signature check and Python's both refuse it."""
    body = {"requestId": "req-jcs", **V3, **HOSTILE_BODIES["astral keys"]}
    envelope = seal_challenge(identity, body)
    jcs = rfc8785.dumps(json.loads(envelope))
    assert jcs != envelope and json.loads(jcs) == json.loads(envelope)
    with pytest.raises(ApprovalRefused):
        open_challenge(jcs, identity.public_der)
    js = _verify_in_page(page, identity, jcs, "req-jcs")
    assert not js["ok"] and "altered" in js["error"], js


def test_a_body_altered_by_one_astral_character_is_refused_by_both(
        page: Any, identity: IdentityKey) -> None:
    body = {"requestId": "req-alt", **V3, **HOSTILE_BODIES["astral values"]}
    envelope = seal_challenge(identity, body)
    altered = envelope.replace("\U0001d11e".encode(), "\U0001d11f".encode())
    assert altered != envelope
    with pytest.raises(ApprovalRefused):
        open_challenge(altered, identity.public_der)
    js = _verify_in_page(page, identity, altered, "req-alt")
    assert not js["ok"] and "altered" in js["error"], js


JS_FORMAT = """async (cases) => {
  const c = await import("/crypto.js");
  return cases.map(([units, asset, unit]) => c.formatAmount(units, asset,
    unit === null ? {} : { [asset]: unit }));
}"""


def test_the_page_formats_amounts_as_python_does(page: Any) -> None:
    """One set of rules: the page's formatAmount and hsm_emulator.display.format_amount."""
    from hsm_emulator.display import format_amount
    from tests.hsm.test_display_units import FORMAT_CASES

    rows = [(str(u), a, unit) for u, a, unit, _ in FORMAT_CASES]
    js = page.evaluate(JS_FORMAT, rows)
    assert js == [format_amount(u, a, unit) for u, a, unit in rows]
    assert js == [shown for *_, shown in FORMAT_CASES]
    assert "0.00000141 BTC" in js and "141 base units of BTC" in js


def _sealed(identity: IdentityKey, body: dict[str, Any], version: int) -> bytes:
    """A challenge as an HSM of ``version`` sealed it."""
    from hsm_emulator.canonical import canonical_json
    from hsm_emulator.identity import Domain

    signature = identity.sign(Domain.CHALLENGE, canonical_json(body))
    return canonical_json({"format": "ska-challenge", "version": version, "body": body,
                           "signature": base64.b64encode(signature).decode()})


def test_older_versions_are_accepted_and_each_needs_its_fields_in_both(
        page: Any, identity: IdentityKey) -> None:
    """Versions 1 and 2 (open requests from before an upgrade) still open; version 2
    must name its units and version 3 must carry the HSM's epoch and seq; 4 is unknown."""
    old = {"requestId": "req-v1", "intent": None}
    for version, body in ((1, old), (2, {**old, "requestId": "req-v2", "units": {}})):
        envelope = _sealed(identity, body, version)
        assert open_challenge(envelope, identity.public_der) == body
        js = _verify_in_page(page, identity, envelope, body["requestId"])
        assert js["ok"] and json.loads(js["body"]) == body, js

    for missing, body in (("units", {"requestId": "req-v2"}),
                          ("epoch and seq", {"requestId": "req-v3", "units": {}}),
                          ("epoch and seq", {"requestId": "req-v3", **V3, "epoch": -1}),
                          ("epoch and seq", {"requestId": "req-v3", **V3, "seq": True})):
        bare = _sealed(identity, body, 2 if missing == "units" else 3)
        with pytest.raises(ApprovalRefused, match=missing):
            open_challenge(bare, identity.public_der)
        js = _verify_in_page(page, identity, bare, body["requestId"])
        assert not js["ok"] and missing in js["error"], js

    v4 = _sealed(identity, {"requestId": "req-v4", **V3}, 4)
    with pytest.raises(ApprovalRefused, match="version"):
        open_challenge(v4, identity.public_der)
    js = _verify_in_page(page, identity, v4, "req-v4")
    assert not js["ok"] and "SKA challenge" in js["error"], js
