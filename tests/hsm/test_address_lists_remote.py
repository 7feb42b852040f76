"""A 100,000-address allowlist through the HSM as its own process: too large for one
socket frame inline, uploaded in chunks, bound to the policy by digest, enforced on every
transfer and kept across a restart of the HSM process."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from hsm_emulator.address_lists import MAX_CHUNK, list_digest
from hsm_emulator.decoders import transfer_payload
from hsm_emulator.errors import InvalidInput, PolicyInvalid, PolicyNotMet
from hsm_emulator.remote import RemoteHsmClient
from tests.remote_kit import HsmProcess, short_dir

N = 100_000
#: Ethereum addresses (42 characters): 100,000 of them are 4.5 MB of JSON
ADDRESSES = [f"0x{i:040x}" for i in range(N)]
UNLISTED = "0x" + "f" * 40


def _policy(dests: Any) -> dict[str, Any]:
    auto = {"name": "auto", "timelock": 0, "timeout": 0, "groups": [], "conditions": {
        "amounts": [{"asset": "TST", "max": 100}], "maxFee": [{"asset": "TST", "max": 10}],
        "destinations": dests}}
    return {"ruleUse": {"tokens": [auto]}}


def _pay(client: RemoteHsmClient, dest: str, nonce: int) -> None:
    client.sign_now("k", transfer_payload("TST", 1, dest, 1, nonce=nonce), "TEST_TRANSFER")


@pytest.mark.timeout(300)
def test_a_100k_allowlist_uploads_in_chunks_and_binds_by_digest(tmp_path: Path) -> None:
    sockdir = short_dir()
    server = HsmProcess.start(tmp_path, sockdir)
    try:
        with server.connect() as client:
            with pytest.raises(InvalidInput, match="frame"):  # why lists exist
                client.create_key("inline", "SECP256K1", policy=_policy(ADDRESSES))
            with pytest.raises(InvalidInput, match="per chunk"):
                client.address_list_add(client.address_list_begin().upload_id, 0,
                                        ADDRESSES[:MAX_CHUNK + 1])
            upload = client.address_list_begin().upload_id
            start = time.perf_counter()
            for i in range(0, N, MAX_CHUNK):
                info = client.address_list_add(upload, i // MAX_CHUNK,
                                               ADDRESSES[i:i + MAX_CHUNK])
            uploaded = time.perf_counter() - start
            assert info.size == N and info.chunks == N // MAX_CHUNK and not info.finished
            with pytest.raises(PolicyInvalid, match="holds no finished address list"):
                client.create_key("k", "SECP256K1",
                                  policy=_policy({"list": list_digest(ADDRESSES)}))
            done = client.address_list_finish(upload)
            assert done.digest == list_digest(ADDRESSES) and done.size == N
            client.create_key("k", "SECP256K1", policy=_policy({"list": done.digest}))
            _pay(client, ADDRESSES[0], 1)
            _pay(client, ADDRESSES[-1].upper().replace("0X", "0x"), 2)  # any case
            with pytest.raises(PolicyNotMet, match="not on the allowlist"):
                _pay(client, UNLISTED, 3)
        server.stop()
        server = HsmProcess.start(tmp_path, sockdir)  # the same store, reopened
        with server.connect() as client:
            assert client.address_list_info(done.digest) == done
            _pay(client, ADDRESSES[N // 2], 4)
            with pytest.raises(PolicyNotMet, match="not on the allowlist"):
                _pay(client, UNLISTED, 5)
        assert uploaded < 60, uploaded  # 20 chunks of 5,000 on a loaded 2-core machine
    finally:
        server.stop()
        shutil.rmtree(sockdir, ignore_errors=True)
