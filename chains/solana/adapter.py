"""The Solana :class:`~chains.base.ChainAdapter`: SOL and SPL Token transfers. I/O.

Building fetches a recent blockhash (and, for tokens, the mint's decimals) through
:class:`~chains.solana.client.SolanaRpcClient`, then calls the pure builders in
:mod:`chains.solana.tx`. After an approval hold the broker calls :meth:`refresh` for a
fresh blockhash and passes the new payload to ``Hsm.execute(..., payload=...)`` (see
:mod:`chains.solana.tx` for why a rebuild rather than a durable nonce).

Solana addresses carry no cluster, so a wrong-network address cannot be recognised. The
node can: the adapter compares the node's genesis hash with the configured network's
before building or broadcasting, and a ``localnet`` adapter refuses a public cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from solders.hash import Hash
from solders.pubkey import Pubkey
from solders.token.state import Mint
from solders.transaction import Transaction

from chains.base import Chain, Confirmation, Source, TransferRequest, UnsignedTx
from chains.errors import (
    BroadcastExpired,
    BroadcastRejected,
    BuildError,
    ChainDecodeError,
    ChainError,
    InsufficientFunds,
    InvalidAddress,
)
from chains.solana import spl
from chains.solana.client import SolanaRpcClient
from chains.solana.decoder import NETWORKS, SolanaTxDecoder
from chains.solana.tx import (
    LAMPORTS_PER_SIGNATURE,
    ComputeBudget,
    assemble,
    build_sol_transfer,
    build_spl_transfer,
    refresh_blockhash,
)
from hsm_emulator.decoding import HsmError, Intent, KeyAlgorithm, PayloadDecoder

#: Genesis hashes of the public clusters (https://solana.com/docs/references/clusters).
GENESIS: Final = {
    "mainnet": "5eykt4UsFv8P8NJdTREpY1vzqKqZKvdpKuc147dw2N9d",
    "devnet": "EtWTRABZaYq6iMfeYKouRu166VU2xqa1wcaWoxPkrZBG",
    "testnet": "4uhcVJyU9pJkvQyS88uRDiswHXSCkY3zQawwpjk2NsNY",
}
#: Compute units requested when a priority price is set. Measured on LiteSVM: a System
#: transfer with its budget instructions 450; ATA creation + TransferChecked ~14k (older
#: ATA program builds take up to ~35k). The unused part of a limit is still paid for.
UNIT_LIMIT: Final = {"SOL": 1_000, "SPL": 60_000}
#: "Finalized" means rooted: report the maximum lockout depth as its confirmations.
FINALIZED_CONFIRMATIONS: Final = 32
_BASE58_KEY_CHARS: Final = range(32, 45)
#: The node's words for a transaction over a blockhash it does not hold (expired, or not
#: yet seen by a lagging node): ``TransactionError::BlockhashNotFound``, as the dev node
#: names it and as a validator's preflight message words it.
_BLOCKHASH_NOT_FOUND: Final = ("BlockhashNotFound", "Blockhash not found")


class SolanaAdapter:
    chain = Chain.SOLANA

    def __init__(self, network: str, client: SolanaRpcClient, *, unit_price: int = 0) -> None:
        if network not in NETWORKS:
            raise ValueError(f"Solana network must be one of {NETWORKS}")
        self.network = network
        self.client = client
        self.unit_price = unit_price  #: micro-lamports per compute unit (0: no priority fee)
        self._decoder = SolanaTxDecoder(network)
        self._node_checked = False

    def validate_address(self, address: str) -> str:
        """A base58 32-byte public key, in its one canonical spelling."""
        if not isinstance(address, str) or not address.isascii() or (
                len(address) not in _BASE58_KEY_CHARS):
            raise InvalidAddress("a Solana address is 32-44 base58 characters")
        try:
            key = Pubkey.from_string(address)
        except ValueError as exc:
            raise InvalidAddress(f"not a Solana address: {exc}") from None
        if str(key) != address:
            raise InvalidAddress("not a canonical base58 Solana address")
        return address

    def decoders(self) -> Sequence[PayloadDecoder]:
        return [self._decoder]

    # -- building ---------------------------------------------------------------------

    def build_transfer(self, source: Source, request: TransferRequest) -> UnsignedTx:
        payer = self._payer(source)
        destination = Pubkey.from_string(self.validate_address(request.destination))
        self._check_node()
        recent = self.client.latest_blockhash()
        blockhash = Hash.from_string(recent.blockhash)
        if request.asset == "SOL":
            budget = self._budget("SOL")
            self._check_sol(payer, destination, request.amount, budget.fee())
            payload = build_sol_transfer(payer, destination, request.amount, blockhash, budget)
        elif request.asset.startswith("SPL:"):
            budget = self._budget("SPL")
            mint = Pubkey.from_string(self.validate_address(request.asset[4:]))
            decimals = self._decimals(mint)
            self._check_spl(payer, mint, request.amount, budget.fee())
            payload = build_spl_transfer(payer, mint, decimals, destination, request.amount,
                                         blockhash, budget)
        else:
            raise BuildError(f"unsupported Solana asset {request.asset!r}: SOL or SPL:<mint>")
        fee = budget.fee()
        if request.fee_cap is not None and fee > request.fee_cap:
            raise BuildError(f"the fee {fee} lamports exceeds the cap {request.fee_cap}")
        return UnsignedTx(self.chain, self.network, self._decoder.payload_type, payload,
                          self._own_intent(payload, source),
                          fee if request.fee_cap is None else request.fee_cap,
                          {"recentBlockhash": recent.blockhash,
                           "lastValidBlockHeight": str(recent.last_valid_block_height)})

    def refresh(self, unsigned: UnsignedTx) -> UnsignedTx:
        """The same transfer over a fresh blockhash, for ``Hsm.execute(payload=...)``."""
        recent = self.client.latest_blockhash()
        payload = refresh_blockhash(unsigned.payload, Hash.from_string(recent.blockhash))
        details = {**unsigned.details, "recentBlockhash": recent.blockhash,
                   "lastValidBlockHeight": str(recent.last_valid_block_height)}
        return UnsignedTx(unsigned.chain, unsigned.network, unsigned.payload_type, payload,
                          unsigned.intent, unsigned.fee_cap, details)

    def _payer(self, source: Source) -> Pubkey:
        if source.path:
            raise BuildError("a Solana wallet is the HSM key itself: no derivation path")
        if len(source.public_key) != 32:
            raise BuildError("a Solana source is a 32-byte Ed25519 public key")
        return Pubkey.from_bytes(source.public_key)

    def _budget(self, kind: str) -> ComputeBudget:
        if not self.unit_price:
            return ComputeBudget()
        return ComputeBudget(unit_limit=UNIT_LIMIT[kind], unit_price=self.unit_price)

    def _decimals(self, mint: Pubkey) -> int:
        info = self.client.account_info(str(mint))
        if info is None or info.owner != str(spl.TOKEN_PROGRAM_ID):
            raise BuildError(f"{mint} is not an SPL Token mint (Token-2022 is not supported)")
        try:
            return int(Mint.from_bytes(info.data).decimals)
        except ValueError:
            raise BuildError(f"{mint} is not an SPL Token mint") from None

    def _check_sol(self, payer: Pubkey, dest: Pubkey, lamports: int, fee: int) -> None:
        if self.client.balance(str(payer)) < lamports + fee:
            raise InsufficientFunds(f"{payer} holds less than {lamports} + fee {fee} lamports")
        if self.client.balance(str(dest)) == 0 and (
                lamports < self.client.minimum_balance_for_rent_exemption(0)):
            raise BuildError("a new account must receive at least the rent-exempt minimum")

    def _check_spl(self, payer: Pubkey, mint: Pubkey, amount: int, fee: int) -> None:
        held = self.client.token_balance(str(spl.associated_token_address(payer, mint)))
        if held is None or held < amount:
            raise InsufficientFunds(f"{payer} holds {held or 0} of {mint}, needs {amount}")
        rent = self.client.minimum_balance_for_rent_exemption(spl.TOKEN_ACCOUNT_LEN)
        if self.client.balance(str(payer)) < fee + rent:
            raise InsufficientFunds(f"{payer} needs {fee + rent} lamports for fee and rent")

    def _own_intent(self, payload: bytes, source: Source) -> Intent:
        try:
            return self._decoder.decode(payload, _PublicKeyView(source.public_key))
        except HsmError as exc:
            raise BuildError(f"built a payload the decoder refuses: {exc.reason}") from None

    def _check_node(self) -> None:
        """Refuse a node of another cluster (once per adapter)."""
        if self._node_checked:
            return
        genesis = self.client.genesis_hash()
        expected = GENESIS.get(self.network)
        if (expected is not None and genesis != expected) or (
                expected is None and genesis in GENESIS.values()):
            raise ChainError(f"the node's genesis {genesis} is not {self.network}'s")
        self._node_checked = True

    # -- signing, sending ---------------------------------------------------------------

    def assemble(self, unsigned: UnsignedTx, signatures: Sequence[bytes]) -> bytes:
        if len(signatures) != 1:
            raise BuildError("a Solana transfer carries exactly one signature")
        return assemble(unsigned.payload, signatures[0])

    def broadcast(self, raw: bytes) -> str:
        """Send; the transaction id is its first signature. Sending the same bytes again
        returns the same id (the node refuses the duplicate; its status is checked - also
        when the refusal is for its blockhash: sent before a crash, it may have landed).
        A refusal for an unknown blockhash is :class:`~chains.errors.BroadcastExpired`."""
        txid = transaction_id(raw)
        self._check_node()
        try:
            sent = self.client.send_transaction(raw)
        except BroadcastRejected as exc:
            if self.landed(txid):
                return txid
            if any(words in exc.reason for words in _BLOCKHASH_NOT_FOUND):
                raise BroadcastExpired(exc.reason) from None
            raise
        if sent != txid:
            raise ChainError(f"the node reports signature {sent}, expected {txid}")
        return txid

    def landed(self, txid: str) -> bool:
        """Whether the node knows ``txid`` at all (history searched; failed ones too)."""
        return self.client.signature_statuses([txid])[0] is not None

    def expired(self, raw: bytes, last_valid_height: int | None) -> bool:
        """Whether the signed transaction ``raw`` provably can never land, per the node:
        its blockhash is gone - the node's block height is past ``last_valid_height``
        (recorded when it was built), or, with no height recorded, the node no longer
        finds it valid - *and then* its signature is unknown. In that order: a
        transaction lands only while its blockhash is valid, so a signature unknown after
        the blockhash went can never appear; asked the other way round, it could land
        between the two answers. (One call for the blockhash, not both: a poll of an
        unconfirmed transfer costs one call more than before, not two.)"""
        try:
            tx = Transaction.from_bytes(raw)
        except ValueError as exc:
            raise ChainDecodeError(f"not a Solana transaction: {exc}") from None
        blockhash = str(tx.message.recent_blockhash)
        if last_valid_height is not None:
            gone = self.client.block_height() > last_valid_height
        else:
            gone = not self.client.blockhash_valid(blockhash)
        return gone and not self.landed(transaction_id(raw))

    def confirmation(self, txid: str) -> Confirmation:
        """Status of ``txid``; a transaction that landed but failed raises
        :class:`~chains.errors.BroadcastRejected` (its fee is spent, the transfer is not)."""
        status = self.client.signature_statuses([txid])[0]
        if status is None:
            return Confirmation(txid, 0)
        if status.err is not None:
            raise BroadcastRejected(f"{txid} failed on chain: {status.err}")
        if status.confirmation_status == "finalized":
            confirmations = FINALIZED_CONFIRMATIONS
        else:
            confirmations = max(1, int(status.confirmations or 0))
        return Confirmation(txid, confirmations, None, included=True)

    def estimate_fee(self) -> int:
        """Lamports per signature (the base fee; priority fees come from ``unit_price``)."""
        return LAMPORTS_PER_SIGNATURE

    def balance(self, address: str, asset: str = "SOL") -> int:
        """``address``'s balance of ``asset`` in base units (SPL: its associated account)."""
        owner = self.validate_address(address)
        if asset == "SOL":
            return self.client.balance(owner)
        if not asset.startswith("SPL:"):
            raise BuildError(f"unsupported Solana asset {asset!r}")
        mint = Pubkey.from_string(self.validate_address(asset[4:]))
        ata = spl.associated_token_address(Pubkey.from_string(owner), mint)
        return self.client.token_balance(str(ata)) or 0


def transaction_id(raw: bytes) -> str:
    """The first signature (base58) of a wire transaction: Solana's transaction id."""
    try:
        tx = Transaction.from_bytes(raw)
    except ValueError as exc:
        raise ChainDecodeError(f"not a Solana transaction: {exc}") from None
    if not tx.signatures or bytes(tx) != raw:
        raise ChainDecodeError("not a canonical signed Solana transaction")
    return str(tx.signatures[0])


class _PublicKeyView:
    """A KeyView over a bare public key: lets the adapter run the HSM's own decoder."""

    algorithm = KeyAlgorithm.ED25519
    fingerprint = b""

    def __init__(self, public_key: bytes) -> None:
        self._public_key = public_key

    def public_key(self, path: str = "") -> bytes:
        if path:
            raise BuildError("a Solana wallet is the HSM key itself: no derivation path")
        return self._public_key
