"""Opt-in allocation tracing for a soak's processes: which lines hold the memory that grows.

    CUSTODY_TRACEMALLOC=<dir> python -m tests.reliability.memtrace NAME MODULE [ARGS...]

runs ``python -m MODULE ARGS...`` (``custody.cli serve``, ``hsm_emulator.remote``) and
starts :mod:`tracemalloc` one period after (imports under tracing are minutes slower).
Every ``CUSTODY_TRACEMALLOC_EVERY`` seconds (default 60) from one period later (the
baseline, past the warm-up) it appends one JSON line to
``<dir>/NAME.jsonl``: the traced total, and the allocation sites (file:line) whose size
grew most since the first snapshot, with the live object counts by type that grew most
(``gc``). Each snapshot is kept as ``NAME-000.snap``, ``NAME-001.snap``... for a look by
traceback between any two (``tracemalloc.Snapshot.load``).

Without ``CUSTODY_TRACEMALLOC`` it only runs the module: nothing here is imported by the
shipped code; :class:`~tests.reliability.cluster.Cluster` starts its HSM process and API
replicas through it when the variable is set. Tracing slows a process (every allocation
records a traceback) and adds its own memory (``tracemalloc_kib`` in each line), so the
figures are for finding growth, not for capacity.
"""

from __future__ import annotations

import collections
import gc
import json
import os
import runpy
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

ENV = "CUSTODY_TRACEMALLOC"
#: Frames kept per allocation: enough to see who called the allocating line.
FRAMES = 12
#: Sites and types listed per line.
TOP = 25


class Tracer:
    def __init__(self, out: Path, name: str) -> None:
        self.out, self.name = out, name
        self.first: tracemalloc.Snapshot | None = None
        self.first_types: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self.taken = 0
        self.t0 = time.time()

    def _snapshot(self) -> tracemalloc.Snapshot:
        return tracemalloc.take_snapshot().filter_traces(
            (tracemalloc.Filter(False, tracemalloc.__file__),
             tracemalloc.Filter(False, __file__)))

    def record(self) -> None:
        with self.lock:
            gc.collect()
            # the type counts before the snapshot: every snapshot then holds one such
            # table (the baseline's, kept, and the current one), not counted as growth
            types = _types()
            snap = self._snapshot()
            if self.first is None:
                self.first, self.first_types = snap, types
            snap.dump(str(self.out / f"{self.name}-{self.taken:03d}.snap"))
            self.taken += 1
            stats = snap.compare_to(self.first, "lineno")
            stats.sort(key=lambda s: s.size_diff, reverse=True)
            grown = types.copy()
            grown.subtract(self.first_types)
            line = {"name": self.name, "at": round(time.time(), 1),
                    "t": round(time.time() - self.t0, 1),
                    "traced_kib": tracemalloc.get_traced_memory()[0] // 1024,
                    "tracemalloc_kib": tracemalloc.get_tracemalloc_memory() // 1024,
                    "sites": [_site(s) for s in stats[:TOP]],
                    "types": [[k, types[k], d] for k, d in grown.most_common(TOP) if d > 0]}
            with (self.out / f"{self.name}.jsonl").open("a") as f:
                f.write(json.dumps(line) + "\n")

    def loop(self, every: float) -> None:
        # imports under tracing take minutes on a loaded machine: trace from one period
        # after start (what was allocated before is not traced, so never counted as
        # growth), and take the baseline one period later, past the warm-up
        time.sleep(every)
        tracemalloc.start(FRAMES)
        self.t0 = time.time()
        while True:
            time.sleep(every)
            try:
                self.record()
            except Exception as exc:  # a tracer must never take its process down
                print(f"memtrace: {exc!r}", file=sys.stderr)


def _site(s: tracemalloc.StatisticDiff) -> dict[str, Any]:
    frame = s.traceback[0]
    return {"site": f"{frame.filename}:{frame.lineno}", "kib": s.size // 1024,
            "kib_diff": round(s.size_diff / 1024, 1), "count": s.count,
            "count_diff": s.count_diff}


def _types() -> collections.Counter[str]:
    return collections.Counter(type(o).__qualname__ for o in gc.get_objects())


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit("usage: python -m tests.reliability.memtrace NAME MODULE [ARGS...]")
    name, module, args = argv[0], argv[1], argv[2:]
    out = os.environ.get(ENV)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        tracer = Tracer(Path(out), name)
        every = float(os.environ.get(f"{ENV}_EVERY", "60"))
        threading.Thread(target=tracer.loop, args=(every,), daemon=True,
                         name="memtrace").start()
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
