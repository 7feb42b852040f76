"""The broker's public keys by label and path (custody/treasury/networks.py): each asked
of the HSM once per process, a refusal never kept."""

from __future__ import annotations

import pytest

from custody.treasury.networks import PublicKeys
from hsm_emulator.errors import KeyNotFound


class CountingHsm:
    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def public_key(self, label: str, path: str = "") -> bytes:
        self.asked.append((label, path))
        if label == "missing":
            raise KeyNotFound(label)
        return f"{label}/{path}".encode()

    def address(self, label: str, kind: str, network: str, path: str = "") -> str:
        return f"{label}:{kind}:{network}:{path}"


def test_each_key_and_path_is_asked_once() -> None:
    hsm = CountingHsm()
    keys = PublicKeys(hsm)  # type: ignore[arg-type]  # the two calls it uses
    for _ in range(3):
        assert keys.public_key("w1") == b"w1/"
        assert keys.public_key("w1", "0/5") == b"w1/0/5"
        assert keys.public_key("w2") == b"w2/"
    assert hsm.asked == [("w1", ""), ("w1", "0/5"), ("w2", "")]
    assert keys.address("w1", "p2wpkh", "regtest", "0/1") == "w1:p2wpkh:regtest:0/1"


def test_a_refusal_is_asked_again() -> None:
    hsm = CountingHsm()
    keys = PublicKeys(hsm)  # type: ignore[arg-type]
    for _ in range(2):
        with pytest.raises(KeyNotFound):
            keys.public_key("missing")
    assert hsm.asked == [("missing", ""), ("missing", "")]
