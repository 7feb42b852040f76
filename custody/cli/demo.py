"""``custody demo``: a treasury day end to end, on the embedded default.

It starts the three local networks itself (Bitcoin regtest on Bitcoin Core's consensus
code, anvil, LiteSVM), the API server on loopback (in-process HSM, SQLite), and then
does what a desk and its approvers do, only through the HTTP API: a key administrator
creates one wallet per chain with the design card's tiers; the wallets are funded; the
desk sends a small, a medium and a large transfer per chain; the traders and the
compliance officer - whose phones the demo plays - list their tasks with a signed
timestamp, check the HSM's signature on each challenge, and approve. The large tier's
24 h hold is shortened by configuration (``--hold``, seconds). A block is mined every
second on regtest. The demo ends with a table (tier, approvals, hold, txid,
confirmations, seconds from request to confirmation), verifies the HSM audit log and a
key attestation offline, and exits non-zero if anything did not confirm.

Every run starts from fresh networks and a fresh data directory (the local chains live
only as long as the demo).
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from rich.console import Console
from rich.table import Table
from solders.keypair import Keypair

from approvals_app.auth import issue_token
from approvals_app.main import create_app
from approvals_app.settings import Settings
from chains.ethereum.encoding import checksum
from hsm_emulator.attestation import verify_attestation
from hsm_emulator.audit import AuditEntry, SignedHead, verify_log
from hsm_emulator.challenge import open_challenge

from ..broker import REJECT_PREFIX
from ..console import ProgressLines
from ..localnets import BURN, LocalNets, free_port

TENANT = "treasury-desk"


class DemoApprover:
    """An approver's phone, played by the demo: a P-256 or Ed25519 key."""

    def __init__(self, name: str, edwards: bool = False) -> None:
        self.name = name
        self.key: Any = ed25519.Ed25519PrivateKey.generate() if edwards else (
            ec.generate_private_key(ec.SECP256R1()))

    @property
    def spki(self) -> str:
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(der).decode()

    def entry(self) -> dict[str, str]:
        return {"type": "public_key", "value": self.spki, "name": self.name}

    def sign(self, message: bytes) -> bytes:
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            return self.key.sign(message)
        return bytes(self.key.sign(message, ec.ECDSA(hashes.SHA256())))

    def answer(self, api: httpx.Client, hsm_identity: bytes, request_id: str,
               reject: bool = False) -> None:
        """List tasks (signed timestamp), verify the challenge is the HSM's, sign it."""
        ts = dt.datetime.now(dt.UTC).isoformat()
        r = api.post("/v1/filteredSignApprovalTask", json={
            "timestamp": ts, "timestampSignature": base64.b64encode(
                self.sign(ts.encode())).decode(), "approverCertificate": self.spki})
        _ok(r)
        task = next(t for t in r.json()["tasks"] if t["id"] == request_id)
        body = open_challenge(task["approvalToBeSigned"], hsm_identity)  # WYSIWYS
        if body["requestId"] != request_id:
            raise RuntimeError("the broker showed another request's challenge")
        challenge = base64.b64decode(task["approvalToBeSigned"])
        r = api.post("/v1/rejection" if reject else "/v1/approval", json={
            "id": request_id, "approvalToBeSigned": task["approvalToBeSigned"],
            "approverCertificate": self.spki, "signature": base64.b64encode(
                self.sign(REJECT_PREFIX + challenge if reject else challenge)).decode()})
        _ok(r)


@dataclass
class Planned:
    chain: str
    wallet: str
    asset: str
    amount: str
    destination: str
    approvers: list[DemoApprover]
    transfer: dict[str, Any] | None = None


class DemoFailed(Exception):
    pass


def _ok(r: httpx.Response) -> None:
    if r.is_error:
        raise DemoFailed(f"{r.request.method} {r.request.url.path} -> {r.status_code}: "
                         f"{r.text[:500]}")


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the demo's thread, not the main one
        pass


#: Written into every directory the demo makes: only such a directory is wiped on a rerun.
MARKER = ".custody-demo-dir"


class DataDirRefused(DemoFailed):
    """The scratch directory holds something the demo did not put there."""


def prepare_data_dir(data_dir: Path) -> None:
    """Give the demo a fresh, empty scratch directory, never deleting what it did not make.

    A new or empty directory is used as it is; one that carries the demo's marker is wiped
    (fresh networks every run need fresh state); anything else is refused untouched: a
    mistyped ``--data-dir`` must not delete a user's files.
    """
    if data_dir.exists() and not data_dir.is_dir():
        raise DataDirRefused(f"--data-dir {data_dir} is a file, not a directory")
    if data_dir.is_dir() and any(data_dir.iterdir()):
        if not (data_dir / MARKER).is_file():
            raise DataDirRefused(f"--data-dir {data_dir} is not empty and was not made by "
                                 "`custody demo`; give a new or empty directory")
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / MARKER).write_text("made by `custody demo`; wiped by its next run\n")


def run_demo(data_dir: Path, console: Console, hold: int = 5) -> bool:
    prepare_data_dir(data_dir)
    secret = secrets.token_urlsafe(32)
    settings = Settings(database_url=f"sqlite:///{data_dir / 'custody.sqlite'}",
                        hsm_store=data_dir / "hsm.sqlite",
                        hsm_passphrase=secrets.token_urlsafe(24),
                        hsm_so_passphrase=secrets.token_urlsafe(24), jwt_secret=secret)
    with LocalNets(data_dir) as nets:
        console.print("[bold]local networks[/]: Bitcoin regtest (Core's consensus code), "
                      "anvil, LiteSVM - started")
        app = create_app(settings, chains=nets.endpoints())
        port = free_port()
        server = _Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, name="api", daemon=True)
        thread.start()
        stop = threading.Event()
        miner = threading.Thread(target=_mine, args=(nets, stop), name="miner", daemon=True)
        try:
            while not server.started:
                time.sleep(0.05)
            console.print(f"[bold]API[/] on http://127.0.0.1:{port} (in-process HSM, SQLite)")
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as api:
                miner.start()
                return _day(api, nets, secret, hold, console)
        except DemoFailed as exc:
            console.print(f"[red]demo failed:[/] {exc}")
            return False
        finally:
            stop.set()
            server.should_exit = True
            thread.join(timeout=10)


def _mine(nets: LocalNets, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        try:
            nets.mine(1)
        except Exception:  # the node stops with the demo
            return


def _headers(secret: str, *roles: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + issue_token(secret, "desk-app", TENANT, list(roles))}


def _day(api: httpx.Client, nets: LocalNets, secret: str, hold: int, console: Console) -> bool:
    traders = [DemoApprover(f"trader-{i}", edwards=i == 2) for i in (1, 2, 3)]
    compliance = [DemoApprover("compliance-1")]
    identity = base64.b64decode(api.get("/v1/hsm").json()["identityPublicKey"])
    admin, desk = _headers(secret, "key_admin"), _headers(secret, "business")
    policy = {"traders": [t.entry() for t in traders],
              "compliance": [c.entry() for c in compliance], "hold": hold,
              "mediumTimeout": 3600, "largeTimeout": 3 * 86400}
    wallets = {}
    for chain, network, symbol in (("bitcoin", "regtest", "BTC"), ("ethereum", "31337", "ETH"),
                                   ("solana", "localnet", "SOL")):
        r = api.post("/v1/wallets", headers=admin, json={
            "name": f"treasury-{chain}", "chain": chain, "network": network,
            "policy": {**policy, "tiers": {symbol: {"small": "1", "medium": "10",
                                                    "max": "1000"}}}})
        _ok(r)
        wallets[chain] = r.json()
    _show_policy(console, wallets["bitcoin"], hold)
    _fund(api, nets, wallets, desk)
    eth_dest, sol_dest = checksum(os.urandom(20)), str(Keypair().pubkey())
    plan: list[Planned] = []
    for chain, asset, dest in (("bitcoin", "BTC", BURN), ("ethereum", "ETH", eth_dest),
                               ("solana", "SOL", sol_dest)):
        wid = wallets[chain]["id"]
        plan += [Planned(chain, wid, asset, "0.5", dest, []),
                 Planned(chain, wid, asset, "5", dest, traders[:2]),
                 Planned(chain, wid, asset, "25", dest, [traders[0], traders[2], compliance[0]])]
    ok = _run(api, plan, identity, desk, console)
    _table(console, plan, hold)
    return _verify(api, secret, wallets, identity, console) and ok


def _fund(api: httpx.Client, nets: LocalNets, wallets: dict[str, Any],
          desk: dict[str, str]) -> None:
    btc = wallets["bitcoin"]["id"]
    for _ in range(4):  # fresh deposit addresses, derived in the HSM on demand
        r = api.post(f"/v1/wallets/{btc}/addresses", headers=desk, json={"label": "funding"})
        _ok(r)
        nets.mine(1, r.json()["address"])
    nets.mine(100)  # coinbase maturity
    nets.fund_ether(wallets["ethereum"]["address"], 100 * 10**18)
    nets.fund_sol(wallets["solana"]["address"], 100 * 10**9)


def _run(api: httpx.Client, plan: list[Planned], identity: bytes, desk: dict[str, str],
         console: Console) -> bool:
    with ProgressLines(console) as progress:  # plain lines when stdout is not a terminal
        bars = {}
        for p in plan:
            r = api.post("/v1/transfers", headers={**desk, "Idempotency-Key": secrets.token_hex(8)},
                         json={"wallet": p.wallet, "asset": p.asset, "amount": p.amount,
                               "destination": p.destination, "memo": "treasury day"})
            _ok(r)
            p.transfer = r.json()
            bars[p.transfer["id"]] = progress.add(
                f"{p.chain:8} {p.amount:>4} {p.asset}: {p.transfer['state']}")
        for p in plan:  # the approvers' phones
            assert p.transfer is not None
            for who in p.approvers:
                who.answer(api, identity, p.transfer["signRequestId"])
        deadline = time.monotonic() + 120
        pending = {p.transfer["id"]: p for p in plan if p.transfer}
        while pending and time.monotonic() < deadline:
            for tid, p in list(pending.items()):
                t = api.get(f"/v1/transfers/{tid}", headers=desk).json()
                p.transfer = t
                progress.update(bars[tid], f"{p.chain:8} {p.amount:>4} {p.asset}: {t['state']}")
                if t["state"] in ("confirmed", "rejected", "expired", "cancelled", "failed"):
                    pending.pop(tid)
            time.sleep(0.25)
    return all(p.transfer and p.transfer["state"] == "confirmed" for p in plan)


def _seconds(t: dict[str, Any], state: str) -> float | None:
    at = {h["state"]: dt.datetime.fromisoformat(h["at"]) for h in t["history"]}
    if state not in at:
        return None
    return (at[state] - at["requested"]).total_seconds()


def _table(console: Console, plan: list[Planned], hold: int) -> None:
    table = Table(title="Treasury day (seconds from request)")
    for col in ("chain", "amount", "tier", "appr.", "hold", "state", "txid", "conf",
                "signed", "confirmed"):
        table.add_column(col, no_wrap=True)
    for p in plan:
        t = p.transfer or {}
        signed, confirmed = _seconds(t, "signed"), _seconds(t, "confirmed")
        table.add_row(p.chain, f"{p.amount} {p.asset}", t.get("tier") or "-",
                      str(len(p.approvers)) if p.approvers else "auto",
                      f"{hold} s" if (t.get("tier") or "").startswith("large") else "-",
                      t.get("state", "?"), (t.get("txid") or "-")[:12],
                      str(t.get("confirmations", 0)),
                      "-" if signed is None else f"{signed:.2f}",
                      "-" if confirmed is None else f"{confirmed:.2f}")
    console.print(table)


def _show_policy(console: Console, wallet: dict[str, Any], hold: int) -> None:
    from ..treasury.policy import FEE_CAPS

    tiers = wallet["policy"]["tiers"]
    native = next(iter(tiers))
    cap = wallet["policy"].get("maxFee", FEE_CAPS.get(native, "?"))
    for symbol, tier in tiers.items():
        console.print(f"[bold]policy[/] {symbol}: up to {tier['small']} auto-signed; up to "
                      f"{tier['medium']} needs 2 of 3 traders; above that 2 traders AND 1 "
                      f"compliance AND a {hold} s hold (24 h in production); at most "
                      f"{tier['max']}; fee plus rent at most {cap} {native}; signed for "
                      f"{wallet['chain']}:{wallet['network']} only - enforced by the HSM on "
                      "the decoded transaction")


def _verify(api: httpx.Client, secret: str, wallets: dict[str, Any], identity: bytes,
            console: Console) -> bool:
    auditor = _headers(secret, "auditor")
    entries, start = [], 1
    while True:
        r = api.get("/v1/audit", params={"start": start, "limit": 1000}, headers=auditor)
        _ok(r)
        doc = r.json()
        batch = [AuditEntry.from_json(e) for e in doc["entries"]]
        entries += batch
        if len(batch) < 1000:
            break
        start = batch[-1].seq + 1
    heads = [SignedHead.from_json(h) for h in [doc["head"], *doc.get("checkpoints", [])]]
    report = verify_log(entries, heads, identity)
    console.print(f"audit log: {report.entries} entries, " + (
        "[green]hash chain and HSM-signed head verified offline[/]" if report.ok
        else f"[red]{report.problems}[/]"))
    key = api.get(f"/v1/key/{wallets['bitcoin']['keyLabel']}", headers=_headers(
        secret, "key_admin")).json()
    from hsm_emulator.results import Attestation

    statement = verify_attestation(Attestation.from_json(key["attestation"]), identity)
    console.print(f"attestation: key {statement['label']} generated inside, non-exportable="
                  f"{statement['nonExportable']} [green]verified offline[/]")
    return report.ok
