"""Canonical URLs, fingerprints, sanitizing and boilerplate trimming, with golden files for trimming."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from digest.extract import (
    canonical_url,
    clean_line,
    fingerprint,
    html_to_text,
    sanitize_html,
    split_paragraphs,
    summarize,
    trim_boilerplate,
    trim_boilerplate_html,
)

ROOT = Path(__file__).parent
ARTICLES = ROOT / "fixtures" / "articles"
GOLDEN = ROOT / "golden" / "extract"
SEED = ROOT.parent / "src" / "digest" / "defaults" / "seeds" / "000_ef3eb6749892e7fe.txt"


def check_golden(path: Path, rendered: object) -> None:
    text = json.dumps(rendered, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    if os.environ.get("DIGEST_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"missing golden file {path}; run with DIGEST_UPDATE_GOLDEN=1"
    assert text == path.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("url", "base", "expected"),
    [
        ("HTTPS://Example.COM:443/a/b?b=2&a=1#top", None, "https://example.com/a/b?a=1&b=2"),
        ("http://example.com:80", None, "http://example.com/"),
        ("http://example.com:8080/x", None, "http://example.com:8080/x"),
        (
            "https://news.example/s?utm_source=rss&utm_medium=feed&id=7&fbclid=x&gclid=y&mc_cid=1&mc_eid=2",
            None,
            "https://news.example/s?id=7",
        ),
        (
            "https://news.example/s?ref=home&ref_src=twsrc&igshid=1&yclid=2&_hsenc=3&_hsmi=4&mkt_tok=5",
            None,
            "https://news.example/s",
        ),
        ("/posts/1?UTM_Campaign=x", "https://blog.example/index.html", "https://blog.example/posts/1"),
        ("../img/a.png", "https://blog.example/posts/2024/x", "https://blog.example/posts/img/a.png"),
        ("javascript:alert(1)", None, None),
        ("mailto:someone@example.com", None, None),
        ("ftp://files.example/a", None, None),
        ("/relative/without/base", None, None),
        ("", None, None),
        ("http://[::1]:8000/x", None, "http://[::1]:8000/x"),
        ("http://example.com:99999/", None, None),
        ("  https://example.com/a%20b?q=a+b  ", None, "https://example.com/a%20b?q=a+b"),
    ],
)
def test_canonical_url_normalizes_scheme_host_port_query_and_drops_tracking(
    url: str, base: str | None, expected: str | None
) -> None:
    assert canonical_url(url, base) == expected


def test_one_story_decorated_differently_has_one_fingerprint() -> None:
    plain = fingerprint("Lifeboat crew rescues four kayakers", "Four kayakers were rescued.\n\nAll are safe.")
    decorated = fingerprint(
        "  LIFEBOAT Crew — rescues four kayakers! ", "Four  kayakers were rescued…  All are safe"
    )
    assert plain == decorated
    assert len(plain) == 64


def test_different_stories_have_different_fingerprints() -> None:
    assert fingerprint("Bridge closed", "Repairs start Monday.") != fingerprint(
        "Bridge open", "Repairs done."
    )


def test_fingerprint_looks_only_at_the_start_of_long_text() -> None:
    start = "word " * 200
    assert fingerprint("T", start + "ending one") == fingerprint("T", start + "ending two")


@pytest.mark.parametrize(
    ("raw", "max_len", "expected"),
    [
        ("Bridge closed\r\nBcc: victim@example.com", 300, "Bridge closed Bcc: victim@example.com"),
        ("Null\x00byte\x1b[31m and tab\there", 300, "Null byte [31m and tab here"),
        ("  spaced   out  ", 300, "spaced out"),
        ("AT&amp;T &lt;b&gt;", 300, "AT&amp;T &lt;b&gt;"),
        ("Right-to-left \u202eoverride", 300, "Right-to-left override"),
        ("one two three four five six", 14, "one two three…"),
        ("Supercalifragilistic", 10, "Supercali…"),
    ],
)
def test_clean_line_makes_one_safe_bounded_line(raw: str, max_len: int, expected: str) -> None:
    assert clean_line(raw, max_len) == expected
    assert len(clean_line(raw, max_len)) <= max_len


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("One sentence. Two sentences! Three sentences?", "One sentence. Two sentences!"),
        (
            "Mr. Smith met Dr. Jones in the U.S. capital. They talked.",
            "Mr. Smith met Dr. Jones in the U.S. capital. They talked.",
        ),
        ("Short.", "Short."),
        ("", ""),
    ],
)
def test_summary_is_about_two_sentences(text: str, expected: str) -> None:
    assert summarize(text) == expected


def test_summary_of_one_long_sentence_is_cut_on_a_word_boundary() -> None:
    summary = summarize("word " * 100, max_chars=50)
    assert summary.endswith("word…")
    assert len(summary) <= 50


def test_summary_drops_second_sentence_that_would_overflow() -> None:
    first = "A" * 200 + "."
    assert summarize(first + " " + "B" * 100 + ".") == first


def test_sanitizer_removes_scripts_handlers_frames_styles_and_javascript_links() -> None:
    hostile = (
        '<p onclick="x()" style="color:red">Text <a href="javascript:alert(1)">a</a>'
        '<a href="JAVASCRIPT:alert(2)">b</a><a href="data:text/html,x">c</a></p>'
        '<script>steal()</script><style>p{}</style><iframe src="https://evil.example">fallback</iframe>'
        '<img src="x.png" onerror="alert(1)"><svg><script>alert(3)</script></svg><object data="x"></object>'
    )
    clean = sanitize_html(hostile, "https://site.example/post/").lower()
    for forbidden in (
        "script",
        "onclick",
        "onerror",
        "javascript",
        "data:",
        "iframe",
        "style",
        "fallback",
        "svg",
    ):
        assert forbidden not in clean
    assert '<img src="https://site.example/post/x.png">' in clean


def test_sanitizer_makes_links_absolute_and_adds_rel() -> None:
    html = '<p><a href="/a" title="T" target="_blank">a</a> <a href="mailto:x@example.com">m</a></p>'
    assert sanitize_html(html, "https://site.example/blog/") == (
        '<p><a href="https://site.example/a" title="T" rel="noopener noreferrer">a</a> '
        '<a href="mailto:x@example.com" rel="noopener noreferrer">m</a></p>'
    )


def test_sanitizer_drops_relative_links_when_there_is_no_base() -> None:
    assert sanitize_html('<a href="/a">a</a><img src="b.png" alt="b">') == (
        '<a rel="noopener noreferrer">a</a><img alt="b">'
    )


def test_html_to_text_separates_blocks_with_blank_lines() -> None:
    html = (
        "<h2>Head</h2><p>One <b>two</b>\n   three<br>four</p><ul><li>a</li><li>b</li></ul><script>x</script>"
    )
    assert html_to_text(html) == "Head\n\nOne two three\nfour\n\na\n\nb"


def test_control_characters_before_the_first_tag_are_dropped_not_fatal() -> None:
    # A JSON Feed's "\u000b" or a pushed article's text reaches lxml, which refuses these.
    assert html_to_text("\x0bOne<p>two\x00</p>") == "One\n\ntwo"
    assert trim_boilerplate_html("\ufffeOne<p>two</p>") == "One<p>two</p>"


def test_seed_article_loses_its_plug_author_box_and_related_block() -> None:
    _headline, _, body = SEED.read_text(encoding="utf-8").partition("\n")
    paragraphs = split_paragraphs(body)
    kept = trim_boilerplate(paragraphs)
    assert kept[-1].startswith("“We express deep regret")
    assert kept == paragraphs[: len(kept)]
    tail = " ".join(kept).lower()
    for leftover in ("spam", "your email", "about author", "you may also like", "instagram"):
        assert leftover not in tail


def test_body_sentences_that_mention_newsletters_or_related_things_stay() -> None:
    paragraphs = [
        "The council's newsletter goes to 2,400 homes and costs £6,000 a year to print.",
        "Costs related to energy rose, and analysts recommended caution.",
        "Readers can subscribe to email updates from the council, the clerk said on Friday.",
    ]
    assert trim_boilerplate(paragraphs) == paragraphs


def test_trimming_never_removes_the_whole_article() -> None:
    assert trim_boilerplate(["Subscribe to our newsletter for updates in your inbox."]) == [
        "Subscribe to our newsletter for updates in your inbox."
    ]
    assert trim_boilerplate(["Related", "A teaser headline"]) == ["Related", "A teaser headline"]
    assert trim_boilerplate(["Body text.", "Related", "A teaser headline"]) == ["Body text."]
    assert trim_boilerplate([]) == []


@given(st.lists(st.text(min_size=1, max_size=80), min_size=1, max_size=12))
def test_trimming_keeps_a_nonempty_subset_of_the_paragraphs(paragraphs: list[str]) -> None:
    kept = trim_boilerplate(paragraphs)
    assert kept
    assert all(p in paragraphs for p in kept)


@pytest.mark.parametrize("path", sorted(ARTICLES.iterdir()), ids=lambda p: p.name)
def test_boilerplate_trimming_matches_golden_file(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    if path.suffix == ".txt":
        paragraphs = split_paragraphs(source)
        kept = trim_boilerplate(paragraphs)
        rendered: object = {"kept": kept, "removed": [p for p in paragraphs if p not in kept]}
    else:
        trimmed = trim_boilerplate_html(source)
        rendered = {"html": sanitize_html(trimmed), "text": html_to_text(trimmed)}
    check_golden(GOLDEN / f"{path.stem}.json", rendered)
