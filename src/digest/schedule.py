"""Due times from cron expressions over local calendar dates (pure: `now` is always a parameter).

APScheduler's CronTrigger is not used for due times: in 3.11 it mishandles DST and day-of-week
numbering. Here a cron expression keeps its crontab meaning (0 and 7 are Sunday; when both
day-of-month and day-of-week are restricted, either may match), every candidate is a local wall
time, a wall time that does not exist (spring forward) moves forward by the gap, and one that
happens twice (fall back) is used once, at its first occurrence.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

_MONTHS = {
    m: i
    for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1
    )
}
_DAYS = {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class Cron:
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday … 6 = Saturday
    days_restricted: bool
    weekdays_restricted: bool

    def matches_date(self, d: date) -> bool:
        if d.month not in self.months:
            return False
        dom = d.day in self.days
        dow = (d.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return dom or dow
        return dom and dow


def _field(text: str, low: int, high: int, names: dict[str, int] | None, what: str) -> tuple[set[int], bool]:
    values: set[int] = set()
    restricted = text != "*"

    def number(token: str) -> int:
        token = token.lower()
        if names and token in names:
            return names[token]
        if not (token.isascii() and token.isdigit()):
            raise ValueError(f"{what}: {token!r} is not a number")
        return int(token)

    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = number(step_text) if step_text else 1
        if step < 1:
            raise ValueError(f"{what}: step must be at least 1")
        if base == "*":
            start, end = low, high
        elif "-" in base:
            a, b = base.split("-", 1)
            start, end = number(a), number(b)
        else:
            start = number(base)
            end = high if step_text else start
        if not (low <= start <= high and low <= end <= high) or start > end:
            raise ValueError(f"{what}: {part!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    return values, restricted


def parse_cron(expr: str) -> Cron:
    """Parse a five-field crontab expression; ValueError says which field is wrong."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(
            "a cron expression with five fields (minute hour day month weekday), e.g. '0 7 * * *'"
        )
    minutes, _ = _field(fields[0], 0, 59, None, "minute")
    hours, _ = _field(fields[1], 0, 23, None, "hour")
    days, days_r = _field(fields[2], 1, 31, None, "day of month")
    months, _ = _field(fields[3], 1, 12, _MONTHS, "month")
    weekdays, weekdays_r = _field(fields[4], 0, 7, _DAYS, "day of week")
    weekdays = {d % 7 for d in weekdays}
    return Cron(
        tuple(sorted(minutes)),
        tuple(sorted(hours)),
        frozenset(days),
        frozenset(months),
        frozenset(weekdays),
        days_r,
        weekdays_r,
    )


def cadence_cron(cadence: str, send_hour: int | None, weekday: int | None, list_schedule: str) -> str:
    """The cron expression of one reader's cadence (weekday 0 = Monday, as in WEEKDAYS)."""
    if cadence == "default" or send_hour is None:
        return list_schedule
    if cadence == "daily":
        return f"0 {send_hour} * * *"
    if cadence == "weekly":
        return f"0 {send_hour} * * {((weekday or 0) + 1) % 7}"
    raise ValueError(f"unknown cadence {cadence!r}")


def describe_schedule(cron: str, tz: str) -> str:
    """A list's cron schedule in words, for the signup page's "as the list sends" choice."""
    parts = cron.split()
    if len(parts) == 5 and parts[0].isdigit() and parts[1].isdigit() and parts[2:4] == ["*", "*"]:
        at = f"{int(parts[1]):02d}:{int(parts[0]):02d} ({tz})"
        if parts[4] == "*":
            return f"every day at {at}"
        days = {"0": "Sunday", "7": "Sunday", "1": "Monday", "2": "Tuesday", "3": "Wednesday",
                "4": "Thursday", "5": "Friday", "6": "Saturday", "1-5": "weekday"}  # fmt: skip
        if parts[4] in days:
            return f"every {days[parts[4]]} at {at}"
    return "on the list's own schedule"


def resolve_local(naive: datetime, tz: ZoneInfo) -> datetime:
    """The UTC instant of a local wall time: gaps move forward by their length, folds take the first."""
    first = naive.replace(tzinfo=tz, fold=0)
    # fold=0 uses the offset in force before a transition, which places a wall time inside a
    # spring-forward gap exactly the gap's length later: the rule we want.
    return first.astimezone(UTC)


def _day_slots(cron: Cron, tz: ZoneInfo, d: date) -> list[datetime]:
    """The due instants of one local date (none if the date does not match)."""
    if not cron.matches_date(d):
        return []
    return [resolve_local(datetime.combine(d, time(h, m)), tz) for h in cron.hours for m in cron.minutes]


def next_due(cron: Cron, tz: ZoneInfo, after: datetime) -> datetime:
    """The first due instant strictly after `after` (aware), in UTC."""
    local_day = after.astimezone(tz).date() - timedelta(days=1)
    for offset in range(366 * 8 + 2):
        d = local_day + timedelta(days=offset)
        later = [due for due in _day_slots(cron, tz, d) if due > after]
        if later:
            # A wall time moved forward by a gap can overtake later slots (of that day or, for a gap
            # at midnight, the next), so take the earliest rather than the first in wall-clock order.
            later += [due for due in _day_slots(cron, tz, d + timedelta(days=1)) if due > after]
            return min(later)
    raise ValueError("the cron expression never matches a real date")


def previous_due(cron: Cron, tz: ZoneInfo, at: datetime) -> datetime | None:
    """The last due instant at or before `at`, looking back at most 400 days."""
    local_day = at.astimezone(tz).date() + timedelta(days=1)
    for offset in range(402):
        d = local_day - timedelta(days=offset)
        earlier = [due for due in _day_slots(cron, tz, d) if due <= at]
        if earlier:
            earlier += [due for due in _day_slots(cron, tz, d - timedelta(days=1)) if due <= at]
            return max(earlier)
    return None
