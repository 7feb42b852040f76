"""The witness's rules (:mod:`custody.witness`), its file (:mod:`custody.witness_file`) and
its check of real HSM heads: a head or an epoch that goes back is refused, per HSM
identity, whatever came before; anything else is remembered."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from custody.witness import (
    HeadMark,
    Memory,
    Seen,
    WitnessRefused,
    check_challenge,
    witness_epochs,
    witness_head,
)
from custody.witness_file import WitnessFileError, load, observe, update
from hsm_emulator import Hsm
from hsm_emulator.audit import SignedHead
from hsm_emulator.identity import Domain

REWOUND = "the HSM's state may have been rewound; do not approve"

# -- the rules, on any sequence ------------------------------------------------------

#: One event: a head (identity, epoch, seq, hash) or a challenge's epoch (hash None).
events = st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 2), st.integers(0, 4),
                            st.sampled_from(["h1", "h2", None])), max_size=30)


@settings(max_examples=400, deadline=None, database=None)
@given(events)
def test_accepted_iff_nothing_goes_back_per_identity(sequence: list[tuple[
        str, int, int, str | None]]) -> None:
    """The oracle, written as the definition: per identity, a head is accepted iff its
    (epoch, seq) is at least the highest accepted head's, with the same hash when equal,
    and its epoch at least every epoch accepted before (heads and challenges alike); a
    challenge iff its epoch is at least that epoch."""
    memories: dict[str, Memory | None] = {"a": None, "b": None}
    best: dict[str, tuple[int, int, str] | None] = {"a": None, "b": None}
    top: dict[str, int] = {"a": -1, "b": -1}
    for who, epoch, seq, digest in sequence:
        memory = memories[who]
        if digest is None:  # a challenge of an open task
            accepted = epoch >= top[who]
            if memory is None:
                continue  # clients witness a head first; nothing to compare with
            try:
                check_challenge(memory, "r", epoch)
                memories[who] = witness_epochs(memory, [epoch]).memory
                assert accepted
            except WitnessRefused:
                assert not accepted
            else:
                top[who] = max(top[who], epoch)
            continue
        b = best[who]
        accepted = epoch >= top[who] and (b is None or (epoch, seq) > b[:2] or (
            (epoch, seq) == b[:2] and digest == b[2]))
        try:
            memories[who] = witness_head(memory, HeadMark(epoch, seq, digest)).memory
        except WitnessRefused as exc:
            assert not accepted, exc.reason
            assert "do not approve" in exc.reason
        else:
            assert accepted, (who, epoch, seq, digest, b, top[who])
            if b is None or (epoch, seq) > b[:2]:
                best[who] = (epoch, seq, digest)
            top[who] = max(top[who], epoch)
        # the memory is what was accepted, never more or less
        m = memories[who]
        assert m is not None and m.epoch == top[who] and m.head is not None
        assert best[who] is not None and (m.head.epoch, m.head.seq) == best[who][:2]


def test_the_messages_say_what_went_back_and_why() -> None:
    seen = witness_head(None, HeadMark(0, 40, "a" * 64)).memory
    with pytest.raises(WitnessRefused) as back:
        witness_head(seen, HeadMark(0, 12, "b" * 64))
    assert back.value.reason == f"the HSM's audit head went back from seq 40 to 12: {REWOUND}"
    with pytest.raises(WitnessRefused, match=r"at seq 40 is not the one seen before.*forked"):
        witness_head(seen, HeadMark(0, 40, "c" * 64))
    assert witness_head(seen, HeadMark(0, 40, "a" * 64)).memory == seen  # the same head
    restored = witness_head(seen, HeadMark(1, 3, "d" * 64))  # a restore: lower seq, new epoch
    assert restored.memory == Memory(1, HeadMark(1, 3, "d" * 64))
    assert restored.notes and "restored from a backup" in restored.notes[0]
    assert "from 0 to 1" in restored.notes[0]
    with pytest.raises(WitnessRefused, match="epoch went back from 1 to 0"):
        witness_head(restored.memory, HeadMark(0, 41, "e" * 64))
    with pytest.raises(WitnessRefused, match="issued in epoch 0, before the HSM's restore"):
        check_challenge(restored.memory, "req-1", 0)
    check_challenge(restored.memory, "req-2", 1)  # an older task of this epoch: fine
    lifted = witness_epochs(seen, [0, 2, 1])
    assert lifted.memory.epoch == 2 and "from 0 to 2" in lifted.notes[0]


# -- the file -----------------------------------------------------------------------


def _see(head: HeadMark) -> Callable[[Memory | None], Seen]:
    return lambda memory: witness_head(memory, head)


def test_the_file_keeps_the_memory_per_identity_and_a_refusal_writes_nothing(
        tmp_path: Path) -> None:
    path = tmp_path / "deep" / "witness.json"
    update(path, "fp-a", _see(HeadMark(0, 7, "a" * 64)))
    update(path, "fp-b", _see(HeadMark(0, 2, "b" * 64)))
    assert path.stat().st_mode & 0o077 == 0 and path.parent.stat().st_mode & 0o077 == 0
    before = path.read_bytes()
    with pytest.raises(WitnessRefused):
        update(path, "fp-a", _see(HeadMark(0, 6, "c" * 64)))
    assert path.read_bytes() == before  # refused: nothing remembered
    assert load(path, "fp-a") == Memory(0, HeadMark(0, 7, "a" * 64))
    assert load(path, "fp-b") == Memory(0, HeadMark(0, 2, "b" * 64))
    assert load(path, "fp-c") is None
    assert sorted(p.name for p in path.parent.iterdir()) == ["witness.json",
                                                             "witness.json.lock"]


@pytest.mark.parametrize("content", [b"{", b"[]", b'{"format": "x", "version": 1, "hsms": {}}',
                                     b'{"format": "ska-witness", "version": 1, "hsms": '
                                     b'{"fp-a": {"epoch": -1}}}'])
def test_a_damaged_file_is_refused_and_kept(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "witness.json"
    path.write_bytes(content)
    with pytest.raises(WitnessFileError, match="damaged"):
        update(path, "fp-a", _see(HeadMark(0, 1, "a" * 64)))
    assert path.read_bytes() == content  # evidence is never reset


def test_concurrent_updates_lose_no_head(tmp_path: Path) -> None:
    """Two commands at once: under the lock, the highest head wins, whatever the order."""
    path = tmp_path / "witness.json"

    def climb(start: int) -> None:
        for seq in range(start, 60, 2):
            # refused when the other thread got further first, rightly
            with contextlib.suppress(WitnessRefused):
                update(path, "fp", _see(HeadMark(0, seq, f"{seq:064x}")))

    threads = [threading.Thread(target=climb, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    memory = load(path, "fp")
    assert memory is not None and memory.head is not None and memory.head.seq in (58, 59)
    assert json.loads(path.read_text())["format"] == "ska-witness"


# -- real HSM heads -----------------------------------------------------------------


def _signed(hsm: Hsm, seq: int, digest: str, epoch: int | None, counter: int | None,
            ) -> SignedHead:
    """A head this HSM's identity signs: what a restored (or forked) HSM would serve."""
    unsigned = SignedHead(seq, digest, 1_800_000_000.5, b"", epoch, counter)
    return SignedHead(seq, digest, unsigned.at,
                      hsm.identity.sign(Domain.AUDIT_HEAD, unsigned.body()), epoch, counter)


def test_observe_real_heads(tmp_path: Path, hsm: Hsm) -> None:
    path, key = tmp_path / "w.json", hsm.identity_public_key()
    early = hsm.audit_head()
    hsm.create_key("k", "SECP256K1")
    later = hsm.audit_head()
    assert observe(path, key, [later.to_json()], {}).notes == ()
    with pytest.raises(WitnessRefused) as back:
        observe(path, key, [early.to_json()], {})
    assert back.value.reason == (f"the HSM's audit head went back from seq {later.seq} to "
                                 f"{early.seq}: {REWOUND}")
    forged = {**later.to_json(), "seq": later.seq + 5}
    with pytest.raises(WitnessRefused, match="not signed by the pinned HSM or was altered"):
        observe(path, key, [forged], {})
    with pytest.raises(WitnessRefused, match="no signed audit head"):
        observe(path, key, [], {})
    with pytest.raises(WitnessRefused, match="malformed"):
        observe(path, key, [{"seq": "x"}], {})
    legacy = _signed(hsm, later.seq + 1, "f" * 64, None, None)  # a head from before witnesses
    assert legacy.verify(key)
    with pytest.raises(WitnessRefused, match="carries no epoch"):
        observe(path, key, [legacy.to_json()], {})
    fork = _signed(hsm, later.seq, "f" * 64, 0, later.counter)
    with pytest.raises(WitnessRefused, match="forked or rewritten"):
        observe(path, key, [fork.to_json()], {})
    restored = _signed(hsm, 2, "e" * 64, 1, 1)  # a restore: a new epoch, a shorter log
    seen = observe(path, key, [restored.to_json()], {"old-task": 0, "new-task": 1})
    assert "restored from a backup" in seen.notes[0]
    assert list(seen.refused) == ["old-task"] and "void" in seen.refused["old-task"]
    with pytest.raises(WitnessRefused, match="epoch went back from 1 to 0"):
        observe(path, key, [hsm.audit_head().to_json()], {})


def test_a_head_checkpoint_from_before_witnesses_still_verifies(hsm: Hsm) -> None:
    """Older stores hold checkpoints signed without epoch and counter: their signed body
    has neither, so they verify as they always did (and a verifier cannot add them)."""
    old = _signed(hsm, 3, "a" * 64, None, None)
    assert json.loads(old.body()) == {"seq": 3, "hash": "a" * 64, "at": old.at}
    assert SignedHead.from_json(old.to_json()).verify(hsm.identity_public_key())
    dressed = SignedHead(old.seq, old.hash, old.at, old.signature, 0, 0)
    assert not dressed.verify(hsm.identity_public_key())
    with pytest.raises(ValueError):
        SignedHead.from_json({**old.to_json(), "epoch": True})


def test_older_challenges_count_as_epoch_0() -> None:
    """Versions 1 and 2 carry no epoch: issued before any restore could exist, they are
    epoch 0 - accepted until a witness has seen a restore, void after it."""
    from hsm_emulator.challenge import challenge_epoch

    assert challenge_epoch({"requestId": "v1"}) == 0
    assert challenge_epoch({"requestId": "v2", "units": {}}) == 0
    assert challenge_epoch({"requestId": "v3", "units": {}, "epoch": 2, "seq": 9}) == 2
    assert challenge_epoch({"epoch": True}) == 0 and challenge_epoch({"epoch": -1}) == 0
    after_restore = Memory(1, HeadMark(1, 3, "d" * 64))
    with pytest.raises(WitnessRefused, match="it is void"):
        check_challenge(after_restore, "v2", challenge_epoch({"units": {}}))
    check_challenge(Memory(0, HeadMark(0, 3, "d" * 64)), "v2", 0)
