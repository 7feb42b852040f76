"""The independent review's attack classes, against the policies wallets really get.

The review attacked the HSM as its own process, through its socket only, from the
broker's position (the broker's database and the chain nodes in the attacker's hands),
and moved funds out of wallets made with the project's own treasury template without a
single approval. :mod:`tests.security.test_attack_chains` had passed because it attacked a policy
written for the test (a fee cap on every tier). Here every attack runs against

* ``template``: :func:`custody.treasury.policy.treasury_policy` exactly as
  ``custody.treasury.wallets.create_wallet`` calls it - the wallet's ``network``, the
  default configuration (holds, timeouts, quorums, the default ``maxFee``), ``dailySmall``
  on the native asset - and
* hand-written auto-sign tokens (no approvals at all): ``allowlist`` (destinations),
  ``velocity`` (a rolling limit on the native asset, with a ``maxFee`` no lower than the
  balance so the velocity alone must hold), ``fee-only`` (just ``maxFee``) and ``amount``
  (amount bounds) - each with the ``maxFee`` the HSM now requires of a conditioned
  token, and the ``allowlist``, ``velocity`` and ``amount`` ones also without it (the HSM
  must then refuse everything: fail closed),

on the regtest node, anvil and litesvm, through ``python -m hsm_emulator.remote`` started
as production starts it (:func:`tests.attack_kit.start_hsm`: no ``CUSTODY_TEST_DECODER``,
the default networks). Every attempt carries a success through - what the HSM signs is
broadcast - and must be refused with a specific :class:`HsmError` for the right cause,
logged as a refusal in the HSM's audit log, and move nothing on the chain. The rows land
in ``tests/artifacts/attacks.json`` with their class (``python -m tests.attack_kit``).

Classes (:data:`CLASSES`): 1 derived keys, 2 fees as value, 3 no-transfer intents (and
raw ``UNSPECIFIED`` digests), 4 segwit v0 input amounts, 5 a passkey listed twice,
6 Solana rent, 7 network binding (and a Bitcoin key asked for Ethereum), 8 the test
decoder. Besides the table: the invariant on what the HSM *does* sign (the chain debits
at most what it counted), a control that the same keys do sign a plain transfer, a
structuring test of the template's daily default, and a strict xfail for what the
attacks found that the HSM cannot fix (see its reason).
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from bitcoin.core import CMutableTransaction, CScript, CTransaction, CTxOut
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from eth_abi.abi import encode as abi_encode
from eth_account import Account
from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair
from solders.message import Message
from solders.pubkey import Pubkey
from solders.system_program import TransferParams, transfer

from chains.bitcoin.addresses import address_to_script
from chains.bitcoin.assemble import finalize
from chains.bitcoin.builder import ChangeKey, Payment, build_psbt
from chains.bitcoin.node import RegtestNode, RpcServer
from chains.bitcoin.ownership import key_fingerprint
from chains.bitcoin.psbt import I_NON_WITNESS_UTXO, I_WITNESS_UTXO, Psbt, key, parse_tx
from chains.bitcoin.rpc import BitcoinRpc
from chains.bitcoin.scripts import ScriptKind
from chains.bitcoin.wire import TxOut
from chains.ethereum.client import EthClient
from chains.ethereum.encoding import address_bytes, checksum, keccak256
from chains.ethereum.erc20 import encode_transfer
from chains.ethereum.parse import decode_unsigned
from chains.ethereum.tx import Eip1559Tx, serialize_unsigned, signing_hash
from chains.ethereum.tx import assemble as eth_assemble
from chains.solana import spl
from chains.solana.adapter import SolanaAdapter
from chains.solana.client import SolanaRpcClient
from chains.solana.devnode import DevNode
from chains.solana.tx import ComputeBudget
from chains.solana.tx import assemble as sol_assemble
from custody.treasury.policy import FEE_CAPS, AssetInfo, treasury_policy
from custody.treasury.units import to_base_units
from custody.treasury.wallets import NATIVE
from hsm_emulator import Action
from hsm_emulator.audit import verify_log
from hsm_emulator.client import HsmClient
from hsm_emulator.credentials import passkey_value
from hsm_emulator.decoders import transfer_payload
from hsm_emulator.errors import (
    AttributeDenied,
    DecodeError,
    HsmError,
    NetworkNotAllowed,
    PolicyInvalid,
    PolicyNotMet,
)
from hsm_emulator.results import Execution
from tests.attack_kit import (
    BURN,
    DAY,
    HOLD,
    SPL_BUDGET,
    BtcWorld,
    EthWorld,
    Outcome,
    SolWorld,
    Tiers,
    attempt,
    new_btc_attackers,
    new_eth_attackers,
    new_sol_attackers,
    start_hsm,
    write_summary,
)
from tests.chains.test_eth_anvil import CHAIN, FUNDER_KEY, TOKEN_INITCODE, anvil, fund  # noqa: F401
from tests.chains.test_sol_runtime import DECIMALS, create_mint, mint_to
from tests.helpers import Approver, token
from tests.remote_kit import TimeControl
from tests.webauthn_soft import SoftPasskey

pytestmark = pytest.mark.node

CLASSES = {
    1: "1 derived keys", 2: "2 fees as value", 3: "3 no-transfer intents",
    4: "4 segwit v0 amounts", 5: "5 passkey listed twice", 6: "6 Solana rent",
    7: "7 network binding", 8: "8 test decoder",
}
OUTCOMES: list[Outcome] = []

# -- the policies under attack ---------------------------------------------------------

TEMPLATE = "template"
HANDWRITTEN = ("allowlist", "allowlist, no maxFee", "velocity", "velocity, no maxFee",
               "fee-only", "amount", "amount, no maxFee")
TARGETS = (TEMPLATE, *HANDWRITTEN)
WITH_FEE_CAP = (TEMPLATE, "allowlist", "velocity", "fee-only", "amount")
NO_FEE_CAP = tuple(t for t in TARGETS if t.endswith("no maxFee"))
#: Extra template wallets on Solana, for the rent class: a fee cap below one token
#: account's rent, and a daily native limit a few rents wide.
TPL_RENT_CAP, TPL_RENT_DAILY = "template, maxFee 0.002 SOL", "template, dailySmall 0.01 SOL"
#: The velocity token's maxFee: present (the HSM requires one) but no cap in practice,
#: so that its velocity limit alone must stop what the attack moves.
UNCAPPED = 10**30
RENT = 2_039_280  #: lamports: the rent-exempt deposit of a 165-byte SPL token account
SPL_FEE = SPL_BUDGET.fee()  #: what one SPL transfer of the kit pays in fees


@dataclass(frozen=True)
class ChainSpec:
    """One chain's wallet in base units: the template's tiers and the hand-written
    tokens' bounds."""

    chain: str  #: btc, eth, sol
    network: str  #: ``chain:network`` as ``create_wallet`` names it
    tiers: Tiers  #: the native asset's small / medium / dailySmall
    cap: int  #: the hand-written tokens' maxFee
    velocity: int  #: the velocity token's limit per day


BTC = ChainSpec("btc", "bitcoin:regtest", Tiers("BTC", 10**8, 50 * 10**8, 3 * 10**8),
                100_000, 3 * 10**8)
ETH = ChainSpec("eth", f"ethereum:{CHAIN}", Tiers("ETH", 10**18, 10 * 10**18, 3 * 10**18),
                2 * 10**16, 3 * 10**18)
SOL = ChainSpec("sol", "solana:localnet", Tiers("SOL", 10**9, 10 * 10**9, 3 * 10**9),
                10**6, 5 * 10**6)
#: The template's configuration per chain: the design card's tiers (decimal strings).
TEMPLATE_TIERS = {
    "btc": {"BTC": {"small": "1", "medium": "50", "dailySmall": "3"}},
    "eth": {"ETH": {"small": "1", "medium": "10", "dailySmall": "3"},
            "TKN": {"small": "100", "medium": "1000"}},
    "sol": {"SOL": {"small": "1", "medium": "10", "dailySmall": "3"},
            "USDC": {"small": "100", "medium": "1000"}},
}
TOKEN_SMALL = {"eth": 100, "sol": 100 * 10**DECIMALS}  #: the token tiers' small, base units


def template_config(people: dict[str, Approver], tiers: dict[str, Any],
                    **extra: Any) -> dict[str, Any]:
    """A desk's wallet configuration: approvers, tiers, everything else default."""
    return {"traders": [people[n].entry() for n in ("t1", "t2", "t3")],
            "compliance": [people[n].entry() for n in ("c1", "c2")], "tiers": tiers, **extra}


def template_policy(people: dict[str, Approver], spec: ChainSpec, token_asset: str = "",
                    tiers: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """What ``create_wallet`` gives the wallet's key (see ``custody/treasury/wallets.py``)."""
    chain = spec.network.partition(":")[0]
    assets = [NATIVE[chain]]
    if token_asset:
        symbol = "TKN" if chain == "ethereum" else "USDC"
        assets.append(AssetInfo(symbol, token_asset, 0 if chain == "ethereum" else DECIMALS))
    config = template_config(people, tiers or TEMPLATE_TIERS[spec.chain], **extra)
    return treasury_policy(config, assets, network=spec.network)


def handwritten_policy(flavor: str, spec: ChainSpec, allow: list[str],
                       token_asset: str = "") -> dict[str, Any]:
    """One auto-sign token (no groups) with one kind of condition; see the docstring."""
    native = spec.tiers.asset
    cap = [{"asset": native, "max": str(spec.cap)}]
    base, _, no_fee = flavor.partition(", ")
    if base == "allowlist":
        cond: dict[str, Any] = {"destinations": allow}
    elif base == "velocity":
        cond = {"velocity": [{"asset": native, "windowSeconds": DAY,
                              "max": str(spec.velocity)}]}
        cap = [{"asset": native, "max": str(UNCAPPED)}]
    elif base == "amount":
        bounds = [{"asset": native, "max": str(spec.tiers.small)}]
        if token_asset:
            bounds.append({"asset": token_asset, "max": str(TOKEN_SMALL[spec.chain])})
        cond = {"amounts": bounds}
    else:
        assert base == "fee-only"
        cond = {}
    if not no_fee:
        cond["maxFee"] = cap
    return {"ruleUse": {"tokens": [token(f"auto-{base}", [], conditions=cond)]},
            "networks": [spec.network]}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


# -- the HSM process and the chains ------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _summary() -> Iterator[None]:
    OUTCOMES.clear()
    yield
    write_summary(OUTCOMES, suite="template")


@pytest.fixture(scope="module")
def hsm_time() -> TimeControl:
    return TimeControl()


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory, hsm_time: TimeControl,
        ) -> Iterator[HsmClient]:
    """One HSM process for the module, as production starts it."""
    sockdir = Path(tempfile.mkdtemp(prefix="ska-tpl-", dir="/tmp"))
    process = start_hsm(tmp_path_factory.mktemp("hsm"), sockdir, hsm_time)
    client = process.connect()
    try:
        yield client
    finally:
        client.close()
        process.stop()
        shutil.rmtree(sockdir, ignore_errors=True)


@dataclass
class Net:
    """One chain: its wallets by target name, and what some attacks need besides."""

    spec: ChainSpec
    targets: dict[str, Any]  #: target -> World
    extra: dict[str, Any] = field(default_factory=dict)
    fresh: dict[str, list[str]] = field(default_factory=dict)  #: never-used recipients


@pytest.fixture(scope="module")
def btc(hsm: HsmClient, people: dict[str, Approver],
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    node = RegtestNode(tmp_path_factory.mktemp("btc") / "node")
    server = RpcServer(node, 0, "desk", "regtest-password")
    server.start()
    rpc = BitcoinRpc(f"http://127.0.0.1:{server.port}", "desk", "regtest-password", timeout=30)
    net = Net(BTC, {})
    for target in TARGETS:
        attackers = new_btc_attackers()
        policy = template_policy(people, BTC) if target == TEMPLATE else handwritten_policy(
            target, BTC, [attackers[0]])
        label = f"btc-{slug(target)}"
        hsm.create_key(label, "SECP256K1", policy=policy)
        world = BtcWorld(rpc, hsm, label=label, tiers=BTC.tiers, max_fee=BTC.cap,
                         attackers=attackers)
        world.fund(3, mature=False)  # three coinbases of 50 BTC
        net.targets[target] = world
    rpc.generatetoaddress(100, BURN)
    # A receive-branch child of the wallet key, derived the legitimate way (no policy).
    hsm.derive_key("btc-template", "0", "btc-template/0")
    try:
        yield net
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def eth(hsm: HsmClient, people: dict[str, Approver], anvil: str) -> Net:  # noqa: F811
    node = EthClient(anvil, expected_chain_id=CHAIN)
    funder = Account.from_key(FUNDER_KEY)
    deployed = fund(node, funder, "", 0, TOKEN_INITCODE)
    receipt = node.w3.eth.get_transaction_receipt(deployed)  # type: ignore[arg-type]
    token_addr = checksum(bytes.fromhex(str(receipt["contractAddress"])[2:]))
    asset = "ERC20:" + token_addr.lower()
    net = Net(ETH, {}, {"token": token_addr})
    for target in TARGETS:
        attackers = new_eth_attackers()
        policy = template_policy(people, ETH, asset) if target == TEMPLATE else (
            handwritten_policy(target, ETH, [attackers[0]], asset))
        label = f"eth-{slug(target)}"
        hsm.create_key(label, "SECP256K1", policy=policy)
        world = EthWorld(node, hsm, CHAIN, token=token_addr, label=label, tiers=ETH.tiers,
                         max_fee=ETH.cap, attackers=attackers)
        _fund_eth(node, funder, world.address, 100 * 10**18, token_addr, 5000)
        net.targets[target] = world
    # A second account of the template wallet's key family, derived the legitimate way
    # (no policy: the wallet's) and funded by a deposit.
    hsm.derive_key("eth-template", "0/7", "eth-template/0/7")
    child = EthWorld(node, hsm, CHAIN, token=token_addr, label="eth-template/0/7",
                     tiers=ETH.tiers, max_fee=ETH.cap, attackers=net.targets[TEMPLATE].attackers)
    _fund_eth(node, funder, child.address, 20 * 10**18, token_addr, 0)
    net.extra["child"] = child
    return net


def _fund_eth(node: EthClient, funder: Any, to: str, wei: int, token_addr: str,
              tokens: int) -> None:
    fund(node, funder, to, wei)
    if tokens:
        fund(node, funder, token_addr, 0, encode_transfer(address_bytes(to), tokens))


@pytest.fixture(scope="module")
def sol(hsm: HsmClient, people: dict[str, Approver]) -> Iterator[Net]:
    with DevNode() as node:
        authority = Keypair()
        with node.lock:
            mint = create_mint(node.svm, authority)
        asset = f"SPL:{mint}"
        adapter = SolanaAdapter("localnet", SolanaRpcClient(node.url, timeout=5))
        net = Net(SOL, {}, {"node": node})
        rent_templates = {
            TPL_RENT_CAP: {"maxFee": "0.002"},
            TPL_RENT_DAILY: {"tiers": {**TEMPLATE_TIERS["sol"], "SOL": {
                "small": "1", "medium": "10", "dailySmall": "0.01"}}},
        }
        for target in (*TARGETS, *rent_templates):
            attackers = new_sol_attackers()
            fresh = [str(Pubkey.new_unique()) for _ in range(8)]
            if target in rent_templates:
                policy = template_policy(people, SOL, asset, **rent_templates[target])
            elif target == TEMPLATE:
                policy = template_policy(people, SOL, asset)
            else:
                policy = handwritten_policy(target, SOL, [*attackers, *fresh], asset)
            label = f"sol-{slug(target)}"
            hsm.create_key(label, "ED25519", policy=policy)
            world = SolWorld(adapter, hsm, label=label, tiers=SOL.tiers, max_fee=SOL.cap,
                             attackers=attackers, mint=str(mint), decimals=DECIMALS)
            adapter.client.request_airdrop(str(world.payer), 100 * 10**9)
            with node.lock:
                mint_to(node.svm, authority, mint, world.payer, 10**6 * 10**DECIMALS)
            net.targets[target] = world
            net.fresh[target] = fresh
        yield net


@dataclass
class PolicyWorld:
    """Class 5 attacks no chain: what must not appear is a key with the policy."""

    client: HsmClient
    chain: str = "policy"
    label: str = ""

    def balances(self) -> dict[str, int]:
        return {"keys": len(self.client.list_keys())}

    def settle(self) -> None:
        """Nothing is pending."""


@pytest.fixture(scope="module")
def policy_net(hsm: HsmClient) -> Net:
    return Net(BTC, {t: PolicyWorld(hsm) for t in (TEMPLATE, "hand-written")})


# -- what an attack gets to work with ----------------------------------------------------

_labels = itertools.count(1)


@dataclass
class Ctx:
    net: Net
    target: str
    w: Any  #: the World attacked (an attack may switch it, e.g. to a derived account)
    hsm: HsmClient
    people: dict[str, Approver]
    clock: TimeControl
    cleanup: list[Callable[[], object]] = field(default_factory=list)
    checks: list[Callable[[], None]] = field(default_factory=list)  #: run after the attempt
    delivered: list[str] = field(default_factory=list)  #: what became of a leaked signature

    def label(self, prefix: str) -> str:
        return f"{prefix}-{next(_labels)}"

    def deliver(self, send: Callable[[], object]) -> None:
        """The attacker's follow-through on a signature it got: broadcast it. A chain that
        refuses it (wrong chain id, ...) is noted, not raised: the harness then sees from
        the balances whether anything moved."""
        try:
            send()
            self.delivered.append("broadcast")
        except Exception as exc:  # any chain error: nothing was sent
            self.delivered.append(f"not broadcast: {exc!r}"[:200])
        self.w.settle()

    def sign_and_send(self, payload: bytes, payload_type: str | None = None,
                      *, label: str | None = None, send: bool = True) -> Malicious:
        def run() -> None:
            result = self.hsm.sign_now(label or self.w.label, payload,
                                       payload_type or self.w.payload_type)
            if send:
                self.deliver(lambda: self.w.send(payload, result.signatures))
        return run


Malicious = Callable[[], object]
Prepare = Callable[[Ctx], Malicious]
Expect = Callable[[str], tuple[type[HsmError], str]]

NO_MAX_FEE = "no maxFee for"
UNDECODED = "payload could not be decoded"
FEE_CAP = "fee and rent"
NOT_RELEASED = "is not released by this token"
COMPLIANCE = "group 'compliance' needs 1"


def refused(why: str, *, velocity: str | None = None, no_fee: str = NO_MAX_FEE) -> Expect:
    """PolicyNotMet for ``why``; on the velocity token for ``velocity`` (its maxFee does
    not cap), on the tokens without maxFee for ``no_fee``."""
    def expect(target: str) -> tuple[type[HsmError], str]:
        if target.endswith("no maxFee"):
            return PolicyNotMet, no_fee
        if target == "velocity" and velocity is not None:
            return PolicyNotMet, velocity
        return PolicyNotMet, why
    return expect


def always(error: type[HsmError], why: str) -> Expect:
    return lambda target: (error, why)


# -- class 1: derived keys ----------------------------------------------------------------

OPEN_POLICY = {"openActions": ["use"]}


def _child_psbt(c: Ctx, amount: int) -> bytes:
    """Spend the wallet's receive coins (``0/i``) as the key derived at ``0`` would: paths
    ``i`` and the child's fingerprint."""
    w: BtcWorld = c.w
    coins = [replace(coin, path=coin.path[2:]) for coin in w.adapter.coins(w.label)
             if coin.path.startswith("0/")]
    change = ChangeKey("1/0", w.public_key(w.label, "0/1/0"))
    fingerprint = key_fingerprint(w.public_key(w.label, "0"))
    return build_psbt("regtest", coins, [Payment(w.attackers[0], amount)], change, 2.0,
                      fingerprint).serialize()


def _btc_total(w: BtcWorld) -> int:
    return sum(coin.amount for coin in w.adapter.coins(w.label) if coin.path.startswith("0/"))


def child_with_open_policy(c: Ctx) -> Malicious:
    """Derive the wallet's receive branch (Bitcoin) or a funded account (Ethereum) again
    under a new label with an open policy of its own, and sign its coins away."""
    parent, label = c.w.label, c.label("atk-child")
    if c.net.spec.chain == "btc":
        payload, path = _child_psbt(c, _btc_total(c.w) - 100_000), "0"
    else:
        c.w = child = c.net.extra["child"]  # the account the attacker drains
        max_fee = child.eth.fee_quote().max_fee
        payload = child.tx(to=address_bytes(child.attackers[0]),
                           value=child.eth.balance(child.address) - 21_000 * max_fee,
                           max_fee=max_fee)
        path = "0/7"

    def run() -> None:
        c.hsm.derive_key(parent, path, label, OPEN_POLICY)
        result = c.hsm.sign_now(label, payload, c.w.payload_type)
        c.deliver(lambda: c.w.send(payload, result.signatures))
    return run


def _child_large(c: Ctx) -> tuple[str, bytes]:
    """The legitimately derived child and a large transfer from its coins."""
    if c.net.spec.chain == "btc":
        return "btc-template/0", _child_psbt(c, 60 * 10**8)
    c.w = child = c.net.extra["child"]
    return child.label, child.tx(to=address_bytes(child.attackers[0]), value=15 * 10**18)


def child_large_sign_now(c: Ctx) -> Malicious:
    label, payload = _child_large(c)
    return c.sign_and_send(payload, label=label)


def child_large_traders_only(c: Ctx) -> Malicious:
    label, payload = _child_large(c)
    ch = c.hsm.begin(label, Action.USE, payload, c.w.payload_type)
    approvals = [c.people[n].approve(ch.envelope) for n in ("t1", "t2")]
    c.clock.advance(HOLD + 60)

    def run() -> None:
        result = c.hsm.execute(ch.request_id, approvals)
        c.deliver(lambda: c.w.send(payload, result.signatures))
    return run


# -- class 2: fees as value ----------------------------------------------------------------


def _btc_outputs(psbt: Psbt, outs: list[tuple[int, bytes, dict[bytes, bytes]]]) -> Psbt:
    """``psbt`` with its outputs replaced (amount, script, PSBT output map)."""
    tx = CTransaction(psbt.tx.vin, [CTxOut(a, CScript(s)) for a, s, _ in outs],
                      psbt.tx.nLockTime, psbt.tx.nVersion)
    return Psbt(tx, dict(psbt.globals), [dict(m) for m in psbt.inputs],
                [dict(m) for _, _, m in outs])


def _btc_base(w: BtcWorld, coins: list[Any], target: int) -> Psbt:
    used = {coin.path for coin in w.adapter.coins(w.label)}
    path = next(f"1/{i}" for i in range(200) if f"1/{i}" not in used)
    change = ChangeKey(path, w.public_key(w.label, path), ScriptKind.P2WPKH)
    return build_psbt("regtest", coins, [Payment(w.attackers[0], target)], change, 2.0,
                      key_fingerprint(w.public_key(w.label, "")))


def btc_fee_drain(c: Ctx) -> Malicious:
    """Every coin in, half the small tier out to the attacker, no change: the rest is the
    miner's (the attacker mines, or is paid by the miner)."""
    w: BtcWorld = c.w
    coins = w.adapter.coins(w.label)
    base = _btc_base(w, coins, sum(coin.amount for coin in coins) - 10**6)
    payout = address_to_script("regtest", w.attackers[0])
    return c.sign_and_send(_btc_outputs(base, [(w.tiers.small // 2, payout, {})]).serialize())


def eth_fee_drain(gas: int, *, priority: bool) -> Prepare:
    """Half the small tier to the attacker; the gas price (``priority``: the tip too) set
    so that ``gas`` of it is nearly the whole balance."""
    def prepare(c: Ctx) -> Malicious:
        w: EthWorld = c.w
        value = w.tiers.small // 2
        per_gas = (w.eth.balance(w.address) - value) // gas - 10**6
        payload = w.tx(to=address_bytes(w.attackers[0]), value=value, gas=gas,
                       max_fee=per_gas, priority=per_gas if priority else None)
        return c.sign_and_send(payload)
    return prepare


def sol_fee_drain(c: Ctx) -> Malicious:
    """Half the small tier to the attacker at a compute unit price that makes the fee all
    the balance but 0.01 SOL (the payer stays rent-exempt, so the runtime takes it)."""
    w: SolWorld = c.w
    value, limit = w.tiers.small // 2, 1_000
    fee = w.adapter.balance(str(w.payer)) - value - 10**7
    budget = ComputeBudget(limit, (fee - 5_000) * 1_000_000 // limit)
    return c.sign_and_send(w.build(value, budget=budget))


def plain_small(c: Ctx) -> Malicious:
    """No attack at all: a plain transfer of half the small tier to the allowlisted
    attacker. A token without maxFee must refuse even this (fail closed)."""
    return c.sign_and_send(c.w.build(c.w.tiers.small // 2))


# -- class 3: no-transfer intents ---------------------------------------------------------

MAX_UINT = 2**256 - 1
INCREASE_ALLOWANCE = keccak256(b"increaseAllowance(address,uint256)")[:4]
APPROVE = keccak256(b"approve(address,uint256)")[:4]


def erc20_call(data: Callable[[EthWorld], bytes]) -> Prepare:
    def prepare(c: Ctx) -> Malicious:
        w: EthWorld = c.w
        return c.sign_and_send(w.tx(to=address_bytes(w.token), data=data(w), gas=100_000))
    return prepare


def transfer_trailing_byte(w: EthWorld) -> bytes:
    """Solidity ignores trailing calldata: the token moves the whole balance."""
    balance = w.eth.erc20_balance(w.token, w.address)
    return encode_transfer(address_bytes(w.attackers[0]), balance) + b"\x00"


def approve_max(w: EthWorld) -> bytes:
    return APPROVE + abi_encode(["address", "uint256"], [w.attackers[0], MAX_UINT])


def increase_allowance_max(w: EthWorld) -> bytes:
    return INCREASE_ALLOWANCE + abi_encode(["address", "uint256"], [w.attackers[0], MAX_UINT])


def permit(w: EthWorld, chain_id: int = CHAIN) -> bytes:
    """EIP-2612 ``Permit`` typed data: signed, anyone can submit it to the token."""
    doc = {
        "types": {
            "EIP712Domain": [{"name": "name", "type": "string"},
                             {"name": "version", "type": "string"},
                             {"name": "chainId", "type": "uint256"},
                             {"name": "verifyingContract", "type": "address"}],
            "Permit": [{"name": "owner", "type": "address"},
                       {"name": "spender", "type": "address"},
                       {"name": "value", "type": "uint256"},
                       {"name": "nonce", "type": "uint256"},
                       {"name": "deadline", "type": "uint256"}],
        },
        "primaryType": "Permit",
        "domain": {"name": "Token", "version": "1", "chainId": chain_id,
                   "verifyingContract": w.token},
        "message": {"owner": w.address, "spender": w.attackers[0], "value": MAX_UINT,
                    "nonce": 0, "deadline": MAX_UINT},
    }
    return json.dumps(doc).encode()


def eip712_permit(c: Ctx) -> Malicious:
    return c.sign_and_send(permit(c.w), f"ETHEREUM_EIP712:eip155:{CHAIN}", send=False)


def raw_digest(c: Ctx) -> Malicious:
    """No payload type at all: the sighash of a transfer of the whole balance (Ethereum)
    or the message itself (Solana), as ``UNSPECIFIED`` bytes under a chain's own scheme.
    Signed, it is that transaction's signature. (Bitcoin's coins sit at ``0/i`` and
    ``1/i``; an UNSPECIFIED payload is signed by the key itself, which holds none.)"""
    if isinstance(c.w, EthWorld):
        w: Any = c.w
        max_fee = w.eth.fee_quote().max_fee
        tx = decode_unsigned(w.tx(to=address_bytes(w.attackers[0]), max_fee=max_fee,
                                  value=w.eth.balance(w.address) - 21_000 * max_fee))
        payload, scheme = signing_hash(tx), "ECDSA_SECP256K1_DIGEST"

        def send(sig: bytes) -> object:
            return w.eth.send_raw_transaction(eth_assemble(tx, sig))
    else:
        w = c.w
        payload, scheme = w.build(w.adapter.balance(str(w.payer)) - 10**7), "ED25519_MESSAGE"

        def send(sig: bytes) -> object:
            return w.adapter.broadcast(sol_assemble(payload, sig))

    def run() -> None:
        result = c.hsm.sign_now(w.label, payload, "UNSPECIFIED", scheme)
        c.deliver(lambda: send(result.signatures[0]))
    return run


def _sol_message(c: Ctx, instructions: list[Instruction]) -> Malicious:
    w: SolWorld = c.w
    payload = bytes(Message.new_with_blockhash(
        [*ComputeBudget(100_000, 1).instructions(), *instructions], w.payer, w.blockhash()))

    def run() -> None:
        result = c.hsm.sign_now(w.label, payload, w.payload_type)
        c.deliver(lambda: w.adapter.broadcast(sol_assemble(payload, result.signatures[0])))
    return run


def sol_two_transfers(c: Ctx) -> Malicious:
    w: SolWorld = c.w
    half = w.tiers.small // 2
    return _sol_message(c, [
        transfer(TransferParams(from_pubkey=w.payer, to_pubkey=Pubkey.from_string(a),
                                lamports=half)) for a in w.attackers])


def spl_approve(c: Ctx) -> Malicious:
    """SPL ``Approve`` (instruction 4): the attacker becomes the delegate of the wallet's
    token account for every unit, and moves them later with its own signature."""
    w: SolWorld = c.w
    mint = Pubkey.from_string(w.mint)
    data = bytes([4]) + (2**64 - 1).to_bytes(8, "little")
    return _sol_message(c, [Instruction(spl.TOKEN_PROGRAM_ID, data, [
        AccountMeta(spl.associated_token_address(w.payer, mint), False, True),
        AccountMeta(Pubkey.from_string(w.attackers[0]), False, False),
        AccountMeta(w.payer, True, False)])])


# -- class 4: segwit v0 input amounts -----------------------------------------------------


def segwit_pair(mode: str) -> Prepare:
    """Two PSBTs over the same two P2WPKH coins, each stating the *other* coin at half
    its amount; each looks like half the small tier with a 2,000 sat fee. BIP143 signs
    only the input's own amount, so input 0's signature from the first and input 1's from
    the second make one valid transaction whose real fee is half a coin.

    ``mode``: ``strip`` drops the previous transaction of the lied-about input, ``keep``
    leaves the real one (which contradicts the lie), ``forge`` replaces it by one edited
    to agree with the lie (its txid is then another)."""
    def prepare(c: Ctx) -> Malicious:
        w: BtcWorld = c.w
        coins = sorted(w.adapter.coins(w.label), key=lambda coin: -coin.amount)[:2]
        base = _btc_base(w, coins, coins[0].amount + 10**6)  # needs both coins
        assert len(base.inputs) == 2 and len(base.outputs) == 2, "expected change"
        real = [base.witness_utxo(i) for i in range(2)]
        assert real[0] is not None and real[1] is not None
        amount, fee = w.tiers.small // 2, 2_000
        claim1 = real[1].amount // 2  # what the first PSBT says input 1 holds
        change = real[0].amount + claim1 - amount - fee
        claim0 = change + amount + fee - real[1].amount  # what the second says of input 0
        assert claim0 > 0
        payout = address_to_script("regtest", w.attackers[0])
        change_script = bytes(base.tx.vout[1].scriptPubKey)
        true = _btc_outputs(base, [(amount, payout, {}),
                                   (change, change_script, dict(base.outputs[1]))])
        first = _lie(true, 1, claim1, mode)
        second = _lie(true, 0, claim0, mode)

        def run() -> None:
            one = c.hsm.sign_now(w.label, first.serialize(), w.payload_type).signatures
            two = c.hsm.sign_now(w.label, second.serialize(), w.payload_type).signatures
            c.deliver(lambda: w.broadcast(finalize(true, [one[0], two[1]])))
        return run
    return prepare


def _lie(psbt: Psbt, i: int, claimed: int, mode: str) -> Psbt:
    out = Psbt(psbt.tx, dict(psbt.globals), [dict(m) for m in psbt.inputs],
               [dict(m) for m in psbt.outputs])
    real = psbt.witness_utxo(i)
    assert real is not None
    out.inputs[i][key(I_WITNESS_UTXO)] = TxOut(claimed, real.script).serialize()
    prev = out.inputs[i].get(key(I_NON_WITNESS_UTXO))
    if mode == "strip":
        out.inputs[i].pop(key(I_NON_WITNESS_UTXO), None)
    elif mode == "forge" and prev is not None:
        forged = CMutableTransaction.from_tx(parse_tx(prev))
        forged.vout[psbt.tx.vin[i].prevout.n].nValue = claimed
        out.inputs[i][key(I_NON_WITNESS_UTXO)] = forged.serialize()
    return out


# -- class 5: one passkey listed twice ----------------------------------------------------


def _passkey_entry(pk: SoftPasskey, name: str, *, uv: bool = False,
                   origins: tuple[str, ...] | None = None) -> dict[str, str]:
    value = passkey_value(pk.spki, pk.rp_id, origins or (pk.origin,), uv)
    return {"type": "webauthn", "value": value, "name": name}


def _public_key_entry(pk: SoftPasskey, name: str) -> dict[str, str]:
    return {"type": "public_key", "value": base64.b64encode(pk.spki).decode(), "name": name}


def _certificate_entry(pk: SoftPasskey, name: str) -> dict[str, str]:
    """The passkey's P-256 key wrapped in a self-signed certificate."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(pk.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=365))
            .sign(pk.key, hashes.SHA256()))
    der = cert.public_bytes(serialization.Encoding.DER)
    return {"type": "certificate", "value": base64.b64encode(der).decode(), "name": name}


def _tiers_with(traders: list[dict[str, str]], compliance: list[dict[str, str]],
                ) -> dict[str, Any]:
    """Medium (traders 2) and large (traders 2 + compliance 1) on BTC, fee capped."""
    cond = {"amounts": [{"asset": "BTC", "min": 0}],
            "maxFee": [{"asset": "BTC", "max": "100000"}]}
    traders_g = {"name": "traders", "quorum": 2, "approvals": traders}
    compliance_g = {"name": "compliance", "quorum": 1, "approvals": compliance}
    return {"ruleUse": {"tokens": [
        token("medium", [traders_g], timeout=3600, conditions=cond),
        token("large", [traders_g, compliance_g], timelock=HOLD, timeout=3 * DAY,
              conditions=cond)]}, "networks": [BTC.network]}


def passkey_policy(build: Callable[[SoftPasskey, dict[str, Approver]], dict[str, Any]],
                   ) -> Prepare:
    def prepare(c: Ctx) -> Malicious:
        doc = build(SoftPasskey(), c.people)
        label = c.label("atk-passkey")
        return lambda: c.hsm.create_key(label, "SECP256K1", policy=doc)
    return prepare


def _other(people: dict[str, Approver], name: str) -> dict[str, str]:
    return people[name].entry()


PASSKEY_POLICIES: list[tuple[str, str, Callable[[SoftPasskey, dict[str, Approver]],
                                                dict[str, Any]]]] = [
    ("traders: one passkey twice (userVerification false and true)", "hand-written",
     lambda pk, p: _tiers_with([_passkey_entry(pk, "a"), _passkey_entry(pk, "a-uv", uv=True),
                                _other(p, "t3")], [_other(p, "c1")])),
    ("traders: one passkey twice (two origin lists)", "hand-written",
     lambda pk, p: _tiers_with([_passkey_entry(pk, "a"), _passkey_entry(
         pk, "a-2", origins=(pk.origin, "https://desk.example")), _other(p, "t3")],
                               [_other(p, "c1")])),
    ("traders: one key as public_key and as webauthn", "hand-written",
     lambda pk, p: _tiers_with([_public_key_entry(pk, "a"), _passkey_entry(pk, "a-pk"),
                                _other(p, "t3")], [_other(p, "c1")])),
    ("traders (webauthn) and compliance (public_key): one key", "hand-written",
     lambda pk, p: _tiers_with([_passkey_entry(pk, "a"), _other(p, "t2")],
                               [_public_key_entry(pk, "a-compliance")])),
    ("traders (uv true) and compliance (uv false): one passkey", "hand-written",
     lambda pk, p: _tiers_with([_passkey_entry(pk, "a", uv=True), _other(p, "t2")],
                               [_passkey_entry(pk, "a-compliance")])),
    ("template: one key as a trader (public_key) and compliance (certificate)", TEMPLATE,
     lambda pk, p: treasury_policy({
         "traders": [_public_key_entry(pk, "a"), _other(p, "t2")],
         "compliance": [_certificate_entry(pk, "a-compliance")],
         "tiers": TEMPLATE_TIERS["btc"]}, [NATIVE["bitcoin"]], network=BTC.network)),
]
TWO_GROUPS = "one person must not count for two groups"
TWICE_IN_GROUP = "duplicate approver in group"


# -- class 6: Solana rent -----------------------------------------------------------------


def spl_to_fresh(c: Ctx) -> Malicious:
    """One token unit to a recipient with no token account: the wallet pays its rent."""
    w: SolWorld = c.w
    payload = w.build_spl(1, c.net.fresh[c.target].pop())
    return c.sign_and_send(payload)


def spl_rent_past_velocity(c: Ctx) -> Malicious:
    """In a fresh window, SPL transfers to fresh recipients, each auto-signed and sent,
    as many as the native daily limit holds with rent counted; then one more. Whatever
    the HSM signs, the SOL the chain debits in the window must stay within the limit."""
    w: SolWorld = c.w
    limit = SOL.velocity if c.target == "velocity" else 10**7  # TPL_RENT_DAILY: 0.01 SOL
    c.clock.advance(DAY + 1)
    c.cleanup.append(lambda: c.clock.advance(DAY + 1))
    start = w.adapter.balance(str(w.payer))
    for _ in range(limit // (RENT + SPL_FEE)):
        payload = w.build_spl(1, c.net.fresh[c.target].pop())
        w.send(payload, c.hsm.sign_now(w.label, payload, w.payload_type).signatures)

    def within_limit() -> None:
        debited = start - w.adapter.balance(str(w.payer))
        assert debited <= limit, f"the chain debited {debited} lamports in the window, " \
                                 f"the daily limit is {limit}"
    c.checks.append(within_limit)
    return spl_to_fresh(c)


# -- class 7: network binding --------------------------------------------------------------


def other_network(payload_type: str) -> Prepare:
    """A transfer the wallet's own chain accepts, presented as another network's."""
    def prepare(c: Ctx) -> Malicious:
        return c.sign_and_send(c.w.build(c.w.tiers.small // 2), payload_type)
    return prepare


def eth_other_chain(chain_id: int) -> Prepare:
    def prepare(c: Ctx) -> Malicious:
        w: EthWorld = c.w
        payload = w.tx(to=address_bytes(w.attackers[0]), value=w.tiers.small // 2,
                       chain_id=chain_id)
        return c.sign_and_send(payload, f"ETHEREUM_TX:eip155:{chain_id}")
    return prepare


def btc_key_signs_ethereum(c: Ctx) -> Malicious:
    """A Bitcoin wallet's key is a secp256k1 key, so it also is an Ethereum account."""
    w: BtcWorld = c.w
    sender = c.hsm.address(w.label, "ethereum", "mainnet")
    payload = serialize_unsigned(Eip1559Tx(CHAIN, 0, 10**9, 10**11, 21_000,
                                           address_bytes(sender), 10**17))
    return c.sign_and_send(payload, f"ETHEREUM_TX:eip155:{CHAIN}", send=False)


def eth_permit_other_chain(c: Ctx) -> Malicious:
    return c.sign_and_send(permit(c.w, 1), "ETHEREUM_EIP712:eip155:1", send=False)


# -- class 8: the test decoder -------------------------------------------------------------


def json_test_transfer(c: Ctx) -> Malicious:
    payload = transfer_payload(c.net.spec.tiers.asset, 1, c.w.attackers[0])
    return c.sign_and_send(payload, "TEST_TRANSFER", send=False)


# -- the table of attacks ----------------------------------------------------------------


@dataclass(frozen=True)
class Attack:
    cls: int
    name: str
    chains: tuple[str, ...]
    targets: tuple[str, ...]
    expect: Expect
    prepare: Prepare


ALL = ("btc", "eth", "sol")
NOT_FOR = "does not sign for"
SEGWIT = "non_witness_utxo"

ATTACKS = [
    Attack(1, "derive the receive branch / a funded account with an open policy, sign",
           ("btc", "eth"), (TEMPLATE,), always(AttributeDenied, "governed by its parent"),
           child_with_open_policy),
    Attack(1, "child derived without a policy: large transfer via sign_now",
           ("btc", "eth"), (TEMPLATE,), refused(COMPLIANCE), child_large_sign_now),
    Attack(1, "child derived without a policy: large with 2 traders after the hold",
           ("btc", "eth"), (TEMPLATE,), refused(COMPLIANCE), child_large_traders_only),
    Attack(2, "fee of nearly the whole balance (inputs - outputs)", ("btc",), TARGETS,
           refused(FEE_CAP, velocity="velocity"), btc_fee_drain),
    Attack(2, "fee of nearly the whole balance (maxFeePerGas = maxPriorityFeePerGas)",
           ("eth",), TARGETS, refused(FEE_CAP, velocity="velocity"),
           eth_fee_drain(21_000, priority=True)),
    Attack(2, "fee of nearly the whole balance (gas limit 30M x maxFeePerGas)",
           ("eth",), TARGETS, refused(FEE_CAP, velocity="velocity"),
           eth_fee_drain(30_000_000, priority=False)),
    Attack(2, "fee of nearly the whole balance (compute unit price)", ("sol",), TARGETS,
           refused(FEE_CAP, velocity="velocity"), sol_fee_drain),
    Attack(2, "token without maxFee: a plain small transfer (fail closed)", ALL,
           NO_FEE_CAP, refused(NO_MAX_FEE), plain_small),
    Attack(3, "ERC-20 transfer calldata + 1 trailing byte", ("eth",), TARGETS,
           refused(NOT_RELEASED, no_fee=NOT_RELEASED), erc20_call(transfer_trailing_byte)),
    Attack(3, "ERC-20 approve(attacker, 2**256-1)", ("eth",), TARGETS,
           refused(NOT_RELEASED, no_fee=NOT_RELEASED), erc20_call(approve_max)),
    Attack(3, "ERC-20 increaseAllowance(attacker, 2**256-1)", ("eth",), TARGETS,
           refused(NOT_RELEASED, no_fee=NOT_RELEASED), erc20_call(increase_allowance_max)),
    Attack(3, "EIP-712 Permit(attacker, 2**256-1)", ("eth",), TARGETS,
           refused(NOT_RELEASED, no_fee=NOT_RELEASED), eip712_permit),
    Attack(3, "UNSPECIFIED: a drain transaction's sighash / message as raw bytes",
           ("eth", "sol"), TARGETS, refused(UNDECODED, no_fee=UNDECODED), raw_digest),
    Attack(3, "two System transfers in one message", ("sol",), TARGETS,
           refused(NOT_RELEASED, no_fee=NOT_RELEASED), sol_two_transfers),
    Attack(3, "SPL Approve: the attacker as delegate of every token unit", ("sol",), TARGETS,
           refused(NOT_RELEASED, no_fee=NOT_RELEASED), spl_approve),
    Attack(4, "two PSBTs under-stating each other's input (previous tx stripped)",
           ("btc",), TARGETS, always(DecodeError, SEGWIT), segwit_pair("strip")),
    Attack(4, "two PSBTs under-stating each other's input (real previous tx kept)",
           ("btc",), TARGETS, always(DecodeError, SEGWIT), segwit_pair("keep")),
    Attack(4, "two PSBTs under-stating each other's input (previous tx forged)",
           ("btc",), TARGETS, always(DecodeError, "does not hash to the txid"),
           segwit_pair("forge")),
    *(Attack(5, name, ("policy",), (where,),
             always(PolicyInvalid, TWICE_IN_GROUP if name.startswith("traders:") else
                    TWO_GROUPS), passkey_policy(build))
      for name, where, build in PASSKEY_POLICIES),
    Attack(6, "SPL transfer to a fresh recipient: rent above the fee cap", ("sol",),
           (TPL_RENT_CAP, "allowlist", "fee-only", "amount", *NO_FEE_CAP), refused(FEE_CAP),
           spl_to_fresh),
    Attack(6, "SPL transfers to fresh recipients past the native daily limit", ("sol",),
           (TPL_RENT_DAILY, "velocity"), refused("SOL velocity"), spl_rent_past_velocity),
    Attack(7, "regtest wallet: BITCOIN_PSBT:mainnet", ("btc",), (TEMPLATE, "fee-only"),
           always(NetworkNotAllowed, f"{NOT_FOR} bitcoin:mainnet"),
           other_network("BITCOIN_PSBT:mainnet")),
    Attack(7, "regtest wallet: BITCOIN_PSBT:testnet", ("btc",), (TEMPLATE, "fee-only"),
           always(NetworkNotAllowed, f"{NOT_FOR} bitcoin:testnet"),
           other_network("BITCOIN_PSBT:testnet")),
    Attack(7, "chain 31337 wallet: a chain id 1 transaction", ("eth",), (TEMPLATE, "fee-only"),
           always(NetworkNotAllowed, f"{NOT_FOR} ethereum:1"), eth_other_chain(1)),
    Attack(7, "chain 31337 wallet: a chain id 11155111 transaction", ("eth",),
           (TEMPLATE, "fee-only"), always(NetworkNotAllowed, f"{NOT_FOR} ethereum:11155111"),
           eth_other_chain(11155111)),
    Attack(7, "chain 31337 wallet: an EIP-712 Permit for chain id 1", ("eth",),
           (TEMPLATE, "fee-only"), always(NetworkNotAllowed, f"{NOT_FOR} ethereum:1"),
           eth_permit_other_chain),
    Attack(7, "Bitcoin wallet key: an Ethereum transaction", ("btc",), (TEMPLATE, "fee-only"),
           always(NetworkNotAllowed, f"{NOT_FOR} ethereum:{CHAIN}"), btc_key_signs_ethereum),
    Attack(7, "localnet wallet: SOLANA_TX:mainnet", ("sol",), (TEMPLATE, "fee-only"),
           always(NetworkNotAllowed, f"{NOT_FOR} solana:mainnet"),
           other_network("SOLANA_TX:mainnet")),
    Attack(7, "localnet wallet: SOLANA_TX:devnet", ("sol",), (TEMPLATE, "fee-only"),
           always(NetworkNotAllowed, f"{NOT_FOR} solana:devnet"),
           other_network("SOLANA_TX:devnet")),
    Attack(8, "TEST_TRANSFER against the production HSM", ALL, (TEMPLATE, "fee-only"),
           always(DecodeError, "no decoder for payload type 'TEST_TRANSFER'"),
           json_test_transfer),
]

FIXTURE = {"btc": "btc", "eth": "eth", "sol": "sol", "policy": "policy_net"}
CASES = [pytest.param(a, chain, target, id=f"{a.cls}-{chain}-{slug(target)}-{slug(a.name)}")
         for a in ATTACKS for chain in a.chains for target in a.targets]


@pytest.mark.parametrize(("attack", "chain", "target"), CASES)
def test_attack_is_refused(attack: Attack, chain: str, target: str,
                           request: pytest.FixtureRequest, hsm: HsmClient,
                           hsm_time: TimeControl, people: dict[str, Approver]) -> None:
    net: Net = request.getfixturevalue(FIXTURE[chain])
    ctx = Ctx(net, target, net.targets[target], hsm, people, hsm_time)
    error, why = attack.expect(target)
    try:
        malicious = attack.prepare(ctx)
        outcome = attempt(attack.name, ctx.w, hsm, error, malicious, cls=CLASSES[attack.cls],
                          why=why, target=target)
    finally:
        for undo in ctx.cleanup:
            undo()
    OUTCOMES.append(outcome)
    assert outcome.refused, f"the attack succeeded on {target} ({ctx.delivered})"
    assert outcome.code == error.code, outcome.reason
    assert why in outcome.reason, outcome.reason
    assert outcome.audit_entry, "the refusal is in the HSM's audit log"
    assert not outcome.funds_moved
    for check in ctx.checks:
        check()


# -- the invariant, on what the HSM does sign ---------------------------------------------


def _native(w: Any) -> int:
    if isinstance(w, BtcWorld):
        return sum(coin.amount for coin in w.adapter.coins(w.label))
    if isinstance(w, EthWorld):
        return w.eth.balance(w.address)
    return int(w.adapter.balance(str(w.payer)))


LEGIT = {  #: (chain, what): a transfer the template auto-signs
    ("btc", "BTC"): lambda w: w.build(10**6),
    ("eth", "ETH"): lambda w: w.build(10**15),
    ("eth", "ERC-20"): lambda w: w.build(10, asset=w.token_asset),
    ("sol", "SOL"): lambda w: w.build(10**6),
    ("sol", "SPL to a fresh recipient"): lambda w: w.build_spl(1, str(Pubkey.new_unique())),
}


@pytest.mark.parametrize(("chain", "what"), list(LEGIT), ids=[f"{c}-{slug(w)}" for c, w in LEGIT])
def test_what_the_chain_debits_never_exceeds_what_the_hsm_counted(
        chain: str, what: str, request: pytest.FixtureRequest, hsm: HsmClient) -> None:
    """ARCHITECTURE.md's invariant on the template wallet: whenever the HSM signs, the
    native value the chain actually debits is at most the outflow the HSM counted (what
    its velocity ledger records), and that is within the releasing token's fee cap plus
    the amount it moved."""
    net: Net = request.getfixturevalue(chain)
    w = net.targets[TEMPLATE]
    payload = LEGIT[(chain, what)](w)
    before = _native(w)
    result: Execution = hsm.sign_now(w.label, payload, w.payload_type)
    w.send(payload, result.signatures)
    w.settle()
    debited = before - _native(w)
    assert result.intent is not None
    counted = result.intent.outflow().get(net.spec.tiers.asset, 0)
    assert debited <= counted, f"the chain debited {debited}, the HSM counted {counted} " \
                               f"({result.intent.to_json()})"
    native = NATIVE[net.spec.network.partition(":")[0]]
    cap = to_base_units(FEE_CAPS[native.symbol], native.decimals)  # the template's default
    assert result.intent.cost <= cap
    assert counted <= result.intent.moved().get(net.spec.tiers.asset, 0) + cap


@pytest.mark.parametrize("chain", ALL)
def test_the_harness_sees_a_release_move_funds(chain: str, request: pytest.FixtureRequest,
                                               hsm: HsmClient) -> None:
    """Control: every hand-written token with a maxFee, and the template, auto-sign a
    plain transfer through the same harness - so a refusal above is the policy's, not a
    broken key's, and a leaked signature would have shown as moved funds."""
    net: Net = request.getfixturevalue(chain)
    for target in WITH_FEE_CAP:
        w = net.targets[target]
        payload = w.build(2 * 10**6 if chain != "eth" else 2 * 10**15)  # not sent before
        outcome = attempt("control", w, hsm, PolicyNotMet, lambda w=w, payload=payload: w.send(
            payload, hsm.sign_now(w.label, payload, w.payload_type).signatures))
        assert not outcome.refused and outcome.funds_moved, (target, outcome)


def test_the_run_left_an_intact_audit_log(hsm: HsmClient) -> None:
    """Every refusal above is in a log that verifies offline against the signed head."""
    entries = hsm.audit_entries(1, 10_000)
    report = verify_log(entries, [hsm.audit_head(), *hsm.audit_checkpoints()],
                        hsm.identity_public_key())
    assert report.ok, report.problems
    refusals = sum(e.event.get("result") == "refused" for e in entries)
    assert refusals >= sum(o.refused for o in OUTCOMES)


# -- what these attacks found and nothing here fixes ---------------------------------------


@pytest.mark.xfail(strict=True, reason="known limit, not fixable in the HSM: a PSBT and a "
                   "Solana message name no network, so a key signs another network's "
                   "payload presented under its own network's payload type")
@pytest.mark.parametrize("chain", ["btc", "sol"])
def test_network_binding_is_only_the_payload_type_on_bitcoin_and_solana(
        chain: str, request: pytest.FixtureRequest, hsm: HsmClient) -> None:
    """A key whose policy names only *mainnet* holds coins on regtest/localnet too (same
    scripts, same account - anyone can send there). The broker presents a regtest PSBT
    or a localnet message as ``BITCOIN_PSBT:mainnet`` / ``SOLANA_TX:mainnet``: the HSM
    decodes it with the mainnet decoder, finds its own network, signs - and the
    signature is valid where the coins are. Only Ethereum signs its chain id. The HSM's
    network binding holds for a key that never holds value on a network its policy does
    not name; nothing in the payload lets it check that."""
    net: Net = request.getfixturevalue(chain)
    label = f"{chain}-mainnet-only"
    spec = replace(net.spec, network="bitcoin:mainnet" if chain == "btc" else "solana:mainnet")
    hsm.create_key(label, "SECP256K1" if chain == "btc" else "ED25519",
                   policy=handwritten_policy("fee-only", spec, []))
    if chain == "btc":
        model: BtcWorld = net.targets[TEMPLATE]
        w: Any = BtcWorld(model.rpc, hsm, label=label, tiers=BTC.tiers, max_fee=BTC.cap)
        w.fund(1)
    else:
        model_sol: SolWorld = net.targets[TEMPLATE]
        w = SolWorld(model_sol.adapter, hsm, label=label, tiers=SOL.tiers, max_fee=SOL.cap)
        model_sol.adapter.client.request_airdrop(str(w.payer), 10 * 10**9)
    payload = w.build(w.tiers.small // 2)
    ctx = Ctx(net, "fee-only", w, hsm, {}, TimeControl())
    outcome = attempt("mainnet-only key: another network's payload under its own type", w,
                      hsm, NetworkNotAllowed, ctx.sign_and_send(payload, "BITCOIN_PSBT:mainnet"
                                                                if chain == "btc" else
                                                                "SOLANA_TX:mainnet"),
                      cls=CLASSES[7], target="fee-only, networks: mainnet")
    OUTCOMES.append(outcome)  # in the table as what it is: not held
    assert outcome.held, (outcome, ctx.delivered)


def test_template_token_without_dailysmall_is_not_structured_past_medium(
        eth: Net, hsm: HsmClient, hsm_time: TimeControl) -> None:
    """The template ETH wallet as configured above (``dailySmall`` on ETH only): eleven
    auto-signed transfers of the TKN small tier (100) would move 1,100 TKN - more than the
    medium tier (1,000, two traders) - with no approval. Found by this suite when
    ``dailySmall`` was optional; the template now defaults it to ``medium``."""
    w: EthWorld = eth.targets[TEMPLATE]
    hsm_time.advance(DAY + 1)  # a fresh window, so the native limit is not what stops it
    start = w.eth.erc20_balance(w.token, w.address)
    moved, refusal = 0, ""
    for i in range(11):
        payload = w.build(100 - i % 2, asset=w.token_asset)  # distinct transactions
        try:
            w.send(payload, hsm.sign_now(w.label, payload, w.payload_type).signatures)
        except PolicyNotMet as exc:
            refusal = exc.reason
            break
        moved = start - w.eth.erc20_balance(w.token, w.address)
    assert moved <= 1000, f"{moved} TKN left with no approval (medium tier: 1,000 needs two " \
                          f"traders); last refusal: {refusal or 'none'}"
