"""The HSM's decoder for EIP-712 typed-data sign requests: ``ETHEREUM_EIP712:eip155:<id>``.

The payload is the typed data as JSON - ``{"types", "primaryType", "domain",
"message"}``, the shape ``eth_signTypedData_v4`` takes. The HSM signs
``keccak256(0x19 0x01 || domainSeparator || hashStruct(message))`` (EIP-712), computed
with eth-account's ``encode_typed_data``; the intent is a ``MESSAGE`` (never released by
amount tiers) whose details show the domain, the primary type and the message.

The domain must carry this decoder's ``chainId``: a signature for another chain - or
for none - is refused, as a transaction for another chain is.

EIP-712: https://eips.ethereum.org/EIPS/eip-712
"""

from __future__ import annotations

import json
from typing import Any

from eth_account.messages import encode_typed_data

from chains.errors import ChainDecodeError
from hsm_emulator.model import (
    Intent,
    IntentKind,
    KeyAlgorithm,
    KeyView,
    SignItem,
    SignScheme,
    canonical_json,
)

from .decoder import network_of
from .encoding import address_of_public_key, keccak256

_FIELDS = frozenset({"types", "primaryType", "domain", "message"})
#: A message longer than this (canonical JSON) is shown by its keccak256 only.
MAX_SHOWN_MESSAGE = 4096


def typed_data_digest(doc: dict[str, Any]) -> tuple[bytes, bytes, bytes]:
    """``(domainSeparator, hashStruct(message), digest)`` of EIP-712 typed data."""
    signable = encode_typed_data(full_message=doc)
    if signable.version != b"\x01":
        raise ChainDecodeError("not EIP-712 structured data")
    header, body = bytes(signable.header), bytes(signable.body)
    return header, body, keccak256(b"\x19\x01" + header + body)


class Eip712Decoder:
    """Decodes typed data for one chain id into a MESSAGE intent and its digest."""

    def __init__(self, chain_id: int) -> None:
        if isinstance(chain_id, bool) or not isinstance(chain_id, int) or chain_id <= 0:
            raise ValueError("chain id must be a positive integer")
        self.chain_id = chain_id
        self.network = network_of(chain_id)
        self.payload_type = f"ETHEREUM_EIP712:{self.network}"

    def prepare(self, payload: bytes, owner: KeyView) -> tuple[Intent, tuple[SignItem, ...]]:
        if owner.algorithm is not KeyAlgorithm.SECP256K1:
            raise ChainDecodeError("EIP-712 data is signed by secp256k1 keys")
        doc = self._parse(payload)
        try:
            separator, struct_hash, digest = typed_data_digest(doc)
        except ChainDecodeError:
            raise
        except Exception as exc:  # eth-account raises many types for bad typed data
            raise ChainDecodeError(f"typed data does not encode: {exc}") from None
        details = self._details(doc, separator, struct_hash)
        details["signer"] = address_of_public_key(owner.public_key(""))
        intent = Intent(chain="ethereum", network=self.network, kind=IntentKind.MESSAGE,
                        transfers=(), details=tuple(sorted(details.items())))
        return intent, (SignItem(SignScheme.ECDSA_SECP256K1_DIGEST, digest),)

    def decode(self, payload: bytes, owner: KeyView) -> Intent:
        return self.prepare(payload, owner)[0]

    def sign_items(self, payload: bytes, owner: KeyView) -> tuple[SignItem, ...]:
        return self.prepare(payload, owner)[1]

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
