"""Rendering digests and confirmations: email-safe HTML (STANDARDS G), matching text, escaping."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import socket
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import lxml.html
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from digest.errors import TemplateError
from digest.palette import DARK_PALETTE, LIGHT_PALETTE, Palette, contrast_ratio
from digest.rendering import (
    TOKEN_PLACEHOLDER,
    Templates,
    default_templates_dir,
    render_confirmation,
    render_edition,
)
from digest.views import ArticleView, Branding, ConfirmView, EditionView, Rendered

GOLDEN = Path(__file__).parent / "golden" / "render"
BASE_URL = "https://news.example.com"
POSTAL = "Harbour Town News, 12 Quay Street, Harbour Town 4021, New Zealand"
# The same pattern the acceptance check uses to collect URLs from the text part.
TEXT_URL = re.compile(r"https?://[^\s<>\]\)]+")
GENERIC_LINK_TEXT = {"click here", "here", "read more", "more", "link", "this link"}


@pytest.fixture(scope="module")
def templates() -> Templates:
    return Templates(default_templates_dir())


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
        postal_address=POSTAL,
        contact="editor@news.example.com",
        branding=Branding(
            accent="#0b6e4f", logo_url=f"{BASE_URL}/static/logo.png", footer_text="Made by volunteers."
        ),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def confirmation(**changes: object) -> ConfirmView:
    base = ConfirmView(
        list_names=["Harbour Town Weekly", "Harbour Town Sport"],
        confirm_url=f"{BASE_URL}/confirm/Ik1hcmlhIn0.aBcD3f",
        base_url=BASE_URL,
        postal_address=POSTAL,
        sender_name="Harbour Town News",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def both(templates: Templates) -> list[Rendered]:
    return [render_edition(templates, edition()), render_confirmation(templates, confirmation())]


def parse(html: str) -> lxml.html.HtmlElement:
    return lxml.html.document_fromstring(html)


def hrefs(html: str) -> set[str]:
    return set(parse(html).xpath("//a/@href"))


def style_block_css(html: str) -> str:
    return "".join(s.text_content() for s in parse(html).xpath("//style"))


def all_css(html: str) -> str:
    doc = parse(html)
    return "\n".join([*doc.xpath("//@style"), style_block_css(html)])


def copy_templates(tmp_path: Path) -> Path:
    target = tmp_path / "templates"
    shutil.copytree(default_templates_dir(), target)
    return target


# Structure (STANDARDS items 44-53)


@pytest.mark.parametrize("which", ["digest", "confirm"])
def test_every_layout_table_is_presentational(templates: Templates, which: str) -> None:
    rendered = both(templates)[which == "confirm"]
    tables = parse(rendered.html).xpath("//table")
    assert tables
    for table in tables:
        assert table.get("role") == "presentation"
        assert (table.get("border"), table.get("cellpadding"), table.get("cellspacing")) == ("0", "0", "0")


def test_container_is_600px_and_fluid(templates: Templates) -> None:
    container = parse(render_edition(templates, edition()).html).xpath("//body//table")[0]
    assert container.get("width") == "600"
    assert "width: 100%" in container.get("style")
    assert "max-width: 600px" in container.get("style")


@pytest.mark.parametrize("which", ["digest", "confirm"])
def test_preheader_is_the_first_thing_in_the_body(templates: Templates, which: str) -> None:
    rendered = both(templates)[which == "confirm"]
    body = parse(rendered.html).body
    assert not (body.text or "").strip()
    first = body[0]
    assert first.tag == "div"
    assert first.get("aria-hidden") == "true"
    assert first.get("style") == "display:none;max-height:0;overflow:hidden;mso-hide:all"
    summary, _, filler = first.text_content().partition("\u034f")
    assert 40 <= len(summary) <= 130
    assert filler.startswith("\u200c\u00a0")


@pytest.mark.parametrize(
    "titles",
    [["Ferry"], ["A very long headline about the harbour " * 8], [f"Story {n}" for n in range(10)]],
)
def test_preheader_stays_between_40_and_130_characters(templates: Templates, titles: list[str]) -> None:
    view = edition(articles=[article(n, title=t) for n, t in enumerate(titles)])
    preheader = parse(render_edition(templates, view).html).body[0].text_content().partition("\u034f")[0]
    assert 40 <= len(preheader) <= 130
    assert preheader.startswith(titles[0][:20])


def test_images_declare_size_alt_and_absolute_https_source(templates: Templates) -> None:
    images = parse(render_edition(templates, edition()).html).xpath("//img")
    assert len(images) == 3  # logo, and the two even-numbered stories
    for img in images:
        assert img.get("src").startswith("https://")
        assert img.get("width").isdigit()
        assert img.get("height").isdigit()
        assert img.get("alt") is not None
        style = img.get("style").replace(" ", "")
        assert "display:block" in style
        assert "border:0" in style


def test_images_that_are_not_https_are_left_out(templates: Templates) -> None:
    view = edition(
        articles=[article(0, image_url="http://images.example.org/x.jpg"), article(2, image_url="/rel.jpg")],
        branding=Branding(logo_url="http://news.example.com/logo.png"),
    )
    html = render_edition(templates, view).html
    assert parse(html).xpath("//img") == []
    assert "data:" not in html


def test_css_is_inlined_leaving_one_small_style_in_head(templates: Templates) -> None:
    for rendered in both(templates):
        doc = parse(rendered.html)
        assert doc.xpath("//link[@rel='stylesheet']") == []
        assert doc.xpath("//body//style") == []
        styles = doc.xpath("//head/style")
        assert len(styles) == 1
        assert len(styles[0].text_content().encode()) <= 16_384
        # Plain rules were inlined, so only @media blocks remain.
        media_blocks = re.compile(r"@media[^{]*\{(?:[^{}]*\{[^{}]*\})*[^{}]*\}")
        assert media_blocks.sub("", styles[0].text_content()).strip() == ""
        assert doc.xpath("//h1")[0].get("style")


def test_important_survives_inside_media_rules(templates: Templates) -> None:
    css = style_block_css(render_edition(templates, edition()).html)
    assert "@media screen and (max-width: 620px)" in css
    assert "@media (prefers-color-scheme: dark)" in css
    declarations = [d for block in re.findall(r"\{([^{}]*)\}", css) for d in block.split(";") if d.strip()]
    assert len(declarations) >= 8
    for declaration in declarations:
        assert declaration.strip().endswith("!important"), declaration


def test_dark_mode_is_declared(templates: Templates) -> None:
    doc = parse(render_edition(templates, edition()).html)
    assert doc.xpath("//meta[@name='color-scheme']/@content") == ["light dark"]
    assert doc.xpath("//meta[@name='supported-color-schemes']/@content") == ["light dark"]
    assert f"background-color: {DARK_PALETTE.card} !important" in style_block_css(
        render_edition(templates, edition()).html
    )


def test_colours_are_six_digit_hex(templates: Templates) -> None:
    for rendered in both(templates):
        doc = parse(rendered.html)
        css = all_css(rendered.html) + " ".join(doc.xpath("//@bgcolor"))
        assert not re.search(r"\brgba?\(|\bhsla?\(", css)
        colours = re.findall(r"#[0-9A-Za-z]+\b", css)
        assert colours
        for colour in colours:
            assert re.fullmatch(r"#[0-9a-fA-F]{6}", colour), colour


def test_no_flex_grid_float_or_position(templates: Templates) -> None:
    for rendered in both(templates):
        css = all_css(rendered.html).replace(" ", "").lower()
        for banned in ("display:flex", "display:grid", "float:", "position:"):
            assert banned not in css


def test_text_is_at_least_14px(templates: Templates) -> None:
    for rendered in both(templates):
        sizes = [int(s) for s in re.findall(r"font-size:\s*(\d+)px", all_css(rendered.html))]
        assert sizes
        assert min(sizes) >= 14


def test_no_svg_scripts_or_data_uris(templates: Templates) -> None:
    for rendered in both(templates):
        doc = parse(rendered.html)
        assert doc.xpath("//svg | //script | //iframe | //object | //embed") == []
        assert "data:" not in rendered.html


@pytest.mark.parametrize("which", ["digest", "confirm"])
def test_lang_and_dir_sit_on_html_and_the_outer_wrapper(templates: Templates, which: str) -> None:
    rendered = both(templates)[which == "confirm"]
    doc = parse(rendered.html)
    wrapper = doc.xpath("//body/div[@role='article']")[0]
    assert (doc.get("lang"), doc.get("dir")) == ("en", "ltr")
    assert (wrapper.get("lang"), wrapper.get("dir")) == ("en", "ltr")


def test_arabic_edition_renders_right_to_left(templates: Templates) -> None:
    view = edition(
        language="ar",
        direction="rtl",
        list_name="نشرة الميناء",
        articles=[article(0, title="المجلس يوافق على جدول العبّارات الجديد")],
    )
    rendered = render_edition(templates, view)
    doc = parse(rendered.html)
    wrapper = doc.xpath("//body/div[@role='article']")[0]
    assert (doc.get("lang"), doc.get("dir")) == ("ar", "rtl")
    assert (wrapper.get("lang"), wrapper.get("dir")) == ("ar", "rtl")
    assert "text-align: right" in doc.xpath("//h1/..")[0].get("style")
    assert "المجلس يوافق" in rendered.subject


@pytest.mark.parametrize("which", ["digest", "confirm"])
def test_html_title_equals_subject(templates: Templates, which: str) -> None:
    rendered = both(templates)[which == "confirm"]
    assert parse(rendered.html).findtext(".//title") == rendered.subject


def test_more_stories_button_opens_the_page_of_every_new_story(templates: Templates) -> None:
    every = f"{BASE_URL}/archive/harbour-weekly/17/stories?r=0-9-0-0123456789abcdef"
    rendered = render_edition(templates, edition(more_count=5, more_url=every))
    doc = parse(rendered.html)
    button = doc.xpath("//td[@bgcolor]/a[contains(@style, 'inline-block')]")
    assert len(button) == 1
    assert button[0].get("href") == every
    assert button[0].text_content() == "See all 8 new stories"
    assert "And 5 more new stories." in doc.text_content()
    assert f"And 5 more new stories. See all 8: {every}" in rendered.text


def test_no_more_stories_row_when_everything_fits(templates: Templates) -> None:
    rendered = render_edition(templates, edition(more_count=0))
    assert "more new stor" not in rendered.text
    assert "more new stor" not in rendered.html
    assert parse(rendered.html).xpath("//td[@bgcolor]/a[contains(@style, 'inline-block')]") == []


def test_edition_without_articles_still_renders(templates: Templates) -> None:
    rendered = render_edition(templates, edition(articles=[], more_count=0))
    assert rendered.subject == "Harbour Town Weekly, 2 March 2026"
    preheader = parse(rendered.html).body[0].text_content().partition("\u034f")[0]
    assert 40 <= len(preheader) <= 130
    assert set(TEXT_URL.findall(rendered.text)) == hrefs(rendered.html)


def test_one_more_story_is_singular(templates: Templates) -> None:
    assert "And 1 more new story." in render_edition(templates, edition(more_count=1)).text


def test_no_link_text_is_generic(templates: Templates) -> None:
    for rendered in both(templates):
        for link in parse(rendered.html).xpath("//a"):
            assert link.text_content().strip().lower() not in GENERIC_LINK_TEXT


def test_every_link_is_absolute_http(templates: Templates) -> None:
    for rendered in both(templates):
        for href in hrefs(rendered.html):
            assert href.startswith("https://")


# Text part and links (items 7, 19, 26)


@pytest.mark.parametrize("which", ["digest", "confirm"])
def test_text_and_html_carry_the_same_links(templates: Templates, which: str) -> None:
    rendered = both(templates)[which == "confirm"]
    assert set(TEXT_URL.findall(rendered.text)) == hrefs(rendered.html)


def test_contact_url_is_linked_in_both_parts(templates: Templates) -> None:
    rendered = render_edition(templates, edition(contact="https://news.example.com/contact"))
    assert "https://news.example.com/contact" in hrefs(rendered.html)
    assert set(TEXT_URL.findall(rendered.text)) == hrefs(rendered.html)


def test_both_parts_carry_the_unsubscribe_link_and_postal_address(templates: Templates) -> None:
    rendered = render_edition(templates, edition())
    unsubscribe = f"{BASE_URL}/u/{TOKEN_PLACEHOLDER}"
    preferences = f"{BASE_URL}/p/{TOKEN_PLACEHOLDER}"
    assert {unsubscribe, preferences, f"{BASE_URL}/editions/17"} <= hrefs(rendered.html)
    assert unsubscribe in rendered.text
    assert preferences in rendered.text
    assert POSTAL in rendered.text
    assert POSTAL in parse(rendered.html).text_content()


def test_trailing_slash_on_base_url_gives_no_double_slash(templates: Templates) -> None:
    rendered = render_edition(templates, edition(base_url=BASE_URL + "/"))
    assert f"{BASE_URL}/u/{TOKEN_PLACEHOLDER}" in hrefs(rendered.html)


def test_text_part_numbers_every_story_with_its_url_on_its_own_line(templates: Templates) -> None:
    text = render_edition(templates, edition()).text
    lines = [line.strip() for line in text.splitlines()]
    for n in range(3):
        assert f"{n + 1}. Council approves the new ferry timetable, story {n}" in lines
        assert f"https://harbourtown.example.org/news/{n}?ref=feed&section=local" in lines
    assert max(len(line) for line in text.splitlines()) <= 998


def test_confirmation_is_plain_and_has_no_unsubscribe_placeholder(templates: Templates) -> None:
    rendered = render_confirmation(templates, confirmation())
    assert rendered.subject == "Confirm your subscription to Harbour Town Weekly and Harbour Town Sport"
    for part in (rendered.text, parse(rendered.html).text_content()):
        assert "48 hours" in part.replace("\u00a0", " ")
        assert "ignore this email" in part
        assert POSTAL in part
        assert TOKEN_PLACEHOLDER not in part
    assert TOKEN_PLACEHOLDER not in rendered.html
    assert hrefs(rendered.html) == {f"{BASE_URL}/confirm/Ik1hcmlhIn0.aBcD3f"}


# Escaping and header safety (items 9, 61)


def test_markup_in_article_text_comes_out_escaped(templates: Templates) -> None:
    hostile = article(
        0,
        title="Mayor says <b>yes</b> <script>alert(1)</script>",
        summary="Residents wrote <img src=x onerror=alert(2)> and <script>steal()</script> in letters.",
    )
    rendered = render_edition(templates, edition(articles=[hostile]))
    doc = parse(rendered.html)
    assert doc.xpath("//b | //script") == []
    assert [img.get("src") for img in doc.xpath("//img")] == [
        f"{BASE_URL}/static/logo.png",
        "https://images.example.org/ferry-0.jpg",
    ]
    assert "&lt;b&gt;yes&lt;/b&gt;" in rendered.html
    assert "&lt;script&gt;" in rendered.html
    assert "onerror=alert" not in rendered.html.replace("&lt;img src=x onerror=alert(2)&gt;", "")
    assert "Mayor says <b>yes</b>" in rendered.text  # plain text needs no escaping
    # Runs of 25+ characters get zero-width break opportunities so they cannot widen the layout.
    title = doc.xpath("//h2/a")[0].text_content()
    assert title.replace("\u200b", "") == "Mayor says <b>yes</b> <script>alert(1)</script>"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    before=st.text(max_size=40),
    after=st.text(max_size=40),
    breaker=st.sampled_from(["\r\n", "\n", "\r", "\r\nBcc: a@evil.test\r\n", "\x00", "\u2028"]),
)
def test_line_breaks_in_a_title_never_reach_the_subject(
    templates: Templates, before: str, after: str, breaker: str
) -> None:
    view = edition(articles=[article(0, title=before + breaker + after)])
    subject = render_edition(templates, view).subject
    assert "\r" not in subject
    assert "\n" not in subject
    assert "\x00" not in subject
    assert subject.startswith("Harbour Town Weekly: ")


def test_subject_never_starts_with_a_reply_prefix(templates: Templates) -> None:
    subject = render_edition(templates, edition(list_name="Re: Fwd: Harbour Notes")).subject
    assert subject.startswith("Harbour Notes: ")


def test_subject_counts_the_other_stories(templates: Templates) -> None:
    assert render_edition(templates, edition(more_count=5)).subject == (
        "Harbour Town Weekly: Council approves the new ferry timetable, story 0 and 7 more"
    )
    single = render_edition(templates, edition(articles=[article(0)], more_count=0)).subject
    assert single == "Harbour Town Weekly: Council approves the new ferry timetable, story 0"


# Template loading errors


def test_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    directory = copy_templates(tmp_path)
    body = directory / "email" / "digest" / "body.html"
    lines = body.read_text().splitlines()
    lines.insert(4, "{{ broken( }}")
    body.write_text("\n".join(lines))
    with pytest.raises(TemplateError) as excinfo:
        Templates(directory)
    assert str(body) in str(excinfo.value)
    assert "line 5" in str(excinfo.value)


def test_missing_template_names_the_path(tmp_path: Path) -> None:
    directory = copy_templates(tmp_path)
    missing = directory / "email" / "confirm" / "body.txt"
    missing.unlink()
    with pytest.raises(TemplateError, match=re.escape(str(missing))):
        Templates(directory)


def test_missing_directory_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match=re.escape(str(tmp_path / "nowhere" / "email"))):
        Templates(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("filename", "content", "line"),
    [
        ("body.txt", "{{ list_name }}\n{{ readers_favourite_colour }}\n", 2),
        # Only reached when an edition has more stories than it shows: still caught at start.
        ("body.html", "<p>{{ list_name }}</p>\n{% if more_count %}\n{{ oops }}\n{% endif %}\n", 3),
        # A filter raising a plain Python error is reported the same way.
        ("body.txt", "{{ list_name }}\n\n{{ more_count|wordwrap(20) }}\n", 3),
        ("subject.txt", "{{ list_name }} {{ articles[0].headline }}", 1),
    ],
)
def test_unknown_variable_fails_at_start_naming_the_file_and_line(
    tmp_path: Path, filename: str, content: str, line: int
) -> None:
    directory = copy_templates(tmp_path)
    path = directory / "email" / "digest" / filename
    path.write_text(content)
    # It compiles (the name is only unknown when rendered), but start renders samples.
    with pytest.raises(TemplateError) as excinfo:
        Templates(directory)
    assert str(path) in str(excinfo.value)
    assert f"line {line}" in str(excinfo.value)


def test_default_templates_dir_is_the_checkout_copy() -> None:
    assert default_templates_dir() == Path(__file__).parents[1] / "src" / "digest" / "defaults" / "templates"


# Size, network, palette


def test_largest_edition_stays_under_90_kb(templates: Templates) -> None:
    biggest = [
        article(
            n,
            title=("Harbour board weighs the cost of dredging the channel " * 6)[:300],
            summary=("Aroha Ngata told the meeting that the numbers would not add up unless " * 9)[:600],
            url=f"https://harbourtown.example.org/news/2026/03/01/a-rather-long-slug-for-story-{n}?ref=rss&id={n}",
            image_url=f"https://images.example.org/2026/03/ferry-terminal-at-dawn-{n}.jpg",
        )
        for n in range(0, 50, 2)
    ]
    rendered = render_edition(templates, edition(articles=biggest, more_count=120))
    # Measured after per-reader substitution, with a token longer than any we mint.
    html = rendered.html.replace(TOKEN_PLACEHOLDER, "t" * 120)
    assert len(biggest) == 25
    assert len(html.encode()) < 90_000


def test_rendering_opens_no_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = copy_templates(tmp_path)
    body = directory / "email" / "digest" / "body.html"
    # A remote stylesheet would be fetched if premailer were allowed the network.
    body.write_text(
        body.read_text().replace(
            "<title>", '<link rel="stylesheet" href="https://cdn.example.net/x.css"><title>', 1
        )
    )

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("rendering tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    rendered = render_edition(Templates(directory), edition())
    assert "!important" in style_block_css(rendered.html)
    assert render_confirmation(Templates(directory), confirmation()).subject


@pytest.mark.parametrize("palette", [LIGHT_PALETTE, DARK_PALETTE], ids=["light", "dark"])
def test_palette_text_reaches_4_5_to_1(palette: Palette) -> None:
    for background in (palette.page, palette.card):
        for foreground in (palette.text, palette.muted, palette.link):
            assert contrast_ratio(foreground, background) >= 4.5, (foreground, background)


def test_contrast_ratio_matches_wcag_extremes() -> None:
    assert contrast_ratio("#000000", "#ffffff") == pytest.approx(21.0)
    assert contrast_ratio("#777777", "#777777") == pytest.approx(1.0)


def test_pale_accent_gets_dark_button_text_and_readable_links(templates: Templates) -> None:
    view = edition(branding=Branding(accent="#ffd60a"))
    doc = parse(render_edition(templates, view).html)
    button = doc.xpath("//td[@bgcolor='#ffd60a']/a")[0]
    assert f"color: {LIGHT_PALETTE.text}" in button.get("style")
    assert f"color:{LIGHT_PALETTE.text}" in doc.xpath("//h2/a")[0].get("style")


def test_default_accent_is_used_for_title_links(templates: Templates) -> None:
    doc = parse(render_edition(templates, edition(branding=Branding())).html)
    assert "color:#1a56db" in doc.xpath("//h2/a")[0].get("style")


@pytest.mark.parametrize("accent", ["#fff", "1a56db", "#1a56dbff", "red", "#gggggg", "rgb(0,0,0)"])
def test_branding_accepts_only_six_digit_hex(accent: str) -> None:
    with pytest.raises(ValueError, match="6-digit hex"):
        Branding(accent=accent)


@pytest.mark.parametrize("url", ["javascript:alert(1)", "/relative", "ftp://example.org/x", ""])
def test_article_without_web_url_is_rejected(url: str) -> None:
    with pytest.raises(ValueError, match="URL"):
        article(0, url=url)


def test_article_with_naive_date_is_rejected() -> None:
    with pytest.raises(ValueError, match="naive"):
        article(0, published_at=datetime(2026, 3, 1, 7, 30))


def test_edition_with_unknown_direction_is_rejected() -> None:
    with pytest.raises(ValueError, match="direction"):
        edition(direction="sideways")


# Golden files: update on purpose with DIGEST_UPDATE_GOLDEN=1


def golden_edition() -> EditionView:
    return edition(
        articles=[
            article(0),
            article(1, title='Ferry fares: what the "peak" surcharge <means> for you & yours'),
            article(2, summary=""),
        ],
    )


def golden_rtl_edition() -> EditionView:
    """The second fixed edition: a right-to-left list, mixed scripts, no logo, nothing left over."""
    return edition(
        list_slug="harbour-ar",
        list_name="نشرة الميناء",
        list_description="أخبار الميناء كل يوم اثنين",
        language="ar",
        direction="rtl",
        archive_url=f"{BASE_URL}/lists/harbour-ar",
        articles=[
            article(0, title="المجلس يوافق على جدول العبّارات الجديد", source="صحيفة الميناء",
                    summary="قالت لجنة النقل إن التغيير يبدأ في أبريل."),
            article(1, title="Café owners in Zürich and 東京 welcome visitors 🎉", summary=""),
        ],
        more_count=0,
        contact="https://news.example.com/contact",
        branding=Branding(accent="#7c2d12"),
    )  # fmt: skip


@pytest.mark.parametrize("name", ["digest", "digest-rtl", "confirm"])
def test_rendering_matches_golden_files(templates: Templates, name: str) -> None:
    if name == "digest":
        rendered = render_edition(templates, golden_edition())
    elif name == "digest-rtl":
        rendered = render_edition(templates, golden_rtl_edition())
    else:
        rendered = render_confirmation(templates, confirmation())
    for suffix, content in (
        ("html", rendered.html),
        ("txt", f"Subject: {rendered.subject}\n\n{rendered.text}"),
    ):
        path = GOLDEN / f"{name}.{suffix}"
        if os.environ.get("DIGEST_UPDATE_GOLDEN") == "1":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8", newline="")
        assert path.read_text(encoding="utf-8") == content, (
            f"{path} differs; rerun with DIGEST_UPDATE_GOLDEN=1"
        )
