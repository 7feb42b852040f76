"""``SOLANA_TX:<network>``: the HSM's decoder for Solana transfer messages. Pure, no I/O.

The payload is a serialized legacy ``Message`` - exactly the bytes an Ed25519 transaction
signature covers - so what the HSM decodes is what it signs.

What is refused (:class:`~hsm_emulator.decoding.DecodeError`), whatever the instructions:

* bytes that do not parse, or parse with trailing / non-canonical bytes (re-serialized and
  compared), or fail the runtime's sanitize checks (indices out of range), duplicate
  account keys, versioned (v0) messages - address lookup tables would hide accounts;
* anything but exactly one required signature, or a fee payer that is not the signing
  key (``owner.public_key("")``): the HSM signs only as the paying wallet, alone;
* ComputeBudget instructions other than one ``SetComputeUnitLimit`` and one
  ``SetComputeUnitPrice``, or ones carrying accounts: they set the fee, which the HSM
  must be able to bound.

What is a **transfer** (``IntentKind.TRANSFER``): the message is byte-for-byte what
:mod:`chains.solana.tx` builds from the decoded parameters with the signing key as
payer and source - [limit] [price] then either one System ``Transfer`` (asset ``SOL``,
destination the receiving account) or ``CreateIdempotent`` + ``TransferChecked`` (asset
``SPL:<mint>``, destination the receiving *wallet*: the owner of the destination ATA,
what a desk allowlists; the ATA program fails the transaction if that account exists with
another owner). Rebuilding and comparing proves every account, flag and order, including
that the source (and token owner) is the signing key.

Everything else that passes the structural checks is ``IntentKind.CONTRACT_CALL``
(opaque): two System transfers, a memo, SPL ``Approve`` / ``SetAuthority`` /
``CloseAccount`` / unchecked ``Transfer``, Token-2022, any other program. Its ``calls``
are the programs its instructions invoke, sorted (ComputeBudget left out: its
instructions are parsed exactly and counted in the fee), so allowlists apply to them; a
conditioned token releases it only if it names ``contract_call``. What it visibly costs
is still counted: each top-level System ``Transfer`` from the key is listed as a transfer
and each ATA create it funds as rent - a floor for velocity, not a full account.

=======================================  =============  ==================================
message (after [limit] [price])          kind           transfers / calls / rent
=======================================  =============  ==================================
System ``Transfer`` (builder's shape)    TRANSFER       ``("SOL", lamports, to)``; rent 0
``CreateIdempotent`` +                   TRANSFER       ``("SPL:<mint>", amount,
``TransferChecked`` (builder's shape)                   wallet)``; rent 2,039,280
anything else                            CONTRACT_CALL  System transfers from the key;
                                                        ``calls`` = programs; rent =
                                                        2,039,280 x ATA creates it funds
=======================================  =============  ==================================

``fee`` is the most the runtime can charge (:func:`chains.solana.tx.message_fee`): 5,000
lamports per signature, precompile signatures included, plus the priority fee over the
message's clamped unit limit or, without one, the runtime's default for its instructions.
``rent`` is what the key's account can pay beyond the fee to fund accounts: a token
account's rent-exempt deposit, :data:`chains.solana.spl.ATA_RENT_LAMPORTS` (2,039,280
lamports for 165 bytes), paid only if the destination account does not exist yet - the
maximum, counted always. ``fee_asset`` is ``SOL`` for both.

Solana addresses and messages carry no cluster: the network is the decoder's
configuration (the payload type names it) and the recent blockhash ties the signed
transaction to the cluster it was fetched from.
"""

from __future__ import annotations

from typing import Final

from solders.hash import Hash
from solders.message import Message
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.system_program import ID as SYSTEM_PROGRAM_ID
from solders.transaction import Transaction

from chains.errors import BuildError
from chains.solana import spl
from chains.solana.tx import (
    COMPUTE_BUDGET_ID,
    ComputeBudget,
    build_sol_transfer,
    build_spl_transfer,
    message_fee,
    parse_compute_budget,
)
from hsm_emulator.decoding import (
    DecodeError,
    Intent,
    IntentKind,
    KeyAlgorithm,
    KeyView,
    SignItem,
    SignScheme,
    Transfer,
)

#: Intent.network values, one per cluster.
NETWORKS: Final = ("mainnet", "devnet", "testnet", "localnet")
PAYLOAD_PREFIX: Final = "SOLANA_TX"
_SYSTEM_TRANSFER: Final = (2).to_bytes(4, "little")  #: SystemInstruction::Transfer tag (u32)


class SolanaTxDecoder:
    """Decodes one network's ``SOLANA_TX`` payloads; see the module docstring."""

    def __init__(self, network: str) -> None:
        if network not in NETWORKS:
            raise ValueError(f"Solana network must be one of {NETWORKS}")
        self.network = network
        self.payload_type = f"{PAYLOAD_PREFIX}:{network}"

    def decode(self, payload: bytes, owner: KeyView) -> Intent:
        return self.prepare(payload, owner)[0]

    def sign_items(self, payload: bytes, owner: KeyView) -> tuple[SignItem, ...]:
        return self.prepare(payload, owner)[1]

    def prepare(self, payload: bytes, owner: KeyView) -> tuple[Intent, tuple[SignItem, ...]]:
        signer = signing_key(owner)
        msg = parse_message(payload, signer)
        budget = compute_budget(msg)
        fee = message_fee(msg, budget)
        transfer, details = _transfer(msg, payload, signer, budget)
        if transfer is None:
            intent = _contract_call(self.network, msg, fee)
        else:
            details["recentBlockhash"] = str(msg.recent_blockhash)
            rent = spl.ATA_RENT_LAMPORTS if transfer.asset != "SOL" else 0
            intent = Intent(chain="solana", network=self.network, kind=IntentKind.TRANSFER,
                            transfers=(transfer,), fee=fee, fee_asset="SOL",
                            details=tuple(sorted(details.items())), rent=rent)
        return intent, (SignItem(SignScheme.ED25519_MESSAGE, payload),)


def signing_key(owner: KeyView) -> Pubkey:
    """The HSM key's own address: the only account this decoder lets it sign as."""
    if owner.algorithm is not KeyAlgorithm.ED25519:
        raise DecodeError("Solana transactions are signed by ED25519 keys")
    return Pubkey.from_bytes(owner.public_key(""))


def parse_message(payload: bytes, signer: Pubkey) -> Message:
    """Strictly parse a legacy message paid for and signed by ``signer`` alone."""
    if not isinstance(payload, bytes):
        raise DecodeError("SOLANA_TX payload must be bytes")
    try:
        msg = Message.from_bytes(payload)
        canonical = bytes(msg) == payload
        Transaction.populate(msg, [Signature.default()] * _required(msg)).sanitize()
    except DecodeError:
        raise
    except Exception as exc:  # solders raises ValueError, SanitizeError and others
        raise DecodeError(f"SOLANA_TX: not a valid Solana message: {exc}") from None
    if not canonical:
        raise DecodeError("SOLANA_TX: trailing or non-canonical bytes")
    if msg.header.num_required_signatures != 1:
        raise DecodeError("SOLANA_TX: exactly one signature (the wallet's) is accepted")
    if msg.account_keys[0] != signer:
        raise DecodeError("SOLANA_TX: the fee payer is not this key")
    if msg.has_duplicates():
        raise DecodeError("SOLANA_TX: duplicate account keys")
    return msg


def _required(msg: Message) -> int:
    n = msg.header.num_required_signatures
    if not 0 < n <= len(msg.account_keys):
        raise DecodeError("SOLANA_TX: bad number of required signatures")
    return n


def compute_budget(msg: Message) -> ComputeBudget:
    """The fee settings of ``msg``: at most one limit and one price, nothing else."""
    found: dict[str, int] = {}
    for ix in msg.instructions:
        if msg.account_keys[ix.program_id_index] != COMPUTE_BUDGET_ID:
            continue
        parsed = parse_compute_budget(bytes(ix.data))
        if parsed is None or bytes(ix.accounts):
            raise DecodeError("SOLANA_TX: only SetComputeUnitLimit/Price budget instructions")
        if parsed[0] in found:
            raise DecodeError(f"SOLANA_TX: duplicate compute unit {parsed[0]}")
        found[parsed[0]] = parsed[1]
    return ComputeBudget(unit_limit=found.get("limit"), unit_price=found.get("price", 0))


def _transfer(msg: Message, payload: bytes, signer: Pubkey, budget: ComputeBudget,
              ) -> tuple[Transfer | None, dict[str, str]]:
    """The transfer, if ``payload`` is exactly what the builder makes of its parameters."""
    keys = msg.account_keys
    body = [ix for ix in msg.instructions if keys[ix.program_id_index] != COMPUTE_BUDGET_ID]
    blockhash: Hash = msg.recent_blockhash
    try:
        if len(body) == 1 and keys[body[0].program_id_index] == SYSTEM_PROGRAM_ID:
            data, accounts = bytes(body[0].data), bytes(body[0].accounts)
            if len(data) != 12 or data[:4] != _SYSTEM_TRANSFER or len(accounts) != 2:
                return None, {}
            dest, lamports = keys[accounts[1]], int.from_bytes(data[4:], "little")
            if build_sol_transfer(signer, dest, lamports, blockhash, budget) == payload:
                return Transfer("SOL", lamports, str(dest)), {}
        elif len(body) == 2:
            return _spl_transfer(msg, payload, signer, budget)
    except BuildError:
        return None, {}
    return None, {}


def _spl_transfer(msg: Message, payload: bytes, signer: Pubkey, budget: ComputeBudget,
                  ) -> tuple[Transfer | None, dict[str, str]]:
    keys = msg.account_keys
    create, move = (ix for ix in msg.instructions
                    if keys[ix.program_id_index] != COMPUTE_BUDGET_ID)
    accounts = bytes(create.accounts)
    parsed = spl.parse_transfer_checked(bytes(move.data))
    if parsed is None or len(accounts) != 6:
        return None, {}
    wallet, mint = keys[accounts[2]], keys[accounts[3]]
    amount, decimals = parsed
    rebuilt = build_spl_transfer(signer, mint, decimals, wallet, amount,
                                 msg.recent_blockhash, budget)
    if rebuilt != payload:
        return None, {}
    return Transfer(f"SPL:{mint}", amount, str(wallet)), {
        "decimals": str(decimals),
        "sourceTokenAccount": str(spl.associated_token_address(signer, mint)),
        "destinationTokenAccount": str(spl.associated_token_address(wallet, mint)),
        "createsDestinationAccount": "if missing; the wallet pays its rent-exempt deposit",
    }


def _contract_call(network: str, msg: Message, fee: int) -> Intent:
    """An opaque message: its programs as ``calls``, and the floor of what it visibly
    costs the key - top-level System transfers from it, ATA creates it funds."""
    keys = msg.account_keys
    payer = keys[0]
    transfers: list[Transfer] = []
    creates = 0
    for ix in msg.instructions:
        program, data, accounts = keys[ix.program_id_index], bytes(ix.data), bytes(ix.accounts)
        # the System program's bincode reading ignores trailing data: >= 12, not == 12
        if (program == SYSTEM_PROGRAM_ID and len(data) >= 12 and data[:4] == _SYSTEM_TRANSFER
                and len(accounts) >= 2 and keys[accounts[0]] == payer):
            transfers.append(Transfer("SOL", int.from_bytes(data[4:12], "little"),
                                      str(keys[accounts[1]])))
        elif (program == spl.ATA_PROGRAM_ID and data in spl.ATA_CREATES and accounts
              and keys[accounts[0]] == payer):
            creates += 1
    programs = sorted({str(keys[ix.program_id_index]) for ix in msg.instructions})
    calls = tuple(p for p in programs if p != str(COMPUTE_BUDGET_ID))
    details = (("instructions", str(len(msg.instructions))), ("programs", ",".join(programs)),
               ("recentBlockhash", str(msg.recent_blockhash)))
    return Intent(chain="solana", network=network, kind=IntentKind.CONTRACT_CALL,
                  transfers=tuple(transfers), fee=fee, fee_asset="SOL", details=details,
                  rent=creates * spl.ATA_RENT_LAMPORTS, calls=calls)
