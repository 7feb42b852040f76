"""What an approver is shown, in one place: amounts in their unit, and policies in summary.

Pure and chain-free, so the CLI approver, the broker's transfer views and its error
messages format an amount by the same rules (the approver page's script,
``approver_page/crypto.js``, repeats them):

* with a unit (``{"symbol", "decimals"}``, from the key's ``policy.assets`` and echoed by
  the HSM in the challenge): the exact decimal amount and the symbol, ``0.00000141 BTC``,
  thousands grouped by commas, no rounding, no trailing zeros;
* without one: the base units and the asset id, ``141 base units of ERC20:0xab..`` - a
  unit is never guessed.

:func:`units_for` is what the HSM puts in a challenge (``units``: every asset the intent
moves or pays its fee in, ``null`` where the policy names no decimals);
:func:`policy_summary` is what it puts there for a ``modify`` (the current and the new
policy as groups, quorums, approvers by name and fingerprint, and tiers; an address list
by digest and size, and :func:`policy_change` adds what it adds and removes), so the
approver's diff is of authenticated data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .model import Intent
from .policy import MAX_DECIMALS, Policy, Token


def format_amount(units: int | str, asset: str, unit: Mapping[str, Any] | None) -> str:
    """``units`` base units of ``asset`` as a person reads them, in ``unit`` if known.

    Text that is not a whole number of base units is returned as it is, marked so."""
    text = str(units)
    if not text.isdigit():
        return f"{text} {asset} (not a whole number of base units)"
    decimals = unit.get("decimals") if isinstance(unit, Mapping) else None
    symbol = unit.get("symbol") if isinstance(unit, Mapping) else None
    if not isinstance(decimals, int) or isinstance(decimals, bool) or (
            not 0 <= decimals <= MAX_DECIMALS) or not isinstance(symbol, str) or not symbol:
        return f"{_group(text.lstrip('0') or '0')} base units of {asset}"
    padded = text.rjust(decimals + 1, "0")
    whole = padded[:len(padded) - decimals].lstrip("0") or "0"
    frac = padded[len(padded) - decimals:].rstrip("0")
    return f"{_group(whole)}{'.' + frac if frac else ''} {symbol}"


def format_period(seconds: Any) -> str:
    """A hold, timeout or window as people read it: the largest whole unit (``1 d``,
    ``2 h``, ``90 s``); anything but a whole number of seconds as it is, with ``s``."""
    if isinstance(seconds, int) and not isinstance(seconds, bool):
        for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
            if seconds >= size and seconds % size == 0:
                return f"{seconds // size} {unit}"
    return f"{seconds} s"


def _group(digits: str) -> str:
    return f"{int(digits):,}"


def units_for(policy: Policy, intent: Intent | None) -> dict[str, dict[str, Any] | None]:
    """The policy's unit of every asset the intent moves, grants or pays its fee in."""
    if intent is None:
        return {}
    assets = {t.asset for t in intent.transfers} | {g.asset for g in intent.grants}
    if intent.fee_asset:
        assets.add(intent.fee_asset)
    out: dict[str, dict[str, Any] | None] = {}
    for asset in sorted(assets):
        unit = policy.unit(asset)
        out[asset] = None if unit is None else unit.to_json()
    return out


def policy_summary(policy: Policy) -> dict[str, Any]:
    """A policy as approvers compare it: per action its tokens (tiers) with groups,
    quorums, approvers by name and fingerprint, hold, timeout and amount bands; the
    networks, initiators and asset units. Certificates are reduced to fingerprints so a
    modify challenge stays small."""
    rules: dict[str, list[dict[str, Any]]] = {}
    for action, rule in policy.rules:
        rules[action.value] = [_token(t) for t in rule.tokens]
    return {
        "rules": rules,
        "openActions": sorted(a.value for a in policy.open_actions),
        "networks": sorted(policy.networks),
        "initiators": [{"name": a.name, "fingerprint": a.fingerprint}
                       for a in policy.initiators],
        "assets": {a.asset: a.to_json() for a in policy.assets},
        "blocked": policy.blocked,
    }


def policy_change(old: Policy, new: Policy) -> dict[str, Any]:
    """A modify's ``policyChange``: both summaries, and for each tier of the new policy
    that names an address list, how many addresses it adds and removes against the
    allowlist of the current policy's tier of the same action and name (when that tier
    has one), so approvers see the size of a change they cannot read address by
    address."""
    before = {(a, t.name): t.conditions.destinations for a, r in old.rules for t in r.tokens}
    to = policy_summary(new)
    for action, rule in new.rules:
        for token, shown in zip(rule.tokens, to["rules"][action.value], strict=True):
            listed, was = token.conditions.destinations, before.get((action, token.name))
            if token.conditions.destinations_list is not None and listed is not None and (
                    was is not None):
                shown["destinationsList"].update(added=len(listed - was),
                                                 removed=len(was - listed))
    return {"from": policy_summary(old), "to": to}


def _token(token: Token) -> dict[str, Any]:
    c = token.conditions
    listed = {} if c.destinations_list is None else {"destinationsList": {
        "digest": c.destinations_list,
        "size": None if c.destinations is None else len(c.destinations)}}
    return {**listed,
        "name": token.name, "timelock": token.timelock, "timeout": token.timeout,
        "groups": [{"name": g.name, "quorum": g.quorum,
                    "approvers": [{"name": a.name, "fingerprint": a.fingerprint}
                                  for a in g.approvers]} for g in token.groups],
        "amounts": [{"asset": b.asset, "min": str(b.min),
                     "max": None if b.max is None else str(b.max)} for b in c.amounts],
        "maxFee": [{"asset": f.asset, "max": str(f.max)} for f in c.max_fee],
        "velocity": [{"asset": v.asset, "windowSeconds": v.window_seconds, "max": str(v.max)}
                     for v in c.velocity],
        "destinations": None if c.destinations is None else len(c.destinations),
    }
