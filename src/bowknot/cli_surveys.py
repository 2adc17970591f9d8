"""The ``bowknot surveys`` commands (registered on the main command group)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .cli import _json, _table, db_option, json_option, main, workspace
from .workspace import Workspace


# -- surveys ---------------------------------------------------------------------------------
@main.group()
def surveys() -> None:
    """Surveys: NPS, CSAT, CES and custom scales, signed links, answers on the timeline."""


@surveys.command("create")
@click.argument("survey_id")
@click.option("--kind", type=click.Choice(["nps", "csat", "ces"]), default="nps",
              show_default=True)
@click.option("--company", default=None, help="Replaces {company} in the texts.")
@click.option("--language", default="en", show_default=True, help="Default language.")
@click.option("--reason", "reasons", multiple=True, help="A reason choice (repeatable).")
@db_option
@json_option
def surveys_create(survey_id: str, kind: str, company: str | None, language: str,
                   reasons: tuple[str, ...], db: Path, as_json: bool) -> None:
    """Create (or replace) survey SURVEY_ID."""
    with workspace(db) as ws:
        survey = ws.surveys.create(survey_id, kind=kind, company=company, language=language,
                                   reasons=list(reasons))
    _json(survey) if as_json else click.echo(f"survey {survey_id} ({kind}) ready")


@surveys.command("list")
@db_option
@json_option
def surveys_list(db: Path, as_json: bool) -> None:
    """Surveys with their invitations and answers."""
    with workspace(db) as ws:
        rows = ws.surveys.all()
    _json(rows) if as_json else _table(rows)


@surveys.command("invite")
@click.argument("survey_id")
@click.argument("person")
@click.option("--trigger", default="manual", show_default=True,
              help="One invitation per person, survey and trigger.")
@click.option("--email", "by_email", is_flag=True, help="Send it over SMTP (smtp_* settings).")
@click.option("--webhook", "by_webhook", is_flag=True,
              help="Send it to webhook_url (signed, retried; failures become dead letters).")
@click.option("--language", default=None, help="Override the person's language.")
@db_option
@json_option
def surveys_invite(survey_id: str, person: str, trigger: str, by_email: bool,
                   by_webhook: bool, language: str | None, db: Path, as_json: bool) -> None:
    """Invite PERSON (id, TYPE:VALUE or identifier): print the signed link, or send it."""
    from . import mailer, webhooks

    channel = "email" if by_email else "webhook" if by_webhook else "link"
    with workspace(db) as ws:
        inv = ws.surveys.invite(survey_id, person, trigger=trigger, channel=channel,
                                language=language)
        if by_email:
            inv["delivery"] = mailer.send_invitation(ws, inv)
        elif by_webhook:
            inv["delivery"] = webhooks.deliver(ws, inv)
    if as_json:
        _json(inv)
    else:
        click.echo(inv["link"])
        if by_email:
            click.echo("e-mailed" if inv["delivery"]["sent"] else "already e-mailed before")
        elif by_webhook:
            click.echo(f"webhook {inv['delivery']['status']} after "
                       f"{inv['delivery']['attempts']} attempt(s)")


@surveys.command("send")
@click.argument("survey_id")
@click.option("--cohort", required=True, help="A saved cohort (`bowknot cohort list`).")
@click.option("--channel", type=click.Choice(["link", "email", "webhook"]), default="email",
              show_default=True)
@click.option("--trigger", default=None, help="Defaults to cohort:NAME.")
@db_option
@json_option
def surveys_send(survey_id: str, cohort: str, channel: str, trigger: str | None, db: Path,
                 as_json: bool) -> None:
    """Invite a saved cohort under the contact rules, then deliver what is due now."""
    with workspace(db) as ws:
        out = ws.surveys.invite_cohort(survey_id, cohort, trigger=trigger, channel=channel)
        out["delivered"] = _deliver_due(ws, survey_id)
    if as_json:
        _json(out)
    else:
        _table([out])


@surveys.command("send-due")
@click.option("--survey", "survey_id", default=None, help="Only this survey.")
@db_option
def surveys_send_due(survey_id: str | None, db: Path) -> None:
    """Deliver invitations whose quiet hours are over (run it from a scheduler)."""
    with workspace(db) as ws:
        n = _deliver_due(ws, survey_id)
    click.echo(f"delivered {n} invitation(s)")


def _deliver_due(ws: Workspace, survey_id: str | None) -> int:
    from . import mailer, webhooks

    sent = 0
    for inv in ws.surveys.due(survey_id):  # one message each: I/O, not a data loop
        if inv["channel"] == "email" and inv["email"]:
            sent += bool(mailer.send_invitation(ws, inv)["sent"])
        elif inv["channel"] == "webhook":
            sent += webhooks.deliver(ws, inv)["status"] == "delivered"
    return sent


@surveys.command("impact")
@click.argument("campaign_id")
@click.option("--within-days", default=3.0, show_default=True, type=float,
              help="A click converts when a booking follows within this many days.")
@click.option("--survey", "survey_id", default=None, help="Only this survey's answers.")
@db_option
@json_option
def surveys_impact(campaign_id: str, within_days: float, survey_id: str | None, db: Path,
                   as_json: bool) -> None:
    """The experience impact of CAMPAIGN_ID: NPS of converters, clickers who did not convert,
    those who ignored it and those it was not sent to, with their main reasons."""
    from .surveys import campaign_impact

    with workspace(db) as ws:
        out = campaign_impact(ws, campaign_id, within_days=within_days, survey_id=survey_id)
    if as_json:
        _json(out)
        return
    _table([{"group": g["group"], "persons": g["persons"], "answers": g["answers"],
             "NPS": g["nps"], "95 % interval": f"{g['nps_low']} … {g['nps_high']}",
             "main reasons": "; ".join(t["why"] for t in g["themes"][:3])}
            for g in out["groups"]], title=f"experience impact of {campaign_id}")


# -- triggers --------------------------------------------------------------------------------
@surveys.group("trigger")
def surveys_trigger() -> None:
    """Triggers: send a survey to whoever matches a rule over the journey, evaluated after
    every build (`bowknot build`, or in the background under `bowknot serve`)."""


_TRIGGER_COLUMNS = ("name", "survey_id", "describe", "channel", "active", "evaluated_at",
                    "invited", "holdout", "last_error")


@surveys_trigger.command("add")
@click.argument("survey_id")
@click.argument("name")
@click.option("--event", default=None, metavar="STEP",
              help="Did A: an event with optional filters, e.g. 'Ticket Closed[topic=pickup]'.")
@click.option("--did", default=None, metavar="STEP", help="Did A ... (with --did-not, --within).")
@click.option("--did-not", default=None, metavar="STEP", help="... but not B ...")
@click.option("--within", default=None, help="... within T after the first A: 48h, 3d, 2w.")
@click.option("--cohort", default=None, help="The rule of a saved cohort (`bowknot cohort list`).")
@click.option("--channel", type=click.Choice(["link", "email", "webhook"]), default="email",
              show_default=True, help="How its invitations are delivered (`surveys send-due`).")
@click.option("--since", default=None,
              help="Only A events from this date/time on (default: the whole history).")
@db_option
@json_option
def trigger_add(survey_id: str, name: str, event: str | None, did: str | None,
                did_not: str | None, within: str | None, cohort: str | None, channel: str,
                since: str | None, db: Path, as_json: bool) -> None:
    """Add trigger NAME sending SURVEY_ID; one invitation per person, survey and trigger."""
    with workspace(db) as ws:
        trigger = ws.surveys.add_trigger(survey_id, name, event=event, did=did,
                                         did_not=did_not, within=within, cohort=cohort,
                                         channel=channel, since=since)
    if as_json:
        _json(trigger)
    else:
        click.echo(f"trigger {name}: {trigger['describe']} -> {survey_id} by {channel}")


@surveys_trigger.command("list")
@click.option("--survey", "survey_id", default=None, help="Only this survey's triggers.")
@db_option
@json_option
def trigger_list(survey_id: str | None, db: Path, as_json: bool) -> None:
    """Triggers, with what they invited so far and when they were last evaluated."""
    with workspace(db) as ws:
        rows = ws.surveys.triggers.list(survey_id)
    _json(rows) if as_json else _table([{k: r[k] for k in _TRIGGER_COLUMNS} for r in rows])


def _trigger_command(action: str, done: str, doc: str) -> None:
    """``bowknot surveys trigger ACTION NAME`` for pause, resume and remove."""

    @surveys_trigger.command(action, help=doc)
    @click.argument("name")
    @db_option
    def command(name: str, db: Path) -> None:
        with workspace(db) as ws:
            getattr(ws.surveys.triggers, action)(name)
        click.echo(f"trigger {name} {done}")


for _action, _done, _doc in (
        ("pause", "paused", "Stop evaluating NAME (resume evaluates what arrived meanwhile)."),
        ("resume", "resumed", "Evaluate NAME again from where it stopped."),
        ("remove", "removed", "Delete NAME (the invitations it made stay).")):
    _trigger_command(_action, _done, _doc)


@surveys_trigger.command("evaluate")
@click.argument("name", required=False)
@click.option("--full", is_flag=True, help="Evaluate over all events, not from the watermark.")
@db_option
@json_option
def trigger_evaluate(name: str | None, full: bool, db: Path, as_json: bool) -> None:
    """Evaluate NAME (or every active trigger) now; builds do this by themselves."""
    with workspace(db) as ws:
        rows = ([ws.surveys.triggers.evaluate(name, full=full)] if name
                else ws.surveys.triggers.evaluate_all(full=full))
    _json(rows) if as_json else _table(rows)


@surveys.command("dead-letters")
@db_option
@json_option
def surveys_dead_letters(db: Path, as_json: bool) -> None:
    """Webhook deliveries that failed every attempt (replay them with `surveys replay`)."""
    from . import webhooks

    with workspace(db) as ws:
        rows = webhooks.dead_letters(ws)
    _json(rows) if as_json else _table([{k: r[k] for k in (
        "delivery_id", "url", "attempts", "last_error", "created_at")} for r in rows])


@surveys.command("replay")
@click.argument("delivery_id")
@db_option
def surveys_replay(delivery_id: str, db: Path) -> None:
    """Try dead letter DELIVERY_ID again."""
    from . import webhooks

    with workspace(db) as ws:
        out = webhooks.replay(ws, delivery_id)
    click.echo(f"{delivery_id}: {out['status']} ({out['attempts']} attempts in all)")


@surveys.command("export")
@click.argument("survey_id")
@click.option("--out", "out_file", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="CSV file to write.")
@db_option
def surveys_export(survey_id: str, out_file: Path, db: Path) -> None:
    """Open invitations of SURVEY_ID as a CSV (person, e-mail, language, link) for manual
    upload to another tool."""
    import csv

    with workspace(db) as ws:
        rows = ws.surveys.open_invitations(survey_id)
    with out_file.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["invitation_id", "person_id", "user_id", "email",
                                               "language", "trigger", "link", "expires_at"])
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r[k] for k in writer.fieldnames})
    click.echo(f"wrote {len(rows)} invitation(s) to {out_file}")


@surveys.command("report")
@click.argument("survey_id")
@click.option("--by", default=None, metavar="GROUP",
              help="day, week, month, touchpoint (last campaign and channel before the "
                   "answer), lifecycle, or cohort:NAME (a saved cohort).")
@click.option("--within", default="7d", show_default=True,
              help="--by touchpoint: how long before the answer a touch counts.")
@db_option
@json_option
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV (the rows of --by, else the "
                                                    "score distribution).")
def surveys_report(survey_id: str, by: str | None, within: str, db: Path, as_json: bool,
                   as_csv: bool) -> None:
    """Answers of SURVEY_ID: NPS with its 95 % adjusted-Wald interval (CSAT, CES: mean with
    its interval and the share of the top two scores), overall or by a group."""
    if as_json and as_csv:
        raise click.UsageError("Choose one of --json and --csv.")
    with workspace(db) as ws:
        report = ws.surveys.report(survey_id, by, within=within)
    distribution = [{"score": k, "answers": v} for k, v in sorted(report["distribution"].items())]
    if as_json:
        _json(report)
        return
    if as_csv:
        _csv(report["rows"] if by else distribution)
        return
    keys = ("survey_id", "kind", "answers", "nps", "nps_low", "nps_high", "mean", "mean_low",
            "mean_high", "top2")
    head: dict[str, Any] = {k: report[k] for k in keys if k in report}
    _table([head])
    if by:
        _table(report["rows"], title=f"{survey_id} by {by}")
    else:
        _table(distribution)


def _csv(rows: list[dict[str, Any]]) -> None:
    import csv
    import sys

    writer = csv.writer(sys.stdout, lineterminator="\n")
    if rows:
        writer.writerow(rows[0].keys())
    for row in rows:
        writer.writerow(["" if v is None else v for v in row.values()])


@surveys.command("verbatims")
@click.argument("survey_id")
@click.option("--limit", default=20, show_default=True, help="How many answers (newest first).")
@click.option("--journey", default=5, show_default=True,
              help="How many of the person's events before each answer.")
@db_option
@json_option
def surveys_verbatims(survey_id: str, limit: int, journey: int, db: Path,
                      as_json: bool) -> None:
    """The latest answers of SURVEY_ID with a "why", with the journey that led to each."""
    with workspace(db) as ws:
        rows = ws.surveys.verbatims(survey_id, limit=limit, journey=journey)
    if as_json:
        _json(rows)
        return
    _table([{"answered_at": r["answered_at"], "score": r["score"], "why": r["why"],
             "journey": " → ".join(j["step"] + (f" ({j['campaign']})" if j["campaign"] else "")
                                   for j in r["journey"])} for r in rows],
           title=f"{survey_id}: what people said, and what came before")


@main.group()
def cases() -> None:
    """Follow-up cases opened by detractors' answers (setting followup_rule)."""


@cases.command("list")
@click.option("--status", type=click.Choice(["open", "closed", "all"]), default="open",
              show_default=True)
@click.option("--person", default=None, help="Only this person (id or identifier).")
@db_option
@json_option
def cases_list(status: str, person: str | None, db: Path, as_json: bool) -> None:
    """Cases by due date; overdue ones are marked."""
    with workspace(db) as ws:
        rows = ws.cases.list(None if status == "all" else status, person)
    _json(rows) if as_json else _table(rows)


@cases.command("show")
@click.argument("case_id")
@db_option
def cases_show(case_id: str, db: Path) -> None:
    """A case with its notes."""
    with workspace(db) as ws:
        _json(ws.cases.get(case_id))


@cases.command("assign")
@click.argument("case_id")
@click.argument("owner")
@db_option
def cases_assign(case_id: str, owner: str, db: Path) -> None:
    """Give CASE_ID to OWNER."""
    with workspace(db) as ws:
        ws.cases.assign(case_id, owner)
    click.echo(f"{case_id} assigned to {owner}")


@cases.command("note")
@click.argument("case_id")
@click.argument("text")
@click.option("--author", default=None)
@db_option
def cases_note(case_id: str, text: str, author: str | None, db: Path) -> None:
    """Add a note to CASE_ID (it shows on the person's timeline)."""
    with workspace(db) as ws:
        ws.cases.note(case_id, text, author)
    click.echo(f"note added to {case_id}")


@cases.command("close")
@click.argument("case_id")
@click.option("--resolution", default="", help="What was done.")
@db_option
def cases_close(case_id: str, resolution: str, db: Path) -> None:
    """Close CASE_ID (a case_closed event with the time it took)."""
    with workspace(db) as ws:
        case = ws.cases.close(case_id, resolution)
    click.echo(f"{case_id} closed ({'on time' if case['closed_at'] <= case['due_at'] else 'late'})")


@cases.command("metrics")
@db_option
def cases_metrics(db: Path) -> None:
    """Time to follow up, and the NPS of answers given after a follow-up."""
    with workspace(db) as ws:
        _json(ws.cases.metrics())
