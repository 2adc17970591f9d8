"""The public survey pages (``/s/{token}``, no JavaScript, no admin token: the signed link is
the credential), served as a plain ASGI route in front of FastAPI.

These are the server's busiest requests (every answer is a page GET and a POST), and what
FastAPI adds to a request, eight middleware layers, the router, dependency resolution and
``TemplateResponse``, cost more CPU than rendering the page and recording the answer
(issue 6; benchmarks/README.md). Here a request is read, handled and answered with the
rendered page, nothing more: on the event loop when nothing is to be read from the store
(a page whose invitation is in memory; an answer, which waits for its group commit as a
future, not in a thread), else in a worker thread.
Errors keep the API's JSON shape (``app.error_response``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request

from .. import survey_text
from ..errors import PayloadTooLarge, ValidationError
from ..workspace import Workspace
from .pages import templates

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Fields = dict[str, list[str]]

# Pages for people, not for caches or search engines.
HEADERS = {"Cache-Control": "no-store", "X-Robots-Tag": "noindex",
           "Referrer-Policy": "no-referrer",
           "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                      "form-action 'self'; frame-ancestors 'none'"}
_RAW_HEADERS = [(k.lower().encode(), v.encode()) for k, v in
                {**HEADERS, "Content-Type": "text/html; charset=utf-8"}.items()]

# The page's form holds a score, a few reasons and a "why" of at most 5,000 characters
# (percent-encoded: up to 9 bytes each); a body beyond this is not the page's form.
MAX_FORM_BYTES = 64 << 10

# Pages rendered once per survey, state and language (see SurveyPages.page), with these
# stand-ins for a link's own tokens, which are plain: nothing to escape.
_PLAIN = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")
_TOKEN, _CSRF = "bk-token-1f0c9e", "bk-csrf-7d2a41"
_RENDERED_KEPT = 1024

_STATES = {"invalid": ("invalid", 404), "expired": ("expired", 410), "answered": ("used", 200)}

# An answer waits in its thread for the group commit it shares with the others in flight:
# enough threads that the clients' answers meet in one commit (anyio's default is 40).
_THREADS = 64


class SurveyPages:
    """Serves ``GET /s/{token}``, ``POST /s/{token}`` and ``POST /s/{token}/why``."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self._pool: ThreadPoolExecutor | None = None
        self._template = templates.env.get_template("survey.html")
        self._rendered: dict[tuple[Any, ...], str] = {}  # see page()

    def handles(self, scope: Scope) -> bool:
        if scope["type"] != "http":
            return False
        path: str = scope["path"]
        return path.startswith("/s/") and path.count("/") <= 3

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(_THREADS, thread_name_prefix="bowknot-page")
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def __call__(self, scope: Scope, receive: Receive, send: Send,
                       fallback: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        parts = scope["path"][3:].split("/")
        method = scope["method"]
        if len(parts) == 1 and parts[0] and method == "GET":
            query = _query(scope)
            score = query["score"][0] if query.get("score") else None
            lang = _lang(scope, query)
            found = self.ws.surveys.invitation(parts[0], read=False)
            if found[0] == "unread":  # read from the store, in a thread
                status, html = await self._call(self.show, parts[0], score, lang)
            else:
                status, html = self.show(parts[0], score, lang, found)
        elif len(parts) == 1 and parts[0] and method == "POST":
            fields = await _form(scope, receive)
            status, html = await self._answer(parts[0], fields, _lang(scope))
        elif len(parts) == 2 and parts[0] and parts[1] == "why" and method == "POST":
            fields = await _form(scope, receive)
            status, html = await self._call(self.why, parts[0], fields, _lang(scope))
        else:
            return await fallback(scope, receive, send)  # 404 / 405 in the API's shape
        body = html.encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            *_RAW_HEADERS, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, token: str, fields: Fields, lang: tuple[str | None, str | None]
                      ) -> tuple[int, str]:
        """An answer, on the event loop when it can start without waiting (the usual
        case: its page was just shown), while it waits for its group commit; else (the
        link's row to read, a second post to the link, an error to explain) in a thread."""
        surveys = self.ws.surveys
        csrf, score, why = (fields.get(name, [""])[0] for name in ("csrf", "score", "why"))
        if score.strip().isdigit():
            try:
                pending = surveys.start_answer(token, int(score), why, fields.get("reasons"),
                                               csrf)
            except ValidationError:
                pending = None  # the thread's answer explains it
            if pending is not None:
                try:
                    out = await asyncio.wrap_future(pending)
                except ValidationError as exc:
                    refused: tuple[int, str] = await self._call(self.refused, token, exc,
                                                                lang, int(score))
                    return refused
                return self.answered(token, out, lang)
        result: tuple[int, str] = await self._call(self.answer, token, fields, lang)
        return result

    # -- the pages (in a worker thread, or on the loop when nothing is to be read) ---------
    def show(self, token: str, score: str | None, lang: tuple[str | None, str | None],
             found: tuple[str, dict[str, Any] | None] | None = None) -> tuple[int, str]:
        """Show the question; a score from the e-mail is pre-selected. Records nothing.
        ``found``: the link's state and invitation, if already known."""
        state, inv = self.ws.surveys.invitation(token) if found is None else found
        if state in _STATES:
            name, status = _STATES[state]
            return self.page(token, name, inv, lang, status)
        chosen = int(score) if score is not None and score.strip().isdigit() else None
        return self.page(token, "form", inv, lang, chosen=chosen)

    def answer(self, token: str, fields: Fields, lang: tuple[str | None, str | None]
               ) -> tuple[int, str]:
        surveys = self.ws.surveys
        csrf, score, why = (fields.get(name, [""])[0] for name in ("csrf", "score", "why"))
        if not score.strip().isdigit():
            state, inv = surveys.invitation(token)
            if state in ("invalid", "expired"):
                name, status = _STATES[state]
                return self.page(token, name, inv, lang, status)
            t = surveys.texts(surveys.get(inv["survey_id"]), inv["language"]) if inv else {}
            return self.page(token, "form", inv, lang, 400, error=t.get("choose"))
        try:  # one call: the link's state is read once, and the answer is one write
            out = surveys.answer(token, int(score), why, fields.get("reasons"), csrf)
        except ValidationError as exc:
            return self.refused(token, exc, lang, int(score))
        return self.answered(token, out, lang)

    def refused(self, token: str, exc: ValidationError, lang: tuple[str | None, str | None],
                score: int) -> tuple[int, str]:
        """The form again, saying why the answer was refused."""
        state, inv = self.ws.surveys.invitation(token)
        return self.page(token, "form", inv, lang, 400, error=exc.message, chosen=score)

    def answered(self, token: str, out: dict[str, Any], lang: tuple[str | None, str | None]
                 ) -> tuple[int, str]:
        """The page after a post (``out``: what ``Surveys.answer`` returned)."""
        inv = out["invitation"]
        if out["state"] in ("invalid", "expired"):
            name, status = _STATES[out["state"]]
            return self.page(token, name, inv, lang, status)
        if out["state"] == "answered":
            return self.page(token, "used", inv, lang)
        return self.page(token, "thanks", inv, lang, ask_why=not inv["commented"])

    def why(self, token: str, fields: Fields, lang: tuple[str | None, str | None]
            ) -> tuple[int, str]:
        csrf, why = (fields.get(name, [""])[0] for name in ("csrf", "why"))
        try:
            out = self.ws.surveys.comment(token, why, csrf)
        except ValidationError:
            return self.page(token, "invalid", None, lang, 400)
        if out["state"] in ("invalid", "expired"):
            name, status = _STATES[out["state"]]
            return self.page(token, name, out["invitation"], lang, status)
        return self.page(token, "thanks_final", out["invitation"], lang)

    def page(self, token: str, state: str, inv: dict[str, Any] | None,
             lang: tuple[str | None, str | None], status: int = 200, **extra: Any
             ) -> tuple[int, str]:
        """The page in the language asked for (``?lang=``), else the invitation's, else
        the browser's (``lang``: the query's and the Accept-Language header's)."""
        surveys = self.ws.surveys
        wanted, accept = lang
        survey: dict[str, Any] = {"kind": "nps", "language": "en", "translations": {},
                                  "company": None, "scale_min": 0, "scale_max": 10,
                                  "reasons": []}
        if inv is not None:
            survey = surveys.get(inv["survey_id"])
            available = sorted({*survey_text.LANGUAGES, *survey["translations"]})
            language = survey_text.pick_language(wanted or inv["language"], available,
                                                 inv["language"])
        else:
            language = survey_text.pick_language(wanted or accept,
                                                 list(survey_text.LANGUAGES), "en")
        key = None
        if inv is not None and extra.get("error") is None and _PLAIN.match(token):
            # The same page for every link of a survey but for the link's token and CSRF
            # token (plain ASCII, the same escaped or not): rendered once, filled in.
            key = (state, inv["survey_id"], survey["created_at"], language, status,
                   tuple(sorted(extra.items())))
            html = self._rendered.get(key)
            if html is not None:
                return status, html.replace(_TOKEN, token).replace(_CSRF, surveys.csrf(token))
        ctx = {"t": surveys.texts(survey, language), "lang": language,
               "dir": survey_text.direction(language), "state": state, "token": token,
               "csrf": surveys.csrf(token), "low": survey["scale_min"],
               "high": survey["scale_max"], "reasons": survey["reasons"] or [],
               "chosen": None, "error": None, "ask_why": False, **extra}
        if key is None:
            return status, self._template.render(ctx)
        html = self._template.render({**ctx, "token": _TOKEN, "csrf": _CSRF})
        if len(self._rendered) >= _RENDERED_KEPT:
            self._rendered.clear()
        self._rendered[key] = html
        return status, html.replace(_TOKEN, token).replace(_CSRF, ctx["csrf"])


def _query(scope: Scope) -> Fields:
    return parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True,
                    max_num_fields=100)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _lang(scope: Scope, query: Fields | None = None) -> tuple[str | None, str | None]:
    query = _query(scope) if query is None else query
    return (query["lang"][-1] if query.get("lang") else None,
            _header(scope, b"accept-language"))


async def _body(receive: Receive) -> bytes | None:
    """The request body, or None when it exceeds ``MAX_FORM_BYTES``."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _form(scope: Scope, receive: Receive) -> Fields:
    """The posted fields. The page's forms are URL-encoded, parsed here directly; other
    encodings (multipart) go through Starlette's form parser."""
    body = await _body(receive)
    if body is None:
        raise PayloadTooLarge(
            f"The form is larger than {MAX_FORM_BYTES:,} bytes; the survey page sends a "
            "score, reasons and at most 5,000 characters of text.")
    kind = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        try:
            return parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True,
                            max_num_fields=100)
        except ValueError:  # more fields than any page has: not the page's form
            return {}
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(scope, replay).form()
    except Exception:  # not a form at all: no fields, so the page asks for a score
        return {}
    return {key: [v for v in form.getlist(key) if isinstance(v, str)] for key in form}
