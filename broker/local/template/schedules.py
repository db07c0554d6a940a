"""EventBridge schedule expressions: parse them, and say when they fire next.

This module owns time: :func:`parse_schedule_expression` reads ``rate(...)``, ``cron(...)`` and
``at(...)`` as EventBridge does (and refuses what it refuses), giving a
:class:`ScheduleExpression`; :class:`CronExpression` holds a cron's six fields as sets of allowed
values and computes the next firing minute in the schedule's time zone. Cron's ``L``, ``W`` and
``#`` are accepted but not emulated (a warning says so). It knows nothing about templates or
functions: :mod:`broker.local.template.functions` reads the ``Schedule``/``ScheduleV2`` events
that carry these expressions, and :mod:`broker.local.scheduler` runs them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from broker.local.template.model import TemplateError

__all__ = ["CronExpression", "ScheduleExpression", "parse_schedule_expression"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CronExpression:
    """The six fields of an EventBridge ``cron(...)`` expression, each as its allowed values.

    Fields are minutes, hours, day-of-month, month, day-of-week (``1`` = Sunday … ``7`` =
    Saturday, as EventBridge counts) and year. ``None`` for a day field is its ``?``: no
    constraint. ``approximate`` says a field used ``L``, ``W`` or ``#``, which are not emulated:
    that field allows every value (a warning is logged when it is parsed).
    """

    minutes: frozenset[int]
    hours: frozenset[int]
    days_of_month: frozenset[int] | None
    months: frozenset[int]
    days_of_week: frozenset[int] | None
    years: frozenset[int]
    approximate: bool = False

    def matches(self, moment: datetime) -> bool:
        """Whether the schedule fires in the minute of ``moment`` (wall time of its zone)."""
        return (
            moment.year in self.years
            and moment.month in self.months
            and self._day_matches(moment)
            and moment.hour in self.hours
            and moment.minute in self.minutes
        )

    def next_after(self, moment: datetime) -> datetime | None:
        """The first firing minute strictly after ``moment`` (same zone), or ``None`` if never.

        Walks forward a year, month, day, hour or minute at a time, whichever field fails
        first: a few thousand steps at most, even for a once-a-leap-day expression.
        """
        t = moment.replace(second=0, microsecond=0) + timedelta(minutes=1)
        last_year = max(self.years)
        while t.year <= last_year:
            if t.year not in self.years:
                t = t.replace(year=t.year + 1, month=1, day=1, hour=0, minute=0)
            elif t.month not in self.months:
                first = t.replace(day=1, hour=0, minute=0)
                t = (first + timedelta(days=32)).replace(day=1)
            elif not self._day_matches(t):
                t = t.replace(hour=0, minute=0) + timedelta(days=1)
            elif t.hour not in self.hours:
                t = t.replace(minute=0) + timedelta(hours=1)
            elif t.minute not in self.minutes:
                t += timedelta(minutes=1)
            else:
                return t
        return None

    def _day_matches(self, moment: datetime) -> bool:
        if self.days_of_month is not None and moment.day not in self.days_of_month:
            return False
        # datetime: Monday = 0 … Sunday = 6; EventBridge: Sunday = 1 … Saturday = 7.
        weekday = (moment.weekday() + 1) % 7 + 1
        return self.days_of_week is None or weekday in self.days_of_week


@dataclass(frozen=True)
class ScheduleExpression:
    """A parsed EventBridge schedule expression.

    ``rate``: every ``period_s`` seconds; ``cron``: at the minutes ``cron`` allows, in
    ``timezone``; ``at`` (EventBridge Scheduler only): once, at ``at``.
    """

    text: str
    kind: Literal["rate", "cron", "at"]
    period_s: float | None = None
    cron: CronExpression | None = None
    at: datetime | None = None
    timezone: str = "UTC"

    def next_after(self, moment: datetime) -> datetime | None:
        """When the schedule fires next after ``moment`` (aware, UTC); ``None``: never again.

        A rate counts from ``moment`` (the previous firing), as EventBridge counts from the
        rule's creation.
        """
        if self.kind == "rate":
            assert self.period_s is not None  # noqa: S101 - set for every rate
            return moment + timedelta(seconds=self.period_s)
        if self.kind == "at":
            assert self.at is not None  # noqa: S101 - set for every at()
            return self.at if self.at > moment else None
        assert self.cron is not None  # noqa: S101 - set for every cron()
        zone = ZoneInfo(self.timezone)
        found = self.cron.next_after(moment.astimezone(zone))
        return found.astimezone(UTC) if found is not None else None


_RATE: Final = re.compile(r"^rate\(\s*(\d+)\s+(minute|minutes|hour|hours|day|days)\s*\)$")
_CRON: Final = re.compile(r"^cron\((.*)\)$")
_AT: Final = re.compile(r"^at\((\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\)$")
_RATE_UNIT_S: Final = {"minute": 60, "hour": 3600, "day": 86400}
_MONTHS: Final = {
    name: number
    for number, name in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1
    )
}
_WEEKDAYS: Final = {
    name: number for number, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"), 1)
}
# (low, high, names) of the six cron fields, in order.
_CRON_FIELDS: Final[tuple[tuple[str, int, int, Mapping[str, int]], ...]] = (
    ("minutes", 0, 59, {}),
    ("hours", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 1, 7, _WEEKDAYS),
    ("year", 1970, 2199, {}),
)
_NOT_EMULATED: Final = re.compile(r"[LW#]")


def parse_schedule_expression(text: str, *, timezone: str = "UTC") -> ScheduleExpression:
    """Parse ``rate(N unit)``, ``cron(min hour dom month dow year)`` or ``at(yyyy-mm-ddThh:mm:ss)``.

    As EventBridge does: a rate of 1 takes a singular unit and any other value a plural one;
    a cron has six fields and exactly one of day-of-month and day-of-week is ``?``. Cron's
    ``L``, ``W`` and ``#`` are accepted but not emulated (that field allows every value; a
    warning says so).

    Args:
        text: the expression.
        timezone: IANA zone of cron and at() expressions (``ScheduleExpressionTimezone``).

    Raises:
        TemplateError: an expression EventBridge would refuse, or an unknown time zone.
    """
    expression = text.strip()
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise TemplateError(f"unknown time zone {timezone!r} for {text!r}") from exc
    rate = _RATE.match(expression)
    if rate:
        value, unit = int(rate.group(1)), rate.group(2)
        if value < 1:
            raise TemplateError(f"{text!r}: a rate must be a positive number")
        if (value == 1) == unit.endswith("s"):
            raise TemplateError(
                f"{text!r}: EventBridge wants the singular unit for 1 and the plural otherwise"
            )
        period = float(value * _RATE_UNIT_S[unit.rstrip("s")])
        return ScheduleExpression(expression, "rate", period_s=period, timezone=timezone)
    cron = _CRON.match(expression)
    if cron:
        return ScheduleExpression(
            expression, "cron", cron=_parse_cron(cron.group(1), text), timezone=timezone
        )
    at = _AT.match(expression)
    if at:
        moment = datetime.fromisoformat(at.group(1)).replace(tzinfo=ZoneInfo(timezone))
        return ScheduleExpression(expression, "at", at=moment.astimezone(UTC), timezone=timezone)
    raise TemplateError(
        f"{text!r} is not a schedule expression (rate(N unit), cron(6 fields) or at(...))"
    )


def _parse_cron(body: str, text: str) -> CronExpression:
    fields = body.split()
    if len(fields) != len(_CRON_FIELDS):
        raise TemplateError(f"{text!r}: cron needs 6 fields, got {len(fields)}")
    dom, dow = fields[2], fields[4]
    if (dom == "?") == (dow == "?"):
        raise TemplateError(f"{text!r}: exactly one of day-of-month and day-of-week must be '?'")
    values: list[frozenset[int] | None] = []
    approximate = False
    for raw, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        if raw == "?" and name in ("day-of-month", "day-of-week"):
            values.append(None)
        elif _NOT_EMULATED.search(raw):
            approximate = True
            logger.warning(
                "%s: %s %r uses L/W/#, which the local scheduler does not emulate; "
                "that field matches every value locally",
                text,
                name,
                raw,
            )
            values.append(frozenset(range(low, high + 1)))
        else:
            values.append(_cron_field(raw, low, high, names, f"{text!r} {name}"))
    minutes, hours, days, months, weekdays, years = values
    # Only the two day fields can be None ("?").
    assert minutes is not None  # noqa: S101
    assert hours is not None  # noqa: S101
    assert months is not None  # noqa: S101
    assert years is not None  # noqa: S101
    return CronExpression(minutes, hours, days, months, weekdays, years, approximate)


def _cron_value(token: str, names: Mapping[str, int], where: str) -> int:
    upper = token.upper()
    if upper in names:
        return names[upper]
    if not token.isdigit():
        raise TemplateError(f"{where}: {token!r} is not a number")
    return int(token)


def _cron_field(
    raw: str, low: int, high: int, names: Mapping[str, int], where: str
) -> frozenset[int]:
    allowed: set[int] = set()
    for part in raw.split(","):
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) < 1:
                raise TemplateError(f"{where}: bad increment in {part!r}")
            step = int(step_text)
        if base == "*":
            start, end = low, high
        elif "-" in base:
            first, _, last = base.partition("-")
            start, end = _cron_value(first, names, where), _cron_value(last, names, where)
        else:
            start = _cron_value(base, names, where)
            # "5/15" means from 5 to the end of the range, every 15.
            end = high if slash else start
        if not low <= start <= end <= high:
            raise TemplateError(f"{where}: {part!r} is outside {low}-{high} (or reversed)")
        allowed.update(range(start, end + 1, step))
    return frozenset(allowed)
