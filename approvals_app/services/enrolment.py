"""Enrolment decisions: room for strangers, the administrator's HSM fingerprint check,
and joining a group only through the key's own ``ruleModify``."""

from __future__ import annotations

from custody.broker import Broker, Principal
from custody.db import SignRequest
from custody.enrolment import (
    Enrolment,
    Enrolments,
    EnrolmentStatus,
    entry,
    hsm_fingerprint,
    policy_with_member,
)
from custody.errors import BadRequest, Forbidden, RateLimited
from hsm_emulator.client import HsmClient
from hsm_emulator.model import Action

#: Undecided enrolments allowed at once: strangers can ask, not fill the table.
MAX_OPEN = 200


def make_room(store: Enrolments) -> None:
    """Drop stale passkey registrations; refuse (429) when too many wait already."""
    store.drop_stale_registrations()
    if len(store.find(EnrolmentStatus.PENDING)) + len(
            store.find(EnrolmentStatus.REGISTERING)) >= MAX_OPEN:
        raise RateLimited("too many enrolments wait for a decision; try again later")


def confirm(store: Enrolments, hsm: HsmClient, enrolment_id: str, stated_fingerprint: str,
            who: Principal) -> Enrolment:
    """Confirm, if the administrator restates this HSM's identity fingerprint and the
    device pinned that same key (else it may have been shown a forged one)."""
    row = store.get(enrolment_id)
    actual = hsm_fingerprint(hsm.identity_public_key())
    if stated_fingerprint != actual:
        raise BadRequest("hsmFingerprint is not this HSM's identity key")
    if row.hsm_fingerprint != actual:
        raise Forbidden("the device pinned another HSM identity key: it may have been "
                        "shown a forged one; refuse this enrolment and enrol again")
    return store.decide(enrolment_id, decider(who), True)


def decider(who: Principal) -> str:
    return f"{who.tenant}/{who.subject}"


def request_join(broker: Broker, store: Enrolments, who: Principal, enrolment_id: str,
                 label: str, rule: str, group: str) -> SignRequest:
    """A ``modify`` request adding the confirmed credential to a group: the key's
    ``ruleModify`` approvers decide, and the HSM checks, as for any policy change."""
    member = entry(store.get(enrolment_id))
    new_policy = policy_with_member(broker.hsm.get_key(label).policy, rule, group, member)
    return broker.submit(who, label, Action.MODIFY, b"", "UNSPECIFIED", None, None,
                         new_policy=new_policy)
