"""Typed results: every analysis answers with a small table, convertible to pandas, Arrow
and JSON, plus what was asked (``params``) so the answer can be reproduced."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, float) and value != value:  # NaN
        return None
    return value


@dataclass
class Result:
    """A table of answers (``table``) and the question (``kind``, ``params``, ``engine``)."""

    kind: str
    params: dict[str, Any]
    table: pa.Table
    engine: str = "duckdb"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_arrow(self) -> pa.Table:
        return self.table

    def to_pandas(self) -> Any:
        return self.table.to_pandas()

    def rows(self) -> list[dict[str, Any]]:
        return [{k: _plain(v) for k, v in r.items()} for r in self.table.to_pylist()]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "engine": self.engine, "params": self.params,
                **{k: _plain(v) for k, v in self.extra.items()}, "rows": self.rows()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, default=str)

    def __len__(self) -> int:
        return int(self.table.num_rows)
