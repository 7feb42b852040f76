"""Fee quotes, replacement bumps, and the client's error translation (no node needed)."""

from __future__ import annotations

import socket

import pytest

from chains.errors import BuildError, NodeUnavailable
from chains.ethereum.client import EthClient
from chains.ethereum.fees import MIN_PRIORITY_FEE, bumped, quote, replacement
from chains.ethereum.tx import Eip1559Tx


def test_quote_is_twice_base_plus_median_tip_within_caps() -> None:
    q = quote(10 * 10**9, [3 * 10**9, 1 * 10**9, 2 * 10**9])
    assert (q.priority_fee, q.max_fee) == (2 * 10**9, 22 * 10**9)
    assert quote(5, []).priority_fee == MIN_PRIORITY_FEE
    assert quote(10**9, [5 * 10**9], max_priority_cap=2 * 10**9).priority_fee == 2 * 10**9
    assert quote(10**9, [10**9], max_fee_cap=25 * 10**8).max_fee == 25 * 10**8
    with pytest.raises(BuildError):
        quote(10 * 10**9, [10**9], max_fee_cap=10 * 10**9)  # below base + tip


def test_replacement_bumps_both_fees_at_least_ten_percent() -> None:
    tx = Eip1559Tx(1, 4, 10**9, 3 * 10**10, 21000, b"\x01" * 20, 5)
    new = replacement(tx)
    assert new.nonce == tx.nonce and new.to == tx.to and new.value == tx.value
    assert new.max_priority_fee_per_gas * 100 >= tx.max_priority_fee_per_gas * 110
    assert new.max_fee_per_gas * 100 >= tx.max_fee_per_gas * 110
    assert bumped(0) == 1 and bumped(100) == 111


def test_unreachable_node_is_node_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = EthClient(f"http://127.0.0.1:{port}", timeout=1)  # nothing listens there
    with pytest.raises(NodeUnavailable):
        client.chain_id()
    with pytest.raises(NodeUnavailable):
        client.send_raw_transaction(b"\x02\xc0")
