"""Policy evaluation: pure, deterministic, the same code for dry-runs and for release.

Semantics (seed 003): a rule's tokens are ORed; a token's groups are ANDed; a group is
met by ``quorum`` *distinct* approvers of that group; ``timelock`` is the minimum and
``timeout`` the maximum time between the HSM's timestamp of the request and release.
Token conditions are checked on the intent the HSM decoded; a payload that could not be
decoded (``intent is None``) only satisfies tokens without conditions.

Conditions are value-complete (``ARCHITECTURE.md``): a token with **any** condition

* releases only the intent kinds it names in ``kinds`` (default: transfers). Contract
  calls and messages are opaque - their effects are not accounted for - and a grant
  (an ERC-20 approval or permit) is value that can leave later: each must be named;
* needs a ``maxFee`` for the payload's fee asset, which bounds fee plus rent (the most
  the payload can cost beyond what it moves): a token without one refuses (fail closed);
* bounds, with ``amounts``, what is transferred or granted per asset; an asset moved
  without a bound in the token refuses;
* applies its ``destinations`` allowlist to every recipient, grantee and called contract
  (an address list named by digest is resolved by the HSM into the same set: one
  membership test per recipient; unresolved, it refuses);
* counts, with ``velocity``, the total outflow per asset - transfers, grants, and for
  the fee asset the fee and rent - against what the key family released in the window
  (or, with ``releasedBy``, what the named tokens released).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .model import Action, Intent, IntentKind
from .policy import Conditions, Group, Policy, Token, normalize_destination

#: ``spent(asset, since[, tokens])``: base units this key family released since
#: ``since`` (only by the tokens named in ``tokens``, if given).
SpentFn = Callable[..., int]


def _nothing_spent(asset: str, since: float, tokens: frozenset[str] | None = None) -> int:
    return 0


@dataclass(frozen=True)
class GroupStatus:
    name: str
    quorum: int
    approved: tuple[str, ...]  #: fingerprints of approvers who approved
    waiting: tuple[str, ...]  #: fingerprints who have neither approved nor rejected
    rejected: tuple[str, ...]

    @property
    def met(self) -> bool:
        return len(self.approved) >= self.quorum

    @property
    def missing(self) -> int:
        return max(0, self.quorum - len(self.approved))

    @property
    def attainable(self) -> bool:
        return len(self.approved) + len(self.waiting) >= self.quorum


@dataclass(frozen=True)
class TokenStatus:
    name: str
    condition_failures: tuple[str, ...]
    groups: tuple[GroupStatus, ...]
    hold_remaining: float  #: seconds until the timelock ends (0 when past it)
    expired: bool  #: past the timeout: this token can never release the request

    @property
    def satisfied(self) -> bool:
        return (
            not self.condition_failures
            and not self.expired
            and self.hold_remaining <= 0
            and (not self.groups or all(g.met for g in self.groups))  # auto tier: no groups
        )

    @property
    def attainable(self) -> bool:
        """Could still be satisfied by more approvals or by waiting."""
        return (
            not self.condition_failures
            and not self.expired
            and all(g.attainable for g in self.groups)
        )

    def describe_missing(self) -> str:
        if self.satisfied:
            return f"token {self.name!r}: satisfied"
        parts = list(self.condition_failures)
        if self.expired:
            parts.append("timed out")
        for g in self.groups:
            if not g.met:
                parts.append(f"group {g.name!r} needs {g.missing} more approval(s)")
        if self.hold_remaining > 0:
            parts.append(f"hold ends in {self.hold_remaining:.0f}s")
        return f"token {self.name!r}: " + "; ".join(parts)


@dataclass(frozen=True)
class Evaluation:
    action: Action
    released_by: str | None  #: name of the first satisfied token, or None
    #: every token when nothing releases; up to the releasing token when one does
    tokens: tuple[TokenStatus, ...]
    open_action: bool = False  #: released because the policy leaves this action open
    no_rule: bool = False

    @property
    def released(self) -> bool:
        return self.released_by is not None or self.open_action

    @property
    def attainable(self) -> bool:
        return self.released or any(t.attainable for t in self.tokens)

    def missing(self) -> tuple[str, ...]:
        if self.released:
            return ()
        if self.no_rule:
            return (f"no rule for action {self.action.value!r} and the policy does not leave "
                    "it open",)
        return tuple(t.describe_missing() for t in self.tokens)


def evaluate(
    policy: Policy,
    action: Action,
    intent: Intent | None,
    approved: frozenset[str],
    requested_at: float,
    now: float,
    *,
    rejected: frozenset[str] = frozenset(),
    spent: SpentFn = _nothing_spent,
) -> Evaluation:
    """Evaluate ``policy``'s rule for ``action`` against verified approver fingerprints."""
    rule = policy.rule(action)
    if rule is None:
        open_action = action in policy.open_actions
        return Evaluation(action, None, (), open_action=open_action, no_rule=True)
    statuses = []
    for i, t in enumerate(rule.tokens):  # in policy order; the first satisfied one releases
        status = _token_status(t, intent, approved, rejected, requested_at, now, spent)
        statuses.append(status)
        if status.satisfied:
            return Evaluation(action, status.name or f"#{i}", tuple(statuses))
    return Evaluation(action, None, tuple(statuses))


def _token_status(
    token: Token,
    intent: Intent | None,
    approved: frozenset[str],
    rejected: frozenset[str],
    requested_at: float,
    now: float,
    spent: SpentFn,
) -> TokenStatus:
    elapsed = now - requested_at
    groups = tuple(_group_status(g, approved, rejected) for g in token.groups) if (
        token.groups) else ()  # an auto-tier token has none: skip building the generator
    return TokenStatus(
        token.name,
        condition_failures(token.conditions, intent, now, spent),
        groups,
        max(0.0, token.timelock - elapsed),
        bool(token.timeout) and elapsed > token.timeout,
    )


def _group_status(group: Group, approved: frozenset[str], rejected: frozenset[str]) -> GroupStatus:
    members = group.members
    if not approved and not rejected:  # the auto tier's case: nobody has answered
        return GroupStatus(group.name, group.quorum, (), members, ())
    return GroupStatus(
        name=group.name,
        quorum=group.quorum,
        approved=tuple(fp for fp in members if fp in approved and fp not in rejected),
        waiting=tuple(fp for fp in members if fp not in approved and fp not in rejected),
        rejected=tuple(fp for fp in members if fp in rejected),
    )


def condition_failures(
    cond: Conditions, intent: Intent | None, now: float, spent: SpentFn
) -> tuple[str, ...]:
    """Why ``intent`` does not meet ``cond`` (empty when it does). Fails closed."""
    if cond.empty:
        return ()
    if intent is None:
        return ("payload could not be decoded, so no condition can be checked",)
    failures: list[str] = []
    kinds = cond.allowed_kinds
    if intent.kind not in kinds:
        failures.append(f"a {intent.kind.value} is not released by this token (it releases "
                        f"{', '.join(sorted(k.value for k in kinds))})")
    failures += _fee_failures(cond, intent)
    if cond.amounts:
        failures += _amount_failures(cond, intent)
    if cond.destinations is not None:
        for r in intent.recipients():
            if normalize_destination(r) not in cond.destinations:
                failures.append(f"destination {r} not on the allowlist")
    elif cond.destinations_list is not None:  # parsed outside the HSM: never "no list"
        failures.append(f"address list {cond.destinations_list} is not loaded here")
    if cond.velocity:
        outflow = intent.outflow()
        for v in cond.velocity:
            since = now - v.window_seconds
            before = spent(v.asset, since) if v.released_by is None else spent(
                v.asset, since, v.released_by)
            total = before + outflow.get(v.asset, 0)
            if total > v.max:
                failures.append(
                    f"{v.asset} velocity {total} over {v.window_seconds}s exceeds limit {v.max}")
    return tuple(failures)


def _fee_failures(cond: Conditions, intent: Intent) -> list[str]:
    """Fee plus rent within the token's cap for the fee asset; no cap refuses."""
    if not intent.fee_asset:
        return [f"a cost of {intent.cost} in no named asset cannot be bounded"] if (
            intent.cost) else []
    cap = cond.fee_caps.get(intent.fee_asset)
    if cap is None:
        return [f"no maxFee for {intent.fee_asset} in this token: a token with conditions "
                "must cap what the payload can cost"]
    if intent.cost > cap:
        return [f"fee and rent {intent.cost} {intent.fee_asset} above cap {cap}"]
    return []


def _amount_failures(cond: Conditions, intent: Intent) -> list[str]:
    """Every asset moved needs a bound in the token, and must be within it. (A token with
    no ``amounts`` bounds nothing by amount - an allowlist- or velocity-only token - and
    its other conditions still see every unit.)"""
    moved = intent.moved()
    if not moved and intent.kind is IntentKind.TRANSFER:
        return ["a transfer of nothing: no amount to bound"]
    bounds = cond.amount_bounds
    failures: list[str] = []
    for asset, total in sorted(moved.items()):
        bound = bounds.get(asset)
        if bound is None:
            failures.append(f"asset {asset} has no amount bound in this token")
        elif total < bound.min:
            failures.append(f"{asset} amount {total} below {bound.min}")
        elif bound.max is not None and total > bound.max:
            failures.append(f"{asset} amount {total} above {bound.max}")
    return failures
