"""Helpers for ``tests/security/test_invariant_outflow.py``: the acceptance invariant's pieces.

* :data:`ALLOWANCE_TOKEN` - an ERC-20 with allowances (``approve``, ``allowance``,
  ``transferFrom``), assembled here from readable EVM mnemonics (no compiler at test
  time), so an approval mutation has an on-chain allowance to measure;
* :class:`Ledger` - what each key released, mirrored from the HSM's own velocity ledger
  (``intent.outflow()`` at the HSM's time of signing), to re-evaluate a releasing token;
* :func:`released_token_failures` - the releasing token's conditions, re-evaluated on
  the signed intent with the HSM's own :func:`~hsm_emulator.evaluate.condition_failures`;
* :func:`outflow_violations` - the invariant: per asset, what the chain debited from
  the wallet never exceeds what the HSM counted;
* :class:`Tally` - examples signed / refused / executed per chain and key, printed at
  the end so a run shows the search reached signing.
"""

from __future__ import annotations

import functools
import json
import struct
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import coincurve
from bitcoin.core import CTransaction, CTxOut
from bitcoin.core.script import CScript
from solders.compute_budget import (
    request_heap_frame,
    set_compute_unit_limit,
    set_compute_unit_price,
)
from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.message import Message
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.system_program import ID as SYSTEM_PROGRAM_ID
from solders.system_program import (
    AssignParams,
    CreateAccountParams,
    CreateAccountWithSeedParams,
    TransferParams,
    assign,
    create_account,
    create_account_with_seed,
    transfer,
)
from solders.token.state import TokenAccount
from solders.transaction import Transaction
from solders.transaction_metadata import TransactionMetadata

from chains.base import Source, TransferRequest
from chains.bitcoin import psbt as P
from chains.bitcoin.adapter import BitcoinAdapter
from chains.bitcoin.addresses import address_to_script, script_to_address
from chains.bitcoin.assemble import finalize
from chains.bitcoin.blocks import parse_tx
from chains.bitcoin.builder import ChangeKey, Payment, build_psbt
from chains.bitcoin.coins import Utxo
from chains.bitcoin.node import RegtestNode, miner
from chains.bitcoin.node.kernel import BlockRejected
from chains.bitcoin.ownership import key_fingerprint
from chains.bitcoin.psbt import Psbt
from chains.bitcoin.rpc import BitcoinRpc
from chains.bitcoin.scripts import (
    ScriptKind,
    hash160,
    p2wpkh_script,
    taproot_output_key,
    witness_script,
)
from chains.bitcoin.wire import TxOut
from chains.errors import ChainError
from chains.ethereum.adapter import EthereumAdapter
from chains.ethereum.client import EthClient
from chains.ethereum.encoding import address_bytes, checksum, keccak256
from chains.ethereum.nonces import SqliteNonceStore
from chains.ethereum.parse import decode_unsigned
from chains.ethereum.tx import Eip1559Tx, EthTx, LegacyTx, assemble, serialize_unsigned
from chains.solana import spl
from chains.solana.tx import (
    COMPUTE_BUDGET_ID,
    ComputeBudget,
    build_sol_transfer,
    build_spl_transfer,
)
from hsm_emulator.client import HsmClient
from hsm_emulator.evaluate import condition_failures
from hsm_emulator.model import Action, Intent
from hsm_emulator.policy import normalize_destination, parse_policy
from hsm_emulator.results import Execution

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

# -- a tiny EVM assembler and an ERC-20 with allowances ----------------------------------

_OPS = {
    "STOP": 0x00, "ADD": 0x01, "SUB": 0x03, "LT": 0x10, "GT": 0x11, "EQ": 0x14,
    "ISZERO": 0x15, "SHR": 0x1C, "KECCAK256": 0x20, "CALLER": 0x33, "CALLVALUE": 0x34,
    "CALLDATALOAD": 0x35, "CODECOPY": 0x39, "POP": 0x50, "MSTORE": 0x52, "SLOAD": 0x54,
    "SSTORE": 0x55, "JUMP": 0x56, "JUMPI": 0x57, "JUMPDEST": 0x5B, "DUP1": 0x80,
    "DUP2": 0x81, "DUP3": 0x82, "DUP4": 0x83, "SWAP1": 0x90, "RETURN": 0xF3, "REVERT": 0xFD,
}


def assemble_evm(program: Sequence[str | int]) -> bytes:
    """Mnemonics to bytecode. ``"@name"`` defines a label (a JUMPDEST), ``":name"``
    pushes its offset (PUSH1), an ``int`` is pushed with the fewest PUSH bytes."""
    def size(item: str | int) -> int:
        if isinstance(item, int):
            return 1 + max(1, (item.bit_length() + 7) // 8)
        return 2 if item.startswith(":") else 1

    labels, offset = {}, 0
    for item in program:
        if isinstance(item, str) and item.startswith("@"):
            labels[item[1:]] = offset
        offset += size(item)
    out = bytearray()
    for item in program:
        if isinstance(item, int):
            n = max(1, (item.bit_length() + 7) // 8)
            out += bytes([0x5F + n]) + item.to_bytes(n, "big")
        elif item.startswith("@"):
            out.append(_OPS["JUMPDEST"])
        elif item.startswith(":"):
            target = labels[item[1:]]
            assert target < 256, "PUSH1 labels only"
            out += bytes([0x60, target])
        else:
            out.append(_OPS[item])
    return bytes(out)


#: Storage: ``balance[a]`` at slot ``a``; ``allowance[o][s]`` at ``keccak256(o || s)``.
#: No events, no overflow checks on credit (the supply is tiny); non-payable; extra
#: calldata is ignored, as Solidity does - so a transfer with bytes appended moves tokens.
_RUNTIME = [
    "CALLVALUE", ":fail", "JUMPI",
    0, "CALLDATALOAD", 0xE0, "SHR",
    "DUP1", 0x70A08231, "EQ", ":balanceOf", "JUMPI",
    "DUP1", 0xA9059CBB, "EQ", ":transfer", "JUMPI",
    "DUP1", 0x095EA7B3, "EQ", ":approve", "JUMPI",
    "DUP1", 0xDD62ED3E, "EQ", ":allowance", "JUMPI",
    "DUP1", 0x23B872DD, "EQ", ":transferFrom", "JUMPI",
    "@fail", 0, "DUP1", "REVERT",
    # balanceOf(owner)
    "@balanceOf", 4, "CALLDATALOAD", "SLOAD", ":word", "JUMP",
    # allowance(owner, spender)
    "@allowance", 4, "CALLDATALOAD", 0, "MSTORE", 0x24, "CALLDATALOAD", 0x20, "MSTORE",
    0x40, 0, "KECCAK256", "SLOAD", ":word", "JUMP",
    # approve(spender, amount): allowance[caller][spender] = amount
    "@approve", "CALLER", 0, "MSTORE", 4, "CALLDATALOAD", 0x20, "MSTORE",
    0x40, 0, "KECCAK256", 0x24, "CALLDATALOAD", "SWAP1", "SSTORE", ":true", "JUMP",
    # transfer(to, amount): move(caller, to, amount)
    "@transfer", "CALLER", 4, "CALLDATALOAD", 0x24, "CALLDATALOAD", ":move", "JUMP",
    # transferFrom(from, to, amount): allowance[from][caller] -= amount, then move
    "@transferFrom", 4, "CALLDATALOAD", 0, "MSTORE", "CALLER", 0x20, "MSTORE",
    0x40, 0, "KECCAK256", "DUP1", "SLOAD", 0x44, "CALLDATALOAD",  # slot allow amount
    "DUP1", "DUP3", "LT", ":fail", "JUMPI",  # allow < amount
    "SWAP1", "SUB", "SWAP1", "SSTORE",
    4, "CALLDATALOAD", 0x24, "CALLDATALOAD", 0x44, "CALLDATALOAD", ":move", "JUMP",
    # move: stack [from, to, amount]
    "@move", "DUP3", "SLOAD",  # from to amount bal
    "DUP2", "DUP2", "LT", ":fail", "JUMPI",  # bal < amount
    "DUP2", "SWAP1", "SUB", "DUP4", "SSTORE",  # balance[from] = bal - amount
    "DUP2", "SLOAD", "ADD", "SWAP1", "SSTORE", "POP",  # balance[to] += amount
    "@true", 1,
    "@word", 0, "MSTORE", 0x20, 0, "RETURN",
]
RUNTIME = assemble_evm(_RUNTIME)
#: The constructor only returns the runtime: balances are set with ``anvil_setStorageAt``.
_INIT = assemble_evm([len(RUNTIME), "DUP1", 11, 0, "CODECOPY", 0, "RETURN"])
assert len(_INIT) == 11  # the CODECOPY offset above: the runtime follows the constructor
ALLOWANCE_TOKEN = _INIT + RUNTIME

SEL_TRANSFER, SEL_APPROVE = bytes.fromhex("a9059cbb"), bytes.fromhex("095ea7b3")
SEL_TRANSFER_FROM, SEL_ALLOWANCE = bytes.fromhex("23b872dd"), bytes.fromhex("dd62ed3e")
SEL_INCREASE_ALLOWANCE = bytes.fromhex("39509351")


def word(value: int | bytes) -> bytes:
    return value.rjust(32, b"\0") if isinstance(value, bytes) else value.to_bytes(32, "big")


# -- re-evaluating the releasing token ----------------------------------------------------


@dataclass
class Ledger:
    """Per key, ``(HSM time, asset, amount, releasing token)`` of everything it released:
    the HSM records ``intent.outflow()`` at signing, whether or not the transaction is
    ever broadcast, under the token that released it (velocity ``releasedBy``)."""

    rows: dict[str, list[tuple[float, str, int, str]]] = field(default_factory=dict)

    def spent_fn(self, label: str) -> Any:
        rows = list(self.rows.get(label, ()))

        def spent(asset: str, since: float, tokens: frozenset[str] | None = None) -> int:
            return sum(a for t, s, a, k in rows
                       if s == asset and t >= since and (tokens is None or k in tokens))
        return spent

    def record(self, label: str, at: float, intent: Intent, token: str) -> None:
        self.rows.setdefault(label, []).extend(
            (at, asset, amount, token) for asset, amount in intent.outflow().items())


def released_token_failures(policy_doc: dict[str, Any], ex: Execution, now: float,
                            spent: Any) -> list[str]:
    """Why the token that released ``ex`` should not have: empty when it holds.

    ``sign_now`` is the auto tier: the token must have no groups and no hold, and its
    conditions must hold for the signed intent, as :mod:`hsm_emulator.evaluate` reads
    them (velocity against the key's releases before this one)."""
    policy = parse_policy({k: v for k, v in policy_doc.items() if k != "keyStatus"})
    tokens = [t for a, r in policy.rules if a is Action.USE for t in r.tokens]
    token = next((t for t in tokens if t.name == ex.token), None)
    if token is None:
        return [f"released by {ex.token!r}, which is no ruleUse token of the key"]
    if ex.intent is None:
        return [f"token {token.name!r} released a payload the HSM did not decode"]
    out = []
    if token.groups or token.timelock:
        out.append(f"token {token.name!r} needs approvals or a hold, yet sign_now signed")
    if token.conditions.empty:
        out.append(f"token {token.name!r} has no conditions")
    out += condition_failures(token.conditions, ex.intent, now, spent)
    return out


# -- the invariant --------------------------------------------------------------------------


def outflow_violations(intent: Intent, debited: dict[str, int],
                       allowances: dict[tuple[str, str], int] | None = None) -> list[str]:
    """Per asset, ``debited`` (measured on the chain) must be within ``intent.outflow()``;
    ``allowances`` (``(asset, spender) -> allowance now``, for every allowance the
    transaction changed) must each be within what the intent grants that spender."""
    counted = intent.outflow()
    out = [f"{asset}: chain debited {amount}, the HSM counted {counted.get(asset, 0)}"
           for asset, amount in sorted(debited.items()) if amount > counted.get(asset, 0)]
    for (asset, spender), allowed in sorted((allowances or {}).items()):
        granted = sum(g.amount for g in intent.grants if g.asset == asset and
                      normalize_destination(g.grantee) == normalize_destination(spender))
        if allowed > granted:
            out.append(f"{asset}: allowance {allowed} to {spender} on chain, the HSM "
                       f"counted a grant of {granted}")
    return out


# -- what the search reached ----------------------------------------------------------------


@dataclass
class Tally:
    """Outcomes per ``(chain, key)``: refused (with the HSM's error code), signed, and of
    the signed: executed on the chain, or refused by it (nothing debited)."""

    counts: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)
    signed: list[dict[str, Any]] = field(default_factory=list)  #: one row per signature

    def add(self, chain: str, key: str, outcome: str) -> None:
        self.counts[(chain, key, outcome)] += 1

    def summary(self, chain: str) -> dict[str, Any]:
        rows = {k: v for k, v in self.counts.items() if k[0] == chain}
        total = Counter[str]()
        per_key: dict[str, dict[str, int]] = {}
        for (_, key, outcome), n in sorted(rows.items()):
            per_key.setdefault(key, {})[outcome] = n
            total[outcome.split(":")[0]] += n
        return {"chain": chain, "signed": total["signed"], "refused": total["refused"],
                "executed": total["executed"], "chain_refused": total["chain-refused"],
                "per_key": per_key}

    def line(self, chain: str) -> str:
        s = self.summary(chain)
        keys = "; ".join(f"{k}: " + ", ".join(f"{o} {n}" for o, n in v.items())
                         for k, v in s["per_key"].items())
        return (f"[invariant] {chain}: {s['signed']} signed ({s['executed']} executed, "
                f"{s['chain_refused']} refused by the chain), {s['refused']} refused by the "
                f"HSM | {keys}")

    def write(self, chains: Sequence[str], path: Path = ARTIFACTS / "invariant.json") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"chains": [self.summary(c) for c in chains],
                                    "violations": self.violations, "signed": self.signed},
                                   indent=1, default=str) + "\n")


# -- the chains: build, mutate, execute, measure ---------------------------------------------


@dataclass(frozen=True)
class Measured:
    """One signed transaction, executed for real. ``debited``: per asset, what left the
    wallet (balances before minus after; for a token, plus every allowance it raised);
    ``allowances``: ``(asset, spender) -> allowance now`` for each one it raised."""

    executed: bool  #: the chain executed it (an Ethereum revert still pays gas: executed)
    debited: dict[str, int]
    allowances: dict[tuple[str, str], int]
    note: str = ""


@dataclass
class Wallet:
    """One HSM key on one chain, under one policy (``key`` names the policy)."""

    key: str
    label: str
    address: str
    public_key: bytes
    policy: dict[str, Any]


def _debits(before: dict[str, int], after: dict[str, int], grants_before: dict[Any, int],
            grants_after: dict[Any, int]) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    debited = {a: before.get(a, 0) - after.get(a, 0) for a in {*before, *after}}
    raised = {}
    for (asset, spender), now in grants_after.items():
        was = grants_before.get((asset, spender), 0)
        if now > was:
            raised[(asset, spender)] = now
            debited[asset] = debited.get(asset, 0) + now - was
    return debited, raised


# Ethereum (anvil) ---------------------------------------------------------------------------

ETH_CHAIN_ID = 31337


@dataclass(frozen=True)
class EthPlan:
    """An ETH or ERC-20 transfer built by the adapter (or an ERC-20 ``approve``), then
    ``mutations`` applied in order to its fields. ``dest`` and mutation roles name an
    address: ``allowed`` (on the allowlist), ``attacker``, ``self``, ``token``."""

    key: str
    base: str  #: eth | erc20 | approve
    amount: int
    dest: str
    mutations: tuple[tuple[Any, ...], ...] = ()


class EthWorld:
    chain = "eth"
    payload_type = f"ETHEREUM_TX:eip155:{ETH_CHAIN_ID}"
    native = "ETH"

    def __init__(self, hsm: HsmClient, node: EthClient, token: str, nonces: Path) -> None:
        self.hsm, self.node, self.token = hsm, node, token
        self.token_asset = "ERC20:" + token.lower()
        self.adapter = EthereumAdapter(ETH_CHAIN_ID, node, SqliteNonceStore(nonces))
        self.allowed = checksum(keccak256(b"invariant: the allowlisted counterparty")[:20])
        self.attacker = checksum(keccak256(b"invariant: the attacker")[:20])
        self.wallets: dict[str, Wallet] = {}

    def add_wallet(self, key: str, policy: dict[str, Any]) -> Wallet:
        label = f"eth-{key}"
        self.hsm.create_key(label, "SECP256K1", policy=policy)
        w = Wallet(key, label, self.hsm.address(label, "ethereum", "mainnet"),
                   self.hsm.public_key(label), self.hsm.get_key(label).policy)
        self.wallets[key] = w
        return w

    def role(self, w: Wallet, name: str) -> str:
        return {"allowed": self.allowed, "attacker": self.attacker, "self": w.address,
                "token": self.token}[name]

    # -- one example ------------------------------------------------------------------

    def prepare(self, w: Wallet) -> None:
        """Every example starts from the same holdings: 1000 ETH, 10**15 token units."""
        self.node.rpc("anvil_setBalance", [w.address, hex(1000 * 10**18)])
        self.node.rpc("anvil_setStorageAt", [self.token, "0x" + word(
            address_bytes(w.address)).hex(), "0x" + word(10**15).hex()])

    def reset_allowance(self, w: Wallet, spender: str) -> None:
        slot = keccak256(word(address_bytes(w.address)) + word(address_bytes(spender)))
        self.node.rpc("anvil_setStorageAt", [self.token, "0x" + slot.hex(), "0x" + word(0).hex()])

    def build(self, w: Wallet, plan: EthPlan) -> bytes:
        nonce = self.node.pending_nonce(w.address)
        dest = self.role(w, plan.dest)
        tx: EthTx
        if plan.base == "approve":
            quote = self.node.fee_quote()
            tx = Eip1559Tx(ETH_CHAIN_ID, nonce, quote.priority_fee, quote.max_fee, 60_000,
                           address_bytes(self.token), 0,
                           SEL_APPROVE + word(address_bytes(dest)) + word(plan.amount))
        else:
            asset = "ETH" if plan.base == "eth" else self.token_asset
            unsigned = self.adapter.build_with_nonce(
                Source(w.label, w.public_key, address=w.address),
                TransferRequest(asset, plan.amount, dest), nonce)
            tx = decode_unsigned(unsigned.payload)
        for m in plan.mutations:
            tx = self._mutate(w, tx, m)
        payload = serialize_unsigned(tx)
        for m in plan.mutations:
            if m[0] == "retype" and payload[0] < 0x80:  # a typed envelope: another type
                payload = bytes([m[1]]) + payload[1:]
        return payload

    def _mutate(self, w: Wallet, tx: EthTx, m: tuple[Any, ...]) -> EthTx:
        op, args, data = m[0], m[1:], tx.data
        addr = lambda role: word(address_bytes(self.role(w, role)))  # noqa: E731
        if op == "value":
            return replace(tx, value=args[0])
        if op == "to":
            return replace(tx, to=address_bytes(self.role(w, args[0])))
        if op == "recipient" and len(data) >= 36:
            return replace(tx, data=data[:4] + addr(args[0]) + data[36:])
        if op == "amount" and len(data) >= 68:
            return replace(tx, data=data[:36] + word(args[0]) + data[68:])
        if op == "append":
            return replace(tx, data=data + args[0])
        if op == "set_byte" and data:
            i = args[0] % len(data)
            return replace(tx, data=data[:i] + bytes([args[1]]) + data[i + 1:])
        if op == "selector" and len(data) >= 4:
            return replace(tx, data=args[0] + data[4:])
        if op == "transfer_from":
            return replace(tx, to=address_bytes(self.token), data=SEL_TRANSFER_FROM + addr(
                args[0]) + addr(args[1]) + word(args[2]))
        if op == "increase_allowance":
            return replace(tx, to=address_bytes(self.token),
                           data=SEL_INCREASE_ALLOWANCE + addr(args[0]) + word(args[1]))
        if op == "gas_limit":
            return replace(tx, gas_limit=args[0])
        if op == "max_fee":
            if isinstance(tx, Eip1559Tx):
                fee = tx.max_fee_per_gas * args[0] // 100
                return replace(tx, max_fee_per_gas=fee,
                               max_priority_fee_per_gas=min(tx.max_priority_fee_per_gas, fee))
            return replace(tx, gas_price=tx.gas_price * args[0] // 100)
        if op == "priority" and isinstance(tx, Eip1559Tx):
            return replace(tx, max_priority_fee_per_gas=min(args[0], tx.max_fee_per_gas))
        if op == "legacy" and isinstance(tx, Eip1559Tx):
            return LegacyTx(tx.chain_id, tx.nonce, tx.max_fee_per_gas, tx.gas_limit, tx.to,
                            tx.value, tx.data)
        if op == "access_list" and isinstance(tx, Eip1559Tx):
            entry = (address_bytes(self.token), (word(1),))
            return replace(tx, access_list=(entry,) * args[0])
        if op == "drop_data":
            return replace(tx, data=b"")
        if op == "create":
            return replace(tx, to=b"")
        if op == "chain_id":
            return replace(tx, chain_id=args[0])
        return tx

    def execute(self, w: Wallet, payload: bytes, signatures: Sequence[bytes]) -> Measured:
        tx = decode_unsigned(payload)
        spenders = self._spenders(w, tx)
        before, allow_before = self._holdings(w, spenders)
        executed, note = False, ""
        try:
            txid = self.node.send_raw_transaction(assemble(tx, signatures[0]))
        except ChainError as exc:
            note = f"node refused it: {exc.reason}"
        else:
            receipt = self._receipt(txid)
            if receipt is None:
                self.node.rpc("anvil_dropTransaction", [txid])
                note = "accepted but never mined (dropped from the pool)"
            else:
                executed = True
                note = f"mined, status {receipt.status}, gas {receipt.gas_used} at " \
                       f"{receipt.effective_gas_price}"
        after, allow_after = self._holdings(w, spenders)
        debited, raised = _debits(before, after, allow_before, allow_after)
        return Measured(executed, debited, raised, note)

    def _receipt(self, txid: str) -> Any:
        for attempt in range(20):
            receipt = self.node.receipt(txid)
            if receipt is not None:
                return receipt
            if attempt == 5:
                self.node.rpc("evm_mine", [])
            time.sleep(0.05)
        return None

    def _spenders(self, w: Wallet, tx: EthTx) -> list[bytes]:
        words = {word(address_bytes(self.role(w, r)))
                 for r in ("allowed", "attacker", "self", "token")}
        if len(tx.data) >= 36:
            words.add(tx.data[4:36])  # whatever the calldata names, dirty padding included
        return sorted(words)

    def _holdings(self, w: Wallet, spenders: list[bytes],
                  ) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
        values = {"ETH": self.node.balance(w.address),
                  self.token_asset: self.node.erc20_balance(self.token, w.address)}
        owner = word(address_bytes(w.address))
        allowances = {}
        for spender in spenders:
            out = self.node.w3.eth.call({  # type: ignore[typeddict-item]
                "to": self.token, "data": "0x" + (SEL_ALLOWANCE + owner + spender).hex()})
            name = checksum(spender[12:]) if not any(spender[:12]) else "0x" + spender.hex()
            allowances[(self.token_asset, name)] = int.from_bytes(bytes(out), "big")
        return values, allowances


# Solana (LiteSVM) ---------------------------------------------------------------------------

SOL = 10**9
SPL_DECIMALS = 6
MEMO_PROGRAM = Pubkey.from_string("MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr")


@dataclass(frozen=True)
class SolPlan:
    """A SOL or SPL transfer built by :mod:`chains.solana.tx`, then ``mutations``.
    Roles: ``allowed``, ``attacker`` (fixed: its token account exists after the first
    transfer), ``fresh`` (a new wallet each example: its token account costs rent),
    ``self``."""

    key: str
    base: str  #: sol | spl
    amount: int
    dest: str
    unit_limit: int | None = None
    unit_price: int = 0
    mint: str = "A"  #: A: the policy's token; B: another mint the wallet also holds
    decimals: int = SPL_DECIMALS
    mutations: tuple[tuple[Any, ...], ...] = ()


def _writable(msg: Message, i: int) -> bool:
    h = msg.header
    signed = h.num_required_signatures
    if i < signed:
        return i < signed - h.num_readonly_signed_accounts
    return i < len(msg.account_keys) - h.num_readonly_unsigned_accounts


def decompile(payload: bytes) -> list[Instruction]:
    """A legacy message's instructions, with each account's signer and writable flags."""
    msg = Message.from_bytes(payload)
    keys = msg.account_keys
    return [Instruction(keys[ix.program_id_index], bytes(ix.data), [
        AccountMeta(keys[a], msg.is_signer(a), _writable(msg, a)) for a in bytes(ix.accounts)])
        for ix in msg.instructions]


class SolWorld:
    chain = "sol"
    payload_type = "SOLANA_TX:localnet"
    native = "SOL"

    def __init__(self, hsm: HsmClient, svm: LiteSVM) -> None:
        self.hsm, self.svm = hsm, svm
        self.authority = Keypair()
        _ok(svm.airdrop(self.authority.pubkey(), 10 * SOL))
        self.mints = {"A": self._create_mint(), "B": self._create_mint()}
        self.allowed = Pubkey.from_bytes(keccak256(b"invariant: allowlisted wallet"))
        self.attacker = Pubkey.from_bytes(keccak256(b"invariant: attacker wallet"))
        for account in (self.allowed, self.attacker):  # rent-exempt: any lamports land
            _ok(svm.airdrop(account, SOL))
        self.fresh = Pubkey.new_unique()
        self.wallets: dict[str, Wallet] = {}

    def asset(self, mint: str = "A") -> str:
        return f"SPL:{self.mints[mint]}"

    def add_wallet(self, key: str, policy: dict[str, Any]) -> Wallet:
        label = f"sol-{key}"
        self.hsm.create_key(label, "ED25519", policy=policy)
        pub = self.hsm.public_key(label)
        w = Wallet(key, label, str(Pubkey.from_bytes(pub)), pub, self.hsm.get_key(label).policy)
        self.wallets[key] = w
        return w

    def role(self, w: Wallet, name: str) -> Pubkey:
        return {"allowed": self.allowed, "attacker": self.attacker, "fresh": self.fresh,
                "self": Pubkey.from_string(w.address)}[name]

    # -- setup ------------------------------------------------------------------------

    def _send(self, ixs: list[Instruction], *signers: Keypair) -> None:
        bh = self.svm.latest_blockhash()
        msg = Message.new_with_blockhash(ixs, self.authority.pubkey(), bh)
        _ok(self.svm.send_transaction(Transaction([self.authority, *signers], msg, bh)))

    def _create_mint(self) -> Pubkey:
        """System CreateAccount + SPL InitializeMint2 (tag 20), no freeze authority."""
        mint = Keypair()
        create = create_account(CreateAccountParams(
            from_pubkey=self.authority.pubkey(), to_pubkey=mint.pubkey(),
            owner=spl.TOKEN_PROGRAM_ID, lamports=self.svm.minimum_balance_for_rent_exemption(82),
            space=82))
        init = Instruction(spl.TOKEN_PROGRAM_ID, bytes([20, SPL_DECIMALS]) + bytes(
            self.authority.pubkey()) + b"\x00", [AccountMeta(mint.pubkey(), False, True)])
        self._send([create, init], mint)
        return mint.pubkey()

    def _mint_to(self, owner: Pubkey, mint: Pubkey, amount: int) -> None:
        """CreateIdempotent for ``owner`` (the authority pays) + MintToChecked (tag 14)."""
        ata = spl.associated_token_address(owner, mint)
        ix = Instruction(spl.TOKEN_PROGRAM_ID, struct.pack("<BQB", 14, amount, SPL_DECIMALS), [
            AccountMeta(mint, False, True), AccountMeta(ata, False, True),
            AccountMeta(self.authority.pubkey(), True, False)])
        self._send([spl.create_idempotent(self.authority.pubkey(), owner, mint), ix])

    # -- one example ------------------------------------------------------------------

    def prepare(self, w: Wallet) -> None:
        """At least 100 SOL and 10**12 units of each mint; a new blockhash; a new
        ``fresh`` wallet."""
        me = Pubkey.from_string(w.address)
        self.svm.expire_blockhash()
        balance = self.svm.get_balance(me) or 0
        if balance < 100 * SOL:
            _ok(self.svm.airdrop(me, 100 * SOL - balance))
        for mint in self.mints.values():
            held = self._token(me, mint)  # (one given away by an earlier example stays so)
            if held is None or (held.owner == me and held.amount < 10**12):
                self._mint_to(me, mint, 10**12 - (held.amount if held else 0))
        self.fresh = Pubkey.new_unique()
        self.svm.expire_blockhash()

    def build(self, w: Wallet, plan: SolPlan) -> bytes:
        me, bh = Pubkey.from_string(w.address), self.svm.latest_blockhash()
        budget = ComputeBudget(plan.unit_limit, plan.unit_price)
        dest = self.role(w, plan.dest)
        if plan.base == "sol":
            payload = build_sol_transfer(me, dest, plan.amount, bh, budget)
        else:
            payload = build_spl_transfer(me, self.mints[plan.mint], plan.decimals, dest,
                                         plan.amount, bh, budget)
        for m in plan.mutations:
            payload = self._mutate(w, payload, m)
        return payload

    def _mutate(self, w: Wallet, payload: bytes, m: tuple[Any, ...]) -> bytes:
        op, args = m[0], m[1:]
        if op == "set_byte":
            i = args[0] % len(payload)
            return payload[:i] + bytes([args[1]]) + payload[i + 1:]
        me = Pubkey.from_string(w.address)
        source = spl.associated_token_address(me, self.mints["A"])
        try:
            ixs = decompile(payload)
        except (IndexError, ValueError):
            return payload  # bytes an earlier mutation broke: no instructions to edit
        token = spl.TOKEN_PROGRAM_ID

        def u64(tag: int, amount: int) -> bytes:
            return bytes([tag]) + amount.to_bytes(8, "little")
        if op == "extra_sol":
            ixs.append(transfer(TransferParams(from_pubkey=me, to_pubkey=self.role(w, args[0]),
                                               lamports=args[1])))
        elif op == "memo":
            ixs.append(Instruction(MEMO_PROGRAM, b"invariant", [AccountMeta(me, True, False)]))
        elif op == "approve":  # SPL Approve: a delegate may move ``amount`` later
            ixs.append(Instruction(token, u64(4, args[1]), [
                AccountMeta(source, False, True), AccountMeta(self.role(w, args[0]), False, False),
                AccountMeta(me, True, False)]))
        elif op == "unchecked":  # SPL Transfer (tag 3), no mint or decimals
            dest = spl.associated_token_address(self.role(w, args[0]), self.mints["A"])
            ixs.append(Instruction(token, u64(3, args[1]), [
                AccountMeta(source, False, True), AccountMeta(dest, False, True),
                AccountMeta(me, True, False)]))
        elif op == "set_owner":  # SetAuthority AccountOwner: the whole account changes hands
            ixs.append(Instruction(token, bytes([6, 2, 1]) + bytes(self.role(w, args[0])), [
                AccountMeta(source, False, True), AccountMeta(me, True, False)]))
        elif op == "close":
            ixs.append(Instruction(token, bytes([9]), [
                AccountMeta(source, False, True), AccountMeta(self.role(w, args[0]), False, True),
                AccountMeta(me, True, False)]))
        elif op == "burn":  # SPL Burn (tag 8): tokens destroyed
            ixs.append(Instruction(token, u64(8, args[0]), [
                AccountMeta(source, False, True), AccountMeta(self.mints["A"], False, True),
                AccountMeta(me, True, False)]))
        elif op == "create_with_seed":  # lamports into an account derived from the wallet
            seed = "invariant"
            ixs.append(create_account_with_seed(CreateAccountWithSeedParams(
                from_pubkey=me, to_pubkey=Pubkey.create_with_seed(me, seed, MEMO_PROGRAM),
                base=me, seed=seed, lamports=args[0], space=0, owner=MEMO_PROGRAM)))
        elif op == "assign":  # the wallet account handed to another program
            ixs.append(assign(AssignParams(pubkey=me, owner=token)))
        elif op == "token2022":
            ixs = [_swap_program(ix, token, spl.TOKEN_2022_PROGRAM_ID) for ix in ixs]
        elif op == "budget":
            kind, value = args
            extra = {"limit": lambda: set_compute_unit_limit(value),
                     "price": lambda: set_compute_unit_price(value),
                     "heap": lambda: request_heap_frame(value)}[kind]()
            ixs.insert(0, extra)
        elif op == "drop_budget":
            ixs = [ix for ix in ixs if ix.program_id != COMPUTE_BUDGET_ID]
        elif op == "drop_create":
            ixs = [ix for ix in ixs if ix.program_id != spl.ATA_PROGRAM_ID]
        elif op == "reorder":
            ixs.reverse()
        return bytes(Message.new_with_blockhash(ixs, me, Message.from_bytes(payload)
                                                .recent_blockhash))

    def execute(self, w: Wallet, payload: bytes, signatures: Sequence[bytes]) -> Measured:
        before, grants_before = self._holdings(w)
        tx = Transaction.populate(Message.from_bytes(payload),
                                  [Signature.from_bytes(signatures[0])])
        result = self.svm.send_transaction(tx)
        executed = isinstance(result, TransactionMetadata)
        note = f"fee {result.fee()}" if executed else f"failed: {result.err()}"  # type: ignore[union-attr]
        after, grants_after = self._holdings(w)
        debited, raised = _debits(before, after, grants_before, grants_after)
        return Measured(executed, debited, raised, note)

    def _token(self, owner: Pubkey, mint: Pubkey) -> Any:
        account = self.svm.get_account(spl.associated_token_address(owner, mint))
        if account is None or account.owner != spl.TOKEN_PROGRAM_ID:
            return None
        return TokenAccount.from_bytes(bytes(account.data))

    def _holdings(self, w: Wallet) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
        """The wallet's lamports (while it is still a plain system account it signs for),
        plus each of its token accounts - lamports, tokens, delegation - while it still
        owns them."""
        me = Pubkey.from_string(w.address)
        account = self.svm.get_account(me)
        plain = account is not None and account.owner == SYSTEM_PROGRAM_ID and not bytes(
            account.data)
        values = {"SOL": account.lamports if account is not None and plain else 0}
        grants = {}
        for name, mint in self.mints.items():
            asset = self.asset(name)
            ata = spl.associated_token_address(me, mint)
            held = self._token(me, mint)
            if held is None or held.owner != me:
                values[asset] = 0
                continue
            values["SOL"] += self.svm.get_balance(ata) or 0
            values[asset] = held.amount
            if held.delegate is not None:
                grants[(asset, str(held.delegate))] = held.delegated_amount
        return values, grants


def _swap_program(ix: Instruction, old: Pubkey, new: Pubkey) -> Instruction:
    program = new if ix.program_id == old else ix.program_id
    accounts = [AccountMeta(new if a.pubkey == old else a.pubkey, a.is_signer, a.is_writable)
                for a in ix.accounts]
    return Instruction(program, bytes(ix.data), accounts)


def _ok(result: Any) -> None:
    assert isinstance(result, TransactionMetadata), result


# Bitcoin (the regtest node on Bitcoin Core's consensus code) --------------------------------

BTC = 10**8
BURN_SCRIPT = bytes.fromhex("0014751e76e8199196d454941c45d1b3a323f1433bd6")  #: BIP173's example


@dataclass(frozen=True)
class BtcPlan:
    """A PSBT built by :func:`chains.bitcoin.builder.build_psbt` from some of the wallet's
    coins (``coins``: indices into them, the biggest first; empty: all of them, the
    builder selects), then ``mutations``. Roles:
    ``allowed``, ``attacker`` (a new address each time), ``self`` (the wallet's own
    receive address, with no derivation record)."""

    key: str
    coins: tuple[int, ...]
    payments: tuple[tuple[str, int], ...]
    change_kind: str = "p2wpkh"
    fee_rate: float = 2.0
    mutations: tuple[tuple[Any, ...], ...] = ()


@dataclass
class BtcWallet(Wallet):
    fingerprint: bytes = b""
    scripts: frozenset[bytes] = frozenset()  #: every script of the wallet the scan covers


class BtcWorld:
    chain = "btc"
    payload_type = "BITCOIN_PSBT:regtest"
    native = "BTC"
    GAP = 20

    def __init__(self, hsm: HsmClient, node: RegtestNode, rpc: BitcoinRpc) -> None:
        self.hsm, self.node, self.rpc = hsm, node, rpc
        self.public_key = functools.cache(hsm.public_key)
        self.adapters = {kind: BitcoinAdapter("regtest", rpc, self.public_key, gap=self.GAP,
                                              kind=kind)
                         for kind in (ScriptKind.P2WPKH, ScriptKind.P2TR)}
        allowed = coincurve.PrivateKey(keccak256(b"invariant: allowlisted")).public_key
        self.allowed = script_to_address("regtest", p2wpkh_script(allowed.format()))
        self.wallets: dict[str, BtcWallet] = {}

    def add_wallet(self, key: str, policy: dict[str, Any]) -> BtcWallet:
        label = f"btc-{key}"
        self.hsm.create_key(label, "SECP256K1", policy=policy)
        scripts = frozenset(a.script_at(label, f"{c}/{i}") for a in self.adapters.values()
                            for c in (0, 1) for i in range(self.GAP))
        w = BtcWallet(key, label, self.adapters[ScriptKind.P2WPKH].address_at(label, "0/10"),
                      self.public_key(label), self.hsm.get_key(label).policy,
                      key_fingerprint(self.public_key(label, "")), scripts)
        self.wallets[key] = w
        return w

    def fund(self, w: BtcWallet, p2wpkh: int, p2tr: int) -> None:
        """Coinbases to the wallet's receive addresses (mature them with :meth:`mature`)."""
        for kind, count in ((ScriptKind.P2WPKH, p2wpkh), (ScriptKind.P2TR, p2tr)):
            for i in range(count):
                self.node.generate(1, self.adapters[kind].script_at(w.label, f"0/{i}"))

    def mature(self) -> None:
        self.node.generate(100, BURN_SCRIPT)

    def coins(self, w: Wallet) -> list[Utxo]:
        return sorted((c for a in self.adapters.values() for c in a.coins(w.label)),
                      key=lambda c: (c.txid, c.vout))

    def balance(self, w: BtcWallet) -> int:
        return sum(c.value for _, c in self.node.unspent(set(w.scripts)))

    def role(self, w: Wallet, name: str) -> str:
        if name == "attacker":
            pub = coincurve.PrivateKey().public_key.format()
            return script_to_address("regtest", p2wpkh_script(pub))
        return {"allowed": self.allowed, "self": w.address}[name]

    # -- one example ------------------------------------------------------------------

    def prepare(self, w: BtcWallet) -> None:
        """At least two coins and 20 BTC: else one more coinbase, matured."""
        coins = self.coins(w)
        if len(coins) < 2 or sum(c.amount for c in coins) < 20 * BTC:
            self.fund(w, 1, 0)
            self.mature()

    def build(self, w: BtcWallet, plan: BtcPlan) -> bytes:
        coins = sorted(self.coins(w), key=lambda c: -c.amount)  # the biggest first
        picked = list({(c.txid, c.vout): c for c in (coins[i % len(coins)]
                                                      for i in plan.coins)}.values()
                      ) if plan.coins else coins
        payments = [Payment(self.role(w, r), amount) for r, amount in plan.payments]
        used = {c.path for c in coins}
        path = next((f"1/{i}" for i in range(self.GAP) if f"1/{i}" not in used),
                    f"1/{len(coins) % self.GAP}")  # all in use: reuse one
        kind = ScriptKind(plan.change_kind)
        psbt = build_psbt("regtest", picked, payments,
                          ChangeKey(path, self.public_key(w.label, path), kind), plan.fee_rate,
                          w.fingerprint)
        for m in plan.mutations:
            psbt = self._mutate(w, psbt, m, coins)
        return psbt.serialize()

    def _mutate(self, w: BtcWallet, psbt: Psbt, m: tuple[Any, ...], coins: list[Utxo]) -> Psbt:
        op, args = m[0], m[1:]
        vin, vout = list(psbt.tx.vin), [TxOut(int(o.nValue), bytes(o.scriptPubKey))
                                         for o in psbt.tx.vout]
        inputs, outputs = [dict(i) for i in psbt.inputs], [dict(o) for o in psbt.outputs]
        lock = psbt.tx.nLockTime
        change = _change_at(psbt, w.fingerprint)
        i = args[0] % len(inputs) if args and isinstance(args[0], int) else 0
        if op == "witness_amount":
            utxo = psbt.witness_utxo(i)
            if utxo is not None:
                amount = min(max(utxo.amount + args[1], 0), 21_000_000 * BTC)
                inputs[i][P.key(P.I_WITNESS_UTXO)] = TxOut(amount, utxo.script).serialize()
        elif op == "drop_prev_tx":
            inputs[i].pop(P.key(P.I_NON_WITNESS_UTXO), None)
        elif op == "add_prev_tx":
            inputs[i][P.key(P.I_NON_WITNESS_UTXO)] = self.adapters[ScriptKind.P2WPKH].prev_tx(
                vin[i].prevout.hash[::-1].hex())
        elif op == "wrong_prev_tx":
            other = next((c for c in coins if c.txid != vin[i].prevout.hash[::-1].hex()), None)
            if other is not None:
                inputs[i][P.key(P.I_NON_WITNESS_UTXO)] = self.adapters[
                    ScriptKind.P2WPKH].prev_tx(other.txid)
        elif op == "extra_output":
            vout.append(TxOut(args[1], address_to_script("regtest", self.role(w, args[0]))))
            outputs.append({})
        elif op == "op_return":
            vout.append(TxOut(args[0], b"\x6a\x04" + b"inv!"))
            outputs.append({})
        elif op == "forge_change" and change is not None:
            outputs[args[0] % len(outputs)] = dict(outputs[change])
        elif op == "unmark_change" and change is not None:
            outputs[change] = {}
        elif op == "drop_change" and change is not None and len(vout) > 1:
            del vout[change], outputs[change]
        elif op == "taptree_change" and change is not None:
            # the change's own key as internal key, tweaked with a script tree the attacker
            # can spend by: the derivation record stays, the output is no longer ours
            internal = self.public_key(w.label, "1/19")[1:]
            leaf = keccak256(b"invariant: attacker's tapleaf")
            script = witness_script(1, taproot_output_key(internal, leaf))
            vout[change] = TxOut(vout[change].amount, script)
        elif op == "change_to_p2pkh" and change is not None:
            # change to the P2PKH script of a wallet key: a coin the HSM never signs for
            pub = self.public_key(w.label, "1/19")
            vout[change] = TxOut(vout[change].amount, b"\x76\xa9\x14" + hash160(pub) +
                                 b"\x88\xac")
        elif op == "change_amount" and change is not None:
            vout[change] = TxOut(max(vout[change].amount + args[0], 0), vout[change].script)
        elif op == "output_amount":
            o = args[0] % len(vout)
            vout[o] = TxOut(args[1], vout[o].script)
        elif op == "sighash":
            for m_in in inputs:
                m_in[P.key(P.I_SIGHASH_TYPE)] = args[0].to_bytes(4, "little")
        elif op == "swap_outputs":
            vout.reverse()
            outputs.reverse()
        elif op == "dup_input":
            vin.append(vin[0])
            inputs.append(dict(inputs[0]))
        elif op == "locktime":
            lock = args[0]
        tx = CTransaction(vin, [CTxOut(o.amount, CScript(o.script)) for o in vout], lock,
                          psbt.tx.nVersion)
        return Psbt(tx, dict(psbt.globals), inputs, outputs)

    def execute(self, w: BtcWallet, payload: bytes, signatures: Sequence[bytes]) -> Measured:
        """The signed transaction in a block of its own, straight to Core's
        ``ProcessNewBlock`` (no mempool policy: what consensus allows is what counts)."""
        try:
            raw = finalize(Psbt.parse(payload), signatures)
        except ChainError as exc:
            return Measured(False, {"BTC": 0}, {}, f"cannot be assembled: {exc.reason}")
        before = self.balance(w)
        try:
            tx = parse_tx(raw)
        except ChainError as exc:
            return Measured(False, {"BTC": 0}, {}, f"not a transaction: {exc.reason}")
        reason = self.mine(tx)
        after = self.balance(w)
        note = "mined" if reason is None else f"Core refused the block: {reason}"
        return Measured(reason is None, {"BTC": before - after}, {}, note)

    def mine(self, tx: Any) -> str | None:
        node = self.node
        with node.lock:
            tip = node.height
            when = max(node.median_time_past(tip) + 1, int(node.clock()))
            # the coinbase claims the subsidy only: consensus allows less than subsidy + fees
            block = miner.assemble(node.kernel.block_hash(tip), tip + 1, when,
                                   node.header(tip).bits, BURN_SCRIPT, [tx], 0)
            try:
                node.submit_block(block.serialize())
            except BlockRejected as exc:
                return exc.reason
        return None


def _change_at(psbt: Psbt, fingerprint: bytes) -> int | None:
    for o in range(len(psbt.outputs)):
        if any(d.fingerprint == fingerprint for d in psbt.output_derivations(o).values()) or any(
                t.origin.fingerprint == fingerprint
                for t in psbt.output_tap_derivations(o).values()):
            return o
    return None
