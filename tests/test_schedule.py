"""Due times from cron expressions over local calendar dates (digest.schedule, pure).

Every expected instant below is written out by hand as a local wall time with its UTC offset, worked
out from the zones' 2026-2028 rules:

- Europe/Berlin       02:00 -> 03:00 on 2026-03-29 / 2027-03-28, 03:00 -> 02:00 on 2026-10-25 / 2027-10-31
- America/New_York    02:00 -> 03:00 on 2026-03-08 / 2027-03-14, 02:00 -> 01:00 on 2026-11-01 / 2027-11-07
- America/Chicago     as New York, one hour further west
- Asia/Kolkata        +05:30 all year
- Pacific/Auckland    03:00 -> 02:00 on 2026-04-05 / 2027-04-04, 02:00 -> 03:00 on 2026-09-27 / 2027-09-26
- America/Santiago    Sat 24:00 -> 23:00 on 2026-04-04 / 2027-04-03 (23:xx twice),
                      00:00 -> 01:00 on Sun 2026-09-06 / 2027-09-05 (00:xx missing)
- America/Havana      00:00 -> 01:00 on Sun 2026-03-08 / 2027-03-14 (00:xx missing),
                      01:00 -> 00:00 on Sun 2026-11-01 / 2027-11-07 (00:xx twice)
- Australia/Lord_Howe 02:00 -> 01:30 on 2026-04-05 (+11 -> +10:30), 02:00 -> 02:30 on 2026-10-04 (half-hour gap)
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from digest.schedule import WEEKDAYS, Cron, cadence_cron, next_due, parse_cron, previous_due

BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"
CHICAGO = "America/Chicago"
KOLKATA = "Asia/Kolkata"
AUCKLAND = "Pacific/Auckland"
SANTIAGO = "America/Santiago"
HAVANA = "America/Havana"
LORD_HOWE = "Australia/Lord_Howe"
ZONES = (BERLIN, NEW_YORK, KOLKATA, AUCKLAND, SANTIAGO, HAVANA)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def due_after(expr: str, zone: str, after: str) -> str:
    """next_due as local ISO text (wall time and offset), after checking it is a UTC instant."""
    tz = ZoneInfo(zone)
    result = next_due(parse_cron(expr), tz, at(after))
    assert result.utcoffset() == timedelta(0)
    return result.astimezone(tz).isoformat()


def due_series(expr: str, zone: str, after: str, count: int) -> list[str]:
    tz = ZoneInfo(zone)
    cron = parse_cron(expr)
    current = at(after)
    out = []
    for _ in range(count):
        current = next_due(cron, tz, current)
        out.append(current.astimezone(tz).isoformat())
    return out


# --- daily slots around both DST changes of 2026 and 2027 ------------------------------------------------

DAILY = [
    # Europe/Berlin: 02:30 is missing in spring (-> 03:30 CEST) and repeated in autumn (first = CEST).
    (BERLIN, "30 2 * * *", "2026-03-28T12:00:00+01:00", "2026-03-29T03:30:00+02:00"),
    (BERLIN, "30 2 * * *", "2026-03-29T03:30:00+02:00", "2026-03-30T02:30:00+02:00"),
    (BERLIN, "30 2 * * *", "2026-10-24T12:00:00+02:00", "2026-10-25T02:30:00+02:00"),
    (BERLIN, "30 2 * * *", "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"),
    (BERLIN, "30 2 * * *", "2027-03-27T12:00:00+01:00", "2027-03-28T03:30:00+02:00"),
    (BERLIN, "30 2 * * *", "2027-10-30T12:00:00+02:00", "2027-10-31T02:30:00+02:00"),
    (BERLIN, "30 2 * * *", "2027-10-31T02:30:00+02:00", "2027-11-01T02:30:00+01:00"),
    (BERLIN, "0 7 * * *", "2026-03-28T07:00:00+01:00", "2026-03-29T07:00:00+02:00"),
    (BERLIN, "0 7 * * *", "2026-10-24T07:00:00+02:00", "2026-10-25T07:00:00+01:00"),
    (BERLIN, "0 7 * * *", "2027-03-27T07:00:00+01:00", "2027-03-28T07:00:00+02:00"),
    (BERLIN, "0 7 * * *", "2027-10-30T07:00:00+02:00", "2027-10-31T07:00:00+01:00"),
    # America/New_York: 02:30 missing in spring, 01:30 repeated in autumn.
    (NEW_YORK, "30 2 * * *", "2026-03-07T12:00:00-05:00", "2026-03-08T03:30:00-04:00"),
    (NEW_YORK, "30 2 * * *", "2026-03-08T03:30:00-04:00", "2026-03-09T02:30:00-04:00"),
    (NEW_YORK, "30 1 * * *", "2026-10-31T12:00:00-04:00", "2026-11-01T01:30:00-04:00"),
    (NEW_YORK, "30 1 * * *", "2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"),
    (NEW_YORK, "30 2 * * *", "2026-10-31T12:00:00-04:00", "2026-11-01T02:30:00-05:00"),
    (NEW_YORK, "30 2 * * *", "2027-03-13T12:00:00-05:00", "2027-03-14T03:30:00-04:00"),
    (NEW_YORK, "30 1 * * *", "2027-11-06T12:00:00-04:00", "2027-11-07T01:30:00-04:00"),
    (NEW_YORK, "30 1 * * *", "2027-11-07T01:30:00-04:00", "2027-11-08T01:30:00-05:00"),
    # Asia/Kolkata: no DST, the same wall times are untouched on the European change days.
    (KOLKATA, "30 2 * * *", "2026-03-28T12:00:00+05:30", "2026-03-29T02:30:00+05:30"),
    (KOLKATA, "0 7 * * *", "2026-10-24T12:00:00+05:30", "2026-10-25T07:00:00+05:30"),
    (KOLKATA, "30 2 * * *", "2027-03-13T12:00:00+05:30", "2027-03-14T02:30:00+05:30"),
    (KOLKATA, "30 1 * * *", "2027-11-06T12:00:00+05:30", "2027-11-07T01:30:00+05:30"),
    # Pacific/Auckland: autumn in April (02:xx twice), spring in September (02:xx missing).
    (AUCKLAND, "30 2 * * *", "2026-04-04T12:00:00+13:00", "2026-04-05T02:30:00+13:00"),
    (AUCKLAND, "30 2 * * *", "2026-04-05T02:30:00+13:00", "2026-04-06T02:30:00+12:00"),
    (AUCKLAND, "30 2 * * *", "2026-09-26T12:00:00+12:00", "2026-09-27T03:30:00+13:00"),
    (AUCKLAND, "30 2 * * *", "2026-09-27T03:30:00+13:00", "2026-09-28T02:30:00+13:00"),
    (AUCKLAND, "30 2 * * *", "2027-04-03T12:00:00+13:00", "2027-04-04T02:30:00+13:00"),
    (AUCKLAND, "30 2 * * *", "2027-04-04T02:30:00+13:00", "2027-04-05T02:30:00+12:00"),
    (AUCKLAND, "30 2 * * *", "2027-09-25T12:00:00+12:00", "2027-09-26T03:30:00+13:00"),
    (AUCKLAND, "0 7 * * *", "2027-09-25T07:00:00+12:00", "2027-09-26T07:00:00+13:00"),
    # America/Santiago: clocks change at midnight.
    (SANTIAGO, "30 0 * * *", "2026-09-05T12:00:00-04:00", "2026-09-06T01:30:00-03:00"),
    (SANTIAGO, "30 0 * * *", "2026-09-06T01:30:00-03:00", "2026-09-07T00:30:00-03:00"),
    (SANTIAGO, "0 0 * * *", "2026-09-05T12:00:00-04:00", "2026-09-06T01:00:00-03:00"),
    (SANTIAGO, "30 23 * * *", "2026-04-04T12:00:00-03:00", "2026-04-04T23:30:00-03:00"),
    (SANTIAGO, "30 23 * * *", "2026-04-04T23:30:00-03:00", "2026-04-05T23:30:00-04:00"),
    (SANTIAGO, "30 0 * * *", "2027-09-04T12:00:00-04:00", "2027-09-05T01:30:00-03:00"),
    (SANTIAGO, "30 23 * * *", "2027-04-03T12:00:00-03:00", "2027-04-03T23:30:00-03:00"),
    (SANTIAGO, "30 23 * * *", "2027-04-03T23:30:00-03:00", "2027-04-04T23:30:00-04:00"),
    # America/Havana: clocks change at midnight.
    (HAVANA, "30 0 * * *", "2026-03-07T12:00:00-05:00", "2026-03-08T01:30:00-04:00"),
    (HAVANA, "30 0 * * *", "2026-03-08T01:30:00-04:00", "2026-03-09T00:30:00-04:00"),
    (HAVANA, "30 0 * * *", "2026-10-31T12:00:00-04:00", "2026-11-01T00:30:00-04:00"),
    (HAVANA, "30 0 * * *", "2026-11-01T00:30:00-04:00", "2026-11-02T00:30:00-05:00"),
    (HAVANA, "30 0 * * *", "2026-11-01T00:15:00-05:00", "2026-11-02T00:30:00-05:00"),
    (HAVANA, "30 0 * * *", "2027-03-13T12:00:00-05:00", "2027-03-14T01:30:00-04:00"),
    (HAVANA, "30 0 * * *", "2027-11-06T12:00:00-04:00", "2027-11-07T00:30:00-04:00"),
    (HAVANA, "30 0 * * *", "2027-11-07T00:30:00-04:00", "2027-11-08T00:30:00-05:00"),
]


@pytest.mark.parametrize(("zone", "expr", "after", "expected"), DAILY)
def test_daily_slot_keeps_local_wall_time_across_dst_changes(
    zone: str, expr: str, after: str, expected: str
) -> None:
    assert due_after(expr, zone, after) == expected


# --- weekly slots -----------------------------------------------------------------------------------------

WEEKLY = [
    (BERLIN, "30 2 * * sun", "2026-03-22T12:00:00+01:00", "2026-03-29T03:30:00+02:00"),
    (BERLIN, "30 2 * * sun", "2026-03-29T03:30:00+02:00", "2026-04-05T02:30:00+02:00"),
    (BERLIN, "30 2 * * 0", "2026-10-18T12:00:00+02:00", "2026-10-25T02:30:00+02:00"),
    (BERLIN, "30 2 * * 0", "2026-10-25T02:30:00+02:00", "2026-11-01T02:30:00+01:00"),
    (BERLIN, "0 7 * * 7", "2027-10-24T07:00:00+02:00", "2027-10-31T07:00:00+01:00"),
    (NEW_YORK, "0 8 * * 1", "2026-03-02T09:00:00-05:00", "2026-03-09T08:00:00-04:00"),
    (NEW_YORK, "0 8 * * mon", "2027-11-01T09:00:00-04:00", "2027-11-08T08:00:00-05:00"),
    (NEW_YORK, "30 1 * * 0", "2026-10-25T12:00:00-04:00", "2026-11-01T01:30:00-04:00"),
    (KOLKATA, "0 7 * * 5", "2026-12-28T00:00:00+05:30", "2027-01-01T07:00:00+05:30"),
    (AUCKLAND, "0 9 * * 0", "2027-03-28T12:00:00+13:00", "2027-04-04T09:00:00+12:00"),
    (AUCKLAND, "0 9 * * 0", "2027-09-19T12:00:00+12:00", "2027-09-26T09:00:00+13:00"),
    (AUCKLAND, "30 2 * * 0", "2026-09-20T12:00:00+12:00", "2026-09-27T03:30:00+13:00"),
    (SANTIAGO, "30 0 * * 0", "2026-08-30T12:00:00-04:00", "2026-09-06T01:30:00-03:00"),
    (SANTIAGO, "30 23 * * 6", "2027-03-28T12:00:00-03:00", "2027-04-03T23:30:00-03:00"),
    (SANTIAGO, "30 23 * * 6", "2027-04-03T23:30:00-03:00", "2027-04-10T23:30:00-04:00"),
    (HAVANA, "30 0 * * 0", "2027-03-07T12:00:00-05:00", "2027-03-14T01:30:00-04:00"),
    (HAVANA, "30 0 * * 0", "2026-10-25T12:00:00-04:00", "2026-11-01T00:30:00-04:00"),
    (HAVANA, "30 0 * * 0", "2026-11-01T00:30:00-04:00", "2026-11-08T00:30:00-05:00"),
]


@pytest.mark.parametrize(("zone", "expr", "after", "expected"), WEEKLY)
def test_weekly_slot_lands_on_its_weekday_across_dst_changes(
    zone: str, expr: str, after: str, expected: str
) -> None:
    assert due_after(expr, zone, after) == expected


# --- general cron schedules with several slots a day ------------------------------------------------------

CRON_SERIES = [
    # Two slots inside Berlin's spring gap move forward by the gap, then normal the next day.
    (
        BERLIN,
        "0,30 2 * * *",
        "2026-03-29T01:50:00+01:00",
        ["2026-03-29T03:00:00+02:00", "2026-03-29T03:30:00+02:00", "2026-03-30T02:00:00+02:00"],
    ),
    # Two slots inside Berlin's repeated hour fire once each, at their first occurrence.
    (
        BERLIN,
        "0,30 2 * * *",
        "2026-10-25T01:50:00+02:00",
        ["2026-10-25T02:00:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-26T02:00:00+01:00"],
    ),
    (
        BERLIN,
        "0 */8 * * *",
        "2027-03-27T20:00:00+01:00",
        ["2027-03-28T00:00:00+01:00", "2027-03-28T08:00:00+02:00", "2027-03-28T16:00:00+02:00"],
    ),
    # New York autumn: 01:15 once (EDT), then 02:15 and 03:15 EST.
    (
        NEW_YORK,
        "15 1-3 * * *",
        "2026-11-01T00:00:00-04:00",
        ["2026-11-01T01:15:00-04:00", "2026-11-01T02:15:00-05:00", "2026-11-01T03:15:00-05:00"],
    ),
    # New York spring: 02:15 is missing and moves onto 03:15, which then fires once.
    (
        NEW_YORK,
        "15 1-3 * * *",
        "2027-03-14T01:15:00-05:00",
        ["2027-03-14T03:15:00-04:00", "2027-03-15T01:15:00-04:00", "2027-03-15T02:15:00-04:00"],
    ),
    (
        AUCKLAND,
        "0 */2 * * *",
        "2027-09-26T01:00:00+12:00",
        ["2027-09-26T03:00:00+13:00", "2027-09-26T04:00:00+13:00", "2027-09-26T06:00:00+13:00"],
    ),
    (
        AUCKLAND,
        "45 1,2,3 * * *",
        "2026-04-05T01:50:00+13:00",
        ["2026-04-05T02:45:00+13:00", "2026-04-05T03:45:00+12:00", "2026-04-06T01:45:00+12:00"],
    ),
    (
        SANTIAGO,
        "0 22-23 * * *",
        "2027-04-03T21:00:00-03:00",
        ["2027-04-03T22:00:00-03:00", "2027-04-03T23:00:00-03:00", "2027-04-04T22:00:00-04:00"],
    ),
    (
        SANTIAGO,
        "0 0-1 * * *",
        "2026-09-05T23:30:00-04:00",
        ["2026-09-06T01:00:00-03:00", "2026-09-07T00:00:00-03:00", "2026-09-07T01:00:00-03:00"],
    ),
    (
        HAVANA,
        "0 0-1 * * *",
        "2027-03-13T23:30:00-05:00",
        ["2027-03-14T01:00:00-04:00", "2027-03-15T00:00:00-04:00", "2027-03-15T01:00:00-04:00"],
    ),
    (
        HAVANA,
        "0,30 0 * * *",
        "2027-11-06T23:59:00-04:00",
        ["2027-11-07T00:00:00-04:00", "2027-11-07T00:30:00-04:00", "2027-11-08T00:00:00-05:00"],
    ),
    (
        KOLKATA,
        "*/15 9 * * 1-5",
        "2026-06-05T09:50:00+05:30",
        ["2026-06-08T09:00:00+05:30", "2026-06-08T09:15:00+05:30", "2026-06-08T09:30:00+05:30"],
    ),
    # A half-hour gap: 02:15 moves to 02:45, after the real 02:40, which must not be skipped.
    (
        LORD_HOWE,
        "15,40 2 * * *",
        "2026-10-04T01:00:00+10:30",
        ["2026-10-04T02:40:00+11:00", "2026-10-04T02:45:00+11:00", "2026-10-05T02:15:00+11:00"],
    ),
    (
        LORD_HOWE,
        "45 1 * * *",
        "2026-04-04T12:00:00+11:00",
        ["2026-04-05T01:45:00+11:00", "2026-04-06T01:45:00+10:30"],
    ),
]


@pytest.mark.parametrize(("zone", "expr", "after", "expected"), CRON_SERIES)
def test_cron_slots_follow_each_other_once_across_dst_changes(
    zone: str, expr: str, after: str, expected: list[str]
) -> None:
    assert due_series(expr, zone, after, len(expected)) == expected


# --- month ends, year ends, leap days ---------------------------------------------------------------------

CALENDAR_EDGES = [
    (BERLIN, "0 7 * * *", "2026-12-31T07:00:00+01:00", "2027-01-01T07:00:00+01:00"),
    (AUCKLAND, "0 7 * * *", "2026-12-31T08:00:00+13:00", "2027-01-01T07:00:00+13:00"),
    (AUCKLAND, "0 0 * * *", "2026-12-31T00:00:00+13:00", "2027-01-01T00:00:00+13:00"),
    (KOLKATA, "0 0 1 1 *", "2026-12-31T23:59:00+05:30", "2027-01-01T00:00:00+05:30"),
    (SANTIAGO, "0 0 1 * *", "2026-12-31T12:00:00-03:00", "2027-01-01T00:00:00-03:00"),
    (HAVANA, "30 23 31 12 *", "2026-06-01T00:00:00-04:00", "2026-12-31T23:30:00-05:00"),
    (NEW_YORK, "0 7 31 * *", "2026-04-01T00:00:00-04:00", "2026-05-31T07:00:00-04:00"),
    (NEW_YORK, "0 7 30 * *", "2027-01-30T07:00:00-05:00", "2027-03-30T07:00:00-04:00"),
    (BERLIN, "0 7 * * *", "2027-02-28T08:00:00+01:00", "2027-03-01T07:00:00+01:00"),
    (BERLIN, "0 7 * * *", "2028-02-28T08:00:00+01:00", "2028-02-29T07:00:00+01:00"),
    (BERLIN, "0 7 * * *", "2028-02-29T08:00:00+01:00", "2028-03-01T07:00:00+01:00"),
    (BERLIN, "0 7 29 2 *", "2026-03-01T00:00:00+01:00", "2028-02-29T07:00:00+01:00"),
    (NEW_YORK, "0 9 28-31 2 *", "2028-02-28T09:00:00-05:00", "2028-02-29T09:00:00-05:00"),
    (NEW_YORK, "0 9 28-31 2 *", "2028-02-29T09:00:00-05:00", "2029-02-28T09:00:00-05:00"),
    (KOLKATA, "0 9 1 * *", "2028-02-29T12:00:00+05:30", "2028-03-01T09:00:00+05:30"),
    (AUCKLAND, "0 23 31 12 *", "2027-12-31T23:00:00+13:00", "2028-12-31T23:00:00+13:00"),
]


@pytest.mark.parametrize(("zone", "expr", "after", "expected"), CALENDAR_EDGES)
def test_due_time_crosses_month_year_and_leap_day_ends(
    zone: str, expr: str, after: str, expected: str
) -> None:
    assert due_after(expr, zone, after) == expected


# --- a 07:00 reader in Berlin -----------------------------------------------------------------------------

BERLIN_0700 = [
    ("2026-03-27T12:00:00+00:00", "2026-03-28T06:00:00+00:00"),
    ("2026-03-28T12:00:00+00:00", "2026-03-29T05:00:00+00:00"),
    ("2026-10-24T00:00:00+00:00", "2026-10-24T05:00:00+00:00"),
    ("2026-10-24T12:00:00+00:00", "2026-10-25T06:00:00+00:00"),
    ("2027-03-27T00:00:00+00:00", "2027-03-27T06:00:00+00:00"),
    ("2027-03-27T12:00:00+00:00", "2027-03-28T05:00:00+00:00"),
    ("2027-10-30T00:00:00+00:00", "2027-10-30T05:00:00+00:00"),
    ("2027-10-30T12:00:00+00:00", "2027-10-31T06:00:00+00:00"),
]


@pytest.mark.parametrize(("after", "expected_utc"), BERLIN_0700)
def test_berlin_0700_reader_gets_0700_local_on_both_sides_of_dst_change(
    after: str, expected_utc: str
) -> None:
    tz = ZoneInfo(BERLIN)
    result = next_due(parse_cron("0 7 * * *"), tz, at(after))
    assert result == at(expected_utc)
    assert result.isoformat() == expected_utc
    assert result.astimezone(tz).time() == time(7, 0)


# --- cases APScheduler 3.11's CronTrigger gets wrong ------------------------------------------------------


@pytest.mark.parametrize("expr", ["0 7 * * 0", "0 7 * * 7", "0 7 * * sun", "0 7 * * SUN"])
def test_crontab_zero_and_seven_both_mean_sunday(expr: str) -> None:
    assert due_series(expr, BERLIN, "2026-01-01T12:00:00+01:00", 3) == [
        "2026-01-04T07:00:00+01:00",
        "2026-01-11T07:00:00+01:00",
        "2026-01-18T07:00:00+01:00",
    ]


def test_crontab_seven_in_a_weekday_range_is_sunday() -> None:
    assert due_series("0 7 * * 5-7", BERLIN, "2026-01-01T12:00:00+01:00", 4) == [
        "2026-01-02T07:00:00+01:00",
        "2026-01-03T07:00:00+01:00",
        "2026-01-04T07:00:00+01:00",
        "2026-01-09T07:00:00+01:00",
    ]


@pytest.mark.parametrize(
    ("after", "day", "expected"),
    [
        ("2026-10-24T12:00:00+02:00", date(2026, 10, 25), ["2026-10-25T02:30:00+02:00"]),
        ("2027-10-30T12:00:00+02:00", date(2027, 10, 31), ["2027-10-31T02:30:00+02:00"]),
        ("2026-03-28T12:00:00+01:00", date(2026, 3, 29), ["2026-03-29T03:30:00+02:00"]),
        ("2027-03-27T12:00:00+01:00", date(2027, 3, 28), ["2027-03-28T03:30:00+02:00"]),
    ],
)
def test_berlin_0230_fires_exactly_once_on_dst_change_days(
    after: str, day: date, expected: list[str]
) -> None:
    fired = [
        text for text in due_series("30 2 * * *", BERLIN, after, 4) if date.fromisoformat(text[:10]) == day
    ]
    assert fired == expected


def test_chicago_weekday_midnight_skips_no_weekday_around_2027_spring_change() -> None:
    assert due_series("0 0 * * 1-5", CHICAGO, "2027-03-05T12:00:00-06:00", 10) == [
        "2027-03-08T00:00:00-06:00",
        "2027-03-09T00:00:00-06:00",
        "2027-03-10T00:00:00-06:00",
        "2027-03-11T00:00:00-06:00",
        "2027-03-12T00:00:00-06:00",
        "2027-03-15T00:00:00-05:00",
        "2027-03-16T00:00:00-05:00",
        "2027-03-17T00:00:00-05:00",
        "2027-03-18T00:00:00-05:00",
        "2027-03-19T00:00:00-05:00",
    ]


def test_chicago_weekday_midnight_skips_no_weekday_around_2027_autumn_change() -> None:
    assert due_series("0 0 * * 1-5", CHICAGO, "2027-11-05T12:00:00-05:00", 3) == [
        "2027-11-08T00:00:00-06:00",
        "2027-11-09T00:00:00-06:00",
        "2027-11-10T00:00:00-06:00",
    ]


# --- crontab syntax ---------------------------------------------------------------------------------------

ALL_DAYS = frozenset(range(1, 32))
ALL_MONTHS = frozenset(range(1, 13))
ALL_WEEKDAYS = frozenset(range(7))

PARSED = [
    ("0 7 * * *", Cron((0,), (7,), ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS, False, False)),
    (
        "*/15 * * * *",
        Cron((0, 15, 30, 45), tuple(range(24)), ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS, False, False),
    ),
    ("0 1-5/2 * * *", Cron((0,), (1, 3, 5), ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS, False, False)),
    ("5/20 8 * * *", Cron((5, 25, 45), (8,), ALL_DAYS, ALL_MONTHS, ALL_WEEKDAYS, False, False)),
    (
        "0,30 8,12,18 * * mon,wed,fri",
        Cron((0, 30), (8, 12, 18), ALL_DAYS, ALL_MONTHS, frozenset({1, 3, 5}), False, True),
    ),
    (
        "0 9 * jan-mar mon-fri",
        Cron((0,), (9,), ALL_DAYS, frozenset({1, 2, 3}), frozenset({1, 2, 3, 4, 5}), False, True),
    ),
    (
        "0 9 1,15 JAN,Jul *",
        Cron((0,), (9,), frozenset({1, 15}), frozenset({1, 7}), ALL_WEEKDAYS, True, False),
    ),
    ("0 9 1 * 1", Cron((0,), (9,), frozenset({1}), ALL_MONTHS, frozenset({1}), True, True)),
    ("0 0 * * 1-7/2", Cron((0,), (0,), ALL_DAYS, ALL_MONTHS, frozenset({0, 1, 3, 5}), False, True)),
    ("59 23 31 dec 7", Cron((59,), (23,), frozenset({31}), frozenset({12}), frozenset({0}), True, True)),
]


@pytest.mark.parametrize(("expr", "expected"), PARSED)
def test_parse_cron_reads_ranges_steps_lists_and_names(expr: str, expected: Cron) -> None:
    assert parse_cron(expr) == expected


SYNTAX_SERIES = [
    # Day of month OR day of week when both are restricted: the 1st (a Wednesday) and every Monday.
    (
        "0 9 1 * 1",
        BERLIN,
        "2026-06-26T12:00:00+02:00",
        ["2026-06-29T09:00:00+02:00", "2026-07-01T09:00:00+02:00", "2026-07-06T09:00:00+02:00"],
    ),
    (
        "0 9 1 * mon",
        NEW_YORK,
        "2026-06-26T12:00:00-04:00",
        ["2026-06-29T09:00:00-04:00", "2026-07-01T09:00:00-04:00", "2026-07-06T09:00:00-04:00"],
    ),
    # Only day of week restricted: Mondays only (AND with an unrestricted day of month).
    (
        "0 9 * * 1",
        BERLIN,
        "2026-06-26T12:00:00+02:00",
        ["2026-06-29T09:00:00+02:00", "2026-07-06T09:00:00+02:00"],
    ),
    # Only day of month restricted: the 1st only.
    (
        "0 9 1 * *",
        BERLIN,
        "2026-06-26T12:00:00+02:00",
        ["2026-07-01T09:00:00+02:00", "2026-08-01T09:00:00+02:00"],
    ),
    (
        "*/15 9 * * *",
        KOLKATA,
        "2026-06-01T09:20:00+05:30",
        ["2026-06-01T09:30:00+05:30", "2026-06-01T09:45:00+05:30", "2026-06-02T09:00:00+05:30"],
    ),
    (
        "0 1-5/2 * * *",
        KOLKATA,
        "2026-06-01T00:00:00+05:30",
        ["2026-06-01T01:00:00+05:30", "2026-06-01T03:00:00+05:30", "2026-06-01T05:00:00+05:30"],
    ),
    (
        "0 8 * jan mon",
        BERLIN,
        "2026-12-15T00:00:00+01:00",
        ["2027-01-04T08:00:00+01:00", "2027-01-11T08:00:00+01:00"],
    ),
    (
        "0 8 * jan,feb 1-5",
        BERLIN,
        "2027-01-29T09:00:00+01:00",
        ["2027-02-01T08:00:00+01:00"],
    ),
]


@pytest.mark.parametrize(("expr", "zone", "after", "expected"), SYNTAX_SERIES)
def test_cron_syntax_matches_crontab_meaning(expr: str, zone: str, after: str, expected: list[str]) -> None:
    assert due_series(expr, zone, after, len(expected)) == expected


INVALID = [
    ("61 * * * *", r"^minute:"),
    ("-1 * * * *", r"^minute:"),
    ("*/0 * * * *", r"^minute:"),
    ("x * * * *", r"^minute:"),
    ("0 24 * * *", r"^hour:"),
    ("0 ² * * *", r"^hour:"),
    ("0 ١ * * *", r"^hour:"),
    ("0 7 0 * *", r"^day of month:"),
    ("0 7 32 * *", r"^day of month:"),
    ("0 7 * 13 *", r"^month:"),
    ("0 7 * foo *", r"^month:"),
    ("0 7 * dec-jan *", r"^month:"),
    ("0 7 * * 8", r"^day of week:"),
    ("0 7 * * 5-2", r"^day of week:"),
    ("0 7 * * funday", r"^day of week:"),
    ("0 7 * * 1,", r"^day of week:"),
    ("* * *", "five fields"),
    ("", "five fields"),
    ("0 7 * * * *", "five fields"),
]


@pytest.mark.parametrize(("expr", "message"), INVALID)
def test_invalid_cron_expression_raises_value_error_naming_the_field(expr: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_cron(expr)


@pytest.mark.parametrize("expr", ["0 7 31 2 *", "0 7 30 2 *", "0 7 31 4,6,9,11 *"])
def test_cron_that_never_matches_a_real_date_raises_in_next_due(expr: str) -> None:
    cron = parse_cron(expr)
    with pytest.raises(ValueError, match="never matches"):
        next_due(cron, ZoneInfo(BERLIN), at("2026-01-01T00:00:00+01:00"))


# --- cadence_cron -----------------------------------------------------------------------------------------

CADENCES = [
    ("default", None, None, "30 6 * * 1-5", "30 6 * * 1-5"),
    ("default", 7, 2, "30 6 * * 1-5", "30 6 * * 1-5"),
    ("daily", None, None, "0 6 * * *", "0 6 * * *"),
    ("daily", 7, None, "0 6 * * *", "0 7 * * *"),
    ("daily", 0, None, "0 6 * * *", "0 0 * * *"),
    ("daily", 23, 4, "0 6 * * *", "0 23 * * *"),
    ("weekly", 8, 0, "0 6 * * *", "0 8 * * 1"),
    ("weekly", 8, 1, "0 6 * * *", "0 8 * * 2"),
    ("weekly", 8, 2, "0 6 * * *", "0 8 * * 3"),
    ("weekly", 8, 3, "0 6 * * *", "0 8 * * 4"),
    ("weekly", 8, 4, "0 6 * * *", "0 8 * * 5"),
    ("weekly", 8, 5, "0 6 * * *", "0 8 * * 6"),
    ("weekly", 8, 6, "0 6 * * *", "0 8 * * 0"),
    ("weekly", 0, 6, "0 6 * * *", "0 0 * * 0"),
]


@pytest.mark.parametrize(("cadence", "send_hour", "weekday", "list_schedule", "expected"), CADENCES)
def test_cadence_cron_maps_reader_cadence_to_crontab(
    cadence: str, send_hour: int | None, weekday: int | None, list_schedule: str, expected: str
) -> None:
    assert cadence_cron(cadence, send_hour, weekday, list_schedule) == expected


def test_cadence_cron_rejects_unknown_cadence() -> None:
    with pytest.raises(ValueError, match="monthly"):
        cadence_cron("monthly", 7, 0, "0 6 * * *")


# Monday 2026-06-01 12:00 Berlin: each WEEKDAYS index lands on its own day of the following week.
WEEKLY_CADENCE = [
    (0, "mon", "2026-06-08T08:00:00+02:00"),
    (1, "tue", "2026-06-02T08:00:00+02:00"),
    (2, "wed", "2026-06-03T08:00:00+02:00"),
    (3, "thu", "2026-06-04T08:00:00+02:00"),
    (4, "fri", "2026-06-05T08:00:00+02:00"),
    (5, "sat", "2026-06-06T08:00:00+02:00"),
    (6, "sun", "2026-06-07T08:00:00+02:00"),
]


@pytest.mark.parametrize(("weekday", "name", "expected"), WEEKLY_CADENCE)
def test_weekly_cadence_weekday_index_is_monday_based(weekday: int, name: str, expected: str) -> None:
    assert WEEKDAYS[weekday] == name
    expr = cadence_cron("weekly", 8, weekday, "0 6 * * *")
    assert due_after(expr, BERLIN, "2026-06-01T12:00:00+02:00") == expected


# --- previous_due -----------------------------------------------------------------------------------------

PREVIOUS = [
    (BERLIN, "0 7 * * *", "2026-03-29T07:00:00+02:00", "2026-03-29T07:00:00+02:00"),
    (BERLIN, "0 7 * * *", "2026-03-29T06:59:00+02:00", "2026-03-28T07:00:00+01:00"),
    (BERLIN, "0 7 * * *", "2026-10-25T06:59:00+01:00", "2026-10-24T07:00:00+02:00"),
    (BERLIN, "30 2 * * *", "2026-10-25T02:45:00+01:00", "2026-10-25T02:30:00+02:00"),
    (BERLIN, "30 2 * * *", "2026-03-29T03:29:00+02:00", "2026-03-28T02:30:00+01:00"),
    (BERLIN, "30 2 * * *", "2026-03-29T03:30:00+02:00", "2026-03-29T03:30:00+02:00"),
    (NEW_YORK, "30 1 * * *", "2026-11-01T01:45:00-05:00", "2026-11-01T01:30:00-04:00"),
    (NEW_YORK, "0 9 1 * 1", "2026-07-01T08:59:00-04:00", "2026-06-29T09:00:00-04:00"),
    (NEW_YORK, "0 9 1 * 1", "2026-07-01T09:00:00-04:00", "2026-07-01T09:00:00-04:00"),
    (HAVANA, "30 0 * * *", "2026-03-08T01:29:00-04:00", "2026-03-07T00:30:00-05:00"),
    (HAVANA, "30 0 * * *", "2026-03-08T01:30:00-04:00", "2026-03-08T01:30:00-04:00"),
    (HAVANA, "30 0 * * *", "2026-11-01T00:59:00-05:00", "2026-11-01T00:30:00-04:00"),
    (SANTIAGO, "30 23 * * 6", "2027-04-04T00:00:00-04:00", "2027-04-03T23:30:00-03:00"),
    (SANTIAGO, "30 0 * * *", "2026-09-06T02:00:00-03:00", "2026-09-06T01:30:00-03:00"),
    (AUCKLAND, "30 2 * * *", "2026-09-27T03:29:00+13:00", "2026-09-26T02:30:00+12:00"),
    (AUCKLAND, "30 2 * * *", "2026-09-27T03:30:00+13:00", "2026-09-27T03:30:00+13:00"),
    (KOLKATA, "0 0 1 1 *", "2027-01-01T00:00:00+05:30", "2027-01-01T00:00:00+05:30"),
    (KOLKATA, "0 0 1 1 *", "2026-12-31T23:59:00+05:30", "2026-01-01T00:00:00+05:30"),
    (BERLIN, "*/15 * * * *", "2027-01-01T00:14:59+01:00", "2027-01-01T00:00:00+01:00"),
    (BERLIN, "0 7 29 2 *", "2028-06-01T00:00:00+02:00", "2028-02-29T07:00:00+01:00"),
    (LORD_HOWE, "15,40 2 * * *", "2026-10-04T02:42:00+11:00", "2026-10-04T02:40:00+11:00"),
    (LORD_HOWE, "15,40 2 * * *", "2026-10-04T02:50:00+11:00", "2026-10-04T02:45:00+11:00"),
]


@pytest.mark.parametrize(("zone", "expr", "at_text", "expected"), PREVIOUS)
def test_previous_due_is_last_slot_at_or_before_time(
    zone: str, expr: str, at_text: str, expected: str
) -> None:
    tz = ZoneInfo(zone)
    result = previous_due(parse_cron(expr), tz, at(at_text))
    assert result is not None
    assert result.astimezone(tz).isoformat() == expected


def test_previous_due_gives_none_when_no_slot_within_400_days() -> None:
    assert previous_due(parse_cron("0 7 29 2 *"), ZoneInfo(BERLIN), at("2027-06-01T00:00:00+02:00")) is None


# --- property ---------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    hour=st.integers(0, 23),
    minute=st.integers(0, 59),
    after=st.datetimes(
        min_value=datetime(2026, 1, 1), max_value=datetime(2028, 12, 31, 23, 59), timezones=st.just(UTC)
    ),
)
@example(zone=HAVANA, hour=0, minute=30, after=datetime(2026, 3, 7, 12, tzinfo=UTC))
@example(zone=HAVANA, hour=0, minute=30, after=datetime(2026, 11, 1, 4, 45, tzinfo=UTC))
@example(zone=SANTIAGO, hour=0, minute=0, after=datetime(2027, 9, 4, 20, tzinfo=UTC))
@example(zone=SANTIAGO, hour=23, minute=30, after=datetime(2027, 4, 4, 2, 45, tzinfo=UTC))
@example(zone=BERLIN, hour=2, minute=30, after=datetime(2026, 10, 25, 0, 45, tzinfo=UTC))
@example(zone=AUCKLAND, hour=2, minute=59, after=datetime(2027, 9, 25, 12, tzinfo=UTC))
def test_next_due_is_the_next_local_slot_strictly_after(
    zone: str, hour: int, minute: int, after: datetime
) -> None:
    tz = ZoneInfo(zone)
    cron = parse_cron(f"{minute} {hour} * * *")
    result = next_due(cron, tz, after)

    assert result > after
    assert result - after <= timedelta(hours=25)

    local = result.astimezone(tz)
    wall = datetime.combine(local.date(), time(hour, minute))
    before = wall.replace(tzinfo=tz, fold=0)
    round_trip = before.astimezone(UTC).astimezone(tz).replace(tzinfo=None)
    if round_trip == wall:
        # The wall time exists that day; if it happens twice, the first occurrence is used.
        assert local.replace(tzinfo=None) == wall
        assert local.fold == 0
    else:
        # The wall time falls in a spring-forward gap: exactly the gap later.
        gap = wall.replace(tzinfo=tz, fold=1).utcoffset() - before.utcoffset()  # type: ignore[operator]
        assert gap > timedelta(0)
        assert local.replace(tzinfo=None) == wall + gap

    # No other due instant strictly between `after` and the result.
    span = result - after
    samples = [after + span * k / 16 for k in range(16)] + [result - timedelta(minutes=1)]
    for x in samples:
        if x >= after:
            assert next_due(cron, tz, x) == result
    assert next_due(cron, tz, result - timedelta(microseconds=1)) == result
    assert previous_due(cron, tz, result) == result
    earlier = previous_due(cron, tz, result - timedelta(microseconds=1))
    assert earlier is not None
    assert earlier <= after
