"""What a message arriving at the bounce inbox means (pure; keys and times come in as parameters).

DESIGN "The flow" step 5 and STANDARDS section D, items 18 and 23. Nothing here touches a database,
a socket or the clock; the inbox listener and `digest bounces process` turn a verdict into events
and suppressions. How a failure is classified, and how bounces and complaints are counted, is
bounce_rules.py's.

Decisions, one line each:

- Identity comes only from an HMAC-checked VERP address (or, for complaints and mailto
  unsubscribes, an unguessable subscription token); Final-Recipient and flufl.bounce's addresses are
  recorded for the operator but never used to find a reader. A DSN whose Final-Recipient is not the
  address we sent to (forwarding, aliases) still counts against the delivery its VERP names.
- `verp_target`: a given envelope recipient is authoritative (headers are sender-controlled); only
  without one (mailbox input) are Delivered-To, X-Original-To and To read, in that order.
- Non-DSN bounces: flufl.bounce's `all_failures` decides failed versus delayed; the status code in
  the bounce text then classifies per item 31, and a failure with no code at all is UNKNOWN (item 34:
  flufl.bounce returns no codes, so it cannot by itself prove a hard bounce).
- Auto-replies: explicit out-of-office markers win at once; `Auto-Submitted` or a null sender only
  mark an auto-reply when no bounce was detected, since Exim's own bounces say auto-replied.
- Complaints (ARF): the delivery id comes from the VERP envelope recipient, else the report's
  Original-Mail-From, else the Return-Path of the enclosed original (all HMAC-checked), and the
  subscription token from the original's List-Unsubscribe as well; feedback types not-spam,
  auth-failure and virus are not reader complaints and are ignored.
- mailto unsubscribes (item 18) act whatever Auto-Submitted or the envelope sender say: the token is
  the authority, providers' unsubscribe buttons may send such mail automatically, and failing to
  unsubscribe is the costly error; `may_reply` is False for those, so no confirmation is ever sent to
  an auto-submitted or null-sender message. A DSN or ARF report sent to an unsub+ address is ignored.
- Unsubscribe tokens are case-sensitive, so an unsub+ address whose case an MTA folded will not match
  any subscription (the caller reports an unknown token; the HTTPS link still works).
- The envelope sender is a parameter; without it the Return-Path header stands in (`<>` is null),
  so a listener should pass MAIL FROM.
"""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.parser import HeaderParser
from email.utils import getaddresses, parseaddr
from typing import Literal

from flufl.bounce import all_failures

from digest import tokens
from digest.bounce_rules import SEVERITY, BounceClass, basic_code, classify, enhanced_code, enhanced_status

__all__ = [
    "InboundVerdict",
    "RecipientReport",
    "analyse",
    "verp_target",
]


@dataclass(frozen=True)
class RecipientReport:
    """One recipient named in a bounce (a DSN per-recipient block, or a flufl.bounce address)."""

    final_recipient: str | None
    action: str
    status: str | None
    diagnostic: str
    bounce_class: BounceClass


Kind = Literal["bounce", "delayed", "complaint", "unsubscribe", "auto_reply", "ignored"]


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


def _ignored(reason: str, delivery_id: int | None = None) -> InboundVerdict:
    return InboundVerdict("ignored", delivery_id, None, (), reason)


# --- headers and structure -------------------------------------------------------------------------

_OURS = re.compile(r"^(?:bounces|unsub)\+[^@\s]*@[^@\s]+$", re.IGNORECASE)
_VERP_SHAPE = re.compile(r"^bounces\+\d+\.[0-9a-f]{10}@[^@\s]+$", re.IGNORECASE)
_UNSUB = re.compile(r"^unsub\+([A-Za-z0-9_-]{20,128})@[^@\s]+$", re.IGNORECASE)
_LIST_UNSUB_TOKEN = re.compile(
    r"<(?:mailto:unsub\+|https?://[^>\s]*/u/)([A-Za-z0-9_-]{20,128})[@>]", re.IGNORECASE
)
_OUT_OF_OFFICE = re.compile(
    r"^\s*(?:automatic reply|auto(?:matic)?[- ]?(?:reply|response|antwort)|autoreply|auto:|"
    r"out of (?:the )?office|away from (?:the )?office|on vacation|vacation reply|"
    r"abwesenheitsnotiz|abwesend|réponse automatique|respuesta automática|risposta automatica)",
    re.IGNORECASE,
)
_OOO_HEADERS = ("x-autoreply", "x-autorespond", "x-autoresponder", "x-autoreply-from")
_COPY_MARKER = re.compile(
    r"^\s*-+\s*(?:this is a copy of|below this line is a copy|original message|"
    r"the original message|a copy of the original)",
    re.IGNORECASE,
)
_NOT_COMPLAINTS = {"not-spam", "auth-failure", "virus"}


def _values(msg: Message, name: str) -> list[str]:
    """Every value of a header as text; a header the parser chokes on counts as absent."""
    try:
        return [str(v) for v in msg.get_all(name, [])]
    except Exception:  # malformed headers must not stop the inbox
        return []


def _first(msg: Message, name: str) -> str | None:
    found = _values(msg, name)
    return " ".join(found[0].split()) if found else None


def _addresses(values: Sequence[str]) -> list[str]:
    return [addr for _name, addr in getaddresses(list(values)) if addr]


def verp_target(envelope_rcpt: str | None, msg: EmailMessage) -> str | None:
    """The bounces+… or unsub+… address this message was sent to, or None.

    A given envelope recipient is authoritative; only without one are Delivered-To, X-Original-To
    and To read, in that order, and the first of our addresses found there wins. The address is
    returned as found (HMAC not checked, case not folded).
    """
    if envelope_rcpt is not None:
        addr = envelope_rcpt.strip().strip("<>").strip()
        return addr if _OURS.match(addr) else None
    for name in ("Delivered-To", "X-Original-To", "To"):
        for addr in _addresses(_values(msg, name)):
            if _OURS.match(addr):
                return addr
    return None


def _parts(msg: Message) -> Iterator[Message]:
    """The message and its MIME parts, without descending into an enclosed message."""
    yield msg
    if msg.get_content_maintype() == "message" or msg.get_content_type() == "text/rfc822-headers":
        return
    if msg.is_multipart():
        payload = msg.get_payload()
        if isinstance(payload, list):
            for part in payload:
                if isinstance(part, Message):
                    yield from _parts(part)


def _report_type(msg: Message) -> str:
    if msg.get_content_type() != "multipart/report":
        return ""
    return str(msg.get_param("report-type", "") or "").lower()


def _find(msg: Message, *types: str) -> Message | None:
    return next((p for p in _parts(msg) if p.get_content_type() in types), None)


def _blocks(part: Message) -> list[dict[str, str]]:
    """The header blocks of a delivery-status or feedback-report part, names lower-cased."""
    found: list[dict[str, str]] = []

    def add(block: Message) -> None:
        # raw_items: a field the header registry cannot parse must not stop the report
        fields = {k.lower(): " ".join(str(v).split()) for k, v in reversed(list(block.raw_items()))}
        if fields:
            found.append(fields)

    def add_text(text: str) -> None:
        for chunk in re.split(r"\r?\n[ \t]*\r?\n", text):
            if chunk.strip():
                add(HeaderParser().parsestr(chunk.strip("\r\n") + "\n"))

    payload = part.get_payload()
    if isinstance(payload, list):
        for block in payload:
            if isinstance(block, Message):
                add(block)
                rest = block.get_payload()
                if isinstance(rest, str) and rest.strip():
                    add_text(rest)
    else:
        raw = part.get_payload(decode=True)
        add_text(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(payload))
    return found


def _text(msg: Message) -> str:
    """The readable text of a bounce, up to where it starts quoting the original message."""
    lines: list[str] = []
    for part in _parts(msg):
        if part.get_content_type() != "text/plain":
            continue
        raw = part.get_payload(decode=True)
        if not isinstance(raw, bytes):
            continue
        charset = part.get_content_charset() or "utf-8"
        try:
            text = raw.decode(charset, "replace")
        except LookupError:
            text = raw.decode("utf-8", "replace")
        for line in text.splitlines():
            if _COPY_MARKER.match(line):
                break
            lines.append(line)
    return "\n".join(lines)


def _diagnostic_line(text: str) -> str:
    """The first line of a text bounce carrying an enhanced code, else a leading basic code."""
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return next(
        (line for line in lines if enhanced_code(line)),
        next((line for line in lines if basic_code(line)), ""),
    )


def _strip_type(value: str | None) -> str | None:
    """`rfc822; a@b` → `a@b`, `smtp; 550 …` → `550 …`."""
    if value is None:
        return None
    kind, sep, rest = value.partition(";")
    text = rest if sep and re.fullmatch(r"\s*[A-Za-z][\w.-]*\s*", kind) else value
    return text.strip() or None


# --- the verdicts ------------------------------------------------------------------------------------


def _dsn(report: Message, delivery_id: int) -> InboundVerdict:
    reports: list[RecipientReport] = []
    for block in _blocks(report)[1:]:
        named = _strip_type(block.get("final-recipient") or block.get("original-recipient"))
        recipient = (named.strip("<>").strip() or None) if named else None
        action = block.get("action", "").split("(")[0].strip().lower()
        status_field = block.get("status")
        diagnostic = _strip_type(block.get("diagnostic-code")) or ""
        code = enhanced_code(status_field) or enhanced_code(diagnostic)
        if action.startswith("delayed"):
            action, klass = "delayed", BounceClass.DELAYED
        elif action.startswith(("fail", "error")) or (not action and code is not None and code[0] in (4, 5)):
            # opensmtpd writes `Action: error`; a block with no Action counts by its code's class
            action, klass = "failed", classify(status_field, None, diagnostic)
        else:
            continue  # delivered, relayed, expanded: not a failure
        shown = status_field.split()[0] if status_field else (".".join(map(str, code)) if code else None)
        reports.append(RecipientReport(recipient, action, shown, diagnostic, klass))
    if not reports:
        return _ignored("DSN reports no failed or delayed recipient", delivery_id)
    summary = "; ".join(f"{r.action} {r.status or 'no code'} {r.bounce_class}" for r in reports)
    kind: Kind = "bounce" if any(r.action == "failed" for r in reports) else "delayed"
    return InboundVerdict(kind, delivery_id, None, tuple(reports), f"DSN: {summary}")


def _fallback(msg: Message, delivery_id: int) -> InboundVerdict | None:
    """flufl.bounce for bounces that are not RFC 3464 DSNs; None if it finds none."""
    if not _addresses(_values(msg, "From")[:1]):
        # flufl.bounce 6.0.0's Yale detector raises IndexError when the first From has no address,
        # and a raising detector stops every detector after it.
        del msg["From"]
        msg["From"] = "MAILER-DAEMON"
    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # a detector crashing on odd input means: no bounce detected
        return None
    if not temporary and not permanent:
        return None
    line = _diagnostic_line(_text(msg))
    status = enhanced_status(line)
    failed = BounceClass.UNKNOWN if not line else classify(None, None, line)
    reports = [
        RecipientReport(a.decode("ascii", "replace"), "failed", status, line, failed)
        for a in sorted(permanent)
    ]
    reports += [
        RecipientReport(a.decode("ascii", "replace"), "delayed", status, line, BounceClass.DELAYED)
        for a in sorted(temporary - permanent)
    ]
    kind: Kind = "bounce" if permanent else "delayed"
    what = f"failed {status or 'no code'} {failed}" if permanent else "delayed"
    return InboundVerdict(kind, delivery_id, None, tuple(reports), f"non-DSN bounce (flufl.bounce): {what}")


def _complaint(msg: Message, delivery_id: int | None, keys: Sequence[str]) -> InboundVerdict:
    part = _find(msg, "message/feedback-report")
    blocks = _blocks(part) if part is not None else []
    fields = blocks[0] if blocks else {}
    feedback_type = (fields.get("feedback-type") or "abuse").split()[0].lower()
    if feedback_type in _NOT_COMPLAINTS:
        return _ignored(f"feedback report of type {feedback_type}", delivery_id)
    original = _find(msg, "message/rfc822", "text/rfc822-headers")
    headers: Message | None = None
    if original is not None:
        payload = original.get_payload()
        if isinstance(payload, list) and payload and isinstance(payload[0], Message):
            headers = payload[0]
        elif isinstance(payload, str):
            headers = HeaderParser().parsestr(payload, headersonly=True)
    token = None
    if headers is not None:
        found = _LIST_UNSUB_TOKEN.search(_first(headers, "List-Unsubscribe") or "")
        token = found.group(1) if found else None
    source = "VERP envelope recipient"
    if delivery_id is None:
        candidates = [("Original-Mail-From", fields.get("original-mail-from"))]
        if headers is not None:
            candidates.append(("original Return-Path", _first(headers, "Return-Path")))
        for name, value in candidates:
            addr = parseaddr(value or "")[1]
            if _VERP_SHAPE.match(addr):
                delivery_id = tokens.parse_verp(addr, keys)
                if delivery_id is None:
                    return _ignored(f"forged VERP address in complaint ({name})")
                source = name
                break
        else:
            if token is None:
                return _ignored("complaint for a message we cannot identify")
            source = "List-Unsubscribe token"
    why = f"ARF {feedback_type} report; identified by {source}"
    return InboundVerdict("complaint", delivery_id, token, (), why)


def _auto_submitted(msg: Message) -> str | None:
    value = _first(msg, "Auto-Submitted")
    return value.split(";")[0].strip().lower() if value else None


def _null_sender(msg: Message, envelope_sender: str | None) -> bool:
    if envelope_sender is not None:
        return parseaddr(envelope_sender.strip() or "<>")[1] == ""
    return_path = _first(msg, "Return-Path")
    return return_path is not None and parseaddr(return_path)[1] == ""


def analyse(
    raw: bytes, envelope_rcpt: str | None, keys: Sequence[str], *, envelope_sender: str | None = None
) -> InboundVerdict:
    """What one message arriving at the bounce inbox means. See the module docstring for the rules."""
    msg = email.message_from_bytes(raw, _class=EmailMessage, policy=email.policy.default)
    target = verp_target(envelope_rcpt, msg)
    auto = _auto_submitted(msg)
    null_sender = _null_sender(msg, envelope_sender)
    report_type = _report_type(msg)

    unsub = _UNSUB.match(target) if target is not None else None
    if target is not None and target.lower().startswith("unsub+"):
        if report_type or _find(msg, "message/delivery-status", "message/feedback-report"):
            return _ignored("report sent to the unsubscribe address")
        if unsub is None:
            return _ignored("malformed unsubscribe address")
        may_reply = not null_sender and auto in (None, "no")
        why = "mailto unsubscribe" + ("" if may_reply else " (auto-submitted or null sender: no reply)")
        return InboundVerdict("unsubscribe", None, unsub.group(1), (), why, may_reply)

    delivery_id = None
    if target is not None:
        delivery_id = tokens.parse_verp(target, keys)
        if delivery_id is None:
            shaped = _VERP_SHAPE.match(target)
            return _ignored("forged VERP address (bad HMAC)" if shaped else "malformed VERP address")

    if report_type == "feedback-report" or _find(msg, "message/feedback-report"):
        return _complaint(msg, delivery_id, keys)
    if delivery_id is None:
        return _ignored("not addressed to a VERP or unsubscribe address")

    status_part = _find(msg, "message/delivery-status", "message/global-delivery-status")
    if status_part is not None:
        return _dsn(status_part, delivery_id)

    subject = _first(msg, "Subject") or ""
    if any(_values(msg, h) for h in _OOO_HEADERS) or _OUT_OF_OFFICE.match(subject):
        return InboundVerdict("auto_reply", delivery_id, None, (), "auto-reply (out-of-office markers)")
    if _first(msg, "Precedence") == "auto_reply":
        return InboundVerdict("auto_reply", delivery_id, None, (), "auto-reply (Precedence: auto_reply)")

    bounce = _fallback(msg, delivery_id)
    if bounce is not None:
        return bounce
    if auto not in (None, "no"):
        return InboundVerdict("auto_reply", delivery_id, None, (), f"auto-reply (Auto-Submitted: {auto})")
    if null_sender:
        return InboundVerdict("auto_reply", delivery_id, None, (), "auto-reply (null sender, no report)")
    return _ignored("no bounce found in message to a VERP address", delivery_id)
