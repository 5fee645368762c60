"""Cron schedules for the time-based retrain trigger: parse once, then "when next?".

Five fields, as crontab(5) has them, all in UTC: `minute hour day-of-month month
day-of-week` (`*/15 2 * * 1-5`). Each field takes `*`, a number, a range `a-b`, a
list `a,b`, and a step `*/n` or `a-b/n`; day-of-week counts 0 (Sunday) to 6, and 7 is
Sunday too. As in Vixie cron, when both day fields are restricted a day matches if
either does. Names (`mon`, `jan`) and macros (`@daily`) are not taken.

A sixth field in front, seconds (`*/5 * * * * *`: every 5 s), is also taken, as
Quartz and Spring cron have it: for tests and demos that cannot wait a minute.

No dependency: croniter would be the only one for this, and it is 60 lines here.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# (name, lowest, highest) of each field, seconds first (present only in 6-field form).
_FIELDS = (
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)
# The furthest a schedule's next time can be: Feb 29 on a given weekday recurs within
# 28 years; a schedule with no time in this span (`0 0 31 2 *`) never fires.
_HORIZON_DAYS = 366 * 29


class CronError(ValueError):
    """A schedule that does not parse; the message names the field."""


def _field(text: str, name: str, low: int, high: int) -> tuple[frozenset[int], bool]:
    """The values a field allows, and whether it is unrestricted (`*`)."""
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{name}: step {step_text!r} must be a positive number")
            step = int(step_text)
        if body == "*":
            start, end = low, high
        elif "-" in body:
            a, _, b = body.partition("-")
            if not (a.isdigit() and b.isdigit()):
                raise CronError(f"{name}: {part!r} is not a range a-b of numbers")
            start, end = int(a), int(b)
        elif body.isdigit():
            start = int(body)
            end = high if step_text else start  # `5/10`: from 5 on, every 10
        else:
            raise CronError(f"{name}: {part!r} is not *, a number, a range or a step")
        if not (low <= start <= high and low <= end <= high) or start > end:
            raise CronError(f"{name}: {part!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    return frozenset(values), text == "*"


@dataclass(frozen=True, slots=True)
class Cron:
    """A parsed schedule."""

    text: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday .. 6
    any_day: bool  # day of month is `*`
    any_weekday: bool  # day of week is `*`

    @classmethod
    def parse(cls, text: str) -> Cron:
        parts = text.split()
        if len(parts) not in (5, 6):
            raise CronError(
                f"a schedule has 5 fields (minute hour day-of-month month day-of-week) or 6 "
                f"(seconds first), not {len(parts)}: {text!r}"
            )
        if len(parts) == 5:
            parts = ["0", *parts]
        parsed = [_field(p, *spec) for p, spec in zip(parts, _FIELDS, strict=True)]
        weekdays = frozenset(d % 7 for d in parsed[5][0])
        return cls(
            text=" ".join(text.split()),
            seconds=parsed[0][0],
            minutes=parsed[1][0],
            hours=parsed[2][0],
            days=parsed[3][0],
            months=parsed[4][0],
            weekdays=weekdays,
            any_day=parsed[3][1],
            any_weekday=parsed[5][1],
        )

    def _day_matches(self, day: datetime) -> bool:
        if day.month not in self.months:
            return False
        in_month = day.day in self.days
        in_week = (day.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return in_month and in_week  # one is `*`, so only the other restricts
        return in_month or in_week

    def next_after(self, when: float) -> float | None:
        """The first time strictly after `when` (Unix seconds) the schedule fires, or
        None if it never does."""
        start = datetime.fromtimestamp(int(when) + 1, UTC)
        day = start.replace(hour=0, minute=0, second=0)
        for _ in range(_HORIZON_DAYS):
            if self._day_matches(day):
                found = self._time_in(day, start if day.date() == start.date() else day)
                if found is not None:
                    return found.timestamp()
            day += timedelta(days=1)
            if day.day == 1 and day.month not in self.months:
                # Skip whole months the schedule excludes.
                while day.month not in self.months:
                    days = calendar.monthrange(day.year, day.month)[1]
                    day += timedelta(days=days)
        return None

    def _time_in(self, day: datetime, earliest: datetime) -> datetime | None:
        """The first time on `day` at or after `earliest` that matches."""
        for hour in sorted(h for h in self.hours if h >= earliest.hour):
            same_hour = hour == earliest.hour
            for minute in sorted(self.minutes):
                if same_hour and minute < earliest.minute:
                    continue
                same_minute = same_hour and minute == earliest.minute
                for second in sorted(self.seconds):
                    if same_minute and second < earliest.second:
                        continue
                    return day.replace(hour=hour, minute=minute, second=second)
        return None
