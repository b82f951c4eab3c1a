"""Statements written with SQLAlchemy, compiled once, run straight on the DBAPI connection.

Measured on this machine (SQLite, 100k rooms): building and executing a Core statement per call costs 150-200 µs,
a pre-built one through a pooled Connection 40-80 µs, the same SQL on the raw DBAPI cursor 7 µs. The webhooks make
three or four such calls each, so the hot path keeps SQLAlchemy for what it is good at — writing the SQL once,
portably, from the table definitions — and runs the compiled text itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy import Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler


class Prepared:
    __slots__ = ("_pick", "defaults", "names", "sql")

    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        self.sql: str = compiled.string
        self.defaults: dict[str, Any] = dict(compiled.params)
        self.names: Sequence[str] | None = list(compiled.positiontup or ()) if compiled.positional else None
        self._pick: Callable[[Mapping[str, Any]], Sequence[Any]] = _picker(self.names or ())

    def parameters(self, values: Mapping[str, Any]) -> Sequence[Any] | Mapping[str, Any]:
        if self.names is None:
            return {**self.defaults, **values}
        return self._pick({**self.defaults, **values})


def _picker(names: Sequence[str]) -> Callable[[Mapping[str, Any]], Sequence[Any]]:
    """The positional parameters, in order, from a mapping: `itemgetter` does it in C (a third of the cost of a
    generator expression; these run three or four times per webhook)."""
    if not names:
        return lambda _merged: ()
    if len(names) == 1:
        (name,) = names
        return lambda merged: (merged[name],)
    return itemgetter(*names)
