"""The emulated HSM with Smart Key Attributes: keys that never leave, policies it enforces.

Start with :class:`Hsm` (``Hsm.open(path, Passphrase(...), so_passphrase=...)``) and
reach it through an :class:`HsmClient`.
"""

from .clock import Clock, ManualClock, SystemClock
from .errors import HsmError
from .flow import Approval
from .hsm import Hsm
from .initiation import initiation_message
from .model import Action, Intent, IntentKind, KeyAlgorithm, KeyAttributes, SignScheme, Transfer
from .nvram import CounterValue, MonotonicCounter, SealedFileCounter
from .store import KeyFile, Passphrase

__all__ = [
    "Action", "Approval", "Clock", "CounterValue", "Hsm", "HsmError", "Intent", "IntentKind",
    "KeyAlgorithm", "KeyAttributes", "KeyFile", "ManualClock", "MonotonicCounter", "Passphrase",
    "SealedFileCounter", "SignScheme", "SystemClock", "Transfer", "initiation_message",
]
