"""The few SPL Token and Associated Token Account encodings the wallet uses. Pure.

solders ships the program ids and ATA derivation but no SPL instruction builders, so the
two instructions are written out here - they are tiny and fixed:

* ``TransferChecked`` (SPL Token instruction 12): data ``[12] || amount u64 LE ||
  decimals u8``; accounts source (w), mint, destination (w), owner (signer).
  https://github.com/solana-labs/solana-program-library/blob/master/token/program/src/instruction.rs
* ``CreateIdempotent`` (ATA instruction 1, a borsh enum tag): data ``[1]``; accounts
  funder (w, signer), ATA (w), wallet, mint, system program, token program.
  https://github.com/solana-labs/solana-program-library/blob/master/associated-token-account/program/src/instruction.rs
* ATA address: ``find_program_address([wallet, token_program, mint], ATA_PROGRAM)``.

Only the original SPL Token program is supported. Token-2022 shares the TransferChecked
layout but its mints may carry transfer fees and transfer hooks (extra accounts, other
programs run), so an amount decoded from the instruction would not be what arrives.
"""

from __future__ import annotations

import struct
from typing import Final

from solders.instruction import AccountMeta, Instruction
from solders.pubkey import Pubkey
from solders.system_program import ID as SYSTEM_PROGRAM
from solders.token import ID as TOKEN_PROGRAM

#: SPL Token (the original program; Token-2022 is refused, see module docstring).
TOKEN_PROGRAM_ID: Final[Pubkey] = TOKEN_PROGRAM
#: The Associated Token Account program.
ATA_PROGRAM_ID: Final[Pubkey] = Pubkey.from_string("ATokenGPvbdGVxr1b2hvZbsiqW5xWH25efTNsLJA8knL")
SYSTEM_PROGRAM_ID: Final[Pubkey] = SYSTEM_PROGRAM
#: Token-2022, named only so that it can be recognised and refused.
TOKEN_2022_PROGRAM_ID: Final[Pubkey] = Pubkey.from_string(
    "TokenzQdBNbLqP5VEhdkAS6EPFLC1PHnBqCXEpPxuEb")

TRANSFER_CHECKED: Final = 12  #: SPL Token instruction tag
CREATE_IDEMPOTENT: Final = b"\x01"  #: ATA instruction data (borsh enum variant 1)
_TRANSFER_CHECKED = struct.Struct("<BQB")
#: Size of an SPL token account; the ATA's rent-exempt deposit is for this many bytes.
TOKEN_ACCOUNT_LEN: Final = 165
#: Bytes the runtime adds to every account's data length for rent (``ACCOUNT_STORAGE_OVERHEAD``).
ACCOUNT_STORAGE_OVERHEAD: Final = 128
#: Lamports per byte for two years of rent, the rent-exempt rate: ``Rent::default()``'s
#: 3,480 lamports per byte-year x exemption threshold 2.0 (SIMD-0194 spells the same
#: product as 6,960 per byte x 1.0). Every cluster runs the default.
RENT_EXEMPT_LAMPORTS_PER_BYTE: Final = 6_960
#: What a ``CreateIdempotent`` (or ``Create``) can make its funder pay: the rent-exempt
#: minimum of a 165-byte token account, (165 + 128) x 6,960 = 2,039,280 lamports. It is the
#: maximum: the ATA program funds a new account with ``Rent::minimum_balance(165)`` less
#: whatever lamports already sit at its address, and nothing at all if the account exists.
ATA_RENT_LAMPORTS: Final = (TOKEN_ACCOUNT_LEN + ACCOUNT_STORAGE_OVERHEAD) * (
    RENT_EXEMPT_LAMPORTS_PER_BYTE)
#: ATA instruction data: ``Create`` (empty, or the borsh tag 0) and ``CreateIdempotent``
#: (1) make the funder (account 0) pay :data:`ATA_RENT_LAMPORTS` when the account is new.
ATA_CREATES: Final = frozenset({b"", b"\x00", CREATE_IDEMPOTENT})


def associated_token_address(wallet: Pubkey, mint: Pubkey) -> Pubkey:
    """The wallet's associated token account for ``mint`` under the SPL Token program."""
    address, _bump = Pubkey.find_program_address(
        [bytes(wallet), bytes(TOKEN_PROGRAM_ID), bytes(mint)], ATA_PROGRAM_ID)
    return address


def transfer_checked_data(amount: int, decimals: int) -> bytes:
    return _TRANSFER_CHECKED.pack(TRANSFER_CHECKED, amount, decimals)


def parse_transfer_checked(data: bytes) -> tuple[int, int] | None:
    """``(amount, decimals)`` if ``data`` is exactly a TransferChecked, else None."""
    if len(data) != _TRANSFER_CHECKED.size or data[0] != TRANSFER_CHECKED:
        return None
    _tag, amount, decimals = _TRANSFER_CHECKED.unpack(data)
    return amount, decimals


def transfer_checked(source: Pubkey, mint: Pubkey, destination: Pubkey, owner: Pubkey,
                     amount: int, decimals: int) -> Instruction:
    return Instruction(TOKEN_PROGRAM_ID, transfer_checked_data(amount, decimals), [
        AccountMeta(source, is_signer=False, is_writable=True),
        AccountMeta(mint, is_signer=False, is_writable=False),
        AccountMeta(destination, is_signer=False, is_writable=True),
        AccountMeta(owner, is_signer=True, is_writable=False),
    ])


def create_idempotent(funder: Pubkey, wallet: Pubkey, mint: Pubkey) -> Instruction:
    """Create ``wallet``'s ATA for ``mint`` unless it exists; fails if it exists with
    another owner - so the transaction itself asserts who owns the destination."""
    return Instruction(ATA_PROGRAM_ID, CREATE_IDEMPOTENT, [
        AccountMeta(funder, is_signer=True, is_writable=True),
        AccountMeta(associated_token_address(wallet, mint), is_signer=False, is_writable=True),
        AccountMeta(wallet, is_signer=False, is_writable=False),
        AccountMeta(mint, is_signer=False, is_writable=False),
        AccountMeta(SYSTEM_PROGRAM_ID, is_signer=False, is_writable=False),
        AccountMeta(TOKEN_PROGRAM_ID, is_signer=False, is_writable=False),
    ])
