"""Chain adapters: Bitcoin, Ethereum, Solana. Pure building/decoding beside node clients."""

import sys

# py_ecc (pulled in by the eth-* libraries) raises the process-wide recursion limit to
# 100,000 when imported. That turns a hostile, deeply nested JSON body - parsed anywhere
# in the process, the API and the HSM server included - from a RecursionError into a C
# stack overflow. Import it first, then put the limit back.
_LIMIT = sys.getrecursionlimit()
import py_ecc  # noqa: E402, F401

sys.setrecursionlimit(_LIMIT)
