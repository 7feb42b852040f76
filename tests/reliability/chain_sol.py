"""Solana's invariants for the kill loop, from the dev node. The loop moves the node's
blockhash on while transfers are in flight (a real cluster's blockhash lives about a
minute), so a transfer may be rebuilt over a new blockhash between its approval and its
signature, and a signed one whose blockhash went before it landed is signed again under a
new request; whatever happens, it must land once.

* each transfer that reached broadcast landed (its signature's status, no error), under
  exactly one signature: its destination holds its amount once (checked with every
  chain's destinations in :mod:`.transfer_checks`);
* no earlier attempt of a re-signed transfer landed: the node never saw the signature it
  was proven dead with;
* the money: SOL funded - SOL held == the transfers landed + one signature fee each
  (a second landing of one transfer, under a signature the broker did not record, shows
  here as well as at its destination).
"""

from __future__ import annotations

from typing import Any

from chains.solana.client import SolanaRpcClient
from chains.solana.tx import LAMPORTS_PER_SIGNATURE

from .lanes import Funding
from .transfer_checks import Snapshot, resigns
from .transfers import MINED, Transfer


class SolChecks:
    def __init__(self, client: SolanaRpcClient, funding: Funding) -> None:
        self.client = client
        self.funding = funding

    def __call__(self, snap: Snapshot, items: list[Transfer]) -> list[str]:
        rows = [r for r in snap.of(self.funding.wallet["id"]) if r["txid"]]
        landed = self._landed([str(r["txid"]) for r in rows])
        v = []
        for r in rows:
            status = landed.get(str(r["txid"]))
            if r["state"] in MINED and (status is None or status.err is not None):
                v.append(f"sol: transfer {r['id']} ({r['state']}): signature "
                         f"{str(r['txid'])[:12]} {'not landed' if status is None else status.err}")
            if r["state"] not in MINED and status is not None and status.err is None:
                v.append(f"sol: transfer {r['id']} is {r['state']}, but its signature "
                         "landed")
        dead = {str(a.get("txid")): r for r in snap.of(self.funding.wallet["id"])
                for a in resigns(r)}
        for txid in self._landed(list(dead)):
            v.append(f"sol: transfer {dead[txid]['id']} ({dead[txid]['state']}) was signed "
                     f"again, but its earlier signature {txid[:12]} landed")
        ok = [r for r in rows if str(r["txid"]) in landed]
        sent = sum(int(r["amount"]) for r in ok if landed[str(r["txid"])].err is None)
        fees = LAMPORTS_PER_SIGNATURE * len(ok)
        debit = self.funding.given["SOL"] - self.client.balance(self.funding.wallet["address"])
        if debit != sent + fees:
            v.append(f"sol: debited {debit} lamports, transfers landed {sent} + fees {fees} "
                     f"= {sent + fees}")
        return v

    def _landed(self, txids: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i in range(0, len(txids), 256):
            chunk = txids[i:i + 256]
            out.update({t: s for t, s in zip(chunk, self.client.signature_statuses(chunk),
                                            strict=True) if s is not None})
        return out
