"""What differs per reader in a shared edition: the greeting and the dates (pure).

An edition is rendered once for every reader at its watermark, and readers at one watermark differ
in name and time zone. So the rendering leaves markers where those go: `NAME_MARKER` in the
template's greeting line, and a date marker (`date_marker`) for every date. `for_reader` fills them
for one reader: their name (HTML-escaped in the HTML part) and every date in their own zone; a
reader without a name gets no greeting line at all. `public_copy` is what the web copy shows: no
greeting, dates in the list's zone.

Markers are plain word tokens, like the token placeholder (`TOKEN_PLACEHOLDER`, which the sender
fills with the reader's token): premailer leaves them alone in text, and the text part's word
wrapping keeps each one whole.

Only this service may place a marker. Templates are given `private` forms, which carry a secret
drawn when the process starts; `seal`, run on every rendered body, first deletes every public-looking
marker (whatever a feed, a pushed article or an operator's setting wrote) and only then turns the
private forms into public ones. So a feed linking to `https://evil.example/?u=__DIGEST_TOKEN__`
gets `https://evil.example/?u=`, never a reader's token, name or zone.
"""

from __future__ import annotations

import html
import re
import secrets
from datetime import UTC, date, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

from digest.display_text import clean, long_date, short_date, shorten

# Not a secret: a marker the sender replaces with each reader's token after rendering.
TOKEN_PLACEHOLDER = "__DIGEST_TOKEN__"  # noqa: S105
NAME_MARKER = "__DIGEST_NAME__"

# Markers as rendered content may hold them before `seal`: never seen outside this process.
_PRIVATE = f"__DIGEST_{secrets.token_hex(16)}_"
_PUBLIC = re.compile(r"__DIGEST_(?:TOKEN|NAME|DATE_[LS]-?\d{1,12})__")

# The longest name a greeting shows, and the most bytes it can take once HTML-escaped (an
# ampersand becomes five characters; a UTF-8 character takes up to four bytes).
NAME_MAX = 100
NAME_MAX_BYTES = NAME_MAX * 6

_DATE = re.compile(r"__DIGEST_DATE_([LS])(-?\d{1,12})__")

# The greeting line of the HTML part (a paragraph holding the marker) and of the text part (the
# line holding it, with the blank line after it): dropped whole for a reader without a name.
_HTML_GREETING = re.compile(r"<p\b[^>]*>[^<]*" + NAME_MARKER + r"[^<]*</p>[ \t]*\n?")
_TEXT_GREETING = re.compile(r"^[^\n]*" + NAME_MARKER + r"[^\n]*\n(?:[ \t]*\n)?", re.MULTILINE)


def date_marker(when: datetime, style: str) -> str:
    """A marker for `when`, shown as a long ("L": 2 March 2026) or short ("S": 2 Mar 2026) date."""
    if when.utcoffset() is None:
        raise ValueError("a date marker needs an aware datetime")
    return f"__DIGEST_DATE_{style}{int(when.timestamp())}__"


def private(marker: str) -> str:
    """The form of a marker that templates are given, which no content can forge."""
    return _PRIVATE + marker.removeprefix("__DIGEST_")


def seal(body: str) -> str:
    """A rendered body whose only markers are those this service placed (see the module doc)."""
    return _unmarked(body).replace(_PRIVATE, "__DIGEST_")


def _unmarked(text: str) -> str:
    while True:  # until none is left: deleting one can join its neighbours into another
        text, found = _PUBLIC.subn("", text)
        if not found:
            return text


def has_markers(body: str) -> bool:
    return NAME_MARKER in body or "__DIGEST_DATE_" in body


def display_name(name: str) -> str:
    # Filled in after `seal`, so a name must not bring a marker (the token's) of its own.
    return _unmarked(shorten(clean(name), NAME_MAX))


def for_reader(text: str, html_body: str, *, name: str, zone: str) -> tuple[str, str]:
    """The text and HTML of an edition as one reader gets them."""
    shown = display_name(name)
    return _fill(text, shown, zone, escape=False), _fill(html_body, shown, zone, escape=True)


def public_copy(html_body: str, zone: str) -> str:
    """The HTML of an edition as the web copy shows it: no greeting, dates in the list's zone."""
    return _fill(html_body, "", zone, escape=True)


_MARKERS = re.compile(r"(" + NAME_MARKER + r"|__DIGEST_DATE_[LS]-?\d{1,12}__)")


def _fill(body: str, name: str, zone: str, *, escape: bool) -> str:
    if not has_markers(body):
        return body
    shown = html.escape(name, quote=True) if escape else name
    pieces = _pieces(body, bool(name), escape)
    out = list(pieces)
    for i in range(1, len(out), 2):  # odd places hold the markers
        out[i] = shown if out[i] == NAME_MARKER else _local(out[i], zone)
    return "".join(out)


@lru_cache(maxsize=64)
def _pieces(body: str, named: bool, escape: bool) -> tuple[str, ...]:
    """The body split around its markers, once per edition body rather than once per reader: a
    worker fills the same few bodies for thousands of readers (the body's hash is cached by str)."""
    if not named:
        body = (_HTML_GREETING if escape else _TEXT_GREETING).sub("", body)
    return tuple(_MARKERS.split(body))


@lru_cache(maxsize=4096)
def _local(marker: str, zone: str) -> str:
    m = _DATE.fullmatch(marker)
    if m is None:
        return ""
    day: date = datetime.fromtimestamp(int(m[2]), UTC).astimezone(ZoneInfo(zone)).date()
    return long_date(day) if m[1] == "L" else short_date(day)
