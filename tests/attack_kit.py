"""The compromised-broker attack kit: wallets on the local chains, and the attempt harness.

The attacker holds everything outside the HSM - here, a :class:`RemoteHsmClient`
connection to the HSM running as its own process, and the chain nodes. A *world* is
one chain's wallet: it builds unsigned transactions the way a (hostile) broker would,
and reads balances from the node. :func:`attempt` runs one malicious call and checks
the promise: refused with a specific :class:`HsmError`, the refusal in the HSM's audit
log, and no balance moved on the chain.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import coincurve
from solders.hash import Hash
from solders.pubkey import Pubkey

from chains.bitcoin.adapter import BitcoinAdapter
from chains.bitcoin.addresses import script_to_address
from chains.bitcoin.assemble import finalize
from chains.bitcoin.builder import ChangeKey, Payment, build_psbt
from chains.bitcoin.ownership import key_fingerprint
from chains.bitcoin.psbt import Psbt
from chains.bitcoin.rpc import BitcoinRpc, btc_to_sats
from chains.bitcoin.scripts import ScriptKind, p2wpkh_script
from chains.ethereum.client import EthClient
from chains.ethereum.encoding import address_bytes, checksum
from chains.ethereum.erc20 import encode_transfer
from chains.ethereum.parse import decode_unsigned
from chains.ethereum.tx import Eip1559Tx, assemble, serialize_unsigned
from chains.solana.adapter import SolanaAdapter
from chains.solana.tx import ComputeBudget, build_sol_transfer, build_spl_transfer
from chains.solana.tx import assemble as sol_assemble
from hsm_emulator.audit import bounded
from hsm_emulator.client import HsmClient
from hsm_emulator.errors import HsmError
from tests.helpers import Approver, group, token
from tests.remote_kit import (
    NOT_IN_PRODUCTION,
    HsmProcess,
    TimeControl,
    production_env,
)

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
DAY = 86_400
HOLD, TIMEOUT = DAY, 3 * DAY  #: the large tier's hold and timeout (seconds)


@dataclass(frozen=True)
class Tiers:
    """One asset's treasury tiers, in base units."""

    asset: str
    small: int  #: auto-signed up to this
    medium: int  #: two traders up to this; above it the large tier
    velocity: int  #: the auto tier's rolling-window limit over :data:`DAY`


def treasury_policy(traders: list[Approver], compliance: list[Approver], tiers: list[Tiers],
                    fee_asset: str, max_fee: int, network: str) -> dict[str, Any]:
    """The design card's tiers for several assets, with velocity and a fee cap, for one
    ``chain:network`` (a key signs only for the networks its policy names)."""
    fee = [{"asset": fee_asset, "max": max_fee}]

    def amounts(tier: str) -> list[dict[str, Any]]:
        return [{"asset": t.asset, **({"max": getattr(t, tier)} if tier else {"min": 0})}
                for t in tiers]

    small = {"amounts": amounts("small"), "maxFee": fee, "velocity": [
        {"asset": t.asset, "windowSeconds": DAY, "max": t.velocity} for t in tiers]}
    admins = [group("admins", 2, traders)]
    return {
        "ruleUse": {"tokens": [
            token("small", [], conditions=small),
            token("medium", [group("traders", 2, traders)], timeout=3600,
                  conditions={"amounts": amounts("medium"), "maxFee": fee}),
            token("large", [group("traders", 2, traders), group("compliance", 1, compliance)],
                  timelock=HOLD, timeout=TIMEOUT,
                  conditions={"amounts": amounts(""), "maxFee": fee}),
        ]},
        "ruleBlock": {"tokens": [token("block", [group("admins", 1, traders)])]},
        "ruleUnblock": {"tokens": [token("unblock", admins)]},
        "ruleModify": {"tokens": [token("modify", admins)]},
        "networks": [network],
    }


# -- the HSM as production runs it ------------------------------------------------------


def start_hsm(workdir: Path, sockdir: Path, time_control: TimeControl) -> HsmProcess:
    """``python -m hsm_emulator.remote`` as production starts it (no test decoder,
    default networks), with the test clock file and a cheap scrypt."""
    server = HsmProcess.start(workdir, sockdir, time_control, production=True)
    assert not any(k in production_env() for k in NOT_IN_PRODUCTION)
    return server


class World(Protocol):
    """One chain's HSM wallet, as the attacker sees it."""

    chain: str
    label: str
    payload_type: str
    tiers: Tiers  #: of the native asset
    max_fee: int

    def build(self, amount: int, *, to: int = 0, high_fee: bool = False,
              asset: str | None = None) -> bytes:
        """An unsigned transfer from the wallet to attacker address ``to`` (0 or 1)."""
        ...

    def send(self, payload: bytes, signatures: tuple[bytes, ...]) -> None:
        """Assemble, broadcast and confirm a transfer the HSM signed."""
        ...

    def balances(self) -> dict[str, int]:
        """The wallet's and the attacker addresses' balances, read from the node."""
        ...

    def settle(self) -> None:
        """Confirm whatever is pending (mine), so a leaked signature would show."""
        ...


# -- Bitcoin (regtest node) -------------------------------------------------------------

BURN = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"  #: BIP173's example, regtest


@dataclass
class BtcWorld:
    rpc: BitcoinRpc
    client: HsmClient
    label: str = "btc"
    chain: str = "btc"
    payload_type: str = "BITCOIN_PSBT:regtest"
    tiers: Tiers = Tiers("BTC", 10**8, 10 * 10**8, 3 * 10**8)
    max_fee: int = 50_000  #: sat
    attackers: tuple[str, str] = field(default=("", ""))

    def __post_init__(self) -> None:
        # Public keys cached: an invalidated key answers nothing, but its coins stay.
        self.public_key = functools.cache(self.client.public_key)
        self.adapter = BitcoinAdapter("regtest", self.rpc, self.public_key)
        if not all(self.attackers):
            self.attackers = new_btc_attackers()

    def fund(self, coinbases: int, *, mature: bool = True) -> None:
        for i in range(coinbases):
            self.rpc.generatetoaddress(1, self.adapter.address_at(self.label, f"0/{i}"))
        if mature:
            self.rpc.generatetoaddress(100, BURN)  # coinbase maturity

    def broadcast(self, raw: bytes) -> str:
        """What a hostile broker does with a signed transaction: send it with the node's
        fee sanity check (``maxfeerate``) off - the attacker runs the node."""
        return str(self.rpc.call("sendrawtransaction", raw.hex(), 0))

    def build(self, amount: int, *, to: int = 0, high_fee: bool = False,
              asset: str | None = None) -> bytes:
        coins = self.adapter.coins(self.label)
        used = {c.path for c in coins}
        path = next(f"1/{i}" for i in range(200) if f"1/{i}" not in used)
        change = ChangeKey(path, self.public_key(self.label, path), ScriptKind.P2WPKH)
        fingerprint = key_fingerprint(self.public_key(self.label, ""))
        psbt = build_psbt("regtest", coins, [Payment(self.attackers[to], amount)], change,
                          1_000.0 if high_fee else 2.0, fingerprint)
        return psbt.serialize()

    def send(self, payload: bytes, signatures: tuple[bytes, ...]) -> None:
        self.broadcast(finalize(Psbt.parse(payload), signatures))
        self.settle()

    def balances(self) -> dict[str, int]:
        out = {"wallet": sum(c.amount for c in self.adapter.coins(self.label))}
        for i, addr in enumerate(self.attackers):
            scan = self.rpc.scantxoutset([f"addr({addr})"])
            out[f"attacker{i}"] = sum(btc_to_sats(u["amount"]) for u in scan["unspents"])
        out["mempool"] = len(self.rpc.call("getrawmempool"))
        return out

    def settle(self) -> None:
        self.rpc.generatetoaddress(1, BURN)


def _btc_address() -> str:
    pub = coincurve.PrivateKey().public_key.format()
    return script_to_address("regtest", p2wpkh_script(pub))


def new_btc_attackers() -> tuple[str, str]:
    return _btc_address(), _btc_address()


def new_eth_attackers() -> tuple[str, str]:
    return checksum(os.urandom(20)), checksum(os.urandom(20))


def new_sol_attackers() -> tuple[str, str]:
    return str(Pubkey.new_unique()), str(Pubkey.new_unique())


# -- Ethereum (anvil) -------------------------------------------------------------------


@dataclass
class EthWorld:
    eth: EthClient
    client: HsmClient
    chain_id: int
    token: str = ""  #: the ERC-20's address, once deployed
    token_tiers: Tiers | None = None
    label: str = "eth"
    payload_type: str = ""
    chain: str = "eth"
    tiers: Tiers = Tiers("ETH", 10**18, 10 * 10**18, 3 * 10**18)
    max_fee: int = 10**15  #: wei, gasLimit * maxFeePerGas
    attackers: tuple[str, str] = field(default=("", ""))

    def __post_init__(self) -> None:
        self.payload_type = f"ETHEREUM_TX:eip155:{self.chain_id}"
        self.address = self.client.address(self.label, "ethereum", "mainnet")
        if not all(self.attackers):
            self.attackers = new_eth_attackers()

    @property
    def token_asset(self) -> str:
        return "ERC20:" + self.token.lower()

    def build(self, amount: int, *, to: int = 0, high_fee: bool = False,
              asset: str | None = None) -> bytes:
        nonce = self.eth.pending_nonce(self.address)
        quote = self.eth.fee_quote()
        max_fee = 100 * 10**9 if high_fee else quote.max_fee
        dest = address_bytes(self.attackers[to])
        if asset is None or asset == "ETH":
            tx = Eip1559Tx(self.chain_id, nonce, quote.priority_fee, max_fee, 21_000, dest,
                           amount)
        else:
            tx = Eip1559Tx(self.chain_id, nonce, quote.priority_fee, max_fee, 100_000,
                           address_bytes(self.token), 0, encode_transfer(dest, amount))
        return serialize_unsigned(tx)

    def send(self, payload: bytes, signatures: tuple[bytes, ...]) -> None:
        txid = self.eth.send_raw_transaction(assemble(decode_unsigned(payload), signatures[0]))
        self.eth.wait_for_depth(txid, 1, timeout=20)

    def tx(self, *, to: bytes, value: int = 0, data: bytes = b"", gas: int = 21_000,
           max_fee: int | None = None, priority: int | None = None,
           chain_id: int | None = None) -> bytes:
        """An unsigned type-2 transaction from the wallet, any field the attacker likes."""
        quote = self.eth.fee_quote()
        return serialize_unsigned(Eip1559Tx(
            self.chain_id if chain_id is None else chain_id, self.eth.pending_nonce(self.address),
            quote.priority_fee if priority is None else priority,
            quote.max_fee if max_fee is None else max_fee, gas, to, value, data))

    def balances(self) -> dict[str, int]:
        out = {"wallet": self.eth.balance(self.address),
               "nonce": self.eth.pending_nonce(self.address)}
        for i, addr in enumerate(self.attackers):
            out[f"attacker{i}"] = self.eth.balance(addr)
        if self.token:
            out["wallet_token"] = self.eth.erc20_balance(self.token, self.address)
            for i, addr in enumerate(self.attackers):
                out[f"attacker{i}_token"] = self.eth.erc20_balance(self.token, addr)
        return out

    def settle(self) -> None:
        self.eth.rpc("evm_mine", [])


# -- Solana (litesvm behind the dev node) ------------------------------------------------


#: An SPL transfer's budget: room for the ATA program's CreateIdempotent, 1 micro-lamport
#: per unit (a fee of 5,000 + 1 lamports).
SPL_BUDGET = ComputeBudget(100_000, 1)


@dataclass
class SolWorld:
    adapter: SolanaAdapter
    client: HsmClient
    label: str = "sol"
    chain: str = "sol"
    payload_type: str = "SOLANA_TX:localnet"
    tiers: Tiers = Tiers("SOL", 10**9, 10 * 10**9, 3 * 10**9)
    max_fee: int = 100_000  #: lamports
    attackers: tuple[str, str] = field(default=("", ""))
    mint: str = ""  #: an SPL token the wallet holds, if any
    decimals: int = 0

    def __post_init__(self) -> None:
        self.payer = Pubkey.from_bytes(self.client.public_key(self.label))
        if not all(self.attackers):
            self.attackers = new_sol_attackers()

    @property
    def spl_asset(self) -> str:
        return f"SPL:{self.mint}"

    def blockhash(self) -> Hash:
        return Hash.from_string(self.adapter.client.latest_blockhash().blockhash)

    def build(self, amount: int, *, to: int = 0, high_fee: bool = False,
              asset: str | None = None, budget: ComputeBudget | None = None) -> bytes:
        budget = budget or ComputeBudget(1_000, 10**9 if high_fee else 1_000)
        return build_sol_transfer(self.payer, Pubkey.from_string(self.attackers[to]), amount,
                                  self.blockhash(), budget)

    def build_spl(self, amount: int, destination: str) -> bytes:
        """An SPL transfer of the wallet's token to ``destination``'s associated account,
        created (and its rent paid by the wallet) if missing."""
        return build_spl_transfer(self.payer, Pubkey.from_string(self.mint), self.decimals,
                                  Pubkey.from_string(destination), amount, self.blockhash(),
                                  SPL_BUDGET)

    def send(self, payload: bytes, signatures: tuple[bytes, ...]) -> None:
        self.adapter.broadcast(sol_assemble(payload, signatures[0]))

    def balances(self) -> dict[str, int]:
        out = {"wallet": self.adapter.balance(str(self.payer))}
        for i, addr in enumerate(self.attackers):
            out[f"attacker{i}"] = self.adapter.balance(addr)
        if self.mint:
            out["wallet_token"] = self.adapter.balance(str(self.payer), self.spl_asset)
            for i, addr in enumerate(self.attackers):
                out[f"attacker{i}_token"] = self.adapter.balance(addr, self.spl_asset)
        return out

    def settle(self) -> None:
        """LiteSVM executes a transaction as it is sent: nothing is pending."""


# -- the attempt harness ----------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One attack on one chain, as the summary records it."""

    attack: str
    chain: str
    refused: bool
    expected: str  #: the HsmError code the HSM must refuse with
    code: str | None  #: what it refused with (None: it did not refuse)
    reason: str
    audit_entry: bool  #: a ``refused`` entry with that code appeared in the HSM's log
    funds_moved: bool
    cls: str = ""  #: the attack's class (``tests/security/test_attack_template.py``), if any
    why: str = ""  #: what the refusal's reason must say: refused for this cause
    target: str = ""  #: the policy attacked (a wallet of the template, a hand-written one)

    @property
    def held(self) -> bool:
        return self.refused and self.code == self.expected and self.audit_entry and (
            not self.funds_moved) and self.why in self.reason


def attempt(name: str, world: World, client: HsmClient, expect: type[HsmError],
            malicious: Callable[[], object], *, cls: str = "", why: str = "",
            target: str = "") -> Outcome:
    """Run ``malicious``; record whether the HSM refused it, logged it, and held funds.

    ``malicious`` should carry a success through: broadcast what the HSM signed, so a
    signature that leaks shows as moved funds, not only as a missing refusal."""
    before = world.balances()
    start = client.audit_head().seq + 1
    code, reason = None, ""
    try:
        malicious()
    except HsmError as exc:
        code, reason = exc.code, exc.reason
    world.settle()
    after = world.balances()
    entries = client.audit_entries(start, 1000)
    # The HSM bounds what it logs: a long reason is kept as its head and its SHA-256.
    shown = bounded({"reason": reason})["reason"]
    logged = any(e.event.get("result") == "refused" and e.event.get("code") == code
                 and e.event.get("reason") == shown for e in entries) if code else False
    return Outcome(name, world.chain, code is not None, expect.code, code, reason, logged,
                   before != after, cls, why, target)


def write_summary(outcomes: list[Outcome], path: Path = ARTIFACTS / "attacks.json", *,
                  suite: str = "chains") -> None:
    """Write this suite's rows into the summary, keeping the other suites' rows: each
    attack module (``test_attack_chains``, ``test_attack_template``) owns its suite."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kept: list[dict[str, Any]] = []
    if path.exists():
        try:
            kept = [r for r in json.loads(path.read_text()).get("attacks", [])
                    if r.get("suite", "chains") != suite]
        except (ValueError, AttributeError):
            kept = []
    rows = kept + [{**asdict(o), "held": o.held, "suite": suite} for o in outcomes]
    path.write_text(json.dumps({"attacks": rows, "total": len(rows),
                                "held": sum(r["held"] for r in rows)}, indent=1) + "\n")


def markdown_table(path: Path = ARTIFACTS / "attacks.json") -> str:
    """The report's table from the last run's summary (``python -m tests.attack_kit``):
    one row per attack, a column per chain; "held" = refused with the expected code, the
    refusal in the audit log, no balance moved."""
    rows = json.loads(path.read_text())["attacks"]
    order = ["btc", "eth", "sol", "policy", "hsm-store"]
    chains = sorted({r["chain"] for r in rows}, key=lambda c: (c not in order, order.index(c)
                                                               if c in order else 0, c))
    cells: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:  # one attack on one chain may have hit several policies
        cells.setdefault((r.get("cls", ""), r["attack"], r["chain"]), []).append(r)
    lines = ["| class | attack | refused with | " + " | ".join(chains) + " |",
             "|---|---|---|" + "---|" * len(chains)]
    for cls, name in dict.fromkeys((r.get("cls", ""), r["attack"]) for r in rows):
        expected = sorted({r["expected"] for r in rows if r["attack"] == name and
                           r.get("cls", "") == cls})
        cols = [_cell(cells.get((cls, name, c), [])) for c in chains]
        lines.append(f"| {cls} | {name} | " + ", ".join(f"`{e}`" for e in expected) + " | "
                     + " | ".join(cols) + " |")
    return "\n".join(lines)


def _cell(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    held = sum(r["held"] for r in rows)
    if held == len(rows):
        return "held" if len(rows) == 1 else f"held ({held}/{len(rows)})"
    failed = ", ".join(sorted({r.get("target") or "-" for r in rows if not r["held"]}))
    return f"**NOT HELD** ({len(rows) - held}/{len(rows)}: {failed})"


if __name__ == "__main__":
    print(markdown_table())
