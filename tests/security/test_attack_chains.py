"""A compromised broker against the HSM, end to end on the local chains (issue 7).

The HSM runs as its own process (``python -m hsm_emulator.remote``), started as production
starts it (:func:`tests.attack_kit.start_hsm`: no test decoder); the attacker holds
only what a broker holds: the :class:`RemoteHsmClient` connection, the chain nodes and
the approvals that pass through it. Each wallet - BTC on the regtest node, ETH (and an
ERC-20) on anvil, SOL on litesvm - has the treasury tiers (small auto, medium 2 traders,
large 2 traders + 1 compliance with a hold and a timeout), a velocity limit on the auto
tier and a fee cap on every tier. Every row of :data:`ATTACKS` is tried on every chain
and must be refused with its specific error, appear as a refusal in the HSM's audit
log, and move nothing on the chain. ``tests/artifacts/attacks.json`` records the run;
``python -m tests.attack_kit`` prints it as the report's table.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from chains.bitcoin.node import RegtestNode, RpcServer
from chains.bitcoin.rpc import BitcoinRpc
from chains.ethereum.client import EthClient
from chains.ethereum.encoding import address_bytes, checksum
from chains.ethereum.tx import Eip1559Tx, serialize_unsigned
from chains.solana.adapter import SolanaAdapter
from chains.solana.client import SolanaRpcClient
from chains.solana.devnode import DevNode
from hsm_emulator import Action
from hsm_emulator.audit import entry_hash, verify_log
from hsm_emulator.challenge import Challenge
from hsm_emulator.client import HsmClient
from hsm_emulator.errors import (
    ApprovalRefused,
    AttributeDenied,
    AuthenticationFailed,
    HsmError,
    IntentMismatch,
    KeyBlocked,
    KeyInvalidated,
    PolicyNotMet,
    RequestClosed,
    StoreRolledBack,
    TamperDetected,
)
from hsm_emulator.flow import Approval
from hsm_emulator.model import canonical_json
from tests.attack_kit import (
    DAY,
    HOLD,
    TIMEOUT,
    BtcWorld,
    EthWorld,
    Outcome,
    SolWorld,
    Tiers,
    World,
    attempt,
    start_hsm,
    treasury_policy,
    write_summary,
)
from tests.chains.test_eth_anvil import CHAIN, FUNDER_KEY, TOKEN_INITCODE, anvil, fund  # noqa: F401
from tests.helpers import Approver, tiered_policy, token
from tests.remote_kit import SO, HsmProcess, TimeControl

pytestmark = pytest.mark.node

CHAINS = ("btc", "eth", "sol")
OUTCOMES: list[Outcome] = []

# -- the HSM process, the nodes, the wallets ---------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _summary() -> Iterator[None]:
    OUTCOMES.clear()
    yield
    write_summary(OUTCOMES)


@pytest.fixture(scope="module")
def hsm_time() -> TimeControl:
    """The remote HSM's clock (its --clock-file); the legitimate operator lets time pass."""
    return TimeControl()


@dataclass
class Server:
    """The HSM process, and how to start it again on its store."""

    workdir: Path
    sockdir: Path
    time: TimeControl
    process: HsmProcess | None = None

    @property
    def store(self) -> Path:
        return self.workdir / "hsm.sqlite"

    def start(self) -> None:
        self.process = start_hsm(self.workdir, self.sockdir, self.time)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, hsm_time: TimeControl) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("hsm"),
                 Path(tempfile.mkdtemp(prefix="ska-atk-", dir="/tmp")), hsm_time)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
        shutil.rmtree(srv.sockdir, ignore_errors=True)


@pytest.fixture(scope="module")
def hsm(server: Server) -> Iterator[HsmClient]:
    """The attacker's connection: it reconnects by itself when the HSM restarts."""
    assert server.process is not None
    client = server.process.connect()
    yield client
    client.close()


@pytest.fixture(scope="module")
def shadow(hsm: HsmClient, people: dict[str, Approver]) -> str:
    """Another key with the same approvers: a source of approvals to replay."""
    hsm.create_key("shadow", "SECP256K1", policy={**tiered_policy(
        [people["t1"], people["t2"], people["t3"]], [people["c1"], people["c2"]],
        asset="ETH", small=10**17, medium=10**19, max_fee=10**16),
        "networks": [f"ethereum:{CHAIN}"]})
    return "shadow"


def _policy(people: dict[str, Approver], tiers: list[Tiers], fee_asset: str,
            max_fee: int, network: str) -> dict[str, Any]:
    return treasury_policy([people["t1"], people["t2"], people["t3"]],
                           [people["c1"], people["c2"]], tiers, fee_asset, max_fee, network)


@pytest.fixture(scope="module")
def btc(hsm: HsmClient, people: dict[str, Approver],
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[BtcWorld]:
    node = RegtestNode(tmp_path_factory.mktemp("btc") / "node")
    server = RpcServer(node, 0, "desk", "regtest-password")
    server.start()
    rpc = BitcoinRpc(f"http://127.0.0.1:{server.port}", "desk", "regtest-password", timeout=30)
    tiers = BtcWorld.tiers
    hsm.create_key("btc", "SECP256K1", policy=_policy(people, [tiers], "BTC", BtcWorld.max_fee,
                                                          "bitcoin:regtest"))
    world = BtcWorld(rpc, hsm)
    world.fund(3)
    yield world
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def eth(hsm: HsmClient, people: dict[str, Approver], anvil: str) -> EthWorld:  # noqa: F811
    node = EthClient(anvil, expected_chain_id=CHAIN)
    funder = Account.from_key(FUNDER_KEY)
    deployed = fund(node, funder, "", 0, TOKEN_INITCODE)
    receipt = node.w3.eth.get_transaction_receipt(deployed)  # type: ignore[arg-type]
    token_addr = checksum(bytes.fromhex(str(receipt["contractAddress"])[2:]))
    token_tiers = Tiers("ERC20:" + token_addr.lower(), 100, 1000, 300)
    hsm.create_key("eth", "SECP256K1", policy=_policy(
        people, [EthWorld.tiers, token_tiers], "ETH", EthWorld.max_fee, f"ethereum:{CHAIN}"))
    world = EthWorld(node, hsm, CHAIN, token=token_addr, token_tiers=token_tiers)
    fund(node, funder, world.address, 100 * 10**18)
    data = bytes.fromhex("a9059cbb") + bytes(12) + address_bytes(world.address) + (
        5000).to_bytes(32, "big")
    fund(node, funder, token_addr, 0, data)
    assert node.erc20_balance(token_addr, world.address) == 5000
    return world


@pytest.fixture(scope="module")
def sol(hsm: HsmClient, people: dict[str, Approver]) -> Iterator[SolWorld]:
    hsm.create_key("sol", "ED25519", policy=_policy(
        people, [SolWorld.tiers], "SOL", SolWorld.max_fee, "solana:localnet"))
    with DevNode() as node:
        adapter = SolanaAdapter("localnet", SolanaRpcClient(node.url, timeout=5))
        world = SolWorld(adapter, hsm)
        adapter.client.request_airdrop(str(world.payer), 100 * 10**9)
        yield world


# -- what an attack gets to work with ----------------------------------------------------


@dataclass
class Ctx:
    """The attacker's position: the HSM connection, a funded wallet, the approvals that
    pass through the broker, and (as the legitimate operator does) time passing."""

    w: World
    hsm: HsmClient
    people: dict[str, Approver]
    clock: TimeControl
    shadow: str
    cleanup: list[Callable[[], object]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.w.label

    def amount(self, tier: str) -> int:
        t = self.w.tiers
        return {"small": t.small * 9 // 10, "medium": t.small * 3, "large": t.medium * 2}[tier]

    def payload(self, tier: str, **kw: Any) -> bytes:
        return self.w.build(self.amount(tier), **kw)

    def begin(self, tier: str, *, initiator: str = "", **kw: Any) -> Challenge:
        return self.hsm.begin(self.label, Action.USE, self.payload(tier, **kw),
                              self.w.payload_type, initiator=initiator)

    def approve(self, ch: Challenge, *who: str) -> list[Approval]:
        return [self.people[w].approve(ch.envelope) for w in who]

    def admin(self, action: Action, *who: str, **kw: Any) -> None:
        """The legitimate operator: an admin action with enough approvals."""
        ch = self.hsm.begin(self.label, action, **kw)
        self.hsm.execute(ch.request_id, self.approve(ch, *who))


Malicious = Callable[[], object]
Prepare = Callable[[Ctx], Malicious]


# -- the attacks -------------------------------------------------------------------------


def sign_now(tier: str) -> Prepare:
    return lambda c: lambda: c.hsm.sign_now(c.label, c.payload(tier), c.w.payload_type)


def execute_with(tier: str, *who: str) -> Prepare:
    """Begin a ``tier`` request and execute it with approvals of ``who`` only."""
    def prepare(c: Ctx) -> Malicious:
        ch = c.begin(tier)
        return lambda: c.hsm.execute(ch.request_id, c.approve(ch, *who))
    return prepare


def large_hidden_in_batch(c: Ctx) -> Malicious:
    return lambda: c.hsm.sign_batch(c.label, [c.payload("small"), c.payload("large")],
                                    c.w.payload_type)


def forged_signature(c: Ctx) -> Malicious:
    ch = c.begin("medium")
    forged = Approval("public_key", c.people["t1"].spki_b64, c.people["x"].sign(ch.envelope))
    return lambda: c.hsm.execute(ch.request_id, [forged, *c.approve(ch, "t2")])


def doctored_challenge(c: Ctx) -> Malicious:
    """The broker shows approvers a challenge with a small amount; they sign that."""
    ch = c.begin("medium")
    shown = ch.envelope.replace(str(c.amount("medium")).encode(), str(c.amount("small")).encode())
    assert shown != ch.envelope
    approvals = [c.people[w].approve(shown) for w in ("t1", "t2")]
    return lambda: c.hsm.execute(ch.request_id, approvals)


def replay_other_request(c: Ctx) -> Malicious:
    first = c.begin("medium")
    approvals = c.approve(first, "t1", "t2")
    second = c.begin("medium", to=1)
    return lambda: c.hsm.execute(second.request_id, approvals)


def replay_other_key(c: Ctx) -> Malicious:
    """Approvals of a medium ETH transfer on another key (the production HSM decodes only
    chain payloads), replayed on this key's request."""
    shadow_tx = serialize_unsigned(Eip1559Tx(CHAIN, 0, 10**9, 10**11, 21_000,
                                             bytes(range(20)), 3 * 10**17))
    other = c.hsm.begin(c.shadow, Action.USE, shadow_tx, f"ETHEREUM_TX:eip155:{CHAIN}")
    approvals = c.approve(other, "t1", "t2")
    mine = c.begin("medium")
    return lambda: c.hsm.execute(mine.request_id, approvals)


def small_approvals_for_large(c: Ctx) -> Malicious:
    small = c.begin("small")
    approvals = c.approve(small, "t1", "t2", "c1")
    large = c.begin("large")
    c.clock.advance(HOLD + 60)
    return lambda: c.hsm.execute(large.request_id, approvals)


def rebuilt(amount: Callable[[Ctx], int] | None = None, **change: Any) -> Prepare:
    """Approve a medium transfer, then execute it with a different transaction."""
    def prepare(c: Ctx) -> Malicious:
        ch = c.begin("medium")
        approvals = c.approve(ch, "t1", "t2")
        swapped = c.w.build(c.amount("medium") if amount is None else amount(c), **change)
        return lambda: c.hsm.execute(ch.request_id, approvals, payload=swapped)
    return prepare


def large_released(advance: int, *who: str) -> Prepare:
    def prepare(c: Ctx) -> Malicious:
        ch = c.begin("large")
        approvals = c.approve(ch, *who)
        c.clock.advance(advance)
        return lambda: c.hsm.execute(ch.request_id, approvals)
    return prepare


def admin_action(action: Action, *who: str, blocked: bool = False) -> Prepare:
    """Begin ``action`` on the key and execute it with ``who``'s approvals only."""
    def prepare(c: Ctx) -> Malicious:
        if blocked:
            _block(c)
        kw: dict[str, Any] = {"new_policy": _drain()} if action is Action.MODIFY else {}
        ch = c.hsm.begin(c.label, action, **kw)
        return lambda: c.hsm.execute(ch.request_id, c.approve(ch, *who))
    return prepare


def _drain() -> dict[str, Any]:
    """The policy an attacker wants: anything signs at once."""
    return {"ruleUse": {"tokens": [token("drain", [])]}}


def _block(c: Ctx) -> None:
    c.admin(Action.BLOCK, "t3")
    c.cleanup.append(lambda: c.admin(Action.UNBLOCK, "t1", "t2"))


def modify_policy_swapped(c: Ctx) -> Malicious:
    """Admins approve a harmless modification; the broker executes it with another."""
    current = c.hsm.get_key(c.label).policy
    current.pop("keyStatus", None)
    ch = c.hsm.begin(c.label, Action.MODIFY, new_policy=current)
    approvals = c.approve(ch, "t1", "t2")
    return lambda: c.hsm.execute(ch.request_id, approvals, payload=canonical_json(_drain()))


def sign_while_blocked(c: Ctx) -> Malicious:
    _block(c)
    return sign_now("small")(c)


def _invalidate(c: Ctx) -> None:
    c.hsm.invalidate_key(c.label, SO)  # the operator retires the key...
    c.cleanup.append(lambda: c.hsm.restore_key(c.label, SO))


def invalidated_sign_now(c: Ctx) -> Malicious:
    _invalidate(c)
    return sign_now("small")(c)


def invalidated_execute_approved(c: Ctx) -> Malicious:
    ch = c.begin("medium")
    approvals = c.approve(ch, "t1", "t2")
    _invalidate(c)  # ...after a request on it was fully approved
    return lambda: c.hsm.execute(ch.request_id, approvals)


def export_key(passphrase: str) -> Prepare:
    return lambda c: lambda: c.hsm.export_private_key_unsafe(c.label, passphrase)


def initiator_self_approval(c: Ctx) -> Malicious:
    ch = c.begin("medium", initiator="trader-1")
    return lambda: c.hsm.execute(ch.request_id, c.approve(ch, "t1", "t2"))


def _fill_velocity(c: Ctx) -> None:
    """Small transfers under the auto tier, each signed and confirmed, in a fresh window,
    until the next one would take the day's total past the velocity limit."""
    c.clock.advance(DAY + 1)
    c.cleanup.append(lambda: c.clock.advance(DAY + 1))
    step, sent, i = c.amount("small"), 0, 0
    while sent + step <= c.w.tiers.velocity:
        payload = c.w.build(step - i)  # distinct amounts: distinct transactions
        c.w.send(payload, c.hsm.sign_now(c.label, payload, c.w.payload_type).signatures)
        sent, i = sent + step - i, i + 1


def structuring(c: Ctx) -> Malicious:
    _fill_velocity(c)
    return sign_now("small")(c)


def structuring_in_one_batch(c: Ctx) -> Malicious:
    c.clock.advance(DAY + 1)
    c.cleanup.append(lambda: c.clock.advance(DAY + 1))
    n = c.w.tiers.velocity // c.amount("small") + 1
    payloads = [c.w.build(c.amount("small") - i) for i in range(n)]
    return lambda: c.hsm.sign_batch(c.label, payloads, c.w.payload_type)


def execute_twice(c: Ctx) -> Malicious:
    ch = c.begin("medium")
    approvals = c.approve(ch, "t1", "t2")
    c.hsm.execute(ch.request_id, approvals)  # released (and never broadcast)
    return lambda: c.hsm.execute(ch.request_id, approvals, payload=c.payload("medium", to=1))


@dataclass(frozen=True)
class Attack:
    name: str
    expect: type[HsmError]
    why: str  #: in the refusal's reason: refused for this cause, not another
    prepare: Prepare
    chains: tuple[str, ...] = CHAINS


NO_MATCH = "does not verify over this request's challenge"
REBUILT = "does not match the approved intent"
TRADERS_2, ADMINS_1, ADMINS_2 = ("group 'traders' needs 2 more", "group 'admins' needs 1 more",
                                 "group 'admins' needs 2 more")

ATTACKS = [
    Attack("no approvals: medium via sign_now", PolicyNotMet, TRADERS_2, sign_now("medium")),
    Attack("no approvals: large via sign_now", PolicyNotMet, "group 'compliance' needs 1",
           sign_now("large")),
    Attack("no approvals: medium via execute", PolicyNotMet, TRADERS_2, execute_with("medium")),
    Attack("no approvals: large via execute", PolicyNotMet, "group 'compliance' needs 1",
           execute_with("large")),
    Attack("large payload hidden in an auto batch", PolicyNotMet, "batch item 1:",
           large_hidden_in_batch),
    Attack("forged approval signature", ApprovalRefused, NO_MATCH, forged_signature),
    Attack("approvers shown a doctored challenge", ApprovalRefused, NO_MATCH,
           doctored_challenge),
    Attack("approvals replayed from another request", ApprovalRefused, NO_MATCH,
           replay_other_request),
    Attack("approvals replayed from another key", ApprovalRefused, NO_MATCH, replay_other_key),
    Attack("small transfer's approvals on a large request", ApprovalRefused, NO_MATCH,
           small_approvals_for_large),
    Attack("approved medium rebuilt as large (amount swapped)", IntentMismatch, REBUILT,
           rebuilt(amount=lambda c: c.amount("large"))),
    Attack("rebuilt: amount + 1 base unit", IntentMismatch, REBUILT,
           rebuilt(amount=lambda c: c.amount("medium") + 1)),
    Attack("rebuilt: other destination", IntentMismatch, REBUILT, rebuilt(to=1)),
    Attack("rebuilt: fee above the approved cap", IntentMismatch, "exceeds the approved cap",
           rebuilt(high_fee=True)),
    Attack("auto tier with a fee above maxFee", PolicyNotMet, "token 'small': fee",
           lambda c: lambda: c.hsm.sign_now(c.label, c.payload("small", high_fee=True),
                                            c.w.payload_type)),
    Attack("large released before the hold ends", PolicyNotMet, "hold ends in 60s",
           large_released(HOLD - 60, "t1", "t2", "c1")),
    Attack("large released after the timeout", PolicyNotMet, "token 'large': timed out",
           large_released(TIMEOUT + 60, "t1", "t2", "c1")),
    Attack("block with no approvals", PolicyNotMet, ADMINS_1, admin_action(Action.BLOCK)),
    Attack("unblock with no approvals", PolicyNotMet, ADMINS_2,
           admin_action(Action.UNBLOCK, blocked=True)),
    Attack("unblock with 1 of 2 admins", PolicyNotMet, ADMINS_1,
           admin_action(Action.UNBLOCK, "t1", blocked=True)),
    Attack("sign while blocked", KeyBlocked, "is blocked", sign_while_blocked),
    Attack("modify policy with no approvals", PolicyNotMet, ADMINS_2,
           admin_action(Action.MODIFY)),
    Attack("modify policy with 1 of 2 admins", PolicyNotMet, ADMINS_1,
           admin_action(Action.MODIFY, "t2")),
    Attack("modify: approved policy swapped at execute", IntentMismatch, "new approvals",
           modify_policy_swapped),
    Attack("invalidated key: sign_now", KeyInvalidated, "is invalidated", invalidated_sign_now),
    Attack("invalidated key: execute a fully approved request", KeyInvalidated,
           "is invalidated", invalidated_execute_approved),
    Attack("export non-exportable key (with the SO passphrase)", AttributeDenied,
           "is not exportable", export_key(SO)),
    Attack("export key with a guessed SO passphrase", AuthenticationFailed,
           "authentication failed", export_key("guess")),
    Attack("compliance approvals counted as traders", PolicyNotMet,
           "token 'medium': " + TRADERS_2, execute_with("medium", "c1", "c2")),
    Attack("large: 1 trader + 2 compliance after the hold", PolicyNotMet,
           "group 'traders' needs 1 more", large_released(HOLD + 60, "t1", "c1", "c2")),
    Attack("approver outside every group", ApprovalRefused, "is in no group",
           execute_with("medium", "t1", "x")),
    Attack("initiator approves own request", ApprovalRefused, "initiator of a request",
           initiator_self_approval),
    Attack("one trader's approval counted twice", PolicyNotMet,
           "token 'medium': group 'traders' needs 1 more", execute_with("medium", "t1", "t1")),
    Attack("structuring past the velocity limit", PolicyNotMet, "velocity", structuring),
    Attack("structuring in one batch", PolicyNotMet, "velocity", structuring_in_one_batch),
    Attack("released request executed again", RequestClosed, "is already executed",
           execute_twice),
]


# -- ERC-20: the token has its own tiers; a contract call is no transfer -------------------


def erc20(tier: str, **kw: Any) -> Callable[[Ctx], bytes]:
    def build(c: Ctx) -> bytes:
        w = c.w
        assert isinstance(w, EthWorld) and w.token_tiers is not None
        t = w.token_tiers
        amount = {"medium": t.small * 3, "large": t.medium * 2}[tier]
        return w.build(amount, asset=w.token_asset, **kw)
    return build


def erc20_rebuilt_other_destination(c: Ctx) -> Malicious:
    ch = c.hsm.begin(c.label, Action.USE, erc20("medium")(c), c.w.payload_type)
    approvals = c.approve(ch, "t1", "t2")
    return lambda: c.hsm.execute(ch.request_id, approvals, payload=erc20("medium", to=1)(c))


def erc20_approve_call(c: Ctx) -> Malicious:
    """An ``approve(attacker, max)`` call on the token - the allowance drains it later -
    with every approval the large tier wants, after the hold."""
    w = c.w
    assert isinstance(w, EthWorld)
    quote = w.eth.fee_quote()
    data = bytes.fromhex("095ea7b3") + bytes(12) + address_bytes(w.attackers[0]) + b"\xff" * 32
    tx = Eip1559Tx(w.chain_id, w.eth.pending_nonce(w.address), quote.priority_fee,
                   quote.max_fee, 100_000, address_bytes(w.token), 0, data)
    ch = c.hsm.begin(c.label, Action.USE, serialize_unsigned(tx), w.payload_type)
    approvals = c.approve(ch, "t1", "t2", "c1")
    c.clock.advance(HOLD + 60)
    return lambda: c.hsm.execute(ch.request_id, approvals)


ATTACKS += [
    Attack("ERC-20: large via sign_now", PolicyNotMet, "group 'compliance' needs 1",
           lambda c: lambda: c.hsm.sign_now(c.label, erc20("large")(c), c.w.payload_type),
           ("eth",)),
    Attack("ERC-20: rebuilt to another destination", IntentMismatch, REBUILT,
           erc20_rebuilt_other_destination, ("eth",)),
    Attack("ERC-20: approve(attacker, max) with full approvals", PolicyNotMet,
           "is not released by this token", erc20_approve_call, ("eth",)),
]

CASES = [pytest.param(chain, a, id=f"{chain}-{a.name}") for a in ATTACKS for chain in a.chains]


@pytest.mark.parametrize(("chain", "attack"), CASES)
def test_attack_is_refused(chain: str, attack: Attack, request: pytest.FixtureRequest,
                           hsm: HsmClient, hsm_time: TimeControl, shadow: str,
                           people: dict[str, Approver]) -> None:
    world: World = request.getfixturevalue(chain)
    ctx = Ctx(world, hsm, people, hsm_time, shadow)
    try:
        malicious = attack.prepare(ctx)
        outcome = attempt(attack.name, world, hsm, attack.expect, malicious, why=attack.why)
    finally:
        for undo in ctx.cleanup:
            undo()
    OUTCOMES.append(outcome)
    assert outcome.refused, f"the attack succeeded: {attack.name} on {chain}"
    assert outcome.code == attack.expect.code, outcome.reason
    assert attack.why in outcome.reason, outcome.reason
    assert outcome.audit_entry, "the refusal is in the HSM's audit log"
    assert not outcome.funds_moved


def test_the_run_left_an_intact_audit_log(hsm: HsmClient) -> None:
    """After every attack: the whole log verifies offline against the HSM's signed head."""
    entries = hsm.audit_entries(1, 100_000)
    report = verify_log(entries, [hsm.audit_head(), *hsm.audit_checkpoints()],
                        hsm.identity_public_key())
    assert report.ok, report.problems
    refusals = sum(e.event.get("result") == "refused" for e in entries)
    assert refusals >= sum(o.refused for o in OUTCOMES)


@pytest.mark.parametrize("chain", CHAINS)
def test_the_harness_sees_a_release_move_funds(chain: str, request: pytest.FixtureRequest,
                                               hsm: HsmClient, hsm_time: TimeControl,
                                               shadow: str, people: dict[str, Approver]) -> None:
    """Control: a legitimate medium release through the same harness is not refused and
    moves funds - so a successful attack could not pass for a refused one."""
    world: World = request.getfixturevalue(chain)
    c = Ctx(world, hsm, people, hsm_time, shadow)
    ch = c.begin("medium")
    payload = world.build(c.amount("medium"))
    outcome = attempt("control", world, hsm, PolicyNotMet, lambda: world.send(
        payload, hsm.execute(ch.request_id, c.approve(ch, "t1", "t2")).signatures))
    assert not outcome.refused and outcome.funds_moved and not outcome.held


# -- the audit log, edited in the HSM's store file ----------------------------------------


def _edit(db: sqlite3.Connection, seq: int) -> None:
    """Turn a refusal into a success: the attacker hides an attempt."""
    db.execute("""UPDATE audit SET event = replace(event, '"result":"refused"',
                  '"result":"ok"') WHERE seq = ?""", (seq,))


def _delete(db: sqlite3.Connection, seq: int) -> None:
    db.execute("DELETE FROM audit WHERE seq = ?", (seq,))


def _truncate(db: sqlite3.Connection, seq: int) -> None:
    db.execute("DELETE FROM audit WHERE seq >= ?", (seq,))
    db.execute("DELETE FROM audit_heads WHERE seq >= ?", (seq,))


def _rewrite(db: sqlite3.Connection, seq: int) -> None:
    """Edit, then recompute every later hash so the chain is consistent again."""
    _edit(db, seq)
    rows = db.execute("SELECT seq, at, event FROM audit WHERE seq >= ? ORDER BY seq",
                      (seq,)).fetchall()
    prev = db.execute("SELECT hash FROM audit WHERE seq = ?", (seq - 1,)).fetchone()[0]
    for n, at, event in rows:
        digest = entry_hash(prev, n, at, json.loads(event))
        db.execute("UPDATE audit SET prev = ?, hash = ? WHERE seq = ?", (prev, digest, n))
        prev = digest


TAMPERING = {"edit a refusal into a success": _edit, "delete a refusal": _delete,
             "truncate the log from a refusal on": _truncate,
             "edit and recompute the hash chain": _rewrite}


def _copy(src: Path, dst: Path) -> None:
    with closing(sqlite3.connect(src)) as a, closing(sqlite3.connect(dst)) as b:
        a.backup(b)


def _refused_at_start(server: Server, name: str, expect: str, why: str) -> Outcome:
    """Start the HSM on a store the attacker edited: it must refuse to open, with
    ``expect``. A store the HSM will not open has no audit log to log into; what records
    the refusal is the HSM process's one-line exit (``audit_entry`` here: that line names
    the code)."""
    try:
        server.start()
    except RuntimeError as exc:
        found = re.findall(r"\[(hsm\.[a-z_]+)\] (.*)", str(exc))  # the log: its last line
        code, reason = found[-1] if found else (None, str(exc))
        return Outcome(name, "hsm-store", True, expect, code, reason, bool(found), False,
                       why=why)
    server.stop()
    return Outcome(name, "hsm-store", False, expect, None, "", False, False, why=why)


def _assert_held(outcome: Outcome) -> None:
    OUTCOMES.append(outcome)
    assert outcome.held, outcome


def test_audit_log_tampering_is_detected(server: Server, hsm: HsmClient,
                                         tmp_path: Path) -> None:
    """The attacker stops the HSM, edits its store file, and starts it again: the HSM
    verifies its own chain, checkpoints and sealed head at start and refuses to open."""
    held = hsm.audit_head()  # what an auditor fetched before the attacker struck
    identity = hsm.identity_public_key()
    entries = hsm.audit_entries(1, 100_000)
    target = next(e.seq for e in entries if e.event.get("result") == "refused")
    pristine = tmp_path / "pristine.sqlite"
    server.stop()
    _copy(server.store, pristine)
    try:
        for name, tamper in TAMPERING.items():
            _copy(pristine, server.store)
            with closing(sqlite3.connect(server.store)) as db:
                tamper(db, target)
                assert db.total_changes, f"{name}: nothing was changed"
                db.commit()
            _assert_held(_refused_at_start(server, name, TamperDetected.code, "audit"))
    finally:
        _copy(pristine, server.store)
        server.start()
    report = verify_log(hsm.audit_entries(1, 100_000), [held, hsm.audit_head()], identity)
    assert report.ok, report.problems  # the restored log verifies again


def test_velocity_ledger_cleared_in_the_store_file(server: Server, hsm: HsmClient,
                                                   sol: SolWorld, hsm_time: TimeControl,
                                                   shadow: str, tmp_path: Path,
                                                   people: dict[str, Approver]) -> None:
    """Structuring to the velocity limit, then the ledger rows deleted from the store
    file while the HSM is down: it refuses to open that store. Put back as it was, the
    ledger still counts and the next auto transfer is refused."""
    c = Ctx(sol, hsm, people, hsm_time, shadow)
    try:
        _fill_velocity(c)
        server.stop()
        _copy(server.store, tmp_path / "current.sqlite")
        with closing(sqlite3.connect(server.store)) as db:
            db.execute("DELETE FROM spends")
            db.commit()
        outcome = _refused_at_start(server, "velocity ledger deleted from the HSM store file",
                                    TamperDetected.code, "velocity ledger")
        _copy(tmp_path / "current.sqlite", server.store)
        server.start()
        payload = sol.build(c.amount("small") - 100)  # not a copy of an earlier transfer
        after = attempt("structuring after the ledger was put back", sol, hsm, PolicyNotMet,
                        lambda: sol.send(payload, hsm.sign_now(
                            sol.label, payload, sol.payload_type).signatures))
    finally:
        for undo in c.cleanup:
            undo()
    _assert_held(outcome)
    assert after.held, after


def _one_approval_executed(c: Ctx, server: Server, snapshot: Path) -> tuple[str, list[Approval]]:
    """A medium SOL transfer approved by two traders, with the store copied aside while
    the request was open; then executed and confirmed. What the attacker has after."""
    ch = c.begin("medium")
    approvals = c.approve(ch, "t1", "t2")
    server.stop()
    _copy(server.store, snapshot)
    server.start()
    payload = c.payload("medium")
    c.w.send(payload, c.hsm.execute(ch.request_id, approvals, payload=payload).signatures)
    return ch.request_id, approvals


@pytest.mark.parametrize("rewind", ["whole store", "one sealed record"])
def test_a_rewound_store_cannot_execute_one_approval_twice(
        rewind: str, server: Server, hsm: HsmClient, sol: SolWorld, hsm_time: TimeControl,
        shadow: str, tmp_path: Path, people: dict[str, Approver]) -> None:
    """Issue 15's finding: with the store copied back (or only the request's sealed
    record), the executed request was open again and its two traders' approvals signed a
    second transfer rebuilt with a fresh blockhash. Now the rewound store does not open;
    the one it was rewound from executes nothing twice."""
    c = Ctx(sol, hsm, people, hsm_time, shadow)
    request_id, approvals = _one_approval_executed(c, server, tmp_path / "open.sqlite")
    server.stop()
    _copy(server.store, tmp_path / "current.sqlite")
    try:
        if rewind == "whole store":
            _copy(tmp_path / "open.sqlite", server.store)
            expect, why = StoreRolledBack.code, "older copy of the store"
        else:
            with closing(sqlite3.connect(tmp_path / "open.sqlite")) as old, \
                    closing(sqlite3.connect(server.store)) as db:
                row = old.execute("SELECT nonce, body FROM records WHERE kind='request' "
                                  "AND id=?", (request_id,)).fetchone()
                assert row is not None
                db.execute("UPDATE records SET nonce=?, body=? WHERE kind='request' AND id=?",
                           (*row, request_id))
                assert db.total_changes == 1
                db.commit()
            expect, why = TamperDetected.code, "record was rewound"
        outcome = _refused_at_start(server, f"{rewind} rewound: one approval executed twice",
                                    expect, why)
    finally:
        _copy(tmp_path / "current.sqlite", server.store)
        server.start()
    _assert_held(outcome)
    rebuilt = c.payload("medium", to=1)  # a fresh blockhash, another destination
    again = attempt("executed request, approvals presented again", sol, hsm, RequestClosed,
                    lambda: sol.send(rebuilt, hsm.execute(request_id, approvals,
                                                          payload=rebuilt).signatures))
    assert again.refused and again.code == RequestClosed.code and not again.funds_moved
