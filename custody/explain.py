"""A policy in plain words: what each action needs, tier by tier.

Pure: parses with the HSM's own parser (so what is explained is what is enforced) and
returns lines of text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chains.specs import SPECS
from hsm_emulator.display import format_amount, format_period
from hsm_emulator.model import Action
from hsm_emulator.policy import DEFAULT_KINDS, Conditions, Policy, Token, parse_policy

#: Decimals of well-known assets, for showing base units as amounts: every chain's native
#: asset (from its spec), and the test decoder's TST.
DECIMALS = {**{spec.native.asset: spec.native.decimals for spec in SPECS.values()}, "TST": 0}
ACTION_WORDS = {Action.USE: "Signing (use)", Action.BLOCK: "Blocking the key",
                Action.UNBLOCK: "Unblocking the key", Action.MODIFY: "Changing this policy"}


def amount(asset: str, units: int, known: Mapping[str, int] | None = None) -> str:
    """By the approvers' formatter (:func:`hsm_emulator.display.format_amount`), with the
    decimals ``known`` or well known; explained policies use their own ``assets`` first."""
    decimals = (known or {}).get(asset, DECIMALS.get(asset))
    unit = None if decimals is None else {"symbol": asset, "decimals": decimals}
    return format_amount(units, asset, unit)


def explain(document: dict[str, Any], decimals: Mapping[str, int] | None = None) -> list[str]:
    """``decimals``: asset id -> decimals for assets beyond the well-known ones (tokens)."""
    policy = parse_policy(document)
    known: dict[str, dict[str, Any]] = {
        asset: {"symbol": asset, "decimals": d} for asset, d in DECIMALS.items()}
    known |= {asset: {"symbol": asset, "decimals": d} for asset, d in (decimals or {}).items()}
    known |= {a.asset: {"symbol": a.symbol, "decimals": a.decimals} for a in policy.assets}
    lines = [f"Policy {policy.digest[:16]} - the key is currently "
             f"{'BLOCKED' if policy.blocked else 'usable'}.",
             "Networks: " + (", ".join(sorted(policy.networks)) if policy.networks else
                             "none named - it signs no chain transaction") + "."]
    if policy.initiators:
        names = ", ".join(a.name or a.fingerprint[:12] for a in policy.initiators)
        lines.append(f"Initiators: {names} - every request must be signed by one of them "
                     "(the HSM checks it), who then cannot approve it.")
    for action in Action:
        lines.extend(_rule(policy, action, known))
    return lines


def _rule(policy: Policy, action: Action, known: Mapping[str, dict[str, Any]]) -> list[str]:
    rule = policy.rule(action)
    head = ACTION_WORDS[action]
    if rule is None:
        free = action in policy.open_actions
        return [f"{head}: {'allowed without approvals' if free else 'never allowed'} "
                "(no rule)."]
    out = [f"{head}: any one of these {len(rule.tokens)} way(s):"]
    for i, token in enumerate(rule.tokens, 1):
        out.append(f"  {i}. {_token(token, known)}")
    return out


def _token(token: Token, known: Mapping[str, dict[str, Any]]) -> str:
    parts = []
    when = _conditions(token.conditions, known)
    parts.append(f"'{token.name or 'unnamed'}'" + (f" when {when}" if when else ""))
    if not token.groups:
        parts.append("signed at once, no approvals")
    for g in token.groups:
        names = ", ".join(a.name or a.fingerprint[:12] for a in g.approvers)
        parts.append(f"{g.quorum} of {len(g.approvers)} from '{g.name}' ({names})")
    if token.timelock:
        parts.append(f"then a hold of {format_period(token.timelock)}")
    if token.timeout:
        parts.append(f"all within {format_period(token.timeout)} of the request")
    return "; ".join(parts) + "."


def _conditions(c: Conditions, known: Mapping[str, dict[str, Any]]) -> str:
    def show(asset: str, units: int) -> str:
        return format_amount(units, asset, known.get(asset))

    words = []
    for b in c.amounts:
        if b.max is None:
            words.append(f"{b.asset} amount is at least {show(b.asset, b.min)}"
                         if b.min else f"the transfer is in {b.asset}")
        elif b.min:
            words.append(f"{b.asset} amount is between {show(b.asset, b.min)} and "
                         f"{show(b.asset, b.max)}")
        else:
            words.append(f"{b.asset} amount is at most {show(b.asset, b.max)}")
    if c.destinations is not None:
        words.append(f"every destination is one of {len(c.destinations)} allowed address(es)")
    elif c.destinations_list is not None:
        words.append(f"every destination is on address list {c.destinations_list[:16]}... "
                     "(held by the HSM)")
    for v in c.velocity:
        words.append(f"at most {show(v.asset, v.max)} leaves (fees included) in any "
                     f"{format_period(v.window_seconds)}")
    for f in c.max_fee:
        words.append(f"fee plus rent is at most {show(f.asset, f.max)}")
    if not c.empty and not c.max_fee:
        words.append("(never met: a token with conditions needs a fee cap)")
    if c.kinds is not None and c.kinds != DEFAULT_KINDS:
        words.append("it is one of: " + ", ".join(sorted(k.value for k in c.kinds)))
    return " and ".join(words)
