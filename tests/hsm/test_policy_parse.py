"""Policy documents: seed 003's shape accepted; every malformed field named in the error."""

from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsm_emulator.errors import PolicyInvalid
from hsm_emulator.model import Action
from hsm_emulator.policy import parse_policy
from tests.helpers import Approver, group, tiered_policy, token

SEED_003 = json.loads((Path(__file__).parents[1] / "vectors" / "tsb_tutorial.json").read_text())


def _tutorial_policy() -> dict[str, Any]:
    """The policy of seed 003's POST /v1/key body, with its own certificate."""
    cert = SEED_003["policy_approval"]["value"]
    return {
        "ruleUse": {"tokens": [{"name": "Token1", "timelock": 0, "timeout": 3600, "groups": [
            {"name": "Group1", "quorum": 1, "approvals": [{"type": "certificate", "value": cert}]}
        ]}]},
        "keyStatus": {"blocked": False},
    }


def test_seed_003_tutorial_policy_parses() -> None:
    p = parse_policy(_tutorial_policy())
    rule = p.rule(Action.USE)
    assert rule is not None and rule.tokens[0].timeout == 3600
    assert rule.tokens[0].groups[0].quorum == 1
    assert p.rule(Action.BLOCK) is None and not p.blocked


def test_tiers_parse(people: dict[str, Approver]) -> None:
    p = parse_policy(tiered_policy([people["t1"], people["t2"], people["t3"]], [people["c1"]]))
    use = p.rule(Action.USE)
    assert use is not None and [t.name for t in use.tokens] == ["small", "medium", "large"]
    assert use.tokens[2].timelock == 86400 and use.tokens[0].conditions.amounts[0].max == 100


def test_digest_ignores_status_and_key_order(people: dict[str, Approver]) -> None:
    doc = tiered_policy([people["t1"], people["t2"]], [people["c1"]])
    reordered = json.loads(json.dumps(doc, sort_keys=True))
    blocked = copy.deepcopy(doc) | {"keyStatus": {"blocked": True}}
    assert parse_policy(doc).digest == parse_policy(reordered).digest
    assert parse_policy(doc).digest == parse_policy(blocked).digest


def _bad(people: dict[str, Approver]) -> list[tuple[str, Any, str]]:
    t1, t2, c1 = people["t1"], people["t2"], people["c1"]
    g = group("g", 1, [t1])
    return [
        ("quorum larger than group", {"ruleUse": {"tokens": [token("a", [group("g", 3, [t1, t2])])]}},
         "policy.ruleUse.tokens[0].groups[0].quorum"),
        ("zero quorum", {"ruleUse": {"tokens": [token("a", [group("g", 0, [t1])])]}},
         "policy.ruleUse.tokens[0].groups[0].quorum"),
        ("empty group", {"ruleUse": {"tokens": [token("a", [{"name": "g", "quorum": 1,
                                                            "approvals": []}])]}},
         "policy.ruleUse.tokens[0].groups[0].approvals"),
        ("negative timelock", {"ruleUse": {"tokens": [token("a", [g], timelock=-1)]}},
         "policy.ruleUse.tokens[0].timelock"),
        ("negative timeout", {"ruleUse": {"tokens": [token("a", [g], timeout=-60)]}},
         "policy.ruleUse.tokens[0].timeout"),
        ("timelock beyond timeout", {"ruleUse": {"tokens": [token("a", [g], 120, 60)]}},
         "policy.ruleUse.tokens[0].timelock"),
        ("unknown approval type", {"ruleUse": {"tokens": [token("a", [{
            "name": "g", "quorum": 1, "approvals": [{"type": "password", "value": "x"}]}])]}},
         "policy.ruleUse.tokens[0].groups[0].approvals[0].type"),
        ("duplicate approver", {"ruleUse": {"tokens": [token("a", [group("g", 1, [t1, t1])])]}},
         "policy.ruleUse.tokens[0].groups[0].approvals"),
        ("approver in two groups", {"ruleUse": {"tokens": [token("a", [
            group("g", 1, [t1]), group("h", 1, [t1, c1])])]}},
         "policy.ruleUse.tokens[0].groups[1]"),
        ("bad certificate", {"ruleUse": {"tokens": [token("a", [{
            "name": "g", "quorum": 1, "approvals": [{"type": "certificate", "value": "AAAA"}]}])]}},
         "policy.ruleUse.tokens[0].groups[0].approvals[0].value"),
        ("unknown field", {"ruleUse": {"tokens": [token("a", [g]) | {"colour": "red"}]}},
         "policy.ruleUse.tokens[0]"),
        ("no tokens", {"ruleUse": {"tokens": []}}, "policy.ruleUse.tokens"),
        ("quorum as string", {"ruleUse": {"tokens": [token("a", [{
            "name": "g", "quorum": "1", "approvals": [t1.entry()]}])]}},
         "policy.ruleUse.tokens[0].groups[0].quorum"),
        ("boolean timelock", {"ruleUse": {"tokens": [token("a", [g], timelock=True)]}},  # type: ignore[arg-type]
         "policy.ruleUse.tokens[0].timelock"),
        ("amount max below min", {"ruleUse": {"tokens": [token("a", [], conditions={
            "amounts": [{"asset": "BTC", "min": 10, "max": 5}]})]}},
         "policy.ruleUse.tokens[0].conditions.amounts[0].max"),
        ("negative amount", {"ruleUse": {"tokens": [token("a", [], conditions={
            "amounts": [{"asset": "BTC", "max": -5}]})]}},
         "policy.ruleUse.tokens[0].conditions.amounts[0].max"),
        ("amount as float string", {"ruleUse": {"tokens": [token("a", [], conditions={
            "amounts": [{"asset": "BTC", "max": "1.5"}]})]}},
         "policy.ruleUse.tokens[0].conditions.amounts[0].max"),
        ("zero velocity window", {"ruleUse": {"tokens": [token("a", [], conditions={
            "velocity": [{"asset": "BTC", "windowSeconds": 0, "max": 5}]})]}},
         "policy.ruleUse.tokens[0].conditions.velocity[0].windowSeconds"),
        ("blocked without unblock rule", {"keyStatus": {"blocked": True}},
         "policy.keyStatus.blocked"),
        ("unknown open action", {"openActions": ["launch"]}, "policy.openActions[0]"),
        ("policy not an object", ["ruleUse"], "policy"),
    ]


def test_invalid_policies_name_their_field(people: dict[str, Approver]) -> None:
    cases = _bad(people)
    assert len(cases) >= 20
    for why, doc, field in cases:
        with pytest.raises(PolicyInvalid) as err:
            parse_policy(doc)
        assert err.value.field == field, f"{why}: named {err.value.field}"


def test_finer_than_60_seconds_is_accepted(people: dict[str, Approver]) -> None:
    p = parse_policy({"ruleUse": {"tokens": [token("a", [group("g", 1, [people["t1"]])], 5, 7)]}})
    use = p.rule(Action.USE)
    assert use is not None and use.tokens[0].timelock == 5


def test_large_amounts_as_strings() -> None:
    wei = str(10**30)
    p = parse_policy({"ruleUse": {"tokens": [token("a", [], conditions={
        "amounts": [{"asset": "ETH", "max": wei}]})]}})
    use = p.rule(Action.USE)
    assert use is not None and use.tokens[0].conditions.amounts[0].max == 10**30


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(
        st.sampled_from(["ruleUse", "tokens", "groups", "quorum", "approvals", "timelock",
                         "timeout", "name", "type", "value", "keyStatus", "conditions"]),
        c, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_random_documents_fail_only_with_policy_invalid(doc: Any) -> None:
    with contextlib.suppress(PolicyInvalid):
        parse_policy(doc)
