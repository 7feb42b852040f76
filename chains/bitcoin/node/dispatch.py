"""Method registry and argument checking with Core's messages (src/rpc/util.cpp).

Positional and named parameters both work, as in bitcoind. A wrong type is
RPC_TYPE_ERROR (-3) "JSON value of type X is not of expected type Y"; a wrong
number of arguments is RPC_MISC_ERROR (-1) with the usage line, as Core's help does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from chains.bitcoin.node.jsonrpc import (
    RPC_INVALID_PARAMETER,
    RPC_METHOD_NOT_FOUND,
    RPC_MISC_ERROR,
    RPC_TYPE_ERROR,
    RpcError,
)
from chains.bitcoin.node.node import RegtestNode

_MISSING = object()
_JSON_TYPES = (
    (type(None), "null"),
    (bool, "bool"),
    (dict, "object"),
    (list, "array"),
    (int, "number"),
    (float, "number"),
    (Decimal, "number"),
    (str, "string"),
)


def json_type(value: Any) -> str:
    for py_type, name in _JSON_TYPES:
        if isinstance(value, py_type):
            return name
    return "unknown"


@dataclass
class Params:
    method: str
    names: tuple[str, ...]
    values: list[Any]

    def usage(self) -> str:
        return f"{self.method} " + " ".join(f'"{n}"' for n in self.names)

    def get(self, index: int, expected: str, default: Any = _MISSING) -> Any:
        """Argument ``index`` of JSON type ``expected`` ("number", "string", ... or "any")."""
        value = self.values[index] if index < len(self.values) else None
        if value is None:
            if default is _MISSING:
                raise RpcError(RPC_MISC_ERROR, self.usage())
            return default
        got = json_type(value)
        if expected not in ("any", got):
            raise RpcError(
                RPC_TYPE_ERROR, f"JSON value of type {got} is not of expected type {expected}"
            )
        return value

    def get_int(self, index: int, default: Any = _MISSING) -> Any:
        value = self.get(index, "number", default)
        if isinstance(value, bool) or (value is not default and value != int(value)):
            raise RpcError(RPC_TYPE_ERROR, "JSON integer out of range")
        return value if value is default else int(value)


Handler = Callable[[RegtestNode, Params], Any]
METHODS: dict[str, tuple[tuple[str, ...], Handler]] = {}


def rpc(name: str, *arg_names: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        METHODS[name] = (arg_names, fn)
        return fn

    return register


def call(node: RegtestNode, method: Any, params: Any) -> Any:
    if not isinstance(method, str) or method not in METHODS:
        raise RpcError(RPC_METHOD_NOT_FOUND, "Method not found")
    names, handler = METHODS[method]
    if params is None:
        values: list[Any] = []
    elif isinstance(params, list):
        values = params
    elif isinstance(params, dict):
        unknown = [k for k in params if k not in names]
        if unknown:
            raise RpcError(RPC_INVALID_PARAMETER, f"Unknown named parameter {unknown[0]}")
        values = [params.get(n) for n in names]
    else:
        raise RpcError(-32600, "Params must be an array or object")
    if len(values) > len(names):
        raise RpcError(RPC_MISC_ERROR, Params(method, names, []).usage())
    return handler(node, Params(method, names, values))


def parse_hash(value: str, name: str) -> bytes:
    """A 64-hex-digit id in display order, as Core's ParseHashV checks it."""
    if len(value) != 64:
        raise RpcError(
            RPC_INVALID_PARAMETER, f"{name} must be of length 64 (not {len(value)}, for '{value}')"
        )
    try:
        return bytes.fromhex(value)[::-1]
    except ValueError:
        raise RpcError(
            RPC_INVALID_PARAMETER, f"{name} must be hexadecimal string (not '{value}')"
        ) from None


def parse_btc(value: Any) -> int:
    """Core's AmountFromValue: a number or numeric string in BTC, to satoshis."""
    if json_type(value) not in ("number", "string"):
        raise RpcError(RPC_TYPE_ERROR, "Amount is not a number or string")
    try:
        sats = Decimal(str(value)) * 100_000_000
    except InvalidOperation:
        raise RpcError(RPC_TYPE_ERROR, "Invalid amount") from None
    if sats != sats.to_integral_value() or not 0 <= sats <= 21_000_000 * 100_000_000:
        raise RpcError(
            RPC_TYPE_ERROR, "Amount out of range" if sats == int(sats) else "Invalid amount"
        )
    return int(sats)
