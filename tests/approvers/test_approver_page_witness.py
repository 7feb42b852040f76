"""The web page's witness agrees with the command line's (in Chromium).

One set of rules in two languages: ``approvals_app/approver_page/witness.js`` and
:mod:`custody.witness` decide the same on the same random sequences of heads and
challenge epochs, and the page's ``verifyHead`` accepts exactly the heads Python
verifies - real heads of an HSM on a manual clock (whole-second times, which Python
writes as ``1800000000.0``) and on the system clock - and refuses altered ones.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from custody.witness import HeadMark, Memory, WitnessRefused, witness_epochs, witness_head
from hsm_emulator import Hsm, ManualClock
from tests.approvers.page_kit import BROWSER_MARKS, blank_page
from tests.conftest import SO, TEST_PASSPHRASE

pytestmark = BROWSER_MARKS

pytest.importorskip("playwright.sync_api")

JS_RULES = """async (steps) => {
  const w = await import("/witness.js");
  let memory = null;
  const out = [];
  for (const [kind, epoch, seq, hash] of steps) {
    try {
      const seen = kind === "head" ? w.witnessHead(memory, { epoch, seq, hash })
        : w.witnessEpochs(memory, [epoch]);
      memory = seen.memory;
      out.push({ ok: true, memory, notes: seen.notes.length });
    } catch (e) {
      out.push({ ok: false, error: String(e.message) });
    }
  }
  return out;
}"""

JS_HEAD = """async ([keyB64, head]) => {
  const c = await import("/crypto.js");
  try {
    return { ok: true, head: await c.verifyHead(await c.importHsmKey(keyB64), head) };
  } catch (e) {
    return { ok: false, error: String(e.message) };
  }
}"""


@pytest.fixture(scope="module")
def page() -> Iterator[Any]:
    with blank_page("crypto.js", "witness.js") as p:
        yield p


def _python(steps: list[tuple[str, int, int, str]]) -> list[dict[str, Any]]:
    memory: Memory | None = None
    out: list[dict[str, Any]] = []
    for kind, epoch, seq, digest in steps:
        try:
            if kind == "head":
                seen = witness_head(memory, HeadMark(epoch, seq, digest))
            else:
                assert memory is not None
                seen = witness_epochs(memory, [epoch])
        except WitnessRefused as exc:
            out.append({"ok": False, "error": exc.reason})
            continue
        memory = seen.memory
        head = None if memory.head is None else {"epoch": memory.head.epoch,
                                                 "seq": memory.head.seq,
                                                 "hash": memory.head.hash}
        out.append({"ok": True, "memory": {"epoch": memory.epoch, "head": head},
                    "notes": len(seen.notes)})
    return out


def test_the_page_and_python_decide_the_same(page: Any) -> None:
    rng = random.Random(15)
    for _ in range(150):
        steps = [("head", rng.randint(0, 2), rng.randint(0, 4), rng.choice("ab"))]
        steps += [(rng.choice(["head", "head", "challenge"]), rng.randint(0, 2),
                   rng.randint(0, 4), rng.choice("ab")) for _ in range(rng.randint(0, 12))]
        python = _python(steps)
        js = page.evaluate(JS_RULES, steps)
        assert [r["ok"] for r in js] == [r["ok"] for r in python], steps
        for mine, theirs in zip(js, python, strict=True):
            if mine["ok"]:
                assert mine["memory"] == theirs["memory"] and mine["notes"] == theirs["notes"]
            elif "went back from seq" in theirs["error"]:  # the words the brief asks for
                assert mine["error"] == theirs["error"]


@pytest.mark.parametrize("clock", [ManualClock(1_800_000_000.0), None])
def test_the_page_verifies_real_heads_as_python_does(page: Any, tmp_path: Path,
                                                     clock: ManualClock | None) -> None:
    hsm = Hsm.open(tmp_path / "hsm.sqlite", TEST_PASSPHRASE, so_passphrase=SO, clock=clock)
    try:
        hsm.create_key("k", "SECP256K1")
        head = hsm.audit_head().to_json()
        key = base64.b64encode(hsm.identity_public_key()).decode()
    finally:
        hsm.close()
    if clock is not None:
        assert head["at"] == 1_800_000_000.0  # signed as "1800000000.0"
    ok = page.evaluate(JS_HEAD, [key, head])
    assert ok == {"ok": True, "head": {"epoch": 0, "seq": head["seq"], "hash": head["hash"]}}
    for field, value in (("seq", head["seq"] - 1), ("epoch", 1), ("counter", 0),
                         ("at", head["at"] + 1), ("hash", "0" * 64)):
        js = page.evaluate(JS_HEAD, [key, {**head, field: value}])
        assert not js["ok"] and "not signed by your HSM" in js["error"], (field, js)
    for field in ("epoch", "counter"):
        bare = {k: v for k, v in head.items() if k != field}
        js = page.evaluate(JS_HEAD, [key, bare])
        assert not js["ok"] and "carries no epoch" in js["error"], js
    js = page.evaluate(JS_HEAD, [key, None])
    assert not js["ok"] and "no signed audit head" in js["error"]
