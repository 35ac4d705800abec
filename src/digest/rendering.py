"""Render an edition or a confirmation into subject, HTML and text.

Pure: no database, sockets, clock or environment. Dates arrive in the views, and the
per-reader token stays a placeholder (`TOKEN_PLACEHOLDER`) that the sender substitutes
in the decoded parts, so one rendering (and one premailer pass) serves a whole edition.

Templates live in `<dir>/email/<name>/{subject.txt, body.txt, body.html}`; operators may
point the config at their own copy of `templates/`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import cssutils
import jinja2
from premailer import Premailer

from digest.errors import TemplateError

# Not a secret: a marker the sender replaces with each reader's token after rendering.
TOKEN_PLACEHOLDER = "__DIGEST_TOKEN__"  # noqa: S105

# Without this cssutils rewrites #ffffff as #fff while inlining, and some clients
# (Lotus Notes, Gmail in places) mishandle 3-digit colours (STANDARDS item 46-47).
cssutils.ser.prefs.minimizeColorHash = False

_TEMPLATE_FILES = ("subject.txt", "body.txt", "body.html")
_REQUIRED_EMAILS = ("digest", "confirm")
_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
_HEX_COLOUR = re.compile(r"#[0-9A-Fa-f]{6}")
# lxml (inside premailer) refuses C0 controls, and they have no business in mail text anyway.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_REPLY_PREFIX = re.compile(r"^(?:(?:re|fwd?|aw|tr)\s*:\s*)+", re.IGNORECASE)
_LANGUAGE_TAG = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8})*")
_PREHEADER_MIN, _PREHEADER_MAX = 40, 130


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
        if not _HEX_COLOUR.fullmatch(self.accent):
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

    def __post_init__(self) -> None:
        if not _is_web_url(self.url):
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

    def __post_init__(self) -> None:
        if self.direction not in ("ltr", "rtl"):
            raise ValueError(f"list {self.list_slug!r}: direction {self.direction!r} is not 'ltr' or 'rtl'")
        if not _LANGUAGE_TAG.fullmatch(self.language):
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
class Rendered:
    subject: str
    html: str
    text: str


@dataclass(frozen=True)
class Palette:
    """Colours the templates paint with; kept here so their contrast is unit-tested."""

    page: str
    card: str
    text: str
    muted: str
    rule: str
    link: str


# Every text colour reaches 4.5:1 on both page and card (WCAG 2.1 SC 1.4.3).
LIGHT_PALETTE = Palette(
    page="#f3f4f6", card="#ffffff", text="#111827", muted="#4b5563", rule="#e5e7eb", link="#1a56db"
)
DARK_PALETTE = Palette(
    page="#111111", card="#1f2937", text="#f9fafb", muted="#d1d5db", rule="#374151", link="#93c5fd"
)


class Templates:
    """Loads templates/email/<name>/{subject.txt, body.txt, body.html} from a directory.

    Every email folder is compiled up front so a broken template stops the service at
    start, not at the first send.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        emails = directory / "email"
        if not emails.is_dir():
            raise TemplateError(f"template directory {emails} does not exist")
        loader = jinja2.FileSystemLoader(directory)
        self._html_env = jinja2.Environment(
            loader=loader,
            autoescape=jinja2.select_autoescape(["html"]),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        # Plain text is never parsed as markup, so escaping would only corrupt "&" and "<".
        self._text_env = jinja2.Environment(
            loader=loader,
            autoescape=False,  # noqa: S701
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        for env in (self._html_env, self._text_env):
            env.filters["long_date"] = _long_date
            env.filters["short_date"] = _short_date
        names = sorted({*_REQUIRED_EMAILS, *(p.name for p in emails.iterdir() if p.is_dir())})
        self._compiled = {
            (name, filename): self._compile(name, filename) for name in names for filename in _TEMPLATE_FILES
        }

    def _compile(self, name: str, filename: str) -> jinja2.Template:
        path = self.directory / "email" / name / filename
        if not path.is_file():
            raise TemplateError(f"template {path} is missing")
        env = self._html_env if filename.endswith(".html") else self._text_env
        try:
            return env.get_template(f"email/{name}/{filename}")
        except jinja2.TemplateSyntaxError as exc:
            where = exc.filename or str(path)
            raise TemplateError(f"{where}, line {exc.lineno}: {exc.message}") from exc

    def _render(self, name: str, filename: str, context: Mapping[str, Any]) -> str:
        template = self._compiled.get((name, filename))
        if template is None:
            raise TemplateError(f"template {self.directory / 'email' / name / filename} is missing")
        try:
            return template.render(context)
        except jinja2.TemplateError as exc:
            path = template.filename or f"email/{name}/{filename}"
            line = _template_line(exc, path)
            where = f"{path}, line {line}" if line else path
            raise TemplateError(f"{where}: {exc}") from exc


def default_templates_dir() -> Path:
    """The templates shipped with digest: the checkout's copy, else the installed one."""
    checkout = Path(__file__).parents[2] / "templates"
    # Checking for email/ keeps an unrelated "templates" folder beside site-packages from winning.
    if (checkout / "email").is_dir():
        return checkout
    return Path(__file__).parent / "defaults" / "templates"


def render_edition(templates: Templates, view: EditionView) -> Rendered:
    base_url = view.base_url.rstrip("/")
    list_name = _clean(view.list_name)
    articles = [_clean_article(a) for a in view.articles]
    branding = view.branding
    contact = _clean(view.contact)
    logo_url = branding.logo_url if branding.logo_url and _is_https(branding.logo_url) else None
    context: dict[str, Any] = {
        "list_slug": view.list_slug,
        "list_name": list_name,
        "list_description": _clean(view.list_description),
        "language": view.language,
        "direction": view.direction,
        "start": "right" if view.direction == "rtl" else "left",
        "edition_date": view.edition_date,
        "articles": articles,
        "more_count": view.more_count,
        "total_count": len(articles) + view.more_count,
        "archive_url": view.archive_url,
        "web_url": view.web_url,
        "base_url": base_url,
        "unsubscribe_url": f"{base_url}/u/{TOKEN_PLACEHOLDER}",
        "preferences_url": f"{base_url}/p/{TOKEN_PLACEHOLDER}",
        "postal_address": _clean_lines(view.postal_address),
        "contact": contact,
        # Linked only when it is a web address: a mailto: href would be the only link
        # without an https twin in the text part (STANDARDS item 62).
        "contact_url": contact if _is_web_url(contact) else None,
        "footer_text": _clean(branding.footer_text),
        "logo": {"url": logo_url, "width": branding.logo_width, "height": branding.logo_height}
        if logo_url
        else None,
        "accent": branding.accent,
        "accent_text": _readable_on(branding.accent),
        "light": dataclasses.replace(LIGHT_PALETTE, link=_link_colour(branding.accent)),
        "dark": DARK_PALETTE,
        "preheader": _preheader(
            [a.title for a in articles], f"New in {list_name} for {_long_date(view.edition_date)}"
        ),
    }
    return _render_email(templates, "digest", context, base_url=base_url)


def render_confirmation(templates: Templates, view: ConfirmView) -> Rendered:
    base_url = view.base_url.rstrip("/")
    names = [_clean(n) for n in view.list_names]
    lists = _join_names(names)
    context: dict[str, Any] = {
        "list_names": names,
        "lists": lists,
        "confirm_url": view.confirm_url,
        "base_url": base_url,
        "postal_address": _clean_lines(view.postal_address),
        "sender_name": _clean(view.sender_name),
        "accent": LIGHT_PALETTE.link,
        "accent_text": _readable_on(LIGHT_PALETTE.link),
        "light": LIGHT_PALETTE,
        "dark": DARK_PALETTE,
        "preheader": _preheader(
            [f"Confirm your subscription to {lists}. The link expires in 48 hours."],
            "If you did not ask for this, ignore this email.",
        ),
    }
    return _render_email(templates, "confirm", context, base_url=base_url)


def contrast_ratio(foreground: str, background: str) -> float:
    """WCAG 2.1 contrast ratio of two #rrggbb colours, from 1.0 to 21.0."""
    lighter, darker = sorted((_luminance(foreground), _luminance(background)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def _render_email(templates: Templates, name: str, context: dict[str, Any], *, base_url: str) -> Rendered:
    # The HTML <title> and the text part show the subject, so it is settled first.
    subject = _one_line(templates._render(name, "subject.txt", context))
    context = {**context, "subject": subject}
    text = templates._render(name, "body.txt", context).replace("\r", "")
    html = _inline_css(templates._render(name, "body.html", context), base_url=base_url)
    return Rendered(subject=subject, html=html, text=text)


def _inline_css(html: str, *, base_url: str) -> str:
    """The one premailer pass: per edition, never per reader (it is slow on big documents).

    Settings per STANDARDS item 47: keep `!important` in the @media rules left in <head>,
    keep classes those rules target, never fetch stylesheets, keep 6-digit colours.
    """
    inliner = Premailer(
        html,
        allow_network=False,
        strip_important=False,
        remove_classes=False,
        disable_validation=True,
        cssutils_logging_level=logging.CRITICAL,
        base_url=base_url,
        preserve_internal_links=True,
    )
    return str(inliner.transform(pretty_print=False))


def _template_line(exc: BaseException, path: str) -> int | None:
    # Jinja rewrites tracebacks so template frames carry the template's file and line.
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == path:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _one_line(subject: str) -> str:
    # A header must never receive CR or LF (header injection, STANDARDS item 9), and
    # "Re:"/"Fwd:" prefixes are deceptive in bulk mail (item 26).
    flat = " ".join(_CONTROL_CHARS.sub("", subject).split())
    return _REPLY_PREFIX.sub("", flat).strip()


def _clean(value: str) -> str:
    return " ".join(_CONTROL_CHARS.sub("", value).split())


def _clean_lines(value: str) -> str:
    lines = (_clean(line) for line in value.splitlines())
    return "\n".join(line for line in lines if line)


def _clean_article(article: ArticleView) -> ArticleView:
    # Plain http images are blocked or flagged as mixed content by several clients,
    # and the layout must not depend on them.
    image = article.image_url if article.image_url and _is_https(article.image_url) else None
    return dataclasses.replace(
        article,
        title=_clean(article.title),
        source=_clean(article.source),
        summary=_clean(article.summary),
        image_url=image,
    )


def _preheader(phrases: Iterable[str], fallback: str) -> str:
    """40-130 characters for the inbox preview (STANDARDS item 49)."""
    kept: list[str] = []
    for phrase in filter(None, phrases):
        # Whole headlines read better in a preview than one cut mid-word.
        if kept and len("; ".join([*kept, phrase])) > _PREHEADER_MAX:
            break
        kept.append(phrase)
    text = "; ".join(kept)
    if len(text) < _PREHEADER_MIN:
        text = f"{text.rstrip('.')}. {fallback}" if text else fallback
    if len(text) <= _PREHEADER_MAX:
        return text
    cut = text[: _PREHEADER_MAX - 1]
    if " " in cut[_PREHEADER_MIN:]:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ;,.") + "…"


def _join_names(names: Sequence[str]) -> str:
    if len(names) <= 2:
        return " and ".join(names)
    return f"{', '.join(names[:-1])} and {names[-1]}"


def _long_date(value: date) -> str:
    # Not strftime: month names from it depend on the process locale.
    return f"{value.day} {_MONTHS[value.month - 1]} {value.year}"


def _short_date(value: date) -> str:
    return f"{value.day} {_MONTHS[value.month - 1][:3]} {value.year}"


def _is_web_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _is_https(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "https" and bool(parts.netloc)


def _luminance(colour: str) -> float:
    if not _HEX_COLOUR.fullmatch(colour):
        raise ValueError(f"{colour!r} is not a #rrggbb colour")

    def channel(hex_pair: str) -> float:
        c = int(hex_pair, 16) / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(colour[i : i + 2]) for i in (1, 3, 5))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _readable_on(background: str) -> str:
    """Button text colour: white or near-black, whichever contrasts more with the accent."""
    light, dark = LIGHT_PALETTE.card, LIGHT_PALETTE.text
    return light if contrast_ratio(light, background) >= contrast_ratio(dark, background) else dark


def _link_colour(accent: str) -> str:
    # An operator's pale accent would make links unreadable; fall back to body text.
    worst_background = min(
        (LIGHT_PALETTE.card, LIGHT_PALETTE.page), key=lambda bg: contrast_ratio(accent, bg)
    )
    return accent if contrast_ratio(accent, worst_background) >= 4.5 else LIGHT_PALETTE.text
