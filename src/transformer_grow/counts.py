"""Counts as text: the package's one parser of every count it reads (``tgrow`` flags, config files, the
seed API's ``target_size`` and ``budget``, ``--to`` sizes).

A count is an integer (``125000``), a decimal or scientific number (``1.3e8``, ``2.5``), optionally followed
by a suffix ``K`` (1e3), ``M`` (1e6), ``B`` or ``G`` (1e9) or ``T`` (1e12), in any case (``350m``, ``1.2e3K``).
A foundation module (no torch): the CLI parses its flags before anything heavy is imported.
"""

from __future__ import annotations

import math
import re
from typing import Any

from transformer_grow.errors import require

_COUNT = re.compile(r"^([+-]?)(\d+\.?\d*|\.\d+)(?:e([+-]?\d+))?([kmgbt]?)$", re.IGNORECASE)
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9, "t": 10**12}
COUNT_EXAMPLES = "e.g. 125000, 350M, 7B, 1.2e8"
MAX_COUNT = 10**18  # no parameter or token count of any run is larger


def count_value(text: Any) -> int | float | None:
    """The value of a count (module docstring), or ``None`` if ``text`` is not one. An int, or a str
    such as ``"7B"``, ``"1.2e8"``, ``"-3"``; exact for integer literals (no float rounding); an
    integral value is returned as an int, others as a float (``"2.5"``)."""
    if isinstance(text, bool):
        return None
    if isinstance(text, int):
        return text
    if not isinstance(text, str):
        return None
    match = _COUNT.match(text.strip().replace(" ", ""))
    if not match:
        return None
    sign, number, exponent, suffix = match.groups()
    unit = _UNITS[suffix.lower()]
    if exponent is None and number.isdigit():
        value: int | float = int(number) * unit
    else:
        try:
            value = float(number) * 10.0 ** int(exponent or 0) * unit
        except OverflowError:
            return None
        if not math.isfinite(value):
            return None
        if value == int(value):
            value = int(value)
    return -value if sign == "-" else value


def parse_count(text: Any, what: str, *, minimum: int = 1, maximum: int = MAX_COUNT) -> int:
    """The count ``text`` (module docstring) as an int from ``minimum`` to ``maximum`` (a fraction is
    rounded: ``"1.5e3K"``); one-line :class:`ConfigError` naming ``what`` otherwise."""
    value = count_value(text)
    low = "a positive number" if minimum == 1 else f"a number >= {minimum}"
    require(value is not None and minimum <= value <= maximum,
            f"{what}={text!r} is not allowed; write {low} with an optional K, M, B or T suffix ({COUNT_EXAMPLES}), "
            f"at most {maximum:.0e}".replace("e+", "e"))
    return int(round(value))
