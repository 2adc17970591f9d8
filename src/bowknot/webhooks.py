"""Survey invitations to the company's own messaging system: a JSON webhook signed the
Standard Webhooks way (``webhook-id``, ``webhook-timestamp``, ``webhook-signature: v1,<base64
HMAC-SHA256 of "id.timestamp.body">`` with a ``whsec_`` secret), retried with exponential
backoff; what still fails is kept as a dead letter that can be listed and replayed.

Idempotent: one delivery per invitation (its ``webhook-id`` is derived from the invitation,
so the receiver can deduplicate retries too), logged as a ``survey_invited`` event.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

from .errors import NotFound, ValidationError

DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS webhook_deliveries (
        delivery_id VARCHAR, invitation_id VARCHAR, url VARCHAR, payload JSON,
        attempts INTEGER, status VARCHAR, last_error VARCHAR, created_at TIMESTAMP,
        delivered_at TIMESTAMP)""",
)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def secret(ws: Any) -> str:
    """The workspace's signing secret (``whsec_...``): the setting, or one made once."""
    if ws.settings.webhook_secret:
        return str(ws.settings.webhook_secret)
    rows = ws.store.query("SELECT value FROM meta WHERE key = 'webhook_secret'")
    if not rows:
        made = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        ws.store.cursor().execute("INSERT OR IGNORE INTO meta VALUES ('webhook_secret', ?)",
                                  [made]).fetchall()
        rows = ws.store.query("SELECT value FROM meta WHERE key = 'webhook_secret'")
    return str(rows[0]["value"])


def sign(secret_text: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret_text.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def deliver(ws: Any, invitation: dict[str, Any]) -> dict[str, Any]:
    """Send (or re-send, if not yet delivered) the invitation's webhook."""
    url = ws.settings.webhook_url
    if not url:
        raise ValidationError("No webhook_url setting: set BOWKNOT_WEBHOOK_URL to the "
                              "company's endpoint first.")
    delivery_id = f"msg_{invitation['invitation_id']}"
    after = invitation.get("send_after")
    if after is not None and after > _now():
        return {"delivery_id": delivery_id, "status": "waiting", "attempts": 0,
                "send_after": after, "reason": "quiet hours"}
    rows = ws.store.query("SELECT * FROM webhook_deliveries WHERE delivery_id = ?",
                          [delivery_id])
    if rows and rows[0]["status"] == "delivered":
        delivered: dict[str, Any] = rows[0]
        return delivered
    if not rows:
        survey = ws.surveys.get(invitation["survey_id"])
        token = ws.surveys.token(invitation["invitation_id"], invitation["expires_at"])
        payload = {
            "type": "survey.invitation", "invitation_id": invitation["invitation_id"],
            "survey_id": invitation["survey_id"], "kind": survey["kind"],
            "person_id": invitation["person_id"], "user_id": invitation["user_id"],
            "email": invitation["email"], "language": invitation["language"],
            "trigger": invitation["trigger"], "link": ws.surveys.link(token),
            "score_links": {str(n): ws.surveys.link(token, n)
                            for n in range(survey["scale_min"], survey["scale_max"] + 1)},
            "texts": {k: v for k, v in ws.surveys.texts(survey, invitation["language"]).items()
                      if k in ("question", "low", "high", "email_subject", "email_intro")},
            "expires_at": invitation["expires_at"].isoformat() + "Z"}
        ws.store.cursor().execute(
            "INSERT INTO webhook_deliveries VALUES (?, ?, ?, ?, 0, 'pending', NULL, ?, NULL)",
            [delivery_id, invitation["invitation_id"], url,
             json.dumps(payload, ensure_ascii=False), _now()]).fetchall()
    return _attempt(ws, delivery_id, invitation)


def _attempt(ws: Any, delivery_id: str, invitation: dict[str, Any]) -> dict[str, Any]:
    row = ws.store.query("SELECT * FROM webhook_deliveries WHERE delivery_id = ?",
                         [delivery_id])[0]
    body = row["payload"].encode()
    key = secret(ws)
    attempts, error = int(row["attempts"]), None
    for n in range(ws.settings.webhook_attempts):
        if n:
            time.sleep(ws.settings.webhook_backoff_seconds * 2 ** (n - 1))
        attempts += 1
        stamp = int(time.time())
        request = urllib.request.Request(row["url"], data=body, method="POST", headers={
            "content-type": "application/json", "webhook-id": delivery_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign(key, delivery_id, stamp, body)})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                if 200 <= response.status < 300:
                    error = None
                    break
                error = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            error = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
    status = "delivered" if error is None else "dead"
    ws.store.cursor().execute(
        """UPDATE webhook_deliveries SET attempts = ?, status = ?, last_error = ?,
           delivered_at = CASE WHEN ? THEN ? END WHERE delivery_id = ?""",
        [attempts, status, error, error is None, _now(), delivery_id]).fetchall()
    if error is None:
        ws.surveys.record(invitation, "survey_invited",
                         f"survey-sent-{invitation['invitation_id']}",
                         {"survey_id": invitation["survey_id"], "channel": "webhook",
                          "invitation_id": invitation["invitation_id"],
                          "trigger": invitation["trigger"]})
    out: dict[str, Any] = ws.store.query(
        "SELECT * FROM webhook_deliveries WHERE delivery_id = ?", [delivery_id])[0]
    return out


def dead_letters(ws: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = ws.store.query(
        "SELECT * FROM webhook_deliveries WHERE status = 'dead' ORDER BY created_at")
    return rows


def replay(ws: Any, delivery_id: str) -> dict[str, Any]:
    """Try a dead letter again (after the receiver is fixed)."""
    rows = ws.store.query("SELECT invitation_id, status FROM webhook_deliveries "
                          "WHERE delivery_id = ?", [delivery_id])
    if not rows:
        raise NotFound(f"No webhook delivery {delivery_id!r}; `bowknot surveys dead-letters` "
                       "lists the failed ones.", delivery_id=delivery_id)
    inv = ws.store.query("SELECT * FROM survey_invitations WHERE invitation_id = ?",
                         [rows[0]["invitation_id"]])[0]
    if rows[0]["status"] == "delivered":
        done: dict[str, Any] = ws.store.query(
            "SELECT * FROM webhook_deliveries WHERE delivery_id = ?", [delivery_id])[0]
        return done
    return _attempt(ws, delivery_id, inv)
