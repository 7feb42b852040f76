"""Builder, decoder and assembly against golden bytes from outside test suites.

tests/vectors/solana_golden.json holds, verbatim with their sources: the solana-sdk
serialization test solders ports, solana-py's System transfer wire bytes, the SPL Token
TransferChecked packing test and solders' ATA derivation test.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from solders.hash import Hash
from solders.keypair import Keypair
from solders.pubkey import Pubkey

from chains.solana import SolanaTxDecoder, spl
from chains.solana.tx import assemble, build_sol_transfer
from hsm_emulator.model import IntentKind, KeyAlgorithm, SignScheme, Transfer

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "solana_golden.json").read_text())


class PublicView:
    """The HSM's public-only KeyView, over a known public key."""

    algorithm = KeyAlgorithm.ED25519
    fingerprint = b""

    def __init__(self, public_key: bytes) -> None:
        self._pub = public_key

    def public_key(self, path: str = "") -> bytes:
        assert path == ""
        return self._pub


@pytest.fixture
def decoder() -> SolanaTxDecoder:
    return SolanaTxDecoder("localnet")


def test_vectors_carry_their_source() -> None:
    for name, case in VECTORS.items():
        if isinstance(case, dict):
            assert case["source"].startswith("https://github.com/"), name


def test_sdk_serialize_decodes_as_a_contract_call_and_reassembles(decoder: Any) -> None:
    """solana-sdk's sample: an unknown program's instruction, signed by the fee payer."""
    case = VECTORS["sdk_serialize"]
    wire = bytes(case["expected_transaction"])
    signer = bytes(case["keypair"][32:])  # an ed25519 keypair is seed || public key
    assert wire[0] == 1  # one signature
    signature, message = wire[1:65], wire[65:]

    intent, items = decoder.prepare(message, PublicView(signer))
    assert intent.kind is IntentKind.CONTRACT_CALL
    assert intent.transfers == ()
    assert dict(intent.details)["programs"] == str(Pubkey(case["program_id"]))
    assert (intent.fee, intent.fee_asset) == (5000, "SOL")
    assert [(i.scheme, i.data, i.path) for i in items] == [
        (SignScheme.ED25519_MESSAGE, message, "")]
    assert assemble(message, signature) == wire


def test_system_transfer_wire_bytes_match_builder_decoder_and_assembly(decoder: Any) -> None:
    case = VECTORS["system_transfer_wire"]
    assert case["sender_seed"] == "bytes([8] * 32)"
    sender = Keypair.from_seed(bytes([8] * 32)).pubkey()
    wire = base64.b64decode(case["wire_base64"])
    signature, message = wire[1:65], wire[65:]

    built = build_sol_transfer(sender, Pubkey.from_string(case["recipient"]), case["lamports"],
                               Hash.from_string(case["blockhash"]))
    assert built == message
    intent = decoder.decode(message, PublicView(bytes(sender)))
    assert intent.kind is IntentKind.TRANSFER
    assert intent.transfers == (Transfer("SOL", case["lamports"], case["recipient"]),)
    assert dict(intent.details)["recentBlockhash"] == case["blockhash"]
    assert assemble(message, signature) == wire


def test_transfer_checked_packing() -> None:
    case = VECTORS["spl_transfer_checked_packing"]
    assert spl.transfer_checked_data(case["amount"], case["decimals"]) == bytes(case["expected"])
    assert spl.parse_transfer_checked(bytes(case["expected"])) == (case["amount"],
                                                                   case["decimals"])


def test_associated_token_address() -> None:
    case = VECTORS["associated_token_address"]
    ata = spl.associated_token_address(Pubkey.from_string(case["wallet"]),
                                       Pubkey.from_string(case["mint"]))
    assert str(ata) == case["expected"]
