"""``python -m custody.cli``: the same commands as ``custody``."""

from . import app

app()
