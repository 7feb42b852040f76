"""Why a transfer ended, in the desk's words: who rejected it, which tier's limit it broke,
amounts in the asset's decimal units with its symbol - never the HSM's policy check as it
reads it (token by token, in base units). The HSM's own text stays on the sign request
(``/v1/requests``) for whoever audits it; the transfer says what happened.

A pure module: it rewrites the reason of a closed sign request given the wallet's assets
and the names the key's policy gives its approvers."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from hsm_emulator.display import format_amount

from .policy import AssetInfo

#: ``token 'medium': <part>; <part>`` as :meth:`hsm_emulator.evaluate.TokenStatus.describe_missing`
#: writes it, one per token, joined by "; " (the broker's error for a closed request).
_TOKEN = re.compile(r"token '([^']*)': ")
_AMOUNT = re.compile(r"(\S+) amount (\d+) (above|below) (\d+)")
_VELOCITY = re.compile(r"(\S+) velocity (\d+) over (\d+)s exceeds limit (\d+)")
_FEE = re.compile(r"fee and rent (\d+) (\S+) above cap (\d+)")
_GROUP = re.compile(r"group '([^']*)' needs (\d+) more approval\(s\)")
_HOLD = re.compile(r"hold ends in (\d+)s")


def rejected(names: Iterable[str]) -> str:
    who = sorted(set(names))
    return "rejected by " + (", ".join(who) if who else "an approver")


def closed(status: str, error: str | None, assets: list[AssetInfo]) -> str:
    """The reason for a request that ended ``status`` (expired, failed, cancelled) with the
    broker's ``error``, reworded tier by tier with amounts in decimal units."""
    text = (error or "").strip()
    if not text:
        return status
    tiers = _tiers(text)
    if not tiers:
        return _amounts(text, assets)
    parts = [f"{name}: {_amounts(body, assets)}" for name, body in tiers]
    lead = {"expired": "expired before any tier released it",
            "failed": "no tier releases it"}.get(status, status)
    return f"{lead} ({'; '.join(parts)})"


def _tiers(text: str) -> list[tuple[str, str]]:
    """``token 'a': x; y; token 'b': z`` -> ``[("a", "x; y"), ("b", "z")]``."""
    marks = list(_TOKEN.finditer(text))
    out = []
    for i, m in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        body = text[m.end():end].strip().rstrip(";|").strip()
        if body != "satisfied":
            out.append((m.group(1) or f"tier {i + 1}", body))
    return out


def _amounts(text: str, assets: list[AssetInfo]) -> str:
    """Base units next to an asset id -> the decimal amount and the desk's symbol."""
    by_id: Mapping[str, AssetInfo] = {a.asset: a for a in assets}

    def fmt(asset: str, units: str) -> str:
        info = by_id.get(asset)
        unit = None if info is None else {"symbol": info.symbol, "decimals": info.decimals}
        return format_amount(units, asset, unit)

    text = _AMOUNT.sub(lambda m: f"{fmt(m[1], m[2])} is {m[3]} its limit of "
                                 f"{fmt(m[1], m[4])}", text)
    text = _VELOCITY.sub(lambda m: f"{fmt(m[1], m[2])} in {_period(int(m[3]))} would "
                                   f"exceed its limit of {fmt(m[1], m[4])}", text)
    text = _FEE.sub(lambda m: f"fee {fmt(m[2], m[1])} is above its cap of "
                              f"{fmt(m[2], m[3])}", text)
    text = _GROUP.sub(lambda m: f"{m[2]} more approval(s) from {m[1]} needed", text)
    return _HOLD.sub(lambda m: f"on hold for {m[1]} s more", text)


def _period(seconds: int) -> str:
    if seconds % 86400 == 0:
        days = seconds // 86400
        return "24 h" if days == 1 else f"{days} days"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    return f"{seconds} s"
