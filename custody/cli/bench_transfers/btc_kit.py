"""``custody bench transfers`` on Bitcoin regtest: coins, destinations, the baseline.

Bitcoin locks a transfer's coins at request, so ``count`` transfers in flight need
``count`` confirmed coins: the wallet gets one block reward per transfer (mined to a
deposit address the API hands out) and 100 blocks more for coinbase maturity. The
baseline does the same for a plain secp256k1 key and builds its transactions with the
project's own builder (:func:`chains.bitcoin.builder.build_psbt`), signed with
``coincurve`` over the BIP143 digest and finalized as the broker does.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import coincurve

from chains.bitcoin.addresses import address_to_script, script_to_address
from chains.bitcoin.assemble import finalize
from chains.bitcoin.builder import ChangeKey, Payment, build_psbt
from chains.bitcoin.coins import Utxo
from chains.bitcoin.ownership import key_fingerprint
from chains.bitcoin.psbt import without_witness
from chains.bitcoin.rpc import BitcoinRpc, btc_to_sats
from chains.bitcoin.scripts import p2wpkh_script
from chains.bitcoin.sighash import p2wpkh_sighash

from ...localnets import LocalNets
from .base import NewAddress, Presigned

NETWORK = "regtest"
#: Coinbase outputs mature after this many blocks (consensus).
MATURITY = 100
#: sat/vB for the baseline's transactions (what the adapter falls back to on regtest).
FEE_RATE = 2.0


class BitcoinKit:
    chain, symbol, network = "bitcoin", "BTC", NETWORK
    amount, base = "0.001", 100_000  #: per transfer, in BTC and in sat

    def __init__(self, nets: LocalNets) -> None:
        assert nets.btc_rpc is not None
        self.nets, self.rpc = nets, nets.btc_rpc

    def fund(self, wallet: dict[str, Any], count: int, new_address: NewAddress) -> None:
        """One block reward per transfer to a deposit address, then maturity."""
        self.nets.mine(count, new_address(wallet["id"]))
        self.nets.mine(MATURITY)

    def destinations(self, count: int) -> list[str]:
        return [script_to_address(NETWORK, b"\x00\x14" + os.urandom(20)) for _ in range(count)]

    def presigned(self, count: int) -> Presigned:
        """One transaction per coin of a fresh key: the payment and change back to it."""
        key = coincurve.PrivateKey()
        pub = key.public_key.format()
        script = p2wpkh_script(pub)
        self.nets.mine(count, script_to_address(NETWORK, script))
        self.nets.mine(MATURITY)
        change = ChangeKey("1/0", pub)
        raws = []
        for coin, to in zip(self._coins(script, pub), self.destinations(count), strict=False):
            psbt = build_psbt(NETWORK, [coin], [Payment(to, self.base)], change, FEE_RATE,
                              key_fingerprint(pub))
            digest = p2wpkh_sighash(psbt.tx, 0, pub, coin.amount)
            raws.append(finalize(psbt, [key.sign_recoverable(digest, hasher=None)]))
        send: Callable[[bytes], str] = lambda raw: self.rpc.sendrawtransaction(  # noqa: E731
            raw.hex())
        return Presigned(raws, send)

    def _coins(self, script: bytes, pub: bytes) -> list[Utxo]:
        found = self.rpc.scantxoutset([f"raw({script.hex()})"])["unspents"]
        return [Utxo(u["txid"], int(u["vout"]), btc_to_sats(u["amount"]), script, "0/0", pub,
                     without_witness(bytes.fromhex(self.rpc.getrawtransaction(
                         u["txid"], False, u["blockhash"])))) for u in found]

    def landed(self, destinations: list[str]) -> int:
        """Destinations whose confirmed coins hold exactly one transfer's amount."""
        return _landed(self.rpc, destinations, self.base)


def _landed(rpc: BitcoinRpc, destinations: list[str], amount: int) -> int:
    scripts = {address_to_script(NETWORK, d).hex(): 0 for d in destinations}
    for u in rpc.scantxoutset([f"raw({s})" for s in scripts])["unspents"]:
        scripts[u["scriptPubKey"]] += btc_to_sats(u["amount"])
    return sum(v == amount for v in scripts.values())
