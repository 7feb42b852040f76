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
import re
import subprocess
import sys
import time
from collections import Counter, defaultdict
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
             "violations": summary["violations"],
             "distinct_violations": summary.get("distinct_violations"),
             "violation_kinds": summary.get("violation_kinds", {}),
             "kill_rounds": summary["kill_rounds"],
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


def _distinct(r: dict[str, Any]) -> int:
    """Distinct violations of a run (the loop re-checks every earlier transfer, so the
    raw count repeats one violation in every later iteration)."""
    return int(r["violations"] if r.get("distinct_violations") is None
               else r["distinct_violations"])


def _short(command: str) -> str:
    """The command as anyone would type it: without where this session kept its log."""
    return re.sub(r" --log \S+", "", command)


def section(runs: list[dict[str, Any]]) -> str:
    """The report's table: per database and chain, then every chunk with its command,
    then the kinds of violation found."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    kinds: Counter[str] = Counter()
    for r in runs:
        groups[(r["db"], r["chain"])].append(r)
        kinds.update(r.get("violation_kinds") or {})
    total = sum(r["iterations"] for r in runs)
    lines = [BEGIN, "", f"**{total:,} iterations** in {len(runs)} recorded chunks, "
             f"{sum(_distinct(r) for r in runs)} distinct violations (the issue's goal: "
             "1,000 iterations across sessions).",
             "", "| database | chain | chunks | iterations | kill rounds | transfers "
             "(broadcast) | large, held 24 h | Solana blockhash expired | distinct violations |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (db, chain), rs in sorted(groups.items()):
        lanes = [lane for r in rs for lane in r["lanes"].values()]
        lines.append(f"| {db} | {chain} | {len(rs)} | {sum(r['iterations'] for r in rs)} | "
                     f"{sum(r['kill_rounds'] for r in rs)} | "
                     f"{sum(x['transfers'] for x in lanes)} "
                     f"({sum(x['broadcasts'] for x in lanes)}) | "
                     f"{sum(x.get('large', 0) for x in lanes)} | "
                     f"{sum(x.get('blockhash_expired', 0) for x in lanes)} | "
                     f"{sum(_distinct(r) for r in rs)} |")
    lines += ["", "| started (UTC) | commit | command | iterations | s/iteration (median) "
              "| distinct violations |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['started']} | {r['commit']} | `{_short(r['command'])}` | {r['iterations']} | "
              f"{r['median_seconds']} | {_distinct(r)} |" for r in runs]
    if kinds:
        lines += ["", "Distinct violations by kind (ids and numbers elided), summed over "
                  "the chunks:", ""]
        lines += [f"* {n} x `{k}`" for k, n in kinds.most_common()]
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
