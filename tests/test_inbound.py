"""Bounces, complaints and mailto unsubscribes at the bounce inbox (STANDARDS items 18, 23, 29-34)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from digest.bounce_rules import BounceClass, bounce_score, classify, complaint_action, complaint_rate
from digest.inbound import InboundVerdict, analyse, verp_target
from digest.tokens import verp_address

FIXTURES = Path(__file__).parent / "fixtures" / "bounces"
KEY = "test-key"
DOMAIN = "bounce.example.com"
TOKEN = "rT3kq9Vb2LxP0sWm7yHc4NdA6eZf1GuJ8oKiQ5vBn_E"
REDACTED_TOKEN = "Zy8-wPq3Lm0Nc7Rt2Vx5Bk9Hd4Fg6Js1Ua_oEiKlMnQ"
HARD, SOFT, POLICY, DELAYED, UNKNOWN = (
    BounceClass.HARD,
    BounceClass.SOFT,
    BounceClass.POLICY,
    BounceClass.DELAYED,
    BounceClass.UNKNOWN,
)


def verp(delivery_id: int) -> str:
    return verp_address(delivery_id, KEY, DOMAIN)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def parse(raw: bytes) -> EmailMessage:
    msg = message_from_bytes(raw, _class=EmailMessage, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


# --- classification (item 31) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "smtp_code", "diagnostic", "expected"),
    [
        # item 31, hard
        ("5.1.1", 550, "", HARD),
        ("5.1.2", 550, "", HARD),
        ("5.1.3", 553, "", HARD),
        ("5.1.6", 550, "", HARD),
        ("5.1.10", 550, "", HARD),
        ("5.2.1", 550, "", HARD),
        # about the sender, not the recipient: never suppress
        ("5.1.7", 553, "", POLICY),
        ("5.1.8", 553, "", POLICY),
        # soft: every 4.x.x, and 5.2.2
        ("4.2.2", 452, "", SOFT),
        ("4.4.7", 451, "", SOFT),
        ("4.7.1", 450, "", SOFT),
        ("4.0.0", None, "", SOFT),
        ("5.2.2", 552, "", SOFT),
        # policy or authentication: never suppress
        ("5.2.3", 552, "", POLICY),
        ("5.3.4", 552, "", POLICY),
        ("5.7.1", 550, "", POLICY),
        ("5.7.9", 554, "", POLICY),
        ("5.7.26", 550, "", POLICY),
        # bare basic codes: 4xx and 552 soft, other 5xx prove nothing
        (None, 552, "", SOFT),
        (None, 421, "", SOFT),
        (None, 450, "", SOFT),
        (None, 451, "", SOFT),
        (None, 452, "", SOFT),
        (None, 550, "", UNKNOWN),
        (None, 553, "", UNKNOWN),
        (None, 554, "", UNKNOWN),
        # other 5.x.x outside the lists, successes and nothing at all
        ("5.0.0", 550, "", UNKNOWN),
        ("5.4.4", None, "", UNKNOWN),
        ("2.0.0", 250, "", UNKNOWN),
        (None, None, "", UNKNOWN),
        # the enhanced code wins over the basic code
        ("5.2.2", 550, "", SOFT),
        ("5.7.1", 452, "", POLICY),
        ("5.1.1", 554, "", HARD),
        # no Status: the enhanced code comes from the diagnostic text
        (None, None, "smtp; 550-5.1.1 The email account that you tried to reach does not exist", HARD),
        (None, 550, "550 5.7.26 Unauthenticated email is not accepted", POLICY),
        (None, None, "Remote server returned '550 #5.1.10 RESOLVER.ADR.RecipientNotFound'", HARD),
        # no enhanced code anywhere: the basic code leading the diagnostic decides, unless words do
        (None, None, "smtp; 552 Mailbox full", SOFT),
        (None, None, "smtp; 550 Requested action not taken: mailbox unavailable", HARD),
        (None, None, "smtp; 550 Requested action not taken", UNKNOWN),
        # a generic X.0.0 code proves nothing: the remote server's words or specific code decide
        ("5.0.0", None, "550 5.1.1 <gone@example.net>: User unknown", HARD),
        ("5.0.0", None, "550 User unknown", HARD),
        ("5.0.0", None, "550 5.0.0 User unknown", HARD),
        ("4.0.0", None, "550 5.1.1 unknown", HARD),
        ("5.0.0", None, "550 Requested action not taken", UNKNOWN),
        # a comment after the Status code counts as words; an IP address is not a status code
        ("5.1.1 (bad destination mailbox address)", None, "", HARD),
        ("5.0.0 (recipient reached disk quota)", None, "", SOFT),
        (None, None, "host [5.1.1.9] said: 550 mailbox unavailable", HARD),
        (None, None, "host [5.1.1.9] said: 550 sorry", UNKNOWN),
        # the remote server's reply wins over a generic or conflicting Status
        ("5.1.1", None, "550 5.7.1 IP address blacklisted", POLICY),
        ("5.1.1", None, "552 5.2.2 Over quota", SOFT),
        (
            "5.1.3",
            None,
            "554 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
            POLICY,
        ),
        (
            "5.2.1",
            None,
            "550-5.2.1 The email account that you tried to reach is receiving mail at a rate that "
            "prevents additional messages from being delivered",
            SOFT,
        ),
        ("5.1.1", None, "550 Requested action not taken", HARD),
        # providers' phrasings where no code says anything
        ("5.5.0", None, "550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302)", HARD),
        ("5.4.1", None, "550 5.4.1 Recipient address rejected: Access denied. AS(201806281)", HARD),
        ("5.7.1", None, "554 5.7.1 <a@example.org>: Recipient address rejected: Access denied", POLICY),
        (None, None, "550 5.4.1 Sorry, no mailbox here", HARD),
        (None, None, "554 delivery error: dd This user doesn't have a yahoo.com account", HARD),
        (None, None, "550 Account disabled", HARD),
        (None, None, "421 4.7.0 Try again later, closing connection. (GREYLISTED)", SOFT),
        (None, None, "550 Message rejected: your IP is listed at bl.example.net", POLICY),
        (None, None, "550 Too many messages from your host, rate limited", SOFT),
    ],
)
def test_classifier_follows_item_31(
    status: str | None, smtp_code: int | None, diagnostic: str, expected: BounceClass
) -> None:
    assert classify(status, smtp_code, diagnostic) is expected


# --- every fixture ends in the right verdict ---------------------------------------------------------

ENVELOPE = {"exim-dsn.eml": verp(1003), "exchange-ndr-5.1.10.eml": verp(1005)}


@pytest.mark.parametrize(
    ("name", "kind", "delivery_id", "token", "classes"),
    [
        ("postfix-5.1.1.eml", "bounce", 1001, None, (HARD,)),
        ("exim-text-bounce.eml", "bounce", 1002, None, (HARD,)),
        ("exim-dsn.eml", "bounce", 1003, None, (HARD,)),
        ("sendmail-dsn.eml", "bounce", 1004, None, (HARD,)),
        ("exchange-ndr-5.1.10.eml", "bounce", 1005, None, (HARD,)),
        ("gmail-5.1.1-multiline.eml", "bounce", 1006, None, (HARD,)),
        ("yahoo-5.7.9-policy.eml", "bounce", 1007, None, (POLICY,)),
        ("delayed-4.4.7.eml", "delayed", 1008, None, (DELAYED,)),
        ("mailbox-full-5.2.2.eml", "bounce", 1009, None, (SOFT,)),
        ("out-of-office.eml", "auto_reply", 1010, None, ()),
        ("arf-complaint-yahoo.eml", "complaint", 1011, TOKEN, ()),
        ("arf-complaint-redacted.eml", "complaint", None, REDACTED_TOKEN, ()),
        ("dsn-unknown-address.eml", "bounce", 1013, None, (HARD,)),
        ("forged-verp.eml", "ignored", None, None, ()),
        ("verp-case-folded.eml", "bounce", 1015, None, (HARD,)),
        ("mailto-unsubscribe.eml", "unsubscribe", None, TOKEN, ()),
        ("multi-recipient.eml", "bounce", 1017, None, (HARD, DELAYED)),
    ],
)
def test_each_fixture_ends_in_the_right_verdict(
    name: str, kind: str, delivery_id: int | None, token: str | None, classes: tuple[BounceClass, ...]
) -> None:
    verdict = analyse(fixture(name), ENVELOPE.get(name), [KEY])
    assert (verdict.kind, verdict.delivery_id, verdict.token) == (kind, delivery_id, token), verdict.reason
    assert tuple(r.bounce_class for r in verdict.recipients) == classes
    assert verdict.reason and "\n" not in verdict.reason


def test_every_fixture_is_covered_by_the_table() -> None:
    assert len(list(FIXTURES.glob("*.eml"))) == 17


def test_dsn_recipient_blocks_are_read_field_by_field() -> None:
    verdict = analyse(fixture("multi-recipient.eml"), None, [KEY])
    failed, delayed = verdict.recipients
    assert (failed.final_recipient, failed.action, failed.status) == ("nouser@example.org", "failed", "5.1.1")
    assert failed.diagnostic.startswith("550 5.1.1 <nouser@example.org>: Recipient address rejected")
    assert (delayed.final_recipient, delayed.action, delayed.status) == (
        "full@example.org",
        "delayed",
        "4.2.2",
    )
    assert verdict.bounce_class is HARD


def test_gmail_multiline_diagnostic_is_unfolded_into_one_line() -> None:
    (report,) = analyse(fixture("gmail-5.1.1-multiline.eml"), None, [KEY]).recipients
    assert report.diagnostic.startswith("550-5.1.1 The email account that you tried to reach does not exist.")
    assert "\n" not in report.diagnostic and "  " not in report.diagnostic
    assert report.diagnostic.endswith("- gsmtp")


def test_exim_generic_status_is_refined_by_the_diagnostic() -> None:
    (report,) = analyse(fixture("exim-dsn.eml"), verp(1003), [KEY]).recipients
    assert report.status == "5.0.0"
    assert report.bounce_class is HARD


def test_text_bounce_ignores_codes_in_the_quoted_original_message() -> None:
    (report,) = analyse(fixture("exim-text-bounce.eml"), None, [KEY]).recipients
    assert (report.final_recipient, report.status) == ("disabled@example.net", "5.2.1")


def test_policy_rejection_never_suppresses_the_reader() -> None:
    verdict = analyse(fixture("yahoo-5.7.9-policy.eml"), None, [KEY])
    assert verdict.bounce_class is POLICY
    now = datetime(2025, 3, 3, 8, tzinfo=UTC)
    assert bounce_score([(now, POLICY)] * 20, now) == (0.0, False)


def test_dsn_for_an_address_we_never_sent_to_still_counts_against_its_delivery() -> None:
    verdict = analyse(fixture("dsn-unknown-address.eml"), None, [KEY])
    assert verdict.delivery_id == 1013
    assert verdict.recipients[0].final_recipient == "stranger@elsewhere.example"


def test_forged_verp_address_is_ignored_and_says_so() -> None:
    verdict = analyse(fixture("forged-verp.eml"), None, [KEY])
    assert verdict == InboundVerdict("ignored", None, None, (), "forged VERP address (bad HMAC)")


def test_valid_dsn_sent_to_a_tampered_envelope_address_is_ignored() -> None:
    tampered = verp(1001).replace("bounces+1001.", "bounces+1002.")
    verdict = analyse(fixture("postfix-5.1.1.eml"), tampered, [KEY])
    assert (verdict.kind, verdict.delivery_id) == ("ignored", None)
    assert "forged" in verdict.reason


def test_dsn_is_ignored_under_a_key_we_do_not_hold_and_accepted_under_a_rotated_one() -> None:
    assert analyse(fixture("postfix-5.1.1.eml"), None, ["other-key"]).kind == "ignored"
    assert analyse(fixture("postfix-5.1.1.eml"), None, ["new-key", KEY]).delivery_id == 1001


def test_case_folded_envelope_recipient_still_identifies_the_delivery() -> None:
    verdict = analyse(fixture("postfix-5.1.1.eml"), verp(1001).upper(), [KEY])
    assert (verdict.kind, verdict.delivery_id) == ("bounce", 1001)


def test_mail_to_an_address_that_is_not_ours_is_ignored() -> None:
    verdict = analyse(fixture("postfix-5.1.1.eml"), "postmaster@bounce.example.com", [KEY])
    assert (verdict.kind, verdict.delivery_id) == ("ignored", None)
    assert verdict.reason == "not addressed to a VERP or unsubscribe address"


def test_malformed_verp_address_is_ignored() -> None:
    verdict = analyse(fixture("postfix-5.1.1.eml"), f"bounces+abc@{DOMAIN}", [KEY])
    assert verdict.reason == "malformed VERP address"


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(sorted(p.name for p in FIXTURES.glob("*.eml"))), cut=st.data())
def test_truncated_or_garbled_mail_never_crashes_the_inbox(name: str, cut: st.DataObject) -> None:
    raw = fixture(name)
    start = cut.draw(st.integers(0, len(raw)))
    end = cut.draw(st.integers(start, min(len(raw), start + 400)))
    junk = cut.draw(st.binary(max_size=40))
    assert isinstance(analyse(raw[:start] + junk + raw[end:], None, [KEY]), InboundVerdict)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=2000))
def test_arbitrary_bytes_never_crash_the_inbox(raw: bytes) -> None:
    assert isinstance(analyse(raw, verp(1), [KEY]), InboundVerdict)


# --- where the VERP address is read from -------------------------------------------------------------


def headers(*lines: str, body: str = "Hello.\n") -> bytes:
    return ("\n".join((*lines, "MIME-Version: 1.0", "Content-Type: text/plain", "", body))).encode()


def test_verp_target_prefers_delivered_to_then_x_original_to_then_to() -> None:
    raw = headers(
        f"To: Someone <someone@example.org>, {verp(3)}",
        f"X-Original-To: {verp(2)}",
        "Delivered-To: fbl@bounce.example.com",
        f"Delivered-To: {verp(1)}",
    )
    assert verp_target(None, parse(raw)) == verp(1)
    assert verp_target(None, parse(headers(f"To: {verp(3)}", f"X-Original-To: {verp(2)}"))) == verp(2)
    assert verp_target(None, parse(headers(f"To: News <{verp(3)}>"))) == verp(3)
    assert verp_target(None, parse(headers(f"To: unsub+{TOKEN}@{DOMAIN}"))) == f"unsub+{TOKEN}@{DOMAIN}"
    assert verp_target(None, parse(headers("To: reader@example.org"))) is None


def test_a_given_envelope_recipient_is_authoritative_over_headers() -> None:
    msg = parse(headers(f"Delivered-To: {verp(1)}"))
    assert verp_target(f"<{verp(2)}>", msg) == verp(2)
    assert verp_target("fbl@bounce.example.com", msg) is None


# --- auto-replies ------------------------------------------------------------------------------------


def test_out_of_office_reply_is_not_a_bounce() -> None:
    verdict = analyse(fixture("out-of-office.eml"), None, [KEY])
    assert verdict.kind == "auto_reply"
    assert verdict.recipients == ()


@pytest.mark.parametrize(
    "marker",
    [
        "Auto-Submitted: auto-replied",
        "X-Autoreply: yes",
        "Subject: Out of Office",
        "Subject: Automatische Antwort: Ihre Nachricht",
        "Precedence: auto_reply",
    ],
)
def test_auto_replies_to_the_return_path_are_recognised(marker: str) -> None:
    raw = headers(f"To: {verp(7)}", "From: reader@example.org", marker, body="Back on Monday.\n")
    verdict = analyse(raw, None, [KEY])
    assert (verdict.kind, verdict.delivery_id) == ("auto_reply", 7)


@pytest.mark.parametrize(
    ("marker", "sender"),
    [("Auto-Submitted: auto-generated", None), ("X-Nothing: here", ""), ("Return-Path: <>", None)],
)
def test_an_automatic_message_that_says_nothing_readable_is_unparsed_not_an_auto_reply(
    marker: str, sender: str | None
) -> None:
    raw = headers(
        f"To: {verp(7)}", "From: daemon@example.org", "Subject: Notice", marker, body="Something.\n"
    )
    verdict = analyse(raw, None, [KEY], envelope_sender=sender)
    assert (verdict.kind, verdict.delivery_id) == ("unparsed", 7)
    assert "reports no failure we can read" in verdict.reason


def test_human_reply_to_the_return_path_is_ignored() -> None:
    raw = headers(f"To: {verp(7)}", "From: reader@example.org", "Subject: Re: digest", body="Thanks!\n")
    verdict = analyse(raw, None, [KEY], envelope_sender="reader@example.org")
    assert (verdict.kind, verdict.delivery_id) == ("ignored", 7)


# --- DSN edge cases ----------------------------------------------------------------------------------


def test_dsn_without_status_is_classified_from_its_diagnostic() -> None:
    raw = fixture("postfix-5.1.1.eml").replace(b"Status: 5.1.1\n", b"")
    (report,) = analyse(raw, None, [KEY]).recipients
    assert (report.status, report.bounce_class) == ("5.1.1", HARD)


def test_dsn_reporting_only_successful_delivery_is_ignored() -> None:
    raw = (
        fixture("postfix-5.1.1.eml")
        .replace(b"Action: failed", b"Action: delivered")
        .replace(b"Status: 5.1.1", b"Status: 2.0.0")
    )
    verdict = analyse(raw, None, [KEY])
    assert (verdict.kind, verdict.delivery_id) == ("ignored", 1001)


# --- complaints (ARF, RFC 5965) -----------------------------------------------------------------------


def test_complaint_sent_to_the_verp_address_takes_its_id_from_there() -> None:
    verdict = analyse(fixture("arf-complaint-yahoo.eml"), verp(2000), [KEY])
    assert (verdict.kind, verdict.delivery_id) == ("complaint", 2000)
    assert "VERP envelope recipient" in verdict.reason


def test_complaint_falls_back_to_the_original_return_path() -> None:
    raw = fixture("arf-complaint-yahoo.eml").replace(b"Original-Mail-From:", b"X-Removed:")
    verdict = analyse(raw, None, [KEY])
    assert (verdict.kind, verdict.delivery_id, verdict.token) == ("complaint", 1011, TOKEN)
    assert "Return-Path" in verdict.reason


def test_complaint_with_a_forged_verp_address_is_ignored() -> None:
    forged = verp(1011).split("@")[0].split(".")[1]
    raw = fixture("arf-complaint-yahoo.eml").replace(forged.encode(), b"0123456789")
    verdict = analyse(raw, None, [KEY])
    assert (verdict.kind, verdict.delivery_id) == ("ignored", None)


def test_not_spam_feedback_is_not_a_complaint() -> None:
    raw = fixture("arf-complaint-yahoo.eml").replace(b"Feedback-Type: abuse", b"Feedback-Type: not-spam")
    assert analyse(raw, None, [KEY]).kind == "ignored"


def test_complaint_we_cannot_identify_is_ignored() -> None:
    raw = fixture("arf-complaint-redacted.eml").replace(b"List-Unsubscribe:", b"X-Removed:")
    verdict = analyse(raw, None, [KEY])
    assert verdict.reason == "complaint for a message we cannot identify"


# --- mailto unsubscribes (item 18) -------------------------------------------------------------------


def test_mailto_unsubscribe_from_a_person_may_be_answered() -> None:
    verdict = analyse(fixture("mailto-unsubscribe.eml"), None, [KEY])
    assert (verdict.kind, verdict.token, verdict.may_reply) == ("unsubscribe", TOKEN, True)


def test_auto_submitted_unsubscribe_acts_but_is_never_answered() -> None:
    raw = b"Auto-Submitted: auto-generated\n" + fixture("mailto-unsubscribe.eml")
    verdict = analyse(raw, None, [KEY])
    assert (verdict.kind, verdict.token, verdict.may_reply) == ("unsubscribe", TOKEN, False)


def test_null_sender_unsubscribe_acts_but_is_never_answered() -> None:
    raw = fixture("mailto-unsubscribe.eml")
    verdict = analyse(raw, f"unsub+{TOKEN}@{DOMAIN}", [KEY], envelope_sender="<>")
    assert (verdict.kind, verdict.token, verdict.may_reply) == ("unsubscribe", TOKEN, False)


def test_unsubscribe_keeps_the_case_of_its_token() -> None:
    verdict = analyse(fixture("mailto-unsubscribe.eml"), f"UNSUB+{TOKEN}@BOUNCE.EXAMPLE.COM", [KEY])
    assert verdict.token == TOKEN


def test_bounce_sent_to_the_unsubscribe_address_unsubscribes_nobody() -> None:
    verdict = analyse(fixture("postfix-5.1.1.eml"), f"unsub+{TOKEN}@{DOMAIN}", [KEY])
    assert (verdict.kind, verdict.token) == ("ignored", None)


def test_malformed_unsubscribe_address_is_ignored() -> None:
    verdict = analyse(fixture("mailto-unsubscribe.eml"), f"unsub+short@{DOMAIN}", [KEY])
    assert verdict.reason == "malformed unsubscribe address"


# --- soft-bounce score over a fake clock (item 32) ----------------------------------------------------

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)


def daily(n: int, start: datetime = T0, klass: BounceClass = SOFT) -> list[tuple[datetime, BounceClass]]:
    return [(start + timedelta(days=d), klass) for d in range(n)]


def test_several_soft_bounces_on_one_day_count_once() -> None:
    events = [(T0 + timedelta(hours=h), SOFT) for h in range(0, 14, 2)]
    assert bounce_score(events, T0 + timedelta(hours=15)) == (0.5, False)


def test_ten_daily_soft_bounces_reach_the_limit_without_exceeding_it() -> None:
    assert bounce_score(daily(10), T0 + timedelta(days=9, hours=1)) == (5.0, False)


def test_eleven_daily_soft_bounces_suppress() -> None:
    assert bounce_score(daily(11), T0 + timedelta(days=10, hours=1)) == (5.5, True)


def test_seven_quiet_days_reset_the_score() -> None:
    first = daily(8)
    second = daily(4, start=T0 + timedelta(days=7 + 7))  # the last of `first` is day 7
    now = T0 + timedelta(days=17, hours=1)
    assert bounce_score(first + second, now) == (2.0, False)
    assert bounce_score(first, T0 + timedelta(days=7 + 7)) == (0.0, False)
    assert bounce_score(first, T0 + timedelta(days=7 + 6)) == (4.0, False)


def test_without_the_quiet_gap_the_same_bounces_suppress() -> None:
    assert bounce_score(daily(12), T0 + timedelta(days=11, hours=1)) == (6.0, True)


def test_one_hard_bounce_suppresses_at_once() -> None:
    assert bounce_score([(T0, HARD)], T0) == (1.0, True)


def test_suppression_stays_once_reached() -> None:
    score, suppress = bounce_score([(T0, HARD)], T0 + timedelta(days=30))
    assert (score, suppress) == (0.0, True)


def test_policy_and_delayed_events_do_not_score() -> None:
    events = daily(20, klass=POLICY) + daily(20, klass=DELAYED)
    assert bounce_score(events, T0 + timedelta(days=20)) == (0.0, False)


def test_a_mailbox_that_keeps_failing_for_unknown_reasons_is_suppressed_like_a_soft_one() -> None:
    assert bounce_score(daily(10, klass=UNKNOWN), T0 + timedelta(days=9, hours=1)) == (5.0, False)
    assert bounce_score(daily(11, klass=UNKNOWN), T0 + timedelta(days=10, hours=1)) == (5.5, True)


def test_score_ignores_event_order_and_future_events() -> None:
    events = list(reversed(daily(11)))
    assert bounce_score(events, T0 + timedelta(days=10, hours=1)) == (5.5, True)
    assert bounce_score(events, T0 + timedelta(days=4, hours=1)) == (2.5, False)


def test_score_weights_and_limit_are_configurable() -> None:
    assert bounce_score(daily(3), T0 + timedelta(days=2), soft=1.0, limit=2.5) == (3.0, True)


# --- complaint rate (item 23) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("complaints", "delivered", "expected"),
    [
        (0, 10_000, "ok"),
        (9, 10_000, "ok"),
        (10, 10_000, "warn"),  # 0.1%
        (25, 10_000, "warn"),  # 0.25%
        (29, 10_000, "warn"),
        (30, 10_000, "pause"),  # 0.3%
        (3, 1_000, "pause"),
        (31, 10_000, "pause"),
        (0, 0, "ok"),
        (1, 0, "pause"),
    ],
)
def test_complaint_rate_warns_at_a_tenth_and_pauses_at_three_tenths_of_a_percent(
    complaints: int, delivered: int, expected: str
) -> None:
    assert complaint_action(complaint_rate(complaints, delivered)) == expected


def test_complaint_rate_is_complaints_per_delivered_message() -> None:
    assert complaint_rate(25, 10_000) == pytest.approx(0.0025)


def test_complaint_thresholds_are_configurable_and_checked() -> None:
    assert complaint_action(0.0025, warn=0.002, pause=0.0025) == "pause"
    with pytest.raises(ValueError, match="warn <= pause"):
        complaint_action(0.0, warn=0.01, pause=0.001)
    with pytest.raises(ValueError, match="negative"):
        complaint_rate(-1, 10)


# --- real-world shapes (the whole corpus is tests/test_bounce_corpus.py) ------------------------------

REAL = FIXTURES / "real-world"


def test_a_dsn_whose_only_recipient_is_in_the_first_block_is_read() -> None:
    verdict = analyse((REAL / "aol-first-block-only.eml").read_bytes(), verp(1), [KEY])
    assert [(r.recipient, r.bounce_class) for r in verdict.recipients] == [("gone@aol.com", HARD)]


def test_the_recipient_recorded_is_the_one_we_sent_to_not_the_internal_final_one() -> None:
    (report,) = analyse((FIXTURES / "flufl" / "dsn_01.txt").read_bytes(), verp(1), [KEY]).recipients
    assert (report.recipient, report.final_recipient) == ("userx@example.com", "userx@sims-ms-daemon")
    assert (report.bounce_class, report.reason) == (SOFT, "mailbox full")


def test_exims_envelope_to_header_names_the_delivery_in_a_mailbox() -> None:
    raw = (REAL / "exim-envelope-to.eml").read_bytes()
    assert verp_target(None, parse(raw)) == verp(1101)
    assert analyse(raw, None, [KEY]).delivery_id == 1101


def test_a_latin1_byte_in_a_diagnostic_is_read_as_latin1() -> None:
    (report,) = analyse((REAL / "latin1-diagnostic.eml").read_bytes(), verp(1), [KEY]).recipients
    assert report.diagnostic.endswith("Empfänger unbekannt") and report.bounce_class is HARD


def test_the_status_field_loses_to_what_the_remote_server_said() -> None:
    for name, klass, reason in [
        ("conflict-5.1.1-over-blacklisted-ip.eml", POLICY, "blocked by the receiver"),
        ("conflict-5.1.1-over-quota.eml", SOFT, "mailbox full"),
        ("conflict-5.1.3-spamhaus.eml", POLICY, "blocked by the receiver"),
        ("gmail-5.2.1-rate-limited.eml", SOFT, "rate limited"),
    ]:
        (report,) = analyse((REAL / name).read_bytes(), verp(1), [KEY]).recipients
        assert (report.bounce_class, report.reason) == (klass, reason), name
        assert "in the reply" in report.why


def test_a_provider_delivery_notice_is_not_a_bounce() -> None:
    verdict = analyse((REAL / "ses-delivery-notice.eml").read_bytes(), None, [KEY])
    assert verdict.kind == "ignored" and "Delivery" in verdict.reason


def test_a_jmrp_report_is_a_complaint_identified_by_the_original_return_path() -> None:
    verdict = analyse((REAL / "jmrp-complaint.eml").read_bytes(), None, [KEY])
    assert (verdict.kind, verdict.delivery_id, verdict.token) == ("complaint", 1114, TOKEN)
