"""``custody bench transfers`` run tiny (3 transfers a chain) on the local nodes: the
records' shape, and - read from the nodes here, not from the bench's own count - that
every transfer paid its destination on its chain.

The bench's figures are not asserted (they depend on the machine); what must hold is
that each record describes ``count`` transfers that all confirmed, that its ratio is
its two rates' quotient, and that the headline carries each chain's figures.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from chains.bitcoin.addresses import address_to_script
from chains.bitcoin.rpc import btc_to_sats
from chains.solana.client import SolanaRpcClient
from custody.cli import app
from custody.cli.bench_transfers import CHAINS, TARGETS, headline, run_chain, session
from custody.localnets import LocalNets, find_anvil

pytestmark = pytest.mark.node

COUNT = 3
#: What each transfer of the bench pays, in the chain's base units.
PAID = {"ethereum": 10**15, "solana": 10_000_000, "bitcoin": 100_000}


@pytest.fixture(scope="module")
def ran() -> Iterator[tuple[LocalNets, dict[str, tuple[dict[str, Any], list[str]]]]]:
    if find_anvil() is None:
        hint = "anvil not found: set ANVIL_BIN or run `npm install --prefix .ci/npm ...`"
        if os.environ.get("CI"):
            pytest.fail(hint)
        pytest.skip(hint)
    with session(CHAINS, "sqlite") as service:
        yield service.nets, {c: run_chain(service, c, COUNT, 2) for c in CHAINS}


def _balance(nets: LocalNets, chain: str, destination: str) -> int:
    if chain == "ethereum":
        assert nets.eth is not None
        return nets.eth.balance(destination)
    if chain == "solana":
        assert nets.sol is not None
        return SolanaRpcClient(nets.sol.url).balance(destination)
    assert nets.btc_rpc is not None
    script = address_to_script("regtest", destination).hex()
    found = nets.btc_rpc.scantxoutset([f"raw({script})"])["unspents"]
    return sum(btc_to_sats(u["amount"]) for u in found)


@pytest.mark.parametrize("chain", CHAINS)
def test_every_transfer_paid_its_destination_on_the_node(ran: Any, chain: str) -> None:
    nets, runs = ran
    record, destinations = runs[chain]
    assert len(set(destinations)) == COUNT
    assert [_balance(nets, chain, d) for d in destinations] == [PAID[chain]] * COUNT
    assert record["landed"] == COUNT


@pytest.mark.parametrize("chain", CHAINS)
def test_the_record_describes_count_confirmed_transfers(ran: Any, chain: str) -> None:
    record, _ = ran[1][chain]
    assert record["bench"] == "transfers" and record["chain"] == chain
    assert record["count"] == COUNT and record["states"] == {"confirmed": COUNT}
    assert record["service_tps"] > 0 and record["node_ingest_tps"] > 0
    assert record["ratio"] == pytest.approx(
        record["service_tps"] / record["node_ingest_tps"], rel=0.05, abs=0.002)
    assert 0 < record["submit_broadcast_p50_ms"] <= record["submit_broadcast_p99_ms"]
    assert record["submit_broadcast_p50_ms"] <= record["confirm_p50_ms"]
    assert record["confirm_all_s"] > 0
    assert set(record["cpu_ms_per_transfer"]) == {"server", "hsm", "bench"}


def test_the_headline_carries_every_chain(ran: Any) -> None:
    records = [ran[1][c][0] for c in CHAINS]
    head = headline(records, COUNT, "sqlite", 2)
    assert head["headline"] is True and head["all_landed"] is True
    assert {c: head[c]["ratio"] for c in CHAINS} == {r["chain"]: r["ratio"] for r in records}
    assert head["met"] == all(head[c]["ratio"] >= t for c, t in TARGETS.items())


@pytest.mark.parametrize(("args", "said"), [(["--chain", "doge"], "--chain"),
                                             (["--db", "mysql"], "--db")])
def test_the_command_refuses_an_unknown_chain_or_database(args: list[str], said: str) -> None:
    result = CliRunner().invoke(app, ["bench", "transfers", *args])
    assert result.exit_code == 2 and said in result.output


def test_the_command_prints_a_line_per_chain_then_the_headline() -> None:
    result = CliRunner().invoke(app, ["bench", "transfers", "--chain", "sol", "--count", "1",
                                      "--concurrency", "1"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert [r.get("chain", "headline") for r in records] == [
        "solana", "headline"]
    assert records[0]["landed"] == 1 and records[-1]["all_landed"] is True
    assert set(records[-1]) >= {"solana", "met", "target_ratio", "count", "db"}
