"""The long kill-loop runs, chunk by chunk: each run of :mod:`.killloop` appends one line
to ``runs.jsonl`` (its command, seed, database, lanes, iterations, result and the commit
it ran at), so runs made in many sessions add up; this module sums them into REPORT.md.

    python -m tests.reliability.runs            # rewrite REPORT.md's "Long runs" section
    python -m tests.reliability.runs --print    # the section, to stdout
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LOG = HERE / "runs.jsonl"
REPORT = HERE / "REPORT.md"
BEGIN = "<!-- runs: begin (python -m tests.reliability.runs) -->"
END = "<!-- runs: end -->"


def commit() -> str:
    """The commit the code under test is at: ``RELIABILITY_COMMIT`` when a run works
    from an exported snapshot (``git archive``, so edits in the checkout cannot reach a
    long run), else the checkout's HEAD."""
    if os.environ.get("RELIABILITY_COMMIT"):
        return os.environ["RELIABILITY_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, check=False,
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def record(summary: dict[str, Any], argv: list[str], started: float, at_commit: str,
           log: Path = LOG) -> dict[str, Any]:
    """Append one finished run (its summary line) to the log."""
    entry = {"command": "python -m tests.reliability.killloop " + " ".join(argv),
             "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
             "minutes": round((time.time() - started) / 60, 1), "commit": at_commit,
             "db": summary["db"], "chain": summary.get("chain") or "none",
             "seed": summary["seed"], "iterations": summary["iterations"],
             "violations": summary["violations"], "kill_rounds": summary["kill_rounds"],
             "kills": summary["kills"], "requests": summary["requests"],
             "median_seconds": summary.get("median_seconds"),
             "lanes": summary.get("lanes", {}), "beat": summary.get("beat", {})}
    with log.open("a", encoding="utf-8") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
    return entry


def load(log: Path = LOG) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def section(runs: list[dict[str, Any]]) -> str:
    """The report's table: per database and chain, then every chunk with its command."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[(r["db"], r["chain"])].append(r)
    total = sum(r["iterations"] for r in runs)
    lines = [BEGIN, "", f"**{total:,} iterations** in {len(runs)} recorded chunks "
             f"({sum(r['violations'] for r in runs)} violations; the issue's goal is 1,000).",
             "", "| database | chain | chunks | iterations | kill rounds | transfers "
             "(broadcast) | large | violations |", "|---|---|---|---|---|---|---|---|"]
    for (db, chain), rs in sorted(groups.items()):
        lanes = [lane for r in rs for lane in r["lanes"].values()]
        lines.append(f"| {db} | {chain} | {len(rs)} | {sum(r['iterations'] for r in rs)} | "
                     f"{sum(r['kill_rounds'] for r in rs)} | "
                     f"{sum(x['transfers'] for x in lanes)} "
                     f"({sum(x['broadcasts'] for x in lanes)}) | "
                     f"{sum(x.get('large', 0) for x in lanes)} | "
                     f"{sum(r['violations'] for r in rs)} |")
    lines += ["", "| started (UTC) | commit | command | iterations | s/iteration (median) "
              "| violations |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['started']} | {r['commit']} | `{r['command']}` | {r['iterations']} | "
              f"{r['median_seconds']} | {r['violations']} |" for r in runs]
    return "\n".join([*lines, "", END])


def write_report(runs: list[dict[str, Any]], report: Path = REPORT) -> None:
    """Replace the marked section of the report (appended the first time)."""
    text = report.read_text(encoding="utf-8")
    new = section(runs)
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + new + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Long runs (every chain and tier)\n\n" + new + "\n"
    report.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.reliability.runs",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--print", action="store_true", help="print the section, change nothing")
    args = p.parse_args(argv)
    runs = load()
    if args.print:
        print(section(runs))
    else:
        write_report(runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
