"""The acceptance invariant, as a property on the real chains (ARCHITECTURE.md, "Who is
trusted for what"): **whenever the HSM signs, the value the chain actually debits from
the wallet never exceeds what the HSM counted, and the token that released it allowed
that outflow.**

A hostile broker builds transactions with the project's own builders - the Ethereum
adapter (ETH and ERC-20 transfers; ERC-20 ``approve`` by hand), ``build_sol_transfer``
/ ``build_spl_transfer``, ``build_psbt`` - and hypothesis mutates them: extra outputs
and instructions, calldata appended or changed, selectors swapped (``approve``,
``transferFrom``, ``increaseAllowance``), fee fields (fee rate, maxFeePerGas,
maxPriorityFeePerGas, gas limit, legacy gas price, compute unit price and limit),
token programs and mints, ``witness_utxo`` amounts and previous transactions, change
claims, recipients, delegations and authority changes. Each payload goes to
``sign_now`` (the auto tier: no approvals) of the HSM running as its own process
(``python -m hsm_emulator.remote``). Most are refused - the property says nothing about
those. Each one signed is executed for real and measured:

* Ethereum on anvil: the wallet's ETH balance (value and the gas actually paid), its
  balance of an ERC-20 with allowances (:data:`tests.invariant_kit.ALLOWANCE_TOKEN`),
  and the allowance it gives every address the test uses or the calldata names - each
  allowance raised must be within the intent's grant to that spender;
* Solana on LiteSVM: the wallet's lamports (fees, rent) plus its token accounts'
  lamports, tokens and delegations (an account given away counts as debited whole);
* Bitcoin on the regtest node (Bitcoin Core's consensus code through py-bitcoinkernel):
  the transaction is put in a block of its own and handed to Core's ProcessNewBlock -
  no mempool policy in the way - and the wallet's coins before minus after are the
  debit (its inputs minus the outputs paying back to any of its scripts).

Per asset the debit must be within ``Execution.intent.outflow()`` (transfers, grants,
fee, rent), and the releasing token's conditions are evaluated again on the signed
intent (with the velocity the key released before). Keys per chain: the **shipped**
treasury template (``custody.treasury.policy.treasury_policy``, with a token: ERC-20 /
SPL) and three single-condition tokens - allowlist only (Ethereum and Solana: transfers
and grants), velocity only, fee cap only - each with a maxFee and no groups, so the
search reaches signing beyond amount bands. The HSM clock moves a day between
examples and every example tops the wallet up first: examples are independent.

What one example cannot see: attacks that combine signatures from *several* requests
(two PSBTs each under-stating the other's segwit v0 input - ``tests/chains/test_btc_prev_tx.py``
- or replays), and a signed Ethereum transaction the node never mines (dropped from
anvil's pool after a block; counted "refused by the chain", nothing debited).
``test_control_*`` show the measure is not blind: an honest transfer's debit is exactly
what was counted, and an intent without its fee, rent or grant would be caught.

Run (CI: 25 examples per chain, derandomized, about 15 s with the setup)::

    .venv/bin/python -m pytest tests/security/test_invariant_outflow.py

Longer and fresh each time::

    INVARIANT_EXAMPLES=500 INVARIANT_RANDOM=1 .venv/bin/python -m pytest \\
        tests/security/test_invariant_outflow.py
    .venv/bin/python -m tests.security.test_invariant_outflow --examples 500 --random [--collect] \\
        [any pytest arguments, e.g. -k solana]

``INVARIANT_COLLECT=1`` (``--collect``) records every counterexample instead of stopping
at (and shrinking) the first, and fails at the end with all of them. The signed /
refused counts per chain and key are printed and written to
``tests/artifacts/invariant.json``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from solders.litesvm import LiteSVM

from chains.bitcoin.node import RegtestNode, RpcServer
from chains.bitcoin.rpc import BitcoinRpc
from chains.errors import ChainError
from chains.ethereum.client import EthClient
from chains.ethereum.encoding import checksum
from custody.treasury.policy import FEE_CAPS, AssetInfo, treasury_policy
from custody.treasury.units import to_base_units
from custody.treasury.wallets import NATIVE
from hsm_emulator.client import HsmClient
from hsm_emulator.errors import HsmError
from hsm_emulator.model import Intent
from hsm_emulator.results import Execution
from tests.chains.test_eth_anvil import CHAIN, FUNDER_KEY, anvil, fund  # noqa: F401
from tests.helpers import Approver
from tests.invariant_kit import (
    ALLOWANCE_TOKEN,
    BTC,
    SEL_APPROVE,
    SEL_INCREASE_ALLOWANCE,
    SEL_TRANSFER,
    SEL_TRANSFER_FROM,
    SOL,
    BtcPlan,
    BtcWorld,
    EthPlan,
    EthWorld,
    Ledger,
    Measured,
    SolPlan,
    SolWorld,
    Tally,
    outflow_violations,
    released_token_failures,
)
from tests.remote_kit import HsmProcess, TimeControl

EXAMPLES = int(os.environ.get("INVARIANT_EXAMPLES", "25"))
RANDOM = os.environ.get("INVARIANT_RANDOM") == "1"  #: fresh examples, not derandomized
COLLECT = os.environ.get("INVARIANT_COLLECT") == "1"  #: record every counterexample
KEYS = ("treasury", "allowlist", "velocity", "fee")
DAY = 86_400
ETH_SMALL, TKN_SMALL = 10**18, 100 * 10**6  #: the shipped template's auto tiers
SOL_SMALL, USDC_SMALL = SOL, 100 * 10**6
BTC_SMALL = BTC
#: Whatever happens, a long run must not hit pytest-timeout's 300 s per test.
pytestmark = [pytest.mark.timeout(max(300, EXAMPLES * 12 + 300)), pytest.mark.node]

# -- policies ------------------------------------------------------------------------------


def shipped(people: dict[str, Approver], assets: list[AssetInfo], network: str,
            tiers: dict[str, dict[str, str]]) -> dict[str, Any]:
    """The shipped treasury template, as ``custody`` creates a wallet's key."""
    config = {"traders": [people[p].entry() for p in ("t1", "t2", "t3")],
              "compliance": [people[p].entry() for p in ("c1", "c2")], "tiers": tiers}
    return treasury_policy(config, assets, network=network)


def single_condition(kind: str, network: str, native: AssetInfo, *, allowed: str,
                     velocity: list[tuple[str, int]], kinds: list[str] | None = None,
                     ) -> dict[str, Any]:
    """One auto token (no groups) with a maxFee (the template's default cap) and only an
    allowlist, only velocity limits, or nothing else."""
    cap = to_base_units(FEE_CAPS[native.symbol], native.decimals, what="maxFee")
    cond: dict[str, Any] = {"maxFee": [{"asset": native.asset, "max": str(cap)}]}
    if kind == "allowlist":
        cond["destinations"] = [allowed]
        if kinds:
            cond["kinds"] = kinds
    elif kind == "velocity":
        cond["velocity"] = [{"asset": a, "windowSeconds": 3600, "max": str(m)}
                            for a, m in velocity]
    return {"ruleUse": {"tokens": [{"name": f"{kind}-only", "timelock": 0, "timeout": 0,
                                    "groups": [], "conditions": cond}]},
            "networks": [network]}


def add_keys(world: Any, people: dict[str, Approver], assets: list[AssetInfo], network: str,
             tiers: dict[str, dict[str, str]], allowed: str, velocity: list[tuple[str, int]],
             kinds: list[str] | None = None) -> None:
    world.add_wallet("treasury", shipped(people, assets, network, tiers))
    for kind in KEYS[1:]:
        world.add_wallet(kind, single_condition(kind, network, assets[0], allowed=allowed,
                                                velocity=velocity, kinds=kinds))


# -- the HSM process and the chains ----------------------------------------------------------


@pytest.fixture(scope="module")
def hsm_time() -> TimeControl:
    return TimeControl()


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory, hsm_time: TimeControl) -> Iterator[HsmClient]:
    sockdir = Path(tempfile.mkdtemp(prefix="ska-inv-", dir="/tmp"))
    process = HsmProcess.start(tmp_path_factory.mktemp("hsm"), sockdir, hsm_time)
    client = process.connect()
    try:
        yield client
    finally:
        client.close()
        process.stop()
        shutil.rmtree(sockdir, ignore_errors=True)


@pytest.fixture(scope="module")
def tally() -> Iterator[Tally]:
    t = Tally()
    yield t
    t.write(["btc", "eth", "sol"])


@pytest.fixture(scope="module")
def runner(hsm: HsmClient, hsm_time: TimeControl, tally: Tally) -> Runner:
    return Runner(hsm, hsm_time, Ledger(), tally)


@pytest.fixture(scope="module")
def eth(hsm: HsmClient, people: dict[str, Approver], anvil: str,  # noqa: F811
        tmp_path_factory: pytest.TempPathFactory) -> EthWorld:
    node = EthClient(anvil, expected_chain_id=CHAIN)
    deployed = fund(node, Account.from_key(FUNDER_KEY), "", 0, ALLOWANCE_TOKEN)
    receipt = node.w3.eth.get_transaction_receipt(deployed)  # type: ignore[arg-type]
    token = checksum(bytes.fromhex(str(receipt["contractAddress"])[2:]))
    world = EthWorld(hsm, node, token, tmp_path_factory.mktemp("eth") / "nonces.sqlite")
    assets = [NATIVE["ethereum"], AssetInfo("TKN", world.token_asset, 6)]
    add_keys(world, people, assets, "ethereum:31337",
             {"ETH": {"small": "1", "medium": "10", "dailySmall": "3"},
              "TKN": {"small": "100", "medium": "1000", "dailySmall": "300"}},
             world.allowed, [("ETH", 2 * ETH_SMALL), (world.token_asset, 2 * TKN_SMALL)],
             kinds=["transfer", "grant"])
    return world


@pytest.fixture(scope="module")
def sol(hsm: HsmClient, people: dict[str, Approver]) -> SolWorld:
    world = SolWorld(hsm, LiteSVM())
    assets = [NATIVE["solana"], AssetInfo("USDC", world.asset("A"), 6)]
    add_keys(world, people, assets, "solana:localnet",
             {"SOL": {"small": "1", "medium": "10", "dailySmall": "3"},
              "USDC": {"small": "100", "medium": "1000", "dailySmall": "300"}},
             str(world.allowed), [("SOL", 2 * SOL_SMALL), (world.asset("A"), 2 * USDC_SMALL)],
             kinds=["transfer", "grant"])
    return world


@pytest.fixture(scope="module")
def btc(hsm: HsmClient, people: dict[str, Approver],
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[BtcWorld]:
    node = RegtestNode(tmp_path_factory.mktemp("btc") / "node")
    server = RpcServer(node, 0, "desk", "regtest-password")
    server.start()
    rpc = BitcoinRpc(f"http://127.0.0.1:{server.port}", "desk", "regtest-password", timeout=30)
    world = BtcWorld(hsm, node, rpc)
    add_keys(world, people, [NATIVE["bitcoin"]], "bitcoin:regtest",
             {"BTC": {"small": "1", "medium": "10", "dailySmall": "3"}}, world.allowed,
             [("BTC", 2 * BTC_SMALL)])
    for w in world.wallets.values():
        world.fund(w, p2wpkh=3, p2tr=2)
    world.mature()
    try:
        yield world
    finally:
        server.shutdown()
        server.server_close()
        node.close()


# -- one example ----------------------------------------------------------------------------


@dataclass
class Runner:
    hsm: HsmClient
    time: TimeControl
    ledger: Ledger
    tally: Tally

    def attempt(self, world: Any, plan: Any) -> tuple[Execution, Measured, list[str]] | None:
        """Build, mutate, ``sign_now``; if signed, re-evaluate the releasing token and
        execute on the chain. None when unbuildable or refused."""
        w = world.wallets[plan.key]
        self.time.advance(DAY + 1)  # every earlier release is out of every window
        world.prepare(w)
        try:
            payload = world.build(w, plan)
        except (ChainError, ValueError, OverflowError):
            self.tally.add(world.chain, plan.key, "unbuildable")
            return None
        try:
            ex = self.hsm.sign_now(w.label, payload, world.payload_type)
        except HsmError as exc:
            self.tally.add(world.chain, plan.key, f"refused:{exc.code}")
            return None
        now = self.time.clock.now()
        self.tally.add(world.chain, plan.key, "signed")
        problems = released_token_failures(w.policy, ex, now, self.ledger.spent_fn(w.label))
        if ex.intent is not None:
            self.ledger.record(w.label, now, ex.intent, ex.token or "")
        measured = world.execute(w, payload, ex.signatures)
        self.tally.add(world.chain, plan.key, "executed" if measured.executed else
                       "chain-refused")
        return ex, measured, problems

    def run(self, world: Any, plan: Any) -> None:
        """One example of the property: if the HSM signs, the chain debits no more."""
        done = self.attempt(world, plan)
        if done is None:
            return
        ex, measured, problems = done
        w = world.wallets[plan.key]
        if ex.intent is not None:
            problems += outflow_violations(ex.intent, measured.debited, measured.allowances)
        self.tally.signed.append({
            "chain": world.chain, "key": plan.key, "token": ex.token, "plan": repr(plan),
            "counted": ex.intent.outflow() if ex.intent is not None else None,
            "debited": measured.debited, "allowances": {
                f"{a} -> {s}": v for (a, s), v in measured.allowances.items()},
            "executed": measured.executed, "note": measured.note, "ok": not problems})
        if problems:
            report = "\n  ".join([
                f"[{world.chain}] invariant broken: the HSM signed with key {w.label!r} "
                f"({plan.key} policy), released by token {ex.token!r}",
                f"plan: {plan}",
                *problems,
                f"HSM intent: {None if ex.intent is None else ex.intent.to_json()}",
                f"HSM counted (outflow): {None if ex.intent is None else ex.intent.outflow()}",
                f"chain debited: {measured.debited}; allowances raised: "
                f"{measured.allowances}; {measured.note}"])
            self.tally.violations.append(report)
            if not COLLECT:
                raise AssertionError(report)


def search(runner: Runner, world: Any, plans: st.SearchStrategy[Any],
           capsys: pytest.CaptureFixture[str]) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=not RANDOM, database=None,
              suppress_health_check=list(HealthCheck), print_blob=RANDOM)
    @given(plan=plans)
    def invariant(plan: Any) -> None:
        runner.run(world, plan)

    try:
        invariant()
    finally:
        with capsys.disabled():
            print("\n" + runner.tally.line(world.chain))
    summary = runner.tally.summary(world.chain)
    assert summary["signed"] > 0, "the search never reached signing: it checked nothing"
    found = [v for v in runner.tally.violations if v.startswith(f"[{world.chain}]")]
    assert not found, f"{len(found)} counterexample(s):\n" + "\n".join(found)


# -- strategies -----------------------------------------------------------------------------

keys = st.sampled_from(KEYS)


def amounts(small: int, low: int = 1) -> st.SearchStrategy[int]:
    """Around the auto tier's bound, and anywhere up to twice it."""
    edges = [low, small // 2, small - 1, small, small + 1, 2 * small + 1, 10 * small + 1]
    return st.one_of(st.sampled_from(edges), st.integers(low, 2 * small))


def mutations(one: st.SearchStrategy[tuple[Any, ...]]) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.one_of(st.just(()), st.lists(one, min_size=1, max_size=3).map(tuple))


def op(name: str, *args: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.tuples(st.just(name), *args)


eth_roles = st.sampled_from(["allowed", "attacker", "allowed", "self", "token"])
eth_mutation = st.one_of(
    op("value", amounts(ETH_SMALL)),
    op("to", eth_roles),
    op("recipient", eth_roles),
    op("amount", amounts(TKN_SMALL)),
    op("append", st.binary(min_size=1, max_size=40)),
    op("set_byte", st.integers(0, 100), st.integers(0, 255)),
    op("selector", st.sampled_from([SEL_APPROVE, SEL_TRANSFER, SEL_TRANSFER_FROM,
                                    SEL_INCREASE_ALLOWANCE])),
    op("transfer_from", eth_roles, eth_roles, amounts(TKN_SMALL)),
    op("increase_allowance", eth_roles, amounts(TKN_SMALL)),
    op("gas_limit", st.sampled_from([20_999, 21_000, 25_000, 60_000, 100_000, 1_000_000,
                                     30_000_000])),
    op("max_fee", st.sampled_from([10, 50, 200, 1_000, 10_000, 100_000])),  # percent
    op("priority", st.sampled_from([0, 1, 10**9, 10**11])),
    op("legacy"),
    op("access_list", st.integers(1, 3)),
    op("drop_data"),
    op("create"),
    op("chain_id", st.sampled_from([1, 31338])),
    op("retype", st.sampled_from([1, 3, 4])),  # EIP-2930, blob, EIP-7702 set-code
)


@st.composite
def eth_plans(draw: st.DrawFn) -> EthPlan:
    base = draw(st.sampled_from(["eth", "erc20", "approve"]))
    amount = draw(amounts(ETH_SMALL if base == "eth" else TKN_SMALL))
    return EthPlan(draw(keys), base, amount, draw(eth_roles), draw(mutations(eth_mutation)))


sol_roles = st.sampled_from(["allowed", "attacker", "fresh", "allowed", "self"])
sol_mutation = st.one_of(
    op("extra_sol", sol_roles, amounts(SOL_SMALL)),
    op("memo"),
    op("approve", sol_roles, amounts(USDC_SMALL)),
    op("unchecked", sol_roles, amounts(USDC_SMALL)),
    op("set_owner", sol_roles),
    op("close", sol_roles),
    op("assign"),
    op("burn", amounts(USDC_SMALL)),
    op("create_with_seed", amounts(SOL_SMALL)),
    op("token2022"),
    op("budget", st.just("limit"), st.sampled_from([1, 1_000, 200_000, 1_400_000])),
    op("budget", st.just("price"), st.sampled_from([1, 10**6, 10**9])),
    op("budget", st.just("heap"), st.just(64 * 1024)),
    op("drop_budget"),
    op("drop_create"),
    op("reorder"),
    op("set_byte", st.integers(0, 400), st.integers(0, 255)),
)


@st.composite
def sol_plans(draw: st.DrawFn) -> SolPlan:
    base = draw(st.sampled_from(["sol", "spl"]))
    amount = draw(amounts(SOL_SMALL if base == "sol" else USDC_SMALL))
    return SolPlan(
        draw(keys), base, amount, draw(sol_roles),
        unit_limit=draw(st.sampled_from([None, 60_000, 200_000, 1_400_000, 1_000, 1])),
        unit_price=draw(st.sampled_from([0, 1, 1_000, 10**6, 10**9, 10**12])),
        mint=draw(st.sampled_from(["A", "A", "B"])),
        decimals=draw(st.sampled_from([6, 6, 6, 9])),
        mutations=draw(mutations(sol_mutation)))


btc_roles = st.sampled_from(["allowed", "attacker", "allowed", "self"])
btc_mutation = st.one_of(
    op("witness_amount", st.integers(0, 3), st.sampled_from([-BTC, -1, 1, BTC, 10 * BTC])),
    op("drop_prev_tx", st.integers(0, 3)),
    op("add_prev_tx", st.integers(0, 3)),
    op("wrong_prev_tx", st.integers(0, 3)),
    op("extra_output", btc_roles, amounts(BTC_SMALL, low=1_000)),
    op("op_return", st.sampled_from([0, 1_000])),
    op("forge_change", st.integers(0, 3)),
    op("unmark_change"),
    op("taptree_change"),
    op("change_to_p2pkh"),
    op("drop_change"),
    op("change_amount", st.sampled_from([-BTC, -10_000, -1, 1, 10_000])),
    op("output_amount", st.integers(0, 3), amounts(BTC_SMALL)),
    op("sighash", st.sampled_from([0, 1, 2, 0x81])),
    op("swap_outputs"),
    op("dup_input"),
    op("locktime", st.sampled_from([1, 500_000_000])),
)


@st.composite
def btc_plans(draw: st.DrawFn) -> BtcPlan:
    payment = st.tuples(btc_roles, amounts(BTC_SMALL, low=1_000))
    return BtcPlan(
        draw(keys), draw(st.lists(st.integers(0, 5), min_size=1, max_size=3).map(tuple)),
        draw(st.lists(payment, min_size=1, max_size=2).map(tuple)),
        change_kind=draw(st.sampled_from(["p2wpkh", "p2tr"])),
        fee_rate=draw(st.sampled_from([1.0, 2.0, 10.0, 100.0, 1_000.0])),
        mutations=draw(mutations(btc_mutation)))


# -- the property, per chain ----------------------------------------------------------------


def test_outflow_invariant_bitcoin(runner: Runner, btc: BtcWorld,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    search(runner, btc, btc_plans(), capsys)


def test_outflow_invariant_ethereum(runner: Runner, eth: EthWorld,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    search(runner, eth, eth_plans(), capsys)


def test_outflow_invariant_solana(runner: Runner, sol: SolWorld,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    search(runner, sol, sol_plans(), capsys)


# -- controls: the measure sees every unit ---------------------------------------------------


def signed(runner: Runner, world: Any, plan: Any) -> tuple[Intent, Measured]:
    done = runner.attempt(world, plan)
    assert done is not None, f"the control was refused: {plan}"
    ex, measured, problems = done
    assert ex.intent is not None and not problems and measured.executed, (problems, measured)
    assert not outflow_violations(ex.intent, measured.debited, measured.allowances)
    return ex.intent, measured


def test_control_bitcoin_debit_is_payment_plus_fee(runner: Runner, btc: BtcWorld) -> None:
    """An honest transfer: the debit is exactly what the HSM counted, and an intent that
    left out the fee would be caught - the measure is not blind."""
    intent, measured = signed(runner, btc, BtcPlan("fee", (), (("attacker", 12_345),)))
    assert measured.debited == intent.outflow() == {"BTC": 12_345 + intent.fee}
    assert outflow_violations(replace(intent, fee=0), measured.debited)


def test_control_ethereum_gas_and_allowance(runner: Runner, eth: EthWorld) -> None:
    intent, measured = signed(runner, eth, EthPlan("fee", "eth", 12_345, "attacker"))
    gas_paid = measured.debited["ETH"] - 12_345
    assert 21_000 <= gas_paid <= intent.fee, measured  # paid, within gasLimit x maxFee
    assert outflow_violations(replace(intent, fee=gas_paid - 1), measured.debited)
    amount = 10**9 + eth.node.block_number()
    eth.reset_allowance(eth.wallets["allowlist"], eth.allowed)  # whatever the search left
    intent, measured = signed(runner, eth, EthPlan("allowlist", "approve", amount, "allowed"))
    assert measured.allowances == {(eth.token_asset, eth.allowed): amount}, measured
    assert outflow_violations(replace(intent, grants=()), measured.debited,
                              measured.allowances)


def test_control_solana_fee_and_rent(runner: Runner, sol: SolWorld) -> None:
    """An SPL transfer to a new wallet: the wallet pays the fee and the token account's
    rent, and both are counted."""
    intent, measured = signed(runner, sol, SolPlan("fee", "spl", 5, "fresh"))
    rent = sol.svm.minimum_balance_for_rent_exemption(165)
    assert measured.debited["SOL"] == 5_000 + rent, measured
    assert measured.debited[sol.asset("A")] == 5
    assert outflow_violations(replace(intent, rent=0), measured.debited)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="The outflow invariant, longer.")
    parser.add_argument("--examples", type=int, default=500, help="examples per chain")
    parser.add_argument("--random", action="store_true", help="fresh examples each run")
    parser.add_argument("--collect", action="store_true",
                        help="record every counterexample instead of stopping at the first")
    ns, pytest_args = parser.parse_known_args()  # the rest goes to pytest (-k solana)
    os.environ["INVARIANT_EXAMPLES"] = str(ns.examples)
    os.environ["INVARIANT_RANDOM"] = "1" if ns.random else "0"
    os.environ["INVARIANT_COLLECT"] = "1" if ns.collect else "0"
    raise SystemExit(pytest.main([__file__, "-p", "no:cacheprovider", *pytest_args]))
