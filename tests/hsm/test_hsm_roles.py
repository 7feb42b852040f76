"""The HSM's interface by role: ``HsmClient`` is the composition of five role protocols,
every call is in exactly one, and the remote call table says which (checked at import:
these tests plant violations and see the check refuse them)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from hsm_emulator import Hsm
from hsm_emulator.client import CALLS, ROLES, HsmClient, Role, role_calls
from hsm_emulator.remote import RemoteHsmClient
from hsm_emulator.remote.calls import KEY_INFO, TABLE, TEXT, _call, _check_roles


def test_every_call_is_in_exactly_one_role() -> None:
    by_role = [name for role in Role for name in role_calls(role)]
    assert len(by_role) == len(set(by_role)) == len(CALLS)
    assert set(by_role) == set(CALLS) == set(TABLE)
    assert {"officer_set", "officer_begin", "officer_challenge", "officer_execute",
            "restore_backup", "invalidate_key", "restore_key", "destroy_key",
            "export_private_key_unsafe"} == set(role_calls(Role.OFFICER))
    assert set(role_calls(Role.AUDIT)) == {"audit_entries", "audit_head", "audit_checkpoints"}
    for protocol in ROLES.values():
        assert issubclass(HsmClient, protocol)


def test_the_call_table_names_each_calls_role() -> None:
    for name, call in TABLE.items():
        assert name in role_calls(call.role), name


def test_both_implementations_serve_every_role() -> None:
    for protocol in (*ROLES.values(), HsmClient):
        for name in protocol.__dict__:
            if name.startswith("_"):
                continue
            assert callable(getattr(Hsm, name)), (protocol, name)
            assert callable(getattr(RemoteHsmClient, name)), (protocol, name)


def test_hsm_is_a_facade_over_its_calls() -> None:
    """``Hsm``'s public methods (its own and its role mixins' and delegates', e.g.
    ``OfficerCalls`` and the address list role's) are the calls (same signatures) plus its
    lifecycle."""
    public = {n for cls in Hsm.__mro__ if cls is not object for n in vars(cls)
              if not n.startswith("_") and callable(getattr(Hsm, n))}
    assert public == set(CALLS) | {"close", "open", "locked"}
    for name in CALLS:
        assert inspect.signature(getattr(Hsm, name)).parameters.keys() == (
            inspect.signature(getattr(HsmClient, name)).parameters.keys()), name


def test_a_call_declared_under_the_wrong_role_is_refused() -> None:
    with pytest.raises(TypeError, match="get_key: not a call of the audit role"):
        _call("get_key", Role.AUDIT, KEY_INFO, label=TEXT)


def test_a_role_method_without_a_call_is_refused() -> None:
    table = {n: c for n, c in TABLE.items() if n != "restore_key"}
    with pytest.raises(TypeError, match="officer role"):
        _check_roles(table)


def test_a_call_moved_to_another_role_is_refused() -> None:
    table = dict(TABLE, cancel=dataclasses.replace(TABLE["cancel"], role=Role.KEYS))
    with pytest.raises(TypeError, match="keys role"):
        _check_roles(table)
