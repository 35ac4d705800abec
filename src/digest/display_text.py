"""Text as readers see it: one-line subjects, shortened summaries, dates, safe characters.

Pure functions over strings; feed text never reorders, breaks or smuggles anything into a digest.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import date
from urllib.parse import urlsplit

_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip


# lxml (inside premailer) refuses C0 controls, and they have no business in mail text anyway.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


_REPLY_PREFIX = re.compile(r"^(?:(?:re|fwd?|aw|tr)\s*:\s*)+", re.IGNORECASE)


# Feed text must not reorder the rest of the digest: embeddings and overrides (U+202A-U+202E)
# and isolates (U+2066-U+2069) left open by a hostile title would flip every line after it in the
# text part. Right-to-left scripts need none of them. Lone surrogates (undecodable bytes smuggled
# through surrogateescape or JSON escapes) and noncharacters cannot be encoded as UTF-8 at all.
_BIDI_CONTROLS = re.compile(r"[\u202a-\u202e\u2066-\u2069]")


_UNENCODABLE = re.compile(r"[\ud800-\udfff\ufffe\uffff]")


_PREHEADER_MIN, _PREHEADER_MAX = 40, 130


def one_line(subject: str) -> str:
    # A header must never receive CR or LF (header injection, STANDARDS item 9), and
    # "Re:"/"Fwd:" prefixes are deceptive in bulk mail (item 26).
    flat = " ".join(_CONTROL_CHARS.sub("", subject).split())
    return _REPLY_PREFIX.sub("", flat).strip()


def clean(value: str) -> str:
    value = _UNENCODABLE.sub("\ufffd", _BIDI_CONTROLS.sub("", _CONTROL_CHARS.sub("", value)))
    return " ".join(value.split())


def clean_lines(value: str) -> str:
    lines = (clean(line) for line in value.splitlines())
    return "\n".join(line for line in lines if line)


def shorten(text: str, limit: int) -> str:
    """At most `limit` characters, cut at a word when there is one in the last fifth."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit * 4 // 5:
        cut = cut[:space]
    return cut.rstrip(" ;,.:-") + "…"


def preheader(phrases: Iterable[str], fallback: str) -> str:
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


def join_names(names: Sequence[str]) -> str:
    if len(names) <= 2:
        return " and ".join(names)
    return f"{', '.join(names[:-1])} and {names[-1]}"


def long_date(value: date) -> str:
    # Not strftime: month names from it depend on the process locale.
    return f"{value.day} {_MONTHS[value.month - 1]} {value.year}"


def short_date(value: date) -> str:
    return f"{value.day} {_MONTHS[value.month - 1][:3]} {value.year}"


def is_web_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def is_https(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme == "https" and bool(parts.netloc)


# The first strong character decides a paragraph's direction (the Unicode bidi algorithm, rule P2):
# Hebrew, Arabic, Syriac, Thaana, NKo, Samaritan, Mandaic and their presentation forms are
# right-to-left; a Latin, Greek, Cyrillic or CJK letter is left-to-right.
_RTL = "\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufefc"
_STRONG = re.compile(rf"[{_RTL}]|[^\W\d_{_RTL}]")
_RTL_CHAR = re.compile(rf"[{_RTL}]")


def direction_of(*texts: str) -> str:
    """ "rtl" or "ltr": the direction of the first of `texts` that has a strong character."""
    for text in texts:
        m = _STRONG.search(text)
        if m:
            return "rtl" if _RTL_CHAR.match(m[0]) else "ltr"
    return "ltr"


def host_of(url: str | None) -> str:
    """The site a story came from, as a reader knows it ("example.org" for https://www.example.org/x)."""
    if not url:
        return ""
    host = (urlsplit(url).hostname or "").lower()
    return host.removeprefix("www.")
