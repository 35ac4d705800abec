"""Complaints and provider notices: ARF reports, Microsoft's JMRP, providers' JSON notices (pure).

STANDARDS item 23. inbound.py hands over a message that looks like one of these; here it becomes a
complaint verdict (or a bounce, for a provider's JSON bounce notice) or is ignored with a reason.

Decisions, one line each:

- ARF (RFC 5965): feedback types not-spam, auth-failure and virus are not reader complaints.
- Microsoft's JMRP (Outlook.com, Hotmail) sends no feedback-report part: a message from
  staff@hotmail.com, subject "complaint about message from IP", with the reported message attached
  as message/rfc822 (its recipient redacted into X-HmXmrOriginalRecipient). Any one of those marks
  plus an attached message makes it a complaint.
- The delivery id comes from the VERP envelope recipient, else the report's Original-Mail-From,
  else the Return-Path of the enclosed original (each HMAC-checked), and the subscription token
  from the original's List-Unsubscribe as well.
- Provider JSON notices (Amazon SES through SNS, plain or wrapped in the SNS envelope): only a
  `Bounce` or `Complaint` notice means anything; `Delivery`, `Send`, `Open` and the rest are
  ignored, never read as bounces. A bounce notice's recipients are classified like a DSN's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from email.message import Message
from email.utils import parseaddr
from typing import Any

from digest import tokens
from digest.bounce_rules import BounceClass, enhanced_status, explain
from digest.inbound_mail import (
    InboundVerdict,
    RecipientReport,
    addresses,
    blocks,
    clean,
    enclosed,
    find,
    first,
    part_text,
    parts,
    values,
)

__all__ = ["arf_complaint", "is_jmrp", "jmrp_complaint", "json_notice"]

VERP_SHAPE = re.compile(r"^bounces\+\d+\.[0-9a-f]{10}@[^@\s]+$", re.IGNORECASE)
_LIST_UNSUB_TOKEN = re.compile(
    r"<(?:mailto:unsub\+|https?://[^>\s]*/u/)([A-Za-z0-9_-]{20,128})[@>]", re.IGNORECASE
)
_NOT_COMPLAINTS = {"not-spam", "auth-failure", "virus"}
_JMRP_SENDER = "staff@hotmail.com"
_JMRP_SUBJECT = re.compile(r"^\s*complaint about message from", re.IGNORECASE)


def _ignored(reason: str, delivery_id: int | None = None) -> InboundVerdict:
    return InboundVerdict("ignored", delivery_id, None, (), reason)


def _original(msg: Message) -> Message | None:
    part = find(msg, "message/rfc822", "text/rfc822-headers")
    return enclosed(part) if part is not None else None


def _identify(
    delivery_id: int | None, candidates: Sequence[tuple[str, str | None]], original: Message | None,
    keys: Sequence[str], what: str,
) -> InboundVerdict:  # fmt: skip
    """A complaint verdict identified by VERP (checked) or the original's unsubscribe token."""
    token = None
    if original is not None:
        found = _LIST_UNSUB_TOKEN.search(first(original, "List-Unsubscribe") or "")
        token = found.group(1) if found else None
    source = "VERP envelope recipient"
    if delivery_id is None:
        for name, value in candidates:
            addr = parseaddr(value or "")[1]
            if VERP_SHAPE.match(addr):
                delivery_id = tokens.parse_verp(addr, keys)
                if delivery_id is None:
                    return _ignored(f"forged VERP address in complaint ({name})")
                source = name
                break
        else:
            if token is None:
                return _ignored("complaint for a message we cannot identify")
            source = "List-Unsubscribe token"
    return InboundVerdict("complaint", delivery_id, token, (), f"{what}; identified by {source}")


def arf_complaint(msg: Message, delivery_id: int | None, keys: Sequence[str]) -> InboundVerdict:
    part = find(msg, "message/feedback-report")
    found = blocks(part) if part is not None else []
    fields = found[0] if found else {}
    feedback_type = (fields.get("feedback-type") or "abuse").split()[0].lower()
    if feedback_type in _NOT_COMPLAINTS:
        return _ignored(f"feedback report of type {feedback_type}", delivery_id)
    original = _original(msg)
    candidates = [("Original-Mail-From", fields.get("original-mail-from"))]
    if original is not None:
        candidates.append(("original Return-Path", first(original, "Return-Path")))
    return _identify(delivery_id, candidates, original, keys, f"ARF {feedback_type} report")


def is_jmrp(msg: Message, envelope_sender: str | None) -> bool:
    """Microsoft's Junk Mail Reporting Program report (see the module docstring)."""
    original = _original(msg)
    if original is None:
        return False
    senders = addresses([envelope_sender or "", *values(msg, "From"), *values(msg, "Return-Path")])
    return (
        _JMRP_SENDER in (a.lower() for a in senders)
        or bool(_JMRP_SUBJECT.match(first(msg, "Subject") or ""))
        or first(original, "X-HmXmrOriginalRecipient") is not None
    )


def jmrp_complaint(msg: Message, delivery_id: int | None, keys: Sequence[str]) -> InboundVerdict:
    original = _original(msg)
    candidates = [("original Return-Path", first(original, "Return-Path") if original else None)]
    return _identify(delivery_id, candidates, original, keys, "Microsoft JMRP complaint")


def _notice(msg: Message) -> dict[str, Any] | None:
    """The JSON notice a message carries as its text, unwrapped from an SNS envelope; else None."""
    for part in parts(msg):
        if part.get_content_type() not in ("text/plain", "application/json"):
            continue
        text = part_text(part).strip()
        if not text.startswith("{"):
            continue
        try:  # SNS's email endpoint writes an unsubscribe footer after the JSON
            data, _end = json.JSONDecoder().raw_decode(text)
        except ValueError:
            continue
        wrapped = isinstance(data, dict) and data.get("Type") == "Notification"
        if wrapped and isinstance(data.get("Message"), str):
            try:
                data = json.loads(data["Message"])
            except ValueError:
                continue
        if isinstance(data, dict) and ("notificationType" in data or "eventType" in data):
            return data
    return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _mail_header(mail: dict[str, Any], name: str) -> str | None:
    for header in mail.get("headers") or []:
        if isinstance(header, dict) and str(header.get("name", "")).lower() == name.lower():
            return clean(str(header.get("value", "")))
    return None


def json_notice(msg: Message, delivery_id: int | None, keys: Sequence[str]) -> InboundVerdict | None:
    """A provider's JSON notice as a verdict; None if the message carries no such notice."""
    data = _notice(msg)
    if data is None:
        return None
    what = clean(str(data.get("notificationType") or data.get("eventType")))
    mail = _dict(data.get("mail"))
    if delivery_id is None:
        for value in (mail.get("source"), _mail_header(mail, "Return-Path")):
            addr = parseaddr(clean(str(value or "")))[1]
            if VERP_SHAPE.match(addr):
                delivery_id = tokens.parse_verp(addr, keys)
                if delivery_id is None:
                    return _ignored(f"forged VERP address in a {what} notice")
                break
    if what == "Complaint":
        listed = _LIST_UNSUB_TOKEN.search(_mail_header(mail, "List-Unsubscribe") or "")
        token = listed.group(1) if listed else None
        if delivery_id is None and token is None:
            return _ignored("complaint notice for a message we cannot identify")
        return InboundVerdict("complaint", delivery_id, token, (), "provider JSON complaint notice")
    if what != "Bounce":
        return _ignored(f"provider JSON notice ({what}): not a bounce", delivery_id)
    if delivery_id is None:
        return _ignored("bounce notice for a message we cannot identify")
    bounce = _dict(data.get("bounce"))
    transient = str(bounce.get("bounceType", "")).lower() == "transient"
    reports = []
    for rcpt in bounce.get("bouncedRecipients") or []:
        if not isinstance(rcpt, dict):
            continue
        diagnostic = clean(str(rcpt.get("diagnosticCode") or ""))
        status = clean(str(rcpt.get("status") or "")) or None
        found = explain(status, diagnostic)
        klass = BounceClass.SOFT if transient and found.klass is BounceClass.UNKNOWN else found.klass
        address = clean(str(rcpt.get("emailAddress") or "")) or None
        shown = enhanced_status(status or diagnostic)
        reports.append(
            RecipientReport(address, "failed", shown, diagnostic, klass, str(found), reason=found.reason)
        )
    if not reports:
        return _ignored("bounce notice names no recipient", delivery_id)
    why = f"provider JSON bounce notice: {reports[0].why}"
    return InboundVerdict("bounce", delivery_id, None, tuple(reports), why)
