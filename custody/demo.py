"""``custody demo``: an HSM, a treasury key with tiered policy, addresses, and releases.

Until the broker and the chains exist this runs the HSM on its own, embedded: it creates
the HSM in a data directory, the traders' and compliance officers' approval keys (the
demo plays their phones), a treasury key with the design card's tiers, derives deposit
addresses, shows what the policy requires for a few payloads, and then releases a small,
a medium and a large transfer the way approvers would - the 24 h hold passing on the
HSM's injectable clock, which the demo advances and says so. It finishes by verifying
the audit log and the key's attestation offline, and exits non-zero if anything failed.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from rich.console import Console
from rich.table import Table

from hsm_emulator import Action, Approval, Hsm, ManualClock, Passphrase
from hsm_emulator.attestation import verify_attestation
from hsm_emulator.audit import verify_log
from hsm_emulator.challenge import open_challenge
from hsm_emulator.decoders import transfer_payload
from hsm_emulator.errors import HsmError

BTC = 100_000_000  #: satoshis per bitcoin
ASSET = "BTC"


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

    def approve(self, hsm_public: bytes, approval_to_be_signed: str) -> Approval:
        open_challenge(approval_to_be_signed, hsm_public)  # what you see is what you sign
        msg = base64.b64decode(approval_to_be_signed)
        sig = self.key.sign(msg) if isinstance(self.key, ed25519.Ed25519PrivateKey) else (
            self.key.sign(msg, ec.ECDSA(hashes.SHA256())))
        return Approval("public_key", self.spki, sig)


def tier_policy(traders: list[DemoApprover], compliance: list[DemoApprover],
                hold: int) -> dict[str, Any]:
    def grp(name: str, quorum: int, people: list[DemoApprover]) -> dict[str, Any]:
        return {"name": name, "quorum": quorum,
                "approvals": [{"type": "public_key", "value": p.spki, "name": p.name}
                              for p in people]}

    return {
        "ruleUse": {"tokens": [
            {"name": "small", "timelock": 0, "timeout": 0, "groups": [],
             "conditions": {"amounts": [{"asset": ASSET, "max": 1 * BTC}]}},
            {"name": "medium", "timelock": 0, "timeout": 3600,
             "groups": [grp("traders", 2, traders)],
             "conditions": {"amounts": [{"asset": ASSET, "max": 50 * BTC}]}},
            {"name": "large", "timelock": hold, "timeout": 3 * 86400,
             "groups": [grp("traders", 2, traders), grp("compliance", 1, compliance)],
             "conditions": {"amounts": [{"asset": ASSET, "min": 0}]}},
        ]},
        "ruleBlock": {"tokens": [{"name": "block", "groups": [grp("traders", 1, traders)]}]},
        "ruleUnblock": {"tokens": [{"name": "unblock", "groups": [
            grp("traders", 2, traders), grp("compliance", 1, compliance)]}]},
        "ruleModify": {"tokens": [{"name": "modify", "groups": [
            grp("traders", 2, traders), grp("compliance", 1, compliance)]}]},
    }


def run_demo(data_dir: Path, console: Console) -> bool:
    data_dir.mkdir(parents=True, exist_ok=True)
    store = data_dir / "hsm.sqlite"
    for stale in data_dir.glob("hsm.sqlite*"):
        stale.unlink()
    clock = ManualClock()
    hsm = Hsm.open(store, Passphrase("demo passphrase - not for production"),
                   so_passphrase="demo security officer", clock=clock)  # noqa: S106 - demo
    try:
        return _day(hsm, clock, console)
    finally:
        hsm.close()


def _day(hsm: Hsm, clock: ManualClock, console: Console) -> bool:
    traders = [DemoApprover(f"trader-{i}", edwards=i == 2) for i in (1, 2, 3)]
    compliance = [DemoApprover("compliance-1")]
    info = hsm.create_key("treasury-btc", "SECP256K1",
                          policy=tier_policy(traders, compliance, hold=86400))
    console.print(f"[bold]HSM[/] {hsm.hsm_id}: key [cyan]{info.label}[/] created inside, "
                  f"policy {info.policy_digest[:16]}..., non-exportable")
    _addresses(hsm, console)
    _dry_runs(hsm, traders, compliance, console)
    ok = _releases(hsm, clock, traders, compliance, console)
    return _verify(hsm, console) and ok


def _addresses(hsm: Hsm, console: Console) -> None:
    hsm.create_key("treasury-sol", "ED25519", policy={})
    table = Table(title="Deposit addresses, derived inside the HSM")
    for col in ("chain", "path", "address"):
        table.add_column(col)
    for kind, net, label, path in [
        ("p2wpkh", "regtest", "treasury-btc", "m/84'/1'/0'/0/0"),
        ("p2wpkh", "mainnet", "treasury-btc", "m/84'/0'/0'/0/0"),
        ("p2tr", "regtest", "treasury-btc", "m/86'/1'/0'/0/0"),
        ("ethereum", "mainnet", "treasury-btc", "m/44'/60'/0'/0/0"),
        ("solana", "mainnet", "treasury-sol", "m/44'/501'/0'/0'"),
    ]:
        table.add_row(f"{kind} {net}", path, hsm.address(label, kind, net, path))
    console.print(table)


def _dry_runs(hsm: Hsm, traders: list[DemoApprover], compliance: list[DemoApprover],
              console: Console) -> None:
    table = Table(title="What the policy requires (dry runs: nothing is signed)")
    for col in ("payload", "approvers present", "released by", "still missing"):
        table.add_column(col)
    cases = [(0.5, []), (10, []), (10, traders[:2]), (120, traders[:2] + compliance)]
    for btc, present in cases:
        payload = transfer_payload(ASSET, int(btc * BTC), "bcrt1q-destination", 500)
        ev = hsm.dry_run("treasury-btc", payload, "TEST_TRANSFER",
                         approvers=[p.spki for p in present])
        table.add_row(f"{btc} BTC", ", ".join(p.name for p in present) or "-",
                      ev.released_by or "-", "\n".join(ev.missing()) or "-")
    console.print(table)


def _releases(hsm: Hsm, clock: ManualClock, traders: list[DemoApprover],
              compliance: list[DemoApprover], console: Console) -> bool:
    table = Table(title="Releases")
    for col in ("transfer", "tier", "approvals", "hold", "signature"):
        table.add_column(col)
    ok = True
    pub = hsm.identity_public_key()
    for btc, approvers, hold in [(0.5, [], 0), (10, traders[:2], 0),
                                 (120, [traders[0], traders[2], compliance[0]], 86400)]:
        payload = transfer_payload(ASSET, int(btc * BTC), "bcrt1q-destination", 500)
        try:
            if not approvers:
                result = hsm.sign_now("treasury-btc", payload, "TEST_TRANSFER")
            else:
                ch = hsm.begin("treasury-btc", Action.USE, payload, "TEST_TRANSFER",
                               initiator="treasury-desk")
                approvals = [a.approve(pub, ch.approval_to_be_signed) for a in approvers]
                if hold:
                    try:
                        hsm.execute(ch.request_id, approvals)
                        ok = False  # must not happen: the hold is not over
                        console.print("[red]released before the hold ended[/]")
                    except HsmError:
                        console.print("  large transfer held as required; "
                                      "[dim](advancing the HSM's clock by 24 h)[/]")
                    clock.advance(hold)
                result = hsm.execute(ch.request_id, approvals)
            table.add_row(f"{btc} BTC", result.token or "-", str(len(result.approved_by)),
                          f"{hold // 3600} h" if hold else "-", result.signatures[0].hex()[:24])
        except HsmError as exc:
            ok = False
            table.add_row(f"{btc} BTC", "[red]refused[/]", "-", "-", str(exc))
    console.print(table)
    return ok


def _verify(hsm: Hsm, console: Console) -> bool:
    entries = hsm.audit_entries(1, 100_000)
    report = verify_log(entries, [hsm.audit_head(), *hsm.audit_checkpoints()],
                        hsm.identity_public_key())
    statement = verify_attestation(hsm.attest("treasury-btc"), hsm.identity_public_key())
    console.print(f"audit log: {report.entries} entries, "
                  + ("[green]chain and signed head verified[/]" if report.ok
                     else f"[red]{report.problems}[/]"))
    console.print(f"attestation: key {statement['label']} non-exportable="
                  f"{statement['nonExportable']} [green]verified offline[/]")
    return report.ok
