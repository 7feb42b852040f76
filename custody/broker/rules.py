"""The approval rules of a key as the broker reads them from the HSM: who may answer a
request (task lists, rejections) and when a token times out (the scheduler). A view only:
the HSM evaluates the policy itself on every step."""

from __future__ import annotations

from hsm_emulator.client import HsmClient
from hsm_emulator.model import Action
from hsm_emulator.policy import Policy, Rule, parse_policy


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
