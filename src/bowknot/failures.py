"""Failed events: everything rejected, kept with its raw text and typed reasons, replayable."""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from . import ingest
from .store.engine import run
from .store.writer import ITEM_SCHEMA, Request, Submission

if TYPE_CHECKING:
    from .workspace import Workspace

FILTER = """
WHERE status = 'failed'
  AND (?::BIGINT[] IS NULL OR list_contains(?::BIGINT[], failure_id))
  AND (?::VARCHAR IS NULL OR list_contains(reasons, ?::VARCHAR))
  AND (?::VARCHAR IS NULL OR source = ?::VARCHAR)
"""


class Failures:
    def __init__(self, ws: Workspace) -> None:
        self._ws = ws

    @staticmethod
    def _params(
        ids: builtins.list[int] | None, reason: str | None, source: str | None
    ) -> builtins.list[Any]:
        return [ids, ids, reason, reason, source, source]

    def list(
        self,
        *,
        ids: builtins.list[int] | None = None,
        reason: str | None = None,
        source: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        rows = self._ws.store.query(
            "SELECT failure_id, received_at, source, origin, call, file, position, message_id, "
            f"reasons, raw FROM failed_events {FILTER} ORDER BY failure_id LIMIT ?",
            [*self._params(ids, reason, source), limit],
        )
        for row in rows:
            row["reasons"] = ingest.describe(row["reasons"])
        return rows

    def keep(self, source: str, call: str, raw: str, reason: str,
             origin: str = "http") -> None:
        """Keep a request refused before it reached the writer (too large, bad encoding)."""
        run(
            self._ws.store.cursor(),
            "INSERT INTO failed_events (source, origin, call, received_at, reasons, raw) "
            "VALUES (?, ?, ?, now()::TIMESTAMP, [?], ?)",
            [source, origin, call, reason, raw],
        )

    def summary(self) -> builtins.list[dict[str, Any]]:
        return self._ws.store.query("""
            SELECT reason, count(*) AS n, max(received_at) AS last_received_at
            FROM (SELECT unnest(reasons) AS reason, received_at FROM failed_events
                  WHERE status = 'failed')
            GROUP BY reason ORDER BY n DESC""")

    def replay(
        self,
        *,
        ids: builtins.list[int] | None = None,
        reason: str | None = None,
        source: str | None = None,
        new_message_ids: bool = False,
    ) -> dict[str, Any]:
        """Send failed events through the contract again (after a fix to settings or data).

        Rows that pass are stored; rows that fail again get a new failed-event row. Either
        way the original row is marked ``replayed``. ``new_message_ids`` gives conflicts a
        fresh messageId (``<old>~r<failure_id>``) so both versions are kept.
        """
        store = self._ws.store
        params = self._params(ids, reason, source)
        patch = (
            "CASE WHEN position IS NOT NULL AND message_id IS NOT NULL "
            "AND json_valid(raw) AND json_type(raw) = 'OBJECT' THEN "
            "json_merge_patch(raw, json_object('messageId', "
            "message_id || '~r' || failure_id::VARCHAR))::VARCHAR ELSE raw END"
            if new_message_ids
            else "raw"
        )
        cur = store.cursor()
        items = cur.sql(
            f"SELECT 0::BIGINT AS req, failure_id AS pos, source, 'replay' AS origin, call, "
            f"{patch} AS raw, received_at, origin IN ('library', 'import', 'replay') AS trusted, "
            "file, NULL::VARCHAR AS batch_sent_at, NULL::VARCHAR AS batch_context, "
            f"NULL::VARCHAR AS batch_integrations FROM failed_events {FILTER} "
            "AND position IS NOT NULL ORDER BY failure_id",
            params=params,
        ).to_arrow_table()
        whole = run(
            cur,
            f"SELECT failure_id, source, call, raw FROM failed_events {FILTER} "
            "AND position IS NULL ORDER BY failure_id",
            params,
        )
        chosen = [int(x) for x in items.column("pos").to_pylist()] + [r[0] for r in whole]
        if not chosen:
            return {"replayed": 0, "accepted": 0, "duplicates": 0, "conflicts": 0, "failed": 0}
        sub = Submission(
            requests=[Request(r[1], r[2] or "batch", r[3], origin="replay") for r in whole],
            items=pa.Table.from_batches(items.to_batches(), schema=ITEM_SCHEMA)
            if items.num_rows
            else None,
            full_dedupe=True,
        )
        outcomes = self._ws.writer.write(sub)
        load_id = outcomes[0].load_id
        run(
            cur,
            "UPDATE failed_events SET status = 'replayed', replayed_at = now()::TIMESTAMP, "
            "replay_load_id = ? WHERE list_contains(?, failure_id)",
            [load_id, chosen],
        )
        total: dict[str, Any] = {
            "replayed": len(chosen),
            "accepted": 0,
            "duplicates": 0,
            "conflicts": 0,
            "failed": 0,
        }
        for out in outcomes:
            total["accepted"] += out.accepted
            total["duplicates"] += out.duplicates
            total["conflicts"] += out.conflicts
            total["failed"] += out.failed + (1 if out.request_reason else 0)
        total["load_id"] = load_id
        return total
