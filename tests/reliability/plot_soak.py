"""Plot a soak's samples (``python -m tests.reliability.soak`` output, JSON lines on stdin)
as a figure: HTTP calls per second and errors over time, and each process's resident
memory - the three things a soak is for (does throughput hold, do errors appear, does
memory grow).

Run: ``python -m tests.reliability.soak --seconds 1800 > soak.jsonl;
python -m tests.reliability.plot_soak soak.png < soak.jsonl``.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def series(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """The samples' time axis, calls/s, cumulative errors and RSS per process (MiB);
    the summary line, if any, is left out."""
    samples = [s for s in lines if not s.get("summary")]
    names = sorted({n for s in samples for n in s["rss_kib"]})
    return {"t": [s["t"] / 60 for s in samples],
            "calls_per_s": [s["calls_per_s"] for s in samples],
            "errors": [s["errors"] for s in samples],
            "rss": {n: [s["rss_kib"].get(n, 0) / 1024 for s in samples] for n in names}}


def main(argv: list[str] | None = None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = (argv if argv is not None else sys.argv[1:] or ["soak.png"])[0]
    data = series([json.loads(line) for line in sys.stdin if line.strip()])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    top.plot(data["t"], data["calls_per_s"], label="HTTP calls/s")
    top.set_ylabel("calls/s")
    errors = top.twinx()
    errors.plot(data["t"], data["errors"], color="tab:red", label="errors (cumulative)")
    errors.set_ylabel("errors", color="tab:red")
    errors.set_ylim(bottom=0, top=max(10, *data["errors"]))
    top.set_title("Soak: 2 API replicas, worker, HSM process, PostgreSQL")
    for name, values in data["rss"].items():
        bottom.plot(data["t"], values, label=name)
    bottom.set_ylabel("resident memory (MiB)")
    bottom.set_xlabel("minutes")
    bottom.legend(loc="center right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
