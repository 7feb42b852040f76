"""python-bitcointx and embit against every Bitcoin vector we hold: should they replace
``chains/bitcoin/sighash.py`` (BIP341) and ``chains/bitcoin/psbt.py`` (BIP174/371)?

Each candidate - and our own code, through the same harness - runs over:

* ``bip341_wallet_test_vectors.json``: the 7 key-path ``sigHash`` values;
* ``bip143_p2wpkh.json``: the native P2WPKH ``sigHash``;
* ``bip371.json``: the 6 valid PSBTs (parse, and serialize back to the same bytes) and
  the 11 invalid ones (refused);
* BIP174's MUSTs as the PSBT tests hold them (``tests/chains/test_btc_psbt.py``), rebuilt here
  on the first BIP371 valid vector: duplicate keys, trailing and truncated bytes, a bad
  magic, no unsigned transaction, a signed one, PSBTv2-only fields, a version above 0,
  key data on a keyless type, a non-canonical compact size.

``python -m tests.chains.test_btc_library_evaluation`` prints the table; the tests below hold
the figures of ``docs/decisions/0002-bitcoin-libraries.md`` so that a library upgrade
that changes them fails here and the decision gets looked at again.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from chains.bitcoin.psbt import Psbt
from chains.bitcoin.scripts import p2pkh_code
from chains.bitcoin.sighash import p2wpkh_sighash, taproot_sighash
from chains.bitcoin.wire import TxOut, var_bytes

VECTORS = Path(__file__).parents[1] / "vectors"
BIP341 = json.loads((VECTORS / "bip341_wallet_test_vectors.json").read_text())
BIP143 = json.loads((VECTORS / "bip143_p2wpkh.json").read_text())
BIP371 = json.loads((VECTORS / "bip371.json").read_text())
KEY_PATH = BIP341["keyPathSpending"][0]


@dataclass(frozen=True)
class Candidate:
    """One implementation, reduced to the four things we need from it."""

    name: str
    taproot: Callable[[bytes, list[TxOut], int, int], bytes]  #: raw tx, spent, index, type
    p2wpkh: Callable[[bytes, int, bytes, int], bytes]  #: raw tx, index, scriptCode, amount
    parse: Callable[[bytes], Any]  #: a PSBT, or raise
    serialize: Callable[[Any], bytes]


def _ours() -> Candidate:
    from bitcoin.core import CTransaction

    def p2wpkh(raw: bytes, index: int, script_code: bytes, amount: int) -> bytes:
        tx = CTransaction.deserialize(raw)
        return p2wpkh_sighash(tx, index, _p2pkh_key(script_code), amount)

    return Candidate(
        "ours", lambda raw, spent, i, ht: taproot_sighash(
            CTransaction.deserialize(raw), spent, i, ht),
        p2wpkh, Psbt.parse, lambda p: bytes(p.serialize()))


def _p2pkh_key(script_code: bytes) -> bytes:
    """Our BIP143 wrapper takes the key and builds the scriptCode itself: the vector's key,
    once it is seen to give the vector's scriptCode."""
    pub = bytes.fromhex(BIP143["input1"]["publicKey"])
    if p2pkh_code(pub) != script_code:
        raise ValueError("scriptCode is not the P2PKH script of the vector's key")
    return pub


def _embit() -> Candidate:
    from embit.psbt import PSBT
    from embit.script import Script
    from embit.transaction import Transaction

    def taproot(raw: bytes, spent: list[TxOut], i: int, ht: int) -> bytes:
        tx = Transaction.parse(raw)
        digest: bytes = tx.sighash_taproot(i, [Script(o.script) for o in spent],
                                           [o.amount for o in spent], sighash=ht)
        return digest

    def p2wpkh(raw: bytes, index: int, script_code: bytes, amount: int) -> bytes:
        digest: bytes = Transaction.parse(raw).sighash_segwit(index, Script(script_code),
                                                             amount, sighash=1)
        return digest

    return Candidate("embit", taproot, p2wpkh, PSBT.parse, lambda p: bytes(p.serialize()))


def _bitcointx() -> Candidate:
    """python-bitcointx loads libsecp256k1 through ctypes (for x-only keys in PSBTs) and
    finds none on a stock system: give it the copy coincurve already ships."""
    import bitcointx
    import coincurve

    lib = next(Path(coincurve.__file__).parent.glob("_libsecp256k1*.so"), None)
    if lib is not None and bitcointx.get_custom_secp256k1_path() is None:
        bitcointx.set_custom_secp256k1_path(str(lib))
    from bitcointx.core import CTransaction, CTxOut
    from bitcointx.core.psbt import PartiallySignedTransaction
    from bitcointx.core.script import (
        SIGVERSION_WITNESS_V0,
        CScript,
        SIGHASH_Type,
        SignatureHash,
        SignatureHashSchnorr,
    )

    def taproot(raw: bytes, spent: list[TxOut], i: int, ht: int) -> bytes:
        outs = [CTxOut(o.amount, CScript(o.script)) for o in spent]
        return SignatureHashSchnorr(CTransaction.deserialize(raw), i, outs,
                                    hashtype=SIGHASH_Type(ht) if ht else None)

    def p2wpkh(raw: bytes, index: int, script_code: bytes, amount: int) -> bytes:
        return SignatureHash(CScript(script_code), CTransaction.deserialize(raw), index,
                             SIGHASH_Type(1), amount=amount, sigversion=SIGVERSION_WITNESS_V0)

    return Candidate("python-bitcointx", taproot, p2wpkh,
                     PartiallySignedTransaction.deserialize, lambda p: bytes(p.serialize()))


# -- the cases ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    name: str
    run: Callable[[Candidate], bool]  #: True when the candidate gets it right


def _taproot_cases() -> Iterator[Case]:
    raw = bytes.fromhex(KEY_PATH["given"]["rawUnsignedTx"])
    spent = [TxOut(u["amountSats"], bytes.fromhex(u["scriptPubKey"]))
             for u in KEY_PATH["given"]["utxosSpent"]]
    for case in KEY_PATH["inputSpending"]:
        i, ht = case["given"]["txinIndex"], case["given"]["hashType"]
        want = bytes.fromhex(case["intermediary"]["sigHash"])
        yield Case(f"input {i}, hash type {ht:#04x}",
                   lambda c, i=i, ht=ht, want=want: c.taproot(raw, spent, i, ht) == want)


def _p2wpkh_cases() -> Iterator[Case]:
    raw = bytes.fromhex(BIP143["unsignedTx"])
    script_code = bytes.fromhex(BIP143["scriptCode"])[1:]  # printed with its length byte
    want = bytes.fromhex(BIP143["sigHash"])
    yield Case("native P2WPKH, input 1", lambda c: c.p2wpkh(
        raw, 1, script_code, 6 * 100_000_000) == want)


def _roundtrips(c: Candidate, raw: bytes) -> bool:
    return c.serialize(c.parse(raw)) == raw


def _refuses(c: Candidate, raw: bytes) -> bool:
    try:
        c.parse(raw)
    except Exception:  # any refusal counts: the libraries raise their own types
        return True
    return False


def _vector(v: dict[str, str]) -> bytes:
    return base64.b64decode(v["base64"], validate=True)


def _valid_cases() -> Iterator[Case]:
    for v in BIP371["valid"]:
        yield Case(v["case"], lambda c, raw=_vector(v): _roundtrips(c, raw))


def _invalid_cases() -> Iterator[Case]:
    for v in BIP371["invalid"]:
        yield Case(v["case"], lambda c, raw=_vector(v): _refuses(c, raw))


def _psbt(globals_: list[tuple[bytes, bytes]], inputs: list[tuple[bytes, bytes]],
          outputs: list[tuple[bytes, bytes]], magic: bytes = b"psbt\xff") -> bytes:
    """A PSBT of one input and one output, written entry by entry (duplicates allowed)."""
    def write(m: list[tuple[bytes, bytes]]) -> bytes:
        return b"".join(var_bytes(k) + var_bytes(v) for k, v in m) + b"\x00"
    return magic + write(globals_) + write(inputs) + write(outputs)


def _bip174_cases() -> Iterator[Case]:
    base = Psbt.parse(_vector(BIP371["valid"][0]))
    tx = bytes(base.tx.serialize())
    glob = [(b"\x00", tx)]
    ins = list(base.inputs[0].items())
    outs = list(base.outputs[0].items())
    good = _psbt(glob, ins, outs)
    assert good == _vector(BIP371["valid"][0])
    signed = bytearray(tx)
    signed[41:42] = b"\x01\x51"  # version(4) count(1) outpoint(36): a 1-byte scriptSig
    bad = {
        "duplicate key in an input map": _psbt(glob, [*ins, ins[0]], outs),
        "trailing byte": good + b"\x00",
        "truncated by one byte": good[:-1],
        "bad magic": _psbt(glob, ins, outs, magic=b"psbx\xff"),
        "no unsigned transaction": _psbt([], ins, outs),
        "signed unsigned transaction": _psbt([(b"\x00", bytes(signed))], ins, outs),
        "PSBTv2-only global field in v0": _psbt([*glob, (b"\x02", b"\2\0\0\0")], ins, outs),
        "global version 2": _psbt([*glob, (b"\xfb", b"\2\0\0\0")], ins, outs),
        "key data on a keyless input type": _psbt(glob, [*ins, (b"\x03x", b"\1\0\0\0")], outs),
        # the unsigned tx's key length, 1, written in three bytes
        "non-canonical compact size": good[:5] + b"\xfd\x01\x00" + good[6:],
    }
    for name, raw in bad.items():
        yield Case(name, lambda c, raw=raw: _refuses(c, raw))


#: Vector file (and what is checked) -> its cases.
SUITES: dict[str, Callable[[], Iterator[Case]]] = {
    "bip341_wallet_test_vectors.json: key-path sigHash": _taproot_cases,
    "bip143_p2wpkh.json: sigHash": _p2wpkh_cases,
    "bip371.json valid: parse, byte-exact round trip": _valid_cases,
    "bip371.json invalid: refused": _invalid_cases,
    "BIP174 MUSTs (tests/chains/test_btc_psbt.py cases): refused": _bip174_cases,
}
CANDIDATES: dict[str, Callable[[], Candidate]] = {
    "ours": _ours, "embit": _embit, "python-bitcointx": _bitcointx}


def evaluate(candidate: Candidate) -> dict[str, list[str]]:
    """Per suite, the names of the cases the candidate fails (an exception is a failure,
    but for the refusal cases, where it is the point)."""
    out: dict[str, list[str]] = {}
    for suite, cases in SUITES.items():
        failed = []
        for case in cases():
            try:
                ok = case.run(candidate)
            except Exception:
                ok = False
            if not ok:
                failed.append(case.name)
        out[suite] = failed
    return out


def totals() -> dict[str, int]:
    return {suite: sum(1 for _ in cases()) for suite, cases in SUITES.items()}


#: Cases failed, per candidate and suite: the figures of docs/decisions/0002.
_SIGHASH_341, _SIGHASH_143, _VALID, _INVALID, _BIP174 = SUITES
RECORDED: dict[str, dict[str, int]] = {
    "ours": dict.fromkeys(SUITES, 0),
    # SIGHASH_SINGLE and ANYONECANPAY wrong; re-orders fields; no BIP371 size checks.
    "embit": {_SIGHASH_341: 4, _SIGHASH_143: 0, _VALID: 2, _INVALID: 6, _BIP174: 3},
    # every sighash right; BIP371 sizes unchecked (all 11 invalid vectors accepted), and
    # a PSBTv2-only global field accepted in a version 0 PSBT.
    "python-bitcointx": {_SIGHASH_341: 0, _SIGHASH_143: 0, _VALID: 0, _INVALID: 11,
                         _BIP174: 1},
}


@pytest.mark.parametrize("name", sorted(CANDIDATES))
def test_recorded_figures(name: str) -> None:
    if name != "ours":
        pytest.importorskip({"embit": "embit", "python-bitcointx": "bitcointx"}[name])
    failed = evaluate(CANDIDATES[name]())
    assert {s: len(f) for s, f in failed.items()} == RECORDED[name], failed


def main() -> None:
    """Print passes/totals per vector file and candidate, and every failed case."""
    total = totals()
    for name, make in CANDIDATES.items():
        try:
            candidate = make()
        except ImportError as exc:
            print(f"{name}: not installed ({exc})")
            continue
        print(f"== {name}")
        for suite, failed in evaluate(candidate).items():
            print(f"  {total[suite] - len(failed):2d}/{total[suite]:<2d} {suite}")
            for case in failed:
                print(f"        fails: {case}")


if __name__ == "__main__":
    main()
