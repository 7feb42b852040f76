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
from solders.system_program import CreateAccountParams, create_account
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
from hsm_emulator.model import IntentKind
from tests.conftest import SO, TEST_PASSPHRASE
from tests.helpers import Approver, tiered_policy

PT = "SOLANA_TX:localnet"
SOL = 10**9
DECIMALS = 6


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
    hsm.create_key(label, "ED25519", policy=tiered_policy(
        traders, [people["c1"]], asset=asset, small=SOL, medium=100 * SOL))
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
