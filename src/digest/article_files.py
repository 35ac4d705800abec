"""The article files of a directory source (.txt, .md, .html) as SourceItems (pure; ingest reads them).

A text file's first line is its title. Markdown may open with front matter (title, url or link,
author, date, image, summary). An HTML file's <article>, <main> or <body> is its content, and its
canonical link and meta tags give the rest. A first <h1> is taken as the title and left out of
the content.
"""

from __future__ import annotations

import html as html_lib
import re
from collections.abc import Callable
from typing import Any

import lxml.html
from markdown_it import MarkdownIt

from digest.extract import canonical_url, parse_fragment, text_to_html
from digest.source_items import SourceItem, parse_date


def _read_text(text: str, relative: str) -> SourceItem | None:
    fields, text = _front_matter(text)
    headline, _, body = text.lstrip().partition("\n")
    title = fields.get("title") or headline
    if not title.strip():
        return None
    dated = _date_field(fields)
    return SourceItem(
        label=relative,
        guid=f"file:{relative}",
        link=None,
        title=title,
        author=fields.get("author"),
        published=parse_date(dated),
        content_html=text_to_html(body if not fields.get("title") else text),
        date_text=dated,
        categories=_listed(fields.get("categories") or fields.get("tags")),
    )


def _listed(value: str | None) -> tuple[str, ...]:
    """A front-matter list: `[a, b]`, `a, b` or one value."""
    if not value:
        return ()
    return tuple(v.strip().strip("\"'") for v in value.strip().strip("[]").split(",") if v.strip())


def _date_field(fields: dict[str, str]) -> str | None:
    """The date front matter gives, under either name static-site tools use."""
    return fields.get("published") or fields.get("date")


_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.DOTALL)


def _front_matter(text: str) -> tuple[dict[str, str], str]:
    match = _FRONT_MATTER.match(text.lstrip("\ufeff"))
    if not match:
        return {}, text
    fields: dict[str, str] = {}
    for line in match.group(1).splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and not line[:1].isspace():
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            fields[key.strip().lower()] = value
    return fields, text[match.end() :]


def _read_markdown(text: str, relative: str) -> SourceItem | None:
    fields, body = _front_matter(text)
    if not body.strip() and not fields.get("title"):
        return None
    root = parse_fragment(MarkdownIt("commonmark").render(body))
    heading = _take_heading(root)
    title = fields.get("title") or heading or ""
    link = fields.get("url") or fields.get("link")
    return SourceItem(
        label=relative,
        guid=None if canonical_url(link or "") else f"file:{relative}",
        link=link,
        title=title,
        author=fields.get("author"),
        published=parse_date(_date_field(fields)),
        date_text=_date_field(fields),
        content_html=_inner_html(root),
        image=fields.get("image"),
        base=link,
        summary=fields.get("summary"),
        categories=_listed(fields.get("categories") or fields.get("tags")),
    )


def _read_html(text: str, relative: str) -> SourceItem | None:
    if not text.strip():
        return None
    document = lxml.html.document_fromstring(text)
    container = next(
        (found[0] for xpath in ("//article", "//main", "//body") if (found := document.xpath(xpath))),
        document,
    )

    def meta(*names: str) -> str | None:
        for meta_name in names:
            for el in document.xpath("//meta[@property=$n or @name=$n]", n=meta_name):
                if el.get("content", "").strip():
                    return str(el.get("content")).strip()
        return None

    canonical = document.xpath("//link[@rel='canonical']/@href")
    link = (str(canonical[0]) if canonical else None) or meta("og:url")
    title = _take_heading(container) or " ".join(document.xpath("//title//text()")) or meta("og:title") or ""
    return SourceItem(
        label=relative,
        guid=None if canonical_url(link or "") else f"file:{relative}",
        link=link,
        title=title,
        author=meta("author", "article:author"),
        published=parse_date(meta("article:published_time", "date")),
        content_html=_inner_html(container),
        image=meta("og:image"),
        base=link,
    )


def _take_heading(root: Any) -> str | None:
    """The first <h1>'s text, removed from the content because it is the title (or repeats it)."""
    for heading in root.iter("h1"):
        text = " ".join(heading.text_content().split())
        heading.drop_tree()
        return text or None
    return None


def _inner_html(root: Any) -> str:
    children = "".join(lxml.html.tostring(child, encoding="unicode") for child in root)
    return html_lib.escape(str(root.text or ""), quote=False) + children


# By file suffix: a file whose suffix is not here is not an article and is passed over in silence.
PARSERS: dict[str, Callable[[str, str], SourceItem | None]] = {
    ".txt": _read_text,
    ".md": _read_markdown,
    ".markdown": _read_markdown,
    ".html": _read_html,
    ".htm": _read_html,
}
