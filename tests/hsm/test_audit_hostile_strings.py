"""Caller strings cannot make the audit log unreadable.

Finding (medium): a refused call with a 2 MB label was stored in the audit log twice (in
the event and in the refusal reason); from then on paging the log over the socket failed
("reply exceeds the frame limit") and remote audit verification could not run.

Now every event is bounded where it is appended (``hsm_emulator.audit.bounded``), and the
remote ``audit_entries`` call returns as many entries as fit in a reply frame, the client
paging on from there. Tested here: the bounding itself, in-process; and against the HSM
as its own process, refused calls carrying 2 MB strings in every caller-chosen field,
then the whole log paged over the socket and verified offline - by ``verify_log`` and
by ``custody audit-verify`` through the API - including pages cut short by the frame.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from approvals_app.auth import issue_token
from approvals_app.main import create_app
from approvals_app.settings import Settings
from custody.cli import app as cli
from hsm_emulator import Hsm
from hsm_emulator.audit import (
    KEEP_TEXT,
    MAX_DEPTH,
    MAX_EVENT,
    MAX_ITEMS,
    MAX_TEXT,
    AuditEntry,
    bounded,
    verify_log,
)
from hsm_emulator.errors import HsmError, InvalidInput
from hsm_emulator.flow import Approval
from hsm_emulator.model import canonical_json
from hsm_emulator.remote import MAX_FRAME, RemoteHsmClient
from tests.remote_kit import SO, HsmProcess, hsm_process

BIG = "A" * 2_000_000
JWT_SECRET = "test-jwt-secret-with-enough-entropy-0123456789"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def strings(value: Any) -> list[str]:
    """Every string in ``value``, dict keys included, at any depth."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [*strings(k), *strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def assert_bounded(event: dict[str, Any]) -> None:
    assert len(canonical_json(event)) <= MAX_EVENT
    assert all(len(s) <= MAX_TEXT for s in strings(event))
    assert depth(event) <= MAX_DEPTH


# -- the bounding itself, in-process ----------------------------------------------------


def test_plain_events_are_untouched() -> None:
    event = {"op": "sign.now", "label": "treasury", "payloadType": "TEST_TRANSFER",
             "batchIndex": 7, "requestId": "a" * 32, "result": "ok", "x": "y" * MAX_TEXT}
    assert bounded(event) is event  # the signing path's events pass as they are
    nested = {"op": "request.execute", "approvers": ["ab" * 32, "cd" * 32], "n": 1.5,
              "flag": True, "none": None}
    assert bounded(nested) == nested


def test_long_strings_become_prefix_length_and_digest() -> None:
    out = bounded({"op": "key.create", "label": BIG, "reason": f"bad label {BIG!r}"})
    assert out["op"] == "key.create"
    assert out["label"] == f"{BIG[:KEEP_TEXT]}...[{len(BIG)} chars, sha256 {sha(BIG)}]"
    assert out["reason"].startswith("bad label 'AAA") and sha(f"bad label {BIG!r}") in (
        out["reason"])
    assert bounded(out) == out  # bounded twice is bounded once
    assert_bounded(out)


def test_every_depth_and_shape_is_bounded() -> None:
    deep: Any = "bottom"
    for _ in range(50):
        deep = {"d": [deep]}
    event = {
        "op": "x",
        "nested": {"list": [BIG, {"k": BIG}], "many": list(range(10_000)),
                   "keys": {f"k{i}": i for i in range(1000)}, BIG: "a long key"},
        "deep": deep,
        "surrogate": "label-\ud800",
        "huge": 10**200, "nan": math.nan, "inf": -math.inf, "tuple": ("a", BIG),
    }
    out = bounded(event)
    assert_bounded(out)
    many = out["nested"]["many"]
    assert len(many) == MAX_ITEMS and many[:3] == [0, 1, 2]
    listed = json.dumps(list(range(10_000)), separators=(",", ":"))
    assert many[-1] == f"...[10000 items, sha256 {sha(listed)}]"
    keys = out["nested"]["keys"]
    assert len(keys) == MAX_ITEMS and keys["..."].startswith("...[1000 items, sha256 ")
    assert f"{BIG[:KEEP_TEXT]}...[{len(BIG)} chars, sha256 {sha(BIG)}]" in out["nested"]
    lone = "label-\ud800"
    assert out["surrogate"] == f"label-\\ud800...[7 chars, sha256 {sha(lone)}]"
    assert out["huge"] == "...[integer of 665 bits]"
    assert (out["nan"], out["inf"]) == ("...[nan]", "...[-inf]")
    assert out["tuple"][0] == "a" and out["tuple"][1].endswith(f"sha256 {sha(BIG)}]")
    assert "nested too deep" in json.dumps(out["deep"])
    canonical_json(out).decode()  # writable: no lone surrogate left


def test_events_too_large_in_total_shrink_largest_values_first() -> None:
    ctrl = "\x01" * MAX_TEXT  # 256 characters, 1,536 bytes of JSON each: kept as they are
    event = {"op": "x", "result": "refused", "small": "kept",
             **{f"field{i}": [ctrl] * (MAX_ITEMS - 1) for i in range(3)}}
    out = bounded(event)
    assert_bounded(out)
    assert out["small"] == "kept" and out["op"] == "x"
    assert all(out[f"field{i}"].startswith("...[") for i in range(3))
    wide = {f"{ctrl}{i}"[-MAX_TEXT:]: ctrl for i in range(MAX_ITEMS)}  # 64 long keys
    assert_bounded(bounded({"op": "y", **wide}))


_scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=400)
            | st.just(BIG[:5000]) | st.just("\ud800x"))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=80) | st.dictionaries(
    st.text(max_size=300), inner, max_size=80), max_leaves=400)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(max_size=300), _values, max_size=30))
def test_any_event_is_bounded_and_writable(event: dict[str, Any]) -> None:
    out = bounded(event)
    assert_bounded(out)
    assert bounded(out) == out


def test_refusals_with_hostile_strings_are_logged_bounded(hsm: Hsm) -> None:
    for call in (lambda: hsm.create_key(BIG, "SECP256K1"),
                 lambda: hsm.sign_now(BIG, b"x", BIG),
                 lambda: hsm.create_key("\ud800", "SECP256K1")):  # was a UnicodeEncodeError
        with pytest.raises(HsmError):
            call()
    entries = hsm.audit_entries(1, 100)
    assert all(len(canonical_json(e.event)) < 2048 for e in entries)
    assert entries[1].event["label"].endswith(f"sha256 {sha(BIG)}]")
    assert entries[3].event["code"] == InvalidInput.code and "\\ud800" in entries[3].event[
        "label"]
    assert verify_log(entries, [hsm.audit_head()], hsm.identity_public_key()).ok


# -- against the HSM as its own process -------------------------------------------------


def _refuse_with_2mb_strings(client: RemoteHsmClient) -> int:
    """Refused calls with a 2 MB string in each caller-chosen field; how many."""
    client.create_key("k", "SECP256K1")
    calls: list[Callable[[], object]] = [
        lambda: client.create_key(BIG, "SECP256K1"),
        lambda: client.derive_key(BIG, BIG, "child"),
        lambda: client.derive_key("k", BIG, "child"),
        lambda: client.sign_now(BIG, b"x", BIG),
        lambda: client.sign_now("k", b"x", BIG),
        lambda: client.begin(BIG, "use", b"", "UNSPECIFIED"),
        lambda: client.begin("k", "use", b"", BIG),
        lambda: client.begin("k", "use", b"", "UNSPECIFIED", initiator=BIG, scheme="no"),
        lambda: client.begin("k", "use", b"", "UNSPECIFIED", request_id=BIG),
        lambda: client.cancel(BIG, BIG),
        lambda: client.execute(BIG),
        lambda: client.check_approval(BIG, Approval("P256", "cred", b"sig")),
        lambda: client.check_approval("request-1", Approval(BIG, "cred", b"sig")),
        lambda: client.invalidate_key(BIG, SO),
    ]  # one 2 MB string per call: a request frame holds at most 4 MiB
    for call in calls:
        with pytest.raises(HsmError):
            call()
    return len(calls)


def _raw_session(server: HsmProcess) -> socket.socket:
    """An authenticated connection by hand, to see the wire's own answers."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(str(server.sock))
    nonce = base64.b64decode(_read(sock)[1]["nonce"])
    mac = hmac.new(server.secret, b"ska-hsm-auth-v1" + nonce, hashlib.sha256).digest()
    _send(sock, {"auth": base64.b64encode(mac).decode(),
                 "nonce": base64.b64encode(os.urandom(32)).decode()})
    assert "ok" in _read(sock)[1]
    return sock


def _send(sock: socket.socket, obj: Any) -> None:
    data = json.dumps(obj).encode()
    sock.sendall(struct.pack(">I", len(data)) + data)


def _read(sock: socket.socket) -> tuple[int, Any]:
    (n,) = struct.unpack(">I", _exact(sock, 4))
    return n, json.loads(_exact(sock, n))


def _exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, "connection closed"
        buf += chunk
    return bytes(buf)


def _verify_with_cli(server: HsmProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                     identity: bytes) -> str:
    """``custody audit-verify`` against the API, whose HSM is the remote process."""
    hsm = RemoteHsmClient(server.address, server.secret)
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'broker.sqlite'}",
                              jwt_secret=JWT_SECRET), hsm, scheduler=False)

    def client(base_url: str, timeout: float, headers: dict[str, str]) -> httpx.Client:
        return TestClient(app, base_url=base_url, headers=headers)

    monkeypatch.setattr(httpx, "Client", client)
    monkeypatch.setenv("CUSTODY_TOKEN", issue_token(JWT_SECRET, "auditor", "desk-1",
                                                    ["auditor"]))
    try:
        result = CliRunner().invoke(cli, ["audit-verify", "--hsm-key",
                                          base64.b64encode(identity).decode()])
    finally:
        hsm.close()
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


@pytest.mark.timeout(120)
def test_2mb_caller_strings_leave_the_log_pageable_and_verifiable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with hsm_process(tmp_path) as server, server.connect() as client:
        refused = _refuse_with_2mb_strings(client)
        entries = client.audit_entries(1, 10_000)
        head, checkpoints = client.audit_head(), client.audit_checkpoints()
        identity = client.identity_public_key()
        report = verify_log(entries, [head, *checkpoints], identity)
        assert report.ok and report.entries == head.seq, report.problems
        hostile = [e for e in entries if e.event.get("result") == "refused"]
        assert len(hostile) == refused
        for e in hostile:
            assert_bounded(e.event)
            assert len(json.dumps(e.to_json())) < 4096
        assert any(sha(BIG) in s for e in hostile for s in strings(e.event))
        text = _verify_with_cli(server, tmp_path, monkeypatch, identity)
        assert f"audit log verified: {head.seq} entries" in text, text


@pytest.mark.timeout(120)
def test_pages_are_cut_to_fit_a_frame_and_the_client_pages_on(tmp_path: Path) -> None:
    ctrl = "\x01" * MAX_TEXT  # kept verbatim, 6 bytes of JSON a character: large entries
    with hsm_process(tmp_path) as server, server.connect() as client:
        for _ in range(1200):
            with pytest.raises(InvalidInput):
                client.derive_key(ctrl, ctrl, ctrl)
        head = client.audit_head()
        sock = _raw_session(server)
        _send(sock, {"id": 1, "call": "audit_entries", "args": {"start": 1, "limit": 10_000}})
        size, reply = _read(sock)
        sock.close()
        assert "ok" in reply, reply.get("error")  # as many as fit, not "reply too large"
        page = [AuditEntry.from_json(d) for d in reply["ok"]]
        assert 100 < len(page) < head.seq and size <= MAX_FRAME
        assert [e.seq for e in page] == list(range(1, len(page) + 1))
        entries = client.audit_entries(1, 10_000)  # AUDIT_PAGE asks, cut short, paged on
        assert [e.seq for e in entries] == list(range(1, head.seq + 1))
        assert client.audit_entries(2, 1100)[-1].seq == 1101
        report = verify_log(entries, [head, *client.audit_checkpoints()],
                            client.identity_public_key())
        assert report.ok, report.problems
