"""SOLANA_TX decoding: what is a transfer, what is a contract call, what is refused.

Every refusal is the HSM's DecodeError; hypothesis mutates valid messages and feeds
random bytes, and a decoded TRANSFER must always be exactly what the builder makes.
"""

from __future__ import annotations

import struct
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from solders.compute_budget import request_heap_frame
from solders.hash import Hash
from solders.instruction import AccountMeta, CompiledInstruction, Instruction
from solders.keypair import Keypair
from solders.message import Message, MessageV0, to_bytes_versioned
from solders.pubkey import Pubkey
from solders.system_program import ID as SYSTEM_PROGRAM_ID
from solders.system_program import TransferParams, transfer

from chains.errors import BuildError, ChainDecodeError
from chains.solana import SolanaTxDecoder, spl
from chains.solana.decoder import PAYLOAD_PREFIX, compute_budget
from chains.solana.tx import (
    COMPUTE_BUDGET_ID,
    MAX_COMPUTE_UNIT_LIMIT,
    PRECOMPILE_IDS,
    ComputeBudget,
    assemble,
    build_sol_transfer,
    build_spl_transfer,
    default_unit_limit,
    refresh_blockhash,
)
from hsm_emulator.decoders import DecoderRegistry
from hsm_emulator.errors import DecodeError
from hsm_emulator.evaluate import evaluate
from hsm_emulator.model import Action, IntentKind, KeyAlgorithm, Transfer
from hsm_emulator.policy import parse_policy
from tests.helpers import Approver, tiered_policy

pytestmark = pytest.mark.node

WALLET = Keypair.from_seed(bytes(range(32)))
ME = WALLET.pubkey()
BOB = Keypair.from_seed(bytes([7] * 32)).pubkey()
MINT = Pubkey.from_string("3CqfBkrmRsK3uXZaxktvTeeBkJp4yeFKs4mUi2jhKExz")
BH = Hash.from_string("EETubP5AKHgjPAhzPAFcb8BAY1hMH639CWCFTqi3hq1k")
MEMO = Pubkey.from_string("MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr")


class View:
    def __init__(self, key: Pubkey = ME, algorithm: KeyAlgorithm = KeyAlgorithm.ED25519) -> None:
        self.algorithm = algorithm
        self.fingerprint = b""
        self._key = key

    def public_key(self, path: str = "") -> bytes:
        return bytes(self._key)


D = SolanaTxDecoder("localnet")


def sol(lamports: int = 10**6, budget: ComputeBudget = ComputeBudget()) -> bytes:
    return build_sol_transfer(ME, BOB, lamports, BH, budget)


def spl_tx(amount: int = 5, budget: ComputeBudget = ComputeBudget()) -> bytes:
    return build_spl_transfer(ME, MINT, 6, BOB, amount, BH, budget)


def msg(instructions: list[Instruction], payer: Pubkey = ME) -> bytes:
    return bytes(Message.new_with_blockhash(instructions, payer, BH))


def refused(payload: bytes, view: View | None = None) -> str:
    with pytest.raises(DecodeError) as err:
        D.decode(payload, view or View())
    return err.value.reason


def contract_call(payload: bytes) -> None:
    """Opaque: it calls its (non-ComputeBudget) programs, and lists only SOL it visibly
    sends from the key; its fee is still the most the runtime can charge."""
    intent = D.decode(payload, View())
    assert intent.kind is IntentKind.CONTRACT_CALL
    assert all(t.asset == "SOL" for t in intent.transfers)
    m = Message.from_bytes(payload)
    programs = {str(m.account_keys[ix.program_id_index]) for ix in m.instructions}
    assert intent.calls == tuple(sorted(programs - {str(COMPUTE_BUDGET_ID)}))
    assert intent.fee >= 5000 and intent.fee_asset == "SOL"


# -- transfers -------------------------------------------------------------------------


def test_sol_transfer() -> None:
    intent, items = D.prepare(sol(123_456), View())
    assert (intent.chain, intent.network, intent.kind) == ("solana", "localnet",
                                                           IntentKind.TRANSFER)
    assert intent.transfers == (Transfer("SOL", 123_456, str(BOB)),)
    assert (intent.fee, intent.fee_asset) == (5000, "SOL")
    assert D.payload_type == "SOLANA_TX:localnet"
    assert items[0].data == sol(123_456) and items[0].path == ""


def test_fee_counts_the_priority_fee_rounded_up() -> None:
    assert D.decode(sol(budget=ComputeBudget(1000, 5)), View()).fee == 5000 + 1  # 0.005 up
    assert D.decode(sol(budget=ComputeBudget(200_000, 10_000)), View()).fee == 5000 + 2000
    assert D.decode(sol(budget=ComputeBudget(1_400_000, 1)), View()).fee == 5000 + 2  # 1.4 up


def test_fee_without_a_limit_is_the_runtimes_default_worst_case() -> None:
    """No SetComputeUnitLimit: 200,000 units per instruction, 3,000 per ComputeBudget
    instruction (the larger of Agave's two rules for each), capped at 1.4M."""
    price = 1_000_000  # one lamport per unit: the fee is the unit count
    # [price, transfer]: 3,000 + 200,000
    assert D.decode(sol(budget=ComputeBudget(None, price)), View()).fee == 5000 + 203_000
    # [price, create, transfer checked]: 3,000 + 2 x 200,000
    assert D.decode(spl_tx(budget=ComputeBudget(None, price)), View()).fee == 5000 + 403_000
    # no price, no priority fee
    assert D.decode(spl_tx(), View()).fee == 5000
    memo = Instruction(MEMO, b"x", [])
    many = msg([*ComputeBudget(None, price).instructions(), *[memo] * 9])
    assert D.decode(many, View()).fee == 5000 + MAX_COMPUTE_UNIT_LIMIT  # capped
    assert default_unit_limit([MEMO] * 9) == MAX_COMPUTE_UNIT_LIMIT
    assert default_unit_limit([COMPUTE_BUDGET_ID, SYSTEM_PROGRAM_ID]) == 203_000


def test_a_limit_above_the_maximum_is_clamped_like_the_runtime() -> None:
    limit = Instruction(COMPUTE_BUDGET_ID, struct.pack("<BI", 2, 2**32 - 1), [])
    price = ComputeBudget(None, 1_000_000).instructions()[0]
    pay = transfer(TransferParams(from_pubkey=ME, to_pubkey=BOB, lamports=5))
    intent = D.decode(msg([limit, price, pay]), View())
    assert intent.kind is IntentKind.CONTRACT_CALL  # the builder never makes this limit
    assert intent.fee == 5000 + MAX_COMPUTE_UNIT_LIMIT


@pytest.mark.parametrize("precompile", sorted(PRECOMPILE_IDS, key=str))
def test_precompile_signatures_pay_the_base_fee(precompile: Pubkey) -> None:
    """Each signature a precompile instruction verifies (its first data byte) costs
    5,000 lamports like the transaction's own."""
    verify = Instruction(precompile, bytes([255]) + bytes(20), [])
    intent = D.decode(msg([verify, verify]), View())
    assert intent.kind is IntentKind.CONTRACT_CALL and intent.calls == (str(precompile),)
    assert intent.fee == 5000 * (1 + 255 + 255)
    assert D.decode(msg([Instruction(precompile, b"", [])]), View()).fee == 5000


def test_sol_transfer_has_no_rent() -> None:
    intent = D.decode(sol(5), View())
    assert intent.rent == 0 and intent.cost == intent.fee
    assert intent.outflow() == {"SOL": 5 + 5000}


def test_spl_transfer_counts_the_destination_accounts_rent() -> None:
    """CreateIdempotent makes the key fund the destination's token account when it is
    new: the rent-exempt minimum for 165 bytes, the most it can cost."""
    assert spl.ATA_RENT_LAMPORTS == 2_039_280 == (165 + 128) * 6960
    intent = D.decode(spl_tx(42, ComputeBudget(60_000, 1)), View())
    assert intent.kind is IntentKind.TRANSFER
    assert intent.rent == spl.ATA_RENT_LAMPORTS
    assert intent.cost == intent.fee + 2_039_280 and intent.fee == 5000 + 1
    assert intent.outflow() == {f"SPL:{MINT}": 42, "SOL": 5001 + 2_039_280}
    assert intent.binding()["rent"] == "2039280"


def test_spl_transfer_names_the_destination_wallet() -> None:
    intent = D.decode(spl_tx(42), View())
    assert intent.kind is IntentKind.TRANSFER
    assert intent.transfers == (Transfer(f"SPL:{MINT}", 42, str(BOB)),)
    details = dict(intent.details)
    assert details["destinationTokenAccount"] == str(spl.associated_token_address(BOB, MINT))
    assert details["sourceTokenAccount"] == str(spl.associated_token_address(ME, MINT))
    assert details["decimals"] == "6"


def test_refreshed_blockhash_keeps_the_binding() -> None:
    for payload in (sol(budget=ComputeBudget(1000, 7)), spl_tx()):
        fresh = refresh_blockhash(payload, Hash.new_unique())
        assert fresh != payload
        a, b = D.decode(payload, View()), D.decode(fresh, View())
        assert a.binding() == b.binding() and a.fee == b.fee


def test_registry_wraps_the_decoder() -> None:
    registry = DecoderRegistry([D, SolanaTxDecoder("devnet")])
    assert registry.types() == ["SOLANA_TX:devnet", "SOLANA_TX:localnet"]
    assert registry.decode("SOLANA_TX:devnet", sol(), View()).network == "devnet"  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        SolanaTxDecoder("mainnet-beta")
    assert PAYLOAD_PREFIX == "SOLANA_TX"


# -- refused outright ------------------------------------------------------------------


def test_trailing_and_truncated_bytes() -> None:
    assert "non-canonical" in refused(sol() + b"\x00")
    refused(sol()[:-1])
    refused(b"")


def test_fee_payer_must_be_the_key() -> None:
    assert "fee payer" in refused(sol(), View(BOB))
    assert "ED25519" in refused(sol(), View(ME, KeyAlgorithm.SECP256K1))


def test_a_second_signer_is_refused() -> None:
    other = Keypair().pubkey()
    ix = transfer(TransferParams(from_pubkey=other, to_pubkey=BOB, lamports=5))
    assert "exactly one signature" in refused(msg([ix]))


def test_versioned_message_is_refused() -> None:
    ix = transfer(TransferParams(from_pubkey=ME, to_pubkey=BOB, lamports=5))
    v0 = to_bytes_versioned(MessageV0.try_compile(ME, [ix], [], BH))
    assert v0[0] == 0x80  # the version prefix
    refused(v0)
    refused(bytes(MessageV0.try_compile(ME, [ix], [], BH)))  # v0 body without its prefix


def test_sanitize_failures_are_refused() -> None:
    bad = CompiledInstruction(2, bytes(12), bytes([0, 9]))  # account index out of range
    m = Message.new_with_compiled_instructions(1, 0, 1, [ME, BOB, Pubkey.default()], BH, [bad])
    assert "not a valid" in refused(bytes(m))


def test_duplicate_account_keys_are_refused() -> None:
    ix = CompiledInstruction(2, struct.pack("<IQ", 2, 5), bytes([0, 1]))
    m = Message.new_with_compiled_instructions(1, 0, 1, [ME, BOB, BOB], BH, [ix])
    refused(bytes(m))


def test_compute_budget_must_be_exactly_bounded() -> None:
    limit = ComputeBudget(1000).instructions()[0]
    price = ComputeBudget(None, 5).instructions()[0]
    pay = transfer(TransferParams(from_pubkey=ME, to_pubkey=BOB, lamports=5))
    assert "duplicate" in refused(msg([limit, limit, pay]))
    assert "duplicate" in refused(msg([price, price, pay]))
    refused(msg([request_heap_frame(64 * 1024), pay]))
    with_account = Instruction(limit.program_id, bytes(limit.data), [AccountMeta(BOB, False, False)])
    refused(msg([with_account, pay]))


@pytest.mark.parametrize("payload", [b"\x00" * 2000, b"\x01" * 70_000])
def test_oversized_garbage(payload: bytes) -> None:
    refused(payload)


# -- contract calls: well-formed, but not exactly a transfer ------------------------------


def test_extra_instruction_is_a_contract_call() -> None:
    pay = transfer(TransferParams(from_pubkey=ME, to_pubkey=BOB, lamports=5))
    memo = Instruction(MEMO, b"hello", [])
    contract_call(msg([pay, memo]))
    contract_call(msg([pay, pay]))
    contract_call(msg([memo]))
    contract_call(msg([]))
    intent = D.decode(msg([pay, memo]), View())
    assert str(MEMO) in dict(intent.details)["programs"]
    assert intent.calls == tuple(sorted([str(SYSTEM_PROGRAM_ID), str(MEMO)]))
    assert intent.transfers == (Transfer("SOL", 5, str(BOB)),)


def test_two_system_transfers_are_opaque_with_calls_fee_and_amounts() -> None:
    carol = Keypair().pubkey()
    pays = [transfer(TransferParams(from_pubkey=ME, to_pubkey=BOB, lamports=5)),
            transfer(TransferParams(from_pubkey=ME, to_pubkey=carol, lamports=7))]
    intent = D.decode(msg([*ComputeBudget(None, 1_000_000).instructions(), *pays]), View())
    assert intent.kind is IntentKind.CONTRACT_CALL
    assert intent.calls == (str(SYSTEM_PROGRAM_ID),)  # ComputeBudget: counted in the fee
    assert intent.transfers == (Transfer("SOL", 5, str(BOB)), Transfer("SOL", 7, str(carol)))
    assert intent.fee == 5000 + 3_000 + 2 * 200_000 and intent.rent == 0
    assert intent.outflow() == {"SOL": 12 + intent.fee}


def _token_ix(tag: int, body: bytes, *accounts: tuple[Pubkey, bool, bool]) -> Instruction:
    return Instruction(spl.TOKEN_PROGRAM_ID, bytes([tag]) + body,
                       [AccountMeta(k, signer, writable) for k, signer, writable in accounts])


def test_spl_authority_instructions_are_opaque_never_transfers() -> None:
    """Approve, ApproveChecked, SetAuthority, CloseAccount, unchecked Transfer, Burn: each
    alone or behind the builder's CreateIdempotent is an opaque call to the token program,
    with the create's rent counted."""
    mine, eve = spl.associated_token_address(ME, MINT), Keypair().pubkey()
    variants = [
        _token_ix(4, struct.pack("<Q", 2**64 - 1), (mine, False, True), (eve, False, False),
                  (ME, True, False)),  # Approve
        _token_ix(13, struct.pack("<QB", 5, 6), (mine, False, True), (MINT, False, False),
                  (eve, False, False), (ME, True, False)),  # ApproveChecked
        _token_ix(6, bytes([2, 1]) + bytes(eve), (mine, False, True),
                  (ME, True, False)),  # SetAuthority AccountOwner -> eve
        _token_ix(9, b"", (mine, False, True), (eve, False, True),
                  (ME, True, False)),  # CloseAccount, lamports to eve
        _token_ix(3, struct.pack("<Q", 5), (mine, False, True), (eve, False, True),
                  (ME, True, False)),  # Transfer (unchecked)
        _token_ix(15, struct.pack("<QB", 5, 6), (mine, False, True), (MINT, False, True),
                  (ME, True, False)),  # BurnChecked
    ]
    for ix in variants:
        alone = D.decode(msg([ix]), View())
        assert alone.kind is IntentKind.CONTRACT_CALL and alone.transfers == ()
        assert alone.calls == (str(spl.TOKEN_PROGRAM_ID),) and alone.rent == 0
        paired = D.decode(msg([spl.create_idempotent(ME, BOB, MINT), ix]), View())
        assert paired.kind is IntentKind.CONTRACT_CALL and paired.transfers == ()
        assert paired.calls == tuple(sorted([str(spl.ATA_PROGRAM_ID), str(spl.TOKEN_PROGRAM_ID)]))
        assert paired.rent == spl.ATA_RENT_LAMPORTS


def test_contract_call_counts_the_rent_of_each_account_it_funds() -> None:
    creates = [spl.create_idempotent(ME, Keypair().pubkey(), MINT) for _ in range(3)]
    intent = D.decode(msg(creates), View())
    assert intent.kind is IntentKind.CONTRACT_CALL
    assert intent.rent == 3 * spl.ATA_RENT_LAMPORTS
    assert intent.cost == intent.fee + 3 * 2_039_280


def test_budget_after_the_transfer_is_a_contract_call() -> None:
    pay = transfer(TransferParams(from_pubkey=ME, to_pubkey=BOB, lamports=5))
    contract_call(msg([pay, *ComputeBudget(1000, 1).instructions()]))
    contract_call(msg([*reversed(ComputeBudget(1000, 1).instructions()), pay]))


def test_source_not_the_signer_is_a_contract_call() -> None:
    """A hand-made message moving someone else's lamports (not marked as signer)."""
    other = Keypair().pubkey()
    ix = CompiledInstruction(3, struct.pack("<IQ", 2, 5), bytes([1, 2]))
    m = Message.new_with_compiled_instructions(1, 0, 1, [ME, other, BOB, Pubkey.default()],
                                               BH, [ix])
    contract_call(bytes(m))


def test_other_system_instructions_are_contract_calls() -> None:
    pay = transfer(TransferParams(from_pubkey=ME, to_pubkey=BOB, lamports=5))
    assign = Instruction(pay.program_id, struct.pack("<I", 1) + bytes(BOB),
                         [AccountMeta(ME, True, True)])
    contract_call(msg([assign]))
    longer = Instruction(pay.program_id, bytes(pay.data) + b"\x00", pay.accounts)
    contract_call(msg([longer]))
    # the runtime ignores the trailing byte and moves the lamports: still listed
    assert D.decode(msg([longer]), View()).transfers == (Transfer("SOL", 5, str(BOB)),)


def _spl(create: Instruction | None, move: Instruction) -> bytes:
    return msg([create, move] if create else [move])


def test_spl_variants_outside_the_pattern_are_contract_calls() -> None:
    mine, bobs = (spl.associated_token_address(k, MINT) for k in (ME, BOB))
    create = spl.create_idempotent(ME, BOB, MINT)
    good = spl.transfer_checked(mine, MINT, bobs, ME, 5, 6)
    assert _spl(create, good) == spl_tx(5)
    contract_call(_spl(None, good))  # no create: the destination wallet is unproven
    eve = Keypair().pubkey()
    contract_call(_spl(spl.create_idempotent(ME, eve, MINT), good))  # creates eve's, pays bob
    other_src = spl.transfer_checked(Keypair().pubkey(), MINT, bobs, ME, 5, 6)
    contract_call(_spl(create, other_src))  # not my associated account
    legacy = Instruction(create.program_id, b"", create.accounts)  # Create, not idempotent
    contract_call(_spl(legacy, good))
    t22 = Instruction(spl.TOKEN_2022_PROGRAM_ID, bytes(good.data), good.accounts)
    contract_call(_spl(create, t22))
    plain = Instruction(spl.TOKEN_PROGRAM_ID, struct.pack("<BQ", 3, 5),
                        [good.accounts[0], good.accounts[2], good.accounts[3]])
    contract_call(_spl(create, plain))  # Transfer (3), unchecked


def test_contract_calls_never_meet_amount_tiers(people: dict[str, Approver]) -> None:
    traders = [people["t1"], people["t2"]]
    policy = parse_policy(tiered_policy(traders, [people["c1"]], asset="SOL", small=10**12,
                                        max_fee=10**7))
    memo = Instruction(MEMO, b"x", [])
    small = D.decode(sol(5), View())
    call = D.decode(msg([memo]), View())
    assert evaluate(policy, Action.USE, small, frozenset(), 0, 0).released_by == "small"
    assert not evaluate(policy, Action.USE, call, frozenset(), 0, 0).released
    two = D.decode(msg([transfer(TransferParams(from_pubkey=ME, to_pubkey=BOB, lamports=5))] * 2),
                   View())
    assert not evaluate(policy, Action.USE, two, frozenset(), 0, 0).released


# -- builder edges ---------------------------------------------------------------------------


def test_builder_refuses_out_of_range() -> None:
    for bad in (0, -1, 2**64, True):
        with pytest.raises(BuildError):
            sol(bad)  # type: ignore[arg-type]
    with pytest.raises(BuildError):
        build_spl_transfer(ME, MINT, 256, BOB, 5, BH)
    with pytest.raises(BuildError):
        ComputeBudget(2_000_000).instructions()


def test_assemble_refuses_a_wrong_signature() -> None:
    payload = sol()
    good = bytes(WALLET.sign_message(payload))
    assert len(assemble(payload, good)) == 1 + 64 + len(payload)
    with pytest.raises(BuildError):
        assemble(payload, good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(BuildError):
        assemble(payload, good[:63])
    with pytest.raises(ChainDecodeError):
        assemble(payload + b"\x00", good)


# -- fuzzing -----------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEEDS = [sol(), sol(budget=ComputeBudget(1000, 3)), spl_tx(), spl_tx(budget=ComputeBudget(None, 9))]


def _check(payload: bytes) -> None:
    """Either DecodeError, or an intent whose transfer is exactly the builder's output."""
    try:
        intent = D.decode(payload, View())
    except DecodeError:
        return
    assert intent.chain == "solana" and intent.fee >= 5000
    assert D.decode(payload, View()) == intent  # pure: same answer twice
    if intent.kind is IntentKind.TRANSFER:
        (t,) = intent.transfers
        dest = Pubkey.from_string(t.destination)
        m = Message.from_bytes(payload)
        h, b = m.recent_blockhash, compute_budget(m)
        if t.asset == "SOL":
            assert build_sol_transfer(ME, dest, t.amount, h, b) == payload
        else:
            mint = Pubkey.from_string(t.asset[4:])
            dec = int(dict(intent.details)["decimals"])
            assert build_spl_transfer(ME, mint, dec, dest, t.amount, h, b) == payload


@FUZZ
@given(st.sampled_from(SEEDS), st.data())
def test_fuzz_byte_flips(seed: bytes, data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(seed) - 1))
    v = data.draw(st.integers(0, 255))
    _check(seed[:i] + bytes([v]) + seed[i + 1:])


@FUZZ
@given(st.sampled_from(SEEDS), st.data())
def test_fuzz_truncate_and_append(seed: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(seed)))
    tail = data.draw(st.binary(max_size=64))
    payload = seed[:cut] + tail
    if payload != seed:
        _check(payload)
        if cut == len(seed) and tail:
            refused(payload)


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(payload: bytes) -> None:
    _check(payload)


def test_pure_modules_import_no_network_code() -> None:
    """What the HSM imports (decoder, builders, SPL encodings) pulls in no RPC client."""
    code = ("import sys, chains.solana, chains.solana.tx, chains.solana.spl; "
            "bad = {'urllib.request', 'http.client', 'http.server', 'chains.solana.client', "
            "'chains.solana.devnode', 'chains.solana.adapter'} & set(sys.modules); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
