"""An append-only copy of every block the node accepted, replayed after a crash.

The kernel writes its block index and UTXO set to disk when the chainstate manager
is destroyed; a node killed with SIGKILL never gets there and restarts at genesis.
Replaying this journal through ``process_block`` (Core validates every block again)
brings the chain back. Records are ``u32 length || block``; a torn last record from
a crash mid-write is ignored.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path


class BlockJournal:
    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, raw_block: bytes) -> None:
        with self.path.open("ab") as f:
            f.write(struct.pack("<I", len(raw_block)) + raw_block)
            f.flush()

    def blocks(self) -> Iterator[bytes]:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        pos = 0
        while pos + 4 <= len(data):
            (size,) = struct.unpack_from("<I", data, pos)
            if pos + 4 + size > len(data):
                return
            yield data[pos + 4 : pos + 4 + size]
            pos += 4 + size
