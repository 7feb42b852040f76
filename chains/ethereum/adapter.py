"""The Ethereum :class:`~chains.base.ChainAdapter`: build, assemble, broadcast, confirm.

Building is where the adapter meets state: it reserves the source account's next nonce
(:mod:`chains.ethereum.nonces`), quotes fees from the node, and - for tokens - estimates
gas. Everything it builds is an EIP-1559 transaction; the HSM decodes the payload
itself, so nothing here is trusted by the signer. ``broadcast`` commits the nonce;
:meth:`EthereumAdapter.release` gives it back when a request is refused or cancelled;
:meth:`EthereumAdapter.replace` re-builds a stuck transfer in the same nonce slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from chains.base import Chain, Confirmation, Source, TransferRequest, UnsignedTx
from chains.errors import BuildError, ChainError
from hsm_emulator.decoding import PayloadDecoder

from .client import EthClient
from .decoder import EthereumTxDecoder, intent_of, network_of
from .eip712 import Eip712Decoder
from .encoding import address_bytes, address_of_public_key, checksum
from .erc20 import encode_transfer
from .fees import replacement
from .nonces import COMMITTED, NonceStore, Reservation
from .parse import decode, decode_unsigned
from .tx import Eip1559Tx, assemble, serialize_unsigned

#: A plain ETH transfer to an account costs exactly this (yellow paper G_transaction).
ETH_TRANSFER_GAS = 21_000
#: The most gas a token transfer may take before the build refuses (a hostile token).
TOKEN_TRANSFER_GAS_CAP = 200_000


@dataclass(frozen=True)
class Built:
    """What :meth:`EthereumAdapter.build_transfer` reserved, kept by the broker."""

    unsigned: UnsignedTx
    reservation: Reservation


class EthereumAdapter:
    chain = Chain.ETHEREUM

    def __init__(self, chain_id: int, client: EthClient, nonces: NonceStore) -> None:
        self.chain_id = chain_id
        self.network = network_of(chain_id)
        self.client = client
        self.nonces = nonces
        self._reconciled: set[str] = set()
        self._reservations: dict[bytes, Reservation] = {}

    def validate_address(self, address: str) -> str:
        """EIP-55 spelling; the same 20 bytes on every EVM chain, so no network check."""
        return checksum(address_bytes(address))

    def decoders(self) -> Sequence[PayloadDecoder]:
        return [EthereumTxDecoder(self.chain_id), Eip712Decoder(self.chain_id)]

    # -- build ------------------------------------------------------------------------

    def build_with_nonce(self, source: Source, request: TransferRequest,
                         nonce: int) -> UnsignedTx:
        """Build in a nonce slot the caller allocated itself (no reservation here): for
        a broker that allocates nonces at release time, in its own database."""
        destination = address_bytes(request.destination)
        sender = self._sender(source)
        to, value, data, gas = self._call(sender, request, destination)
        fees = self.client.fee_quote()
        tx = Eip1559Tx(self.chain_id, nonce, fees.priority_fee, fees.max_fee, gas, to, value,
                       data)
        cost = tx.max_fee  # gasLimit * maxFeePerGas: the most it can cost
        if request.fee_cap is not None and cost > request.fee_cap:
            raise BuildError(f"fee up to {cost} wei exceeds the cap {request.fee_cap}")
        payload = serialize_unsigned(tx)
        return UnsignedTx(Chain.ETHEREUM, self.network, f"ETHEREUM_TX:{self.network}",
                          payload, intent_of(tx, self.network, sender),
                          request.fee_cap if request.fee_cap is not None else cost,
                          {"from": sender, "nonce": str(tx.nonce)})

    def send(self, raw: bytes) -> str:
        """Broadcast without the adapter's nonce store (the caller keeps nonces). Sending
        the same bytes again returns the same hash."""
        return self.client.send_raw_transaction(raw)

    def build_transfer(self, source: Source, request: TransferRequest) -> UnsignedTx:
        destination = address_bytes(request.destination)  # refused before anything else
        sender = self._sender(source)
        to, value, data, gas = self._call(sender, request, destination)
        fees = self.client.fee_quote()
        reservation = self._reserve(sender)
        try:
            tx = Eip1559Tx(self.chain_id, reservation.nonce, fees.priority_fee, fees.max_fee,
                           gas, to, value, data)
            if request.fee_cap is not None and tx.max_fee > request.fee_cap:
                raise BuildError(f"fee up to {tx.max_fee} wei exceeds the cap "
                                 f"{request.fee_cap}")
        except ChainError:
            self.nonces.release(reservation)
            raise
        return self._unsigned(tx, sender, request.fee_cap, reservation)

    def _sender(self, source: Source) -> str:
        derived = address_of_public_key(source.public_key)
        if source.address and self.validate_address(source.address) != derived:
            raise BuildError("source address does not belong to its public key")
        return derived

    def _call(self, sender: str, request: TransferRequest, destination: bytes,
              ) -> tuple[bytes, int, bytes, int]:
        if request.amount <= 0:
            raise BuildError("amount must be positive")
        if request.asset == "ETH":
            return destination, request.amount, b"", ETH_TRANSFER_GAS
        if request.asset.startswith("ERC20:"):
            token = address_bytes(request.asset[len("ERC20:"):])
            if request.asset != "ERC20:0x" + token.hex():
                raise BuildError("token asset ids are ERC20:<lower-case 0x address>")
            data = encode_transfer(destination, request.amount)
            gas = self.client.estimate_gas(sender, checksum(token), data, 0,
                                           cap=TOKEN_TRANSFER_GAS_CAP)
            return token, 0, data, gas
        raise BuildError(f"unsupported asset {request.asset!r} on {self.network}")

    def _reserve(self, sender: str) -> Reservation:
        if sender not in self._reconciled:
            self.nonces.reconcile(self.chain_id, sender, self.client.pending_nonce(sender))
            self._reconciled.add(sender)
        return self.nonces.reserve(self.chain_id, sender)

    def _unsigned(self, tx: Eip1559Tx, sender: str, fee_cap: int | None,
                  reservation: Reservation) -> UnsignedTx:
        payload = serialize_unsigned(tx)
        self._reservations[payload] = reservation
        return UnsignedTx(Chain.ETHEREUM, self.network, f"ETHEREUM_TX:{self.network}",
                          payload, intent_of(tx, self.network, sender),
                          fee_cap if fee_cap is not None else tx.max_fee,
                          {"from": sender, "nonce": str(tx.nonce)})

    def replace(self, unsigned: UnsignedTx) -> UnsignedTx:
        """The same transfer in the same nonce slot with fees bumped >= 10% (stuck tx)."""
        tx = decode_unsigned(unsigned.payload)
        if not isinstance(tx, Eip1559Tx):
            raise BuildError("only EIP-1559 transactions are replaced here")
        sender = unsigned.details["from"]
        bumped = replacement(tx, self.client.fee_quote())
        reservation = self.nonces.reserve_replacement(self.chain_id, sender, tx.nonce)
        return self._unsigned(bumped, sender, max(unsigned.fee_cap, bumped.max_fee),
                              reservation)

    def release(self, unsigned: UnsignedTx) -> None:
        """The request was refused or cancelled before broadcast: free its nonce."""
        reservation = self._reservations.pop(unsigned.payload, None)
        if reservation is not None:
            self.nonces.release(reservation)

    # -- sign, send, confirm ----------------------------------------------------------

    def assemble(self, unsigned: UnsignedTx, signatures: Sequence[bytes]) -> bytes:
        """Splice the HSM's one signature in; refuse it unless it recovers the sender."""
        if len(signatures) != 1:
            raise BuildError(f"an Ethereum transaction takes one signature, got "
                             f"{len(signatures)}")
        raw = assemble(decode_unsigned(unsigned.payload), signatures[0])
        sender = unsigned.details.get("from")
        if sender and decode(raw).sender() != sender:
            raise BuildError("the signature is not the source account's")
        return raw

    def broadcast(self, raw: bytes) -> str:
        """Send, then record the transaction in its nonce slot. Idempotent."""
        txid = self.client.send_raw_transaction(raw)
        decoded = decode(raw)
        reservation = self._reservations.pop(serialize_unsigned(decoded.tx), None)
        if reservation is None:  # built by another process or before a restart
            sender, nonce = decoded.sender().lower(), decoded.tx.nonce
            state, _ = self.nonces.slot(self.chain_id, sender, nonce)
            reservation = Reservation(self.chain_id, sender, nonce,
                                      replacement=state == COMMITTED)
        self.nonces.commit(reservation, txid)
        return txid

    def confirmation(self, txid: str) -> Confirmation:
        return self.client.confirmation(txid)

    def estimate_fee(self) -> int:
        """maxFeePerGas a transfer built now would carry (wei per gas)."""
        return self.client.fee_quote().max_fee
