"""The kept-alive JSON-RPC transport (chains/jsonrpc.py) against a scripted HTTP server:
each answer shape maps to the project's errors, a connection the node closed is replaced
once, and credentials in the URL become basic auth."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from chains.errors import ChainError, NodeUnavailable
from chains.jsonrpc import MAX_RESPONSE, HttpJsonRpc, RpcFault

#: (status, body, close the connection after: True says so, "silent" does not)
Script = Callable[[dict[str, Any]], tuple[int, bytes, bool | str]]


class Node:
    def __init__(self) -> None:
        self.script: Script = lambda req: (200, _ok(req, "0x1"), False)
        self.requests: list[tuple[dict[str, Any], dict[str, str]]] = []
        self.connections = 0
        node = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                node.connections += 1

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                node.requests.append((body, dict(self.headers)))
                status, raw, close = node.script(body)
                self.send_response(status)
                self.send_header("Content-Length", str(len(raw)))
                if close is True:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(raw)
                if close:
                    self.close_connection = True

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _ok(req: dict[str, Any], result: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": req["id"], "result": result}).encode()


@pytest.fixture
def node() -> Iterator[Node]:
    n = Node()
    yield n
    n.server.shutdown()
    n.server.server_close()


def test_a_result_on_one_kept_connection(node: Node) -> None:
    rpc = HttpJsonRpc(f"http://127.0.0.1:{node.port}")
    assert [rpc.call("eth_blockNumber", []) for _ in range(5)] == ["0x1"] * 5
    assert node.connections == 1
    assert node.requests[0][0]["method"] == "eth_blockNumber"


def test_an_error_object_is_a_fault_with_the_nodes_words(node: Node) -> None:
    node.script = lambda req: (200, json.dumps({"jsonrpc": "2.0", "id": req["id"], "error": {
        "code": -32000, "message": "nonce too low"}}).encode(), False)
    with pytest.raises(RpcFault) as caught:
        HttpJsonRpc(f"http://127.0.0.1:{node.port}").call("eth_sendRawTransaction", ["0x"])
    assert caught.value.reason == "nonce too low" and caught.value.rpc_code == -32000


@pytest.mark.parametrize(("status", "body", "error"), [
    (503, b"<html>busy</html>", NodeUnavailable),
    (429, b"slow down", NodeUnavailable),
    (200, b"not json", ChainError),
    (200, b"[1, 2]", ChainError),
    (401, b"", ChainError),
])
def test_answers_that_are_not_results(node: Node, status: int, body: bytes,
                                      error: type[Exception]) -> None:
    node.script = lambda _req: (status, body, False)
    with pytest.raises(error):
        HttpJsonRpc(f"http://127.0.0.1:{node.port}").call("eth_blockNumber", [])


def test_an_answer_to_another_request_is_refused(node: Node) -> None:
    node.script = lambda req: (200, _ok({"id": req["id"] + 1}, "0x1"), False)
    with pytest.raises(ChainError, match="answer id"):
        HttpJsonRpc(f"http://127.0.0.1:{node.port}").call("eth_blockNumber", [])


def test_an_oversized_answer_is_refused_and_its_connection_dropped(node: Node) -> None:
    big = json.dumps({"jsonrpc": "2.0", "id": 1, "result": "x" * MAX_RESPONSE}).encode()
    node.script = lambda _req: (200, big, False)
    rpc = HttpJsonRpc(f"http://127.0.0.1:{node.port}")
    with pytest.raises(ChainError, match="too large"):
        rpc.call("eth_getLogs", [])
    node.script = lambda req: (200, _ok(req, "0x2"), False)
    assert rpc.call("eth_blockNumber", []) == "0x2"
    assert node.connections == 2


@pytest.mark.parametrize("close", [True, "silent"])
def test_a_connection_the_node_closed_is_replaced_once(node: Node, close: bool | str) -> None:
    """Said (``Connection: close``) or not (an idle timeout on the node's side): the
    next call goes out on a new connection and is answered."""
    rpc = HttpJsonRpc(f"http://127.0.0.1:{node.port}")
    node.script = lambda req: (200, _ok(req, "0x1"), close)  # answers, then hangs up
    assert rpc.call("eth_blockNumber", []) == "0x1"
    node.script = lambda req: (200, _ok(req, "0x2"), False)
    assert rpc.call("eth_blockNumber", []) == "0x2"
    assert node.connections == 2
    assert [r["method"] for r, _h in node.requests] == ["eth_blockNumber"] * 2


def test_a_node_that_is_gone_is_unavailable() -> None:
    n = Node()
    port = n.port
    n.server.shutdown()
    n.server.server_close()
    with pytest.raises(NodeUnavailable):
        HttpJsonRpc(f"http://127.0.0.1:{port}", timeout=2).call("eth_blockNumber", [])


def test_credentials_in_the_url_are_basic_auth(node: Node) -> None:
    HttpJsonRpc(f"http://us%40er:p%3Ass@127.0.0.1:{node.port}/rpc?x=1").call("m", [])
    headers = node.requests[0][1]
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"us@er:p:ss").decode()


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:1", "127.0.0.1:8545", "http://"])
def test_only_http_urls(url: str) -> None:
    with pytest.raises(ChainError):
        HttpJsonRpc(url)
