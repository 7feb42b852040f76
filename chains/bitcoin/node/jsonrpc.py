"""JSON-RPC plumbing shared by the node's server: Core's error codes and exact amounts.

Error codes are Bitcoin Core's (src/rpc/protocol.h). Amounts are written the way
Core's ValueFromAmount does - a JSON number with exactly eight decimals - so a
client parsing with ``Decimal`` gets satoshi-exact values, never a binary float.
"""

from __future__ import annotations

import json
from typing import Any

RPC_MISC_ERROR = -1
RPC_TYPE_ERROR = -3
RPC_INVALID_ADDRESS_OR_KEY = -5
RPC_INVALID_PARAMETER = -8
RPC_DESERIALIZATION_ERROR = -22
RPC_VERIFY_ERROR = -25
RPC_VERIFY_REJECTED = -26
RPC_VERIFY_ALREADY_IN_UTXO_SET = -27
RPC_INVALID_REQUEST = -32600
RPC_METHOD_NOT_FOUND = -32601
RPC_INVALID_PARAMS = -32602
RPC_INTERNAL_ERROR = -32603
RPC_PARSE_ERROR = -32700


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


class Amount(int):
    """Satoshis that serialize as BTC with eight decimals."""

    def btc(self) -> str:
        sign = "-" if self < 0 else ""
        whole, frac = divmod(abs(int(self)), 100_000_000)
        return f"{sign}{whole}.{frac:08d}"


def dumps(value: Any) -> str:
    """json.dumps, except that :class:`Amount` is written as an exact decimal number."""
    if isinstance(value, Amount):
        return value.btc()
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{dumps(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    return json.dumps(value)
