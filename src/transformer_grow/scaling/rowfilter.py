"""Row filters for ``tgrow scaling fit --where``: ``COLUMN OP VALUE`` conditions joined by ``and``.

``OP`` is one of ``<``, ``<=``, ``>``, ``>=``, ``==``, ``!=``. A number compares numerically (a row whose
value is missing or not a number does not match); anything else compares as text, e.g.
``--where "tokens >= 1e9 and dataset == c4"``. Deliberately not Python's ``eval``: a filter can only
compare columns with constants.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Any

from transformer_grow.errors import ConfigError

OPERATORS = {"<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne, "<": operator.lt,
             ">": operator.gt}
_CONDITION = re.compile(r"^\s*([^<>=!\s]+)\s*(<=|>=|==|!=|<|>)\s*(.+?)\s*$")


@dataclass(frozen=True)
class Condition:
    column: str
    op: str
    value: float | str

    def matches(self, record: dict[str, Any]) -> bool:
        raw = record.get(self.column)
        if isinstance(self.value, float):
            try:
                number = float(raw)
            except (TypeError, ValueError):
                return False
            return math.isfinite(number) and OPERATORS[self.op](number, self.value)
        return OPERATORS[self.op]("" if raw is None else str(raw), self.value)

    def __str__(self) -> str:
        return f"{self.column} {self.op} {self.value:g}" if isinstance(self.value, float) else \
            f"{self.column} {self.op} {self.value}"


def parse_where(text: str, columns: list[str]) -> list[Condition]:
    """Conditions of one ``--where`` expression; a bad condition or unknown column is refused."""
    conditions = []
    for part in re.split(r"\s+and\s+", text.strip()):
        match = _CONDITION.match(part)
        if not match:
            raise ConfigError(f"--where {part!r} is not a condition; write COLUMN OP VALUE with OP one of "
                              f"{', '.join(OPERATORS)}, joined by 'and' (e.g. 'tokens >= 1e9 and N < 1e8')")
        column, op, value_text = match.groups()
        if column not in columns:
            raise ConfigError(f"--where column {column!r} is not a column; columns: {', '.join(columns) or '(none)'}")
        value_text = value_text.strip("'\"")
        try:
            value: float | str = float(value_text)
        except ValueError:
            value = value_text
        conditions.append(Condition(column, op, value))
    return conditions
