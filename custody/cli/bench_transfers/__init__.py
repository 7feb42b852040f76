"""``custody bench transfers``: auto-tier transfers end to end, against the node's own
ingest rate of as many transactions, in the same run.

The local nodes (``custody localnets``'s: anvil, the Solana dev node on LiteSVM, the
Bitcoin regtest node), the HSM as its own process and ``custody serve`` pointed at both
(:mod:`.service`). Per chain, in this order:

* ``node_ingest_tps``: ``count`` transactions signed beforehand with a plain key of the
  same kind (``eth_account``, ``solders``, the project's Bitcoin builder and
  ``coincurve``), sent from ``concurrency`` threads through the JSON-RPC client the
  broker's adapter broadcasts with (:mod:`.kits`);
* ``service_tps``: after one transfer that warms the server up (not counted),
  ``count`` transfers of the wallet's small (auto) tier posted to
  ``POST /v1/transfers`` from ``concurrency`` threads, counted from the first POST to
  the last transfer the service broadcast (its history's ``broadcast`` time);
  ``submit_broadcast_p50_ms`` / ``p99`` per transfer from its POST to its broadcast;
  ``confirm_*`` to its ``confirmed`` state (depth 1; Bitcoin mines a block a second,
  as ``custody localnets`` does; the worker looks at confirmations once a second);
* ``landed``: destinations whose balance on the node moved by exactly one transfer;
* ``cpu_ms_per_transfer``: CPU time the server, the HSM process and this process (the
  client threads and the in-thread Bitcoin and Solana nodes) spent per transfer while
  the transfers ran - where the cores went, beside the wall-clock rate.

One JSON object per line, a chain per line; the last holds the headline (``ratio``:
service over node ingest, target 0.5 on Ethereum and Solana, Bitcoin reported).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chains.base import Chain

from ...localnets import LocalNets
from ...pgserver import PostgresServer
from ..localnets_cmd import node_env
from . import desk
from .kits import KITS, Kit
from .service import api_server, cpu_seconds, hsm_process

CHAINS = ("ethereum", "solana", "bitcoin")
#: Targets per chain: service over node ingest (Bitcoin is reported, not targeted).
TARGETS = {"ethereum": 0.5, "solana": 0.5}
#: Seconds allowed for the last transfer to reach broadcast, then confirmed.
TIMEOUT = 300.0


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def node_ingest(kit: Kit, count: int, concurrency: int) -> float:
    """Transactions per second the node accepts through the adapter's client call."""
    presigned = kit.presigned(count)
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(presigned.send, presigned.raws))
    return count / (time.perf_counter() - start)


def _mining(nets: LocalNets, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        nets.mine(1)


@dataclass(frozen=True)
class Service:
    """What :func:`session` started: the nodes, the API's URL, the processes' pids."""

    nets: LocalNets
    url: str
    pids: dict[str, int]

    def cpu(self) -> dict[str, float | None]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}


def _cpu_ms(before: dict[str, float | None], after: dict[str, float | None],
            count: int) -> dict[str, float | None]:
    """CPU milliseconds per transfer each process spent between the two readings."""
    return {name: None if (b := before[name]) is None or (a := after[name]) is None
            else round((a - b) * 1000 / count, 2) for name in before}


def run_chain(service: Service, chain: str, count: int,
              concurrency: int) -> tuple[dict[str, Any], list[str]]:
    """One chain's record, and the destinations its transfers paid (for a caller that
    wants to look at the node itself)."""
    url, nets = service.url, service.nets
    kit: Kit = KITS[chain](nets)
    wallet = desk.create_wallet(url, chain, kit.network, kit.symbol, count + 1, kit.amount)
    kit.fund(wallet, count + 1, lambda wallet_id: desk.new_address(url, wallet_id))
    ingest = node_ingest(kit, count, concurrency)
    _warm_up(url, wallet, kit)
    destinations = kit.destinations(count)
    stop = threading.Event()
    miner = threading.Thread(target=_mining, args=(nets, stop), daemon=True)
    if chain == "bitcoin":
        miner.start()
    cpu = service.cpu()
    try:
        posted = desk.post_transfers(url, wallet, kit.symbol, kit.amount, destinations,
                                     concurrency)
        desk.wait_until(url, wallet["id"], count + 1, frozenset({"broadcast", "confirmed"}),
                        TIMEOUT)
        final = desk.wait_until(url, wallet["id"], count + 1, frozenset({"confirmed"}),
                                TIMEOUT)
    finally:
        stop.set()
    record = _figures(chain, count, concurrency, posted, final, ingest)
    record["cpu_ms_per_transfer"] = _cpu_ms(cpu, service.cpu(), count)
    record["landed"] = kit.landed(destinations)
    return record, destinations


def _warm_up(url: str, wallet: dict[str, Any], kit: Kit) -> None:
    """One transfer, not counted, to broadcast: the server's first transfer on a chain
    pays one-off costs (imports - ``eth_account`` computes BLS constants on import -,
    the chain's planner and node checks) that a running deployment has long paid."""
    desk.post_transfers(url, wallet, kit.symbol, kit.amount, kit.destinations(1), 1)
    desk.wait_until(url, wallet["id"], 1, frozenset({"broadcast", "confirmed"}), TIMEOUT)


def _ms(seconds: list[float], q: float) -> float | None:
    return round(_percentile(seconds, q) * 1000, 1) if seconds else None


def _figures(chain: str, count: int, concurrency: int, posted: list[desk.Posted],
             final: dict[str, dict[str, Any]], ingest: float) -> dict[str, Any]:
    first = min(p.started for p in posted)
    states = [final[p.id]["state"] if p.id in final else "missing" for p in posted]
    broadcast = {p.id: desk.reached(final.get(p.id, {}), "broadcast") for p in posted}
    confirmed = {p.id: desk.reached(final.get(p.id, {}), "confirmed") for p in posted}
    to_broadcast = [b - p.started for p in posted if (b := broadcast[p.id]) is not None]
    to_confirmed = [c - p.started for p in posted if (c := confirmed[p.id]) is not None]
    last = max((b for b in broadcast.values() if b is not None), default=None)
    service = len(to_broadcast) / (last - first) if last is not None else 0.0
    done = [c for c in confirmed.values() if c is not None]
    return {"bench": "transfers", "chain": chain, "count": count, "concurrency": concurrency,
            "service_tps": round(service, 1), "node_ingest_tps": round(ingest, 1),
            "ratio": round(service / ingest, 3),
            "submit_broadcast_p50_ms": _ms(to_broadcast, 0.5),
            "submit_broadcast_p99_ms": _ms(to_broadcast, 0.99),
            "confirm_p50_ms": _ms(to_confirmed, 0.5),
            "confirm_all_s": round(max(done) - first, 2) if len(done) == count else None,
            "post_p50_ms": round(statistics.median(p.post_seconds for p in posted) * 1000, 1),
            "confirmed": states.count("confirmed"),
            "states": {s: states.count(s) for s in sorted(set(states))}}


@contextlib.contextmanager
def session(chains: tuple[str, ...], db: str) -> Iterator[Service]:
    """The local nodes of ``chains``, the HSM process and ``custody serve`` over ``db``
    (a SQLite file, or a throwaway PostgreSQL)."""
    with (tempfile.TemporaryDirectory(prefix="ska-bench-transfers-") as tmp,
          contextlib.ExitStack() as stack):
        work = Path(tmp)
        nets = stack.enter_context(LocalNets(work, chains=tuple(Chain(c) for c in chains)))
        database = f"sqlite:///{work / 'broker.sqlite'}"
        if db == "postgres":
            pg = PostgresServer()
            stack.callback(pg.stop)
            database = pg.create_database()
        hsm = stack.enter_context(hsm_process(work))
        url, server = stack.enter_context(api_server(work, database, hsm, node_env(nets, 1)))
        # "bench": this process - the desk's client threads, and the Bitcoin and Solana
        # nodes, which run in its threads (anvil is a process of its own)
        yield Service(nets, url, {"server": server, "hsm": hsm[2], "bench": os.getpid()})


def headline(records: list[dict[str, Any]], count: int, db: str,
             concurrency: int) -> dict[str, Any]:
    """The last line: per chain the figures the report quotes, and whether the targets
    were met (every transfer landed, and the ratio where there is a target)."""
    head: dict[str, Any] = {"bench": "transfers", "headline": True, "count": count, "db": db,
                            "concurrency": concurrency, "target_ratio": TARGETS}
    for r in records:
        head[r["chain"]] = {k: r[k] for k in (
            "service_tps", "node_ingest_tps", "ratio", "submit_broadcast_p99_ms",
            "confirm_all_s", "landed")}
    head["all_landed"] = all(r["landed"] == count for r in records)
    head["met"] = all(r["ratio"] >= TARGETS[r["chain"]] for r in records
                      if r["chain"] in TARGETS)
    return head


def bench_transfers(chains: tuple[str, ...] = CHAINS, count: int = 200, db: str = "sqlite",
                    concurrency: int = 8) -> Iterator[dict[str, Any]]:
    """Yield one record per chain, then the headline."""
    records = []
    with session(chains, db) as service:
        for chain in chains:
            record, _ = run_chain(service, chain, count, concurrency)
            records.append(record)
            yield record
    yield headline(records, count, db, concurrency)
