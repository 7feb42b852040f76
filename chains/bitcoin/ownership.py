"""Proving that an input or output belongs to the HSM key, from PSBT derivation records.

Convention (how the wallet fills BIP174/BIP371 key origins): the **HSM key is the
origin**. A ``PSBT_*_BIP32_DERIVATION`` or ``PSBT_*_TAP_BIP32_DERIVATION`` entry is the
wallet's when its fingerprint equals ``owner.fingerprint`` (the BIP32 fingerprint of the
HSM key itself, not of some master above it) and its path is taken **relative to the HSM
key**, e.g. ``0/5`` for the fifth receive address. A claim is proven only when
``owner.public_key(path)`` - computed by the HSM - gives exactly the claimed key and that
key's script (P2WPKH, or BIP86 P2TR) is exactly the coin's or output's script.

https://github.com/bitcoin/bips/blob/master/bip-0174.mediawiki#specification
https://github.com/bitcoin/bips/blob/master/bip-0371.mediawiki#specification
"""

from __future__ import annotations

from dataclasses import dataclass

from chains.errors import ChainDecodeError
from hsm_emulator.decoding import KeyView

from .psbt import Psbt
from .scripts import ScriptKind, hash160, p2tr_script, p2wpkh_script, x_only
from .wire import KeyOrigin

#: Relative paths from the HSM key are short (chain/index); deeper ones are refused so a
#: payload cannot make the HSM derive without bound.
MAX_PATH_DEPTH = 6


@dataclass(frozen=True)
class Owned:
    """A key of the wallet: its path relative to the HSM key and its public key."""

    kind: ScriptKind
    path: str
    public_key: bytes


class Prover:
    """Derives through the HSM's public :class:`KeyView`, once per path."""

    def __init__(self, owner: KeyView) -> None:
        self.owner = owner
        self.fingerprint = owner.fingerprint
        self._cache: dict[str, bytes] = {}

    def derive(self, origin: KeyOrigin) -> tuple[str, bytes] | None:
        """(relative path, public key) if ``origin`` names the HSM key; else None."""
        if origin.fingerprint != self.fingerprint:
            return None
        if len(origin.path) > MAX_PATH_DEPTH:
            raise ChainDecodeError(f"derivation path deeper than {MAX_PATH_DEPTH} levels")
        path = origin.path_str()
        if path not in self._cache:
            self._cache[path] = self.owner.public_key(path)
        return path, self._cache[path]

    def claims(self, psbt: Psbt, index: int, *, output: bool) -> list[Owned]:
        """Every derivation entry of one input or output that names the HSM key and whose
        derived key equals the claimed one, with the script kind it would pay to."""
        if output:
            ecdsa, tap = psbt.output_derivations(index), psbt.output_tap_derivations(index)
        else:
            ecdsa, tap = psbt.input_derivations(index), psbt.input_tap_derivations(index)
        out = []
        for pubkey, origin in ecdsa.items():
            got = self.derive(origin)
            if got is not None and got[1] == pubkey:
                out.append(Owned(ScriptKind.P2WPKH, got[0], got[1]))
        for xonly, tap_origin in tap.items():
            got = self.derive(tap_origin.origin)
            if got is not None and not tap_origin.leaf_hashes and x_only(got[1]) == xonly:
                out.append(Owned(ScriptKind.P2TR, got[0], got[1]))
        return out

    def names_owner(self, psbt: Psbt, index: int, *, output: bool) -> bool:
        """Whether any derivation entry carries the HSM key's fingerprint (a claim)."""
        if output:
            origins = [*psbt.output_derivations(index).values(),
                       *(t.origin for t in psbt.output_tap_derivations(index).values())]
        else:
            origins = [*psbt.input_derivations(index).values(),
                       *(t.origin for t in psbt.input_tap_derivations(index).values())]
        return any(o.fingerprint == self.fingerprint for o in origins)


def script_of(owned: Owned) -> bytes:
    if owned.kind is ScriptKind.P2WPKH:
        return p2wpkh_script(owned.public_key)
    return p2tr_script(owned.public_key)


def proven(claims: list[Owned], script: bytes) -> Owned | None:
    """The first claim whose key's script is exactly ``script``."""
    for owned in claims:
        if script_of(owned) == script:
            return owned
    return None


def key_fingerprint(public_key: bytes) -> bytes:
    """BIP32 fingerprint: the first 4 bytes of HASH160 of the compressed key. The HSM
    key's is what the wallet writes in derivation records (``owner.fingerprint``)."""
    return hash160(public_key)[:4]
