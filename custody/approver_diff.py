"""A ``modify`` request as a person reads it: what the new policy changes.

Works on the two summaries the HSM signs into a modify challenge (``policyChange``, see
:func:`hsm_emulator.display.policy_summary`), so the diff shows authenticated data, not
the broker's. Tiers are matched by token name per action; approvers by fingerprint and
shown by name with the fingerprint's first 12 hex digits. Pure: lines of text.
"""

from __future__ import annotations

from typing import Any

from hsm_emulator.display import format_amount, format_period


def policy_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """One line per change; ``["no change"]`` when the summaries agree."""
    lines: list[str] = []
    for field in ("networks", "openActions"):
        if old.get(field) != new.get(field):
            lines.append(f"{field}: {_list(old.get(field))} -> {_list(new.get(field))}")
    lines += _people_diff("initiators", old.get("initiators") or [],
                          new.get("initiators") or [])
    lines += _units_diff(old.get("assets") or {}, new.get("assets") or {})
    old_rules, new_rules = old.get("rules") or {}, new.get("rules") or {}
    for action in sorted(set(old_rules) | set(new_rules)):
        lines += _rule_diff(action, old_rules.get(action), new_rules.get(action),
                            new.get("assets") or {})
    return lines or ["no change"]


def _list(value: Any) -> str:
    return ", ".join(str(v) for v in value) if value else "none"


def _who(person: dict[str, Any]) -> str:
    fp = str(person.get("fingerprint", ""))[:12]
    return f"{person.get('name') or 'unnamed'} ({fp})"


def _people_diff(what: str, old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[str]:
    before = {p.get("fingerprint"): p for p in old}
    after = {p.get("fingerprint"): p for p in new}
    out = [f"{what}: + {_who(after[f])}" for f in after if f not in before]
    out += [f"{what}: - {_who(before[f])}" for f in before if f not in after]
    return out


def _units_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    for asset in sorted(set(old) | set(new)):
        if old.get(asset) != new.get(asset):
            out.append(f"units of {asset}: {_unit(old.get(asset))} -> {_unit(new.get(asset))}")
    return out


def _unit(unit: Any) -> str:
    if not isinstance(unit, dict):
        return "none (base units)"
    return f"{unit.get('symbol')} with {unit.get('decimals')} decimals"


def _rule_diff(action: str, old: Any, new: Any, units: dict[str, Any]) -> list[str]:
    if old is None:
        return [f"{action}: new rule: " + "; ".join(_tier(t, units) for t in new)]
    if new is None:
        return [f"{action}: rule removed"]
    before = {t.get("name"): t for t in old}
    after = {t.get("name"): t for t in new}
    out = []
    for name, tier in after.items():
        if name not in before:
            out.append(f"{action}: + tier {_tier(tier, units)}")
        elif tier != before[name]:
            out += [f"{action}: tier '{name}': {change}"
                    for change in _tier_changes(before[name], tier, units)]
    out += [f"{action}: - tier '{name}'" for name in before if name not in after]
    return out


def _tier(t: dict[str, Any], units: dict[str, Any]) -> str:
    groups = ", ".join(f"{g.get('quorum')} of {_names(g)}" for g in t.get("groups") or [])
    parts = [f"'{t.get('name')}'", groups or "no approvals"]
    if t.get("timelock"):
        parts.append(f"hold {format_period(t['timelock'])}")
    parts += [f"amount {_band(b, units)}" for b in t.get("amounts") or []]
    return " ".join(parts)


def _names(group: dict[str, Any]) -> str:
    people = ", ".join(_who(a) for a in group.get("approvers") or [])
    return f"'{group.get('name')}' [{people}]"


def _band(b: dict[str, Any], units: dict[str, Any]) -> str:
    asset = str(b.get("asset"))
    unit = units.get(asset)
    low = format_amount(str(b.get("min", "0")), asset, unit)
    if b.get("max") is None:
        return f"from {low}"
    return f"{low} to {format_amount(str(b['max']), asset, unit)}"


def _limit(v: dict[str, Any], units: dict[str, Any]) -> str:
    """A velocity or fee limit: its maximum, per window for a velocity."""
    asset = str(v.get("asset"))
    most = format_amount(str(v.get("max")), asset, units.get(asset))
    window = v.get("windowSeconds")
    return f"{most} per {format_period(window)}" if window else most


def _address_list(listed: Any) -> str:
    """An allowlist named by digest, as the HSM summarised it: digest, size and, against
    the same tier's current allowlist, how many addresses it adds and removes."""
    if not isinstance(listed, dict):
        return "none"
    text = f"{str(listed.get('digest'))[:16]}... ({listed.get('size')} addresses"
    if "added" in listed:
        text += f"; +{listed.get('added')} -{listed.get('removed')}"
    return text + ")"


def _tier_changes(old: dict[str, Any], new: dict[str, Any],
                  units: dict[str, Any]) -> list[str]:
    out = []
    for field, word in (("timelock", "hold"), ("timeout", "timeout")):
        if old.get(field) != new.get(field):
            out.append(f"{word} {format_period(old.get(field))} -> {format_period(new.get(field))}")
    for field, word, show in (("amounts", "amount", _band), ("maxFee", "fee cap", _limit),
                              ("velocity", "rolling limit", _limit)):
        if old.get(field) != new.get(field):
            out.append(f"{word} " + (", ".join(show(b, units) for b in old.get(field) or [])
                                     or "none") + " -> " +
                       (", ".join(show(b, units) for b in new.get(field) or []) or "none"))
    if old.get("destinations") != new.get("destinations"):
        out.append(f"allowed destinations {old.get('destinations') or 'any'} -> "
                   f"{new.get('destinations') or 'any'}")
    if old.get("destinationsList") != new.get("destinationsList"):
        out.append(f"address list {_address_list(old.get('destinationsList'))} -> "
                   f"{_address_list(new.get('destinationsList'))}")
    before = {g.get("name"): g for g in old.get("groups") or []}
    after = {g.get("name"): g for g in new.get("groups") or []}
    for name, g in after.items():
        if name not in before:
            out.append(f"+ group {g.get('quorum')} of {_names(g)}")
            continue
        was = before[name]
        if was.get("quorum") != g.get("quorum"):
            out.append(f"group '{name}' quorum {was.get('quorum')} -> {g.get('quorum')}")
        out += [f"group '{name}' {line.split(': ', 1)[1]}" for line in _people_diff(
            "approvers", was.get("approvers") or [], g.get("approvers") or [])]
    out += [f"- group '{name}'" for name in before if name not in after]
    return out
