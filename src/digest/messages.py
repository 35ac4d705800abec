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

from digest.rendering import TOKEN_PLACEHOLDER

POLICY = email.policy.SMTP.clone(cte_type="7bit")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]+")


def clean_header_value(value: str) -> str:
    """Control characters (CR, LF, NUL among them) become spaces: no header injection."""
    return _UNSAFE.sub(" ", value).strip()


def header(name: str, value: str) -> bytes:
    """One folded, 7-bit header line ending in CRLF."""
    return POLICY.fold_binary(name, clean_header_value(value))


def format_address(addr_spec: str, display_name: str = "") -> str:
    name = clean_header_value(display_name)
    return str(Address(display_name=name, addr_spec=clean_header_value(addr_spec)))


def address_of(value: str) -> str:
    """The bare address in `Name <addr>` (or the value itself)."""
    return parseaddr(value)[1] or value


def new_message_id(domain: str) -> str:
    """A Message-ID on the sending domain, never the host name of the container."""
    return make_msgid(domain=domain)


def _choose_cte(body: str) -> str:
    raw = body.encode("utf-8")
    if raw.isascii() and all(len(line) <= 76 for line in raw.split(b"\n")):
        return "7bit"
    qp = len(_encode_qp(raw))
    b64 = len(base64.encodebytes(raw))
    return "quoted-printable" if qp <= b64 else "base64"


def _encode_qp(raw: bytes) -> bytes:
    return binascii.b2a_qp(raw, quotetabs=False, istext=True, header=False)


def encode_body(body: str, cte: str) -> bytes:
    """Encode one part's decoded text with the edition's transfer encoding, CRLF line ends."""
    raw = body.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
    if cte == "base64":
        out = base64.encodebytes(raw)
    elif cte == "quoted-printable":
        out = _encode_qp(raw)
    else:
        out = raw
    if not out.endswith(b"\n"):
        out += b"\n"
    return out.replace(b"\n", b"\r\n")


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
    lines.append(f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n'.encode("ascii"))
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
        header("To", to),
    ]
    if list_unsubscribe:
        head.append(header("List-Unsubscribe", list_unsubscribe))
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
