"""The Bitcoin adapter: the pure builder and decoder behind the common chain interface,
with Bitcoin Core's JSON-RPC for coins, fees and broadcast.

A wallet is one HSM key; its addresses are P2WPKH (or P2TR) children at paths relative
to the key - ``0/i`` to receive, ``1/i`` for change, as in BIP44's last two levels. The
adapter finds the wallet's coins with ``scantxoutset`` over the first ``gap`` addresses
of each chain (a gap limit, as wallets use), and pays change to the first change address
holding nothing. It works against the project's regtest node and a real bitcoind alike.

Every P2WPKH coin it hands out carries its previous transaction, from
``getrawtransaction`` (with the coin's block hash, so a node without ``-txindex`` finds
it): the HSM signs a P2WPKH input only when that transaction proves the coin's amount.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from decimal import Decimal

from chains.base import Chain, Confirmation, Source, TransferRequest, UnsignedTx
from chains.errors import BuildError, ChainError, InsufficientFunds
from hsm_emulator.decoding import Intent, IntentKind, PayloadDecoder, Transfer

from .addresses import script_to_address, validate_address
from .assemble import finalize
from .builder import ChangeKey, Payment, build_psbt, bump_fee
from .coins import Utxo
from .decoder import BitcoinPsbtDecoder
from .ownership import key_fingerprint
from .psbt import Psbt, parse_tx, without_witness
from .rpc import RPC_INVALID_ADDRESS_OR_KEY, BitcoinRpc, RpcCallError, btc_to_sats
from .scripts import ScriptKind, p2tr_script, p2wpkh_script

#: ``(label, path) -> compressed public key``: the HSM's ``public_key`` call.
PublicKeyAt = Callable[[str, str], bytes]
#: Fee rate when the node has no estimate yet (a fresh regtest chain), sat/vB.
FALLBACK_FEE_RATE = 2.0
#: Previous transactions kept (a txid names its bytes for ever), oldest dropped first.
PREV_TX_CACHE = 4096


class BitcoinAdapter:
    chain = Chain.BITCOIN

    def __init__(self, network: str, rpc: BitcoinRpc, public_key_at: PublicKeyAt, *,
                 gap: int = 20, kind: ScriptKind = ScriptKind.P2WPKH,
                 confirmations: int = 1,
                 issued: Callable[[str], int] | None = None) -> None:
        if kind not in (ScriptKind.P2WPKH, ScriptKind.P2TR):
            raise BuildError("the wallet's addresses are P2WPKH or P2TR")
        self.network, self.rpc, self.public_key_at = network, rpc, public_key_at
        self.gap, self.kind, self.depth = gap, kind, confirmations
        #: ``label -> receive addresses handed out``: the scan covers them plus the gap
        self.issued = issued or (lambda _label: 0)
        self.payload_type = BitcoinPsbtDecoder(network).payload_type
        self._prev_txs: dict[str, bytes] = {}
        self._prev_lock = threading.Lock()

    # -- pure parts -------------------------------------------------------------------

    def validate_address(self, address: str) -> str:
        return validate_address(self.network, address)

    def decoders(self) -> Sequence[PayloadDecoder]:
        return [BitcoinPsbtDecoder(self.network)]

    def script_at(self, label: str, path: str) -> bytes:
        pub = self.public_key_at(label, path)
        return p2tr_script(pub) if self.kind is ScriptKind.P2TR else p2wpkh_script(pub)

    def address_at(self, label: str, path: str) -> str:
        return script_to_address(self.network, self.script_at(label, path))

    def assemble(self, unsigned: UnsignedTx, signatures: Sequence[bytes]) -> bytes:
        return finalize(Psbt.parse(unsigned.payload), signatures)

    # -- building (reads coins and fees from the node) ------------------------------

    def coins(self, label: str, *, prev_txs: bool = True) -> list[Utxo]:
        """The wallet's unspent coins among its issued receive addresses plus ``gap``
        more, and the first ``gap`` change paths. P2WPKH coins carry their previous
        transaction, which spending them needs; ``prev_txs=False`` skips fetching it
        (for balances and address scans, which spend nothing)."""
        receive = self.issued(label) + self.gap
        paths = [f"0/{i}" for i in range(receive)] + [f"1/{i}" for i in range(self.gap)]
        by_script = {self.script_at(label, p): p for p in paths}
        scan = self.rpc.scantxoutset([f"raw({s.hex()})" for s in by_script])
        coins = []
        for u in scan.get("unspents", []):
            script = bytes.fromhex(u["scriptPubKey"])
            path = by_script[script]
            coin = Utxo(u["txid"], int(u["vout"]), btc_to_sats(u["amount"]), script,
                        path, self.public_key_at(label, path))
            if prev_txs and coin.kind is ScriptKind.P2WPKH:
                coin = replace(coin, prev_tx=self.prev_tx(coin.txid, u.get("blockhash")))
            coins.append(coin)
        return coins

    def prev_tx(self, txid: str, block_hash: str | None = None) -> bytes:
        """Transaction ``txid`` from the node, without its witness (as a PSBT carries it).
        Checked to hash to ``txid`` before it is kept, so a wrong answer is not cached."""
        with self._prev_lock:
            cached = self._prev_txs.get(txid)
        if cached is not None:
            return cached
        answer = self.rpc.getrawtransaction(txid, False, block_hash)
        try:
            raw = without_witness(bytes.fromhex(answer))
        except (TypeError, ValueError):
            raise BuildError(f"the node's getrawtransaction {txid} is not hex") from None
        if parse_tx(raw).GetTxid()[::-1].hex() != txid:
            raise BuildError(f"the node answered another transaction for {txid}")
        with self._prev_lock:
            if len(self._prev_txs) >= PREV_TX_CACHE:
                del self._prev_txs[next(iter(self._prev_txs))]
            self._prev_txs[txid] = raw
        return raw

    def build_transfer(self, source: Source, request: TransferRequest, *,
                       exclude: frozenset[str] = frozenset()) -> UnsignedTx:
        """``exclude``: outpoints (``txid:vout``) other pending transfers already spend."""
        if request.asset != "BTC":
            raise BuildError(f"asset {request.asset!r} is not on Bitcoin")
        destination = self.validate_address(request.destination)
        coins = [c for c in self.coins(source.label) if f"{c.txid}:{c.vout}" not in exclude]
        if sum(c.amount for c in coins) < request.amount:
            raise InsufficientFunds(f"wallet {source.label} holds less than {request.amount} sat")
        used = {c.path for c in coins}
        change_path = next(f"1/{i}" for i in range(self.gap * 10) if f"1/{i}" not in used)
        change = ChangeKey(change_path, self.public_key_at(source.label, change_path), self.kind)
        fingerprint = key_fingerprint(self.public_key_at(source.label, ""))
        psbt = build_psbt(self.network, coins, [Payment(destination, request.amount)], change,
                          self.estimate_fee(), fingerprint)
        fee = _fee(psbt)
        if request.fee_cap is not None and fee > request.fee_cap:
            raise BuildError(f"fee {fee} sat above the cap {request.fee_cap}")
        intent = Intent("bitcoin", self.network, IntentKind.TRANSFER,
                        (Transfer("BTC", request.amount, destination),), fee, "BTC")
        return UnsignedTx(Chain.BITCOIN, self.network, self.payload_type, psbt.serialize(),
                          intent, request.fee_cap if request.fee_cap is not None else fee * 3)

    def bump(self, unsigned: UnsignedTx, label: str, fee_rate_sat_vb: float) -> UnsignedTx:
        """The same payments at a higher fee rate (BIP125), under the same approvals."""
        fingerprint = key_fingerprint(self.public_key_at(label, ""))
        psbt = bump_fee(Psbt.parse(unsigned.payload), fee_rate_sat_vb, fingerprint)
        intent = Intent(unsigned.intent.chain, unsigned.intent.network, unsigned.intent.kind,
                        unsigned.intent.transfers, _fee(psbt), "BTC")
        return UnsignedTx(unsigned.chain, unsigned.network, unsigned.payload_type,
                          psbt.serialize(), intent, unsigned.fee_cap)

    # -- the node ---------------------------------------------------------------------

    def estimate_fee(self) -> float:
        """sat/vB from ``estimatesmartfee`` (BTC/kvB), or a fallback on a fresh chain."""
        try:
            answer = self.rpc.estimatesmartfee(2)
        except ChainError:
            return FALLBACK_FEE_RATE
        rate = answer.get("feerate")
        if rate is None:
            return FALLBACK_FEE_RATE
        return max(1.0, float(Decimal(str(rate)) * 100_000))

    def broadcast(self, raw: bytes) -> str:
        txid: str = self.rpc.sendrawtransaction(raw.hex())
        return txid

    def confirmation(self, txid: str) -> Confirmation:
        """Depth of ``txid``: 0 while in the mempool, and 0 for a txid the node does not
        know (as the Ethereum and Solana adapters answer); :meth:`known` tells which."""
        try:
            info = self.rpc.getrawtransaction(txid, True)
        except RpcCallError as exc:
            if exc.rpc_code != RPC_INVALID_ADDRESS_OR_KEY:
                raise
            return Confirmation(txid, 0)
        confirmations = int(info.get("confirmations", 0))
        return Confirmation(txid, confirmations, info.get("blockhash"),
                            confirmations >= self.depth)

    def known(self, txid: str) -> bool:
        """Whether the node has ``txid`` in its mempool or a block. A node restarted
        without its mempool forgets a transaction it accepted."""
        try:
            self.rpc.getrawtransaction(txid, False)
        except RpcCallError as exc:
            if exc.rpc_code != RPC_INVALID_ADDRESS_OR_KEY:
                raise
            return False
        return True


def _fee(psbt: Psbt) -> int:
    spent = 0
    for i in range(len(psbt.inputs)):
        utxo = psbt.witness_utxo(i)
        if utxo is None:
            raise BuildError(f"input {i} has no witness_utxo")
        spent += utxo.amount
    return spent - sum(int(o.nValue) for o in psbt.tx.vout)
