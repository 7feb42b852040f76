"""``custody approver``: the command-line approver against a real API server (uvicorn in a
thread, plain HTTP and HTTPS with a private CA), with a hostile server simulated by
altering what the client receives."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from approvals_app.main import create_app
from approvals_app.settings import Settings
from custody import approver_keys
from custody.approver_client import ApproverClient
from custody.cli import app
from hsm_emulator import Hsm
from hsm_emulator.decoders import transfer_payload
from hsm_emulator.decoding import DecoderRegistry
from hsm_emulator.model import canonical_json
from tests.api.test_api_tutorial import SECRET, bearer
from tests.api.test_serve import free_port
from tests.conftest import SO, TEST_PASSPHRASE
from tests.helpers import Approver, tiered_policy

PASS = "approver test passphrase"
runner = CliRunner()
COMPLIANCE = Approver.new("compliance", "P256")  #: large tier only; never used here


@dataclass
class Live:
    url: str
    http: httpx.Client
    hsm_key: str


def _serve(tmp: Path, decoders: DecoderRegistry | None = None,
           **ssl: Any) -> Iterator[tuple[str, Hsm]]:
    hsm = Hsm.open(tmp / "hsm.sqlite", TEST_PASSPHRASE, so_passphrase=SO, decoders=decoders)
    api = create_app(Settings(database_url=f"sqlite:///{tmp / 'b.sqlite'}",
                              jwt_secret=SECRET), hsm)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port,
                                        log_level="warning", **ssl))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started
    yield f"{'https' if ssl else 'http'}://127.0.0.1:{port}", hsm
    srv.should_exit = True
    thread.join(timeout=10)
    hsm.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    for url, hsm in _serve(tmp_path_factory.mktemp("approver-api")):
        with httpx.Client(base_url=url, timeout=10) as http:
            key = base64.b64encode(hsm.identity_public_key()).decode()
            yield Live(url, http, key)


def cli(*args: str, live: Live | None = None, input: str | None = None,
        env: dict[str, str] | None = None, **more: str) -> Any:
    base = {"CUSTODY_APPROVER_PASSPHRASE": PASS, "COLUMNS": "250"}
    if live is not None:
        base["CUSTODY_APPROVER_SERVER"] = live.url
    return runner.invoke(app, ["approver", *args], env=base | (env or {}) | more, input=input)


def new_cli_key(tmp: Path, kind: str, live: Live | None = None) -> tuple[Path, Approver]:
    """`approver init` (and pin-hsm): returns the key file and the same key as a helper
    Approver, for the policy entry."""
    path = tmp / f"{kind}.pem"
    made = cli("init", "--type", kind, "--key-file", str(path))
    assert made.exit_code == 0, made.output
    spki = made.stdout.strip().splitlines()[-1]
    key = approver_keys.load_key(path, PASS)
    assert key.spki_b64 == spki
    if live is not None:
        pinned = cli("pin-hsm", "--key-file", str(path), live=live)
        assert pinned.exit_code == 0, pinned.output
    return path, Approver(f"cli-{kind}", key.private)


def new_key(live: Live, label: str, traders: list[Approver]) -> None:
    policy = tiered_policy(traders, [COMPLIANCE])
    r = live.http.post("/v1/key", json={"label": label, "algorithm": "SECP256K1",
                                        "policy": policy}, headers=bearer("key_admin"))
    assert r.status_code == 201, r.text


def submit(live: Live, label: str, amount: int = 1000, destination: str = "bob",
           nonce: int = 0) -> str:
    payload = base64.b64encode(transfer_payload("TST", amount, destination, 1, nonce)).decode()
    r = live.http.post("/v1/sign", json={"signRequest": {
        "payload": payload, "payloadType": "TEST_TRANSFER", "signKeyName": label}},
        headers=bearer("business"))
    assert r.status_code == 201, r.text
    return str(r.json()["signRequestId"])


def status(live: Live, request_id: str) -> dict[str, Any]:
    body: dict[str, Any] = live.http.get(f"/v1/request/{request_id}",
                                         headers=bearer("business")).json()
    return body


def python_approve(live: Live, who: Approver, request_id: str) -> str:
    """The second approver: a plain Python client, as in tests/api/test_api_flows.py."""
    ts = dt.datetime.now(dt.UTC).isoformat()
    found = live.http.post("/v1/filteredSignApprovalTask", json={
        "timestamp": ts, "timestampSignature": base64.b64encode(who.sign(ts.encode())).decode(),
        "approverCertificate": who.spki_b64}).json()["tasks"]
    task = next(t for t in found if t["id"] == request_id)
    r = live.http.post("/v1/approval", json={
        "id": request_id, "approvalToBeSigned": task["approvalToBeSigned"],
        "signature": base64.b64encode(who.sign(base64.b64decode(
            task["approvalToBeSigned"]))).decode(), "approverCertificate": who.spki_b64})
    assert r.status_code == 200, r.text
    return str(r.json()["status"])


# -- the happy paths --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "p256", "secp256k1", "ed25519"])
def test_each_key_type_lists_and_approves_a_medium_transfer(
        live: Live, tmp_path: Path, people: dict[str, Approver], kind: str) -> None:
    key_file, me = new_cli_key(tmp_path, kind, live)
    other = people["t2"] if kind == "p256" else people["t1"]  # another key type
    new_key(live, f"desk-{kind}", [me, other])
    request_id = submit(live, f"desk-{kind}", 1000, "carol")
    assert status(live, request_id)["status"] == "PENDING"

    listed = cli("tasks", "--key-file", str(key_file), live=live)
    assert listed.exit_code == 0, listed.output
    assert request_id[:8] in listed.stdout and "carol" in listed.stdout
    # the policy names no unit for TST: base units with the asset id, never a guess
    assert "1,000 base units of TST" in listed.stdout and "1 open task(s)" in listed.stdout

    approved = cli("approve", request_id[:8], "--yes", "--key-file", str(key_file), live=live)
    assert approved.exit_code == 0, approved.output
    assert f"approved {request_id}: request is now PENDING" in approved.stdout
    assert "destination" in approved.stdout and "carol" in approved.stdout
    assert "tier medium: 1 more from traders (quorum 2); no hold follows" in approved.stdout
    assert "tier large: 1 more from traders (quorum 2), 1 more from compliance (quorum 1); " \
        "then a hold of 24 h 0 min" in approved.stdout
    assert python_approve(live, other, request_id) == "EXECUTED"
    assert len(status(live, request_id)["approvedBy"]) == 2


def test_show_confirm_and_reject(live: Live, tmp_path: Path,
                                 people: dict[str, Approver]) -> None:
    key_file, me = new_cli_key(tmp_path, "p256", live)
    new_key(live, "desk-reject", [me, people["t2"]])
    request_id = submit(live, "desk-reject", 4000, "mallory")
    shown = cli("show", request_id, "--key-file", str(key_file), live=live)
    assert shown.exit_code == 0, shown.output
    assert "verified HSM challenge" in shown.stdout
    assert "4,000 base units of TST" in shown.stdout and f"ref {request_id[:8]}" in shown.stdout
    declined = cli("approve", request_id, "--key-file", str(key_file), live=live, input="n\n")
    assert declined.exit_code == 1 and "nothing was sent" in declined.output
    assert status(live, request_id)["approvedBy"] == []
    rejected = cli("reject", request_id, "--key-file", str(key_file), live=live, input="y\n")
    assert rejected.exit_code == 0, rejected.output
    assert "request is now REJECTED" in rejected.stdout
    assert len(status(live, request_id)["rejectedBy"]) == 1


def test_init_writes_encrypted_key_and_csr(tmp_path: Path) -> None:
    key_file, csr_file = tmp_path / "k.pem", tmp_path / "k.csr"
    made = cli("init", "--type", "ed25519", "--key-file", str(key_file), "--csr",
               str(csr_file), "--subject", "CN=trader-9,O=Desk")
    assert made.exit_code == 0, made.output
    assert b"ENCRYPTED PRIVATE KEY" in key_file.read_bytes()
    assert PASS.encode() not in key_file.read_bytes()
    assert key_file.stat().st_mode & 0o077 == 0
    csr = x509.load_pem_x509_csr(csr_file.read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "trader-9"
    spki = csr.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    assert base64.b64encode(spki).decode() == made.stdout.strip()
    plain = cli("show-key", "--plain", "--key-file", str(key_file))
    assert plain.exit_code == 0 and plain.stdout.strip() == made.stdout.strip()
    again = cli("init", "--type", "p256", "--key-file", str(key_file))
    assert again.exit_code == 2 and "refusing to overwrite" in again.output


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--subject", "not a name", "--csr", "x.csr"], {}, "RFC 4514"),
    (["--csr", "x.csr"], {}, "--csr needs --subject"),
    ([], {"CUSTODY_APPROVER_PASSPHRASE": "short"}, "passphrase too short"),
])
def test_init_refusals_write_nothing(tmp_path: Path, args: list[str], env: dict[str, str],
                                     message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    made = cli("init", "--type", "p256", "--key-file", "k.pem", *args, env=env)
    assert made.exit_code == 2 and message in " ".join(made.output.split()), made.output
    assert list(tmp_path.iterdir()) == []


def test_passphrase_from_file_and_prompt(tmp_path: Path) -> None:
    pass_file = tmp_path / "pass.txt"
    pass_file.write_text("from a file, not argv\n")
    key_file = tmp_path / "k.pem"
    made = cli("init", "--type", "p256", "--key-file", str(key_file), "--passphrase-file",
               str(pass_file), CUSTODY_APPROVER_PASSPHRASE="")
    assert made.exit_code == 0, made.output
    prompted = cli("show-key", "--plain", "--key-file", str(key_file),
                   CUSTODY_APPROVER_PASSPHRASE="", input="from a file, not argv\n")
    assert prompted.exit_code == 0 and made.stdout.strip() in prompted.stdout
    assert "from a file" not in prompted.stdout
    argv = cli("show-key", "--key-file", str(key_file), "--passphrase", "in argv")
    assert argv.exit_code == 2 and "No such option" in argv.output  # by design


# -- refusals ---------------------------------------------------------------------------


def test_local_problems(live: Live, tmp_path: Path) -> None:
    key_file, _ = new_cli_key(tmp_path, "p256")
    wrong = cli("show-key", "--key-file", str(key_file), CUSTODY_APPROVER_PASSPHRASE="nope")
    assert wrong.exit_code == 2 and "wrong passphrase" in wrong.output
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n"
                       "-----END ENCRYPTED PRIVATE KEY-----\n")
    bad = cli("show-key", "--key-file", str(garbage))
    assert bad.exit_code == 2 and "damaged" in bad.output, bad.output
    plain = tmp_path / "plain.pem"
    plain.write_bytes(ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    unencrypted = cli("show-key", "--key-file", str(plain))
    assert unencrypted.exit_code == 2 and "not an encrypted PKCS#8" in unencrypted.output
    unpinned = cli("tasks", "--key-file", str(key_file), live=live)
    assert unpinned.exit_code == 2 and "pin-hsm" in unpinned.output
    assert cli("pin-hsm", "--key-file", str(key_file), live=live).exit_code == 0
    down = cli("tasks", "--key-file", str(key_file),
               CUSTODY_APPROVER_SERVER=f"http://127.0.0.1:{free_port()}")
    assert down.exit_code == 3 and "cannot reach" in down.output
    odd = cli("tasks", "--key-file", str(key_file), CUSTODY_APPROVER_SERVER="ftp://x")
    assert odd.exit_code == 2 and "must be http(s)" in odd.output


def test_pinning_is_sticky(live: Live, tmp_path: Path) -> None:
    key_file, _ = new_cli_key(tmp_path, "p256")
    fingerprint = approver_keys.hsm_fingerprint(base64.b64decode(live.hsm_key))
    wrong = cli("pin-hsm", "--key-file", str(key_file), "--expect-fingerprint", "00" * 32,
                live=live)
    assert wrong.exit_code == 1 and "nothing pinned" in wrong.output
    assert not approver_keys.pin_path(key_file).exists()
    ok = cli("pin-hsm", "--key-file", str(key_file), "--expect-fingerprint", fingerprint,
             live=live)
    assert ok.exit_code == 0 and fingerprint in ok.output
    impostor = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    swap = cli("pin-hsm", "--key-file", str(key_file), "--hsm-key",
               base64.b64encode(impostor).decode())
    assert swap.exit_code == 1 and "refusing to replace" in swap.output
    assert approver_keys.load_pin(key_file) == base64.b64decode(live.hsm_key)
    junk = cli("pin-hsm", "--key-file", str(key_file), "--hsm-key", "%%%", "--force")
    assert junk.exit_code == 1 and "not a base64 DER public key" in junk.output


def _retamper(task: dict[str, Any], edit: Callable[[dict[str, Any]], None]) -> None:
    """Edit the challenge body and re-encode it canonically, keeping the HSM signature."""
    doc = json.loads(base64.b64decode(task["approvalToBeSigned"]))
    edit(doc["body"])
    task["approvalToBeSigned"] = base64.b64encode(canonical_json(doc)).decode()


def _set_amount(body: dict[str, Any]) -> None:
    body["intent"]["transfers"][0]["amount"] = "1"


def _forge(task: dict[str, Any], _other: dict[str, Any]) -> None:
    _retamper(task, _set_amount)


def _server_lies_about_intent(task: dict[str, Any], _other: dict[str, Any]) -> None:
    task["intent"] = {**task["intent"], "transfers": [
        {**task["intent"]["transfers"][0], "destination": "alice"}]}


def _other_request(task: dict[str, Any], other: dict[str, Any]) -> None:
    task["approvalToBeSigned"] = other["approvalToBeSigned"]


def _other_payload(task: dict[str, Any], other: dict[str, Any]) -> None:
    task["payload"] = other["payload"]


@pytest.mark.parametrize(("mutate", "message"), [
    (_forge, "not issued by this HSM or was altered"),
    (_server_lies_about_intent, "the server shows intent"),
    (_other_request, "the challenge is for request"),
    (_other_payload, "the payload the server shows is not the one"),
])
def test_hostile_server_is_caught_client_side(
        live: Live, tmp_path: Path, people: dict[str, Approver],
        monkeypatch: pytest.MonkeyPatch, mutate: Any, message: str) -> None:
    key_file, me = new_cli_key(tmp_path, "p256", live)
    label = f"desk-{mutate.__name__}"
    new_key(live, label, [me, people["t2"]])
    target = submit(live, label, 1000, "bob", nonce=1)
    decoy = submit(live, label, 2000, "eve", nonce=2)
    real = ApproverClient.tasks

    def lying(self: ApproverClient, key: Any, page: int = 0) -> list[Any]:
        found = real(self, key, page)
        by_id = {t["id"]: t for t in found}
        mutate(by_id[target], by_id[decoy])
        return found

    monkeypatch.setattr(ApproverClient, "tasks", lying)
    for command in ("show", "approve"):
        result = cli(command, target, "--yes", "--key-file", str(key_file), live=live) \
            if command == "approve" else cli(command, target, "--key-file", str(key_file),
                                              live=live)
        assert result.exit_code == 1, result.output
        assert message in " ".join(result.output.split()), result.output
    listed = cli("tasks", "--key-file", str(key_file), live=live)
    assert listed.exit_code == 1 and "NOT VERIFIED" in listed.output
    assert status(live, target)["approvedBy"] == []  # nothing was signed or sent


def replaying(monkeypatch: pytest.MonkeyPatch, task: dict[str, Any]) -> None:
    """The server lists ``task`` alone (beside its current signed audit head)."""
    real = ApproverClient.tasks

    def listing(self: ApproverClient, key: Any, page: int = 0) -> list[Any]:
        real(self, key, page)
        return [task]

    monkeypatch.setattr(ApproverClient, "tasks", listing)


def test_replayed_and_late_approvals_are_refused(
        live: Live, tmp_path: Path, people: dict[str, Approver],
        monkeypatch: pytest.MonkeyPatch) -> None:
    key_file, me = new_cli_key(tmp_path, "secp256k1", live)
    new_key(live, "desk-replay", [me, people["t1"]])
    request_id = submit(live, "desk-replay")
    with ApproverClient(live.url) as client:
        stale = client.find_task(approver_keys.load_key(key_file, PASS), request_id)
    assert cli("approve", request_id, "--yes", "--key-file", str(key_file),
               live=live).exit_code == 0
    gone = cli("approve", request_id, "--yes", "--key-file", str(key_file), live=live)
    assert gone.exit_code == 1 and "not among your open tasks" in gone.output
    # a server replaying the old listing: the HSM/broker refuse the second answer
    replaying(monkeypatch, stale)
    replay = cli("approve", request_id, "--yes", "--key-file", str(key_file), live=live)
    assert replay.exit_code == 1 and "already answered" in replay.output, replay.output
    assert len(status(live, request_id)["approvedBy"]) == 1


def test_request_closed_while_deciding(live: Live, tmp_path: Path,
                                       people: dict[str, Approver],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    key_file, me = new_cli_key(tmp_path, "ed25519", live)
    new_key(live, "desk-late", [me, people["t1"]])
    request_id = submit(live, "desk-late")

    def cancel_then_yes(_question: str) -> bool:
        live.http.delete(f"/v1/request/{request_id}", headers=bearer("business"))
        return True

    monkeypatch.setattr("custody.approver_cli._confirm", cancel_then_yes)
    late = cli("approve", request_id, "--key-file", str(key_file), live=live)
    assert late.exit_code == 1 and "HTTP 409" in late.output, late.output
    assert status(live, request_id)["status"] == "CANCELLED"


def test_challenge_for_another_approver(live: Live, tmp_path: Path,
                                        people: dict[str, Approver],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A server handing an outsider someone else's task: verified, signed, refused."""
    key_file, _ = new_cli_key(tmp_path, "p256", live)
    new_key(live, "desk-outsider", [people["t1"], people["t2"]])
    request_id = submit(live, "desk-outsider")
    assert "0 open task(s)" in cli("tasks", "--key-file", str(key_file), live=live).stdout
    ts = dt.datetime.now(dt.UTC).isoformat()
    t1 = people["t1"]
    theirs = next(t for t in live.http.post("/v1/filteredSignApprovalTask", json={
        "timestamp": ts, "timestampSignature": base64.b64encode(t1.sign(ts.encode())).decode(),
        "approverCertificate": t1.spki_b64, "detailLevel": "level3"}).json()["tasks"]
        if t["id"] == request_id)
    replaying(monkeypatch, theirs)
    refused = cli("approve", request_id, "--yes", "--key-file", str(key_file), live=live)
    assert refused.exit_code == 1 and "may not answer this task" in refused.output
    assert status(live, request_id)["approvedBy"] == []


def test_control_characters_are_shown_escaped(live: Live, tmp_path: Path,
                                              people: dict[str, Approver]) -> None:
    key_file, me = new_cli_key(tmp_path, "p256", live)
    new_key(live, "desk-escape", [me, people["t2"]])
    request_id = submit(live, "desk-escape", 1000, "bob\x1b[2J[red]x[/red]")
    shown = cli("show", request_id, "--key-file", str(key_file), live=live)
    assert shown.exit_code == 0, shown.output
    assert "\x1b" not in shown.stdout and "bob\\x1b[2J[red]x[/red]" in shown.stdout


# -- HTTPS ------------------------------------------------------------------------------


def _tls_files(tmp: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "approver test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file, cert_file, key_file = tmp / "ca.pem", tmp / "server.pem", tmp / "server.key"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_file, cert_file, key_file


def test_over_https_with_a_private_ca(tmp_path: Path, people: dict[str, Approver]) -> None:
    ca_file, cert_file, server_key = _tls_files(tmp_path)
    for url, _hsm in _serve(tmp_path, ssl_certfile=str(cert_file),
                            ssl_keyfile=str(server_key)):
        key_file, me = new_cli_key(tmp_path, "p256")
        untrusted = cli("pin-hsm", "--key-file", str(key_file),
                        CUSTODY_APPROVER_SERVER=url)
        assert untrusted.exit_code == 3 and "TLS error" in untrusted.output, untrusted.output
        env = {"CUSTODY_APPROVER_SERVER": url, "CUSTODY_APPROVER_CA_FILE": str(ca_file)}
        assert cli("pin-hsm", "--key-file", str(key_file), env=env).exit_code == 0
        with httpx.Client(base_url=url, timeout=10,
                          verify=ssl.create_default_context(cafile=str(ca_file))) as http:
            live = Live(url, http, "")
            new_key(live, "desk-tls", [me, people["t2"]])
            request_id = submit(live, "desk-tls")
            approved = cli("approve", request_id, "--yes", "--key-file", str(key_file), env=env)
            assert approved.exit_code == 0, approved.output
            assert python_approve(live, people["t2"], request_id) == "EXECUTED"


def test_an_approver_sees_every_unit_that_can_leave() -> None:
    """Grants, rent, the most the fee can be and what an opaque call calls are shown, not
    only transfers: an approval of ``approve(spender, max)`` must not look like nothing."""
    from custody.approver_verify import VerifiedTask
    from hsm_emulator.model import Grant, Intent, IntentKind, Transfer

    spender = "0x00000000000000000000000000000000000000a7"
    intent = Intent("ethereum", "eip155:1", IntentKind.GRANT,
                    (Transfer("ETH", 0, spender),), 21_000, "ETH",
                    grants=(Grant("ERC20:0xc0", 2**256 - 1, spender),), rent=7,
                    calls=("0xc0",))
    body = {"keyLabel": "w", "action": "use", "intent": intent.to_json(), "initiator": "desk",
            "units": {"ETH": {"symbol": "ETH", "decimals": 18}, "ERC20:0xc0": None},
            "feeCap": "42000000000000"}
    lines = dict(VerifiedTask("r1", body, b"", "").intent_lines())
    assert lines["kind"] == "grant" and lines["spender"] == spender
    assert lines["allowance"] == f"{2**256 - 1:,} base units of ERC20:0xc0"
    assert lines["allowance asset"] == "ERC20:0xc0"
    assert lines["rent"] == "0.000000000000000007 ETH"
    assert lines["fee (most)"] == "0.000000000000021 ETH"
    assert lines["fee cap"] == "0.000042 ETH"  # the cap in the fee's unit
    assert lines["calls"] == "0xc0"


def test_a_transfer_signed_again_is_shown_as_the_server_reports_it(
        live: Live, tmp_path: Path, people: dict[str, Approver],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The server names a transfer's earlier, expired transactions (``earlierAttempts``):
    the CLI marks the task in its list and says it under the verified table - as the
    server's word; entries of the wrong shape are left out, never shown or trusted."""
    key_file, me = new_cli_key(tmp_path, "p256", live)
    new_key(live, "desk-again", [me, people["t2"]])
    request_id = submit(live, "desk-again", 1500, "carol", nonce=3)
    dead = "5" * 64
    real = ApproverClient.tasks

    def noted(self: ApproverClient, key: Any, page: int = 0) -> list[Any]:
        found = real(self, key, page)
        for t in found:
            if t["id"] == request_id:
                t["earlierAttempts"] = [{"txid": dead, "reason": "blockhash expired"},
                                        "junk", {"txid": 5, "reason": "x"}]
        return found

    monkeypatch.setattr(ApproverClient, "tasks", noted)
    listed = cli("tasks", "--key-file", str(key_file), live=live)
    assert listed.exit_code == 0, listed.output
    assert "use (signed again)" in listed.stdout
    shown = cli("show", request_id, "--key-file", str(key_file), live=live)
    assert shown.exit_code == 0, shown.output
    assert ("signed again (as the server reports it): attempt 2; the earlier transaction "
            "expired without landing, so nothing moved by it:") in " ".join(shown.stdout.split())
    assert f"{dead} (blockhash expired)" in shown.stdout
    as_json = cli("tasks", "--json", "--key-file", str(key_file), live=live)
    [task] = [t for t in json.loads(as_json.stdout)["tasks"] if t["id"] == request_id]
    assert task["earlierAttempts"] == [{"txid": dead, "reason": "blockhash expired"}]
    rejected = cli("reject", request_id, "--yes", "--key-file", str(key_file), live=live)
    assert rejected.exit_code == 0, rejected.output
