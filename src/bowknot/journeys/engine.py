"""Engines: the same Ibis table of person events on the embedded DuckDB store or on Spark.

Every analysis is one Ibis expression over :meth:`Engine.events` (and :meth:`Engine.traits`);
an engine only says where those tables live and how to read a JSON field, so the analyses are
written once (issue 5). The DuckDB engine reads the workspace's ``journey_events`` table
(person events as of the last build, rewritten by the first analysis after a build:
:mod:`bowknot.journal`) in place; the Spark
engine reads a Parquet snapshot of the same table, written by DuckDB when the engine is made
(``refresh()`` takes a new one).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ibis
import ibis.expr.datatypes as dt
import ibis.expr.types as ir
import pyarrow as pa

from .. import journal
from ..errors import BowknotError

if TYPE_CHECKING:
    from ..workspace import Workspace
    from .steps import Step

ENGINES = ("duckdb", "spark")
# The journal's rows that come before the row read before them (OVER (): the rows as read).
IN_ORDER = """SELECT count(*) FROM (
    SELECT pkey, ts, seq, lag(pkey) OVER () AS p, lag(ts) OVER () AS t, lag(seq) OVER () AS s
    FROM journey_events) WHERE p > pkey OR (p = pkey AND (t > ts OR (t = ts AND s > seq)))"""
COMPILED = 64  # questions whose SQL the DuckDB engine keeps

# The columns every analysis reads (see docs/journeys.md):
#   person_id  the person of the event as of the last build
#   pkey       the same person as a number (1, 2, ... in person_id order): for windows,
#              joins and distinct counts; person_id is what the results show
#   ts         the corrected event time (UTC)
#   seq        a tie-breaker for events at the same time (from the event key)
#   type       the Segment call (track, page, screen, identify, ...)
#   event      the step label: a track's event name, "page:<name>" / "screen:<name>" for
#              named pages and screens, else the call type ("identify", "page", ...)
#   ekey       the step label as a number (in label order)
#   properties, context   the JSON objects, as text
#   channel, campaign     a touch's channel and campaign: its properties ``channel`` and
#              ``campaign_id``, else the UTM source and name of its context
#   utm_campaign          the UTM campaign name of its context
EVENT_COLUMNS = ("person_id", "pkey", "ts", "seq", "type", "event", "ekey", "properties",
                 "context", "channel", "campaign", "utm_campaign")


@ibis.udf.scalar.builtin(name="json_extract_string")  # type: ignore[untyped-decorator]
def _duckdb_json_text(doc: str, path: str) -> str:  # type: ignore[empty-body]
    """DuckDB: the text of the JSON value at ``path`` (NULL when absent)."""


@ibis.udf.scalar.builtin(name="epoch_us")  # type: ignore[untyped-decorator]
def _duckdb_epoch_us(ts: dt.timestamp) -> dt.int64:
    """DuckDB: microseconds since 1970 of a timestamp."""


@ibis.udf.scalar.builtin(name="get_json_object")  # type: ignore[untyped-decorator]
def _spark_json_text(doc: str, path: str) -> str:  # type: ignore[empty-body]
    """Spark: the same, under Spark's name."""


def normalised_events(ws: Workspace) -> ir.Table:
    """The analysis columns of every person event (the ``journey_events`` table, see
    :mod:`bowknot.journal`), on the workspace's DuckDB (Ibis)."""
    journal.refresh(ws)
    return ws.table("journey_events")


def normalised_traits(ws: Workspace) -> ir.Table:
    """``person_traits`` with each value as text (strings unquoted, others as JSON text)."""
    t = ws.table("person_traits")
    return t.select(
        person_id=t.person_id,
        trait=t.trait,
        value=_duckdb_json_text(t.value.cast("string"), "$"),
    )


class Engine:
    """Where the analyses run. Subclasses give the two tables and the JSON accessor."""

    name = "engine"
    # Whether the engine has an ASOF join (a fast path for "the last X before each Y") and
    # :meth:`order_key` for it.
    asof = False

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws

    @property
    def stored_order(self) -> bool:
        """Whether :meth:`events` is read in (pkey, ts, seq) order: a person's previous and
        next events are then the previous and next rows, found by a window without
        partition or order (a stream, no sort)."""
        return False

    def events(self) -> ir.Table:
        raise NotImplementedError

    def traits(self) -> ir.Table:
        raise NotImplementedError

    def step_events(self, step: Step) -> ir.Table:
        """The events of ``step``: ``pkey``, ``ts``, ``seq``."""
        ev = self.events()
        return ev.filter(step.predicate(self, ev)).select("pkey", "ts", "seq")

    def persons(self) -> ir.Table:
        """The person numbers and ids: ``pkey``, ``person_id`` (one row per person)."""
        ev = self.events()
        return ev.group_by(ev.pkey).aggregate(person_id=ev.person_id.max())

    def labels(self) -> ir.Table:
        """The step numbers and labels: ``ekey``, ``event`` (one row per label)."""
        ev = self.events()
        return ev.group_by(ev.ekey).aggregate(event=ev.event.max())

    def json_text(self, doc: ir.StringValue, path: str) -> ir.StringValue:
        """The text of the JSON value at ``path`` (``$.a.b``) of the JSON text ``doc``."""
        raise NotImplementedError

    def order_key(self, ts: ir.TimestampValue, seq: ir.IntegerValue | int) -> ir.DecimalValue:
        raise NotImplementedError

    def to_arrow(self, expr: ir.Table) -> pa.Table:
        table: pa.Table = expr.to_pyarrow()
        return table

    @contextmanager
    def analysis(self) -> Iterator[None]:
        """One analysis: the engine's tables stay as they are until it ends."""
        yield

    def expression(self, key: Hashable, build: Callable[[], ir.Table]) -> ir.Table:
        """The expression of the question ``key`` (its definition), made by ``build``."""
        return build()

    @contextmanager
    def materialized(self, expr: ir.Table) -> Iterator[ir.Table]:
        """``expr`` as a table to read more than once or to aggregate after a chain of
        windows; here the expression itself (the engine plans it whole)."""
        yield expr

    def close(self) -> None:
        """Release what the engine holds (the Spark snapshot); the workspace stays open."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class DuckDBEngine(Engine):
    """The embedded store: the workspace's own tables, read in place."""

    name = "duckdb"
    asof = True

    def __init__(self, ws: Workspace) -> None:
        super().__init__(ws)
        # The journal's tables as Ibis expressions (each lookup asks DuckDB for the schema)
        # and, per thread, whether an analysis is under way (the journal was brought up to
        # date when it began: checked once per analysis, not once per table read).
        self._tables: dict[str, ir.Table] = {}
        self._local = threading.local()
        self._compiled: dict[Any, str] = {}  # the SQL of recent questions
        self._expressions: dict[Hashable, ir.Table] = {}
        self._compiling = threading.Lock()
        self._in_order: bool | None = None  # the journal checked (stored_order)

    @contextmanager
    def analysis(self) -> Iterator[None]:
        depth = getattr(self._local, "depth", 0)
        if not depth:
            self._refresh()
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth

    def _refresh(self) -> None:
        if journal.refresh(self.ws):
            self._tables.clear()
            self._expressions.clear()
            self._in_order = None

    def expression(self, key: Hashable, build: Callable[[], ir.Table]) -> ir.Table:
        """Kept per question until the journal is rewritten: making the Ibis expression of a
        cohort costs about 15 ms, a fifth of its answer at 20 M events."""
        found = self._expressions.get(key)
        if found is None:
            found = build()
            self._keep(self._expressions, key, found)
        return found

    def _keep(self, cache: dict[Any, Any], key: Any, value: Any) -> None:
        """Put ``value`` last in ``cache`` (most recently used), which keeps the last
        ``COMPILED`` entries."""
        with self._compiling:
            cache.pop(key, None)
            cache[key] = value
            while len(cache) > COMPILED:
                del cache[next(iter(cache))]

    def _table(self, name: str) -> ir.Table:
        """A journal table, the journal brought up to date first (outside an analysis)."""
        if not getattr(self._local, "depth", 0):
            self._refresh()
        table = self._tables.get(name)
        if table is None:
            table = self._tables[name] = self.ws.table(name)
        return table

    def events(self) -> ir.Table:
        return self._table("journey_events")

    def to_arrow(self, expr: ir.Table) -> pa.Table:
        """The answer of ``expr``, its SQL compiled once per question: compiling the Ibis
        expression costs 15-30 ms, a quarter to a half of a cohort's time at 20 M events
        (the same question asked again, e.g. by a dashboard, runs the SQL it had)."""
        from ibis.backends.duckdb.converter import DuckDBPyArrowData

        backend = self.ws.store.ibis
        key = expr.op()
        sql = self._compiled.get(key)
        if sql is None:
            backend._run_pre_execute_hooks(expr)
            sql = backend.compile(expr)
        self._keep(self._compiled, key, sql)
        table: pa.Table = expr.__pyarrow_result__(backend.con.sql(sql).to_arrow_table(),
                                                  data_mapper=DuckDBPyArrowData)
        return table

    def traits(self) -> ir.Table:
        return normalised_traits(self.ws)

    def step_events(self, step: Step) -> ir.Table:
        """A step without property filters from the journal's ``journey_steps`` companion,
        clustered by step: the join on the label's number lets DuckDB skip the row groups
        of every other step (the same rows as the portable filter)."""
        if step.where:
            return super().step_events(step)
        steps, labels = self._table("journey_steps"), self.labels()
        label = labels.filter(labels.event == step.event).select(lkey=labels.ekey)
        j = steps.inner_join(label, steps.ekey == label.lkey)
        return j.select("pkey", "ts", "seq")

    def persons(self) -> ir.Table:
        return self._table("journey_persons")

    def labels(self) -> ir.Table:
        return self._table("journey_labels")

    def json_text(self, doc: ir.StringValue, path: str) -> ir.StringValue:
        out: ir.StringValue = _duckdb_json_text(doc, path)
        return out

    @property
    def stored_order(self) -> bool:
        """The journal is written sorted by (pkey, ts, seq) and DuckDB reads a table in the
        order its rows were inserted (``preserve_insertion_order``, on by default). Checked
        once per journal, in one streaming pass (each row against the row before it: about
        0.2 s of CPU at 20 M events); a journal read otherwise is analysed the portable way."""
        if self._in_order is None:
            self.events()  # the journal brought up to date (outside an analysis)
            con = self.ws.store.ibis.con
            behind = con.sql(IN_ORDER).fetchall()[0][0]
            kept = con.sql("SELECT current_setting('preserve_insertion_order')").fetchall()
            self._in_order = behind == 0 and bool(kept[0][0])
        return self._in_order

    @contextmanager
    def materialized(self, expr: ir.Table) -> Iterator[ir.Table]:
        """``expr`` written to a temporary table, dropped on exit. DuckDB 2.0 streaming two
        chained windows into a holistic aggregate (a median) held every window buffer and
        spilled gigabytes at 20 M events (36 s for the transition graph); written first,
        the windows take a few seconds and the aggregate one or two."""
        con = self.ws.store.ibis
        name = f"bowknot_tmp_{uuid.uuid4().hex}"
        table = con.create_table(name, expr, temp=True)
        try:
            yield table
        finally:
            con.raw_sql(f'DROP TABLE IF EXISTS temp.main."{name}"')

    def order_key(self, ts: ir.TimestampValue, seq: ir.IntegerValue | int) -> ir.DecimalValue:
        """(ts, seq) as one number in the same order (a 128-bit decimal), so an ASOF join
        on it breaks ties in time by seq, as the portable windows do."""
        wide = "decimal(38, 0)"
        seq_value = ibis.literal(seq, "int64") if isinstance(seq, int) else seq
        key: ir.DecimalValue = (_duckdb_epoch_us(ts).cast(wide)
                                * ibis.literal(Decimal(2**64), wide) + seq_value.cast(wide))
        return key


def spark_session(master: str = "local[2]", shuffle_partitions: int = 4) -> Any:
    """A Spark session for bowknot: UTC, small shuffles, no UI (or the active one)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:  # pragma: no cover - depends on the environment
        raise BowknotError(
            "Spark is not installed: `pip install 'pyspark>=3.5,<4.1'` (and a Java 17 "
            "runtime), or use the DuckDB engine.", code="engine_unavailable") from None
    return (
        SparkSession.builder.master(master)
        .appName("bowknot")
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.ansi.enabled", "false")
        .getOrCreate()
    )


class SparkEngine(Engine):
    """Apache Spark through ``ibis.pyspark``, over a Parquet snapshot of the workspace.

    ``session`` defaults to :func:`spark_session` (local mode); pass your cluster's session
    and a ``directory`` it can read to run on a cluster.
    """

    name = "spark"

    def __init__(self, ws: Workspace, session: Any = None,
                 directory: str | Path | None = None) -> None:
        super().__init__(ws)
        self.session = session if session is not None else spark_session()
        self.con = ibis.pyspark.connect(self.session)
        self._owned = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="bowknot-spark-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self._prefix = f"bowknot_{id(self):x}"
        self._events: ir.Table | None = None
        self._traits: ir.Table | None = None
        self.refresh()

    def refresh(self) -> None:
        """Take a new snapshot of the workspace's person events and traits."""
        duck = self.ws.store.ibis
        for name, expr in (("events", normalised_events(self.ws)),
                           ("traits", normalised_traits(self.ws))):
            path = self.directory / f"{name}.parquet"
            duck.to_parquet(expr, str(path))
            table = self.con.read_parquet(str(path), table_name=f"{self._prefix}_{name}")
            # Spark may read DuckDB's timestamps as TIMESTAMP_NTZ; both mean UTC here.
            if name == "events":
                self._events = table
            else:
                self._traits = table

    def events(self) -> ir.Table:
        assert self._events is not None
        return self._events

    def traits(self) -> ir.Table:
        assert self._traits is not None
        return self._traits

    def json_text(self, doc: ir.StringValue, path: str) -> ir.StringValue:
        out: ir.StringValue = _spark_json_text(doc, path)
        return out

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self.directory, ignore_errors=True)


def engine(ws: Workspace, name: str = "duckdb", **options: Any) -> Engine:
    """The engine called ``name`` over ``ws`` (``duckdb`` or ``spark``)."""
    if name == "duckdb":
        return DuckDBEngine(ws)
    if name == "spark":
        return SparkEngine(ws, **options)
    raise BowknotError(f"Unknown engine {name!r}; use one of {', '.join(ENGINES)}.",
                       code="invalid_engine")
