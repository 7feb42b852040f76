"""Bitcoin: PSBT building, decoding, sighash and assembly - pure code, no network I/O.

The node clients (``chains.bitcoin.rpc``, ``chains.bitcoin.node``) live beside this
package's pure modules and are not imported here, so the HSM can import the decoder
without pulling in any transport.
"""

from .addresses import address_to_script, script_to_address, validate_address
from .assemble import finalize
from .builder import ChangeKey, Payment, build_psbt, bump_fee
from .coins import Utxo
from .decoder import BitcoinPsbtDecoder
from .psbt import Psbt

__all__ = [
    "BitcoinPsbtDecoder",
    "ChangeKey",
    "Payment",
    "Psbt",
    "Utxo",
    "address_to_script",
    "build_psbt",
    "bump_fee",
    "finalize",
    "script_to_address",
    "validate_address",
]
