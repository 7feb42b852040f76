"""Smart Key Attributes policies: parsed from seed 003's JSON into immutable objects.

The JSON shape is exactly the TSB ``POST /v1/key`` body's ``policy`` object::

    {"ruleUse": {"tokens": [{"name", "timelock", "timeout",
                             "groups": [{"name", "quorum", "approvals": [{"type", "value"}]}]}]},
     "ruleBlock": ..., "ruleUnblock": ..., "ruleModify": ...,
     "keyStatus": {"blocked": false}}

This project adds, all optional:

* ``token.conditions`` - evaluated by the HSM on the intent it decoded from the payload
  (value-complete: see :mod:`hsm_emulator.evaluate` for the exact semantics):
  ``amounts`` (per asset ``min``/``max`` in base units, on what is transferred or
  granted), ``destinations`` (allowlist of every recipient, grantee and called contract:
  an array of up to :data:`MAX_LIST` addresses, or ``{"list": "<sha256 hex>"}`` naming an
  address list uploaded to the HSM, :mod:`hsm_emulator.address_lists`; parsed here as a
  reference, which the HSM resolves - a policy naming a list it does not hold is invalid),
  ``velocity`` (per asset rolling window over the total outflow, fees and rent included:
  at most ``max`` in ``windowSeconds``; ``releasedBy`` names the tokens whose releases
  count, default every release of the key family), ``maxFee`` (per fee asset, on fee plus rent:
  **required** for the payload's fee asset by any token with conditions) and ``kinds``
  (which intent kinds the token may release; default ``["transfer"]``).
* ``policy.openActions`` - actions a key performs freely when it has *no rule* for them.
  Without it, an action with no rule is refused: the safe default.
* ``policy.networks`` - the chain networks the key signs for, as ``chain:network``
  (``bitcoin:regtest``, ``ethereum:1``, ``solana:mainnet``). A chain payload for any
  other network is refused; a policy naming none refuses every chain payload.
  ``UNSPECIFIED`` payloads (the TSB tutorial's) carry no network and are unaffected.
* ``policy.initiators`` - ``[{"type", "value", "name"}]``, credentials as in a group's
  ``approvals``: who may ask for this key's actions. With it, every request must carry an
  initiation signed by one of them (:mod:`hsm_emulator.initiation`); the HSM then knows
  the initiator from that signature, not from the broker, and refuses their approval of
  the request. Without it the initiator is whatever the broker says.
* ``policy.assets`` - ``[{"asset", "symbol", "decimals"}]``: how approvers are shown the
  amounts of an asset (``ERC20:0x..`` as ``USDC`` with 6 decimals). The HSM echoes the
  entries of the assets a request moves in its challenge, so the units an approver sees
  are as authenticated as the amounts; an asset without an entry is shown in base units
  with its id. Each asset and each symbol once; it changes no evaluation.

An approver is its public key: one key counts once in a token, whatever its encodings
or bindings (a passkey listed with two RP bindings is still one person).

Times are seconds. TSB insists on multiples of 60; this HSM accepts any whole number
of seconds (so tests and short holds work) and says so in :func:`parse_policy`.
A ``timeout`` of 0 means no timeout. Amounts may be JSON integers or decimal strings,
because wei amounts exceed what a JSON double can hold.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .canonical import canonical_json
from .credentials import Credential, parse_credential
from .errors import CredentialInvalid, PolicyInvalid
from .model import Action, IntentKind

#: Bounds on hostile input: no real policy comes near them.
MAX_TOKENS = 32
MAX_GROUPS = 16
MAX_APPROVERS = 64
MAX_NAME = 128
MAX_SECONDS = 10 * 365 * 24 * 3600
MAX_AMOUNT = 2**256 - 1
MAX_LIST = 1024

APPROVAL_TYPES = frozenset({"certificate", "public_key", "webauthn"})
RULE_FIELDS = {
    Action.USE: "ruleUse",
    Action.BLOCK: "ruleBlock",
    Action.UNBLOCK: "ruleUnblock",
    Action.MODIFY: "ruleModify",
}


@dataclass(frozen=True)
class Approver:
    type: str
    value: str
    credential: Credential
    name: str = ""

    @property
    def fingerprint(self) -> str:
        return self.credential.fingerprint

    @property
    def identity(self) -> str:
        return self.credential.identity


@dataclass(frozen=True)
class Group:
    name: str
    quorum: int
    approvers: tuple[Approver, ...]

    @cached_property
    def members(self) -> tuple[str, ...]:
        """The approvers' fingerprints, in policy order, hashed once per parsed policy
        (a fingerprint is a SHA-256 of the key: evaluation reads them on every request)."""
        return tuple(a.fingerprint for a in self.approvers)

    def fingerprints(self) -> frozenset[str]:
        return frozenset(self.members)


@dataclass(frozen=True)
class AmountBound:
    asset: str
    min: int
    max: int | None


@dataclass(frozen=True)
class VelocityLimit:
    asset: str
    window_seconds: int
    max: int
    #: count only what these tokens (by name) released; None: all the key family released
    released_by: frozenset[str] | None = None


@dataclass(frozen=True)
class FeeLimit:
    asset: str
    max: int


#: What a conditioned token releases unless its ``kinds`` says otherwise.
DEFAULT_KINDS = frozenset({IntentKind.TRANSFER})


@dataclass(frozen=True)
class Conditions:
    amounts: tuple[AmountBound, ...] = ()
    destinations: frozenset[str] | None = None
    velocity: tuple[VelocityLimit, ...] = ()
    max_fee: tuple[FeeLimit, ...] = ()
    kinds: frozenset[IntentKind] | None = None  #: None: not given (DEFAULT_KINDS applies)
    #: ``destinations: {"list": digest}``: the address list named; ``destinations`` is
    #: None until the HSM resolves it (and evaluation then refuses: fail closed)
    destinations_list: str | None = None

    @property
    def empty(self) -> bool:
        return not (self.amounts or self.destinations is not None or self.velocity or
                    self.max_fee or self.kinds is not None or
                    self.destinations_list is not None)

    @property
    def allowed_kinds(self) -> frozenset[IntentKind]:
        return DEFAULT_KINDS if self.kinds is None else self.kinds

    @cached_property
    def fee_caps(self) -> dict[str, int]:
        """``max_fee`` by asset, the first limit given for an asset (evaluation reads it
        once per payload; the conditions are parsed once per policy)."""
        caps: dict[str, int] = {}
        for f in self.max_fee:
            caps.setdefault(f.asset, f.max)
        return caps

    @cached_property
    def amount_bounds(self) -> dict[str, AmountBound]:
        """``amounts`` by asset, the last bound given for an asset."""
        return {b.asset: b for b in self.amounts}


@dataclass(frozen=True)
class Token:
    name: str
    timelock: int
    timeout: int
    groups: tuple[Group, ...]
    conditions: Conditions = Conditions()


@dataclass(frozen=True)
class Rule:
    tokens: tuple[Token, ...]


@dataclass(frozen=True)
class AssetUnit:
    """``policy.assets[]``: an asset's display symbol and decimals, as the policy's
    approvers agreed to them."""

    asset: str
    symbol: str
    decimals: int

    def to_json(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "decimals": self.decimals}


@dataclass(frozen=True)
class Policy:
    rules: tuple[tuple[Action, Rule], ...]
    blocked: bool = False
    open_actions: frozenset[Action] = frozenset()
    source: str = "{}"  #: canonical JSON of the document, for hashing and display
    networks: frozenset[str] = frozenset()  #: ``chain:network`` entries it signs for
    #: who may initiate requests (``policy.initiators``); empty: the broker names them
    initiators: tuple[Approver, ...] = ()
    assets: tuple[AssetUnit, ...] = ()  #: ``policy.assets``: display units per asset

    def rule(self, action: Action) -> Rule | None:
        for a, r in self.rules:
            if a is action:
                return r
        return None

    @property
    def digest(self) -> str:
        """SHA-256 of the canonical policy document (status excluded): what attestations bind."""
        return hashlib.sha256(self.source.encode()).hexdigest()

    def approvers(self) -> frozenset[str]:
        return frozenset(
            fp
            for _, rule in self.rules
            for token in rule.tokens
            for group in token.groups
            for fp in group.fingerprints()
        )

    def with_blocked(self, blocked: bool) -> Policy:
        return Policy(self.rules, blocked, self.open_actions, self.source, self.networks,
                      self.initiators, self.assets)

    def unit(self, asset: str) -> AssetUnit | None:
        """The policy's symbol and decimals for an asset id, if it names them."""
        for a in self.assets:
            if a.asset == asset:
                return a
        return None

    def initiator(self, fingerprint: str) -> Approver | None:
        """The ``initiators`` entry of this credential fingerprint (its encoding or
        passkey binding must be the one listed, as for approvers), if any."""
        for a in self.initiators:
            if a.fingerprint == fingerprint:
                return a
        return None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.source)
        doc["keyStatus"] = {"blocked": self.blocked}
        return doc


# --------------------------------------------------------------------------- parsing


def parse_policy(data: Any) -> Policy:
    """Parse and validate a policy document; :class:`PolicyInvalid` names the bad field."""
    if data is None:
        data = {}
    _obj(data, "policy", {"ruleUse", "ruleBlock", "ruleUnblock", "ruleModify", "keyStatus",
                          "openActions", "networks", "initiators", "assets"})
    rules = []
    for action, field in RULE_FIELDS.items():
        if data.get(field) is not None:
            rules.append((action, _rule(data[field], f"policy.{field}")))
    blocked = False
    if data.get("keyStatus") is not None:
        status = _obj(data["keyStatus"], "policy.keyStatus", {"blocked"})
        blocked = _bool(status.get("blocked", False), "policy.keyStatus.blocked")
    open_actions = _open_actions(data.get("openActions", []))
    if blocked and not any(a is Action.UNBLOCK for a, _ in rules) and (
        Action.UNBLOCK not in open_actions
    ):
        raise PolicyInvalid("policy.keyStatus.blocked", "a blocked key needs a ruleUnblock")
    networks = _networks(data.get("networks", []))
    initiators = _initiators(data["initiators"]) if "initiators" in data else ()
    assets = _assets(data.get("assets", []))
    source_doc = {k: v for k, v in data.items() if k != "keyStatus"}
    return Policy(tuple(rules), blocked, open_actions, canonical_json(source_doc).decode(),
                  networks, initiators, assets)


#: A display symbol: letters, digits and ``.-_``, so no space, control or look-alike
#: punctuation can make one unit read as another.
_SYMBOL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-_")
#: 2**256 has 78 digits: more decimals than that would show every amount as 0.000...
MAX_DECIMALS = 77


def _assets(value: Any) -> tuple[AssetUnit, ...]:
    """``policy.assets``: each asset id and each symbol at most once, so an approver
    never sees two assets under one name."""
    out = []
    for i, entry in enumerate(_list(value, "policy.assets", MAX_LIST)):
        path = f"policy.assets[{i}]"
        e = _obj(entry, path, {"asset", "symbol", "decimals"})
        for field in ("asset", "symbol", "decimals"):
            if field not in e:
                raise PolicyInvalid(f"{path}.{field}", "is required")
        symbol = e["symbol"]
        if not isinstance(symbol, str) or not 0 < len(symbol) <= 16 or (
                not set(symbol) <= _SYMBOL_CHARS):
            raise PolicyInvalid(f"{path}.symbol", "must be 1-16 letters, digits or .-_")
        out.append(AssetUnit(_asset(e["asset"], f"{path}.asset"), symbol,
                             _int(e["decimals"], f"{path}.decimals", 0, MAX_DECIMALS)))
    for what in ("asset", "symbol"):
        seen = [getattr(a, what) for a in out]
        if len(set(seen)) != len(seen):
            raise PolicyInvalid("policy.assets", f"each {what} may be listed once")
    return tuple(out)


def _initiators(value: Any) -> tuple[Approver, ...]:
    """``policy.initiators``: approver entries, each public key once (whatever its
    encoding or binding); an empty list would read as "initiators required" while naming
    nobody, so it is refused - leave the field out instead."""
    path = "policy.initiators"
    entries = _list(value, path, MAX_APPROVERS)
    if not entries:
        raise PolicyInvalid(path, "name at least one initiator, or leave the field out")
    initiators = tuple(_approver(a, f"{path}[{i}]") for i, a in enumerate(entries))
    ids = [a.identity for a in initiators]
    if len(set(ids)) != len(ids):
        raise PolicyInvalid(path, "duplicate initiator (one public key listed twice)")
    return initiators


_NETWORK_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_:")


def _networks(value: Any) -> frozenset[str]:
    out = set()
    for i, v in enumerate(_list(value, "policy.networks", 64)):
        chain, _, net = v.partition(":") if isinstance(v, str) else ("", "", "")
        if not (chain and net and len(v) <= 64 and set(v) <= _NETWORK_CHARS):
            raise PolicyInvalid(f"policy.networks[{i}]", "must be chain:network, e.g. "
                                "bitcoin:mainnet, ethereum:1, solana:mainnet")
        out.add(f"{chain}:{net.removeprefix('eip155:')}")
    return frozenset(out)


def _open_actions(value: Any) -> frozenset[Action]:
    lst = _list(value, "policy.openActions", 4)
    out = set()
    for i, v in enumerate(lst):
        try:
            out.add(Action(v))
        except ValueError:
            raise PolicyInvalid(f"policy.openActions[{i}]", f"unknown action {v!r}") from None
    return frozenset(out)


def _rule(data: Any, path: str) -> Rule:
    _obj(data, path, {"tokens"})
    tokens = _list(data.get("tokens"), f"{path}.tokens", MAX_TOKENS)
    if not tokens:
        raise PolicyInvalid(f"{path}.tokens", "a rule needs at least one token")
    return Rule(tuple(_token(t, f"{path}.tokens[{i}]") for i, t in enumerate(tokens)))


def _token(data: Any, path: str) -> Token:
    _obj(data, path, {"name", "timelock", "timeout", "groups", "conditions"})
    name = _name(data.get("name", ""), f"{path}.name")
    timelock = _seconds(data.get("timelock", 0), f"{path}.timelock")
    timeout = _seconds(data.get("timeout", 0), f"{path}.timeout")
    if timeout and timelock > timeout:
        raise PolicyInvalid(f"{path}.timelock", f"timelock {timelock}s exceeds timeout {timeout}s")
    groups = tuple(
        _group(g, f"{path}.groups[{i}]")
        for i, g in enumerate(_list(data.get("groups", []), f"{path}.groups", MAX_GROUPS))
    )
    seen: dict[str, str] = {}
    for gi, group in enumerate(groups):
        for approver in group.approvers:
            if approver.identity in seen:
                raise PolicyInvalid(
                    f"{path}.groups[{gi}]",
                    f"approver already in group {seen[approver.identity]!r} of this token: "
                    "one person must not count for two groups",
                )
            seen[approver.identity] = group.name
    conditions = _conditions(data.get("conditions"), f"{path}.conditions")
    return Token(name, timelock, timeout, groups, conditions)


def _group(data: Any, path: str) -> Group:
    _obj(data, path, {"name", "quorum", "approvals"})
    name = _name(data.get("name", ""), f"{path}.name")
    approvals = _list(data.get("approvals"), f"{path}.approvals", MAX_APPROVERS)
    if not approvals:
        raise PolicyInvalid(f"{path}.approvals", "a group needs at least one approver")
    quorum = _int(data.get("quorum"), f"{path}.quorum", 1, MAX_APPROVERS)
    approvers = tuple(_approver(a, f"{path}.approvals[{i}]") for i, a in enumerate(approvals))
    ids = [a.identity for a in approvers]  # the key, whatever its encoding or binding
    if len(set(ids)) != len(ids):
        raise PolicyInvalid(f"{path}.approvals", "duplicate approver in group (one public "
                            "key listed twice counts once)")
    if quorum > len(approvers):
        raise PolicyInvalid(
            f"{path}.quorum", f"quorum {quorum} larger than the group's {len(approvers)} approvers"
        )
    return Group(name, quorum, approvers)


def _approver(data: Any, path: str) -> Approver:
    _obj(data, path, {"type", "value", "name"})
    kind = data.get("type")
    if kind not in APPROVAL_TYPES:
        raise PolicyInvalid(f"{path}.type", f"unknown approval type {kind!r}; "
                            f"expected one of {sorted(APPROVAL_TYPES)}")
    value = data.get("value")
    if not isinstance(value, str):
        raise PolicyInvalid(f"{path}.value", "must be a base64 string")
    try:
        credential = parse_credential(kind, value)
    except CredentialInvalid as exc:
        raise PolicyInvalid(f"{path}.value", exc.reason) from None
    return Approver(kind, value, credential, _name(data.get("name", ""), f"{path}.name"))


def _conditions(data: Any, path: str) -> Conditions:
    if data is None:
        return Conditions()
    _obj(data, path, {"amounts", "destinations", "velocity", "maxFee", "kinds"})
    amounts = []
    for i, a in enumerate(_list(data.get("amounts", []), f"{path}.amounts", MAX_LIST)):
        p = f"{path}.amounts[{i}]"
        _obj(a, p, {"asset", "min", "max"})
        lo = _amount(a.get("min", 0), f"{p}.min")
        hi = None if a.get("max") is None else _amount(a["max"], f"{p}.max")
        if hi is not None and hi < lo:
            raise PolicyInvalid(f"{p}.max", "max below min")
        amounts.append(AmountBound(_asset(a.get("asset"), f"{p}.asset"), lo, hi))
    if len({a.asset for a in amounts}) != len(amounts):
        raise PolicyInvalid(f"{path}.amounts", "one bound per asset")
    destinations, destinations_list = None, None
    if isinstance(data.get("destinations"), dict):
        destinations_list = _list_ref(data["destinations"], f"{path}.destinations")
    elif data.get("destinations") is not None:
        dests = _list(data["destinations"], f"{path}.destinations", MAX_LIST)
        for i, d in enumerate(dests):
            if not isinstance(d, str) or not d or len(d) > 256:
                raise PolicyInvalid(f"{path}.destinations[{i}]", "must be an address string")
        destinations = frozenset(normalize_destination(d) for d in dests)
    velocity = []
    for i, v in enumerate(_list(data.get("velocity", []), f"{path}.velocity", MAX_LIST)):
        p = f"{path}.velocity[{i}]"
        _obj(v, p, {"asset", "windowSeconds", "max", "releasedBy"})
        window = _seconds(v.get("windowSeconds"), f"{p}.windowSeconds")
        if window == 0:
            raise PolicyInvalid(f"{p}.windowSeconds", "must be positive")
        velocity.append(VelocityLimit(_asset(v.get("asset"), f"{p}.asset"), window,
                                      _amount(v.get("max"), f"{p}.max"),
                                      _released_by(v.get("releasedBy"), f"{p}.releasedBy")))
    fees = []
    for i, f in enumerate(_list(data.get("maxFee", []), f"{path}.maxFee", MAX_LIST)):
        p = f"{path}.maxFee[{i}]"
        _obj(f, p, {"asset", "max"})
        fees.append(FeeLimit(_asset(f.get("asset"), f"{p}.asset"),
                             _amount(f.get("max"), f"{p}.max")))
    if len({f.asset for f in fees}) != len(fees):
        raise PolicyInvalid(f"{path}.maxFee", "one cap per fee asset")
    kinds = None if data.get("kinds") is None else _kinds(data["kinds"], f"{path}.kinds")
    return Conditions(tuple(amounts), destinations, tuple(velocity), tuple(fees), kinds,
                      destinations_list)


def _list_ref(value: dict[str, Any], path: str) -> str:
    """``{"list": "<sha256 hex>"}``: an address list by its digest (lower-case hex, so one
    list has one spelling and the policy's digest binds it)."""
    _obj(value, path, {"list"})
    digest = value.get("list")
    if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _HEX:
        raise PolicyInvalid(f"{path}.list", "must be an address list's SHA-256 digest "
                            "(64 lower-case hex digits)")
    return digest


_HEX = frozenset("0123456789abcdef")


def _released_by(value: Any, path: str) -> frozenset[str] | None:
    if value is None:
        return None
    names = _list(value, path, MAX_TOKENS)
    if not names:
        raise PolicyInvalid(path, "name at least one token, or leave the field out")
    return frozenset(_name(n, f"{path}[{i}]") for i, n in enumerate(names))


def _kinds(value: Any, path: str) -> frozenset[IntentKind]:
    out = set()
    for i, v in enumerate(_list(value, path, len(IntentKind))):
        try:
            out.add(IntentKind(v))
        except ValueError:
            raise PolicyInvalid(f"{path}[{i}]", f"unknown intent kind {v!r}; one of "
                                f"{[k.value for k in IntentKind]}") from None
    if not out:
        raise PolicyInvalid(path, "name at least one intent kind")
    return frozenset(out)


def normalize_destination(address: str) -> str:
    """Hex (Ethereum) addresses compare case-insensitively; others exactly."""
    return address.lower() if address[:2] in ("0x", "0X") else address


# --------------------------------------------------------------------------- primitives


def _obj(data: Any, path: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise PolicyInvalid(path, "must be an object")
    unknown = set(data) - allowed
    if unknown:
        raise PolicyInvalid(path, f"unknown field(s) {sorted(unknown)}")
    return data


def _list(data: Any, path: str, limit: int) -> list[Any]:
    if not isinstance(data, list):
        raise PolicyInvalid(path, "must be a list")
    if len(data) > limit:
        raise PolicyInvalid(path, f"at most {limit} entries")
    return data


def _int(value: Any, path: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyInvalid(path, "must be a whole number")
    if not lo <= value <= hi:
        raise PolicyInvalid(path, f"must be between {lo} and {hi}")
    return value


def _seconds(value: Any, path: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        raise PolicyInvalid(path, "must not be negative")
    return _int(value, path, 0, MAX_SECONDS)


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise PolicyInvalid(path, "must be true or false")
    return value


def _name(value: Any, path: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_NAME:
        raise PolicyInvalid(path, f"must be a string of at most {MAX_NAME} characters")
    return value


def _asset(value: Any, path: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise PolicyInvalid(path, "must be an asset symbol (1-64 characters)")
    return value


def _amount(value: Any, path: str) -> int:
    if isinstance(value, str):
        if not value.isdigit() or len(value) > 78:
            raise PolicyInvalid(path, "must be a non-negative whole number of base units")
        value = int(value)
    return _int(value, path, 0, MAX_AMOUNT)
