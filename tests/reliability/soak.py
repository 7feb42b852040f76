"""A bounded soak: mixed traffic for N seconds against API replicas on PostgreSQL,
sampling throughput, errors and each process's resident memory.

    python -m tests.reliability.soak --seconds N --replicas 2 [--clients 3] [--every 5]

One JSON object per sample, then a summary (with the invariants checked at the end).
Exit status 1 on any invariant violation.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

from .cluster import Cluster
from .invariants import check, observe
from .killloop import settle
from .traffic import Desk, Ledger, run_traffic


def sample(cluster: Cluster, ledger: Ledger, t0: float, last: dict[str, float]) -> dict[str, Any]:
    now = time.time()
    done = sum(1 for s in ledger.scenarios if s.complete)
    line = {"t": round(now - t0, 1), "at": round(now, 1), "calls": ledger.calls,
            "scenarios_done": done,
            "calls_per_s": round((ledger.calls - last["calls"]) / (now - last["at"]), 1),
            "scenarios_per_s": round((done - last["done"]) / (now - last["at"]), 2),
            "errors": sum(ledger.errors.values()),
            "rss_kib": {name: cluster.rss_kib(name) for name in sorted(cluster.procs)}}
    last.update(at=now, calls=ledger.calls, done=done)
    return line


def run(seconds: float, replicas: int = 2, clients: int = 3, every: float = 5.0,
        db: str = "postgres", out: Any = sys.stdout) -> dict[str, Any]:
    cluster, ledger = Cluster(db, replicas=replicas), Ledger()
    samples: list[dict[str, Any]] = []
    try:
        cluster.start_all()
        desk = Desk(cluster.urls, ledger, deadline=30)
        desk.setup()
        stop = threading.Event()
        threads = [threading.Thread(target=run_traffic, args=(desk, stop, i))
                   for i in range(clients)]
        t0 = time.time()
        last = {"at": t0, "calls": 0.0, "done": 0.0}
        for t in threads:
            t.start()
        while time.time() - t0 < seconds:
            time.sleep(min(every, max(0.0, seconds - (time.time() - t0))))
            samples.append(sample(cluster, ledger, t0, last))
            print(json.dumps(samples[-1]), file=out, flush=True)
        stop.set()
        for t in threads:
            t.join()
        elapsed, calls = time.time() - t0, ledger.calls  # the traffic alone, not settling
        settle(desk, ledger.scenarios)
        violations = check(observe(cluster, ledger))
        desk.close()
    finally:
        cluster.close()
    rss = {n: [s["rss_kib"].get(n) for s in samples if s["rss_kib"].get(n)] for n in cluster.ports
           | {"hsm": 0, "worker": 0}}
    summary = {"summary": True, "db": db, "replicas": replicas, "clients": clients,
               "seconds": round(elapsed, 1), "calls": calls,
               "calls_per_s": round(calls / elapsed, 1),
               "scenarios": len(ledger.scenarios),
               "scenarios_per_s": round(len(ledger.scenarios) / elapsed, 2),
               "errors": dict(sorted(ledger.errors.items())),
               "rss_kib": {n: {"first": v[0], "last": v[-1], "max": max(v)}
                           for n, v in rss.items() if v},
               "violations": violations}
    print(json.dumps(summary), file=out, flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.reliability.soak",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--db", choices=("sqlite", "postgres"), default="postgres")
    a = p.parse_args(argv)
    return 1 if run(a.seconds, a.replicas, a.clients, a.every, a.db)["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
