"""A desk's side of the proven initiator: sign an initiation with the desk's own key.

For a key whose policy names ``initiators``, every request (``POST /v1/sign``, and
``/v1/block|unblock|modify``) carries ``"initiation"``: the desk's signature over
:func:`hsm_emulator.initiation.initiation_message`. The HSM verifies it and takes the
initiator from it - not from the broker - so that person's approval of the request is
refused. The key file is the one ``custody approver init`` makes (PKCS#8, encrypted);
its public key (``spki_b64``) is what the policy lists under ``initiators``::

    from custody.initiator import sign_initiation
    initiation = sign_initiation(Path("~/.custody/desk-1.pem").expanduser(), passphrase,
                                 label="treasury", payload=tx, payload_type="ETHEREUM")
    POST /v1/sign {"signRequest": {...same label, payload, payloadType...},
                   "initiation": initiation}

``hsmId``: from the HSM key pinned next to the key file (``custody approver pin-hsm``),
or given (``GET /v1/hsm`` returns it). A wrong one only makes the HSM refuse. The
``requestId`` is fresh unless given; a retry sends the same initiation again and gets
the first request back, never a second one.
"""

from __future__ import annotations

import base64
import secrets
from pathlib import Path
from typing import Any

from hsm_emulator.initiation import hsm_id as hsm_id_of
from hsm_emulator.initiation import initiation_message, payload_digest

from .approver_keys import ApproverError, ApproverKey, load_key, load_pin


def new_request_id() -> str:
    """A fresh request id an initiation can name: 32 of ``A-Z a-z 0-9 _ -``."""
    return secrets.token_urlsafe(24)


def initiation(key: ApproverKey, *, hsm_id: str, label: str, payload: bytes = b"",
               payload_type: str = "UNSPECIFIED", action: str = "use",
               new_policy: dict[str, Any] | None = None,
               request_id: str | None = None) -> dict[str, str]:
    """The ``initiation`` object of a request body, signed by ``key``.

    ``payload``: exactly the bytes sent as ``signRequest.payload`` (for ``use``);
    ``new_policy``: the policy sent with ``/v1/modify``; neither for block / unblock."""
    rid = request_id or new_request_id()
    message = initiation_message(
        hsm_id=hsm_id, key_label=label, action=action, payload_type=payload_type,
        payload_digest=payload_digest(payload, new_policy), request_id=rid)
    return {"requestId": rid, "credentialType": "public_key", "credential": key.spki_b64,
            "signature": base64.b64encode(key.sign(message)).decode()}


def sign_initiation(key_file: Path, passphrase: str, *, label: str, payload: bytes = b"",
                    payload_type: str = "UNSPECIFIED", action: str = "use",
                    new_policy: dict[str, Any] | None = None, request_id: str | None = None,
                    hsm_id: str | None = None) -> dict[str, str]:
    """:func:`initiation` with the key in ``key_file``; ``hsm_id`` defaults to the id of
    the HSM key pinned for that file."""
    if hsm_id is None:
        pinned = load_pin(key_file)
        if pinned is None:
            raise ApproverError(f"no HSM key pinned for {key_file}: pin it (`custody "
                                "approver pin-hsm`) or give hsm_id", 2)
        hsm_id = hsm_id_of(pinned)
    return initiation(load_key(key_file, passphrase), hsm_id=hsm_id, label=label,
                      payload=payload, payload_type=payload_type, action=action,
                      new_policy=new_policy, request_id=request_id)
