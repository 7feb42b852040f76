"""Building Solana transfer messages and assembling signed transactions. Pure, no I/O.

The payload the HSM signs is the serialized legacy ``Message`` (what an Ed25519
transaction signature covers): https://solana.com/docs/core/transactions

**Blockhash, not durable nonce.** A message is valid for ~150 slots (60-90 s) after its
``recent_blockhash``, much less than an approval hold (up to days). We rebuild: after
approval the broker fetches a fresh blockhash, calls :func:`refresh_blockhash` and hands
the new message to ``Hsm.execute(..., payload=...)``; the HSM decodes it again and signs
only if the intent binding is identical and the fee within the approved cap. A durable
nonce would instead need a nonce account per wallet (rent, an authority to manage, one
in-flight transaction per nonce) and the decoder would have to accept an extra
``AdvanceNonceAccount`` instruction - more accepted surface for no gain here. An expired
blockhash also gives the broker a hard answer for retries: once the node's block height
passes ``lastValidBlockHeight`` the signed transaction can never land, so a new request
cannot double-spend it.

**Fee** (the most the runtime can charge; the decoder's ``Intent.fee``, and what the fee
cap is checked against), per Agave's fee structure:

* base fee: 5,000 lamports per signature - the transaction's own signatures *plus* the
  signatures its precompile instructions verify (Ed25519, secp256k1, secp256r1: the
  first data byte of each such instruction), see :func:`message_fee`;
* prioritization fee: ``ceil(unit_price x unit_limit / 1e6)`` (price in micro-lamports
  per compute unit), where ``unit_limit`` is the ``SetComputeUnitLimit`` value clamped to
  1,400,000, or - without one - the runtime's default for the message: 200,000 units per
  instruction that is not a ComputeBudget instruction, plus 3,000 per ComputeBudget
  instruction, at most 1,400,000 (:func:`default_unit_limit`). That is at least what
  either rule Agave has applied grants: 200,000 per non-ComputeBudget instruction; and,
  with ``reserve_minimal_cus_for_builtin_instructions``, 3,000 per builtin instruction -
  ComputeBudget included - and 200,000 per other instruction.

Without the message (the adapter quoting a budget before building) the default is taken
as 1,400,000 units: still an upper bound. https://solana.com/docs/core/fees
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from solders.compute_budget import ID as COMPUTE_BUDGET_ID
from solders.compute_budget import set_compute_unit_limit, set_compute_unit_price
from solders.hash import Hash
from solders.instruction import Instruction
from solders.message import Message
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.system_program import TransferParams, transfer
from solders.transaction import Transaction

from chains.errors import BuildError, ChainDecodeError
from chains.solana import spl

#: Base fee per signature (lamports), fixed by the runtime.
LAMPORTS_PER_SIGNATURE: Final = 5000
#: The most compute units a transaction may request (a larger request is clamped to it).
MAX_COMPUTE_UNIT_LIMIT: Final = 1_400_000
#: Default units per instruction when no limit is set (``DEFAULT_INSTRUCTION_COMPUTE_UNIT_LIMIT``).
DEFAULT_INSTRUCTION_UNITS: Final = 200_000
#: Default units per builtin instruction under ``reserve_minimal_cus_for_builtin_instructions``
#: (``MAX_BUILTIN_ALLOCATION_COMPUTE_UNIT_LIMIT``): what a ComputeBudget instruction adds.
BUILTIN_INSTRUCTION_UNITS: Final = 3_000
MICRO_LAMPORTS_PER_LAMPORT: Final = 1_000_000
U64_MAX: Final = 2**64 - 1
#: Precompiles whose instructions each verify ``data[0]`` signatures, each paying the base
#: fee (``Ed25519SigVerify111..``, ``KeccakSecp256k1111..``, ``Secp256r1SigVerify111..``).
PRECOMPILE_IDS: Final = frozenset(Pubkey.from_string(k) for k in (
    "Ed25519SigVerify111111111111111111111111111",
    "KeccakSecp256k11111111111111111111111111111",
    "Secp256r1SigVerify1111111111111111111111111"))
#: ComputeBudget instruction tags (https://docs.rs/solana-compute-budget-interface)
SET_COMPUTE_UNIT_LIMIT: Final = 2
SET_COMPUTE_UNIT_PRICE: Final = 3
_LIMIT = struct.Struct("<BI")
_PRICE = struct.Struct("<BQ")
__all__ = ["COMPUTE_BUDGET_ID", "ComputeBudget", "assemble", "build_sol_transfer",
           "build_spl_transfer", "default_unit_limit", "fee_estimate", "message_fee",
           "refresh_blockhash"]


@dataclass(frozen=True)
class ComputeBudget:
    """Priority fee settings. ``unit_price`` in micro-lamports per compute unit."""

    unit_limit: int | None = None
    unit_price: int = 0

    def instructions(self) -> list[Instruction]:
        out = []
        if self.unit_limit is not None:
            if not 0 < self.unit_limit <= MAX_COMPUTE_UNIT_LIMIT:
                raise BuildError(f"compute unit limit must be 1..{MAX_COMPUTE_UNIT_LIMIT}")
            out.append(set_compute_unit_limit(self.unit_limit))
        if self.unit_price:
            if not 0 < self.unit_price <= U64_MAX:
                raise BuildError("compute unit price must be a u64")
            out.append(set_compute_unit_price(self.unit_price))
        return out

    def fee(self, signatures: int = 1, default_units: int = MAX_COMPUTE_UNIT_LIMIT) -> int:
        """The most this budget lets the runtime charge: ``signatures`` base fees plus the
        prioritization fee over the clamped limit, or ``default_units`` without one (give
        :func:`default_unit_limit` of the message; the 1.4M maximum bounds any)."""
        return fee_estimate(signatures, self.unit_price, self.unit_limit, default_units)


def fee_estimate(signatures: int, unit_price: int, unit_limit: int | None,
                 default_units: int = MAX_COMPUTE_UNIT_LIMIT) -> int:
    """Upper bound of the fee in lamports (see the module docstring)."""
    limit = default_units if unit_limit is None else unit_limit
    limit = min(limit, MAX_COMPUTE_UNIT_LIMIT)  # the runtime clamps larger requests
    priority = -(-unit_price * limit // MICRO_LAMPORTS_PER_LAMPORT)  # ceiling division
    return LAMPORTS_PER_SIGNATURE * signatures + priority


def default_unit_limit(program_ids: Sequence[Pubkey]) -> int:
    """The most compute units the runtime grants a message that sets no limit, for its
    instructions' program ids (see the module docstring)."""
    units = sum(BUILTIN_INSTRUCTION_UNITS if p == COMPUTE_BUDGET_ID
                else DEFAULT_INSTRUCTION_UNITS for p in program_ids)
    return min(units, MAX_COMPUTE_UNIT_LIMIT)


def message_fee(msg: Message, budget: ComputeBudget) -> int:
    """The most the runtime can charge the fee payer for ``msg`` under ``budget`` (the
    message's own compute budget): every signature it pays for, and the priority fee."""
    keys = msg.account_keys
    programs = [keys[ix.program_id_index] for ix in msg.instructions]
    signatures = msg.header.num_required_signatures + sum(
        bytes(ix.data)[0] for ix, p in zip(msg.instructions, programs, strict=True)
        if p in PRECOMPILE_IDS and bytes(ix.data))
    return budget.fee(signatures, default_unit_limit(programs))


def parse_compute_budget(data: bytes) -> tuple[str, int] | None:
    """``("limit", n)`` or ``("price", n)`` for the two accepted instructions, else None."""
    if len(data) == _LIMIT.size and data[0] == SET_COMPUTE_UNIT_LIMIT:
        return "limit", _LIMIT.unpack(data)[1]
    if len(data) == _PRICE.size and data[0] == SET_COMPUTE_UNIT_PRICE:
        return "price", _PRICE.unpack(data)[1]
    return None


def _amount(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= U64_MAX:
        raise BuildError(f"{what} must be a whole number in 1..2^64-1")
    return value


def _message(payer: Pubkey, instructions: list[Instruction], blockhash: Hash) -> bytes:
    return bytes(Message.new_with_blockhash(instructions, payer, blockhash))


def build_sol_transfer(payer: Pubkey, destination: Pubkey, lamports: int, blockhash: Hash,
                       budget: ComputeBudget = ComputeBudget()) -> bytes:
    """Message bytes: [compute budget] + one System ``Transfer`` from ``payer``."""
    ix = transfer(TransferParams(from_pubkey=payer, to_pubkey=destination,
                                 lamports=_amount(lamports, "lamports")))
    return _message(payer, [*budget.instructions(), ix], blockhash)


def build_spl_transfer(owner: Pubkey, mint: Pubkey, decimals: int, destination: Pubkey,
                       amount: int, blockhash: Hash,
                       budget: ComputeBudget = ComputeBudget()) -> bytes:
    """Message bytes: [compute budget] + ``CreateIdempotent`` of the destination wallet's
    ATA + ``TransferChecked`` from ``owner``'s ATA to it, signed by ``owner``.

    The create instruction is always present: it makes the destination wallet part of the
    signed message (so the HSM can show and bind the *wallet*, the address a desk
    allowlists) and the ATA program refuses it if that token account exists with another
    owner, so the chain itself checks the claim. If the account is missing, ``owner``
    funds its rent-exempt deposit (for 165 bytes).
    """
    if not isinstance(decimals, int) or not 0 <= decimals <= 255:
        raise BuildError("decimals must be 0..255")
    ixs = [
        *budget.instructions(),
        spl.create_idempotent(owner, destination, mint),
        spl.transfer_checked(spl.associated_token_address(owner, mint), mint,
                             spl.associated_token_address(destination, mint), owner,
                             _amount(amount, "token amount"), decimals),
    ]
    return _message(owner, ixs, blockhash)


def refresh_blockhash(message: bytes, blockhash: Hash) -> bytes:
    """The same message with a new ``recent_blockhash``: everything else byte-identical."""
    msg = _parse(message)
    h = msg.header
    return bytes(Message.new_with_compiled_instructions(
        h.num_required_signatures, h.num_readonly_signed_accounts,
        h.num_readonly_unsigned_accounts, msg.account_keys, blockhash, msg.instructions))


def assemble(message: bytes, signature: bytes) -> bytes:
    """The wire transaction: the one signature, then the message. Verified before return."""
    msg = _parse(message)
    if len(signature) != Signature.LENGTH or msg.header.num_required_signatures != 1:
        raise BuildError("a transfer carries exactly one 64-byte signature")
    tx = Transaction.populate(msg, [Signature.from_bytes(signature)])
    if not all(tx.verify_with_results()):
        raise BuildError("the signature does not verify over this message")
    return bytes(tx)


def _parse(message: bytes) -> Message:
    try:
        msg = Message.from_bytes(message)
    except ValueError as exc:
        raise ChainDecodeError(f"not a Solana message: {exc}") from None
    if bytes(msg) != message:
        raise ChainDecodeError("not a canonical Solana message (trailing or aliased bytes)")
    return msg
