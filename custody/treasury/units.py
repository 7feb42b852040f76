"""Amounts as desks write them (decimal strings in the asset's units) and as chains count
them (integers in base units: satoshi, wei, lamports, token units). No floats anywhere."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from custody.errors import BadRequest

_DECIMAL = re.compile(r"^(0|[1-9][0-9]{0,39})(\.[0-9]{1,40})?$")


def to_base_units(text: str, decimals: int, *, what: str = "amount") -> int:
    """``"1.5"`` with 8 decimals -> 150000000. Refuses signs, exponents, excess digits."""
    if not isinstance(text, str) or not _DECIMAL.match(text):
        raise BadRequest(f"{what} must be a plain decimal string such as \"1.25\"")
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise BadRequest(f"{what} is not a decimal number") from None
    scaled = value.scaleb(decimals)
    if scaled != scaled.to_integral_value():
        raise BadRequest(f"{what} has more than {decimals} decimal places")
    return int(scaled)


def to_text(base_units: int, decimals: int) -> str:
    """150000000 with 8 decimals -> ``"1.5"``; exact, no exponent."""
    sign = "-" if base_units < 0 else ""
    whole, frac = divmod(abs(base_units), 10 ** decimals)
    if not decimals or not frac:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{str(frac).rjust(decimals, '0').rstrip('0')}"
