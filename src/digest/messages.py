"""Message bytes (pure): built once per edition, assembled per reader by substitution.

The shared headers are folded once by `email.policy.SMTP` (7-bit, RFC 2047 for non-ASCII) and the
transfer encoding of each part is chosen once per edition. Per reader, the token placeholder is
substituted into the *decoded* text and HTML and only then encoded (quoted-printable soft breaks
would split a token substituted into encoded bytes, and base64 would hide it), and the few
per-reader headers are prepended. No `EmailMessage` tree is built per reader.
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.utils import format_datetime, make_msgid, parseaddr

import idna

from digest.rendering import TOKEN_PLACEHOLDER

POLICY = email.policy.SMTP.clone(cte_type="7bit")
# Controls, line and paragraph separators (the email policy splits on them), and lone surrogates
# (which no UTF-8 encoder accepts; a JSON body may carry them as \\ud800 escapes).
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]+")
_WORD = re.compile(r" *[^ ]+")
_BREAK_WITHOUT_FWS = re.compile(rb"\r\n(?![ \t])|\r(?!\n)|(?<!\r)\n")
_HEADER_LINE = 78
_MAX_LINE = 998


def clean_header_value(value: str) -> str:
    """Control characters (CR, LF, NUL among them) become spaces: no header injection."""
    return _UNSAFE.sub(" ", value).strip()


def header(name: str, value: str) -> bytes:
    """One folded, 7-bit header line ending in CRLF.

    ASCII values are folded at their spaces and never re-parsed: a URI in List-Unsubscribe stays
    literal, and `=?..?=` in user text is not decoded into a line break (CVE-2026-1299). Other
    values go through the policy's header objects, which emit RFC 2047 encoded-words; passing a
    plain string to `fold_binary` would write short values unencoded and fail on non-ASCII.
    """
    value = clean_header_value(value)
    if value.isascii():
        folded = _fold_ascii(name, value)
    elif name.lower() in _ADDRESS_HEADERS:
        obj = POLICY.header_factory(name, value)
        if _UNSAFE.search(str(obj)):  # an encoded-word in the text decoded to a control character
            obj = POLICY.header_factory(name, clean_header_value(str(obj)))
        folded = POLICY.fold_binary(name, obj)
    else:
        folded = _encoded_words(name, value)
    lines = folded[:-2].split(b"\r\n")
    if (
        not folded.endswith(b"\r\n")
        or _BREAK_WITHOUT_FWS.search(folded[:-2])
        or max(len(line) for line in lines) > _MAX_LINE
    ):
        raise ValueError(f"header {name} cannot be folded safely: {folded[:200]!r}")
    return folded


_ADDRESS_HEADERS = {"from", "to", "cc", "reply-to", "sender"}
_STAND_IN = "mailbox@stand-in.invalid"


def to_header(to: str) -> bytes:
    """The To line; a non-ASCII mailbox is written as UTF-8 (RFC 6532), never as an encoded-word,
    which an address may not contain (the name beside it is still RFC 2047 encoded)."""
    addr = address_of(to)
    if addr.rpartition("@")[0].isascii():
        return header("To", to)
    return header("To", to.replace(addr, _STAND_IN)).replace(_STAND_IN.encode(), addr.encode("utf-8"))


def _encoded_words(name: str, value: str) -> bytes:
    """Unstructured non-ASCII text as RFC 2047 base64 encoded-words, every space inside a word.

    The email package's folder puts the spaces between words outside the encoded-words, where a
    decoder must drop them (RFC 2047 section 6.2), so "café ☕ ¡" came back as "café ☕¡".
    Chunks end on character boundaries, and each word stays within 75 characters.
    """
    tail = ""
    m = re.fullmatch(r"(.*?)\s*(<[\x21-\x7e]+>)", value)
    if m:  # List-Id's <list.id.host> (and alike) must stay literal: only the phrase is encoded
        value, tail = m.group(1), m.group(2)
    words: list[str] = []
    chunk = b""
    for ch in value:
        raw = ch.encode("utf-8")
        if len(chunk) + len(raw) > 45:  # 45 bytes -> 60 base64 characters, 72 with the wrapper
            words.append(chunk.decode("utf-8"))
            chunk = b""
        chunk += raw
    if chunk:
        words.append(chunk.decode("utf-8"))
    encoded = [f"=?utf-8?b?{base64.b64encode(w.encode('utf-8')).decode('ascii')}?=" for w in words]
    return (f"{name}: " + "\r\n ".join([*encoded, *([tail] if tail else [])]) + "\r\n").encode("ascii")


def _fold_ascii(name: str, value: str) -> bytes:
    """Fold before spaces so lines stay within 78 characters where the words allow it."""
    lines = [f"{name}:"]
    for i, word in enumerate(_WORD.findall(value)):
        if i == 0:
            lines[-1] += " " + word
        elif len(lines[-1]) + len(word) > _HEADER_LINE:
            lines.append(word)
        else:
            lines[-1] += word
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]*")


def format_address(addr_spec: str, display_name: str = "") -> str:
    """`Name <addr>` for a To header; plain ASCII needs no parsing (the common case, per reader)."""
    name = clean_header_value(display_name)
    addr = clean_header_value(addr_spec)
    if _PLAIN_ADDRESS.fullmatch(addr) and _PLAIN_NAME.fullmatch(name):
        return f"{name} <{addr}>" if name else addr
    if not addr.rpartition("@")[0].isascii():
        # RFC 6532: a non-ASCII mailbox is written as UTF-8, for a relay that offers SMTPUTF8 (the
        # SMTP edge refuses it, with that reason, on one that does not).
        phrase = str(Address(display_name=name, addr_spec="x@x.invalid")).rpartition(" <")[0]
        return f"{phrase} <{addr}>" if name else addr
    return str(Address(display_name=name, addr_spec=addr))


def wire_address(addr_spec: str) -> str:
    """The address as it goes on the wire: an internationalized domain in its ASCII (A-label)
    form, which every relay accepts; a non-ASCII local part is left as it is and needs a relay
    that offers SMTPUTF8 (RFC 6531). An address whose domain IDNA refuses is returned unchanged,
    for the relay to refuse with a reason of its own."""
    local, at, domain = addr_spec.rpartition("@")
    if not at or domain.isascii():
        return addr_spec
    try:
        return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}"
    except idna.IDNAError:
        return addr_spec


def address_of(value: str) -> str:
    """The bare address in `Name <addr>` (or the value itself)."""
    return parseaddr(value)[1] or value


def new_message_id(domain: str) -> str:
    """A Message-ID on the sending domain, never the host name of the container."""
    return make_msgid(domain=domain)


def _choose_cte(body: str) -> str:
    raw = body.encode("utf-8", "replace")
    if raw.isascii() and all(len(line) <= 76 for line in raw.split(b"\n")):
        return "7bit"
    qp = len(_encode_qp(raw))
    b64 = len(base64.encodebytes(raw))
    return "quoted-printable" if qp <= b64 else "base64"


def _encode_qp(raw: bytes) -> bytes:
    return binascii.b2a_qp(raw, quotetabs=False, istext=True, header=False)


def encode_body(body: str, cte: str) -> bytes:
    """Encode one part's decoded text with the edition's transfer encoding, CRLF line ends."""
    raw = body.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8", "replace")
    if cte == "base64":
        out = base64.encodebytes(raw)
    elif cte == "quoted-printable":
        out = _encode_qp(raw)
    else:
        out = raw
    if not out.endswith(b"\n"):
        out += b"\n"
    return out.replace(b"\n", b"\r\n")


def list_unsubscribe_header(value: str) -> bytes:
    """List-Unsubscribe, folded only between its URIs, never inside one or before the first.

    A generic folder would move a long first URI to a continuation line, leaving a leading space
    in the value that some receivers keep (RFC 8058 consumers compare the URI exactly).
    """
    uris = [u.strip() for u in clean_header_value(value).split(",") if u.strip()]
    return ("List-Unsubscribe: " + ",\r\n ".join(uris) + "\r\n").encode("ascii")


@dataclass(frozen=True)
class MessageTemplate:
    """Everything about a message that is the same for every reader of an edition."""

    shared_headers: bytes
    boundary: str
    text: str
    html: str
    text_cte: str
    html_cte: str


def prepare(
    *,
    from_addr: str,
    subject: str,
    text: str,
    html: str,
    reply_to: str | None = None,
    list_id: str | None = None,
    list_unsubscribe_post: bool = True,
    feedback_id: str | None = None,
    extra: tuple[tuple[str, str], ...] = (),
) -> MessageTemplate:
    """Fold the shared headers and choose each part's transfer encoding, once per edition."""
    boundary = "=_digest_" + secrets.token_hex(12)
    lines = [header("From", from_addr)]
    if reply_to:
        lines.append(header("Reply-To", reply_to))
    lines.append(header("Subject", subject))
    if list_id:
        lines.append(header("List-Id", list_id))
    if list_unsubscribe_post:
        lines.append(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")
    if feedback_id:
        lines.append(header("Feedback-ID", feedback_id))
    for name, value in extra:
        lines.append(header(name, value))
    lines.append(b"MIME-Version: 1.0\r\n")
    lines.append(f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n'.encode("ascii"))
    return MessageTemplate(
        shared_headers=b"".join(lines),
        boundary=boundary,
        text=text,
        html=html,
        text_cte=_choose_cte(text),
        html_cte=_choose_cte(html),
    )


def _part(boundary: str, subtype: str, cte: str, body: str) -> bytes:
    return (
        f'--{boundary}\r\nContent-Type: text/{subtype}; charset="utf-8"\r\n'
        f"Content-Transfer-Encoding: {cte}\r\n\r\n"
    ).encode("ascii") + encode_body(body, cte)


def assemble(
    tpl: MessageTemplate,
    *,
    to: str,
    message_id: str,
    date: datetime,
    token: str,
    list_unsubscribe: str | None = None,
) -> bytes:
    """The complete message for one reader: per-reader headers, then the substituted parts."""
    head = [
        header("Date", format_datetime(date)),
        header("Message-ID", message_id),
        to_header(to),
    ]
    if list_unsubscribe:
        head.append(list_unsubscribe_header(list_unsubscribe))
    text = tpl.text.replace(TOKEN_PLACEHOLDER, token)
    html = tpl.html.replace(TOKEN_PLACEHOLDER, token)
    return b"".join(
        [
            *head,
            tpl.shared_headers,
            b"\r\n",
            _part(tpl.boundary, "plain", tpl.text_cte, text),
            _part(tpl.boundary, "html", tpl.html_cte, html),
            f"--{tpl.boundary}--\r\n".encode("ascii"),
        ]
    )
