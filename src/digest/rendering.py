"""Render an edition, a confirmation or a welcome into subject, HTML and text.

Pure: no database, sockets, clock or environment. Dates arrive in the views, and the
per-reader token stays a placeholder (`TOKEN_PLACEHOLDER`) that the sender substitutes
in the decoded parts, so one rendering (and one premailer pass) serves a whole edition. The
reader's name and every date (in the reader's zone) are markers that `personal` fills in.
The placeholder appears only in links to this service's own pages: every rendering ends with
`personal.seal`, which deletes any marker that the content (feeds, pushed articles, settings)
carried before placing the ones the templates asked for.

Templates live in `<dir>/email/<name>/{subject.txt, body.txt, body.html}`; operators may
point the config at their own copy of `src/digest/defaults/templates/`.

Size discipline (STANDARDS item 48): an edition's decoded HTML must stay under 90 KB after the
longest token is substituted, or Gmail clips it and hides the unsubscribe link. `render_edition`
measures the Jinja output plus the growth premailer is known to add (calibrated once per
`Templates`), shortens summaries and then moves trailing articles into "and N more" until it
fits, and only then runs premailer, once, on the final HTML. The footer is never trimmed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import cssutils
import jinja2
from premailer import Premailer

from digest.display_text import (
    clean,
    clean_lines,
    direction_of,
    host_of,
    is_https,
    is_web_url,
    join_names,
    long_date,
    one_line,
    preheader,
    short_date,
    shorten,
)
from digest.email_samples import sample_confirmation, sample_edition, sample_editions, sample_welcomes
from digest.errors import TemplateError
from digest.palette import DARK_PALETTE, LIGHT_PALETTE, link_colour, readable_on
from digest.personal import (
    NAME_MARKER,
    NAME_MAX_BYTES,
    date_marker,
    for_reader,
    private,
    seal,
)
from digest.personal import TOKEN_PLACEHOLDER as TOKEN_PLACEHOLDER  # the sender and web copy fill it
from digest.views import ArticleView, ConfirmView, EditionView, Rendered, WelcomeView

log = logging.getLogger("digest.rendering")


# Without this cssutils rewrites #ffffff as #fff while inlining, and some clients
# (Lotus Notes, Gmail in places) mishandle 3-digit colours (STANDARDS item 46-47).
cssutils.ser.prefs.minimizeColorHash = False


_TEMPLATE_FILES = ("subject.txt", "body.txt", "body.html")


_REQUIRED_EMAILS = ("digest", "confirm", "welcome")


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
        self._growth: tuple[float, float] | None = None
        # A template that compiles can still fail when rendered (an unknown variable, a bad
        # filter argument): render samples that take every branch, so it fails now, naming the
        # file and line, rather than at the first send.
        for view in sample_editions():
            _render_parts(self, "digest", _edition_context(view, view.articles, view.more_count))
        _render_parts(self, "confirm", _confirm_context(sample_confirmation()))
        for welcome in sample_welcomes():
            _render_parts(self, "welcome", _welcome_context(welcome))

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
                view = sample_edition(count)
                raw = _render_parts(self, "digest", _edition_context(view, view.articles, 0)).html
                inlined = _inline_css(raw, base_url=view.base_url)
                sizes.append(len(inlined.encode()) - len(raw.encode()))
            fixed, with_four = sizes
            self._growth = (max(fixed, 0.0), max((with_four - fixed) / 4, 0.0))
        return self._growth


def default_templates_dir() -> Path:
    """The templates shipped inside the package (a checkout and an installed wheel alike)."""
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
    return Rendered(subject=parts.subject, html=seal(html), text=seal(parts.text))


def render_welcome(templates: Templates, view: WelcomeView) -> Rendered:
    """The mail after confirming, for one reader: greeted by name, times in their zone."""
    parts = _render_parts(templates, "welcome", _welcome_context(view))
    text, html = for_reader(
        seal(parts.text),
        seal(_inline_css(parts.html, base_url=view.base_url.rstrip("/"))),
        name=view.reader_name,
        zone=view.zone,
    )
    return Rendered(subject=parts.subject, html=html, text=text)


def render_confirmation(templates: Templates, view: ConfirmView) -> Rendered:
    parts = _render_parts(templates, "confirm", _confirm_context(view))
    return Rendered(
        subject=parts.subject,
        html=seal(_inline_css(parts.html, base_url=view.base_url.rstrip("/"))),
        text=seal(parts.text),
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
        shortened = [dataclasses.replace(a, summary=shorten(a.summary, limit)) for a in articles]
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
    """Bytes of the HTML once the longest token and name we allow replace their placeholders."""
    token, name = private(TOKEN_PLACEHOLDER), private(NAME_MARKER)  # not yet sealed
    grow = html.count(token) * (MAX_TOKEN_LENGTH - len(token))
    grow += html.count(name) * NAME_MAX_BYTES
    return len(html.encode()) + grow


def _long_date(value: date) -> str:
    """A day as "2 March 2026": a moment becomes a marker, shown in each reader's own zone."""
    return private(date_marker(value, "L")) if isinstance(value, datetime) else long_date(value)


def _short_date(value: date) -> str:
    return private(date_marker(value, "S")) if isinstance(value, datetime) else short_date(value)


def _edition_context(view: EditionView, articles: Sequence[ArticleView], more_count: int) -> dict[str, Any]:
    base_url = view.base_url.rstrip("/")
    list_name = clean(view.list_name)
    branding = view.branding
    contact = clean(view.contact)
    logo_url = branding.logo_url if branding.logo_url and is_https(branding.logo_url) else None
    return {
        "list_slug": view.list_slug,
        "list_name": list_name,
        "list_description": clean(view.list_description),
        "language": view.language,
        "direction": view.direction,
        "start": "right" if view.direction == "rtl" else "left",
        "end": "left" if view.direction == "rtl" else "right",
        "edition_date": view.edition_date,
        # The header's day, in each reader's own zone once `personal` fills it in.
        "edition_day": _long_date(view.composed_at) if view.composed_at else long_date(view.edition_date),
        "reader_name": private(NAME_MARKER),
        "articles": list(articles),
        "more_count": more_count,
        "total_count": len(articles) + more_count,
        "archive_url": view.archive_url,
        "more_url": view.more_url or view.archive_url,
        "web_url": view.web_url,
        "base_url": base_url,
        "unsubscribe_url": f"{base_url}/u/{private(TOKEN_PLACEHOLDER)}",
        "preferences_url": f"{base_url}/p/{private(TOKEN_PLACEHOLDER)}",
        "postal_address": clean_lines(view.postal_address),
        "contact": contact,
        # Linked only when it is a web address: a mailto: href would be the only link
        # without an https twin in the text part (STANDARDS item 62).
        "contact_url": contact if is_web_url(contact) else None,
        "footer_text": clean(branding.footer_text),
        "logo": {"url": logo_url, "width": branding.logo_width, "height": branding.logo_height}
        if logo_url
        else None,
        "thumb": {"width": THUMB_WIDTH, "height": THUMB_HEIGHT, "phone_width": THUMB_PHONE_WIDTH},
        "accent": branding.accent,
        "accent_text": readable_on(branding.accent),
        "light": dataclasses.replace(LIGHT_PALETTE, link=link_colour(branding.accent)),
        "dark": DARK_PALETTE,
        "preheader": preheader(
            [a.title for a in articles], f"New in {list_name} for {long_date(view.edition_date)}"
        ),
    }


def _transactional_context(postal_address: str, sender_name: str) -> dict[str, Any]:
    """What the confirmation and welcome mails share: the sender, the default colours."""
    return {
        "postal_address": clean_lines(postal_address),
        "sender_name": clean(sender_name),
        "accent": LIGHT_PALETTE.link,
        "accent_text": readable_on(LIGHT_PALETTE.link),
        "light": LIGHT_PALETTE,
        "dark": DARK_PALETTE,
    }


def _confirm_context(view: ConfirmView) -> dict[str, Any]:
    names = [clean(n) for n in view.list_names]
    lists = join_names(names)
    return {
        "list_names": names,
        "lists": lists,
        "confirm_url": view.confirm_url,
        "base_url": view.base_url.rstrip("/"),
        **_transactional_context(view.postal_address, view.sender_name),
        "preheader": preheader(
            [f"Confirm your subscription to {lists}. The link expires in 48 hours."],
            "If you did not ask for this, ignore this email.",
        ),
    }


def _welcome_context(view: WelcomeView) -> dict[str, Any]:
    zone = ZoneInfo(view.zone)
    lists = [
        {
            "name": clean(item.name),
            "description": clean(item.description),
            "schedule": clean(item.schedule),
            "first_day": long_date(item.first_at.astimezone(zone).date()) if item.first_at else None,
            "first_time": f"{item.first_at.astimezone(zone):%H:%M}" if item.first_at else None,
            "latest_url": item.latest_url if item.latest_url and is_web_url(item.latest_url) else None,
        }
        for item in view.lists
    ]
    names = join_names([clean(item.name) for item in view.lists])
    base_url = view.base_url.rstrip("/")
    return {
        "lists": lists,
        "list_names": names,
        "zone": view.zone,
        "reader_name": private(NAME_MARKER),
        "preferences_url": f"{base_url}/p/{private(TOKEN_PLACEHOLDER)}",
        "base_url": base_url,
        **_transactional_context(view.postal_address, view.sender_name),
        "preheader": preheader(
            [f"You are subscribed to {names}. Here is what comes next and how to change it."],
            "Welcome aboard.",
        ),
    }


def _render_parts(templates: Templates, name: str, context: dict[str, Any]) -> _Parts:
    # The HTML <title> and the text part show the subject, so it is settled first.
    subject = seal(one_line(templates._render(name, "subject.txt", context)))
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


def _clean_article(article: ArticleView) -> ArticleView:
    # Plain http images are blocked or flagged as mixed content by several clients,
    # and the layout must not depend on them.
    image = article.image_url
    if not image or not is_https(image) or len(image) > _IMAGE_URL_MAX:
        image = None
    title = shorten(clean(article.title), TITLE_MAX)
    summary = shorten(clean(article.summary), SUMMARY_MAX)
    return dataclasses.replace(
        article,
        title=title,
        source=shorten(clean(article.source), 100),
        summary=summary,
        image_url=image,
        author=shorten(clean(article.author), 100) if article.author else None,
        direction=article.direction if article.direction in ("ltr", "rtl") else direction_of(title, summary),
        section=shorten(clean(article.section), 100),
        also=tuple(
            (shorten(clean(src), 100) or host_of(url), url) for src, url in article.also if is_web_url(url)
        )[:10],
    )
