"""What analyses are asked: steps (an event with property filters) and durations.

A step is written ``EVENT`` or ``EVENT[KEY=VALUE,KEY=VALUE]``, e.g.
``Campaign Clicked[campaign_id=free-day-downtown]``; ``KEY=A|B`` matches either value.
Property values are compared as text. Durations are ``90s``, ``30m``, ``48h``, ``3d``, ``2w``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ..errors import ValidationError

if TYPE_CHECKING:
    import ibis.expr.types as ir

    from .engine import Engine

KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,99}$")
_STEP = re.compile(r"^(?P<event>[^\[\]]+?)\s*(?:\[(?P<where>[^\[\]]*)\])?$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True)
class Step:
    """An event, optionally narrowed by property values (``where``: key -> allowed values)."""

    event: str
    where: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())

    @classmethod
    def of(cls, spec: str | Step | Mapping[str, Any]) -> Step:
        """A step from its text form, a mapping ``{"event", "where"}``, or a Step."""
        if isinstance(spec, Step):
            return spec
        if isinstance(spec, Mapping):
            event = spec.get("event")
            if not isinstance(event, str) or not event.strip():
                raise ValidationError(
                    f"A step needs an 'event' name, got {dict(spec)!r}; e.g. "
                    "{'event': 'Booking Completed', 'where': {'location_id': 'loc-ams-01'}}.",
                    code="invalid_step")
            return cls.build(event, spec.get("where") or {})
        if not isinstance(spec, str) or not spec.strip():
            raise ValidationError(
                f"A step must be an event name such as 'Booking Completed', got {spec!r}.",
                code="invalid_step")
        m = _STEP.match(spec.strip())
        if not m:
            raise ValidationError(
                f"The step {spec!r} does not parse; write EVENT or EVENT[KEY=VALUE,...], e.g. "
                "'Campaign Clicked[campaign_id=summer-weekend]'.", code="invalid_step")
        where: dict[str, list[str]] = {}
        for part in filter(None, (p.strip() for p in (m.group("where") or "").split(","))):
            key, eq, value = part.partition("=")
            if not eq:
                raise ValidationError(
                    f"The filter {part!r} in step {spec!r} needs KEY=VALUE (KEY=A|B for "
                    "either value).", code="invalid_step")
            where.setdefault(key.strip(), []).extend(v.strip() for v in value.split("|"))
        return cls.build(m.group("event").strip(), where)

    @classmethod
    def build(cls, event: str, where: Mapping[str, Any]) -> Step:
        pairs = []
        for key, value in where.items():
            if not isinstance(key, str) or not KEY.match(key):
                raise ValidationError(
                    f"The property name {key!r} is not allowed in a filter; use letters, "
                    "digits, '_', '-' and '.' (for nested keys).", code="invalid_step")
            values = value if isinstance(value, list | tuple | set) else [value]
            if not values:
                raise ValidationError(f"The filter on {key!r} lists no values.",
                                      code="invalid_step")
            pairs.append((key, tuple(_text(v) for v in values)))
        return cls(event.strip(), tuple(sorted(pairs)))

    def predicate(self, engine: Engine, events: ir.Table) -> ir.BooleanValue:
        """Whether an event of ``events`` is this step."""
        cond: ir.BooleanValue = events.event == self.event
        for key, values in self.where:
            value = engine.json_text(events.properties, "$." + key)
            cond = cond & value.isin(list(values))
        return cond

    def sql(self) -> tuple[str, list[Any]]:
        """The same predicate as DuckDB SQL over the raw columns of ``events`` (``type``,
        ``event``, ``name``, ``properties``), with its parameters: for the set-based fast
        paths (survey triggers) that filter events before joining them to persons."""
        kind, _, page = self.event.partition(":")
        params: list[Any] = []
        if kind in ("page", "screen") and page:
            cond = "(type = ? AND name = ?)"
            params += [kind, page]
        elif self.event in ("identify", "page", "screen", "group", "alias"):
            # An unnamed page or screen is labelled by its type; a named one is not.
            cond = "(type = ? AND (type NOT IN ('page', 'screen') OR name IS NULL))"
            params.append(self.event)
        else:
            cond = "(type = 'track' AND event = ?)"
            params.append(self.event)
        for key, values in self.where:
            marks = ", ".join("?" for _ in values)
            cond += f" AND json_extract_string(properties, ?) IN ({marks})"
            params += ["$." + key, *values]
        return cond, params

    def __str__(self) -> str:
        if not self.where:
            return self.event
        parts = ",".join(f"{k}={'|'.join(v)}" for k, v in self.where)
        return f"{self.event}[{parts}]"

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.event, "where": {k: list(v) for k, v in self.where}}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None or isinstance(value, dict | list):
        raise ValidationError(f"A filter value must be text or a number, got {value!r}.",
                              code="invalid_step")
    return str(value)


def steps_of(specs: Sequence[str | Step | Mapping[str, Any]], *, least: int = 1,
             what: str = "steps") -> list[Step]:
    if isinstance(specs, str) or not isinstance(specs, Sequence):
        raise ValidationError(f"Give the {what} as a list, e.g. ['Campaign Clicked', "
                              "'Booking Completed'].", code="invalid_step")
    steps = [Step.of(s) for s in specs]
    if len(steps) < least:
        raise ValidationError(f"Give at least {least} {what} (got {len(steps)}).",
                              code="invalid_step")
    return steps


def seconds(value: str | int | float | timedelta, *, what: str = "within") -> int:
    """A duration in whole seconds from ``48h``/``3d``/... , seconds, or a timedelta."""
    if isinstance(value, timedelta):
        total = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        total = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value.lower())):
        total = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValidationError(
            f"{what}={value!r} is not a duration; write e.g. '90s', '30m', '48h', '3d' or "
            "'2w' (or give seconds).", code="invalid_duration")
    if total <= 0:
        raise ValidationError(f"{what}={value!r} must be longer than zero.",
                              code="invalid_duration")
    return int(total)
