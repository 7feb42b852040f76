"""The kill -9 loop: mixed traffic while the API, the worker and the HSM process are
SIGKILLed at random points and restarted; after every iteration, the invariants.

    python -m tests.reliability.killloop --db sqlite|postgres --iterations N --seed S
                                         [--chain eth|erc20|btc|sol|all] [--no-record]

``--chain``: transfers through ``POST /v1/transfers`` beside the sign requests, on local
nodes (anvil, the regtest node, the Solana dev node; their RPC in ``CUSTODY_*_RPC``), one
funded wallet per chain with the treasury tiers and a 24 h hold that the HSM's clock
lets pass (:mod:`.hsmtime`), one client thread per lane (:mod:`.lanes`); the transfer
invariants (:mod:`.transfer_checks` and one module per chain) are checked after every
iteration too. ``--transfers`` is the older spelling of ``--chain eth``.

One JSON object per line per iteration, then a summary line. Exit status 1 if any
invariant was violated. Each run is appended to ``tests/reliability/runs.jsonl`` (seed,
command, iterations, result), which ``python -m tests.reliability.runs`` sums into
REPORT.md.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from custody import idempotency

from .cluster import Cluster
from .invariants import Hook, check, observe, orphans
from .lanes import CHOICES
from .rig import Rig
from .runs import LOG, commit, record
from .traffic import Desk, GaveUp, Ledger, Scenario, run_traffic
from .transfers import TransferDesk, run_transfer_traffic

FINAL = frozenset({"EXECUTED", "FAILED", "EXPIRED", "REJECTED", "CANCELLED"})
#: Client threads of sign-request traffic during an iteration.
CLIENTS = 2
#: A request must reach its final state this long after the restart.
SETTLE_SECONDS = 30.0
#: Creates replayed with their Idempotency-Key after each iteration.
REPLAYS = 4


def victims(rng: random.Random) -> list[str]:
    chosen = [n for n, p in (("hsm", 0.3), ("api0", 0.8), ("worker", 0.6)) if rng.random() < p]
    return chosen or ["api0"]


def settle(desk: Desk, scenarios: list[Scenario]) -> None:
    """Resume what the crash interrupted, then wait for every request to be final.

    A create whose process died keeps answering "in progress" until its idempotency lease
    runs out; the client keeps at it a little past that, so the retry's takeover (which
    finishes the dead attempt's work) is what the loop exercises."""
    for s in scenarios:
        patience, tries = time.time() + idempotency.LEASE_SECONDS + 5, 0
        while True:
            tries += 1
            try:
                if not s.complete:
                    desk.drive(s)
                break
            except (GaveUp, AssertionError) as exc:
                desk.ledger.note(f"resume: {str(exc)[:80]}")
                stuck = "in progress" in str(exc)
                if tries >= 2 and not (stuck and time.time() < patience):
                    break
    deadline = time.time() + SETTLE_SECONDS
    waiting = [s for s in scenarios if s.request_id is not None]
    while waiting and time.time() < deadline:
        waiting = [s for s in waiting if desk.status(str(s.request_id))["status"] not in FINAL]
        time.sleep(0.2 if waiting else 0)


def _threads(desk: Desk, tdesk: TransferDesk | None, stop: threading.Event,
             rng: random.Random) -> list[threading.Thread]:
    """One sign-request client (two without transfers), one transfer client per lane."""
    threads = [threading.Thread(target=run_traffic, args=(desk, stop, rng.random()))
               for _ in range(CLIENTS - (tdesk is not None))]
    for lane in tdesk.lanes if tdesk is not None else ():
        threads.append(threading.Thread(target=run_transfer_traffic,
                                        args=(tdesk, lane, stop, rng.random())))
    return threads


def iteration(cluster: Cluster, desk: Desk, rng: random.Random,
              hooks: list[Hook], tdesk: TransferDesk | None = None) -> dict[str, Any]:
    start, first = time.time(), len(desk.ledger.scenarios)
    first_transfer = len(tdesk.transfers) if tdesk is not None else 0
    stop = threading.Event()
    threads = _threads(desk, tdesk, stop, rng)
    for t in threads:
        t.start()
    kills = []
    for _ in range(rng.randint(1, 2)):
        time.sleep(rng.uniform(0.3, 2.0))
        chosen = victims(rng)
        for name in chosen:
            cluster.kill(name)
        kills.append(chosen)
        time.sleep(rng.uniform(0.0, 0.5))
        for name in ("hsm", "api0", "worker"):  # the HSM first: the others connect to it
            if name in chosen:
                cluster.start(name)
    stop.set()
    for t in threads:
        t.join()
    mine = desk.ledger.scenarios[first:]
    settle(desk, mine)
    transfers = tdesk.transfers[first_transfer:] if tdesk is not None else []
    if tdesk is not None:
        tdesk.settle(transfers)
    obs = observe(cluster, desk.ledger)
    acked = [s for s in mine if s.request_id is not None]
    for s in rng.sample(acked, min(REPLAYS, len(acked))):
        obs.replays[s.key] = (str(s.request_id), desk.replay_create(s))
    violations = check(obs, hooks)
    line = {"iteration": 0, "kills": kills, "requests": len(mine),
            "unacknowledged": len(mine) - len(acked), "orphans": orphans(obs),
            "audit_entries": len(obs.audit), "violations": violations,
            "seconds": round(time.time() - start, 1)}
    if tdesk is not None:
        line["transfers"] = len(transfers)
        line["transfers_unacknowledged"] = sum(1 for x in transfers if not x.acked)
    return line


def run(db: str, iterations: int, seed: int, hooks: list[Hook] | None = None,
        out: Any = sys.stdout, transfers: bool = False, chain: str = "") -> dict[str, Any]:
    """``chain``: a lane or ``all`` (``transfers=True`` is ``chain="eth"``); empty: sign
    requests only."""
    chain = chain or ("eth" if transfers else "")
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="custody-rel-"))
    ledger = Ledger()
    hooks = list(hooks or [])
    total: dict[str, Any] = {"summary": True, "db": db, "iterations": iterations, "seed": seed,
                             "chain": chain or None, "kill_rounds": 0, "kills": {},
                             "requests": 0, "violations": 0, "orphans": 0, "seconds": [],
                             "distinct": set()}
    with Rig(db, work, chain, seed) as rig:
        desk = Desk(rig.cluster.urls, ledger, deadline=30.0)
        desk.setup()
        tdesk = rig.transfers(desk)
        if rig.checks is not None:
            hooks.append(rig.checks)
        for i in range(1, iterations + 1):
            line = iteration(rig.cluster, desk, rng, hooks, tdesk) | {"iteration": i,
                                                                       "db": db}
            _add(total, line)
            if rig.checks is not None:
                line["lanes"] = total["lanes"] = rig.checks.stats
                line["beat"] = total["beat"] = rig.beat_stats()
            print(json.dumps(line), file=out, flush=True)
        total["client_errors"] = dict(sorted(ledger.errors.items()))
        total["calls"] = ledger.calls
        desk.close()
    distinct = sorted(total.pop("distinct"))
    total["distinct_violations"] = len(distinct)
    total["violation_kinds"] = dict(Counter(_kind(v) for v in distinct).most_common())
    secs = sorted(total.pop("seconds"))
    total["median_seconds"] = secs[len(secs) // 2] if secs else None
    print(json.dumps(total), file=out, flush=True)
    return total


def _add(total: dict[str, Any], line: dict[str, Any]) -> None:
    total["kill_rounds"] += len(line["kills"])
    for chosen in line["kills"]:
        for name in chosen:
            total["kills"][name] = total["kills"].get(name, 0) + 1
    total["requests"] += line["requests"]
    total["violations"] += len(line["violations"])  # each re-check counts again
    total["distinct"].update(line["violations"])
    total["orphans"] = line["orphans"]
    total["seconds"].append(line["seconds"])


def _kind(violation: str) -> str:
    """A violation without its ids and numbers: what kind of thing went wrong."""
    return re.sub(r"\d+", "N", re.sub(r"\b(?=\w*\d)[0-9a-fA-Fx]{8,}\b", "<id>", violation))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.reliability.killloop",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--chain", choices=CHOICES, default="",
                   help="transfers on this chain's lane, or on every lane")
    p.add_argument("--transfers", action="store_true", help="the same as --chain eth")
    p.add_argument("--no-record", action="store_true",
                   help="do not append the run to the log of runs")
    p.add_argument("--log", type=Path, default=LOG, help=f"the log of runs (default {LOG})")
    args = p.parse_args(argv)
    started, at_commit = time.time(), commit()
    summary = run(args.db, args.iterations, args.seed, transfers=args.transfers,
                  chain=args.chain)
    if not args.no_record:
        record(summary, argv if argv is not None else sys.argv[1:], started, at_commit,
               args.log)
    return 1 if summary["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
