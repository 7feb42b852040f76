"""The HSM's decoder for EIP-712 typed-data sign requests: ``ETHEREUM_EIP712:eip155:<id>``.

The payload is the typed data as JSON - ``{"types", "primaryType", "domain",
"message"}``, the shape ``eth_signTypedData_v4`` takes. The HSM signs
``keccak256(0x19 0x01 || domainSeparator || hashStruct(message))`` (EIP-712), computed
with eth-account's ``encode_typed_data``.

The domain must carry this decoder's ``chainId``: a signature for another chain - or
for none - is refused, as a transaction for another chain is.

**Grants.** A typed-data signature can be an allowance: whoever holds it can move the
signer's tokens. These are recognised by the primary type's EIP-712 ``encodeType`` -
the string its typehash is computed from, so exactly what a verifying contract checks -
and decoded as ``IntentKind.GRANT`` (value-complete, ``ARCHITECTURE.md``); fee 0, no fee
asset (the signer pays nothing to sign; whoever submits the permit pays the gas):

=====================================  ==================================================
typed data (``encodeType``)            grants
=====================================  ==================================================
EIP-2612 ``Permit(address owner,       ``Grant("ERC20:0x<verifyingContract>", value,
address spender,uint256 value,uint256  spender)``; ``owner`` must be the signing key,
nonce,uint256 deadline)``              the domain must name ``verifyingContract``
DAI ``Permit(address holder,address    ``Grant("ERC20:0x<verifyingContract>", 2^256-1 if
spender,uint256 nonce,uint256 expiry,  allowed else 0, spender)``; ``holder`` must be the
bool allowed)``                        signing key, the domain must name the contract
Permit2 ``PermitSingle`` /             one grant per ``PermitDetails``: ``Grant("ERC20:
``PermitBatch`` (AllowanceTransfer)    0x<token>", amount, spender)``, 2^256-1 for
                                       ``amount = 2^160-1`` (Permit2's "unlimited")
Permit2 ``PermitTransferFrom`` /       one grant per ``TokenPermissions``: ``Grant(
``PermitBatchTransferFrom``            "ERC20:0x<token>", amount, spender)``
(SignatureTransfer)
=====================================  ==================================================

Permit2 types count only with the canonical Permit2 domain (``name`` "Permit2",
``chainId``, ``verifyingContract`` the canonical Permit2 deployment): anywhere else their
meaning is unknown and they stay opaque. A permit whose owner is not this key, or whose
token the domain does not name, is refused. The values are parsed here strictly and
hashed by this module's own EIP-712 encoder; the result must equal eth-account's
``hashStruct`` and domain separator, so what the intent says is what is signed.

Everything else - and witness transfers (``PermitWitnessTransferFrom``, whose witness
type is the caller's) - is an opaque ``MESSAGE``, never released by amount tiers; its
``calls`` name the domain's ``verifyingContract`` (or ``"(no verifying contract)"``) so
allowlists apply to it.

EIP-712: https://eips.ethereum.org/EIPS/eip-712
EIP-2612: https://eips.ethereum.org/EIPS/eip-2612
Permit2: https://github.com/Uniswap/permit2 (``src/libraries/PermitHash.sol``)
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Final

from eth_account.messages import encode_typed_data

from chains.errors import ChainDecodeError, InvalidAddress, refused
from hsm_emulator.decoding import (
    Grant,
    Intent,
    IntentKind,
    KeyAlgorithm,
    KeyView,
    SignItem,
    SignScheme,
    canonical_json,
)

from .decoder import network_of
from .encoding import address_bytes, address_of_public_key, checksum, keccak256

_FIELDS = frozenset({"types", "primaryType", "domain", "message"})
#: A message longer than this (canonical JSON) is shown by its keccak256 only.
MAX_SHOWN_MESSAGE = 4096
#: An allowance without limit: what DAI's ``allowed`` and Permit2's 2^160-1 grant.
UNLIMITED: Final = 2**256 - 1
UINT160_MAX: Final = 2**160 - 1
#: Permit2's canonical deployment (the same address on every chain).
PERMIT2_ADDRESS: Final = bytes.fromhex("000000000022d473030f116ddee9f6b43ac78ba3")
#: What ``calls`` says for typed data whose domain names no verifying contract.
NO_VERIFYING_CONTRACT: Final = "(no verifying contract)"

# The encodeType strings the decoder reads as grants (EIP-2612, DAI, Permit2).
EIP2612_PERMIT: Final = ("Permit(address owner,address spender,uint256 value,uint256 nonce,"
                         "uint256 deadline)")
DAI_PERMIT: Final = ("Permit(address holder,address spender,uint256 nonce,uint256 expiry,"
                     "bool allowed)")
_PERMIT_DETAILS: Final = ("PermitDetails(address token,uint160 amount,uint48 expiration,"
                          "uint48 nonce)")
_TOKEN_PERMISSIONS: Final = "TokenPermissions(address token,uint256 amount)"  # noqa: S105
PERMIT2_SINGLE: Final = ("PermitSingle(PermitDetails details,address spender,"
                         "uint256 sigDeadline)" + _PERMIT_DETAILS)
PERMIT2_BATCH: Final = ("PermitBatch(PermitDetails[] details,address spender,"
                        "uint256 sigDeadline)" + _PERMIT_DETAILS)
PERMIT2_TRANSFER_FROM: Final = ("PermitTransferFrom(TokenPermissions permitted,"
                                "address spender,uint256 nonce,uint256 deadline)"
                                + _TOKEN_PERMISSIONS)
PERMIT2_BATCH_TRANSFER_FROM: Final = ("PermitBatchTransferFrom(TokenPermissions[] permitted,"
                                      "address spender,uint256 nonce,uint256 deadline)"
                                      + _TOKEN_PERMISSIONS)
#: EIP-712's domain fields, in the order the separator encodes the present ones.
DOMAIN_FIELDS: Final = (("name", "string"), ("version", "string"), ("chainId", "uint256"),
                        ("verifyingContract", "address"), ("salt", "bytes32"))

_Defs = dict[str, tuple[tuple[str, str], ...]]
_STRUCT = re.compile(r"([A-Za-z_$][A-Za-z0-9_$]*)\(([^()]*)\)")
_DIGITS = re.compile(r"[0-9]{1,78}")
_HEX = re.compile(r"0x[0-9a-fA-F]{1,64}")
_BYTES32 = re.compile(r"0x[0-9a-fA-F]{64}")


def _definitions(encoded: str) -> _Defs:
    """``{"Permit": (("owner", "address"), ...)}`` from an ``encodeType`` string."""
    defs: _Defs = {}
    for name, body in _STRUCT.findall(encoded):
        defs[name] = tuple((f.split(" ")[1], f.split(" ")[0]) for f in body.split(","))
    return defs


def typed_data_digest(doc: dict[str, Any]) -> tuple[bytes, bytes, bytes]:
    """``(domainSeparator, hashStruct(message), digest)`` of EIP-712 typed data."""
    signable = encode_typed_data(full_message=doc)
    if signable.version != b"\x01":
        raise ChainDecodeError("not EIP-712 structured data")
    header, body = bytes(signable.header), bytes(signable.body)
    return header, body, keccak256(b"\x19\x01" + header + body)


def encode_type(primary: str, types: Any) -> str:
    """EIP-712 ``encodeType`` of ``primary`` over the payload's ``types`` (its typehash is
    keccak256 of this): the type, then the types it references, sorted by name."""
    if not isinstance(types, dict):
        raise ChainDecodeError("EIP-712 types must be an object")
    deps: set[str] = set()
    todo = [primary]
    while todo:
        name = todo.pop()
        if name in deps:
            continue
        deps.add(name)
        for _, type_ in _fields(types, name):
            core = type_.split("[", 1)[0]
            if core in types and core != "EIP712Domain":
                todo.append(core)
    out = []
    for name in [primary, *sorted(deps - {primary})]:
        members = ",".join(f"{t} {n}" for n, t in _fields(types, name))
        out.append(f"{name}({members})")
    return "".join(out)


def _fields(types: dict[str, Any], name: str) -> tuple[tuple[str, str], ...]:
    fields = types.get(name)
    if not isinstance(fields, list):
        raise ChainDecodeError(f"EIP-712 type {name!r} is not defined")
    out = []
    for f in fields:
        if not (isinstance(f, dict) and isinstance(f.get("name"), str)
                and isinstance(f.get("type"), str)):
            raise ChainDecodeError(f"EIP-712 type {name!r}: fields are {{name, type}} strings")
        out.append((f["name"], f["type"]))
    return tuple(out)


# -- this module's own EIP-712 encoder, for the few types it reads ----------------------


def _uint(value: Any, bits: int, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, str) and _DIGITS.fullmatch(value):
        n = int(value, 10)
    elif isinstance(value, str) and _HEX.fullmatch(value):
        n = int(value[2:], 16)
    else:
        raise ChainDecodeError(f"{where}: not a uint{bits}")
    if not 0 <= n < 2**bits:
        raise ChainDecodeError(f"{where}: out of range for uint{bits}")
    return n


def _address(value: Any, where: str) -> bytes:
    try:
        return address_bytes(value)
    except InvalidAddress as exc:
        raise ChainDecodeError(f"{where}: {exc.reason}") from None


def _atom(type_: str, value: Any, where: str) -> tuple[bytes, Any]:
    """The 32-byte encoding of an atomic value, and the value as read."""
    if type_ == "address":
        raw = _address(value, where)
        return raw.rjust(32, b"\x00"), raw
    if type_ == "bool":
        if not isinstance(value, bool):
            raise ChainDecodeError(f"{where}: must be true or false")
        return int(value).to_bytes(32, "big"), value
    if type_.startswith("uint") and type_[4:].isdigit():
        n = _uint(value, int(type_[4:]), where)
        return n.to_bytes(32, "big"), n
    if type_ == "string":
        if not isinstance(value, str):
            raise ChainDecodeError(f"{where}: must be a string")
        return keccak256(value.encode("utf-8")), value
    if type_ == "bytes32":
        if not (isinstance(value, str) and _BYTES32.fullmatch(value)):
            raise ChainDecodeError(f"{where}: must be 0x and 64 hex digits")
        raw = bytes.fromhex(value[2:])
        return raw, raw
    raise ChainDecodeError(f"{where}: type {type_} is not read by this decoder")


def _encode(defs: _Defs, type_: str, value: Any, where: str) -> tuple[bytes, Any]:
    if type_.endswith("[]"):
        if not isinstance(value, list):
            raise ChainDecodeError(f"{where}: must be a list")
        parts = [_encode(defs, type_[:-2], v, f"{where}[{i}]") for i, v in enumerate(value)]
        return keccak256(b"".join(w for w, _ in parts)), [v for _, v in parts]
    if type_ in defs:
        return _hash_struct(defs, type_, value, where)
    return _atom(type_, value, where)


def _type_string(defs: _Defs, primary: str) -> str:
    return encode_type(primary, {name: [{"name": n, "type": t} for n, t in fields]
                                 for name, fields in defs.items()})


def _hash_struct(defs: _Defs, name: str, value: Any, where: str) -> tuple[bytes, dict[str, Any]]:
    fields = defs[name]
    if not isinstance(value, dict) or set(value) != {n for n, _ in fields}:
        raise ChainDecodeError(f"{where}: must have exactly the fields "
                               f"{[n for n, _ in fields]}")
    words = [keccak256(_type_string(defs, name).encode())]
    read: dict[str, Any] = {}
    for field, type_ in fields:
        word, read[field] = _encode(defs, type_, value[field], f"{where}.{field}")
        words.append(word)
    return keccak256(b"".join(words)), read


def domain_separator(domain: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """The EIP-712 domain separator over the domain's fields, and the fields as read."""
    unknown = set(domain) - {n for n, _ in DOMAIN_FIELDS}
    if unknown:
        raise ChainDecodeError(f"EIP-712 domain: unknown field(s) {sorted(unknown)}")
    defs = {"EIP712Domain": tuple((n, t) for n, t in DOMAIN_FIELDS if n in domain)}
    return _hash_struct(defs, "EIP712Domain", domain, "domain")


# -- grants ------------------------------------------------------------------------------


def _asset(token: bytes) -> str:
    return "ERC20:0x" + token.hex()


def _token_of_domain(domain: dict[str, Any]) -> bytes:
    token = domain.get("verifyingContract")
    if not isinstance(token, bytes):
        raise ChainDecodeError("a permit's domain must name its token as verifyingContract; "
                               "without it the signature is valid wherever the rest matches")
    return token


def _owner_is(owner: bytes, signer: bytes, field: str) -> None:
    if owner != signer:
        raise ChainDecodeError(f"permit {field} {checksum(owner)} is not this key's address "
                               f"{checksum(signer)}: refused")


def _eip2612(m: dict[str, Any], domain: dict[str, Any], signer: bytes) -> tuple[Grant, ...]:
    _owner_is(m["owner"], signer, "owner")
    return (Grant(_asset(_token_of_domain(domain)), m["value"], checksum(m["spender"])),)


def _dai(m: dict[str, Any], domain: dict[str, Any], signer: bytes) -> tuple[Grant, ...]:
    _owner_is(m["holder"], signer, "holder")
    amount = UNLIMITED if m["allowed"] else 0
    return (Grant(_asset(_token_of_domain(domain)), amount, checksum(m["spender"])),)


def _allowance(details: list[dict[str, Any]], spender: bytes) -> tuple[Grant, ...]:
    return tuple(Grant(_asset(d["token"]), UNLIMITED if d["amount"] == UINT160_MAX
                       else d["amount"], checksum(spender)) for d in details)


def _permit2_single(m: dict[str, Any], domain: dict[str, Any],
                    signer: bytes) -> tuple[Grant, ...]:
    return _allowance([m["details"]], m["spender"])


def _permit2_batch(m: dict[str, Any], domain: dict[str, Any],
                   signer: bytes) -> tuple[Grant, ...]:
    return _allowance(m["details"], m["spender"])


def _permit2_transfer(m: dict[str, Any], domain: dict[str, Any],
                      signer: bytes) -> tuple[Grant, ...]:
    p = m["permitted"]
    return (Grant(_asset(p["token"]), p["amount"], checksum(m["spender"])),)


def _permit2_batch_transfer(m: dict[str, Any], domain: dict[str, Any],
                            signer: bytes) -> tuple[Grant, ...]:
    return tuple(Grant(_asset(p["token"]), p["amount"], checksum(m["spender"]))
                 for p in m["permitted"])


_Reader = Callable[[dict[str, Any], dict[str, Any], bytes], tuple[Grant, ...]]
#: encodeType -> (what it is, whether only Permit2's own domain gives it meaning, reader)
GRANT_TYPES: Final[dict[str, tuple[str, bool, _Reader]]] = {
    EIP2612_PERMIT: ("EIP-2612 permit", False, _eip2612),
    DAI_PERMIT: ("DAI permit", False, _dai),
    PERMIT2_SINGLE: ("Permit2 allowance", True, _permit2_single),
    PERMIT2_BATCH: ("Permit2 allowance (batch)", True, _permit2_batch),
    PERMIT2_TRANSFER_FROM: ("Permit2 signature transfer", True, _permit2_transfer),
    PERMIT2_BATCH_TRANSFER_FROM: ("Permit2 signature transfer (batch)", True,
                                  _permit2_batch_transfer),
}
_DEFS: Final = {encoded: _definitions(encoded) for encoded in GRANT_TYPES}


def _is_permit2_domain(domain: dict[str, Any]) -> bool:
    return (set(domain) == {"name", "chainId", "verifyingContract"}
            and domain["name"] == "Permit2" and domain["verifyingContract"] == PERMIT2_ADDRESS)


class Eip712Decoder:
    """Decodes typed data for one chain id into a GRANT or MESSAGE intent and its digest."""

    def __init__(self, chain_id: int) -> None:
        if isinstance(chain_id, bool) or not isinstance(chain_id, int) or chain_id <= 0:
            raise ValueError("chain id must be a positive integer")
        self.chain_id = chain_id
        self.network = network_of(chain_id)
        self.payload_type = f"ETHEREUM_EIP712:{self.network}"

    def prepare(self, payload: bytes, owner: KeyView) -> tuple[Intent, tuple[SignItem, ...]]:
        """The intent and the digest to sign. Refusals are :class:`DecodeError` only."""
        try:
            return self._prepare(payload, owner)
        except ChainDecodeError as exc:
            raise refused(self.payload_type, exc) from None

    def _prepare(self, payload: bytes, owner: KeyView) -> tuple[Intent, tuple[SignItem, ...]]:
        if owner.algorithm is not KeyAlgorithm.SECP256K1:
            raise ChainDecodeError("EIP-712 data is signed by secp256k1 keys")
        doc = self._parse(payload)
        try:
            separator, struct_hash, digest = typed_data_digest(doc)
        except ChainDecodeError:
            raise
        except Exception as exc:  # eth-account raises many types for bad typed data
            raise ChainDecodeError(f"typed data does not encode: {exc}") from None
        signer = address_of_public_key(owner.public_key(""))
        details = self._details(doc, separator, struct_hash)
        details["signer"] = signer
        own_separator, domain = domain_separator(doc["domain"])
        if own_separator != separator:
            raise ChainDecodeError("the EIP-712 domain does not encode unambiguously")
        kind, grants, calls = self._meaning(doc, domain, struct_hash, address_bytes(signer),
                                            details)
        intent = Intent(chain="ethereum", network=self.network, kind=kind, transfers=(),
                        details=tuple(sorted(details.items())), grants=grants, calls=calls)
        return intent, (SignItem(SignScheme.ECDSA_SECP256K1_DIGEST, digest),)

    def decode(self, payload: bytes, owner: KeyView) -> Intent:
        return self.prepare(payload, owner)[0]

    def sign_items(self, payload: bytes, owner: KeyView) -> tuple[SignItem, ...]:
        return self.prepare(payload, owner)[1]

    @staticmethod
    def _meaning(doc: dict[str, Any], domain: dict[str, Any], struct_hash: bytes,
                 signer: bytes, details: dict[str, str],
                 ) -> tuple[IntentKind, tuple[Grant, ...], tuple[str, ...]]:
        """GRANT with its grants for a recognised allowance, else an opaque MESSAGE."""
        primary = doc["primaryType"]
        if not isinstance(primary, str):
            raise ChainDecodeError("EIP-712 primaryType must be a string")
        encoded = encode_type(primary, {k: v for k, v in doc["types"].items()
                                        if k != "EIP712Domain"})
        known = GRANT_TYPES.get(encoded)
        if known is None or (known[1] and not _is_permit2_domain(domain)):
            contract = domain.get("verifyingContract")
            return IntentKind.MESSAGE, (), (
                checksum(contract) if isinstance(contract, bytes) else NO_VERIFYING_CONTRACT,)
        what, _, reader = known
        own_hash, message = _hash_struct(_DEFS[encoded], primary, doc["message"], "message")
        if own_hash != struct_hash:
            raise ChainDecodeError(f"the {what} does not encode unambiguously")
        details["grantType"] = what
        return IntentKind.GRANT, reader(message, domain, signer), ()

    def _parse(self, payload: bytes) -> dict[str, Any]:
        try:
            doc = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise ChainDecodeError("EIP-712 payload is not UTF-8 JSON") from None
        if not isinstance(doc, dict) or set(doc) != _FIELDS:
            raise ChainDecodeError(f"EIP-712 payload must have exactly {sorted(_FIELDS)}")
        domain = doc["domain"]
        if not isinstance(domain, dict) or not isinstance(doc["types"], dict):
            raise ChainDecodeError("EIP-712 domain and types must be objects")
        chain_id = domain.get("chainId")
        if isinstance(chain_id, bool) or chain_id != self.chain_id:
            raise ChainDecodeError(f"EIP-712 domain chainId {chain_id!r} is not "
                                   f"{self.chain_id}")
        return doc

    @staticmethod
    def _details(doc: dict[str, Any], separator: bytes, struct_hash: bytes) -> dict[str, str]:
        shown = canonical_json(doc["message"]).decode()
        out = {"primaryType": str(doc["primaryType"]),
               "domain": canonical_json(doc["domain"]).decode(),
               "domainSeparator": "0x" + separator.hex(),
               "messageHash": "0x" + struct_hash.hex()}
        if len(shown) <= MAX_SHOWN_MESSAGE:
            out["message"] = shown
        else:
            out["messageKeccak256"] = "0x" + keccak256(shown.encode()).hex()
        return out
