"""What a message arriving at the bounce inbox means (pure; keys and times come in as parameters).

DESIGN "The flow" step 5 and STANDARDS section D, items 18 and 23. Nothing here touches a database,
a socket or the clock; the inbox listener and `digest bounces process` turn a verdict into events
and suppressions. Reading broken mail is inbound_mail.py's; DSNs and text bounces are
inbound_dsn.py's; complaints and provider notices inbound_feedback.py's; how a failure is
classified, and how bounces and complaints are counted, is bounce_rules.py's.

Decisions, one line each:

- Identity comes only from an HMAC-checked VERP address (or, for complaints and mailto
  unsubscribes, an unguessable subscription token); Final-Recipient and flufl.bounce's addresses are
  recorded for the operator but never used to find a reader. A DSN whose Final-Recipient is not the
  address we sent to (forwarding, aliases) still counts against the delivery its VERP names.
- `verp_target`: a given envelope recipient is authoritative (headers are sender-controlled); only
  without one (mailbox input) are Delivered-To, X-Original-To, Envelope-to (Exim's
  `envelope_to_add`) and To read, in that order.
- Order: complaints (ARF, JMRP) and provider JSON notices, then DSNs, then out-of-office markers,
  then text bounces, then what is left.
- Auto-replies are recognised by what they are: out-of-office subjects and headers
  (X-Autoreply, Precedence: auto_reply), or RFC 3834 `Auto-Submitted: auto-replied` when no bounce
  was found (Exim writes auto-replied on its own bounces). A null sender or
  `Auto-Submitted: auto-generated` alone proves nothing: such a message that reports nothing we can
  read is `unparsed`, recorded with its reason, never silently taken for an auto-reply.
- Nothing about the content stops the inbox: a message the parser or a rule cannot get through is
  `unparsed` with the error as its reason (and its delivery, when the VERP address was readable).
- mailto unsubscribes (item 18) act whatever Auto-Submitted or the envelope sender say: the token is
  the authority, providers' unsubscribe buttons may send such mail automatically, and failing to
  unsubscribe is the costly error; `may_reply` is False for those, so no confirmation is ever sent to
  an auto-submitted or null-sender message. A DSN or ARF report sent to an unsub+ address is ignored.
- Unsubscribe tokens are case-sensitive, so an unsub+ address whose case an MTA folded will not match
  any subscription (the caller reports an unknown token; the HTTPS link still works).
- A bounces+ address that is not VERP-shaped at all (a feedback-loop address such as
  `bounces+fbl@`) names no delivery, but a complaint sent there is still read; a VERP-shaped one
  with a bad HMAC is forged and ignored.
- The envelope sender is a parameter; without it the Return-Path header stands in (`<>` is null),
  so a listener should pass MAIL FROM.
"""

from __future__ import annotations

import email.policy
import hashlib
import re
from collections.abc import Sequence
from email.message import Message
from email.parser import BytesHeaderParser
from email.utils import parseaddr

from digest import tokens
from digest.inbound_dsn import delivery_status_part, dsn_verdict, report_type, text_bounce
from digest.inbound_feedback import VERP_SHAPE, arf_complaint, is_jmrp, jmrp_complaint, json_notice
from digest.inbound_mail import InboundVerdict, RecipientReport, addresses, clean, find, first, parse, values

__all__ = [
    "InboundVerdict",
    "RecipientReport",
    "analyse",
    "clean",
    "inbound_key",
    "verp_target",
]

_OURS = re.compile(r"^(?:bounces|unsub)\+[^@\s]*@[^@\s]+$", re.IGNORECASE)
_UNSUB = re.compile(r"^unsub\+([A-Za-z0-9_-]{20,128})@[^@\s]+$", re.IGNORECASE)
_OUT_OF_OFFICE = re.compile(
    r"^\s*(?:automatic reply|auto(?:matic|matische)?[- ]?(?:reply|response|antwort)|autoreply|auto:|"
    r"out of (?:the )?office|away from (?:the )?office|on vacation|vacation reply|"
    r"abwesenheitsnotiz|abwesend|réponse automatique|respuesta automática|risposta automatica)",
    re.IGNORECASE,
)
_OOO_HEADERS = ("x-autoreply", "x-autorespond", "x-autoresponder", "x-autoreply-from")
_SYSTEM_SENDER = re.compile(r"^(?:mailer-daemon|postmaster|mail-daemon|mailer)@", re.IGNORECASE)
VERP_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-to", "To")


def _ignored(reason: str, delivery_id: int | None = None) -> InboundVerdict:
    return InboundVerdict("ignored", delivery_id, None, (), reason)


def verp_target(envelope_rcpt: str | None, msg: Message) -> str | None:
    """The bounces+… or unsub+… address this message was sent to, or None.

    A given envelope recipient is authoritative; only without one are the VERP_HEADERS read, in
    that order, and the first of our addresses found there wins. The address is returned as found
    (HMAC not checked, case not folded).
    """
    if envelope_rcpt is not None:
        addr = envelope_rcpt.strip().strip("<>").strip()
        return addr if _OURS.match(addr) else None
    for name in VERP_HEADERS:
        for addr in addresses(values(msg, name)):
            if _OURS.match(addr):
                return addr
    return None


def inbound_key(raw: bytes, envelope_rcpt: str | None) -> str:
    """What makes two inbound messages the same one: the bounce's own Message-ID (else its bytes)
    and the address it came to (one DSN may come to several VERP addresses). Reads headers only,
    so a rerun over a mailbox recognises what it has seen without parsing it."""
    ends = [i for i in (raw.find(b"\n\n"), raw.find(b"\r\n\r\n")) if i >= 0]
    try:
        head = BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw[: min(ends, default=len(raw))])
        mid, target = first(head, "Message-ID") or "", verp_target(envelope_rcpt, head) or ""
    except Exception:  # unreadable headers: the bytes alone identify the message
        mid, target = "", envelope_rcpt or ""
    basis = f"mid:{mid}" if mid else "sha256:" + hashlib.sha256(raw).hexdigest()
    return hashlib.sha256(f"{basis}|{target.lower()}".encode()).hexdigest()


def _auto_submitted(msg: Message) -> str | None:
    value = first(msg, "Auto-Submitted")
    return value.split(";")[0].split("(")[0].strip().lower() if value else None


def _null_sender(msg: Message, envelope_sender: str | None) -> bool:
    if envelope_sender is not None:
        return parseaddr(envelope_sender.strip() or "<>")[1] == ""
    return_path = first(msg, "Return-Path")
    return return_path is not None and parseaddr(return_path)[1] == ""


def _out_of_office(msg: Message) -> str | None:
    """Why this is plainly an out-of-office or vacation reply, or None."""
    if any(values(msg, h) for h in _OOO_HEADERS) or _OUT_OF_OFFICE.match(first(msg, "Subject") or ""):
        return "auto-reply (out-of-office markers)"
    if (first(msg, "Precedence") or "").lower() == "auto_reply":
        return "auto-reply (Precedence: auto_reply)"
    return None


def _unsubscribe(msg: Message, target: str, envelope_sender: str | None) -> InboundVerdict:
    if report_type(msg) or find(msg, "message/delivery-status", "message/feedback-report"):
        return _ignored("report sent to the unsubscribe address")
    unsub = _UNSUB.match(target)
    if unsub is None:
        return _ignored("malformed unsubscribe address")
    may_reply = not _null_sender(msg, envelope_sender) and _auto_submitted(msg) in (None, "no")
    why = "mailto unsubscribe" + ("" if may_reply else " (auto-submitted or null sender: no reply)")
    return InboundVerdict("unsubscribe", None, unsub.group(1), (), why, may_reply)


def _meaning(
    msg: Message, delivery_id: int | None, keys: Sequence[str], envelope_sender: str | None, malformed: bool
) -> InboundVerdict:
    """What a message to one of our bounces+ addresses (or to none) means; module docstring order."""
    status_part = delivery_status_part(msg)
    if report_type(msg) == "feedback-report" or find(msg, "message/feedback-report"):
        return arf_complaint(msg, delivery_id, keys)
    if status_part is None and is_jmrp(msg, envelope_sender):
        return jmrp_complaint(msg, delivery_id, keys)
    notice = json_notice(msg, delivery_id, keys) if status_part is None else None
    if notice is not None:
        return notice
    if delivery_id is None:
        why = "malformed VERP address" if malformed else "not addressed to a VERP or unsubscribe address"
        return _ignored(why)
    if status_part is not None:
        verdict = dsn_verdict(status_part, msg, delivery_id)
        if verdict is not None:
            return verdict
    ooo = _out_of_office(msg)
    if ooo is not None:
        return InboundVerdict("auto_reply", delivery_id, None, (), ooo)
    bounce = text_bounce(msg, delivery_id)
    if bounce is not None:
        return bounce
    auto = _auto_submitted(msg)
    if auto == "auto-replied":
        why = "auto-reply (Auto-Submitted: auto-replied)"
        return InboundVerdict("auto_reply", delivery_id, None, (), why)
    sender = addresses(values(msg, "From")[:1])
    marks = [
        *(["null sender"] if _null_sender(msg, envelope_sender) else []),
        *([f"Auto-Submitted: {auto}"] if auto not in (None, "no") else []),
        *([f"From {sender[0]}"] if sender and _SYSTEM_SENDER.match(sender[0]) else []),
    ]
    if marks:
        why = f"automatic message ({', '.join(marks)}) that reports no failure we can read"
        return InboundVerdict("unparsed", delivery_id, None, (), why)
    return _ignored("no bounce found in message to a VERP address", delivery_id)


def analyse(
    raw: bytes, envelope_rcpt: str | None, keys: Sequence[str], *, envelope_sender: str | None = None
) -> InboundVerdict:
    """What one message arriving at the bounce inbox means. See the module docstring for the rules."""
    try:
        msg = parse(raw)
        target = verp_target(envelope_rcpt, msg)
    except Exception as exc:  # no header could be read: nothing names a delivery
        return InboundVerdict("unparsed", None, None, (), f"message could not be read: {type(exc).__name__}")
    if target is not None and target.lower().startswith("unsub+"):
        return _unsubscribe(msg, target, envelope_sender)
    delivery_id = tokens.parse_verp(target, keys) if target is not None else None
    if target is not None and delivery_id is None and VERP_SHAPE.match(target):
        return _ignored("forged VERP address (bad HMAC)")
    try:
        return _meaning(msg, delivery_id, keys, envelope_sender, target is not None and delivery_id is None)
    except Exception as exc:  # content no rule foresaw: recorded, and the inbox goes on
        why = f"message could not be analysed: {type(exc).__name__}: {clean(str(exc))}"[:300]
        return InboundVerdict("unparsed", delivery_id, None, (), why)
