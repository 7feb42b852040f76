"""Plot ``custody bench growth`` output (JSON lines on stdin) as ``docs/growth.png``.

Run: ``custody bench growth > growth.jsonl; python docs/plot_growth.py < growth.jsonl``;
a file name as the argument writes that figure in ``docs/`` instead (one kind's run:
``custody bench growth --kind address_list | python docs/plot_growth.py
growth-address-list.png``).
Needs matplotlib (not a project dependency: only this figure uses it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in sys.stdin if line.strip()]
    curve: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        if not r.get("headline") and r["size"]:
            curve.setdefault(r["kind"], []).append((r["size"], r["ratio"]))
    fig, ax = plt.subplots(figsize=(7, 4))
    for kind, points in curve.items():
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", label=kind)
    ax.axhline(0.8, color="grey", linestyle="--", label="target 0.8")
    ax.set_xscale("log")
    ax.set_xlabel("entries (ledger rows, audit entries, allowlist addresses, approvers)")
    ax.set_ylabel("signing rate / empty-state rate")
    ax.set_ylim(0, max(1.3, *(y for p in curve.values() for _, y in p)) + 0.1)
    ax.legend()
    ax.set_title("custody bench growth: auto-tier sign_batch, 2 cores")
    fig.tight_layout()
    name = sys.argv[1] if len(sys.argv) > 1 else "growth.png"
    fig.savefig(Path(__file__).with_name(Path(name).name), dpi=100)


if __name__ == "__main__":
    main()
