"""The values the broker's parts pass between them: who calls, what they ask for, a task."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hsm_emulator.model import Action

from ..db import SignRequest


@dataclass(frozen=True)
class Principal:
    """An authenticated caller of the broker (from its JWT)."""

    subject: str
    tenant: str
    roles: frozenset[str]


@dataclass(frozen=True)
class Task:
    """A pending request as an approver's task list shows it."""

    request: SignRequest
    approvers_done: tuple[str, ...]


@dataclass(frozen=True)
class Call:
    """What a caller asked to have signed (or done): the fields a request row repeats."""

    principal: Principal
    label: str
    action: Action
    payload: bytes
    payload_type: str
    algorithm: str | None
    meta: dict[str, Any] | None
