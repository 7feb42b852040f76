"""What every chain's kit of ``custody bench transfers`` shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

#: POST a deposit address for a wallet id: the desk's way to get one (Bitcoin).
NewAddress = Callable[[str], str]


@dataclass(frozen=True)
class Presigned:
    """The node-ingest baseline: raw transactions signed beforehand, and the client call
    that sends one (the one the broker's adapter uses for its own broadcasts)."""

    raws: list[bytes]
    send: Callable[[bytes], str]
