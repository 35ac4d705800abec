"""What templates are given and what they give back: plain frozen values, no behaviour."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

from digest.display_text import is_web_url
from digest.palette import HEX_COLOUR

LANGUAGE_TAG = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*")


@dataclass(frozen=True)
class Branding:
    accent: str = "#1a56db"
    logo_url: str | None = None
    footer_text: str = ""
    # Email clients lay out before images load and Outlook ignores CSS sizes, so the
    # logo's box has to be declared up front.
    logo_width: int = 160
    logo_height: int = 40

    def __post_init__(self) -> None:
        if not HEX_COLOUR.fullmatch(self.accent):
            raise ValueError(f"branding accent {self.accent!r} is not a 6-digit hex colour such as #1a56db")
        if self.logo_width <= 0 or self.logo_height <= 0:
            raise ValueError(f"branding logo size {self.logo_width}x{self.logo_height} must be positive")


@dataclass(frozen=True)
class ArticleView:
    title: str
    url: str
    source: str
    published_at: datetime
    summary: str
    image_url: str | None
    author: str | None = None
    # "ltr" or "rtl", from the story's own text (rendering works it out when left empty): an
    # Arabic story in an English digest is laid out right-to-left, aligned to the right.
    direction: str = ""
    # The topic heading this story is shown under (empty: no headings, the reader has one topic).
    section: str = ""
    # The same story as other sources told it: (source, url) each, shown as "Also reported by".
    also: Sequence[tuple[str, str]] = ()

    def __post_init__(self) -> None:
        if not is_web_url(self.url):
            raise ValueError(f"article {self.title!r} has no absolute http(s) URL: {self.url!r}")
        if self.published_at.utcoffset() is None:
            raise ValueError(f"article {self.title!r} has a naive published_at")


@dataclass(frozen=True)
class EditionView:
    list_slug: str
    list_name: str
    list_description: str
    language: str
    direction: str
    edition_date: date
    articles: Sequence[ArticleView]
    more_count: int
    archive_url: str
    web_url: str
    base_url: str
    postal_address: str
    contact: str
    branding: Branding
    # The page listing every new story of the edition, those left out included ("and N more").
    more_url: str = ""
    # When the edition was composed: the header shows that day in each reader's own zone.
    composed_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.direction not in ("ltr", "rtl"):
            raise ValueError(f"list {self.list_slug!r}: direction {self.direction!r} is not 'ltr' or 'rtl'")
        if not LANGUAGE_TAG.fullmatch(self.language):
            raise ValueError(f"list {self.list_slug!r}: language {self.language!r} is not a BCP 47 tag")
        if self.more_count < 0:
            raise ValueError(f"list {self.list_slug!r}: more_count {self.more_count} is negative")


@dataclass(frozen=True)
class ConfirmView:
    list_names: Sequence[str]
    confirm_url: str
    base_url: str
    postal_address: str
    sender_name: str


@dataclass(frozen=True)
class WelcomeList:
    """One list a reader just confirmed, as the welcome mail describes it."""

    name: str
    description: str
    schedule: str  # "every day at 07:00 (UTC)"
    first_at: datetime | None  # the reader's first slot
    latest_url: str | None  # the web copy of the list's latest digest, if it has sent one


@dataclass(frozen=True)
class WelcomeView:
    reader_name: str
    zone: str  # the reader's time zone: every time in the mail is shown in it
    lists: Sequence[WelcomeList]
    base_url: str
    postal_address: str
    sender_name: str


@dataclass(frozen=True)
class Rendered:
    subject: str
    html: str
    text: str
