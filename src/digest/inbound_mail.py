"""Reading inbound mail that may be broken anywhere, and the verdict shapes (pure).

The bounce inbox reads what any MTA, provider or spammer sends: headers with raw 8-bit bytes,
unknown charsets, HTML-only bodies, truncated MIME. Everything here returns text and never raises
on content; inbound.py, inbound_dsn.py and inbound_feedback.py build verdicts from it.

Decisions, one line each:

- Messages are parsed with the compat32 policy: it keeps every header as given (no header-registry
  parsing that can raise on access) and is the faster parser; encoded words are decoded here.
- Bytes that are not UTF-8 (a Latin-1 `Empf\xe4nger unbekannt`) come out of the parser as surrogate
  escapes; `clean` maps each such byte to its Latin-1 character, so valid UTF-8 stays UTF-8, a stray
  byte stays readable, and no surrogate or NUL ever reaches a database (PostgreSQL and every UTF-8
  encoder refuse them). The raw message itself is kept byte for byte by bounces.py.
- Readable text stops where a bounce starts quoting the original message, and skips lines that
  look like quoted header fields, so the digest's own Subject or addresses never count as a reason.
"""

from __future__ import annotations

import email
import email.header
import email.policy
import html
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses
from typing import Literal

from digest.bounce_rules import SEVERITY, BounceClass

__all__ = [
    "InboundVerdict",
    "Kind",
    "RecipientReport",
    "addresses",
    "blocks",
    "clean",
    "enclosed",
    "find",
    "first",
    "parse",
    "part_text",
    "parts",
    "readable_text",
    "values",
]

Kind = Literal["bounce", "delayed", "complaint", "unsubscribe", "auto_reply", "unparsed", "ignored"]


@dataclass(frozen=True)
class RecipientReport:
    """One recipient named in a bounce (a DSN per-recipient block, or an address found in a text)."""

    final_recipient: str | None
    action: str
    status: str | None
    diagnostic: str
    bounce_class: BounceClass
    why: str = ""  # bounce_rules.Classification as text: class, reason and where it was read
    original_recipient: str | None = None
    reason: str = ""  # the reason alone ("user unknown"): what reports group by

    @property
    def recipient(self) -> str | None:
        """The address the report is about: the one we sent to (Original-Recipient) if given."""
        return self.original_recipient or self.final_recipient


@dataclass(frozen=True)
class InboundVerdict:
    """What one inbound message means. Only `delivery_id` and `token` identify a reader."""

    kind: Kind
    delivery_id: int | None  # from an HMAC-checked VERP address only, never guessed from Final-Recipient
    token: str | None  # subscription token: unsub+TOKEN@, or a complaint's List-Unsubscribe
    recipients: tuple[RecipientReport, ...]
    reason: str  # one line: why
    may_reply: bool = False  # STANDARDS item 18: True only for a human-sent (not auto-submitted) message

    @property
    def bounce_class(self) -> BounceClass | None:
        """The most severe class among the recipients: the one the delivery is recorded with."""
        present = {r.bounce_class for r in self.recipients}
        return next((c for c in SEVERITY if c in present), None)


_SURROGATE = re.compile(r"[\udc80-\udcff]")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean(text: str) -> str:
    """Text safe to store and show: escaped bytes as Latin-1 characters, no NUL or control codes."""
    text = _SURROGATE.sub(lambda m: chr(ord(m.group()) - 0xDC00), text)
    return _CONTROL.sub("", text)


def parse(raw: bytes) -> Message:
    """A message from any bytes; the parser records defects instead of raising."""
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def _decoded(value: object) -> str:
    """A header value with encoded words decoded, whatever their charset claims."""
    text = clean(str(value))
    if "=?" not in text:
        return text
    try:
        chunks = email.header.decode_header(text)
    except Exception:  # a malformed encoded word: keep the text as it came
        return text
    out = []
    for chunk, charset in chunks:
        if isinstance(chunk, bytes):
            try:
                out.append(chunk.decode(charset or "ascii", "replace"))
            except LookupError:
                out.append(chunk.decode("utf-8", "replace"))
        else:
            out.append(chunk)
    return clean("".join(out))


def values(msg: Message, name: str) -> list[str]:
    """Every value of a header as clean text, whitespace runs made one space. Raw values: compat32
    would hand 8-bit bytes back as a Header that has already replaced them."""
    wanted = name.lower()
    return [" ".join(_decoded(v).split()) for k, v in msg.raw_items() if k.lower() == wanted]


def first(msg: Message, name: str) -> str | None:
    found = values(msg, name)
    return found[0] if found else None


def addresses(found: Sequence[str]) -> list[str]:
    try:
        return [addr for _name, addr in getaddresses(list(found)) if addr]
    except Exception:  # getaddresses raises on some malformed lists
        return []


def parts(msg: Message) -> Iterator[Message]:
    """The message and its MIME parts, without descending into an enclosed message."""
    yield msg
    if msg.get_content_maintype() == "message" or msg.get_content_type() == "text/rfc822-headers":
        return
    if msg.is_multipart():
        payload = msg.get_payload()
        if isinstance(payload, list):
            for part in payload:
                if isinstance(part, Message):
                    yield from parts(part)


def find(msg: Message, *types: str) -> Message | None:
    return next((p for p in parts(msg) if p.get_content_type() in types), None)


def enclosed(part: Message) -> Message | None:
    """The message inside a message/rfc822 or text/rfc822-headers part."""
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        return payload[0]
    if isinstance(payload, str):
        return HeaderParser(policy=email.policy.compat32).parsestr(clean(payload), headersonly=True)
    return None


def part_text(part: Message) -> str:
    """A text part decoded by its charset, with replacement; HTML reduced to its text."""
    try:
        raw = part.get_payload(decode=True)
    except Exception:  # a broken transfer encoding
        raw = None
    if not isinstance(raw, bytes):
        payload = part.get_payload()
        raw = payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""
    charset = part.get_content_charset() or "utf-8"
    try:
        text = raw.decode(charset, "replace")
    except (LookupError, ValueError):
        text = raw.decode("utf-8", "replace")
    if part.get_content_subtype() == "html":
        text = re.sub(r"(?i)<br\s*/?>|</(?:p|div|tr|li)>", "\n", text)
        text = html.unescape(re.sub(r"<[^>]*>", " ", text))
    return clean(text)


_COPY_MARKER = re.compile(
    r"^\W*(?:this is a copy|below this line is a copy|(?:a )?copy of (?:the|your) (?:original )?message|"
    r"original message(?: follows| below| headers| details| as received)?\s*(?:[:.-]|$)|"
    r"the original message|(?:the )?header(?:s)? of the (?:original|source) (?:message|mail)|"
    r"message header(?:s)? follow|"
    r"(?:returned|unsent|undelivered) (?:mail|message)(?: follows| below)?\s*[:-]*$|"
    r"-+ *(?:returned|unsent) (?:mail|message)|start of returned message|included is a copy|"
    r"your message reads|the first \d+ lines|attachment is a copy|mensaje original)",
    re.IGNORECASE,
)
_QUOTED_HEADER = re.compile(
    r"^\s*>?\s*(?:subject|from|to|cc|date|sent|message-id|received|return-path|reply-to|dkim-signature|"
    r"list-[\w-]+|x-[\w-]+|content-[\w-]+|mime-version|in-reply-to|references)\s*:",
    re.IGNORECASE,
)


def readable_text(msg: Message) -> str:
    """The text a bounce says, up to where it quotes the original message; HTML only if no plain."""
    wanted = "text/plain" if find(msg, "text/plain") is not None else "text/html"
    lines: list[str] = []
    for part in parts(msg):
        if part.get_content_type() != wanted:
            continue
        for line in part_text(part).splitlines():
            if _COPY_MARKER.match(line):
                break
            if not _QUOTED_HEADER.match(line):
                lines.append(line)
    return "\n".join(lines)


def blocks(part: Message) -> list[dict[str, str]]:
    """The header blocks of a delivery-status or feedback-report part, names lower-cased."""
    found: list[dict[str, str]] = []

    def add(block: Message) -> None:
        fields = {k.lower(): " ".join(_decoded(v).split()) for k, v in reversed(list(block.raw_items()))}
        if fields:
            found.append(fields)

    def add_text(text: str) -> None:
        for chunk in re.split(r"\r?\n[ \t]*\r?\n", text):
            if chunk.strip():
                add(HeaderParser(policy=email.policy.compat32).parsestr(chunk.strip("\r\n") + "\n"))

    payload = part.get_payload()
    if isinstance(payload, list):
        for block in payload:
            if isinstance(block, Message):
                add(block)
                rest = block.get_payload()
                if isinstance(rest, str) and rest.strip():
                    add_text(clean(rest))
    else:
        add_text(part_text(part))
    return found
