"""Progress output is a live display on a terminal and plain lines elsewhere (a log, CI)."""

from __future__ import annotations

import io

from rich.console import Console

from custody.console import ProgressLines


def test_progress_is_plain_lines_off_a_terminal() -> None:
    sink = io.StringIO()
    with ProgressLines(Console(file=sink, width=120)) as progress:
        first = progress.add("bitcoin 0.5 BTC: requested")
        progress.update(first, "bitcoin 0.5 BTC: requested")  # unchanged: no new line
        progress.update(first, "bitcoin 0.5 BTC: confirmed")
    assert sink.getvalue().splitlines() == ["bitcoin 0.5 BTC: requested",
                                            "bitcoin 0.5 BTC: confirmed"]


def test_progress_is_live_on_a_terminal() -> None:
    sink = io.StringIO()
    out = Console(file=sink, width=120, force_terminal=True)
    with ProgressLines(out) as progress:
        progress.add("ethereum 1 ETH: requested")
    assert progress.live and "\x1b[" in sink.getvalue()  # cursor control, not plain lines
