"""Bitcoin Core JSON-RPC client (stdlib only), with errors translated at this edge.

Works against the project's regtest node (``python -m chains.bitcoin.node``) and a
real bitcoind alike. Pointing it at a real node:

* regtest: ``bitcoind -regtest -txindex=1`` then
  ``BitcoinRpc.from_cookie("http://127.0.0.1:18443", "~/.bitcoin/regtest/.cookie")``
* signet: port 38332, cookie ``~/.bitcoin/signet/.cookie``
* testnet4: port 48332, cookie ``~/.bitcoin/testnet4/.cookie``
* or with ``-rpcuser``/``-rpcpassword`` (or ``-rpcauth``): ``BitcoinRpc(url, user, password)``.

``-txindex=1`` lets ``getrawtransaction`` find confirmed transactions that are not the
node wallet's (without it, pass the ``blockhash`` that a recent Core's ``scantxoutset``
reports); ``scantxoutset`` needs no index. A real node's ``estimatesmartfee``
may answer ``{"errors": [...]}`` without a ``feerate`` until it has seen enough
blocks: callers must handle that. Amounts come back as :class:`decimal.Decimal`
(never float); :func:`btc_to_sats` converts them exactly.

Errors: transport failures, timeouts and Core's warm-up (-28) raise
:class:`chains.errors.NodeUnavailable`; a rejected ``sendrawtransaction`` /
``testmempoolaccept`` raises :class:`RpcBroadcastRejected` (a
:class:`chains.errors.BroadcastRejected`) with Core's message; any other RPC error
raises :class:`RpcCallError` (a :class:`chains.errors.ChainError`). Both carry
Core's numeric code as ``rpc_code``.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from chains.errors import BroadcastRejected, ChainError, NodeUnavailable
from chains.jsonrpc import HttpJsonRpc, RpcFault

#: Core's RPC_IN_WARMUP: the node is starting and will answer later.
RPC_IN_WARMUP = -28
#: Core's RPC_INVALID_ADDRESS_OR_KEY, what ``getrawtransaction`` answers for a txid the
#: node has neither in its mempool nor in a block.
RPC_INVALID_ADDRESS_OR_KEY = -5
_BROADCAST_METHODS = frozenset({"sendrawtransaction", "testmempoolaccept", "submitpackage"})


class RpcCallError(ChainError):
    code = "chain.rpc_error"

    def __init__(self, reason: str, rpc_code: int) -> None:
        super().__init__(reason)
        self.rpc_code = rpc_code


class RpcBroadcastRejected(BroadcastRejected):
    def __init__(self, reason: str, rpc_code: int) -> None:
        super().__init__(reason)
        self.rpc_code = rpc_code


def btc_to_sats(value: Decimal | int | str) -> int:
    """An RPC amount in BTC to satoshis, refusing anything finer than a satoshi."""
    sats = Decimal(value) * 100_000_000
    if sats != sats.to_integral_value():
        raise ChainError(f"amount {value} is not a whole number of satoshis")
    return int(sats)


class BitcoinRpc:
    def __init__(self, url: str, user: str, password: str, *, timeout: float = 30.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ChainError(f"RPC URL must be http:// or https://, not {url!r}")
        self.url = url
        self.timeout = timeout
        #: kept-alive connections, one per thread; amounts read as Decimal, exactly
        self._rpc = HttpJsonRpc(url, timeout=timeout, auth=(user, password),
                                parse_float=Decimal)

    @classmethod
    def from_cookie(cls, url: str, cookie_path: str | Path, *, timeout: float = 30.0) -> BitcoinRpc:
        """bitcoind's cookie auth: the file holds ``__cookie__:<password>``."""
        try:
            user, _, password = Path(cookie_path).expanduser().read_text().strip().partition(":")
        except OSError as exc:
            raise NodeUnavailable(f"cannot read RPC cookie {cookie_path}: {exc}") from None
        return cls(url, user, password, timeout=timeout)

    def call(self, method: str, *params: Any) -> Any:
        try:
            return self._rpc.call(method, [_jsonable(p) for p in params])
        except RpcFault as exc:
            raise _translate(method, {"code": exc.rpc_code, "message": exc.reason}) from None

    # The calls a wallet adapter makes, named and shaped as in bitcoind.
    def getblockcount(self) -> int:
        return int(self.call("getblockcount"))

    def getbestblockhash(self) -> str:
        return str(self.call("getbestblockhash"))

    def getblockchaininfo(self) -> dict[str, Any]:
        return dict(self.call("getblockchaininfo"))

    def getrawtransaction(self, txid: str, verbose: bool = True,
                          blockhash: str | None = None) -> Any:
        """``blockhash`` lets a node without ``-txindex`` find a confirmed transaction."""
        if blockhash is None:
            return self.call("getrawtransaction", txid, verbose)
        return self.call("getrawtransaction", txid, verbose, blockhash)

    def sendrawtransaction(self, tx_hex: str, maxfeerate: Decimal | None = None) -> str:
        params: list[Any] = [tx_hex] if maxfeerate is None else [tx_hex, maxfeerate]
        return str(self.call("sendrawtransaction", *params))

    def testmempoolaccept(self, tx_hexes: list[str]) -> list[dict[str, Any]]:
        return list(self.call("testmempoolaccept", tx_hexes))

    def estimatesmartfee(self, conf_target: int) -> dict[str, Any]:
        return dict(self.call("estimatesmartfee", conf_target))

    def scantxoutset(self, descriptors: list[str]) -> dict[str, Any]:
        return dict(self.call("scantxoutset", "start", descriptors))

    def gettxout(self, txid: str, vout: int, include_mempool: bool = True) -> dict[str, Any] | None:
        result = self.call("gettxout", txid, vout, include_mempool)
        return None if result is None else dict(result)

    def generatetoaddress(self, nblocks: int, address: str) -> list[str]:
        return list(self.call("generatetoaddress", nblocks, address))


def _jsonable(value: Any) -> Any:
    """Decimals go out as strings, which Core's AmountFromValue reads exactly."""
    return str(value) if isinstance(value, Decimal) else value


def _translate(method: str, error: Any) -> ChainError:
    code = error.get("code", 0) if isinstance(error, dict) else 0
    message = str(error.get("message", error)) if isinstance(error, dict) else str(error)
    if code == RPC_IN_WARMUP:
        return NodeUnavailable(message)
    if method in _BROADCAST_METHODS:
        return RpcBroadcastRejected(message, code)
    return RpcCallError(message, code)
