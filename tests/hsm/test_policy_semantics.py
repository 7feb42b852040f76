"""Policy semantics, table-driven: OR of tokens, AND of groups, quorum, hold, timeout, band.

The oracle below restates the design card's tier table in plain code, independently of
``evaluate``: small <= 100 auto; medium <= 5000 with 2 traders inside 1 h; large with 2
traders AND 1 compliance, not before the 24 h hold, not after 72 h. The first token in
policy order that is satisfied releases.
"""

from __future__ import annotations

import itertools

import pytest

from hsm_emulator.evaluate import evaluate
from hsm_emulator.model import Action, Intent, IntentKind, Transfer
from hsm_emulator.policy import parse_policy
from tests.helpers import Approver, group, tiered_policy, token

AMOUNTS = [0, 100, 101, 5000, 5001, 10**12]
ELAPSED = [0, 3600, 3601, 86399, 86400, 3 * 86400, 3 * 86400 + 1]
APPROVER_SETS = [(), ("t1",), ("t1", "t2"), ("t1", "c1"), ("t1", "t2", "c1"),
                 ("t1", "t2", "t3", "c1", "c2"), ("x",), ("c1", "c2")]


def oracle(amount: int, who: tuple[str, ...], elapsed: int) -> str | None:
    traders = len({w for w in who if w in ("t1", "t2", "t3")})
    compliance = len({w for w in who if w in ("c1", "c2")})
    if amount <= 100:
        return "small"
    if amount <= 5000 and traders >= 2 and elapsed <= 3600:
        return "medium"
    if traders >= 2 and compliance >= 1 and 86400 <= elapsed <= 3 * 86400:
        return "large"
    return None


def intent(amount: int, asset: str = "TST", kind: IntentKind = IntentKind.TRANSFER) -> Intent:
    return Intent("test", "test", kind, (Transfer(asset, amount, "dest"),))


@pytest.fixture(scope="module")
def tiers(people: dict[str, Approver]):  # type: ignore[no-untyped-def]
    return parse_policy(tiered_policy([people[t] for t in ("t1", "t2", "t3")],
                                      [people["c1"], people["c2"]]))


def test_every_tier_combination(tiers, people: dict[str, Approver]) -> None:  # type: ignore[no-untyped-def]
    cases = list(itertools.product(AMOUNTS, APPROVER_SETS, ELAPSED))
    for amount, who, elapsed in cases:
        fps = frozenset(_fp(people[w]) for w in who)
        ev = evaluate(tiers, Action.USE, intent(amount), fps, 1000.0, 1000.0 + elapsed)
        assert ev.released_by == oracle(amount, who, elapsed), (amount, who, elapsed)
    assert len(cases) == 336


def _fp(a: Approver) -> str:
    from hsm_emulator.credentials import parse_credential

    return parse_credential("public_key", a.spki_b64).fingerprint


def test_other_asset_or_contract_call_never_matches_amount_tiers(tiers) -> None:  # type: ignore[no-untyped-def]
    assert evaluate(tiers, Action.USE, intent(1, asset="ETH"), frozenset(), 0, 0).released_by is None
    call = intent(1, kind=IntentKind.CONTRACT_CALL)
    assert evaluate(tiers, Action.USE, call, frozenset(), 0, 0).released_by is None
    assert evaluate(tiers, Action.USE, None, frozenset(), 0, 0).released_by is None


def test_two_assets_need_bounds_for_both(people: dict[str, Approver]) -> None:
    p = parse_policy({"ruleUse": {"tokens": [token("a", [], conditions={
        "amounts": [{"asset": "A", "max": 10}]})]}})
    both = Intent("test", "test", IntentKind.TRANSFER,
                  (Transfer("A", 1, "d"), Transfer("B", 1, "d")))
    assert not evaluate(p, Action.USE, both, frozenset(), 0, 0).released
    split = Intent("test", "test", IntentKind.TRANSFER,
                   (Transfer("A", 6, "d"), Transfer("A", 6, "e")))  # 12 in two outputs
    assert not evaluate(p, Action.USE, split, frozenset(), 0, 0).released


def test_or_of_tokens_and_of_groups(people: dict[str, Approver]) -> None:
    a, b, c, d = (people[k] for k in ("t1", "t2", "c1", "c2"))
    p = parse_policy({"ruleUse": {"tokens": [
        token("either", [group("g1", 1, [a])]),
        token("both", [group("g2", 1, [b]), group("g3", 2, [c, d])]),
    ]}})
    fa, fb, fc, fd = (_fp(x) for x in (a, b, c, d))
    table = [
        (set(), None), ({fa}, "either"), ({fb}, None), ({fb, fc}, None),
        ({fb, fc, fd}, "both"), ({fc, fd}, None), ({fa, fb, fc, fd}, "either"),
    ]
    for fps, expected in table:
        assert evaluate(p, Action.USE, None, frozenset(fps), 0, 0).released_by == expected


def test_missing_describes_what_is_needed(tiers, people: dict[str, Approver]) -> None:  # type: ignore[no-untyped-def]
    ev = evaluate(tiers, Action.USE, intent(10**6), frozenset({_fp(people["t1"])}), 0, 10)
    text = " ".join(ev.missing())
    assert "group 'traders' needs 1 more" in text and "compliance" in text
    assert "hold ends in 86390s" in text


def test_rejections_make_a_token_unattainable(people: dict[str, Approver]) -> None:
    a, b = people["t1"], people["t2"]
    p = parse_policy({"ruleUse": {"tokens": [token("t", [group("g", 2, [a, b])])]}})
    ev = evaluate(p, Action.USE, None, frozenset({_fp(a)}), 0, 0, rejected=frozenset({_fp(b)}))
    assert not ev.released and not ev.attainable


def test_rejected_approver_does_not_count(people: dict[str, Approver]) -> None:
    a = people["t1"]
    p = parse_policy({"ruleUse": {"tokens": [token("t", [group("g", 1, [a])])]}})
    fa = frozenset({_fp(a)})
    assert not evaluate(p, Action.USE, None, fa, 0, 0, rejected=fa).released


def test_no_rule_is_refused_unless_open() -> None:
    closed = parse_policy({})
    assert not evaluate(closed, Action.USE, None, frozenset(), 0, 0).released
    assert "no rule" in evaluate(closed, Action.USE, None, frozenset(), 0, 0).missing()[0]
    opened = parse_policy({"openActions": ["use"]})
    assert evaluate(opened, Action.USE, None, frozenset(), 0, 0).released
    assert not evaluate(opened, Action.MODIFY, None, frozenset(), 0, 0).released


def test_destination_allowlist_and_fee_cap() -> None:
    p = parse_policy({"ruleUse": {"tokens": [token("t", [], conditions={
        "destinations": ["0xAbC0000000000000000000000000000000000001"],
        "maxFee": [{"asset": "ETH", "max": 50}]})]}})
    ok = Intent("eth", "main", IntentKind.TRANSFER,
                (Transfer("ETH", 5, "0xabc0000000000000000000000000000000000001"),), 50, "ETH")
    assert evaluate(p, Action.USE, ok, frozenset(), 0, 0).released
    other = Intent("eth", "main", IntentKind.TRANSFER, (Transfer("ETH", 5, "0xdead"),), 1, "ETH")
    assert not evaluate(p, Action.USE, other, frozenset(), 0, 0).released
    pricey = Intent(ok.chain, ok.network, ok.kind, ok.transfers, 51, "ETH")
    assert not evaluate(p, Action.USE, pricey, frozenset(), 0, 0).released


def test_velocity_window() -> None:
    p = parse_policy({"ruleUse": {"tokens": [token("t", [], conditions={
        "amounts": [{"asset": "TST", "max": 100}],
        "velocity": [{"asset": "TST", "windowSeconds": 3600, "max": 250}]})]}})
    ledger = [(0.0, 100), (10.0, 100)]

    def spent(asset: str, since: float) -> int:
        return sum(a for t, a in ledger if t >= since)

    assert evaluate(p, Action.USE, intent(50), frozenset(), 20, 20, spent=spent).released
    assert not evaluate(p, Action.USE, intent(51), frozenset(), 20, 20, spent=spent).released
    # an hour later the first spend has left the window
    assert evaluate(p, Action.USE, intent(100), frozenset(), 3605, 3605, spent=spent).released
