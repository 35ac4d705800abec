"""Render an edition or a confirmation into subject, HTML and text.

Pure: no database, sockets, clock or environment. Dates arrive in the views, and the
per-reader token stays a placeholder (`TOKEN_PLACEHOLDER`) that the sender substitutes
in the decoded parts, so one rendering (and one premailer pass) serves a whole edition.

Templates live in `<dir>/email/<name>/{subject.txt, body.txt, body.html}`; operators may
point the config at their own copy of `templates/`.

Size discipline (STANDARDS item 48): an edition's decoded HTML must stay under 90 KB after the
longest token is substituted, or Gmail clips it and hides the unsubscribe link. `render_edition`
measures the Jinja output plus the growth premailer is known to add (calibrated once per
`Templates`), shortens summaries and then moves trailing articles into "and N more" until it
fits, and only then runs premailer, once, on the final HTML. The footer is never trimmed.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import cssutils
import jinja2
from premailer import Premailer

from digest.errors import TemplateError

log = logging.getLogger("digest.rendering")

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
# Feed text must not reorder the rest of the digest: embeddings and overrides (U+202A-U+202E)
# and isolates (U+2066-U+2069) left open by a hostile title would flip every line after it in the
# text part. Right-to-left scripts need none of them. Lone surrogates (undecodable bytes smuggled
# through surrogateescape or JSON escapes) and noncharacters cannot be encoded as UTF-8 at all.
_BIDI_CONTROLS = re.compile(r"[\u202a-\u202e\u2066-\u2069]")
_UNENCODABLE = re.compile(r"[\ud800-\udfff\ufffe\uffff]")

# Gmail clips a message whose HTML passes about 102 KB (STANDARDS item 48).
HTML_BUDGET = 90_000
# The longest per-reader token the budget leaves room for, in each placeholder it replaces.
MAX_TOKEN_LENGTH = 256
# Headlines and summaries are shown whole up to these lengths, then cut at a word.
TITLE_MAX = 200
SUMMARY_MAX = 600
# Shorter summaries tried, in order, when an edition is over the budget.
_SUMMARY_STEPS = (SUMMARY_MAX, 240, 120)
# An image URL longer than this is not a real image address; the card goes without it.
_IMAGE_URL_MAX = 2048
# Article thumbnails (16:9), and the narrower size phones get through the @media rule.
THUMB_WIDTH, THUMB_HEIGHT, THUMB_PHONE_WIDTH = 120, 68, 88
# SpamAssassin's HTML_IMAGE_RATIO_* rules fire below 0.008 characters of text per pixel of
# declared image area; stories beyond this ratio (with room to spare) go without their thumbnail.
_MIN_TEXT_PER_PIXEL = 0.012


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
        self._html_env.filters["breakable"] = breakable
        names = sorted({*_REQUIRED_EMAILS, *(p.name for p in emails.iterdir() if p.is_dir())})
        self._compiled = {
            (name, filename): self._compile(name, filename) for name in names for filename in _TEMPLATE_FILES
        }
        self._growth: tuple[float, float] | None = None
        # A template that compiles can still fail when rendered (an unknown variable, a bad
        # filter argument): render samples that take every branch, so it fails now, naming the
        # file and line, rather than at the first send.
        for view in _sample_editions():
            _render_parts(self, "digest", _edition_context(view, view.articles, view.more_count))
        _render_parts(self, "confirm", _confirm_context(_sample_confirmation()))

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
        except Exception as exc:  # a filter's TypeError is as much a broken template as a syntax error
            path = template.filename or f"email/{name}/{filename}"
            line = _template_line(exc, path)
            where = f"{path}, line {line}" if line else path
            raise TemplateError(f"{where}: {exc}") from exc

    def inline_growth(self) -> tuple[float, float]:
        """Bytes premailer adds to the digest: (fixed, per article), measured once on samples.

        Premailer copies class rules into style attributes, so its growth depends on the
        template's markup, not on the feed text (it only shortens text, writing `&#34;` as `"`).
        """
        if self._growth is None:
            sizes = []
            for count in (0, 4):
                view = _sample_edition(count)
                raw = _render_parts(self, "digest", _edition_context(view, view.articles, 0)).html
                inlined = _inline_css(raw, base_url=view.base_url)
                sizes.append(len(inlined.encode()) - len(raw.encode()))
            fixed, with_four = sizes
            self._growth = (max(fixed, 0.0), max((with_four - fixed) / 4, 0.0))
        return self._growth


def default_templates_dir() -> Path:
    """The templates shipped with digest: the checkout's copy, else the installed one."""
    checkout = Path(__file__).parents[2] / "templates"
    # Checking for email/ keeps an unrelated "templates" folder beside site-packages from winning.
    if (checkout / "email").is_dir():
        return checkout
    return Path(__file__).parent / "defaults" / "templates"


def render_edition(templates: Templates, view: EditionView) -> Rendered:
    """Subject, HTML and text of an edition, its HTML under `HTML_BUDGET` (see the module doc)."""
    articles = [_clean_article(a) for a in view.articles]
    parts = _fit_edition(templates, view, articles)
    html = _inline_css(parts.html, base_url=view.base_url.rstrip("/"))
    # The growth estimate is calibrated on samples; should an operator's template grow more than
    # it said, keep dropping stories (never the footer) until the real thing fits.
    kept = len(parts.articles)
    while _budget_size(html) >= HTML_BUDGET and kept > 0:
        kept -= 1
        log.warning(
            "edition of %s is over %d bytes after inlining; keeping %d stories",
            view.list_slug,
            HTML_BUDGET,
            kept,
        )
        parts = _render_parts(
            templates,
            "digest",
            _edition_context(view, parts.articles[:kept], view.more_count + len(articles) - kept),
        )
        html = _inline_css(parts.html, base_url=view.base_url.rstrip("/"))
    return Rendered(subject=parts.subject, html=html, text=parts.text)


def render_confirmation(templates: Templates, view: ConfirmView) -> Rendered:
    parts = _render_parts(templates, "confirm", _confirm_context(view))
    return Rendered(
        subject=parts.subject,
        html=_inline_css(parts.html, base_url=view.base_url.rstrip("/")),
        text=parts.text,
    )


@dataclass(frozen=True)
class _Parts:
    """One email rendered by Jinja, before premailer."""

    subject: str
    html: str
    text: str
    articles: Sequence[ArticleView] = ()


def _fit_edition(templates: Templates, view: EditionView, articles: Sequence[ArticleView]) -> _Parts:
    """The richest rendering whose estimated final HTML fits the budget.

    First shorter summaries, then fewer stories (the rest are counted in "and N more"); each try
    is a Jinja render only, which takes milliseconds even at 100 articles.
    """
    fixed, per_article = templates.inline_growth()

    def attempt(kept: Sequence[ArticleView]) -> tuple[_Parts, bool]:
        more = view.more_count + len(articles) - len(kept)
        kept = _within_image_ratio(view, kept)
        parts = _render_parts(templates, "digest", _edition_context(view, kept, more))
        parts = dataclasses.replace(parts, articles=kept)
        estimate = _budget_size(parts.html) + fixed + per_article * len(kept)
        return parts, estimate < HTML_BUDGET

    shortened: Sequence[ArticleView] = articles
    for limit in _SUMMARY_STEPS:
        shortened = [dataclasses.replace(a, summary=_shorten(a.summary, limit)) for a in articles]
        parts, fits = attempt(shortened)
        if fits:
            return parts
    # Binary search for the most stories that fit. Zero stories still render the footer, and
    # are returned even if over the budget (only list name and address are left to blame).
    lo, hi = 0, len(shortened) - 1
    best: _Parts | None = None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        parts, fits = attempt(shortened[:mid])
        if fits:
            lo, best = mid, parts
        else:
            hi = mid - 1
    return best if best is not None else attempt([])[0]


def _within_image_ratio(view: EditionView, articles: Sequence[ArticleView]) -> list[ArticleView]:
    """Drop thumbnails from the last stories while text per pixel of image is too low.

    The text is estimated from what the cards and the footer say; the footer alone is a few
    hundred characters, so only text-poor editions (short titles, no summaries) lose any.
    """
    text = 400 + len(view.list_name) + len(view.postal_address) + len(view.branding.footer_text)
    text += sum(len(a.title) + len(a.source) + len(a.summary) + 14 for a in articles)
    area = view.branding.logo_width * view.branding.logo_height if view.branding.logo_url else 0
    allowed = max(int((text / _MIN_TEXT_PER_PIXEL - area) // (THUMB_WIDTH * THUMB_HEIGHT)), 0)
    kept: list[ArticleView] = []
    for a in articles:
        if a.image_url and allowed > 0:
            allowed -= 1
        elif a.image_url:
            a = dataclasses.replace(a, image_url=None)
        kept.append(a)
    return kept


def _budget_size(html: str) -> int:
    """Bytes of the HTML once the longest token we allow replaces every placeholder."""
    grow = html.count(TOKEN_PLACEHOLDER) * (MAX_TOKEN_LENGTH - len(TOKEN_PLACEHOLDER))
    return len(html.encode()) + grow


def _edition_context(view: EditionView, articles: Sequence[ArticleView], more_count: int) -> dict[str, Any]:
    base_url = view.base_url.rstrip("/")
    list_name = _clean(view.list_name)
    branding = view.branding
    contact = _clean(view.contact)
    logo_url = branding.logo_url if branding.logo_url and _is_https(branding.logo_url) else None
    return {
        "list_slug": view.list_slug,
        "list_name": list_name,
        "list_description": _clean(view.list_description),
        "language": view.language,
        "direction": view.direction,
        "start": "right" if view.direction == "rtl" else "left",
        "end": "left" if view.direction == "rtl" else "right",
        "edition_date": view.edition_date,
        "articles": list(articles),
        "more_count": more_count,
        "total_count": len(articles) + more_count,
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
        "thumb": {"width": THUMB_WIDTH, "height": THUMB_HEIGHT, "phone_width": THUMB_PHONE_WIDTH},
        "accent": branding.accent,
        "accent_text": _readable_on(branding.accent),
        "light": dataclasses.replace(LIGHT_PALETTE, link=_link_colour(branding.accent)),
        "dark": DARK_PALETTE,
        "preheader": _preheader(
            [a.title for a in articles], f"New in {list_name} for {_long_date(view.edition_date)}"
        ),
    }


def _confirm_context(view: ConfirmView) -> dict[str, Any]:
    names = [_clean(n) for n in view.list_names]
    lists = _join_names(names)
    return {
        "list_names": names,
        "lists": lists,
        "confirm_url": view.confirm_url,
        "base_url": view.base_url.rstrip("/"),
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


_SAMPLE_BASE = "https://news.example.com"


def _sample_edition(count: int, *, full: bool = True) -> EditionView:
    """A made-up edition for checking templates at start and measuring premailer's growth."""
    return EditionView(
        list_slug="sample",
        list_name="Sample Weekly",
        list_description="A sample list used to check the templates" if full else "",
        language="en",
        direction="ltr",
        edition_date=date(2026, 1, 5),
        articles=[
            ArticleView(
                title=f"Sample headline number {n} about the harbour",
                url=f"{_SAMPLE_BASE}/articles/{n}",
                source="Sample Gazette",
                published_at=datetime(2026, 1, 5, 6, 0, tzinfo=UTC),
                summary="A sample summary of a story, one sentence long." if full or n % 2 else "",
                image_url=f"{_SAMPLE_BASE}/static/sample-{n}.jpg" if full or n % 2 else None,
            )
            for n in range(count)
        ],
        more_count=3 if full else 0,
        archive_url=f"{_SAMPLE_BASE}/archive/sample",
        web_url=f"{_SAMPLE_BASE}/editions/1",
        base_url=_SAMPLE_BASE,
        postal_address="Sample Street 1\n1000 Sample Town",
        contact=f"{_SAMPLE_BASE}/contact" if full else "editor@news.example.com",
        branding=Branding(
            logo_url=f"{_SAMPLE_BASE}/static/logo.png" if full else None,
            footer_text="Sample footer text." if full else "",
        ),
    )


def _sample_editions() -> list[EditionView]:
    return [_sample_edition(2), _sample_edition(2, full=False), _sample_edition(0, full=False)]


def _sample_confirmation() -> ConfirmView:
    return ConfirmView(
        list_names=["Sample Weekly", "Sample Daily", "Sample Sport"],
        confirm_url=f"{_SAMPLE_BASE}/confirm/sample",
        base_url=_SAMPLE_BASE,
        postal_address="Sample Street 1\n1000 Sample Town",
        sender_name="Sample News",
    )


def contrast_ratio(foreground: str, background: str) -> float:
    """WCAG 2.1 contrast ratio of two #rrggbb colours, from 1.0 to 21.0."""
    lighter, darker = sorted((_luminance(foreground), _luminance(background)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def _render_parts(templates: Templates, name: str, context: dict[str, Any]) -> _Parts:
    # The HTML <title> and the text part show the subject, so it is settled first.
    subject = _one_line(templates._render(name, "subject.txt", context))
    context = {**context, "subject": subject}
    text = templates._render(name, "body.txt", context).replace("\r", "")
    html = templates._render(name, "body.html", context)
    return _Parts(subject=subject, html=html, text=text)


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
    value = _UNENCODABLE.sub("\ufffd", _BIDI_CONTROLS.sub("", _CONTROL_CHARS.sub("", value)))
    return " ".join(value.split())


def _clean_lines(value: str) -> str:
    lines = (_clean(line) for line in value.splitlines())
    return "\n".join(line for line in lines if line)


def _clean_article(article: ArticleView) -> ArticleView:
    # Plain http images are blocked or flagged as mixed content by several clients,
    # and the layout must not depend on them.
    image = article.image_url
    if not image or not _is_https(image) or len(image) > _IMAGE_URL_MAX:
        image = None
    return dataclasses.replace(
        article,
        title=_shorten(_clean(article.title), TITLE_MAX),
        source=_shorten(_clean(article.source), 100),
        summary=_shorten(_clean(article.summary), SUMMARY_MAX),
        image_url=image,
    )


def _shorten(text: str, limit: int) -> str:
    """At most `limit` characters, cut at a word when there is one in the last fifth."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit * 4 // 5:
        cut = cut[:space]
    return cut.rstrip(" ;,.:-") + "…"


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
    """Button text colour: white or the near-black body text, else pure black, reaching 4.5:1.

    White or black always reaches at least 4.58:1 on any colour (the square root of 21).
    """
    light, dark = LIGHT_PALETTE.card, LIGHT_PALETTE.text
    best = light if contrast_ratio(light, background) >= contrast_ratio(dark, background) else dark
    if contrast_ratio(best, background) >= 4.5:
        return best
    return light if contrast_ratio(light, background) >= contrast_ratio("#000000", background) else "#000000"


_LONG_WORD = re.compile(r"[^\s\u200b]{25,}")


def breakable(text: str) -> str:
    """Text with a zero-width space every 20 characters of any run longer than 24.

    A table cell is never narrower than its longest word, so one 200-character "word" in a
    feed title would widen the whole digest past a phone's screen; CSS to prevent that
    (overflow-wrap: anywhere) is missing from most email clients.
    """
    return _LONG_WORD.sub(lambda m: "\u200b".join(m[0][i : i + 20] for i in range(0, len(m[0]), 20)), text)


def _link_colour(accent: str) -> str:
    # An operator's pale accent would make links unreadable; fall back to body text.
    worst_background = min(
        (LIGHT_PALETTE.card, LIGHT_PALETTE.page), key=lambda bg: contrast_ratio(accent, bg)
    )
    return accent if contrast_ratio(accent, worst_background) >= 4.5 else LIGHT_PALETTE.text
