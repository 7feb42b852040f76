"""HSM-signed Solana transactions on the real runtime (LiteSVM, in-process).

The HSM holds the wallet key and decodes every payload itself; LiteSVM runs the System,
SPL Token and Associated Token Account programs and checks signatures and blockhashes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from solders.hash import Hash
from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.message import Message
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.system_program import CreateAccountParams, TransferParams, create_account, transfer
from solders.token.state import TokenAccount
from solders.transaction import Transaction
from solders.transaction_metadata import FailedTransactionMetadata, TransactionMetadata

from chains.errors import BuildError
from chains.solana import SolanaTxDecoder, spl
from chains.solana.tx import (
    ComputeBudget,
    assemble,
    build_sol_transfer,
    build_spl_transfer,
    refresh_blockhash,
)
from hsm_emulator import Action, Hsm, ManualClock
from hsm_emulator.decoders import DecoderRegistry, JsonTransferDecoder
from hsm_emulator.errors import IntentMismatch, PolicyNotMet
from hsm_emulator.model import IntentKind, KeyAlgorithm
from tests.conftest import SO, TEST_PASSPHRASE
from tests.helpers import Approver, tiered_policy

pytestmark = pytest.mark.node

PT = "SOLANA_TX:localnet"
SOL = 10**9
DECIMALS = 6
#: What a tier lets a transfer cost beyond its amount, in lamports: the fee and, for a
#: token transfer, the destination account's rent-exempt deposit (2,039,280).
FEE_AND_RENT_CAP = 10_000_000


@pytest.fixture
def sol_hsm(tmp_path: Path, clock: ManualClock) -> Iterator[Hsm]:
    h = Hsm.open(tmp_path / "h.sqlite", TEST_PASSPHRASE, so_passphrase=SO, clock=clock,
                 decoders=DecoderRegistry([SolanaTxDecoder("localnet"), JsonTransferDecoder()]))
    yield h
    h.close()


@pytest.fixture
def svm() -> LiteSVM:
    return LiteSVM()


def wallet(hsm: Hsm, people: dict[str, Approver], asset: str = "SOL", label: str = "sol",
           ) -> Pubkey:
    """An HSM Ed25519 key with the treasury tiers: auto <= 1 SOL, 2 traders <= 100 SOL."""
    traders = [people["t1"], people["t2"], people["t3"]]
    policy = tiered_policy(traders, [people["c1"]], asset=asset, small=SOL, medium=100 * SOL,
                           max_fee=FEE_AND_RENT_CAP, fee_asset="SOL")
    hsm.create_key(label, "ED25519", policy={**policy, "networks": ["solana:localnet"]})
    key = Pubkey.from_bytes(hsm.public_key(label))
    assert str(key) == hsm.address(label, "solana", "mainnet")
    return key


def send(svm: LiteSVM, raw: bytes) -> Any:
    return svm.send_transaction(Transaction.from_bytes(raw))


def ok(result: Any) -> TransactionMetadata:
    assert isinstance(result, TransactionMetadata), result
    return result


def test_hsm_signed_sol_transfer_lands(sol_hsm: Hsm, svm: LiteSVM,
                                       people: dict[str, Approver]) -> None:
    me, bob = wallet(sol_hsm, people), Keypair().pubkey()
    ok(svm.airdrop(me, 5 * SOL))
    payload = build_sol_transfer(me, bob, SOL // 10, svm.latest_blockhash(),
                                 ComputeBudget(1_000, 1_000))
    result = sol_hsm.sign_now("sol", payload, PT)
    assert result.token == "small"
    assert result.intent is not None and result.intent.total("SOL") == SOL // 10
    meta = ok(send(svm, assemble(payload, result.signatures[0])))
    assert meta.fee() == 5000 + 1  # base fee + ceil(1000 CU * 1000 micro-lamports)
    assert meta.fee() <= result.intent.fee  # the decoder's fee is a true upper bound
    assert svm.get_balance(bob) == SOL // 10
    assert svm.get_balance(me) == 5 * SOL - SOL // 10 - meta.fee()


def test_runtime_rejects_a_flipped_signature_or_message(sol_hsm: Hsm, svm: LiteSVM,
                                                        people: dict[str, Approver]) -> None:
    me, bob = wallet(sol_hsm, people), Keypair().pubkey()
    ok(svm.airdrop(me, SOL))
    payload = build_sol_transfer(me, bob, SOL // 10, svm.latest_blockhash())
    sig = bytearray(sol_hsm.sign_now("sol", payload, PT).signatures[0])
    sig[10] ^= 0x01
    with pytest.raises(BuildError):  # assembly verifies first...
        assemble(payload, bytes(sig))
    forged = Transaction.populate(Message.from_bytes(payload), [Signature.from_bytes(bytes(sig))])
    result = svm.send_transaction(forged)  # ...and the runtime refuses it anyway
    assert isinstance(result, FailedTransactionMetadata)
    assert "SignatureFailure" in str(result.err())
    good = sol_hsm.sign_now("sol", payload, PT).signatures[0]
    tampered = bytearray(payload)
    tampered[-8] ^= 0x01  # the lamports field, under the same signature
    forged = Transaction.populate(Message.from_bytes(bytes(tampered)),
                                  [Signature.from_bytes(good)])
    assert "SignatureFailure" in str(svm.send_transaction(forged).err())  # type: ignore[union-attr]
    assert svm.get_balance(bob) is None or svm.get_balance(bob) == 0


def test_approved_transfer_is_rebuilt_with_a_fresh_blockhash(
        sol_hsm: Hsm, svm: LiteSVM, clock: ManualClock, people: dict[str, Approver]) -> None:
    me, bob = wallet(sol_hsm, people), Keypair().pubkey()
    ok(svm.airdrop(me, 20 * SOL))
    payload = build_sol_transfer(me, bob, 10 * SOL, svm.latest_blockhash(),
                                 ComputeBudget(1_000, 100))
    with pytest.raises(PolicyNotMet):
        sol_hsm.sign_now("sol", payload, PT)  # medium tier: approvals needed
    ch = sol_hsm.begin("sol", Action.USE, payload, PT, fee_cap=10_000)
    approvals = [people["t1"].approve(ch.envelope), people["t2"].approve(ch.envelope)]
    clock.advance(1800)
    svm.expire_blockhash()  # the hold outlasted the blockhash
    stale = sol_hsm.request_status(ch.request_id, approvals)
    assert stale.released

    fresh = svm.latest_blockhash()
    # a rebuild that changes the destination or exceeds the fee cap is refused
    with pytest.raises(IntentMismatch):
        sol_hsm.execute(ch.request_id, approvals,
                        payload=build_sol_transfer(me, Keypair().pubkey(), 10 * SOL, fresh))
    with pytest.raises(IntentMismatch):
        sol_hsm.execute(ch.request_id, approvals, payload=build_sol_transfer(
            me, bob, 10 * SOL, fresh, ComputeBudget(1_000, 10_000_000)))
    rebuilt = refresh_blockhash(payload, fresh)
    result = sol_hsm.execute(ch.request_id, approvals, payload=rebuilt)
    assert result.token == "medium"
    other = Keypair()  # anything signed over the stale blockhash is refused now
    ok(svm.airdrop(other.pubkey(), SOL))
    stale_tx = Transaction([other], Message.from_bytes(
        build_sol_transfer(other.pubkey(), bob, SOL // 2, Message.from_bytes(payload).recent_blockhash)),
        Message.from_bytes(payload).recent_blockhash)
    assert "BlockhashNotFound" in str(svm.send_transaction(stale_tx).err())  # type: ignore[union-attr]
    ok(send(svm, assemble(rebuilt, result.signatures[0])))
    assert svm.get_balance(bob) == 10 * SOL


def test_contract_call_is_not_auto_signed(sol_hsm: Hsm, svm: LiteSVM,
                                          people: dict[str, Approver]) -> None:
    me = wallet(sol_hsm, people)
    memo = Instruction(Pubkey.from_string("MemoSq4gqABAXKb96qnH8TysNcWxMyWCqXgDLGmfcHr"),
                       b"hi", [AccountMeta(me, True, False)])
    payload = bytes(Message.new_with_blockhash([memo], me, svm.latest_blockhash()))
    assert sol_hsm.dry_run("sol", payload, PT).released_by is None
    with pytest.raises(PolicyNotMet):
        sol_hsm.sign_now("sol", payload, PT)
    ch = sol_hsm.begin("sol", Action.USE, payload, PT)
    assert ch.request_id


# -- SPL -------------------------------------------------------------------------------


def _tx(svm: LiteSVM, payer: Keypair, ixs: list[Instruction], *signers: Keypair) -> None:
    msg = Message.new_with_blockhash(ixs, payer.pubkey(), svm.latest_blockhash())
    ok(svm.send_transaction(Transaction([payer, *signers], msg, svm.latest_blockhash())))


def create_mint(svm: LiteSVM, authority: Keypair) -> Pubkey:
    """System CreateAccount + SPL InitializeMint2 (tag 20: decimals, authority, no freeze)."""
    mint = Keypair()
    ok(svm.airdrop(authority.pubkey(), SOL))
    space = 82
    create = create_account(CreateAccountParams(
        from_pubkey=authority.pubkey(), to_pubkey=mint.pubkey(), owner=spl.TOKEN_PROGRAM_ID,
        lamports=svm.minimum_balance_for_rent_exemption(space), space=space))
    init = Instruction(spl.TOKEN_PROGRAM_ID,
                       bytes([20, DECIMALS]) + bytes(authority.pubkey()) + b"\x00",
                       [AccountMeta(mint.pubkey(), False, True)])
    _tx(svm, authority, [create, init], mint)
    return mint.pubkey()


def mint_to(svm: LiteSVM, authority: Keypair, mint: Pubkey, owner: Pubkey, amount: int) -> None:
    """CreateIdempotent for ``owner`` + MintToChecked (tag 14: amount u64, decimals)."""
    ata = spl.associated_token_address(owner, mint)
    mint_ix = Instruction(spl.TOKEN_PROGRAM_ID, struct.pack("<BQB", 14, amount, DECIMALS), [
        AccountMeta(mint, False, True), AccountMeta(ata, False, True),
        AccountMeta(authority.pubkey(), True, False)])
    _tx(svm, authority, [spl.create_idempotent(authority.pubkey(), owner, mint), mint_ix])


def token_balance(svm: LiteSVM, owner: Pubkey, mint: Pubkey) -> int:
    account = svm.get_account(spl.associated_token_address(owner, mint))
    return 0 if account is None else TokenAccount.from_bytes(bytes(account.data)).amount


@pytest.fixture
def token(sol_hsm: Hsm, svm: LiteSVM, people: dict[str, Approver]) -> tuple[Pubkey, Pubkey]:
    authority = Keypair()
    mint = create_mint(svm, authority)
    me = wallet(sol_hsm, people, asset=f"SPL:{mint}")
    ok(svm.airdrop(me, SOL))
    mint_to(svm, authority, mint, me, 1_000 * 10**DECIMALS)
    return mint, me


def test_litesvm_ships_the_spl_programs(svm: LiteSVM) -> None:
    for program in (spl.TOKEN_PROGRAM_ID, spl.ATA_PROGRAM_ID, spl.TOKEN_2022_PROGRAM_ID):
        account = svm.get_account(program)
        assert account is not None and account.executable


def test_hsm_signed_transfer_checked_lands(sol_hsm: Hsm, svm: LiteSVM,
                                           token: tuple[Pubkey, Pubkey]) -> None:
    mint, me = token
    bob = Keypair().pubkey()
    for amount in (250_000, 1):  # first creates bob's account, then it already exists
        payload = build_spl_transfer(me, mint, DECIMALS, bob, amount, svm.latest_blockhash(),
                                     ComputeBudget(60_000, 1))
        result = sol_hsm.sign_now("sol", payload, PT)
        assert result.intent is not None
        assert result.intent.transfers[0].destination == str(bob)
        meta = ok(send(svm, assemble(payload, result.signatures[0])))
        assert meta.compute_units_consumed() < 60_000  # the adapter's limit has room
        svm.expire_blockhash()
    assert token_balance(svm, bob, mint) == 250_001
    assert token_balance(svm, me, mint) == 1_000 * 10**DECIMALS - 250_001


def test_wrong_decimals_fail_on_chain(sol_hsm: Hsm, svm: LiteSVM,
                                      token: tuple[Pubkey, Pubkey]) -> None:
    mint, me = token
    payload = build_spl_transfer(me, mint, DECIMALS + 1, Keypair().pubkey(), 5,
                                 svm.latest_blockhash())
    sig = sol_hsm.sign_now("sol", payload, PT).signatures[0]
    assert isinstance(send(svm, assemble(payload, sig)), FailedTransactionMetadata)


def test_create_idempotent_asserts_the_destination_owner(
        sol_hsm: Hsm, svm: LiteSVM, token: tuple[Pubkey, Pubkey]) -> None:
    """If bob's ATA was handed to eve (SetAuthority AccountOwner), the transfer fails:
    the decoded destination wallet is checked by the chain itself."""
    mint, me = token
    bob, eve = Keypair(), Keypair()
    ok(svm.airdrop(bob.pubkey(), SOL))
    bob_ata = spl.associated_token_address(bob.pubkey(), mint)
    set_owner = Instruction(spl.TOKEN_PROGRAM_ID, bytes([6, 2, 1]) + bytes(eve.pubkey()), [
        AccountMeta(bob_ata, False, True), AccountMeta(bob.pubkey(), True, False)])
    _tx(svm, bob, [spl.create_idempotent(bob.pubkey(), bob.pubkey(), mint), set_owner])
    ata = TokenAccount.from_bytes(bytes(svm.get_account(bob_ata).data))  # type: ignore[union-attr]
    assert ata.owner == eve.pubkey()

    payload = build_spl_transfer(me, mint, DECIMALS, bob.pubkey(), 5, svm.latest_blockhash())
    sig = sol_hsm.sign_now("sol", payload, PT).signatures[0]
    assert isinstance(send(svm, assemble(payload, sig)), FailedTransactionMetadata)
    assert token_balance(svm, bob.pubkey(), mint) == 0


def test_spl_tiers_apply_per_mint(sol_hsm: Hsm, svm: LiteSVM,
                                  token: tuple[Pubkey, Pubkey]) -> None:
    mint, me = token
    bh: Hash = svm.latest_blockhash()
    big = build_spl_transfer(me, mint, DECIMALS, Keypair().pubkey(), SOL + 1, bh)
    with pytest.raises(PolicyNotMet):
        sol_hsm.sign_now("sol", big, PT)
    intent = sol_hsm.dry_run("sol", big, PT)
    assert intent.released_by is None
    small_sol = build_sol_transfer(me, Keypair().pubkey(), 1, bh)
    with pytest.raises(PolicyNotMet):  # the policy names only the mint: SOL is not covered
        sol_hsm.sign_now("sol", small_sol, PT)
    assert SolanaTxDecoder("localnet").payload_type == PT
    assert IntentKind.TRANSFER.value == "transfer"



# -- what the runtime charges never exceeds what the decoder counted ----------------------


class _View:
    """A KeyView over a local keypair: the decoder alone, no HSM."""

    algorithm = KeyAlgorithm.ED25519
    fingerprint = b""

    def __init__(self, key: Pubkey) -> None:
        self._key = key

    def public_key(self, path: str = "") -> bytes:
        return bytes(self._key)


def _run(svm: LiteSVM, payer: Keypair, payload: bytes) -> tuple[Any, TransactionMetadata, int]:
    """Decode ``payload``, sign it with ``payer``, run it: (intent, meta, lamports paid)."""
    intent = SolanaTxDecoder("localnet").decode(payload, _View(payer.pubkey()))
    before = balance(svm, payer.pubkey())
    sig = bytes(payer.sign_message(payload))
    meta = ok(send(svm, assemble(payload, sig)))
    return intent, meta, before - balance(svm, payer.pubkey())


def balance(svm: LiteSVM, key: Pubkey) -> int:
    lamports = svm.get_balance(key)
    assert lamports is not None
    return lamports


def test_spl_transfer_costs_at_most_fee_plus_rent(sol_hsm: Hsm, svm: LiteSVM,
                                                  token: tuple[Pubkey, Pubkey]) -> None:
    """To a new wallet the key pays the fee and the new token account's rent-exempt
    deposit, exactly ATA_RENT_LAMPORTS; to an existing one just the fee. Both within
    the decoded cost (fee + rent)."""
    mint, me = token
    bob = Keypair().pubkey()
    assert svm.minimum_balance_for_rent_exemption(spl.TOKEN_ACCOUNT_LEN) == spl.ATA_RENT_LAMPORTS
    for rent_paid in (spl.ATA_RENT_LAMPORTS, 0):
        before = balance(svm, me)
        payload = build_spl_transfer(me, mint, DECIMALS, bob, 5, svm.latest_blockhash(),
                                     ComputeBudget(None, 1_000))  # a price, no limit
        result = sol_hsm.sign_now("sol", payload, PT)
        assert result.intent is not None and result.intent.rent == spl.ATA_RENT_LAMPORTS
        meta = ok(send(svm, assemble(payload, result.signatures[0])))
        paid = before - balance(svm, me)
        assert meta.fee() <= result.intent.fee and paid <= result.intent.cost
        assert paid == meta.fee() + rent_paid
        svm.expire_blockhash()


@pytest.mark.parametrize("price", [1, 999_999, 1_000_000, 7_777_777])
def test_a_price_without_a_limit_costs_at_most_the_decoded_fee(svm: LiteSVM,
                                                                price: int) -> None:
    payer, bob = Keypair(), Keypair().pubkey()
    ok(svm.airdrop(payer.pubkey(), 5 * SOL))
    payload = build_sol_transfer(payer.pubkey(), bob, SOL, svm.latest_blockhash(),
                                 ComputeBudget(None, price))
    intent, meta, paid = _run(svm, payer, payload)
    assert paid == SOL + meta.fee()
    assert meta.fee() <= intent.fee, (meta.fee(), intent.fee)


def _ed25519_verify(signer: Keypair, message: bytes) -> Instruction:
    """An Ed25519SigVerify instruction checking one signature carried in its own data."""
    header = 2 + 14
    pubkey_at, sig_at = header, header + 32
    msg_at = sig_at + 64
    offsets = struct.pack("<HHHHHHH", sig_at, 0xFFFF, pubkey_at, 0xFFFF, msg_at,
                          len(message), 0xFFFF)
    data = (bytes([1, 0]) + offsets + bytes(signer.pubkey())
            + bytes(signer.sign_message(message)) + message)
    return Instruction(Pubkey.from_string("Ed25519SigVerify111111111111111111111111111"),
                       data, [])


def test_precompile_signatures_are_charged_and_counted(svm: LiteSVM) -> None:
    payer = Keypair()
    ok(svm.airdrop(payer.pubkey(), SOL))
    verify = _ed25519_verify(Keypair(), b"hello")
    payload = bytes(Message.new_with_blockhash([verify, verify], payer.pubkey(),
                                               svm.latest_blockhash()))
    intent, meta, paid = _run(svm, payer, payload)
    assert intent.kind is IntentKind.CONTRACT_CALL
    assert meta.fee() == paid == 3 * 5000 == intent.fee  # its own + two verified


def test_opaque_message_lists_the_lamports_the_runtime_moves(svm: LiteSVM) -> None:
    """Two System transfers, one with a trailing data byte (which the System program
    ignores): an opaque call, but both transfers are listed - what the key then pays."""
    payer, bob, carol = Keypair(), Keypair().pubkey(), Keypair().pubkey()
    ok(svm.airdrop(payer.pubkey(), 5 * SOL))
    pay = transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=bob, lamports=SOL))
    padded = transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=carol, lamports=SOL))
    padded = Instruction(padded.program_id, bytes(padded.data) + b"\x00", padded.accounts)
    payload = bytes(Message.new_with_blockhash([pay, padded], payer.pubkey(),
                                               svm.latest_blockhash()))
    intent, meta, paid = _run(svm, payer, payload)
    assert intent.kind is IntentKind.CONTRACT_CALL
    assert intent.calls == ("11111111111111111111111111111111",)
    assert intent.total("SOL") == 2 * SOL == balance(svm, bob) + balance(svm, carol)
    assert paid == 2 * SOL + meta.fee() and paid <= intent.outflow()["SOL"]
