"""Every setting, declared once: name, default, type and help.

The table drives validation, ``bowknot settings``, the generated ``docs/settings.md`` and a test
that fails when a setting is undocumented. Environment variables ``BOWKNOT_<NAME>`` (upper case)
override the defaults; explicit keyword arguments to :func:`bowknot.connect` override both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import SettingError


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str
    type: type = str

    @property
    def env(self) -> str:
        return "BOWKNOT_" + self.name.upper()

    def parse(self, raw: Any) -> Any:
        if isinstance(raw, self.type) and not (self.type is int and isinstance(raw, bool)):
            return raw
        text = str(raw).strip()
        try:
            if self.type is bool:
                if text.lower() in ("1", "true", "yes", "on"):
                    return True
                if text.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            return self.type(text)
        except ValueError:
            raise SettingError(
                f"Setting {self.name} ({self.env}) must be a {self.type.__name__}, got {raw!r}.",
                setting=self.name,
            ) from None


SETTINGS: tuple[Setting, ...] = (
    # Segment's published limits (segment-docs http-api/index.md): 32 KB an event,
    # 500 KB a batch request, 2,500 events a batch.
    Setting("max_event_bytes", 32 * 1024, "Largest accepted event, in bytes.", int),
    Setting(
        "max_request_bytes",
        500 * 1024,
        "Largest accepted HTTP request body (after gzip decoding), in bytes.",
        int,
    ),
    Setting("max_batch_events", 2500, "Most events accepted in one batch request.", int),
    Setting("max_message_id_chars", 100, "Longest accepted messageId.", int),
    # Segment dedupes over ~24 h, RudderStack over 7 days (cdp-anchors.md §1.4, §9); live
    # ingestion compares against this window so a commit never rescans the whole log.
    Setting(
        "dedupe_window_hours",
        168,
        "How far back live ingestion looks for an earlier "
        "event with the same source and messageId (file imports always look at all "
        "events); 0 means no limit.",
        int,
    ),
    Setting(
        "writer_queue_bytes",
        64 * 1024 * 1024,
        "Bytes of requests that may wait for "
        "the single writer before ingestion answers 429 with Retry-After.",
        int,
    ),
    Setting(
        "writer_group_bytes",
        8 * 1024 * 1024,
        "Most request bytes the writer commits in one transaction (group commit).",
        int,
    ),
    Setting(
        "writer_gather_ms",
        4.0,
        "How long the writer waits for more live requests to join a commit once one is "
        "queued (group commit); 0 commits at once.",
        float,
    ),
    Setting(
        "import_chunk_bytes",
        # 128 MB: fewer, larger chunks cost less (20 M events: 121 s at 128 MB vs 146 s at
        # 64 MB, measured when each chunk was also joined against every stored key).
        128 * 1024 * 1024,
        "Bytes of a file read per import chunk; bounds the importer's memory.",
        int,
    ),
    Setting(
        "checkpoint_threshold",
        "256MB",
        "Write-ahead-log size at which DuckDB folds it into the database file (a commit "
        "that crosses it waits for that).",
    ),
    # Segment's suggested blocked values plus PostHog's illegal distinct ids
    # (cdp-anchors.md section 4): QA placeholders that would fuse unrelated people.
    Setting(
        "identity_blocked_values",
        "-1, null, none, nil, undefined, anonymous, guest, id, distinct_id, distinctid, "
        "not_authenticated, email, true, false, 0, nan, [object object], user, unknown",
        "Identifier values (case-insensitive, comma-separated) that never identify anyone.",
    ),
    Setting(
        "identity_blocked_pattern",
        "^[0-]*$",
        "A regular expression: identifier values that fully match it are ignored (Segment's "
        "default catches 0, 000 and -, and blank values).",
    ),
    Setting(
        "identity_id_traits",
        "phone",
        "Traits (comma-separated) that identify a person, besides userId, anonymousId, "
        "email and context.externalIds; phone-like values keep digits and '+'.",
    ),
    Setting(
        "identity_limits",
        "anonymous_id=100, *=5",
        "Most identifiers of one type a person holds (TYPE=N, comma-separated; * for the "
        "rest); user_id is always 1. Later identifiers past a limit become persons of their "
        "own.",
    ),
    Setting(
        "profile_trait_strategies",
        "email=latest_non_empty, name=latest_non_empty, phone=latest_non_empty, "
        "customer_since=first, first_booking_at=first, created_at=first, tags=union, "
        "interests=union",
        "How a trait is merged over a person's events (TRAIT=STRATEGY): latest, first, "
        "latest_non_empty, sum or union.",
    ),
    Setting(
        "profile_default_strategy",
        "latest_non_empty",
        "Strategy for traits not named in profile_trait_strategies.",
    ),
    Setting(
        "booking_event",
        "Booking Completed",
        "The track event that is a booking (a purchase): counted in profiles and lifecycle.",
    ),
    Setting(
        "revenue_property",
        "revenue",
        "The booking property summed as a person's revenue.",
    ),
    Setting(
        "touch_events",
        "Campaign Sent, Campaign Opened, Campaign Clicked",
        "Track events that are marketing touches (their properties name the channel and "
        "campaign_id); visits with UTM parameters (context.campaign) are touches too.",
    ),
    Setting(
        "at_risk_days",
        45,
        "A customer with no activity for this many days before the workspace's latest "
        "activity is at risk (lifecycle stage).",
        int,
    ),
    Setting(
        "public_url",
        "http://127.0.0.1:8000",
        "The address people reach `bowknot serve` at: survey links in messages start with it.",
    ),
    Setting("survey_link_days", 14, "How long a survey invitation link stays valid, in days.",
            int),
    Setting(
        "survey_burst_seconds",
        10,
        "Different scores posted from one survey link within this many seconds are flagged "
        "as a scanner or a double click (the first answer is kept).",
        int,
    ),
    Setting("survey_contact_days", 30, "A triggered survey skips anybody asked by any survey "
            "within this many days.", int),
    Setting("survey_quiet_hours", "21-8", "Local hours (START-END) in which no invitation is "
            "sent; they wait for the end. Empty means none."),
    Setting("survey_trigger_seconds", 60.0, "Survey triggers are evaluated after every build "
            "that brought events, and at least this often otherwise (a 'not B within T' "
            "window closes without new events).", float),
    Setting("survey_default_timezone", "UTC", "Time zone for quiet hours when a person has no "
            "timezone trait."),
    Setting("followup_rule", "nps<=6, csat<=2, ces<=3", "Answers that open a follow-up case "
            "(KIND<=N, comma-separated; empty means none)."),
    Setting("followup_due_hours", 48, "A follow-up case is due this many hours after it "
            "opens.", int),
    Setting("smtp_host", "127.0.0.1", "SMTP server for survey e-mails."),
    Setting("smtp_port", 25, "SMTP server port.", int),
    Setting("smtp_starttls", False, "Use STARTTLS with the SMTP server.", bool),
    Setting("smtp_user", "", "SMTP user name; empty means no login."),
    Setting("smtp_password", "", "SMTP password."),
    Setting("smtp_from", "bowknot <surveys@localhost>", "The From address of survey e-mails."),
    Setting("webhook_url", "", "The company's endpoint that receives survey invitations "
            "(JSON, signed the Standard Webhooks way); empty means no webhook channel."),
    Setting("webhook_secret", "", "Signing secret (whsec_...); empty means one made for the "
            "workspace (`bowknot surveys webhook-secret` prints it)."),
    Setting("webhook_attempts", 5, "Attempts per webhook delivery before it becomes a dead "
            "letter.", int),
    Setting("webhook_backoff_seconds", 1.0, "Wait before the second attempt; it doubles "
            "after each failure.", float),
    Setting("threads", 0, "DuckDB worker threads; 0 means one per core.", int),
    Setting(
        "memory_limit",
        "",
        "DuckDB memory limit such as '8GB'; empty means DuckDB's default (80 % of RAM).",
    ),
    # DuckDB returns freed buffer memory to the system and faults it in again, 4 KB at a time,
    # when the next operator asks (a 20 M-event full build: 1.5 M page faults, ~4 CPU-s of
    # system time); its block allocator keeps it (benchmarks/README.md, Identity builds).
    Setting(
        "block_allocator_memory",
        "auto",
        "Memory DuckDB keeps for its buffers once it has used it, such as '4GB', instead of "
        "returning it to the system and faulting it in again: builds and rewrites spend less "
        "time in the kernel, and the process holds on to what it used, up to this much, until "
        "the workspace closes. 'auto' means half of memory_limit; '0' turns it off.",
    ),
    # A journal rewrite at 100 M events under an 8 GB memory_limit spilled tens of GB beside
    # the workspace, and once filled the disk (benchmarks/README.md, Journeys, tier L).
    Setting(
        "temp_directory",
        "",
        "Directory DuckDB spills to when an operation (a sort, join or aggregate over every "
        "event: a full build, a journal rewrite) outgrows memory_limit; put it on a disk "
        "with room. Made if missing. Empty means DuckDB's default, `<workspace>.tmp` beside "
        "the workspace file.",
    ),
    Setting(
        "max_temp_directory_size",
        "",
        "Most disk space DuckDB may spill to temp_directory, such as '50GB'; past it the "
        "operation stops with an error naming these settings, before the disk is full. "
        "Empty means DuckDB's default (90 % of the free space on temp_directory's disk).",
    ),
    Setting("host", "127.0.0.1", "Address `bowknot serve` listens on."),
    Setting("port", 8000, "Port `bowknot serve` listens on.", int),
    Setting("session_hours", 12, "How long a page sign-in session lasts, in hours.", int),
    Setting(
        "cookie_secure",
        False,
        "Mark the session cookie Secure (set it when serving behind HTTPS).",
        bool,
    ),
    Setting(
        "build_interval_seconds",
        2.0,
        "How often `bowknot serve` brings derived tables up to date.",
        float,
    ),
    Setting(
        "build_max_delay_seconds",
        10.0,
        "While collection is busy, how long `bowknot serve`'s background build may wait for "
        "a pause in the writer's work before it runs anyway (0: never waits).",
        float,
    ),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Settings:
    """Resolved settings: attribute access, validated once."""

    values: Mapping[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    @classmethod
    def resolve(
        cls, overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
    ) -> Settings:
        env = os.environ if env is None else env
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(BY_NAME))
        if unknown:
            raise SettingError(
                f"Unknown setting(s) {', '.join(unknown)}; known settings are listed by "
                "`bowknot settings`.",
                settings=unknown,
            )
        values: dict[str, Any] = {}
        for s in SETTINGS:
            if s.name in overrides:
                values[s.name] = s.parse(overrides[s.name])
            elif s.env in env:
                values[s.name] = s.parse(env[s.env])
            else:
                values[s.name] = s.default
        return cls(values)


def settings_markdown() -> str:
    """The settings table as Markdown (docs/settings.md is this, checked by a test)."""
    lines = [
        "# Settings",
        "",
        "Generated from `bowknot.settings.SETTINGS` (`bowknot settings --markdown`).",
        "Each can be set with its environment variable or as a keyword to `bowknot.connect()`.",
        "",
        "| name | environment variable | default | help |",
        "|---|---|---|---|",
    ]
    for s in SETTINGS:
        lines.append(f"| `{s.name}` | `{s.env}` | `{s.default!r}` | {s.help} |")
    return "\n".join(lines) + "\n"
