"""The broker: keeps request state, collects approvals, releases when the rule is met.

It plays the role of Securosys' Transaction Security Broker (seeds 002, 003) and is
"uncritical for security": it holds no keys and everything it hands the HSM is verified
there again. Its job is liveness - release as soon as the rule can be met (on the last
approval, or when a hold ends), and never lose or repeat a release (see
:mod:`custody.broker.release`).

One concept a module, composed in :class:`Broker` (:mod:`custody.broker.service`):

* :mod:`~custody.broker.intake` - key tenancy, submit, idempotent creation, auto tier;
* :mod:`~custody.broker.approvers` - approver sessions: task lists, approve, reject;
* :mod:`~custody.broker.release` - the release state machine (execute, hold, close);
* :mod:`~custody.broker.scheduler` - the worker that wakes for holds and timeouts;
* :mod:`~custody.broker.store` and :mod:`~custody.broker.rules` - the rows and the
  policy view they share.
"""

from .approvers import MAX_PAGE, REJECT_PREFIX
from .model import Call, Principal, Task
from .release import RETRY_SECONDS
from .service import Broker

__all__ = ["MAX_PAGE", "REJECT_PREFIX", "RETRY_SECONDS", "Broker", "Call", "Principal", "Task"]
