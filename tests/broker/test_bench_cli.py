"""The benchmark commands run with tiny sizes and print JSON lines, the headline last.

Figures are not asserted (they depend on the machine); the shape is: every line is a
JSON object of its bench, only the last is the headline, and the headline carries the
figures the performance report quotes.
"""

from __future__ import annotations

import json
from typing import Any

from typer.testing import CliRunner

from custody.cli import app


def _lines(args: list[str]) -> list[dict[str, Any]]:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert records, result.output
    assert [r.get("headline", False) for r in records] == [False] * (len(records) - 1) + [True]
    return records


def test_bench_hsm_remote_prints_rounds_then_the_headline() -> None:
    records = _lines(["bench", "hsm", "--remote", "--iterations", "20", "--rounds", "2",
                      "--batch", "5"])
    assert len(records) == 3 and {r["bench"] for r in records} == {"hsm-remote"}
    head = records[-1]
    for field in ("raw_coincurve_signs_per_s", "hsm_batch_signs_per_s",
                  "hsm_remote_single_signs_per_s", "hsm_remote_batch_signs_per_s"):
        assert head[field] > 0
    assert abs(head["ratio"] - head["hsm_remote_batch_signs_per_s"]
               / head["hsm_batch_signs_per_s"]) < 0.01 * head["ratio"] + 0.002
    assert head["target_ratio"] == 0.8
    assert head["clients"] == 2 and head["hsm_remote_clients_batch_signs_per_s"] > 0
    assert abs(head["ratio_clients"] - head["hsm_remote_clients_batch_signs_per_s"]
               / head["hsm_clients_batch_signs_per_s"]) < 0.01 * head["ratio_clients"] + 0.002


def test_bench_growth_prints_the_curve_then_the_headline() -> None:
    records = _lines(["bench", "growth", "--size", "10", "--size", "2000", "--iterations",
                      "10", "--rounds", "1", "--batch", "5", "--approvers", "3"])
    curve = [(r["kind"], r["size"]) for r in records[:-1]]
    assert curve == [("velocity", 0), ("velocity", 10), ("velocity", 2000),
                     ("allowlist", 0), ("allowlist", 10), ("allowlist", 1024),
                     ("address_list", 0), ("address_list", 10), ("address_list", 2000),
                     ("approvers", 0), ("approvers", 3),
                     ("audit", 0), ("audit", 10), ("audit", 2000)]
    audit = {r["size"]: r for r in records if r.get("kind") == "audit"}
    assert audit[2000]["audit_entries"] == audit[0]["audit_entries"] + 2000
    listed = {r["size"]: r for r in records if r.get("kind") == "address_list"}
    assert "upload_s" in listed[2000] and "upload_s" not in listed[0]
    assert listed[2000]["first_sign_s"] > 0
    head = records[-1]
    assert head["allowlist_not_measured"] == [2000]
    assert head["worst_ratio"] == min(r["ratio"] for r in records[:-1] if r["size"])
