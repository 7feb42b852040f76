"""CI versions of the long reliability scripts: a few kill -9 iterations per database
(sign requests; sign requests and Ethereum transfers on anvil) and a short soak on two
replicas. The long runs are the scripts with their counts as
arguments (see tests/reliability/REPORT.md)."""

from __future__ import annotations

import io
import json

import pytest

from . import killloop, soak

pytestmark = [pytest.mark.slow, pytest.mark.node]


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_kill_loop_holds_the_invariants(db: str) -> None:
    out = io.StringIO()
    summary = killloop.run(db, iterations=2, seed=20, out=out)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["iteration"] for line in lines[:-1]] == [1, 2]
    assert sum(summary["kills"].values()) >= 2 and summary["requests"] > 0
    assert summary["violations"] == 0, [line["violations"] for line in lines[:-1]]


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_kill_loop_with_transfers_holds_the_chain_invariants(db: str) -> None:
    """Transfers on anvil beside the sign requests: no nonce reused or skipped, nothing
    broadcast or signed twice, every transfer confirmed or rejected as its scenario says."""
    out = io.StringIO()
    summary = killloop.run(db, iterations=2, seed=21, out=out, transfers=True)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["iteration"] for line in lines[:-1]] == [1, 2]
    assert sum(summary["kills"].values()) >= 2
    chain = summary["chain"]
    assert chain["transfers"] > 0 and chain["broadcasts"] > 0
    assert chain["nonce"] == chain["broadcasts"]
    assert summary["violations"] == 0, [line["violations"] for line in lines[:-1]]


def test_short_soak_on_two_replicas() -> None:
    out = io.StringIO()
    summary = soak.run(12, replicas=2, clients=2, every=4, out=out)
    samples = [json.loads(line) for line in out.getvalue().splitlines()[:-1]]
    assert len(samples) >= 2
    assert all(set(s["rss_kib"]) == {"hsm", "api0", "api1", "worker"} for s in samples)
    assert summary["violations"] == [] and summary["scenarios"] > 0
    assert summary["calls_per_s"] > 0
    assert not any(k.startswith("5") or "unexpected" in k for k in summary["errors"])
