"""One decoder error contract: every chain's decoder refuses with the HSM's DecodeError.

``hsm_emulator.decoding`` defines the interface a chain implements; a refusal is a
:class:`DecodeError`, raised by the decoder itself. The registry still turns any other
exception into one (a decoder bug must never become a signature), but these tests call
the decoders directly, past that net, so a decoder that leaks another error type fails
here instead of being papered over.
"""

from __future__ import annotations

import coincurve
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from solders.keypair import Keypair

from chains.base import Chain
from chains.ethereum.tx import Eip1559Tx, serialize_unsigned
from chains.registry import DEFAULT_NETWORKS, decoders_for
from hsm_emulator.decoding import DecodeError, DecoderRegistry, KeyAlgorithm, PayloadDecoder

SECP = coincurve.PrivateKey(bytes(31) + b"\x07")
ED = Keypair.from_seed(bytes(31) + b"\x07")


class View:
    """A key of either algorithm; every path gives the key itself (no proof succeeds)."""

    def __init__(self, algorithm: KeyAlgorithm) -> None:
        self._algorithm = algorithm

    @property
    def algorithm(self) -> KeyAlgorithm:
        return self._algorithm

    @property
    def fingerprint(self) -> bytes:
        return b"\x01\x02\x03\x04"

    def public_key(self, path: str = "") -> bytes:
        if self._algorithm is KeyAlgorithm.ED25519:
            return bytes(ED.pubkey())
        return SECP.public_key.format(compressed=True)


DECODERS = [d for entry in DEFAULT_NETWORKS.split(",") for d in decoders_for(entry)]
VIEWS = [View(KeyAlgorithm.SECP256K1), View(KeyAlgorithm.ED25519)]
MALFORMED = [b"", b"\x00", b"\x02", b"\xff" * 7, b"{}", b"[]", b"null", b"psbt\xff",
             b"psbt\xff\x00", b"\x80" + bytes(64), "\u00e9".encode("latin-1")]


def _refuses(decoder: PayloadDecoder, payload: bytes, view: View) -> DecodeError:
    with pytest.raises(DecodeError) as err:  # only DecodeError, straight from the decoder
        decoder.decode(payload, view)
    with pytest.raises(DecodeError):
        decoder.sign_items(payload, view)
    prepare = getattr(decoder, "prepare", None)
    if prepare is not None:
        with pytest.raises(DecodeError):
            prepare(payload, view)
    return err.value


def test_every_chain_has_decoders_here() -> None:
    chains = {d.payload_type.split("_")[0].lower() for d in DECODERS}
    assert chains == {c.value for c in Chain}


@pytest.mark.parametrize("decoder", DECODERS, ids=lambda d: d.payload_type)
@pytest.mark.parametrize("payload", MALFORMED, ids=repr)
def test_malformed_payloads_are_a_decode_error(decoder: PayloadDecoder, payload: bytes) -> None:
    for view in VIEWS:
        exc = _refuses(decoder, payload, view)
        # the registry passes the decoder's refusal on as it is: no catch-all rewording
        with pytest.raises(DecodeError) as through:
            DecoderRegistry([decoder]).prepare(decoder.payload_type, payload, view)
        assert through.value.reason == exc.reason


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(DECODERS), st.binary(max_size=300), st.sampled_from(VIEWS))
def test_random_bytes_are_a_decode_error_or_an_intent(decoder: PayloadDecoder, noise: bytes,
                                                      view: View) -> None:
    try:
        intent = decoder.decode(noise, view)
    except DecodeError:
        return
    assert intent.chain in {c.value for c in Chain}  # a rare valid payload: a whole intent


def test_a_wrong_key_algorithm_is_a_decode_error() -> None:
    eth = serialize_unsigned(Eip1559Tx(31337, 0, 1, 2, 21_000, bytes(20), 1))
    for decoder in DECODERS:
        if decoder.payload_type.startswith("ETHEREUM_TX"):
            _refuses(decoder, eth, View(KeyAlgorithm.ED25519))


def test_ethereum_refusals_keep_the_wording_the_registry_gave_them() -> None:
    """Before the decoders raised DecodeError themselves, the registry caught their own
    error and reworded it; that reason, which API callers see, is unchanged."""
    decoder = next(d for d in DECODERS if d.payload_type == "ETHEREUM_TX:eip155:31337")
    exc = _refuses(decoder, b"", View(KeyAlgorithm.SECP256K1))
    assert exc.reason == ("ETHEREUM_TX:eip155:31337 payload could not be decoded: "
                          "[chain.decode_error] empty transaction")
