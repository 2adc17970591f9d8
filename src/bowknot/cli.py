"""The ``bowknot`` command: a thin shell over :class:`bowknot.Workspace`."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from . import __version__, connect
from .errors import BowknotError
from .settings import SETTINGS, settings_markdown
from .workspace import Workspace

out = Console()
err = Console(stderr=True)

db_option = click.option(
    "--db", "db", envvar="BOWKNOT_DB", default="bowknot.duckdb", show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Workspace file (env BOWKNOT_DB).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@contextmanager
def workspace(db: Path) -> Iterator[Workspace]:
    try:
        ws = connect(db)
    except BowknotError as exc:
        raise click.ClickException(exc.message) from None
    try:
        yield ws
    except BowknotError as exc:
        raise click.ClickException(exc.message) from None
    finally:
        ws.close()


def _json(value: Any) -> None:
    click.echo(json.dumps(value, default=str, ensure_ascii=False, indent=2))


def _table(rows: list[dict[str, Any]], title: str | None = None) -> None:
    if not rows:
        out.print("[dim](no rows)[/dim]")
        return
    table = Table(title=title)
    for name in rows[0]:
        table.add_column(str(name), overflow="fold")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row.values()))
    out.print(table)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bowknot")
def main() -> None:
    """bowknot: events, the identity knot, segments, campaigns, surveys and journeys on one
    event log."""


# -- serve -------------------------------------------------------------------------------
@main.command()
@db_option
@click.option("--host", envvar="BOWKNOT_HOST", default="127.0.0.1", show_default=True)
@click.option("--port", envvar="BOWKNOT_PORT", default=8000, show_default=True, type=int)
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
def serve(db: Path, host: str, port: int, log_level: str) -> None:
    """Serve the collection API, the admin API and the pages."""
    import uvicorn

    from .server import create_app

    with workspace(db) as ws:
        ws.writer  # noqa: B018 -- start (and warm up) the writer before the first request
        # The app freezes the start-up objects out of the garbage collector once the writer
        # is warm (full passes paused every thread for ~50 ms every couple of seconds under
        # load: p99 at 32 clients 117 -> 62 ms, measured).
        app = create_app(ws, background_build=True, freeze_gc=True)
        click.echo(f"bowknot serving {db} on http://{host}:{port}  (API docs: /docs)")
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)


# -- sources and tokens ------------------------------------------------------------------
@main.group()
def sources() -> None:
    """Sources and their write keys (ingestion credentials)."""


@sources.command("create")
@click.argument("name")
@click.option("--description", default=None)
@db_option
def sources_create(name: str, description: str | None, db: Path) -> None:
    """Create source NAME (or a new key for it) and print its write key."""
    with workspace(db) as ws:
        click.echo(ws.access.create_source(name, description))


@sources.command("list")
@db_option
@json_option
def sources_list(db: Path, as_json: bool) -> None:
    """List sources and their active keys."""
    with workspace(db) as ws:
        rows = ws.access.sources()
    _json(rows) if as_json else _table(rows)


@sources.command("revoke")
@click.argument("name")
@click.option("--prefix", default=None, help="Revoke only the key starting with this.")
@db_option
def sources_revoke(name: str, prefix: str | None, db: Path) -> None:
    """Revoke the write keys of source NAME."""
    with workspace(db) as ws:
        click.echo(f"revoked {ws.access.revoke_write_keys(name, prefix)} key(s)")


@main.group()
def tokens() -> None:
    """Admin tokens for the API and the pages."""


@tokens.command("create")
@click.argument("name")
@db_option
def tokens_create(name: str, db: Path) -> None:
    """Create an admin token and print it (shown once)."""
    with workspace(db) as ws:
        click.echo(ws.access.create_token(name))


@tokens.command("list")
@db_option
@json_option
def tokens_list(db: Path, as_json: bool) -> None:
    """List admin tokens (prefixes only)."""
    with workspace(db) as ws:
        rows = ws.access.tokens()
    _json(rows) if as_json else _table(rows)


@tokens.command("revoke")
@click.argument("name_or_prefix")
@db_option
def tokens_revoke(name_or_prefix: str, db: Path) -> None:
    """Revoke a token (and end its page sessions)."""
    with workspace(db) as ws:
        click.echo(f"revoked {ws.access.revoke_token(name_or_prefix)} token(s)")


# -- import --------------------------------------------------------------------------------
@main.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--source", default="import", show_default=True,
              help="Source label for rows without a `source` field.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "parquet"]), default=None,
              help="File format (default: from the file name).")
@db_option
@json_option
def import_(file: Path, source: str, fmt: str | None, db: Path, as_json: bool) -> None:
    """Import spec events from JSON Lines (.jsonl[.gz]), CSV or Parquet.

    Bad rows are kept in failed events with their line numbers; the import goes on.
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from .imports import import_file

    size = file.stat().st_size
    with workspace(db) as ws, Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
        TextColumn("{task.fields[rows]:,} rows"), console=err, disable=as_json,
        transient=False,
    ) as progress:
        task = progress.add_task(f"importing {file.name}", total=size, rows=0)
        result = import_file(
            ws, file, source=source, fmt=fmt,
            progress=lambda done, rows: progress.update(task, completed=done, rows=rows),
        )
        progress.update(task, completed=size)
    if as_json:
        _json(result.to_dict())
        return
    click.echo(f"{result.rows:,} rows: {result.accepted:,} stored, {result.duplicates:,} "
               f"duplicates skipped, {result.conflicts:,} conflicts and {result.failed:,} "
               "failed kept in failed events")
    for f in result.failures[:10]:
        reasons = "; ".join(r["message"] for r in f["reasons"])
        click.echo(f"  line {f['line']}: {reasons}")
    if result.failed or result.conflicts:
        click.echo("Inspect them with `bowknot failed list`; replay with `bowknot failed replay`.")


# -- failed events -------------------------------------------------------------------------
@main.group()
def failed() -> None:
    """Failed events: everything rejected, with reasons; replayable."""


@failed.command("list")
@click.option("--reason", default=None, help="Only this reason code.")
@click.option("--source", default=None)
@click.option("--limit", default=50, show_default=True, type=int)
@db_option
@json_option
def failed_list(reason: str | None, source: str | None, limit: int, db: Path,
                as_json: bool) -> None:
    """List failed events waiting for a fix."""
    with workspace(db) as ws:
        rows = ws.failures.list(reason=reason, source=source, limit=limit)
        summary = ws.failures.summary()
    if as_json:
        _json(rows)
        return
    _table(summary, title="failed events by reason")
    _table([{"id": r["failure_id"], "source": r["source"], "file": r["file"],
             "position": r["position"], "reasons": ", ".join(x["code"] for x in r["reasons"]),
             "raw": (r["raw"] or "")[:80]} for r in rows])


@failed.command("replay")
@click.option("--id", "ids", multiple=True, type=int, help="Failure id (repeatable).")
@click.option("--reason", default=None, help="Only failures with this reason code.")
@click.option("--source", default=None)
@click.option("--new-message-ids", is_flag=True,
              help="Give messageId conflicts a fresh id so both versions are kept.")
@db_option
@json_option
def failed_replay(ids: tuple[int, ...], reason: str | None, source: str | None,
                  new_message_ids: bool, db: Path, as_json: bool) -> None:
    """Send failed events through the contract again (after fixing settings or data)."""
    with workspace(db) as ws:
        result = ws.failures.replay(ids=list(ids) or None, reason=reason, source=source,
                                    new_message_ids=new_message_ids)
    if as_json:
        _json(result)
    else:
        click.echo(f"replayed {result['replayed']}: {result['accepted']} stored, "
                   f"{result['duplicates']} duplicates, {result['conflicts']} conflicts, "
                   f"{result['failed']} failed again")


# -- the knot: builds, persons, privacy ------------------------------------------------------
@main.command()
@click.option("--full", is_flag=True, help="Rebuild everything instead of only what is new.")
@db_option
@json_option
def build(full: bool, db: Path, as_json: bool) -> None:
    """Bring identities, persons and profiles up to date with the events."""
    with workspace(db) as ws:
        result = ws.build(full=full)
    if as_json:
        _json(result.to_dict())
    elif result.skipped:
        click.echo("up to date: no new events since the last build")
    else:
        click.echo(f"{result.kind} build {result.build_id}: {result.events:,} events, "
                   f"{result.identifiers_resolved:,} identifiers resolved, "
                   f"{result.persons_updated:,} persons updated in {result.seconds:.2f} s")


@main.command()
@click.argument("ref")
@click.option("--timeline/--no-timeline", default=True, show_default=True,
              help="Show the person's events.")
@click.option("--limit", default=100, show_default=True, type=int,
              help="Most events shown (newest last); 0 for all.")
@db_option
@json_option
def person(ref: str, timeline: bool, limit: int, db: Path, as_json: bool) -> None:
    """Show a person: REF is a person id, TYPE:VALUE (email:a@b.c) or an identifier."""
    with workspace(db) as ws:
        p = ws.persons.get(ref)
        events = ws.persons.timeline(p["person_id"]) if timeline else []
    if limit and len(events) > limit:
        events = events[-limit:]
    if as_json:
        _json({**p, "timeline": events} if timeline else p)
        return
    head = {k: p[k] for k in ("person_id", "lifecycle", "first_seen", "known_at", "last_seen",
                               "events", "bookings", "revenue")}
    _table([head], title="person")
    _table([{"type": i["id_type"], "value": i["id_value"], "status": i["status"],
             "first seen": i["first_seen"], "linked": i["linked_at"]}
            for i in p["identifiers"]], title="identifiers")
    _table([{"trait": k, "value": json.dumps(v, ensure_ascii=False),
             "strategy": p["trait_strategies"].get(k, "")} for k, v in p["traits"].items()],
           title="traits")
    if p["changes"]:
        _table([{"id": c["log_id"], "kind": c["kind"], "person": c["person_id"],
                 "other": c["other_person_id"], "cause": c["cause_message_id"],
                 "via": f"{c['cause_id_type'] or ''}:{c['cause_id_value'] or ''}",
                 "undone": c["undone_at"]} for c in p["changes"]],
               title="identity changes (undo a merge: bowknot unmerge ID)")
    if timeline:
        _table([{"time": e["timestamp"], "source": e["source"], "type": e["type"],
                 "event": e["event"] or e["name"] or "",
                 "properties": json.dumps(e["properties"], ensure_ascii=False)[:60]
                 if e["properties"] else ""} for e in events], title="timeline")


@main.command()
@click.argument("log_id", type=int)
@click.option("--undo", is_flag=True, help="Take a previous unmerge back (merge again).")
@db_option
@json_option
def unmerge(log_id: int, undo: bool, db: Path, as_json: bool) -> None:
    """Undo merge LOG_ID (from `bowknot person`): both persons come back with their events."""
    with workspace(db) as ws:
        result = ws.persons.remerge(log_id) if undo else ws.persons.unmerge(log_id)
    if as_json:
        _json(result)
    elif undo:
        click.echo(f"merge {log_id} restored")
    else:
        click.echo(f"merge {log_id} undone: {result['person_id']} and "
                   f"{result['restored_person_id']} are two persons again")


@main.group()
def privacy() -> None:
    """Privacy requests on a person (REF: person id, TYPE:VALUE or an identifier)."""


@privacy.command("delete")
@click.argument("ref")
@click.option("--dry-run", is_flag=True, help="Only say what would be deleted.")
@db_option
@json_option
def privacy_delete(ref: str, dry_run: bool, db: Path, as_json: bool) -> None:
    """Delete everything held on the person, in every table."""
    with workspace(db) as ws:
        result = ws.privacy.delete(ref, dry_run=dry_run)
    if as_json:
        _json(result)
        return
    verb = "would delete" if dry_run else "deleted"
    _table([{"table": k, "rows": v} for k, v in result["counts"].items() if v],
           title=f"{verb} ({result['identifiers']} identifiers)")
    click.echo(f"operation {result['operation_id']}")


@privacy.command("suppress")
@click.argument("ref")
@db_option
@json_option
def privacy_suppress(ref: str, db: Path, as_json: bool) -> None:
    """Drop (and count) new events of the person's identifiers at ingestion."""
    with workspace(db) as ws:
        result = ws.privacy.suppress(ref)
    _json(result) if as_json else click.echo(
        f"suppressed {result['identifiers']} identifiers (operation {result['operation_id']})")


@privacy.command("unsuppress")
@click.argument("ref")
@db_option
@json_option
def privacy_unsuppress(ref: str, db: Path, as_json: bool) -> None:
    """Accept the person's events again."""
    with workspace(db) as ws:
        result = ws.privacy.unsuppress(ref)
    _json(result) if as_json else click.echo(
        f"removed {result['suppressions_removed']} suppressions "
        f"(operation {result['operation_id']})")


@privacy.command("export")
@click.argument("ref")
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write the JSON here instead of standard output.")
@db_option
def privacy_export(ref: str, out_file: Path | None, db: Path) -> None:
    """Everything held on the person, as JSON."""
    with workspace(db) as ws:
        result = ws.privacy.export(ref)
    text = json.dumps(result, default=str, ensure_ascii=False, indent=2)
    if out_file is None:
        click.echo(text)
    else:
        out_file.write_text(text + "\n", encoding="utf-8")
        click.echo(f"wrote {out_file} (operation {result['operation_id']})")


# -- sql -----------------------------------------------------------------------------------
@main.command()
@click.argument("query")
@db_option
@json_option
def sql(query: str, db: Path, as_json: bool) -> None:
    """Run one read-only SQL query on the workspace (tables: events, failed_events, ...)."""
    with workspace(db) as ws:
        rows = ws.read_sql(query)
    _json(rows) if as_json else _table(rows)


# -- settings ------------------------------------------------------------------------------
@main.command()
def contract() -> None:
    """Print the reasons an event can be refused for, with their fixes (docs/contract.md)."""
    from .ingest import contract_markdown

    click.echo(contract_markdown(), nl=False)


@main.command()
@click.option("--markdown", is_flag=True, help="Print the docs/settings.md table.")
def settings(markdown: bool) -> None:
    """List every setting with its environment variable, default and help."""
    if markdown:
        click.echo(settings_markdown(), nl=False)
        return
    _table([{"name": s.name, "env": s.env, "default": repr(s.default), "help": s.help}
            for s in SETTINGS])


# -- demo ----------------------------------------------------------------------------------
@main.group()
def demo() -> None:
    """The car-rental demo story (docs/demo.md)."""


@demo.command("generate")
@click.option("--scale", default=10_000, show_default=True, type=int,
              help="Number of events (10 k to 100 M).")
@click.option("--seed", default=7, show_default=True, type=int)
@click.option("--out", "out_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Write JSON Lines here instead of loading a workspace.")
@db_option
def demo_generate(scale: int, seed: int, out_file: Path | None, db: Path) -> None:
    """Generate the demo events: into a JSON Lines file, or imported into the workspace."""
    from . import demo as demo_data

    if out_file is not None:
        n = demo_data.write_jsonl(out_file, events=scale, seed=seed)
        click.echo(f"wrote {n:,} events to {out_file}")
        return
    with workspace(db) as ws:
        result = load_demo(ws, scale, seed)
    click.echo(f"loaded {result.accepted:,} demo events into {db}")


def load_demo(ws: Workspace, scale: int, seed: int) -> Any:
    """Write the demo to a JSON Lines file beside the workspace and import it (the real path)."""
    from . import demo as demo_data
    from .imports import import_file

    path = ws.path.with_suffix(".demo.jsonl")
    demo_data.write_jsonl(path, events=scale, seed=seed)
    try:
        return import_file(ws, path, source="demo")
    finally:
        path.unlink(missing_ok=True)


@demo.command("serve")
@db_option
@click.option("--scale", default=200_000, show_default=True, type=int)
@click.option("--host", envvar="BOWKNOT_HOST", default="127.0.0.1", show_default=True)
@click.option("--port", envvar="BOWKNOT_PORT", default=8000, show_default=True, type=int)
def demo_serve(db: Path, scale: int, host: str, port: int) -> None:
    """Set up the demo workspace (once), print a sign-in link and serve it."""
    import uvicorn

    from .server import create_app

    db.parent.mkdir(parents=True, exist_ok=True)
    with workspace(db) as ws:
        if not ws.sql("SELECT count(*) AS n FROM events")[0]["n"]:
            click.echo(f"generating the demo story ({scale:,} events) into {db} ...")
            load_demo(ws, scale, 7)
            ws.access.create_source("web")
            click.echo("resolving identities and building profiles ...")
            ws.build()
        token = ws.access.create_token("demo")
        url = f"http://{host}:{port}"
        click.echo("")
        click.echo(f"  bowknot demo is running: {url}/overview")
        click.echo(f"  sign in (once):          {url}/signin?token={token}")
        click.echo(f"  API docs:                {url}/docs")
        click.echo("")
        sys.stdout.flush()
        uvicorn.run(create_app(ws, background_build=True, freeze_gc=True), host=host, port=port,
                    log_level="warning", access_log=False)


# The journey commands (funnel, cohort) and the survey commands live in their own modules;
# importing them registers them.
from . import cli_journeys, cli_surveys  # noqa: E402, F401
