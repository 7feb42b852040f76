"""A modify on the phone page: the policy change line by line (issue 14), computed in
Chromium by the page's own ``view.js`` from the two policy summaries the HSM signs into a
modify challenge (``hsm_emulator.display.policy_summary``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from hsm_emulator.display import policy_summary
from hsm_emulator.policy import parse_policy
from tests.approvers.page_kit import BROWSER_MARKS, blank_page
from tests.helpers import Approver, tiered_policy

pytestmark = BROWSER_MARKS

pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    with blank_page("view.js") as p:
        yield p


def diff(page: Any, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    lines = page.evaluate("""async ([a, b]) => {
      const v = await import("/view.js");
      return v.policyDiff(JSON.parse(a), JSON.parse(b)).map((d) => `${d.sign} ${d.text}`);
    }""", [json.dumps(policy_summary(parse_policy(old))),
           json.dumps(policy_summary(parse_policy(new)))])
    return list(lines)


TRADERS = [Approver.new("trader-1"), Approver.new("trader-2"), Approver.new("trader-3")]
COMPLIANCE = [Approver.new("compliance-1")]
ADMINS = [Approver.new("admin-1"), Approver.new("admin-2")]


def base() -> dict[str, Any]:
    return tiered_policy(TRADERS[:2], COMPLIANCE, admins=ADMINS)


def test_the_same_policy_shows_no_change(page: Any) -> None:
    assert diff(page, base(), base()) == []


def test_an_added_approver_is_shown_by_name_and_fingerprint(page: Any) -> None:
    new = tiered_policy(TRADERS, COMPLIANCE, admins=ADMINS)
    lines = diff(page, base(), new)
    medium = policy_summary(parse_policy(new))["rules"]["use"][1]
    [fp] = [a["fingerprint"][:12] for a in medium["groups"][0]["approvers"]
            if a["name"] == "trader-3"]
    assert f"+ rules.use[medium].groups[traders].approvers: trader-3 ({fp})" in lines
    assert f"+ rules.use[large].groups[traders].approvers: trader-3 ({fp})" in lines
    assert all(line.startswith("+") for line in lines), lines


def test_a_lower_quorum_a_longer_limit_and_a_removed_hold_are_each_one_change(
        page: Any) -> None:
    new = tiered_policy(TRADERS[:2], COMPLIANCE, admins=ADMINS, small=1_000, hold=0)
    new["ruleUse"]["tokens"][1]["groups"][0]["quorum"] = 1
    lines = diff(page, base(), new)
    assert "- rules.use[medium].groups[traders].quorum: 2" in lines
    assert "+ rules.use[medium].groups[traders].quorum: 1" in lines
    assert "- rules.use[small].amounts[TST].max: 100" in lines
    assert "+ rules.use[small].amounts[TST].max: 1000" in lines
    assert "- rules.use[large].timelock: 86400" in lines
    assert "+ rules.use[large].timelock: 0" in lines
    assert len(lines) == 6, lines


def test_a_removed_tier_is_shown(page: Any) -> None:
    new = base()
    del new["ruleUse"]["tokens"][0]  # no more auto tier
    lines = diff(page, base(), new)
    assert lines and all(line.startswith("- rules.use[small]") for line in lines), lines
