"""Ethereum's invariants for the kill loop, mostly from the chain (the one record the
broker cannot forge): one wallet sends Ether and an ERC-20 on one nonce sequence.

* the wallet's mined nonces are 0..n-1, each once, n = transfers that reached broadcast;
  nothing waits in the mempool behind a gap;
* each mined transaction is one broadcast transfer's txid, to its destination for its
  amount (an ERC-20 ``transfer(destination, amount)`` call on the token);
* the broker's nonce table agrees: no nonce shared, none reserved by a final transfer,
  none free below the chain's nonce;
* the money: Ether funded - Ether held == the Ether transfers mined + every mined
  transaction's fee (gas used x effective price, from the receipts); tokens funded -
  tokens held == the token transfers mined.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from chains.ethereum.client import EthClient

from .lanes import Funding
from .transfer_checks import Snapshot
from .transfers import FINAL, MINED, Transfer

_TRANSFER = bytes.fromhex("a9059cbb")  #: ERC-20 transfer(address,uint256)


@dataclass
class ChainView:
    """The wallet's transactions as mined, read block by block once (anvil does not
    reorganise); each with its receipt's fee."""

    eth: EthClient
    address: str
    scanned: int = -1
    mined: list[dict[str, Any]] = field(default_factory=list)

    def refresh(self) -> None:
        top = self.eth.block_number()
        me = self.address.lower()
        for n in range(self.scanned + 1, top + 1):
            block = self.eth.w3.eth.get_block(n, full_transactions=True)
            for tx in block["transactions"]:
                if isinstance(tx, bytes) or str(tx["from"]).lower() != me:
                    continue
                txid = "0x" + bytes(tx["hash"]).hex()
                receipt = self.eth.receipt(txid)
                assert receipt is not None, txid
                self.mined.append({
                    "nonce": int(tx["nonce"]), "hash": txid, "to": str(tx["to"]).lower(),
                    "value": int(tx["value"]), "data": bytes(tx["input"]),
                    "fee": receipt.gas_used * receipt.effective_gas_price,
                    "ok": receipt.status == 1})
            self.scanned = n

    def nonce(self, block: str) -> int:
        acct = self.eth.w3.to_checksum_address(self.address)
        return int(self.eth.w3.eth.get_transaction_count(acct, block))  # type: ignore[arg-type]


def paid(tx: dict[str, Any], token: str) -> tuple[str, str, int]:
    """What a mined transaction paid: (symbol, destination, amount)."""
    data = tx["data"]
    if token and tx["to"] == token.lower() and data[:4] == _TRANSFER and len(data) == 68:
        return "TUSD", "0x" + data[16:36].hex(), int.from_bytes(data[36:68], "big")
    return "ETH", tx["to"], tx["value"] if not data else -1


class EthChecks:
    def __init__(self, eth: EthClient, funding: Funding) -> None:
        self.funding = funding
        self.view = ChainView(eth, str(funding.wallet["address"]))

    def __call__(self, snap: Snapshot, items: list[Transfer]) -> list[str]:
        view = self.view
        view.refresh()
        rows = snap.of(self.funding.wallet["id"])
        mined_rows = [r for r in rows if r["state"] in MINED]
        latest, pending = view.nonce("latest"), view.nonce("pending")
        v = self._nonces(view, mined_rows, latest, pending)
        v += self._transactions(view, mined_rows)
        v += self._slots(snap, rows, mined_rows, latest)
        v += self._money(view, mined_rows)
        return v

    def _nonces(self, view: ChainView, mined_rows: list[dict[str, Any]], latest: int,
                pending: int) -> list[str]:
        v = []
        nonces = sorted(tx["nonce"] for tx in view.mined)
        if nonces != list(range(latest)):
            v.append(f"eth: wallet nonces mined {_ranges(nonces)}, account nonce {latest}")
        if pending != latest:
            v.append(f"eth: {pending - latest} transaction(s) wait in the mempool "
                     f"(pending nonce {pending}, mined {latest}): a nonce gap")
        if latest != len(mined_rows):
            v.append(f"eth: account nonce {latest}, but {len(mined_rows)} transfers "
                     "reached broadcast")
        shared = Counter(r["nonce"] for r in mined_rows)
        v += [f"eth: nonce {n} used by {k} transfers" for n, k in shared.items() if k > 1]
        return v

    def _transactions(self, view: ChainView, mined_rows: list[dict[str, Any]]) -> list[str]:
        v = []
        hashes = Counter(tx["hash"] for tx in view.mined)
        by_hash = {tx["hash"]: tx for tx in view.mined}
        txids = Counter(str(r["txid"]).lower() for r in mined_rows)
        for r in mined_rows:
            txid = str(r["txid"]).lower()
            if hashes[txid] != 1 or txids[txid] != 1:
                v.append(f"eth: transfer {r['id']}: txid {txid[:14]} mined {hashes[txid]} "
                         f"times, recorded by {txids[txid]} transfers")
                continue
            tx = by_hash[txid]
            got = (*paid(tx, self.funding.token), tx["nonce"], tx["ok"])
            want = (r["symbol"], str(r["destination"]).lower(), int(r["amount"]), r["nonce"],
                    True)
            if got != want:
                v.append(f"eth: transfer {r['id']}: mined as {got}, recorded as {want}")
        v += [f"eth: transaction {h[:14]} (nonce {by_hash[h]['nonce']}) from the wallet is "
              "no broadcast transfer's" for h in hashes if h not in txids]
        return v

    def _slots(self, snap: Snapshot, rows: list[dict[str, Any]],
               mined_rows: list[dict[str, Any]], latest: int) -> list[str]:
        v = []
        me = self.view.address.lower()
        slots = [s for s in snap.slots if s["address"] == me]
        by_id = {r["id"]: r for r in rows}
        slot_of = {s["transfer_id"]: s for s in slots if s["state"] == "broadcast"}
        for r in mined_rows:
            s = slot_of.get(r["id"])
            if s is None or s["nonce"] != r["nonce"]:
                v.append(f"eth: transfer {r['id']}: nonce {r['nonce']}, slot {s}")
        for s in slots:
            owner = by_id.get(s["transfer_id"]) if s["transfer_id"] else None
            if s["state"] == "reserved" and (owner is None or owner["state"] in FINAL):
                v.append(f"eth: nonce slot {s['nonce']} reserved by a "
                         f"{owner and owner['state']} transfer: the next transfer skips it")
            if s["state"] == "free" and s["nonce"] < latest:
                v.append(f"eth: nonce slot {s['nonce']} free but the chain used it")
        broadcast = sum(1 for s in slots if s["state"] == "broadcast")
        if broadcast != latest:
            v.append(f"eth: {broadcast} broadcast nonce slots, account nonce {latest}")
        return v

    def _money(self, view: ChainView, mined_rows: list[dict[str, Any]]) -> list[str]:
        given, token = self.funding.given, self.funding.token
        sent = Counter[str]()
        for r in mined_rows:
            sent[str(r["symbol"])] += int(r["amount"])
        fees = sum(tx["fee"] for tx in view.mined)
        v = []
        held = view.eth.balance(view.address)
        if given["ETH"] - held != sent["ETH"] + fees:
            v.append(f"eth: Ether debited {given['ETH'] - held}, transfers {sent['ETH']} + "
                     f"fees {fees} = {sent['ETH'] + fees}")
        if token:
            held = view.eth.erc20_balance(token, view.address)
            if given["TUSD"] - held != sent["TUSD"]:
                v.append(f"eth: tokens debited {given['TUSD'] - held}, transfers "
                         f"{sent['TUSD']}")
        return v


def _ranges(nums: list[int]) -> str:
    if len(nums) <= 8:
        return str(nums)
    return f"[{nums[0]}..{nums[-1]}] ({len(nums)}, {len(set(nums))} distinct)"
