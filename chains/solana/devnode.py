"""A development Solana node: the adapter's JSON-RPC subset served from LiteSVM. I/O.

LiteSVM (``solders.litesvm``) runs the real Solana runtime in-process - the System,
SPL Token, Token-2022 and Associated Token Account programs included, signatures and
blockhashes checked - but has no network interface. This wraps it in a loopback
``http.server`` so a broker in another process can use it exactly like
``solana-test-validator``, without installing the Solana tool suite. Development and
tests only: one LiteSVM, one lock, no persistence, no consensus.

LiteSVM accepts only its latest blockhash; :meth:`DevNode.expire_blockhash` moves it on,
which lets tests show a transaction signed with an old blockhash being refused and a
rebuilt one landing. The node's answers agree with that: each new blockhash is one block
higher (LiteSVM's slot does not move, so the height counts the blockhashes seen on top of
the slot), a blockhash's ``lastValidBlockHeight`` is its own height, and
``isBlockhashValid`` holds for the latest one only - so "past its last valid height" and
"not valid" are true of exactly the blockhashes LiteSVM refuses.

Served methods (shapes as in https://solana.com/docs/rpc/http): getLatestBlockhash,
getBlockHeight, isBlockhashValid, getGenesisHash, getBalance, getTokenAccountBalance,
getAccountInfo, sendTransaction, getSignatureStatuses, getMinimumBalanceForRentExemption,
requestAirdrop.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bip_utils import Base58Decoder
from solders.hash import Hash
from solders.litesvm import LiteSVM
from solders.pubkey import Pubkey
from solders.token import ID as TOKEN_PROGRAM_ID
from solders.token.state import Mint, TokenAccount
from solders.transaction import Transaction
from solders.transaction_metadata import FailedTransactionMetadata

_MAX_REQUEST = 1024 * 1024
Handler = Callable[[list[Any]], Any]


class RpcFault(Exception):
    """A JSON-RPC error answer (the node's code and message, as a validator sends them)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class DevNode:
    """LiteSVM behind JSON-RPC on ``127.0.0.1``. Use as a context manager."""

    def __init__(self, svm: LiteSVM | None = None, port: int = 0) -> None:
        self.svm = svm or LiteSVM()
        self.lock = threading.RLock()
        self.genesis_hash = str(Hash.new_unique())
        self._landed: dict[str, int] = {}  #: signature -> slot
        self._tip = ""  #: the latest blockhash the node has answered about
        self._moves = 0  #: blockhashes seen after the first: the height above the slot
        self._serving = False
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)
        self.methods: dict[str, Handler] = {
            "getLatestBlockhash": self._latest_blockhash,
            "getBlockHeight": lambda _p: self._height(),
            "isBlockhashValid": self._blockhash_valid,
            "getGenesisHash": lambda _p: self.genesis_hash,
            "getBalance": self._balance,
            "getTokenAccountBalance": self._token_balance,
            "getAccountInfo": self._account_info,
            "sendTransaction": self._send,
            "getSignatureStatuses": self._statuses,
            "getMinimumBalanceForRentExemption": lambda p: self.svm.
            minimum_balance_for_rent_exemption(_int(p, 0)),
            "requestAirdrop": self._airdrop,
        }

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> DevNode:
        """Serve on a background thread."""
        self._serving = True
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve on this thread until :meth:`stop` (or an interrupt)."""
        self._serving = True
        self._server.serve_forever()

    def stop(self) -> None:
        if self._serving:
            self._server.shutdown()  # waits for the serving loop; never call it unstarted
        self._server.server_close()

    def __enter__(self) -> DevNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def restarted(self) -> DevNode:
        """This node's ledger served anew on its port, after :meth:`stop` - a validator
        started again on its ledger (tests of node outages). Not started."""
        node = DevNode(self.svm, port=int(self._server.server_address[1]))
        node.genesis_hash, node._landed = self.genesis_hash, self._landed
        node._tip, node._moves = self._tip, self._moves
        return node

    def expire_blockhash(self) -> None:
        """Move to a new blockhash: transactions signed over the old one are refused."""
        with self.lock:
            self.svm.expire_blockhash()

    def dispatch(self, method: str, params: list[Any]) -> Any:
        handler = self.methods.get(method)
        if handler is None:
            raise RpcFault(-32601, f"Method not found: {method}")
        with self.lock:
            return handler(params)

    # -- methods ----------------------------------------------------------------------

    def _context(self, value: Any) -> dict[str, Any]:
        return {"context": {"slot": self.svm.get_clock().slot}, "value": value}

    def _height(self) -> int:
        """The block height: the slot, plus one per blockhash move seen (however the
        blockhash moved: :meth:`expire_blockhash`, an airdrop, a test on the LiteSVM)."""
        latest = str(self.svm.latest_blockhash())
        if latest != self._tip:
            self._moves += 1 if self._tip else 0
            self._tip = latest
        return int(self.svm.get_clock().slot) + self._moves

    def _latest_blockhash(self, _params: list[Any]) -> dict[str, Any]:
        height = self._height()  # LiteSVM takes no other: valid up to its own height
        return self._context({"blockhash": self._tip, "lastValidBlockHeight": height})

    def _blockhash_valid(self, params: list[Any]) -> dict[str, Any]:
        if not params or not isinstance(params[0], str):
            raise RpcFault(-32602, "Invalid params: a base58 blockhash")
        self._height()
        return self._context(params[0] == self._tip)

    def _balance(self, params: list[Any]) -> dict[str, Any]:
        return self._context(self.svm.get_balance(_pubkey(params, 0)) or 0)

    def _token_balance(self, params: list[Any]) -> dict[str, Any]:
        missing = RpcFault(-32602, "Invalid param: could not find account")
        account = self.svm.get_account(_pubkey(params, 0))
        if account is None or account.owner != TOKEN_PROGRAM_ID:
            raise missing
        try:
            token = TokenAccount.from_bytes(bytes(account.data))
            mint_account = self.svm.get_account(token.mint)
            decimals = Mint.from_bytes(bytes(mint_account.data)).decimals if (
                mint_account is not None) else None
        except ValueError:
            raise missing from None
        if decimals is None:
            raise missing
        ui = token.amount / 10**decimals
        return self._context({"amount": str(token.amount), "decimals": decimals,
                              "uiAmount": ui, "uiAmountString": str(ui)})

    def _account_info(self, params: list[Any]) -> dict[str, Any]:
        account = self.svm.get_account(_pubkey(params, 0))
        if account is None or (account.lamports == 0 and not bytes(account.data)):
            return self._context(None)
        data = bytes(account.data)
        return self._context({
            "data": [base64.b64encode(data).decode(), "base64"],
            "executable": account.executable, "lamports": account.lamports,
            "owner": str(account.owner), "rentEpoch": account.rent_epoch, "space": len(data)})

    def _send(self, params: list[Any]) -> str:
        config = params[1] if len(params) > 1 and isinstance(params[1], dict) else {}
        try:
            raw = _decode_tx(params[0], config.get("encoding", "base58"))
            tx = Transaction.from_bytes(raw)
        except (IndexError, TypeError, ValueError) as exc:
            raise RpcFault(-32602, f"invalid transaction: {exc}") from None
        result = self.svm.send_transaction(tx)
        if isinstance(result, FailedTransactionMetadata):
            err = str(result.err())
            if "SignatureFailure" in err:
                raise RpcFault(-32003, "Transaction signature verification failure")
            raise RpcFault(-32002, f"Transaction simulation failed: {err}")
        signature = str(result.signature())
        self._landed[signature] = self.svm.get_clock().slot
        return signature

    def _statuses(self, params: list[Any]) -> dict[str, Any]:
        signatures = params[0] if params and isinstance(params[0], list) else None
        if signatures is None or len(signatures) > 256:
            raise RpcFault(-32602, "Invalid params: a list of at most 256 signatures")
        return self._context([None if str(s) not in self._landed else {
            "slot": self._landed[str(s)], "confirmations": None, "err": None,
            "status": {"Ok": None}, "confirmationStatus": "finalized"} for s in signatures])

    def _airdrop(self, params: list[Any]) -> str:
        address, lamports = _pubkey(params, 0), _int(params, 1)
        result = self.svm.airdrop(address, lamports)
        if isinstance(result, FailedTransactionMetadata) and "AlreadyProcessed" in str(
                result.err()):
            self.svm.expire_blockhash()  # same airdrop again: needs a new blockhash
            result = self.svm.airdrop(address, lamports)
        if isinstance(result, FailedTransactionMetadata):
            raise RpcFault(-32603, f"airdrop failed: {result.err()}")
        signature = str(result.signature())
        self._landed[signature] = self.svm.get_clock().slot
        return signature


def _pubkey(params: list[Any], i: int) -> Pubkey:
    try:
        return Pubkey.from_string(params[i])
    except (IndexError, TypeError, ValueError):
        raise RpcFault(-32602, f"Invalid param: not a base58 public key at {i}") from None


def _int(params: list[Any], i: int) -> int:
    try:
        value = params[i]
    except IndexError:
        raise RpcFault(-32602, f"Invalid params: missing {i}") from None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
        raise RpcFault(-32602, f"Invalid param: not a u64 at {i}")
    return value


def _decode_tx(data: Any, encoding: str) -> bytes:
    if not isinstance(data, str):
        raise TypeError("transaction must be a string")
    if encoding == "base64":
        return base64.b64decode(data, validate=True)
    if encoding == "base58":
        return bytes(Base58Decoder.Decode(data))
    raise ValueError(f"unsupported encoding {encoding!r}")


def _handler_for(node: DevNode) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= _MAX_REQUEST:
                self.send_error(413 if length else 411)
                return
            self._reply(_answer(node, self.rfile.read(length)))

        def _reply(self, doc: dict[str, Any]) -> None:
            body = json.dumps(doc).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: tests and notebooks do not want a line per request."""

    return _Handler


def _answer(node: DevNode, raw: bytes) -> dict[str, Any]:
    req: Any = None
    try:
        req = json.loads(raw)
        if not isinstance(req, dict) or not isinstance(req.get("method"), str):
            raise RpcFault(-32600, "Invalid request")
        params = req.get("params") or []
        if not isinstance(params, list):
            raise RpcFault(-32602, "Invalid params: must be a list")
        result = node.dispatch(req["method"], params)
        return {"jsonrpc": "2.0", "id": req.get("id"), "result": result}
    except RpcFault as fault:
        error = {"code": fault.code, "message": fault.message}
    except ValueError:
        error = {"code": -32700, "message": "Parse error"}
    request_id = req.get("id") if isinstance(req, dict) else None
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def main(argv: list[str] | None = None) -> None:
    """``python -m chains.solana.devnode --port 8899``: serve until interrupted."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--port", type=int, default=8899)
    args = parser.parse_args(argv)
    node = DevNode(port=args.port)
    print(node.url, flush=True)  # the command's output is its URL
    try:
        node.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        node.stop()


if __name__ == "__main__":
    main()
