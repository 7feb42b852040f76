"""The treasury policy template of the design card, as SKA tokens the HSM enforces.

Per asset of a wallet, three tokens (ORed by the HSM):

* ``small-<SYM>``  - amount <= ``small``: no approvals (auto-sign), capped by a rolling
  24 h total of what the auto tiers signed, ``dailySmall`` (default: ``medium``), so
  structuring many small transfers never moves more in a day than one request that
  needs the traders (approved transfers do not count against it: ``releasedBy``);
* ``medium-<SYM>`` - amount <= ``medium``: ``tradersQuorum`` of the traders group,
  within ``mediumTimeout``;
* ``large-<SYM>``  - up to ``max`` (the hard limit, if set): traders AND
  ``complianceQuorum`` of compliance, and a ``hold`` (timelock) before release, within
  ``largeTimeout``.

Every tier caps what a transaction may cost beyond what it moves - its maximum fee plus
rent, in the chain's native asset - at ``maxFee`` (default per chain, from its spec:
:data:`FEE_CAPS`); the HSM refuses a conditioned token without one, since the broker
chooses the fee. The native asset's daily limit counts total native outflow (transfers,
fees and rent) and is carried by every auto tier, token tiers included, so fees of
auto-signed token transfers draw on it too. Tiers release transfers only: approvals,
permits and opaque contract calls match no tier. The policy names the wallet's network
(``networks``): the key signs for no other, and each asset's symbol and decimals
(``assets``), which the HSM echoes in its challenges so approvers see amounts in units
they can trust.

Amounts in the configuration are decimal strings in the asset's units; the tokens carry
base units, evaluated by the HSM on the transaction it decodes itself. Block needs one
trader; unblock and modify need the large tier's approvers. ``allowlist`` (an address
list's digest, uploaded to the HSM in chunks) limits the tiers in ``allowlistTiers``
(default all) to its addresses. ``custody policy explain`` shows the result in plain
words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chains.specs import SPECS
from custody.errors import BadRequest

from .units import to_base_units

DEFAULTS: dict[str, Any] = {"hold": 86400, "mediumTimeout": 3600, "largeTimeout": 3 * 86400,
                            "tradersQuorum": 2, "complianceQuorum": 1}
_KNOWN = {"traders", "compliance", "tiers", "maxFee", "allowlist", "allowlistTiers", *DEFAULTS}
#: The tiers an ``allowlist`` binds unless ``allowlistTiers`` names fewer.
TIER_NAMES = ("small", "medium", "large")
#: Default cap on fee plus rent per transaction, by native asset, in its units: about 50x
#: a busy day's fee for an ordinary transfer. Each chain's spec gives its own and why.
FEE_CAPS = {spec.native.symbol: spec.fee_cap for spec in SPECS.values()}


@dataclass(frozen=True)
class AssetInfo:
    symbol: str  #: what desks write: BTC, ETH, USDC
    asset: str  #: the chain's id the HSM's decoder reports: BTC, ETH, ERC20:0x.., SPL:<mint>
    decimals: int

    def to_json(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "asset": self.asset, "decimals": self.decimals}


def _int(config: dict[str, Any], name: str, low: int, high: int) -> int:
    value = config.get(name, DEFAULTS[name])
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"policy.{name} must be a whole number in [{low}, {high}]")
    return value


def _people(config: dict[str, Any], name: str, quorum: int) -> list[dict[str, Any]]:
    people = config.get(name)
    if not isinstance(people, list) or len(people) < quorum:
        raise BadRequest(f"policy.{name} must list at least {quorum} approvers")
    out = []
    for i, p in enumerate(people):
        if not isinstance(p, dict) or not isinstance(p.get("value"), str) or (
                p.get("type", "public_key") not in ("public_key", "certificate")):
            raise BadRequest(f"policy.{name}[{i}] needs type public_key|certificate and value")
        out.append({"type": p.get("type", "public_key"), "value": p["value"],
                    "name": str(p.get("name", f"{name}-{i + 1}"))[:64]})
    return out


def treasury_policy(config: dict[str, Any], assets: list[AssetInfo], *,
                    network: str | None = None) -> dict[str, Any]:
    """The SKA policy (seed 003's shape plus conditions) for a wallet's configuration.

    ``assets[0]`` is the chain's native asset (it pays the fees); ``network`` is the
    wallet's ``chain:network`` (``bitcoin:regtest``, ``ethereum:1``), the only one its key
    will sign for (None only to explain a configuration: such a key signs no chain)."""
    if not isinstance(config, dict):
        raise BadRequest("policy must be an object")
    unknown = set(config) - _KNOWN
    if unknown:
        raise BadRequest(f"policy has unknown fields {sorted(unknown)}")
    tq = _int(config, "tradersQuorum", 1, 16)
    cq = _int(config, "complianceQuorum", 1, 16)
    hold = _int(config, "hold", 0, 30 * 86400)
    medium_timeout = _int(config, "mediumTimeout", 0, 30 * 86400)
    large_timeout = _int(config, "largeTimeout", 0, 90 * 86400)
    if large_timeout and large_timeout <= hold:
        raise BadRequest("policy.largeTimeout must be longer than the hold")
    traders = {"name": "traders", "quorum": tq, "approvals": _people(config, "traders", tq)}
    compliance = {"name": "compliance", "quorum": cq,
                  "approvals": _people(config, "compliance", cq)}
    tiers = config.get("tiers")
    if not isinstance(tiers, dict):
        raise BadRequest("policy.tiers must map each asset symbol to its thresholds")
    by_symbol = {a.symbol: a for a in assets}
    if set(tiers) != set(by_symbol):
        raise BadRequest(f"policy.tiers must cover exactly the wallet's assets "
                         f"{sorted(by_symbol)}")
    native = assets[0]
    common = _common_conditions(config, native, tiers.get(native.symbol))
    tokens: list[dict[str, Any]] = []
    for symbol in sorted(tiers):
        tokens += _asset_tokens(symbol, tiers[symbol], by_symbol[symbol], traders, compliance,
                                hold, medium_timeout, large_timeout, common)
    _bind_allowlist(config, tokens)
    auto = [t["name"] for t in tokens if not t["groups"]]
    for t in tokens:  # daily totals count what the auto tiers signed, not approved requests
        for v in t["conditions"].get("velocity", []):
            v["releasedBy"] = auto
    policy: dict[str, Any] = {
        "ruleUse": {"tokens": tokens},
        "ruleBlock": {"tokens": [{"name": "block", "timelock": 0, "timeout": 0, "groups": [
            {**traders, "quorum": 1}]}]},
        "ruleUnblock": {"tokens": [{"name": "unblock", "timelock": 0, "timeout": 0,
                                    "groups": [traders, compliance]}]},
        "ruleModify": {"tokens": [{"name": "modify", "timelock": 0, "timeout": 0,
                                   "groups": [traders, compliance]}]},
    }
    if network is not None:
        policy["networks"] = [network]
    # how approvers see amounts: the HSM echoes these units in its challenges
    policy["assets"] = [{"asset": a.asset, "symbol": a.symbol, "decimals": a.decimals}
                        for a in assets]
    return policy


def _bind_allowlist(config: dict[str, Any], tokens: list[dict[str, Any]]) -> None:
    """``allowlist``: the digest of an address list uploaded to the HSM
    (``/v1/address-lists``, ``custody list upload``); the tiers in ``allowlistTiers``
    (default: all three) then send only to its addresses. The HSM refuses the policy if it
    does not hold that list completely."""
    digest = config.get("allowlist")
    if digest is None:
        if "allowlistTiers" in config:
            raise BadRequest("policy.allowlistTiers needs policy.allowlist")
        return
    if not isinstance(digest, str) or len(digest) != 64 or set(digest) - set(
            "0123456789abcdef"):
        raise BadRequest("policy.allowlist: an address list's digest (64 lower-case hex "
                         "digits, as /v1/address-lists answers)")
    tiers = config.get("allowlistTiers", list(TIER_NAMES))
    if not isinstance(tiers, list) or not tiers or set(tiers) - set(TIER_NAMES):
        raise BadRequest(f"policy.allowlistTiers: some of {list(TIER_NAMES)}")
    for t in tokens:
        if t["name"].split("-", 1)[0] in tiers:
            t["conditions"]["destinations"] = {"list": digest}


@dataclass(frozen=True)
class _Common:
    """Conditions every tier carries: the fee cap, and the auto tiers' native velocity."""

    max_fee: dict[str, str]
    native_daily: dict[str, Any] | None


def _common_conditions(config: dict[str, Any], native: AssetInfo, native_tier: Any) -> _Common:
    text = config.get("maxFee", FEE_CAPS.get(native.symbol))
    if text is None:
        raise BadRequest(f"policy.maxFee: the most a {native.symbol} transaction may pay in "
                         "fees, as a decimal string")
    cap = to_base_units(text, native.decimals, what="policy.maxFee")
    daily = None
    if isinstance(native_tier, dict) and "medium" in native_tier:  # else refused later
        daily = {"asset": native.asset, "windowSeconds": 86400,
                 "max": str(_daily(native.symbol, native_tier, native))}
    return _Common({"asset": native.asset, "max": str(cap)}, daily)


def _daily(symbol: str, tier: dict[str, Any], info: AssetInfo) -> int:
    """The auto tier's rolling 24 h total: ``dailySmall``, or by default ``medium`` - so
    structuring small transfers never moves more in a day than one request that needs
    the traders."""
    return to_base_units(tier.get("dailySmall", tier["medium"]), info.decimals,
                         what=f"tiers.{symbol}.dailySmall")


def _asset_tokens(symbol: str, tier: Any, info: AssetInfo, traders: dict[str, Any],
                  compliance: dict[str, Any], hold: int, medium_timeout: int,
                  large_timeout: int, common: _Common) -> list[dict[str, Any]]:
    if not isinstance(tier, dict) or set(tier) - {"small", "medium", "dailySmall", "max"} or (
            "small" not in tier or "medium" not in tier):
        raise BadRequest(f"policy.tiers.{symbol} needs small and medium (optionally dailySmall "
                         "and max, the hard limit), as decimal strings")
    small = to_base_units(tier["small"], info.decimals, what=f"tiers.{symbol}.small")
    medium = to_base_units(tier["medium"], info.decimals, what=f"tiers.{symbol}.medium")
    if not 0 <= small < medium:
        raise BadRequest(f"policy.tiers.{symbol}: small must be below medium")
    large: dict[str, Any] = {"asset": info.asset, "min": "0"}
    if "max" in tier:
        hard = to_base_units(tier["max"], info.decimals, what=f"tiers.{symbol}.max")
        if hard <= medium:
            raise BadRequest(f"policy.tiers.{symbol}: max must be above medium")
        large["max"] = str(hard)
    fee = {"maxFee": [common.max_fee]}
    small_cond: dict[str, Any] = {"amounts": [{"asset": info.asset, "max": str(small)}], **fee}
    velocity = [dict(common.native_daily)] if common.native_daily else []
    if info.asset != common.max_fee["asset"]:
        velocity.append({"asset": info.asset, "windowSeconds": 86400,
                         "max": str(_daily(symbol, tier, info))})
    small_cond["velocity"] = velocity
    return [
        {"name": f"small-{symbol}", "timelock": 0, "timeout": 0, "groups": [],
         "conditions": small_cond},
        {"name": f"medium-{symbol}", "timelock": 0, "timeout": medium_timeout,
         "groups": [traders], "conditions": {"amounts": [{"asset": info.asset,
                                                          "max": str(medium)}], **fee}},
        {"name": f"large-{symbol}", "timelock": hold, "timeout": large_timeout,
         "groups": [traders, compliance],
         "conditions": {"amounts": [large], **fee}},
    ]
