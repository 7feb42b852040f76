"""The Bitcoin Core JSON-RPC client: what goes on the wire and how failures translate.

A scripted HTTP server plays bitcoind (including the legacy HTTP-500 error replies of
Core before v28 and its warm-up error); the last tests talk to the regtest node.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from chains.bitcoin.node import RegtestNode, RpcServer
from chains.bitcoin.rpc import BitcoinRpc, RpcBroadcastRejected, RpcCallError, btc_to_sats
from chains.errors import BroadcastRejected, ChainError, NodeUnavailable

pytestmark = pytest.mark.node


class Script:
    """What the fake node answers next, and what it was sent."""

    def __init__(self) -> None:
        self.status = 200
        self.body: bytes | None = None
        self.result: Any = None
        self.delay = 0.0
        self.seen: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []


@pytest.fixture
def fake() -> Iterator[tuple[Script, str]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            script.seen.append(request)
            script.headers.append(dict(self.headers))
            time.sleep(script.delay)
            body = script.body
            if body is None:
                body = json.dumps({"jsonrpc": "2.0", "result": script.result, "id": request["id"]}).encode()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client that timed out
                self.send_response(script.status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield script, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_request_is_json_rpc_with_basic_auth_and_exact_amounts(fake: tuple[Script, str]) -> None:
    script, url = fake
    script.result = "ab" * 32
    rpc = BitcoinRpc(url, "user", "pw")
    assert rpc.sendrawtransaction("00", maxfeerate=Decimal("0.00100000")) == "ab" * 32
    sent = script.seen[-1]
    assert sent["jsonrpc"] == "2.0" and sent["method"] == "sendrawtransaction"
    assert sent["params"] == ["00", "0.00100000"]  # a string: Core's AmountFromValue reads it exactly
    assert script.headers[-1]["Authorization"] == "Basic dXNlcjpwdw=="


def test_amounts_come_back_as_decimals(fake: tuple[Script, str]) -> None:
    script, url = fake
    script.body = b'{"result": {"feerate": 0.00001234, "blocks": 2}, "error": null, "id": 1}'
    fee = BitcoinRpc(url, "u", "p").estimatesmartfee(2)
    assert fee["feerate"] == Decimal("0.00001234") and btc_to_sats(fee["feerate"]) == 1234
    assert btc_to_sats(Decimal("20999999.99999999")) == 2_099_999_999_999_999
    with pytest.raises(ChainError):
        btc_to_sats(Decimal("0.000000001"))


def test_legacy_http_500_rejection_is_broadcast_rejected(fake: tuple[Script, str]) -> None:
    script, url = fake
    script.status = 500
    script.body = (b'{"result": null, "error": {"code": -26, "message": "mempool-script-verify-flag-failed'
                   b' (Signature must be zero for failed CHECK(MULTI)SIG operation)"}, "id": 1}')
    with pytest.raises(RpcBroadcastRejected) as err:
        BitcoinRpc(url, "u", "p").sendrawtransaction("00")
    assert isinstance(err.value, BroadcastRejected) and err.value.rpc_code == -26
    assert err.value.reason.startswith("mempool-script-verify-flag-failed (Signature")


def test_other_rpc_errors_are_chain_errors_with_the_code(fake: tuple[Script, str]) -> None:
    script, url = fake
    script.body = b'{"jsonrpc": "2.0", "error": {"code": -5, "message": "Block not found"}, "id": 1}'
    with pytest.raises(RpcCallError) as err:
        BitcoinRpc(url, "u", "p").call("getblock", "00" * 32)
    assert (err.value.rpc_code, err.value.reason) == (-5, "Block not found")
    assert not isinstance(err.value, (NodeUnavailable, BroadcastRejected))


def test_warmup_and_garbage_mean_unavailable(fake: tuple[Script, str]) -> None:
    script, url = fake
    rpc = BitcoinRpc(url, "u", "p")
    script.body = b'{"result": null, "error": {"code": -28, "message": "Loading block index..."}, "id": 1}'
    with pytest.raises(NodeUnavailable):
        rpc.getblockcount()
    script.status, script.body = 502, b"<html>Bad Gateway</html>"
    with pytest.raises(NodeUnavailable):
        rpc.getblockcount()


def test_wrong_password_is_not_retryable(fake: tuple[Script, str]) -> None:
    script, url = fake
    script.status, script.body = 401, b""
    with pytest.raises(ChainError) as err:
        BitcoinRpc(url, "u", "wrong").getblockcount()
    assert not isinstance(err.value, NodeUnavailable)


def test_mismatched_reply_id_is_refused(fake: tuple[Script, str]) -> None:
    script, url = fake
    script.body = b'{"result": 5, "error": null, "id": 999}'
    with pytest.raises(ChainError):
        BitcoinRpc(url, "u", "p").getblockcount()


def test_transport_failures_are_node_unavailable(fake: tuple[Script, str]) -> None:
    script, url = fake
    script.delay = 0.5
    with pytest.raises(NodeUnavailable):
        BitcoinRpc(url, "u", "p", timeout=0.1).getblockcount()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(NodeUnavailable):
        BitcoinRpc(f"http://127.0.0.1:{closed_port}", "u", "p", timeout=2).getblockcount()
    with pytest.raises(ChainError):
        BitcoinRpc("file:///etc/passwd", "u", "p")


def test_cookie_auth(fake: tuple[Script, str], tmp_path: Path) -> None:
    script, url = fake
    (tmp_path / ".cookie").write_text("__cookie__:s3cret")
    script.result = 7
    assert BitcoinRpc.from_cookie(url, tmp_path / ".cookie").getblockcount() == 7
    assert script.headers[-1]["Authorization"] == "Basic X19jb29raWVfXzpzM2NyZXQ="
    with pytest.raises(NodeUnavailable):
        BitcoinRpc.from_cookie(url, tmp_path / "missing")


def test_against_the_regtest_node(tmp_path: Path) -> None:
    node = RegtestNode(tmp_path / "node")
    server = RpcServer(node, 0, "u", "p")
    server.start()
    try:
        rpc = BitcoinRpc(f"http://127.0.0.1:{server.port}", "u", "p")
        address = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
        hashes = rpc.generatetoaddress(2, address)
        assert rpc.getblockcount() == 2 and rpc.getbestblockhash() == hashes[-1]
        assert rpc.estimatesmartfee(6) == {"feerate": Decimal("0.00001000"), "blocks": 6}
        coinbase = rpc.call("getblock", hashes[0])["tx"][0]
        out = rpc.gettxout(coinbase, 0)
        assert out is not None and out["value"] == Decimal("50.00000000") and out["coinbase"] is True
        assert rpc.gettxout(coinbase, 5) is None
        with pytest.raises(RpcCallError) as err:
            rpc.call("getwalletinfo")
        assert err.value.rpc_code == -32601
        with pytest.raises(RpcCallError) as err:
            rpc.generatetoaddress(1, "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4")  # mainnet address
        assert (err.value.rpc_code, err.value.reason) == (-5, "Error: Invalid address")
    finally:
        server.shutdown()
        server.server_close()
        node.close()
