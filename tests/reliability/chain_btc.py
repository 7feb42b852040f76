"""Bitcoin's invariants for the kill loop, from the regtest node's blocks and mempool.

The wallet's coins are followed from its funding (coinbase outputs to its address)
through every mined transaction that spends one of them; a wallet transaction's outputs
other than its transfer's payment are change and join the coins.

* each coin spent once: by one mined transaction, and signed into one transfer's
  transaction only (two transfers signed over one coin: one of them can never land);
* no transaction signed twice for one transfer (the HSM's count is in
  :mod:`.transfer_checks`); each mined wallet transaction is exactly one broadcast
  transfer's txid, paying its destination its amount once; nothing else of the wallet's
  waits in the mempool;
* the money: funded - unspent coins == the transfers mined + their fees (inputs - outputs).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from chains.bitcoin.rpc import BitcoinRpc

from .lanes import Funding
from .transfer_checks import Snapshot
from .transfers import MINED, Transfer


def _sats(value: Any) -> int:
    return int(Decimal(str(value)) * 100_000_000)


@dataclass
class BlockView:
    """The wallet's coins and transactions, read block by block once."""

    rpc: BitcoinRpc
    address: str
    height: int = -1
    coins: dict[str, int] = field(default_factory=dict)  #: "txid:n" -> sats, ever held
    spent_by: dict[str, list[str]] = field(default_factory=dict)  #: coin -> spending txids
    txs: dict[str, dict[str, Any]] = field(default_factory=dict)  #: wallet txs by txid
    paid: Counter[str] = field(default_factory=Counter)  #: address -> sats, every output
    funded: int = 0

    def refresh(self, destinations: dict[str, str]) -> None:
        """``destinations``: txid -> the destination its transfer pays (from the broker)."""
        top = int(self.rpc.getblockcount())
        for h in range(self.height + 1, top + 1):
            block = self.rpc.call("getblock", self.rpc.call("getblockhash", h), 2)
            for tx in block["tx"]:
                self._take(tx, destinations)
            self.height = h

    def _take(self, tx: dict[str, Any], destinations: dict[str, str]) -> None:
        txid, outs = tx["txid"], tx["vout"]
        for o in outs:
            self.paid[str(o["scriptPubKey"].get("address", ""))] += _sats(o["value"])
        if "coinbase" in tx["vin"][0]:
            for o in outs:
                if o["scriptPubKey"].get("address") == self.address:
                    self.coins[f"{txid}:{o['n']}"] = _sats(o["value"])
                    self.funded += _sats(o["value"])
            return
        spends = [f"{i['txid']}:{i['vout']}" for i in tx["vin"]]
        if not any(c in self.coins for c in spends):
            return
        for c in spends:
            self.spent_by.setdefault(c, []).append(txid)
        self.txs[txid] = {"spends": spends, "fee": _sats(tx["fee"]), "outputs": [
            (str(o["scriptPubKey"].get("address", "")), _sats(o["value"])) for o in outs]}
        pays = destinations.get(txid)
        for n, o in enumerate(outs):
            if o["scriptPubKey"].get("address") != pays:
                self.coins[f"{txid}:{n}"] = _sats(o["value"])  # change

    def unspent(self) -> int:
        return sum(v for c, v in self.coins.items() if c not in self.spent_by)


class BtcChecks:
    def __init__(self, rpc: BitcoinRpc, funding: Funding) -> None:
        self.funding = funding
        self.view = BlockView(rpc, str(funding.wallet["address"]))

    def __call__(self, snap: Snapshot, items: list[Transfer]) -> list[str]:
        rows = snap.of(self.funding.wallet["id"])
        mined_rows = [r for r in rows if r["state"] in MINED]
        self.view.refresh({str(r["txid"]): str(r["destination"]) for r in rows if r["txid"]})
        v = self._coins(rows) + self._transactions(mined_rows)
        v += self._destinations(rows, items) + self._money(mined_rows)
        return v

    def _coins(self, rows: list[dict[str, Any]]) -> list[str]:
        """Each coin spent by one mined transaction, and signed into one transfer's."""
        v = [f"btc: coin {c} spent by {len(t)} mined transactions"
             for c, t in self.view.spent_by.items() if len(t) > 1]
        signed = Counter(c for r in rows if r["raw_b64"] for c in set(r["inputs"] or ()))
        v += [f"btc: coin {c} signed into {n} transfers' transactions"
              for c, n in signed.items() if n > 1]
        return v

    def _transactions(self, mined_rows: list[dict[str, Any]]) -> list[str]:
        v = []
        view = self.view
        txids = Counter(str(r["txid"]) for r in mined_rows)
        for r in mined_rows:
            txid = str(r["txid"])
            tx = view.txs.get(txid)
            if tx is None or txids[txid] != 1:
                v.append(f"btc: transfer {r['id']} ({r['state']}): txid {txid[:14]} "
                         f"{'not mined' if tx is None else 'recorded by several'}")
                continue
            to_dest = sum(a for addr, a in tx["outputs"] if addr == r["destination"])
            if to_dest != int(r["amount"]):
                v.append(f"btc: transfer {r['id']}: pays {to_dest} to its destination, "
                         f"recorded {r['amount']}")
            if sorted(tx["spends"]) != sorted(r["inputs"] or ()):
                v.append(f"btc: transfer {r['id']}: spends {tx['spends']}, recorded "
                         f"{r['inputs']}")
        v += [f"btc: mined transaction {t[:14]} spends the wallet's coins, no broadcast "
              "transfer's" for t in view.txs if t not in txids]
        v += [f"btc: {t[:14]} waits in the mempool, no broadcast transfer's"
              for t in self._ours() if t not in txids]
        return v

    def _ours(self) -> set[str]:
        """Mempool transactions spending the wallet's coins."""
        out = set()
        for t in self.view.rpc.call("getrawmempool"):
            tx = self.view.rpc.call("getrawtransaction", t, True)
            if any(f"{i.get('txid')}:{i.get('vout')}" in self.view.coins for i in tx["vin"]):
                out.add(t)
        return out

    def _destinations(self, rows: list[dict[str, Any]], items: list[Transfer]) -> list[str]:
        by_dest = {str(r["destination"]): r for r in rows}
        v = []
        for x in items:
            row = by_dest.get(x.destination)
            want = int(row["amount"]) if row is not None and row["state"] in MINED else 0
            got = self.view.paid[x.destination]
            if got != want:
                v.append(f"btc {x.kind} {x.transfer_id}: destination received {got} sats, "
                         f"expected {want}")
        return v

    def _money(self, mined_rows: list[dict[str, Any]]) -> list[str]:
        view = self.view
        sent = sum(int(r["amount"]) for r in mined_rows)
        fees = sum(view.txs[str(r["txid"])]["fee"] for r in mined_rows
                   if str(r["txid"]) in view.txs)
        debit = view.funded - view.unspent()
        if debit != sent + fees:
            return [f"btc: coins spent {debit} sats, transfers {sent} + fees {fees} = "
                    f"{sent + fees}"]
        return []

