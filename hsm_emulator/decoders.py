"""The payload decoder registry, and a test decoder until the chain decoders exist.

The HSM evaluates amount, destination and velocity conditions on what *it* decodes
from the payload it will sign - never on a number the caller claims. Chain decoders
(``chains/``) register themselves here; ``UNSPECIFIED`` payloads have no intent.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from typing import Any, ClassVar

from .errors import DecodeError, InvalidInput
from .model import (
    Intent,
    IntentKind,
    KeyView,
    PayloadDecoder,
    SignItem,
    SignScheme,
    Transfer,
)

UNSPECIFIED = "UNSPECIFIED"
_DIGEST = SignScheme.ECDSA_SECP256K1_DIGEST  #: looked up once (Enum class attributes are slow)
MAX_PAYLOAD = 1024 * 1024
#: the decoder ``json.loads`` uses, called directly to skip its per-call argument checks
_JSON = json.JSONDecoder()


class DecoderRegistry:
    def __init__(self, decoders: Iterable[PayloadDecoder] = ()) -> None:
        self._decoders: dict[str, PayloadDecoder] = {}
        for d in decoders:
            self.register(d)

    def register(self, decoder: PayloadDecoder) -> None:
        if decoder.payload_type == UNSPECIFIED:
            raise InvalidInput("UNSPECIFIED payloads cannot have a decoder")
        self._decoders[decoder.payload_type] = decoder

    def types(self) -> list[str]:
        return sorted(self._decoders)

    def get(self, payload_type: str) -> PayloadDecoder | None:
        if payload_type == UNSPECIFIED:
            return None
        decoder = self._decoders.get(payload_type)
        if decoder is None:
            raise DecodeError(f"no decoder for payload type {payload_type!r}; known: "
                              f"{[UNSPECIFIED, *self.types()]}")
        return decoder

    def decode(self, payload_type: str, payload: bytes, owner: KeyView) -> Intent | None:
        """The intent of ``payload``, or None for UNSPECIFIED. Never a partial intent."""
        return self.prepare(payload_type, payload, owner)[0]

    def prepare(self, payload_type: str, payload: bytes, owner: KeyView,
                ) -> tuple[Intent | None, tuple[SignItem, ...]]:
        """The intent and the items to sign, from one parse where the decoder allows it."""
        if len(payload) > MAX_PAYLOAD:
            raise DecodeError(f"payload larger than {MAX_PAYLOAD} bytes")
        decoder = self.get(payload_type)
        if decoder is None:
            return None, ()
        try:
            prepare = getattr(decoder, "prepare", None)
            if prepare is not None:
                intent, items = prepare(payload, owner)
            else:
                intent = decoder.decode(payload, owner)
                items = decoder.sign_items(payload, owner)
        except DecodeError:  # a decoder's refusal, in the one error of the interface
            raise
        except Exception as exc:  # a decoder *bug*: fail closed, it must never sign
            raise DecodeError(f"{payload_type} payload could not be decoded: {exc}") from None
        if not items:
            raise DecodeError(f"{payload_type}: nothing to sign")
        return intent, tuple(items)


class JsonTransferDecoder:
    """``TEST_TRANSFER``: a JSON transfer for tests and demos before real chains.

    ``{"asset": "TST", "amount": "123", "destination": "addr", "fee": "1", "nonce": 0}``;
    unknown fields, missing fields and non-canonical amounts are refused. Signing uses
    secp256k1 ECDSA over SHA-256 of the payload, or Ed25519 over the payload.
    """

    payload_type = "TEST_TRANSFER"
    FIELDS = frozenset({"asset", "amount", "destination", "fee", "nonce", "kind"})
    REQUIRED = frozenset({"asset", "amount", "destination"})
    #: ``kind`` values accepted (absent means a transfer)
    KINDS: ClassVar[dict[str, IntentKind]] = {
        "transfer": IntentKind.TRANSFER, "contract_call": IntentKind.CONTRACT_CALL}

    def __init__(self, scheme: SignScheme = SignScheme.ECDSA_SECP256K1_DIGEST) -> None:
        self.scheme = scheme

    def _parse(self, payload: bytes) -> dict[str, Any]:
        try:
            doc = _JSON.decode(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise DecodeError("TEST_TRANSFER payload is not JSON") from None
        if not isinstance(doc, dict):
            raise DecodeError("TEST_TRANSFER payload must be an object")
        fields = doc.keys()
        if not (fields <= self.FIELDS and fields >= self.REQUIRED):
            raise DecodeError(f"TEST_TRANSFER fields: unknown {sorted(fields - self.FIELDS)}, "
                              f"missing {sorted(self.REQUIRED - fields)}")
        return doc

    def decode(self, payload: bytes, owner: KeyView) -> Intent:
        return self._intent(self._parse(payload))

    def prepare(self, payload: bytes, owner: KeyView) -> tuple[Intent, tuple[SignItem, ...]]:
        doc = self._parse(payload)
        return self._intent(doc), self._items(payload)

    def _intent(self, doc: dict[str, Any]) -> Intent:
        asset, dest = doc["asset"], doc["destination"]
        if not isinstance(asset, str) or not isinstance(dest, str) or not asset or not dest:
            raise DecodeError("TEST_TRANSFER asset and destination must be non-empty strings")
        kind_name = doc.get("kind", "transfer")
        kind = self.KINDS.get(kind_name) if isinstance(kind_name, str) else None
        if kind is None:
            raise DecodeError("TEST_TRANSFER kind must be transfer or contract_call")
        transfer = Transfer(asset, _units(doc["amount"]), dest)
        # chain, network, kind, transfers, fee, fee_asset (positional: built per payload)
        return Intent("test", "test", kind, (transfer,), _units(doc.get("fee", "0")), asset)

    def sign_items(self, payload: bytes, owner: KeyView) -> tuple[SignItem, ...]:
        self._parse(payload)
        return self._items(payload)

    def _items(self, payload: bytes) -> tuple[SignItem, ...]:
        if self.scheme is _DIGEST:
            return (SignItem(self.scheme, hashlib.sha256(payload).digest()),)
        return (SignItem(self.scheme, payload),)


#: amounts must fit 256 bits (a name, so it is not recomputed on every call)
UNITS_LIMIT = 2**256


def _units(value: Any) -> int:
    if isinstance(value, str):  # the usual form: a decimal string
        if not (value.isdigit() and len(value) <= 78):
            raise DecodeError("amounts must be whole numbers of base units")
        n = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        raise DecodeError("amounts must be whole numbers of base units")
    if n < 0 or n >= UNITS_LIMIT:
        raise DecodeError("amount out of range")
    return n


def transfer_payload(asset: str, amount: int, destination: str, fee: int = 0,
                  nonce: int = 0) -> bytes:
    """Build a TEST_TRANSFER payload (for tests, demos and benchmarks)."""
    return json.dumps({"asset": asset, "amount": str(amount), "destination": destination,
                       "fee": str(fee), "nonce": nonce}, sort_keys=True).encode()


#: Set to ``1`` to register the test decoder where a registry is built by default (tests,
#: demos of the HSM alone). Never in production: ``TEST_TRANSFER`` signs SHA-256 of JSON.
TEST_DECODER_ENV = "CUSTODY_TEST_DECODER"


def test_decoder_enabled() -> bool:
    return os.environ.get(TEST_DECODER_ENV, "") == "1"


def test_registry() -> DecoderRegistry:
    """A registry with only the ``TEST_TRANSFER`` decoder: for tests and benchmarks."""
    return DecoderRegistry([JsonTransferDecoder()])


def default_registry() -> DecoderRegistry:
    """What :meth:`Hsm.open` uses when given no decoders: no chain decoders (those are
    wired in by the entry points, see ``chains.registry``), and the test decoder only
    where ``CUSTODY_TEST_DECODER=1`` asks for it."""
    return test_registry() if test_decoder_enabled() else DecoderRegistry()
