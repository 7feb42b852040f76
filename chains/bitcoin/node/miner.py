"""Block templates and regtest proof of work, shaped like Core's BlockAssembler.

The coinbase commits to its height as BIP34 requires
(https://github.com/bitcoin/bips/blob/master/bip-0034.mediawiki) in Core's own form
``CScript() << height << OP_0``, and always carries the BIP141 witness commitment
(https://github.com/bitcoin/bips/blob/master/bip-0141.mediawiki#commitment-structure)
as Core's GenerateCoinbaseCommitment does once segwit is active. Nothing here
decides validity: the finished block goes to Core's ``ProcessNewBlock``.
"""

from __future__ import annotations

from collections.abc import Sequence

from chains.bitcoin.blocks import COINBASE_INDEX, NULL_HASH, Block, Header, Tx, TxIn, merkle_root
from chains.bitcoin.wire import TxOut, sha256d

COIN = 100_000_000
#: Regtest halves the subsidy every 150 blocks (Core chainparams, CRegTestParams).
REGTEST_HALVING_INTERVAL = 150
#: Version bits top bits, as Core's miner sets with no deployment signalled.
BLOCK_VERSION = 0x20000000
WITNESS_COMMITMENT_HEADER = bytes.fromhex("aa21a9ed")
MAX_BLOCK_WEIGHT = 4_000_000
#: Room Core's BlockAssembler keeps for the coinbase.
COINBASE_WEIGHT_RESERVE = 4_000


def subsidy(height: int, halving_interval: int = REGTEST_HALVING_INTERVAL) -> int:
    halvings = height // halving_interval
    return 0 if halvings >= 64 else (50 * COIN) >> halvings


def script_num_push(n: int) -> bytes:
    """``CScript() << n``: OP_0, OP_1..OP_16, or a minimal CScriptNum push."""
    if n == 0:
        return b"\x00"
    if 1 <= n <= 16:
        return bytes([0x50 + n])
    data = bytearray()
    v = abs(n)
    while v:
        data.append(v & 0xFF)
        v >>= 8
    if data[-1] & 0x80:
        data.append(0x80 if n < 0 else 0)
    elif n < 0:
        data[-1] |= 0x80
    return bytes([len(data)]) + bytes(data)


def bits_to_target(bits: int) -> int:
    exponent, mantissa = bits >> 24, bits & 0x007FFFFF
    if exponent <= 3:
        return mantissa >> (8 * (3 - exponent))
    return mantissa << (8 * (exponent - 3))


def witness_commitment(txs: Sequence[Tx]) -> bytes:
    """OP_RETURN of the witness merkle root; the coinbase's own wtxid counts as zero."""
    root = merkle_root([NULL_HASH] + [tx.wtxid for tx in txs])
    return b"\x6a\x24" + WITNESS_COMMITMENT_HEADER + sha256d(root + NULL_HASH)


def coinbase_tx(height: int, payout_script: bytes, value: int, txs: Sequence[Tx]) -> Tx:
    script_sig = script_num_push(height) + b"\x00"
    cb_in = TxIn(NULL_HASH, COINBASE_INDEX, script_sig, 0xFFFFFFFF, witness=(NULL_HASH,))
    outputs = (TxOut(value, payout_script), TxOut(0, witness_commitment(txs)))
    return Tx(2, (cb_in,), outputs, 0)


def solve(header: Header) -> Header:
    """Try nonces until the hash meets the target; regtest's needs about two tries."""
    target = bits_to_target(header.bits)
    for nonce in range(1 << 32):
        candidate = Header(
            header.version, header.prev_hash, header.merkle_root, header.time, header.bits, nonce
        )
        if int.from_bytes(candidate.hash, "little") <= target:
            return candidate
    raise RuntimeError("nonce space exhausted")


def assemble(
    prev_hash: bytes,
    height: int,
    time: int,
    bits: int,
    payout_script: bytes,
    txs: Sequence[Tx],
    fees: int,
) -> Block:
    """A solved block on ``prev_hash`` paying subsidy plus ``fees`` to ``payout_script``."""
    cb = coinbase_tx(height, payout_script, subsidy(height) + fees, txs)
    all_txs = (cb, *txs)
    root = merkle_root([tx.txid for tx in all_txs])
    header = solve(Header(BLOCK_VERSION, prev_hash, root, time, bits, 0))
    return Block(header, all_txs)
