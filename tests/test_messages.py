"""Message bytes from prepare() + assemble() on real rendered editions (STANDARDS sections A and B)."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import re
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage, Message
from email.utils import parsedate_to_datetime

import lxml.html
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from digest import messages
from digest.assembly import sender_id as _sender_id
from digest.rendering import TOKEN_PLACEHOLDER, Templates, default_templates_dir, render_edition
from digest.tokens import new_subscription_token
from digest.views import ArticleView, Branding, EditionView, Rendered

DOMAIN = "news.example.com"
BASE_URL = f"https://{DOMAIN}"
FROM = messages.format_address(f"digest@{DOMAIN}", "Harbour Town News")
TO = messages.format_address("reader@example.org", "Aroha Ngata")
SUBJECT = "Weekly Digest — café ☕"
DATE = datetime(2026, 3, 2, 7, 0, 5, tzinfo=UTC)
LONG_TOKEN = "T0k-_" * 24  # 120 URL-safe characters
MESSAGE_ID = re.compile(r"^<[^@\s>]+@news\.example\.com>$")
LIST_ID = re.compile(r"<[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+>")
FEEDBACK_ID = re.compile(r"^([^:]*:){0,3}[A-Za-z0-9_-]{5,15}$")
TEXT_URL = re.compile(r"https?://[^\s<>\]\)]+")
BARE_LF = re.compile(rb"(?<!\r)\n")
BARE_CR = re.compile(rb"\r(?!\n)")
REQUIRED = ("Date", "From", "To", "Subject", "Message-ID", "MIME-Version")
# What clean_header_value() promises: controls (and the line separators str.splitlines() honours)
# become one space, then the value is trimmed.
CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]+")
INJECTIONS = [
    "x\r\nBcc: a@evil.test",
    "x\n",
    "=?utf-8?q?=0A?=Bcc: a@evil.test",
    "x\x00Bcc: a@evil.test",
    "x\u2028Bcc: a@evil.test",
    "x\x85Bcc: a@evil.test",
    "café =?utf-8?q?=0A?=Bcc: a@evil.test",
    "=?utf-8?q?=0D=0A?=Bcc: a@evil.test" + " and a subject long enough to need folding" * 2,
]


# Fixtures: real editions rendered with the shipped templates


def article(n: int, **changes: object) -> ArticleView:
    base = ArticleView(
        title=f"Council approves the new ferry timetable, story {n}",
        url=f"https://harbourtown.example.org/news/{n}?ref=feed&section=local",
        source="Harbour Town Gazette",
        published_at=datetime(2026, 3, 1, 7, 30, tzinfo=UTC) - timedelta(hours=n),
        summary=f"Aroha Ngata, who chairs the transport committee, said change {n} takes effect in April.",
        image_url=f"https://images.example.org/ferry-{n}.jpg" if n % 2 == 0 else None,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def edition(**changes: object) -> EditionView:
    base = EditionView(
        list_slug="harbour-weekly",
        list_name="Harbour Town Weekly",
        list_description="Local news from the harbour, every Monday",
        language="en",
        direction="ltr",
        edition_date=date(2026, 3, 2),
        articles=[article(n) for n in range(3)],
        more_count=5,
        archive_url=f"{BASE_URL}/lists/harbour-weekly",
        web_url=f"{BASE_URL}/editions/17",
        base_url=BASE_URL,
        postal_address="Harbour Town News, 12 Quay Street, Harbour Town 4021, New Zealand",
        contact="editor@news.example.com",
        branding=Branding(accent="#0b6e4f", logo_url=f"{BASE_URL}/static/logo.png"),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def editions() -> dict[str, EditionView]:
    latin = edition(
        list_name="Café Hebdo",
        list_description="Les nouvelles du port, chaque lundi",
        language="fr",
        articles=[
            article(
                n,
                title=f"Le conseil approuve les horaires du traversier, épisode {n}",
                summary=f"Hélène Lefèvre, présidente du comité, a déclaré que le changement {n} entrera "
                "en vigueur en avril, à côté de la gare maritime.",
            )
            for n in range(3)
        ],
    )
    multilingual = edition(
        list_name="مرحبا Digest ☕",
        list_description="Nachrichten aus dem Hafen — 港の便り 🚢",
        language="ar",
        direction="rtl",
        articles=[
            article(0, title="Zoë's café reopens — à bientôt! ☕🎉", source="Gazette Ñandú"),
            article(
                1,
                title="港の新しいフェリー時刻表が承認されました",
                summary="東京湾の交通委員会が発表しました。🚢",
            ),
            article(
                2,
                title="المجلس يوافق على جدول العبّارة الجديد",
                summary="قالت لجنة النقل إن التغيير يبدأ في أبريل.",
            ),
        ],
    )
    cjk = edition(
        list_name="港町ウィークリー",
        list_description="港からの地元ニュースを毎週月曜日にお届けします",
        language="ja",
        articles=[
            article(
                n,
                title=f"市議会が新しいフェリーの時刻表を承認しました（その{n}）",
                source="港町新聞",
                summary="交通委員会の委員長によると、変更は四月から実施され、通勤客の待ち時間が大幅に短縮される"
                "見込みです。市民からは歓迎の声が上がっています。" * 3,
            )
            for n in range(4)
        ],
        more_count=0,
    )
    long25 = edition(
        articles=[
            article(
                n,
                title=f"A very long headline about the harbour ferry timetable and council budget, part {n} "
                + "with more words " * 4,
                summary="The transport committee discussed timetables, fares, accessibility and the new "
                "wharf at length before voting. " * 6,
            )
            for n in range(25)
        ],
        more_count=12,
    )
    return {"latin": latin, "multilingual": multilingual, "cjk": cjk, "long25": long25}


EDITIONS = list(editions())
TOKENS = {"token43": new_subscription_token(), "token120": LONG_TOKEN}


@pytest.fixture(scope="module")
def rendered() -> dict[str, Rendered]:
    templates = Templates(default_templates_dir())
    return {name: render_edition(templates, view) for name, view in editions().items()}


def list_headers(view: EditionView, edition_id: int = 17) -> dict[str, str]:
    """List-Id and Feedback-ID exactly as assembly.Assembler builds them."""
    return {
        "list_id": f"{view.list_name} <{view.list_slug}.{DOMAIN}>",
        "feedback_id": f"{edition_id}:{view.list_slug}:digest:{_sender_id(DOMAIN)}",
    }


def unsubscribe_header(token: str, *, mailto: bool = True) -> str:
    value = f"<{BASE_URL}/u/{token}>"
    return value + (f", <mailto:unsub+{token}@{DOMAIN}>" if mailto else "")


def build(
    r: Rendered,
    *,
    token: str = TOKENS["token43"],
    subject: str | None = None,
    from_addr: str = FROM,
    to: str = TO,
    view: EditionView | None = None,
    mailto: bool = True,
) -> bytes:
    headers = list_headers(view or edition())
    tpl = messages.prepare(
        from_addr=from_addr,
        subject=r.subject if subject is None else subject,
        text=r.text,
        html=r.html,
        reply_to=f"editor@{DOMAIN}",
        list_id=headers["list_id"],
        feedback_id=headers["feedback_id"],
        extra=(("Precedence", "bulk"),),
    )
    return messages.assemble(
        tpl,
        to=to,
        message_id=messages.new_message_id(DOMAIN),
        date=DATE,
        token=token,
        list_unsubscribe=unsubscribe_header(token, mailto=mailto),
    )


def parse(raw: bytes, policy: email.policy.Policy = email.policy.default) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=policy)
    assert isinstance(msg, EmailMessage)
    return msg


def header_section(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0]


def raw_header_lines(raw: bytes) -> list[bytes]:
    """The unfolded top-level header fields, as raw bytes."""
    return re.split(rb"\r\n(?![ \t])", header_section(raw))


def raw_field(raw: bytes, name: str) -> list[bytes]:
    prefix = name.lower().encode() + b":"
    return [
        line.split(b":", 1)[1].replace(b"\r\n", b"").strip()
        for line in raw_header_lines(raw)
        if line.lower().startswith(prefix)
    ]


def parts(msg: EmailMessage) -> list[EmailMessage]:
    return [p for p in msg.iter_parts() if isinstance(p, EmailMessage)]


def decoded(msg: EmailMessage) -> tuple[str, str]:
    text, html = parts(msg)
    return str(text.get_content()), str(html.get_content())


def walk(msg: Message) -> Iterator[Message]:
    yield from msg.walk()


def hrefs(html: str) -> set[str]:
    return {str(h) for h in lxml.html.document_fromstring(html).xpath("//a/@href")}


@pytest.fixture(scope="module")
def raws(rendered: dict[str, Rendered]) -> dict[tuple[str, str], bytes]:
    views = editions()
    return {
        (name, tok): build(rendered[name], token=TOKENS[tok], view=views[name])
        for name in EDITIONS
        for tok in TOKENS
    }


ALL = [pytest.param(name, tok, id=f"{name}-{tok}") for name in EDITIONS for tok in TOKENS]


# A.1, A.4: raw bytes


@pytest.mark.parametrize(("name", "tok"), ALL)
def test_raw_bytes_use_crlf_only_and_are_seven_bit(
    raws: dict[tuple[str, str], bytes], name: str, tok: str
) -> None:
    raw = raws[name, tok]
    assert BARE_LF.search(raw) is None
    assert BARE_CR.search(raw) is None
    assert raw.isascii()
    assert max(raw) < 0x80
    assert b"\x00" not in raw


@pytest.mark.parametrize(("name", "tok"), ALL)
def test_no_line_exceeds_998_octets(raws: dict[tuple[str, str], bytes], name: str, tok: str) -> None:
    assert max(len(line) for line in raws[name, tok].split(b"\r\n")) <= 998


@pytest.mark.parametrize(("name", "tok"), ALL)
def test_quoted_printable_lines_are_at_most_76(
    raws: dict[tuple[str, str], bytes], name: str, tok: str
) -> None:
    for part in parts(parse(raws[name, tok])):
        if part["Content-Transfer-Encoding"] == "quoted-printable":
            body = part.get_payload(decode=False)
            assert isinstance(body, str)
            assert max(len(line) for line in body.splitlines()) <= 76


@pytest.mark.parametrize(("name", "tok"), ALL)
def test_header_lines_over_78_are_reported(
    raws: dict[tuple[str, str], bytes], name: str, tok: str, report_figure: Callable[[str], None]
) -> None:
    """SHOULD, not MUST (item 4): long header lines are listed, never a failure."""
    long_lines = [line for line in header_section(raws[name, tok]).split(b"\r\n") if len(line) > 78]
    if long_lines:
        fields = ", ".join(f"{line.split(b':')[0].decode() or 'continuation'}={len(line)}" for line in long_lines)
        report_figure(f"[{name}-{tok}] header lines over 78 octets: {fields}")
    assert all(len(line) <= 998 for line in long_lines)


# A.2, A.3: required headers, Message-ID and Date


@pytest.mark.parametrize(("name", "tok"), ALL)
def test_each_required_header_appears_exactly_once(
    raws: dict[tuple[str, str], bytes], name: str, tok: str
) -> None:
    raw = raws[name, tok]
    msg = parse(raw)
    for field in REQUIRED:
        assert len(msg.get_all(field) or []) == 1, field
        assert len(raw_field(raw, field)) == 1, field
    assert len(msg["To"].addresses) == 1
    assert msg["To"].addresses[0].addr_spec == "reader@example.org"


def test_message_id_is_on_the_sending_domain(raws: dict[tuple[str, str], bytes]) -> None:
    for raw in raws.values():
        assert MESSAGE_ID.match(raw_field(raw, "Message-ID")[0].decode())
    assert MESSAGE_ID.match(messages.new_message_id(DOMAIN))


def test_ten_thousand_message_ids_are_unique() -> None:
    ids = [messages.new_message_id(DOMAIN) for _ in range(10_000)]
    assert len(set(ids)) == 10_000
    assert all(MESSAGE_ID.match(i) for i in ids)


def test_date_round_trips_through_parsedate_to_datetime(raws: dict[tuple[str, str], bytes]) -> None:
    raw = raws["latin", "token43"]
    assert parsedate_to_datetime(raw_field(raw, "Date")[0].decode()) == DATE
    assert parsedate_to_datetime(str(parse(raw)["Date"])) == DATE


# A.5: RFC 2047


def test_non_ascii_subject_is_encoded_and_decodes_exactly(rendered: dict[str, Rendered]) -> None:
    raw = build(rendered["latin"], subject=SUBJECT)
    subject = raw_field(raw, "Subject")[0]
    assert subject.isascii()
    assert b"=?utf-8?" in subject.lower()
    assert parse(raw)["Subject"] == SUBJECT


def test_non_ascii_display_names_are_encoded_and_decode_exactly(rendered: dict[str, Rendered]) -> None:
    sender = "Rédaction Café ☕ مرحبا"
    reader = "Zoë Ångström 田中 🎉"
    raw = build(
        rendered["multilingual"],
        from_addr=messages.format_address(f"digest@{DOMAIN}", sender),
        to=messages.format_address("zoe@example.org", reader),
    )
    assert header_section(raw).isascii()
    for field in ("From", "To"):
        assert b"=?utf-8?" in raw_field(raw, field)[0].lower()
    msg = parse(raw)
    assert msg["From"].addresses[0].display_name == sender
    assert msg["From"].addresses[0].addr_spec == f"digest@{DOMAIN}"
    assert msg["To"].addresses[0].display_name == reader
    assert msg["To"].addresses[0].addr_spec == "zoe@example.org"


def test_rendered_non_ascii_subject_round_trips(rendered: dict[str, Rendered]) -> None:
    for name in ("latin", "multilingual", "cjk"):
        raw = build(rendered[name], view=editions()[name])
        assert parse(raw)["Subject"] == rendered[name].subject


# A.6, A.8: structure and transfer encodings


@pytest.mark.parametrize(("name", "tok"), ALL)
def test_top_level_is_alternative_with_plain_then_html_in_utf8(
    raws: dict[tuple[str, str], bytes], name: str, tok: str
) -> None:
    msg = parse(raws[name, tok])
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in parts(msg)] == ["text/plain", "text/html"]
    for part in parts(msg):
        assert part.get_content_charset() == "utf-8"
        assert part["Content-Transfer-Encoding"] in {"7bit", "quoted-printable", "base64"}


def test_cjk_text_part_is_base64(raws: dict[tuple[str, str], bytes]) -> None:
    text, _ = parts(parse(raws["cjk", "token43"]))
    assert text["Content-Transfer-Encoding"] == "base64"


def test_latin_parts_are_quoted_printable(raws: dict[tuple[str, str], bytes]) -> None:
    for part in parts(parse(raws["latin", "token43"])):
        assert part["Content-Transfer-Encoding"] == "quoted-printable"


def test_short_pure_ascii_parts_are_7bit() -> None:
    tpl = messages.prepare(
        from_addr=FROM,
        subject="Plain",
        text=f"Hello.\nUnsubscribe: {BASE_URL}/u/{TOKEN_PLACEHOLDER}\n",
        html=f'<p><a href="{BASE_URL}/u/{TOKEN_PLACEHOLDER}">Unsubscribe</a></p>',
    )
    assert (tpl.text_cte, tpl.html_cte) == ("7bit", "7bit")
    raw = messages.assemble(
        tpl, to=TO, message_id=messages.new_message_id(DOMAIN), date=DATE, token=LONG_TOKEN
    )
    text, html = decoded(parse(raw, email.policy.strict))
    assert LONG_TOKEN in text
    assert LONG_TOKEN in html


# A.10: strict parse


@pytest.mark.parametrize(("name", "tok"), ALL)
def test_strict_parse_succeeds_without_defects(
    raws: dict[tuple[str, str], bytes], name: str, tok: str
) -> None:
    msg = email.message_from_bytes(raws[name, tok], policy=email.policy.strict)
    for part in walk(msg):
        assert part.defects == []


# Per-reader token substitution


@pytest.mark.parametrize(("name", "tok"), ALL)
def test_token_replaces_the_placeholder_in_both_decoded_parts(
    raws: dict[tuple[str, str], bytes], name: str, tok: str
) -> None:
    token = TOKENS[tok]
    raw = raws[name, tok]
    for body in decoded(parse(raw)):
        assert f"{BASE_URL}/u/{token}" in body
        assert f"{BASE_URL}/p/{token}" in body
        assert TOKEN_PLACEHOLDER not in body
    assert TOKEN_PLACEHOLDER.encode() not in raw


def test_the_long_token_is_intact_in_the_decoded_html_href(raws: dict[tuple[str, str], bytes]) -> None:
    for name in EDITIONS:
        _, html = decoded(parse(raws[name, "token120"]))
        assert f"{BASE_URL}/u/{LONG_TOKEN}" in hrefs(html)


# A.7: the parts match


@pytest.mark.parametrize(("name", "tok"), ALL)
def test_text_urls_equal_html_hrefs(raws: dict[tuple[str, str], bytes], name: str, tok: str) -> None:
    text, html = decoded(parse(raws[name, tok]))
    assert set(TEXT_URL.findall(text)) == hrefs(html)
    assert f"{BASE_URL}/u/{TOKENS[tok]}" in hrefs(html)


# B: list headers


@pytest.mark.parametrize(("name", "tok"), ALL)
@pytest.mark.parametrize("mailto", [True, False], ids=["with-mailto", "https-only"])
def test_list_unsubscribe_is_one_header_with_one_https_uri(
    rendered: dict[str, Rendered], name: str, tok: str, mailto: bool
) -> None:
    raw = build(rendered[name], token=TOKENS[tok], view=editions()[name], mailto=mailto)
    values = raw_field(raw, "List-Unsubscribe")
    assert len(values) == 1
    uris = [u.strip() for u in values[0].decode("ascii").split(",")]
    assert all(re.fullmatch(r"<[^<>\s,]+>", u) for u in uris), uris
    assert [u for u in uris if u.startswith("<https:")] == [f"<{BASE_URL}/u/{TOKENS[tok]}>"]
    assert [u for u in uris if not u.startswith("<https:")] == (
        [f"<mailto:unsub+{TOKENS[tok]}@{DOMAIN}>"] if mailto else []
    )
    assert len(parse(raw).get_all("List-Unsubscribe") or []) == 1


def test_list_unsubscribe_post_is_exact(raws: dict[tuple[str, str], bytes]) -> None:
    for raw in raws.values():
        assert raw_field(raw, "List-Unsubscribe-Post") == [b"List-Unsubscribe=One-Click"]
        assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in header_section(raw)
        assert parse(raw)["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


@pytest.mark.parametrize("name", EDITIONS)
def test_list_id_names_a_host_under_the_sending_domain(raws: dict[tuple[str, str], bytes], name: str) -> None:
    raw = raws[name, "token43"]
    values = raw_field(raw, "List-Id")
    assert len(values) == 1
    # The <slug.domain> part stays literal even when the list name is encoded.
    for value in (values[0].decode("ascii"), str(parse(raw)["List-Id"])):
        match = LIST_ID.search(value)
        assert match is not None, value
        assert value.endswith(">")
        assert match.group(0) == f"<harbour-weekly.{DOMAIN}>"
        assert match.group(0)[1:-1].endswith("." + DOMAIN)


def test_list_id_keeps_a_non_ascii_list_name(raws: dict[tuple[str, str], bytes]) -> None:
    assert parse(raws["multilingual", "token43"])["List-Id"] == f"مرحبا Digest ☕ <harbour-weekly.{DOMAIN}>"


def test_feedback_id_has_a_stable_sender_id(raws: dict[tuple[str, str], bytes]) -> None:
    for raw in raws.values():
        values = raw_field(raw, "Feedback-ID")
        assert len(values) == 1
        assert FEEDBACK_ID.match(values[0].decode("ascii"))
        assert values[0] == b"17:harbour-weekly:digest:" + _sender_id(DOMAIN).encode()


# A.9: header injection


@pytest.fixture(scope="module")
def baseline(rendered: dict[str, Rendered]) -> int:
    return len(parse(build(rendered["latin"], subject="Weekly x")).keys())


def assert_not_injected(raw: bytes, baseline: int) -> None:
    msg = parse(raw, email.policy.strict)
    assert "Bcc" not in msg
    assert len(msg.keys()) == baseline
    assert not any(line.lower().startswith(b"bcc") for line in header_section(raw).split(b"\r\n"))
    assert BARE_LF.search(raw) is None
    assert BARE_CR.search(raw) is None
    assert raw.isascii()


@pytest.mark.parametrize("payload", INJECTIONS)
def test_subject_cannot_inject_headers(rendered: dict[str, Rendered], baseline: int, payload: str) -> None:
    try:
        raw = build(rendered["latin"], subject="Weekly " + payload)
    except ValueError:
        return
    assert_not_injected(raw, baseline)


@pytest.mark.parametrize("payload", INJECTIONS)
def test_to_display_name_cannot_inject_headers(
    rendered: dict[str, Rendered], baseline: int, payload: str
) -> None:
    try:
        raw = build(
            rendered["latin"],
            subject="Weekly x",
            to=messages.format_address("reader@example.org", payload),
        )
    except ValueError:
        return
    assert_not_injected(raw, baseline)


@pytest.mark.parametrize("payload", INJECTIONS)
def test_from_display_name_cannot_inject_headers(
    rendered: dict[str, Rendered], baseline: int, payload: str
) -> None:
    try:
        raw = build(
            rendered["latin"],
            subject="Weekly x",
            from_addr=messages.format_address(f"digest@{DOMAIN}", payload),
        )
    except ValueError:
        return
    assert_not_injected(raw, baseline)


@pytest.mark.parametrize("payload", INJECTIONS)
def test_article_title_cannot_inject_headers(baseline: int, payload: str) -> None:
    """A feed title reaches the Subject through the rendered edition."""
    view = edition(articles=[article(0, title=payload), article(1)])
    try:
        raw = build(render_edition(Templates(default_templates_dir()), view), view=view)
    except ValueError:
        return
    assert_not_injected(raw, baseline)


# Property: any subject, name and body gives a clean message


SCARY = '\x00\t\n\r\x0b\x0c\x1b\x7f\x85\u2028\u2029 =?:<>",;\\@'
fuzz_text = st.text(st.one_of(st.characters(), st.sampled_from(SCARY)), max_size=120)


def expected_header_text(value: str) -> str:
    return CONTROLS.sub(" ", value).strip()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=fuzz_text, name=fuzz_text, text=fuzz_text, html=fuzz_text)
def test_any_subject_name_and_body_give_a_clean_seven_bit_message(
    subject: str, name: str, text: str, html: str
) -> None:
    tpl = messages.prepare(
        from_addr=messages.format_address(f"digest@{DOMAIN}", name),
        subject=subject,
        text=text + TOKEN_PLACEHOLDER,
        html=html + TOKEN_PLACEHOLDER,
        list_id=f"List <weekly.{DOMAIN}>",
    )
    raw = messages.assemble(
        tpl,
        to=messages.format_address("reader@example.org", name),
        message_id=messages.new_message_id(DOMAIN),
        date=DATE,
        token=LONG_TOKEN,
        list_unsubscribe=unsubscribe_header(LONG_TOKEN),
    )
    assert raw.isascii()
    assert BARE_LF.search(raw) is None
    assert BARE_CR.search(raw) is None
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    strict = email.message_from_bytes(raw, policy=email.policy.strict)
    assert all(part.defects == [] for part in walk(strict))
    msg = parse(raw)
    assert "Bcc" not in msg
    assert msg["Subject"] == expected_header_text(subject)
    for field in REQUIRED:
        assert len(msg.get_all(field) or []) == 1, field
    plain, rich = decoded(msg)
    assert plain.rstrip("\n").endswith(LONG_TOKEN)
    assert rich.rstrip("\n").endswith(LONG_TOKEN)
