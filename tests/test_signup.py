"""The readers' operations behind the pages: limits, tokens, mailto unsubscribe, purge, preferences."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from itsdangerous import BadSignature
from sqlalchemy import func, select, update

from conftest import SmtpSink
from digest import preferences, readers, signup, signup_form
from digest.models import Delivery, Event, Subscriber, Subscription
from digest.store import readers as readers_store
from digest.web import limits
from test_web import Site, open_site

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
KEYS = ["first-key-0123456789", "older-key-0123456789"]


@pytest.fixture
async def site(tmp_path: Path, database_url: str, smtp_sink: SmtpSink) -> AsyncIterator[Site]:
    async with open_site(tmp_path, database_url, smtp_sink) as s:
        yield s


def ann(lists: tuple[str, ...] = ("demo",), address: str = "ann@example.com") -> signup_form.Signup:
    return signup_form.Signup(address, lists, readers.ReaderPrefs(), readers.Consent(ip="192.0.2.1"))


# ---------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        ("203.0.113.9", "198.51.100.4", "203.0.113.9"),  # untrusted peer: header ignored
        ("10.0.0.2", "198.51.100.4", "198.51.100.4"),
        ("10.0.0.2", "198.51.100.4, 10.0.0.3", "198.51.100.4"),  # two proxies deep
        ("10.0.0.2", "6.6.6.6, 198.51.100.4", "198.51.100.4"),  # the forged leftmost entry is not taken
        ("10.0.0.2", "garbage, 198.51.100.4", "198.51.100.4"),
        ("10.0.0.2", "not-an-ip", "10.0.0.2"),
        ("10.0.0.2", None, "10.0.0.2"),
        ("127.0.0.1", "[2001:db8::1]:443", "2001:db8::1"),
        ("127.0.0.1", "198.51.100.4:5555", "198.51.100.4"),
    ],
)
def test_client_address_trusts_only_configured_proxies(
    peer: str, forwarded: str | None, expected: str
) -> None:
    trust = limits.ProxyTrust(["10.0.0.0/8", "127.0.0.1", "not a network"])
    assert trust.client_ip(peer, forwarded) == expected


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Ann", "Ann"),
        ("  Ann \t Smith\n", "Ann Smith"),
        ("Ann\r\nBcc: x@example.com", "Ann Bcc: x@example.com"),
        ("evil\u202etxt.exe\u2066", "eviltxt.exe"),
        ("nul\x00byte\x7f", "nul byte"),
        ("lone\ud800surrogate", "lone surrogate"),
        ("Zoë 李", "Zoë 李"),
        ("x" * 500, "x" * 200),
    ],
)
def test_names_lose_control_characters(raw: str, clean: str) -> None:
    assert signup_form.clean_name(raw) == clean


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({}, {"email", "list", "consent"}),
        ({"email": "ann@example.com", "list": "demo", "consent": "on"}, set()),
        ({"email": "ann@example.com", "list": ["demo", "demo"], "consent": True}, set()),
        ({"email": "ann@example.com", "list": "demo", "consent": "no"}, {"consent"}),
        ({"email": ["a@b.c"], "list": 5, "consent": True}, {"email", "list"}),
        ({"email": "ann@example.com", "list": "demo", "consent": 1, "cadence": "hourly"}, {"cadence"}),
        ({"email": "ann@example.com", "list": "demo", "consent": 1, "cadence": "daily"}, {"send_hour"}),
        (
            {"email": "ann@example.com", "list": "demo", "consent": 1, "cadence": "weekly", "send_hour": 7},
            {"weekday"},
        ),
        ({"email": "ann@example.com", "list": "demo", "consent": 1, "send_hour": "25"}, {"send_hour"}),
        ({"email": "ann@example.com", "list": "demo", "consent": 1, "send_hour": True}, {"send_hour"}),
        ({"email": "ann@example.com", "list": "demo", "consent": 1, "timezone": "Mars/Base"}, {"timezone"}),
        (
            {"email": "ann@example.com", "list": "demo", "consent": 1, "timezone": "../../etc/passwd"},
            {"timezone"},
        ),
        ({"email": "ann@example.com", "list": "demo", "consent": 1, "name": {"x": 1}}, {"name"}),
    ],
)
def test_signup_fields_are_validated_per_field(fields: dict[str, object], bad: set[str]) -> None:
    if not bad:
        parsed = signup_form.parse_signup(fields, ["demo", "tech"], readers.Consent())
        assert parsed.address == "ann@example.com" and parsed.lists == ("demo",)
        return
    with pytest.raises(signup_form.SignupInvalid) as caught:
        signup_form.parse_signup(fields, ["demo", "tech"], readers.Consent())
    assert set(caught.value.fields) == bad


def test_weekly_signup_keeps_day_hour_and_zone() -> None:
    fields = {
        "email": "ann@example.com", "list": "demo", "consent": "yes", "cadence": "weekly",
        "weekday": "wed", "send_hour": "07", "timezone": "America/New_York",
    }  # fmt: skip
    prefs = signup_form.parse_signup(fields, ["demo"], readers.Consent()).prefs
    assert (prefs.cadence, prefs.weekday, prefs.send_hour, prefs.timezone) == (
        "weekly",
        2,
        7,
        "America/New_York",
    )


class _Sub:
    def __init__(self, id: int, signup_at: datetime) -> None:
        self.id, self.signup_at = id, signup_at


def test_confirm_tokens_expire_reject_tampering_and_other_salts_and_survive_rotation() -> None:
    token = signup.confirm_token(KEYS, [_Sub(7, NOW)], NOW)  # type: ignore[list-item]
    assert "ann" not in token
    assert signup.read_confirm_token(KEYS, token, NOW + timedelta(hours=47)) == [(7, int(NOW.timestamp()))]
    assert signup.read_confirm_token(["new-key-0123456789", *KEYS], token, NOW) == [(7, int(NOW.timestamp()))]
    with pytest.raises(signup.TokenExpired) as expired:
        signup.read_confirm_token(KEYS, token, NOW + timedelta(hours=49))
    assert expired.value.pairs == [(7, int(NOW.timestamp()))]
    with pytest.raises(BadSignature):
        signup.read_confirm_token(KEYS, token[:-2] + ("AA" if token[-2:] != "AA" else "BB"), NOW)
    with pytest.raises(BadSignature):
        signup.read_confirm_token(["someone-else-0123456789"], token, NOW)
    from itsdangerous import URLSafeTimedSerializer

    foreign = URLSafeTimedSerializer(KEYS[0], salt="preferences").dumps([[7, 1]])
    with pytest.raises(BadSignature):
        signup.read_confirm_token(KEYS, foreign, NOW)
    odd = URLSafeTimedSerializer(KEYS[0], salt="confirm").dumps({"not": "pairs"})
    with pytest.raises(BadSignature):
        signup.read_confirm_token(KEYS, odd, NOW)


# ---------------------------------------------------------------- with a store


async def test_a_confirmation_goes_out_once_per_address_and_list_a_day(site: Site) -> None:
    first = await signup.request_confirmation(site.app, ann(("demo",)), NOW, method="api")
    assert first.mailed == ["demo"] and first.delivery_id
    both = await signup.request_confirmation(site.app, ann(("demo", "tech")), NOW, method="api")
    assert both.mailed == ["tech"]
    later = await signup.request_confirmation(
        site.app, ann(("demo", "tech")), NOW + timedelta(hours=23), method="api"
    )
    assert later.mailed == []
    next_day = await signup.request_confirmation(
        site.app, ann(("demo", "tech")), NOW + timedelta(hours=24, minutes=1), method="api"
    )
    assert next_day.mailed == ["demo", "tech"]


async def test_the_hourly_confirmation_budget_holds_signups_back(site: Site) -> None:
    await signup.request_confirmation(site.app, ann(), NOW, method="api", hourly_budget=1)
    held = await signup.request_confirmation(
        site.app, ann(address="bob@example.com"), NOW, method="api", hourly_budget=1
    )
    assert held.mailed == [] and held.subscription_ids
    assert await site.count(Delivery) == 1


async def test_a_suppressed_address_gets_no_confirmation_mail(site: Site) -> None:
    await signup.request_confirmation(site.app, ann(), NOW, method="api")
    async with site.app.db.write() as s:
        await s.execute(update(Subscriber).values(status="complained"))
    again = await signup.request_confirmation(site.app, ann(("tech",)), NOW, method="api")
    assert again.mailed == [] and await site.count(Delivery) == 1


async def test_confirming_twice_records_one_confirmation(site: Site) -> None:
    done = await signup.request_confirmation(site.app, ann(("demo", "tech")), NOW, method="api")
    async with site.app.db.read() as s:
        subs = [await readers_store.subscription_by_id(s, i) for i in done.subscription_ids]
    pairs = [(sub.id, int(sub.signup_at.timestamp())) for sub in subs if sub]
    first = await signup.confirm(site.app, pairs, NOW, ip="192.0.2.7", user_agent="Agent\r\nX")
    second = await signup.confirm(site.app, pairs, NOW, ip="192.0.2.8", user_agent=None)
    assert first.lists == second.lists == ("Demo Digest", "Tech Weekly")
    sub = await site.sub("ann@example.com")
    assert sub is not None and sub.confirm_ip == "192.0.2.7" and sub.confirm_user_agent == "Agent X"
    assert (await site.event_kinds("ann@example.com")).count("confirmed") == 2


async def test_a_link_from_an_earlier_signup_cannot_confirm_a_later_one(site: Site) -> None:
    done = await signup.request_confirmation(site.app, ann(), NOW, method="api")
    sub_id = done.subscription_ids[0]
    old_pair = [(sub_id, int(NOW.timestamp()))]
    async with site.app.db.write() as s:
        row = await readers_store.subscription_by_id(s, sub_id)
        assert row is not None
        await readers.unsubscribe(s, row, "link", NOW)
    await signup.request_confirmation(site.app, ann(), NOW + timedelta(days=2), method="api")
    assert (await signup.confirm(site.app, old_pair, NOW, ip=None, user_agent=None)).lists == ()
    assert (await site.sub("ann@example.com")).status == "pending"  # type: ignore[union-attr]


async def test_pending_signups_are_purged_after_seven_days_and_readers_with_history_are_kept(
    site: Site,
) -> None:
    await signup.request_confirmation(site.app, ann(), NOW - timedelta(days=8), method="api")
    await signup.request_confirmation(
        site.app, ann(address="new@example.com"), NOW - timedelta(days=2), method="api"
    )
    kept = await site.add_reader("kept@example.com", now=NOW - timedelta(days=30))
    async with site.app.db.write() as s:
        row = await readers_store.subscription_by_id(s, kept.id)
        assert row is not None
        await readers.unsubscribe(s, row, "link", NOW - timedelta(days=20))
    await signup.request_confirmation(
        site.app, ann(address="kept@example.com"), NOW - timedelta(days=9), method="api"
    )
    removed = await signup.purge_stale_signups(site.app, NOW)
    assert removed == 2
    async with site.app.db.read() as s:
        emails = sorted(r.email for r in (await s.execute(select(Subscriber))).scalars())
        kinds = [e.kind for e in (await s.execute(select(Event))).scalars()]
    assert emails == ["kept@example.com", "new@example.com"]
    assert "unsubscribed" in kinds
    assert await site.sub("new@example.com") is not None


async def test_mail_to_the_unsubscribe_address_unsubscribes_and_never_answers(site: Site) -> None:
    sub = await site.add_reader("ann@example.com")
    raw = (
        b"From: Ann <ann@example.com>\r\nTo: unsub+" + sub.token.encode() + b"@news.example.com\r\n"
        b"Subject: unsubscribe\r\n\r\nplease\r\n"
    )
    assert (
        await readers.handle_unsubscribe_mail(site.app, raw, f"unsub+{sub.token}@news.example.com", NOW)
        == "unsubscribed"
    )
    left = await site.sub("ann@example.com")
    assert left is not None and left.status == "unsubscribed" and left.unsubscribe_method == "mailto"
    assert await readers.handle_unsubscribe_mail(site.app, raw, None, NOW) == "already"
    assert site.sink.messages == []
    bob = await site.add_reader("bob@example.com")
    folded = f"UNSUB+{bob.token.lower()}@NEWS.EXAMPLE.COM"
    assert (
        await readers.handle_unsubscribe_mail(site.app, b"Subject: x\r\n\r\n", folded, NOW) == "unsubscribed"
    )
    assert (
        await readers.handle_unsubscribe_mail(site.app, raw, "unsub+" + "x" * 43 + "@news.example.com", NOW)
        == "unknown"
    )
    assert (
        await readers.handle_unsubscribe_mail(site.app, raw, "postmaster@news.example.com", NOW)
        == "not-unsubscribe"
    )
    header_only = b"Delivered-To: unsub+" + sub.token.encode() + b"@news.example.com\r\n\r\n"
    assert await readers.handle_unsubscribe_mail(site.app, header_only, None, NOW) == "already"


async def test_a_schedule_change_never_brings_a_second_digest_the_same_local_day(site: Site) -> None:
    sub = await site.add_reader("ann@example.com", now=NOW - timedelta(days=3))
    berlin = ZoneInfo("Europe/Berlin")
    morning = datetime(2026, 11, 27, 7, 0, tzinfo=berlin)
    async with site.app.db.write() as s:
        await s.execute(update(Subscription).where(Subscription.id == sub.id).values(last_digest_at=morning))
    noon = datetime(2026, 11, 27, 12, 0, tzinfo=berlin)
    prefs = readers.ReaderPrefs(cadence="daily", send_hour=18, timezone="Europe/Berlin")
    outcome = await preferences.change_preferences(
        site.app, sub.token, ["demo"], prefs, noon, consent=readers.Consent()
    )
    assert outcome is not None and outcome.changed == ["demo"]
    after = await site.sub("ann@example.com")
    assert after is not None and after.next_due_at is not None
    assert after.next_due_at.astimezone(berlin) == datetime(2026, 11, 28, 18, 0, tzinfo=berlin)
    prefs = readers.ReaderPrefs(cadence="daily", send_hour=19, timezone="Europe/Berlin")
    next_day = datetime(2026, 11, 28, 9, 0, tzinfo=berlin)
    await preferences.change_preferences(
        site.app, sub.token, ["demo"], prefs, next_day, consent=readers.Consent()
    )
    after = await site.sub("ann@example.com")
    assert after is not None and after.next_due_at is not None
    assert after.next_due_at.astimezone(berlin) == datetime(2026, 11, 28, 19, 0, tzinfo=berlin)


async def test_unchanged_preferences_record_nothing(site: Site) -> None:
    sub = await site.add_reader("ann@example.com")
    outcome = await preferences.change_preferences(
        site.app, sub.token, ["demo"], readers.ReaderPrefs(), NOW, consent=readers.Consent()
    )
    assert outcome is not None and outcome.changed == outcome.left == outcome.confirmation_for == []
    async with site.app.db.read() as s:
        n = (
            await s.execute(
                select(func.count()).select_from(Event).where(Event.kind == "preferences_changed")
            )
        ).scalar_one()
    assert n == 0
    assert (
        await preferences.change_preferences(
            site.app, "nope", [], readers.ReaderPrefs(), NOW, consent=readers.Consent()
        )
        is None
    )
