"""The Ethereum node client: JSON-RPC through web3's HTTP provider. All the I/O is here.

Every web3 / transport exception is translated into :mod:`chains.errors` at this edge:
an unreachable node is :class:`NodeUnavailable` (retry later), a refused transaction is
:class:`BroadcastRejected` with the node's reason, anything else the node answers with
an error is :class:`ChainError`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import requests
from eth_typing import ChecksumAddress, HexAddress, HexStr
from web3 import Web3
from web3.exceptions import (
    ProviderConnectionError,
    TimeExhausted,
    Web3Exception,
    Web3RPCError,
)

from chains.base import Confirmation
from chains.errors import BroadcastRejected, BuildError, ChainError, NodeUnavailable
from chains.jsonrpc import HttpJsonRpc, RpcFault

from .encoding import address_bytes, checksum
from .erc20 import encode_balance_of
from .fees import FeeQuote, quote
from .parse import tx_hash

T = TypeVar("T")
#: Percentile of each recent block's tips used for the quote (the median block's).
TIP_PERCENTILE = 50
#: Headroom over ``eth_estimateGas`` (state may change between estimate and inclusion).
GAS_HEADROOM_PERCENT = 20


@dataclass(frozen=True)
class Receipt:
    tx_hash: str
    block_number: int
    block_hash: str
    status: int  #: 1 success, 0 reverted
    gas_used: int
    effective_gas_price: int


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn web3 and transport exceptions into the project's chain errors."""
    try:
        yield
    except ChainError:
        raise
    except (requests.RequestException, ProviderConnectionError, ConnectionError,
            TimeoutError, TimeExhausted) as exc:
        raise NodeUnavailable(f"{what}: node unreachable: {exc}") from None
    except Web3RPCError as exc:
        raise ChainError(f"{what}: node error: {_rpc_message(exc)}") from None
    except (Web3Exception, ValueError, TypeError, KeyError) as exc:
        raise ChainError(f"{what}: {type(exc).__name__}: {exc}") from None


def _account(address: str) -> ChecksumAddress:
    return ChecksumAddress(HexAddress(HexStr(checksum(address_bytes(address)))))


def _quantity(value: Any) -> int:
    """A JSON-RPC quantity (``0x``-prefixed hex); anything else is a ValueError."""
    if not isinstance(value, str) or not value.startswith("0x") or len(value) > 66:
        raise ValueError(f"not a quantity: {value!r}")
    return int(value, 16)


def _hash(value: Any) -> str:
    """A 32-byte hash as ``0x`` + 64 lower-case hex digits."""
    if not isinstance(value, str) or len(value) != 66 or not value.startswith("0x"):
        raise ValueError(f"not a 32-byte hash: {value!r}")
    return "0x" + bytes.fromhex(value[2:]).hex()


def _rpc_message(exc: Web3RPCError) -> str:
    response: Any = getattr(exc, "rpc_response", None)
    if isinstance(response, dict) and isinstance(response.get("error"), dict):
        return str(response["error"].get("message", exc))
    return str(exc)


class EthClient:
    """One node (loopback HTTP in tests), one chain id - checked on first use."""

    def __init__(self, url: str, *, timeout: float = 10.0,
                 expected_chain_id: int | None = None) -> None:
        # No retries inside web3: it retries a timed-out read five times with backoff, so
        # a hung node held each call for 6 x ``timeout``. The caller retries instead (the
        # worker on its next pass, an API client after Retry-After).
        provider = Web3.HTTPProvider(url, request_kwargs={"timeout": timeout},
                                     exception_retry_configuration=None)
        self.w3 = Web3(provider)
        #: the calls made for every transfer go straight to JSON-RPC (:mod:`chains.jsonrpc`)
        self._rpc = HttpJsonRpc(url, timeout=timeout)
        self.expected_chain_id = expected_chain_id

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        with translated(what):
            return fn()

    def _node(self, method: str, params: list[Any]) -> Any:
        """A call every transfer makes, without web3: the node's ``result``."""
        try:
            return self._rpc.call(method, params)
        except RpcFault as exc:
            raise ChainError(f"{method}: node error: {exc.reason}") from None

    def chain_id(self) -> int:
        cid = int(self._call("eth_chainId", lambda: self.w3.eth.chain_id))
        if self.expected_chain_id is not None and cid != self.expected_chain_id:
            raise ChainError(f"node is on chain {cid}, expected {self.expected_chain_id}")
        return cid

    def block_number(self) -> int:
        with translated("eth_blockNumber"):
            return _quantity(self._node("eth_blockNumber", []))

    def balance(self, address: str) -> int:
        acct = _account(address)
        return int(self._call("eth_getBalance", lambda: self.w3.eth.get_balance(acct)))

    def erc20_balance(self, token: str, owner: str) -> int:
        call = {"to": checksum(address_bytes(token)),
                "data": "0x" + encode_balance_of(address_bytes(owner)).hex()}
        out = self._call("eth_call balanceOf", lambda: self.w3.eth.call(call))  # type: ignore[arg-type]  # web3's TypedDict wants checksum types
        if len(out) != 32:
            raise ChainError(f"balanceOf returned {len(out)} bytes, not one uint256")
        return int.from_bytes(out, "big")

    def pending_nonce(self, address: str) -> int:
        acct = _account(address)
        with translated("eth_getTransactionCount"):
            return _quantity(self._node("eth_getTransactionCount", [acct, "pending"]))

    def fee_quote(self, *, blocks: int = 5, max_fee_cap: int | None = None,
                  max_priority_cap: int | None = None) -> FeeQuote:
        """``eth_feeHistory``: the next block's base fee and recent median tips."""
        with translated("eth_feeHistory"):
            hist = self._node("eth_feeHistory", [hex(blocks), "latest", [TIP_PERCENTILE]])
            next_base = _quantity(hist["baseFeePerGas"][-1])
            tips = [_quantity(r[0]) for r in hist.get("reward") or [] if r]
        return quote(next_base, tips, max_fee_cap=max_fee_cap,
                     max_priority_cap=max_priority_cap)

    def estimate_gas(self, sender: str, to: str, data: bytes, value: int, *, cap: int) -> int:
        """``eth_estimateGas`` plus headroom, refused above ``cap`` (a runaway call)."""
        call = {"from": checksum(address_bytes(sender)), "to": checksum(address_bytes(to)),
                "data": "0x" + data.hex(), "value": value}
        gas = int(self._call("eth_estimateGas", lambda: self.w3.eth.estimate_gas(call)))  # type: ignore[arg-type]  # web3's TypedDict wants checksum types
        gas += gas * GAS_HEADROOM_PERCENT // 100
        if gas > cap:
            raise BuildError(f"estimated gas {gas} above the cap {cap}")
        return gas

    def send_raw_transaction(self, raw: bytes) -> str:
        """Broadcast; the id. Sending the same bytes again answers the same id."""
        txid = tx_hash(raw)
        try:
            sent = self._node("eth_sendRawTransaction", ["0x" + raw.hex()])
        except ChainError as exc:
            if isinstance(exc, NodeUnavailable):
                raise
            if "already known" in exc.reason or self.known(txid):
                return txid  # sent before (pending or mined): same bytes, same id
            raise BroadcastRejected(exc.reason) from None
        if not isinstance(sent, str) or sent.lower() != txid:
            raise ChainError(f"node answered id {sent!r}, expected {txid}")
        return txid

    def known(self, txid: str) -> bool:
        """Whether the node has this transaction, pending or mined."""
        return self._node("eth_getTransactionByHash", [txid]) is not None

    def receipt(self, txid: str) -> Receipt | None:
        """The receipt, or None while the transaction is not in a block."""
        with translated("eth_getTransactionReceipt"):
            r = self._node("eth_getTransactionReceipt", [txid])
            if r is None or r.get("blockNumber") is None:  # not in a block yet
                return None
            return Receipt(txid, _quantity(r["blockNumber"]), _hash(r["blockHash"]),
                           _quantity(r["status"]), _quantity(r["gasUsed"]),
                           _quantity(r.get("effectiveGasPrice") or "0x0"))

    def confirmation(self, txid: str) -> Confirmation:
        """Depth of ``txid``: 1 once in a block, +1 per block on top; 0 if not mined."""
        r = self.receipt(txid)
        if r is None:
            return Confirmation(txid, 0)
        depth = self.block_number() - r.block_number + 1
        return Confirmation(txid, depth, r.block_hash, included=True)

    def wait_for_depth(self, txid: str, depth: int, *, timeout: float = 60.0,
                       poll: float = 0.2) -> Confirmation:
        deadline = time.monotonic() + timeout
        while True:
            conf = self.confirmation(txid)
            if conf.confirmations >= depth:
                return conf
            if time.monotonic() > deadline:
                raise NodeUnavailable(f"{txid} not {depth} deep after {timeout}s "
                                      f"(now {conf.confirmations})")
            time.sleep(poll)

    def rpc(self, method: str, params: list[Any]) -> Any:
        """A raw JSON-RPC call (node-specific methods such as anvil's ``evm_mine``)."""
        def go() -> Any:
            resp = self.w3.provider.make_request(method, params)  # type: ignore[arg-type]  # method names are str
            if "error" in resp:
                raise ChainError(f"{method}: {resp['error']}")
            return resp.get("result")
        return self._call(method, go)
