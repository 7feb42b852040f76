"""The approval rules of a key as the broker reads them from the HSM: who may answer a
request (task lists, rejections), when a token times out (the scheduler), and whether an
approval should release a request (:meth:`Rules.would_release`: which HSM call to make).
A view only: the HSM evaluates the policy itself on every step."""

from __future__ import annotations

import base64
from dataclasses import replace

from hsm_emulator.challenge import Challenge
from hsm_emulator.client import HsmClient
from hsm_emulator.evaluate import evaluate
from hsm_emulator.model import Action, Intent
from hsm_emulator.policy import Policy, Rule, parse_policy

from ..db import SignRequest


class Rules:
    def __init__(self, hsm: HsmClient) -> None:
        self.hsm = hsm
        #: parsed policies by (key, policy digest): a changed policy has a new digest
        self._policies: dict[tuple[str, str], Policy] = {}

    def rule(self, label: str, action: str) -> Rule | None:
        info = self.hsm.get_key(label)
        key = (label, info.policy_digest)
        policy = self._policies.get(key)
        if policy is None:
            policy = parse_policy({k: v for k, v in info.policy.items() if k != "keyStatus"})
            self._policies[key] = policy
        return policy.rule(Action(action))

    def _policy_under(self, label: str, digest: str) -> Policy | None:
        """The key's policy if it is still the one with ``digest`` (from the cache, or
        read from the HSM once per policy); None if the key has another now."""
        policy = self._policies.get((label, digest))
        if policy is None:
            self.rule(label, Action.USE.value)  # caches the key's current policy
            policy = self._policies.get((label, digest))
        return policy

    def would_release(self, row: SignRequest, approvers: frozenset[str],
                      rejected: frozenset[str], now: float) -> bool:
        """Whether, by the broker's copy of the key's policy, ``approvers`` (fingerprints)
        release ``row`` now - evaluated on the intent and time its HSM-signed challenge
        carries. A guess that only picks the HSM call (the last approval releases in one
        call and commit, ``hsm.approve``): the HSM decides, and a wrong guess costs only
        a call - and a payload finalized early (a nonce taken, a blockhash that may age
        during a hold), so it guesses no wherever the HSM knows more: only tokens with
        approver groups and no velocity limit count (one without groups releases without
        approvals, or, after a restore, not at all; the HSM's ledger decides a velocity
        limit), and an address list or a changed policy is a no. A broker clock behind
        the HSM's counts as the request's own time, so a skew of a few seconds does not
        turn a request without a hold into a held one here."""
        if not row.challenge_b64:
            return False
        body = Challenge(row.id, base64.b64decode(row.challenge_b64)).body
        policy = self._policy_under(row.key_label, str(body.get("policyDigest")))
        if policy is None:
            return False
        action = Action(row.action)
        intent, made = body.get("intent"), float(body["hsmTime"])
        return evaluate(_foreseeable(policy, action), action,
                        None if intent is None else Intent.from_json(intent), approvers,
                        made, max(now, made),  # a broker clock behind the HSM's: no hold
                        rejected=rejected).released

    def rule_members(self, label: str, action: str) -> frozenset[str]:
        """Fingerprints of every approver in the key's rule for ``action``."""
        rule = self.rule(label, action)
        if rule is None:
            return frozenset()
        return frozenset(a.fingerprint for t in rule.tokens for g in t.groups
                         for a in g.approvers)

    def members_of(self, label: str, action: str) -> list[str]:
        """Approver SPKI (base64) of every group in the key's rule for ``action``."""
        info = self.hsm.get_key(label)
        policy = parse_policy({k: v for k, v in info.policy.items() if k != "keyStatus"})
        rule = policy.rule(Action(action))
        seen: dict[str, str] = {}
        for t in rule.tokens if rule else ():
            for g in t.groups:
                for a in g.approvers:
                    seen.setdefault(a.fingerprint, a.credential.public_key_b64)
        return list(seen.values())


def _foreseeable(policy: Policy, action: Action) -> Policy:
    """``policy`` with only the tokens for ``action`` whose release the broker can foresee
    from approvals and time alone (see :meth:`Rules.would_release`), and no open action."""
    rules = tuple((a, Rule(tuple(t for t in r.tokens if t.groups and not t.conditions.velocity))
                   if a is action else r) for a, r in policy.rules)
    return replace(policy, rules=rules, open_actions=frozenset())
