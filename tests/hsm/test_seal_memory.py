"""The store's seal keeps no per-record state: its memory does not grow with the records
the HSM keeps (it used to hold one digest per record for ever: 0.2-0.4 KiB per sign
request, found by the soak's memory tracing, tests/reliability/REPORT.md)."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

from hsm_emulator import Hsm, ManualClock
from tests.conftest import SO, TEST_PASSPHRASE

RECORDS = 2_000


def test_held_memory_does_not_grow_with_records(tmp_path: Path, clock: ManualClock) -> None:
    hsm = Hsm.open(tmp_path / "hsm.sqlite", TEST_PASSPHRASE, so_passphrase=SO,
                   clock=clock)
    store = hsm._store  # the sealed store itself: what every write goes through
    store.put("request", "warm", {"n": 0})
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(RECORDS):  # a fresh id each: what sign requests add
            store.put("request", f"{i:032x}", {"n": i})
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 20 * RECORDS  # 200 B or more a record before; a few bytes now
    hsm.close()
    reopened = Hsm.open(tmp_path / "hsm.sqlite", TEST_PASSPHRASE, so_passphrase=SO,
                        clock=clock)  # the seal still verifies
    assert reopened._store.get("request", f"{RECORDS - 1:032x}") == {"n": RECORDS - 1}
    reopened.close()
