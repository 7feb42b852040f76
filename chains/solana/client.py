"""A Solana JSON-RPC client for the handful of methods the adapter uses. I/O.

Standard library only (``http.client`` on kept-alive connections, :mod:`chains.jsonrpc`);
works against ``solana-test-validator``, a public cluster endpoint, or
:mod:`chains.solana.devnode`. Every failure leaves as a
:mod:`chains.errors` error: transport problems and HTTP 429/5xx as
:class:`~chains.errors.NodeUnavailable` (retry later), a refused ``sendTransaction`` as
:class:`~chains.errors.BroadcastRejected`, anything else the node says as
:class:`~chains.errors.ChainError`.

Methods: https://solana.com/docs/rpc/http
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, Final, ParamSpec, TypeVar

from chains.errors import BroadcastRejected, ChainError
from chains.jsonrpc import HttpJsonRpc, RpcFault

COMMITMENT: Final = "confirmed"
#: JSON-RPC "invalid params"; the node uses it for an account that does not exist.
INVALID_PARAMS: Final = -32602
_MAX_RESPONSE = 16 * 1024 * 1024


@dataclass(frozen=True)
class Blockhash:
    blockhash: str  #: base58
    last_valid_block_height: int


@dataclass(frozen=True)
class AccountInfo:
    lamports: int
    owner: str  #: base58 program id
    data: bytes
    executable: bool


@dataclass(frozen=True)
class SignatureStatus:
    slot: int
    confirmations: int | None  #: None once rooted (finalized)
    err: Any  #: None if the transaction succeeded
    confirmation_status: str | None  #: "processed" | "confirmed" | "finalized"


class RpcError(ChainError):
    """The node answered with a JSON-RPC error (``rpc_code`` is the node's number)."""

    code = "chain.rpc_error"

    def __init__(self, reason: str, rpc_code: int = 0) -> None:
        super().__init__(reason)
        self.rpc_code = rpc_code


P = ParamSpec("P")
R = TypeVar("R")


def _answer_checked(fn: Callable[P, R]) -> Callable[P, R]:
    """A node answer missing or mistyping a field is a ChainError, not a KeyError."""
    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ChainError(f"{fn.__name__}: malformed node answer ({exc!r})") from None
    return wrapper


class SolanaRpcClient:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError("the Solana RPC URL must be http(s)")
        self.url = url
        self.timeout = timeout
        #: kept-alive connections, one per thread (:mod:`chains.jsonrpc`)
        self._rpc = HttpJsonRpc(url, timeout=timeout, max_response=_MAX_RESPONSE)

    def call(self, method: str, params: list[Any] | None = None) -> Any:
        """One JSON-RPC 2.0 request; the ``result``, or a :mod:`chains.errors` error."""
        try:
            return self._rpc.call(method, params or [])
        except RpcFault as exc:
            raise RpcError(f"{method}: {exc.reason}", exc.rpc_code) from None

    # -- the methods ------------------------------------------------------------------

    @_answer_checked
    def latest_blockhash(self) -> Blockhash:
        value = self._value("getLatestBlockhash", [{"commitment": COMMITMENT}])
        return Blockhash(value["blockhash"], int(value["lastValidBlockHeight"]))

    @_answer_checked
    def genesis_hash(self) -> str:
        return str(self.call("getGenesisHash"))

    @_answer_checked
    def balance(self, address: str) -> int:
        return int(self._value("getBalance", [address, {"commitment": COMMITMENT}]))

    @_answer_checked
    def token_balance(self, token_account: str) -> int | None:
        """The raw amount held, or None if there is no such token account."""
        try:
            value = self._value("getTokenAccountBalance",
                                [token_account, {"commitment": COMMITMENT}])
        except RpcError as exc:
            if exc.rpc_code == INVALID_PARAMS:
                return None
            raise
        return int(value["amount"])

    @_answer_checked
    def account_info(self, address: str) -> AccountInfo | None:
        value = self._value("getAccountInfo",
                            [address, {"encoding": "base64", "commitment": COMMITMENT}])
        if value is None:
            return None
        return AccountInfo(int(value["lamports"]), value["owner"],
                           base64.b64decode(value["data"][0]), bool(value["executable"]))

    @_answer_checked
    def minimum_balance_for_rent_exemption(self, size: int) -> int:
        return int(self.call("getMinimumBalanceForRentExemption", [size]))

    def send_transaction(self, raw: bytes) -> str:
        """Submit a signed transaction; its signature (base58), the transaction id."""
        try:
            return str(self.call("sendTransaction", [
                base64.b64encode(raw).decode(),
                {"encoding": "base64", "preflightCommitment": COMMITMENT}]))
        except RpcError as exc:
            raise BroadcastRejected(exc.reason) from None

    @_answer_checked
    def signature_statuses(self, signatures: list[str]) -> list[SignatureStatus | None]:
        value = self._value("getSignatureStatuses",
                            [signatures, {"searchTransactionHistory": True}])
        return [None if s is None else SignatureStatus(
            int(s["slot"]), s.get("confirmations"), s.get("err"), s.get("confirmationStatus"))
            for s in value]

    @_answer_checked
    def block_height(self) -> int:
        """The node's block height (at :data:`COMMITMENT`), the figure a blockhash's
        ``lastValidBlockHeight`` is compared with."""
        return int(self.call("getBlockHeight", [{"commitment": COMMITMENT}]))

    @_answer_checked
    def blockhash_valid(self, blockhash: str) -> bool:
        """Whether a transaction over ``blockhash`` can still land (``isBlockhashValid``
        at :data:`COMMITMENT`: a confirmed bank descends from the one that gave the
        blockhash, so "not valid" there means too old, not "not seen yet")."""
        value = self._value("isBlockhashValid", [blockhash, {"commitment": COMMITMENT}])
        if not isinstance(value, bool):
            raise ChainError("isBlockhashValid: malformed answer")
        return value

    @_answer_checked
    def request_airdrop(self, address: str, lamports: int) -> str:
        """Faucet lamports (test validators and devnet only)."""
        return str(self.call("requestAirdrop", [address, lamports]))

    def _value(self, method: str, params: list[Any]) -> Any:
        result = self.call(method, params)
        if not isinstance(result, dict) or "value" not in result:
            raise ChainError(f"{method}: malformed answer")
        return result["value"]
