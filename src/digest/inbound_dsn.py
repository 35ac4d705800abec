"""Bounces: RFC 3464 delivery status notifications and the text bounces of other MTAs (pure).

STANDARDS items 30, 31 and 34. inbound.py decides which kind of message this is; here a DSN or a
text bounce becomes one report per recipient, each classified by bounce_rules.explain.

Decisions, one line each:

- Every block of a delivery-status part is read: a block naming a recipient (Final-Recipient,
  Original-Recipient, Action or Status) is a recipient block, even the first one, since some MTAs
  (AOL, McAfee) write the per-message and the only per-recipient fields as one block.
- The recipient a report is about is its Original-Recipient when given (the address we sent to),
  else its Final-Recipient; non-RFC 822 addresses (X.400) are not addresses.
- Evidence per recipient: its Diagnostic-Code (and X.400 supplementary information), then its
  Status, then the DSN's readable text (bounce_rules.explain says in which order they count).
- A DSN that a filter forwarded as an attachment (a multipart/report inside message/rfc822) is read
  as the DSN; our own digest quoted in a DSN is never a report, so it cannot be mistaken for one.
- A DSN with no recipient block at all, and every other bounce, goes to flufl.bounce (item 34):
  its detectors find the failed and delayed addresses, and the readable text classifies them.
- A message flufl.bounce finds no address in still counts when it plainly reports a failure (its
  subject or text says undeliverable, delivery failed, ...): the VERP address already names the
  delivery, so an address in the text is not needed to record the bounce.
"""

from __future__ import annotations

import re
from email.message import Message

from flufl.bounce import all_failures

from digest.bounce_rules import BounceClass, basic_code, enhanced_code, enhanced_status, explain
from digest.inbound_mail import (
    InboundVerdict,
    Kind,
    RecipientReport,
    addresses,
    blocks,
    enclosed,
    find,
    first,
    parts,
    readable_text,
    values,
)

__all__ = ["delivery_status_part", "dsn_verdict", "report_type", "text_bounce"]

_RECIPIENT_FIELDS = {"final-recipient", "original-recipient", "action", "status"}
_STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")
_FAILURE = re.compile(
    r"undeliver|(?:could|can)(?:n't|not)? ?(?:not )?be delivered|not (?:been )?delivered|"
    r"delivery (?:has )?failed|delivery (?:status notification \()?failure|failed permanently|"
    r"permanent (?:fatal )?error|unable to deliver|returned mail|mail delivery failed|failure notice|"
    r"non-?delivery|mail error|did not reach",
    re.IGNORECASE,
)
_DELAY = re.compile(
    r"\bdelayed\b|not yet been delivered|will (?:continue|keep) (?:trying|to try)|still being retried|"
    r"warning only|will be retried|has been postponed|delivery (?:status notification \()?delay",
    re.IGNORECASE,
)
_PERMANENT = re.compile(r"permanent|given up|gave up", re.IGNORECASE)
_ADDRESS = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_NOT_RECIPIENT = re.compile(r"^(?:bounces\+|unsub\+|postmaster@|mailer-daemon@)", re.IGNORECASE)


def report_type(msg: Message) -> str:
    if msg.get_content_type() != "multipart/report":
        return ""
    return str(msg.get_param("report-type", "") or "").lower()


def delivery_status_part(msg: Message) -> Message | None:
    """The delivery-status part, also inside a DSN a filter forwarded as an attachment."""
    found = find(msg, *_STATUS_TYPES)
    if found is not None:
        return found
    for part in parts(msg):
        inner = enclosed(part) if part.get_content_type() == "message/rfc822" else None
        if inner is not None and report_type(inner) == "delivery-status":
            return find(inner, *_STATUS_TYPES)
    return None


def _strip_type(value: str | None) -> str | None:
    """`rfc822; a@b` → `a@b`, `smtp; 550 …` → `550 …`."""
    if value is None:
        return None
    kind, sep, rest = value.partition(";")
    text = rest if sep and re.fullmatch(r"\s*[A-Za-z][\w.-]*\s*", kind) else value
    return text.strip() or None


def _address(value: str | None) -> str | None:
    """The address of a recipient field; None for an X.400 or otherwise non-mail address."""
    if not value:
        return None
    kind = value.partition(";")[0].strip().lower() if ";" in value else "rfc822"
    found = (_strip_type(value) or "").strip().strip("<>").strip()
    return found if kind in ("rfc822", "utf-8") and "@" in found else None


def _recipient_report(block: dict[str, str], text: str) -> RecipientReport | None:
    """One per-recipient block as a report; None for a recipient that did not fail or wait."""
    action = block.get("action", "").split("(")[0].strip().lower()
    status = block.get("status")
    diagnostic = _strip_type(block.get("diagnostic-code")) or ""
    extra = block.get("x400-supplementary-info") or ""
    code = enhanced_code(status) or enhanced_code(diagnostic)
    if action.startswith("delayed"):
        action, klass, reason = "delayed", BounceClass.DELAYED, "still being retried"
        why = f"delayed: {reason}"
    elif action.startswith(("fail", "error")) or (not action and code is not None and code[0] in (4, 5)):
        # opensmtpd writes `Action: error`; a block with no Action counts by its code's class
        found = explain(status, f"{diagnostic} {extra}".strip(), text=text)
        action, klass, why, reason = "failed", found.klass, str(found), found.reason
    else:
        return None  # delivered, relayed, expanded: not a failure
    shown = status.split()[0] if status and enhanced_code(status) else enhanced_status(diagnostic)
    return RecipientReport(
        final_recipient=_address(block.get("final-recipient")),
        action=action,
        status=shown,
        diagnostic=diagnostic or extra,
        bounce_class=klass,
        why=why,
        original_recipient=_address(block.get("original-recipient")),
        reason=reason,
    )


def dsn_verdict(part: Message, msg: Message, delivery_id: int | None) -> InboundVerdict | None:
    """A DSN's verdict; None when it names no recipient at all (the caller tries the text)."""
    named = [b for b in blocks(part) if b.keys() & _RECIPIENT_FIELDS]
    if not named:
        return None
    text = readable_text(msg)
    reports = [r for r in (_recipient_report(b, text) for b in named) if r is not None]
    if not reports:
        return InboundVerdict("ignored", delivery_id, None, (), "DSN reports no failed or delayed recipient")
    summary = "; ".join(f"{r.action} {r.status or 'no code'} {r.why or r.bounce_class}" for r in reports)
    kind: Kind = "bounce" if any(r.action == "failed" for r in reports) else "delayed"
    return InboundVerdict(kind, delivery_id, None, tuple(reports), f"DSN: {summary}"[:500])


def _flufl(msg: Message) -> tuple[frozenset[bytes], frozenset[bytes]]:
    """flufl.bounce's (temporary, permanent) addresses; nothing when a detector crashes."""
    if not addresses(values(msg, "From")[:1]):
        # flufl.bounce 6.0.0's Yale detector raises IndexError when the first From has no address,
        # and a raising detector stops every detector after it.
        del msg["From"]
        msg["From"] = "MAILER-DAEMON"
    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # a detector crashing on odd input means: no address detected
        return frozenset(), frozenset()
    return frozenset(temporary), frozenset(permanent)


def _failure_code(line: str) -> bool:
    code = enhanced_code(line)  # a version number such as "Mailman 2.0.12" is no failure
    return code is not None and code[0] in (4, 5)


def _diagnostic_line(text: str) -> str:
    """The line of a text bounce to show: the first carrying a failure's enhanced code, else a
    basic code."""
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return next(
        (line for line in lines if _failure_code(line)),
        next((line for line in lines if basic_code(line)), ""),
    )[:1000]


def _named(text: str) -> str | None:
    """The first address a failure notice names that is not ours or a mail system's."""
    return next((a for a in _ADDRESS.findall(text) if not _NOT_RECIPIENT.match(a)), None)


def text_bounce(msg: Message, delivery_id: int | None) -> InboundVerdict | None:
    """A bounce that is not an RFC 3464 DSN, or None if the message does not report a failure."""
    temporary, permanent = _flufl(msg)
    text = readable_text(msg)
    subject = first(msg, "Subject") or ""
    failed = bool(permanent)
    if not temporary and not permanent:
        said = f"{subject}\n{text}"
        failed = bool(_FAILURE.search(said)) and not (_DELAY.search(said) and not _PERMANENT.search(said))
        if not failed and not _DELAY.search(said):
            return None
    line = _diagnostic_line(text)
    found = explain(None, text)
    shown = enhanced_status(line)
    by = "flufl.bounce" if permanent or temporary else "failure notice without an address"

    def report(address: str | None, action: str) -> RecipientReport:
        if action == "delayed":
            return RecipientReport(
                address, action, shown, line, BounceClass.DELAYED, reason="still being retried"
            )
        return RecipientReport(address, action, shown, line, found.klass, str(found), reason=found.reason)

    reports = [report(a.decode("ascii", "replace"), "failed") for a in sorted(permanent)]
    reports += [report(a.decode("ascii", "replace"), "delayed") for a in sorted(temporary - permanent)]
    if not reports:
        reports = [report(_named(text), "failed" if failed else "delayed")]
    kind: Kind = "bounce" if failed else "delayed"
    what = f"failed {found}" if failed else "delayed"
    return InboundVerdict(kind, delivery_id, None, tuple(reports), f"non-DSN bounce ({by}): {what}"[:500])
