"""Survey invitations by e-mail over SMTP: plain text and HTML, the score buttons in the mail.

Sending is idempotent per invitation: an invitation already sent is not sent again (unless
``force``), and the send is logged as a ``survey_invited`` event on the person's timeline
(messageId derived from the invitation, so a retry is a no-op).
"""

from __future__ import annotations

import html
import smtplib
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

from . import survey_text
from .errors import DeliveryFailed, ValidationError


def compose(ws: Any, invitation: dict[str, Any]) -> EmailMessage:
    survey = ws.surveys.get(invitation["survey_id"])
    lang = invitation["language"]
    t = ws.surveys.texts(survey, lang)
    rtl = survey_text.direction(lang) == "rtl"
    low, high = survey["scale_min"], survey["scale_max"]
    token = ws.surveys.token(invitation["invitation_id"], invitation["expires_at"])
    links = [(n, ws.surveys.link(token, n)) for n in range(low, high + 1)]
    msg = EmailMessage()
    msg["Subject"] = t["email_subject"]
    msg["From"] = ws.settings.smtp_from
    msg["To"] = invitation["email"]
    msg["Message-ID"] = make_msgid(idstring=invitation["invitation_id"])
    plain = [t["question"], "", t["email_intro"], ""]
    plain += [f"  {n}: {url}" for n, url in links]
    plain += ["", f"{low} = {t['low']}, {high} = {t['high']}", "", t["email_footer"]]
    msg.set_content("\n".join(plain))
    buttons = "".join(
        f'<td style="padding:2px"><a href="{html.escape(url)}" style="display:inline-block;'
        'min-width:28px;padding:8px 6px;border:1px solid #2857c5;border-radius:4px;'
        f'color:#2857c5;text-decoration:none;text-align:center;font-weight:bold">{n}</a></td>'
        for n, url in links)
    direction = "rtl" if rtl else "ltr"
    fonts = "system-ui,'Noto Sans','Noto Sans Arabic','Noto Sans Thai',sans-serif"
    body = f"""<!doctype html><html lang="{lang}" dir="{direction}"><body
style="font-family:{fonts};color:#1d2330">
<p style="font-size:17px">{html.escape(t['question'])}</p>
<p>{html.escape(t['email_intro'])}</p>
<table role="presentation" dir="{direction}"><tr>{buttons}</tr></table>
<p style="color:#5b6475;font-size:13px">{low} = {html.escape(t['low'])} &middot;
{high} = {html.escape(t['high'])}</p>
<p style="color:#5b6475;font-size:12px">{html.escape(t['email_footer'])}</p>
</body></html>"""
    msg.add_alternative(body, subtype="html")
    return msg


def send_invitation(ws: Any, invitation: dict[str, Any], force: bool = False) -> dict[str, Any]:
    """Send one invitation by e-mail; returns {sent: bool, reason}."""
    if not invitation.get("email"):
        raise ValidationError(
            "This person has no e-mail address; invite them through another channel "
            "(a webhook or an export file).", invitation_id=invitation["invitation_id"])
    rows = ws.store.query("""SELECT sent_at, send_after FROM survey_invitations
                             WHERE invitation_id = ?""", [invitation["invitation_id"]])
    if rows and rows[0]["sent_at"] is not None and not force:
        return {"sent": False, "reason": "already sent", "sent_at": rows[0]["sent_at"]}
    now = datetime.now(UTC).replace(tzinfo=None)
    if rows and rows[0]["send_after"] is not None and rows[0]["send_after"] > now and not force:
        return {"sent": False, "reason": "quiet hours", "send_after": rows[0]["send_after"]}
    msg = compose(ws, invitation)
    s = ws.settings
    try:
        with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=30) as smtp:
            if s.smtp_starttls:
                smtp.starttls()
            if s.smtp_user:
                smtp.login(s.smtp_user, s.smtp_password)
            smtp.send_message(msg)
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryFailed(
            f"The SMTP server {s.smtp_host}:{s.smtp_port} did not take the message ({exc}); "
            "check the smtp_* settings. Nothing was marked as sent, so it is safe to retry.",
            host=s.smtp_host, port=s.smtp_port) from exc
    now = datetime.now(UTC).replace(tzinfo=None)
    ws.store.cursor().execute(
        "UPDATE survey_invitations SET sent_at = ? WHERE invitation_id = ?",
        [now, invitation["invitation_id"]]).fetchall()
    ws.surveys.record(invitation, "survey_invited", f"survey-sent-{invitation['invitation_id']}",
                     {"survey_id": invitation["survey_id"], "channel": "email",
                      "invitation_id": invitation["invitation_id"],
                      "trigger": invitation["trigger"]})
    return {"sent": True, "message_id": msg["Message-ID"], "to": invitation["email"]}
