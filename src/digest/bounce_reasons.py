"""Why a bounce is what it is: enhanced status codes and providers' phrasings, as data (pure).

bounce_rules.py decides with these tables; an operator reads the reason a rule names in
`digest bounces report` and `subscribers show`. The organisation follows mature classifiers
(Sisimai's reasons with their phrase lists, checked in a fixed order with mailbox-full before
user-unknown; bounce handlers that keep Diagnostic-Code rules as data): one named reason per rule,
its class, and the words or codes that show it.

Decisions, one line each:

- Phrases are matched case-insensitively on the remote server's words, with runs of whitespace
  made one space; they are written to need the words around a keyword ("mailbox is full", not
  "full") so that a bounce's boilerplate and the quoted digest do not trigger them.
- PHRASES is ordered: every reason that keeps a reader (soft, policy, unknown) comes before the
  reasons that prove a dead mailbox, so "550 5.1.1 ... over quota" or a Spamhaus listing under
  a 5.1.x code never suppresses anyone. A rule with `code` applies only when that enhanced code is
  in the same text (Microsoft 365 answers 5.4.1 "Access denied" for a recipient its directory
  lacks; Postfix's own "Access denied" is a 5.7.1 policy refusal).
- Languages: the few non-English phrasings seen in real bounces (German, French, Spanish,
  Italian, Portuguese) for "unknown recipient" and "mailbox full".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["CODES", "PHRASES", "Klass", "Rule"]

Klass = Literal["hard", "soft", "policy", "unknown"]


@dataclass(frozen=True)
class Rule:
    """One reason a failure may have: its name, its class and what shows it."""

    reason: str  # short, shown to operators: "user unknown", "mailbox full", ...
    klass: Klass
    pattern: re.Pattern[str]
    code: str | None = None  # the rule needs this enhanced code in the same text

    def search(self, text: str) -> re.Match[str] | None:
        """Where the rule's words are in the text (None if absent, or if its code is missing)."""
        if self.code is not None and not re.search(rf"(?<![\d.]){re.escape(self.code)}(?![\d.])", text):
            return None
        return self.pattern.search(text)


def _rule(reason: str, klass: Klass, *phrases: str, code: str | None = None) -> Rule:
    return Rule(reason, klass, re.compile("|".join(f"(?:{p})" for p in phrases), re.IGNORECASE), code)


# Enhanced status codes (RFC 3463, STANDARDS item 31) → (class, reason). Class 4 is soft whatever
# its detail; a 5.x.x code not listed here proves nothing by itself and leaves the words to decide.
CODES: dict[tuple[int, int], tuple[Klass, str]] = {
    (1, 1): ("hard", "user unknown"),
    (1, 2): ("hard", "domain unknown"),
    (1, 3): ("hard", "bad address syntax"),
    (1, 6): ("hard", "mailbox has moved"),
    (1, 10): ("hard", "recipient not found (null MX)"),
    (2, 1): ("hard", "mailbox disabled"),
    (2, 2): ("soft", "mailbox full"),
    (1, 7): ("policy", "sender address refused"),
    (1, 8): ("policy", "sender domain refused"),
    (2, 3): ("policy", "message too big"),
    (3, 4): ("policy", "message too big"),
}
POLICY_SUBJECT = 7  # every 5.7.x: security or policy status, the receiver refused us

PHRASES: tuple[Rule, ...] = (
    # --- the mailbox is there but cannot take mail now ---------------------------------------------
    _rule(
        "mailbox full",
        "soft",
        r"over ?quota",
        r"quota (?:exceeded|violation|full)",
        r"exceed(?:s|ed|ing)? (?:the |their |his |her |its |your )?(?:disk |storage |mailbox )?quota",
        r"(?:disk|storage|mailbox) quota",
        r"(?:mail ?box|mail ?folder|in-?box|account|storage) (?:is )?(?:currently )?full",
        r"full mail ?box",
        r"mail ?box space not enough",
        r"insufficient (?:system )?storage",
        r"too much mail stored",
        r"postfach voll",
        r"boîte (?:aux lettres )?pleine",
        r"buzón (?:está )?lleno",
        r"casella (?:di posta )?piena",
    ),
    _rule(
        "rate limited",
        "soft",
        r"receiving mail at a rate",
        r"rate (?:limit|that prevents)",
        r"too many (?:messages|connections|recipients|concurrent|emails|mails)",
        r"throttl",
        r"sending (?:too fast|at a rate)",
    ),
    _rule(
        "greylisted",
        "soft",
        r"gr[ae]y-?list",
        r"try (?:again )?later",
        r"temporar(?:y|ily) (?:deferred|rejected|unavailable|failure|error|blocked|not available)",
        r"mailbox (?:is )?temporarily",
        r"please retry",
    ),
    _rule(
        "message too big",
        "policy",
        r"(?:message|mail) (?:is )?too (?:big|large)",
        r"(?:exceed(?:s|ed)?|over) (?:the )?(?:maximum )?(?:allowed )?(?:inbound |incoming )?"
        r"(?:message )?size",
        r"message size (?:exceeds|limit)",
        r"size limit",
    ),
    _rule(
        "blocked by the receiver",
        "policy",
        r"block ?list",
        r"black ?list",
        r"deny ?list",
        r"\bblocked\b",
        r"\b(?:is|are|was|been|currently|ip|host) listed (?:at|in|on|by)\b",
        r"spamhaus|spamcop|barracuda|sorbs|\brbl\b|dnsbl|uceprotect|proofpoint",
        r"(?:poor|bad|low) reputation",
        r"not accepting mail from",
        r"\bbanned\b",
        r"refused by (?:local )?policy",
        r"administrative prohibition",
    ),
    _rule(
        "refused as spam",
        "policy",
        r"\bspam\b",
        r"unsolicited",
        r"\bjunk mail\b",
        r"(?:message )?content (?:rejected|filter)",
        r"\bvirus\b|malware|phish",
    ),
    _rule(
        "sender not authenticated",
        "policy",
        r"\bdmarc\b",
        r"\bspf\b",
        r"\bdkim\b",
        r"unauthenticated",
        r"authentication (?:required|failed|failure)",
        r"relay(?:ing)? (?:access )?(?:denied|not permitted|prohibited)",
        r"unable to relay",
        r"not permitted to relay",
        r"reverse dns|\bptr\b",
    ),
    _rule(
        "gave up after retries",
        "soft",
        r"in the queue too long",
        r"too long in (?:the )?queue",
        r"queue period",
        r"maximum (?:delivery )?attempts",
        r"(?:failed|after) \d+ attempts?",
        r"(?:message|delivery) (?:has )?timed out",
        r"retry time(?:out)? (?:exceeded|reached)",
        r"has not been collected",
    ),
    _rule(
        "receiving server unreachable",
        "soft",
        r"host not found, try again",
        r"connection (?:refused|timed out|failed|reset)",
        r"(?:can't|could not|couldn't|unable to|wasn't able to) (?:connect|establish)",
        r"not (?:responding|reachable)",
        r"no route to host",
        r"network (?:is )?unreachable",
        r"server (?:unavailable|busy)",
    ),
    _rule("mail loop", "unknown", r"too many hops", r"mail loop", r"\blooping\b", r"loops back"),
    # --- the mailbox does not exist or no longer takes mail ------------------------------------------
    _rule(
        "domain unknown",
        "hard",
        r"domain (?:does not|doesn't) exist",
        r"\bno such domain\b",
        r"\bunknown (?:host|domain)\b",
        r"\bhost unknown\b",
        r"domain (?:not found|unknown)",
        r"unrouteable address",
        r"host or domain name not found",
    ),
    _rule("user unknown", "hard", r"recipient address rejected: access denied", code="5.4.1"),
    _rule(
        "user unknown",
        "hard",
        r"\b(?:user|recipient|addressee|mailbox|account|address)s?\b[^.;:\n]{0,30}\b(?:unknown|not known)\b",
        r"\bunknown (?:or illegal )?(?:user|recipient|addressee|mailbox|account|local part|e-?mail addr)",
        r"\bno such (?:user|mailbox|recipient|address|account|person|local user)\b",
        r"no mailbox (?:here )?by that name",
        r"no mailbox here",
        r"\b(?:user|recipient|mailbox|account|address|addressee) (?:was )?not found\b",
        r"(?:user|recipient|mailbox|account|address) (?:does not|doesn't|did not|didn't) exist",
        r"\bdoes not exist\b",
        r"\bdoesn'?t have an? [\w.-]+ account",
        r"mailbox (?:is )?(?:unavailable|not available|not found|invalid)",
        r"invalid (?:mailbox|recipient|user|address|e-?mail address|final delivery userid)",
        r"bad destination (?:mailbox|system) address",
        r"not (?:a )?(?:valid|known) (?:user|recipient|mailbox|address)",
        r"recipient (?:name )?is not recognized",
        r"not listed in (?:the )?(?:domino directory|public name|address book|directory)",
        r"(?:is )?(?:wrong|invalid) or no longer valid",
        r"no longer (?:valid|exists|in use|available|active)",
        r"does not have a final (?:e-?mail )?delivery point",
        r"no matches to nameserver query",
        r"did not (?:exactly )?match an? [\w.-]* ?e-?mail address",
        r"(?:empfänger|empfaenger|benutzer|adresse)[^.;\n]{0,25}unbekannt",
        r"unbekannte?r? (?:empfänger|empfaenger|benutzer)",
        r"utilisateur inconnu|destinataire inconnu|adresse inconnue|n'existe pas|non recensé",
        r"usuario desconocido|no existe",
        r"utente (?:sconosciuto|inesistente)",
        r"usuário desconhecido|não existe",
    ),
    _rule(
        "mailbox disabled",
        "hard",
        r"(?:account|mailbox|user|address) (?:has been |is )?(?:disabled|discontinued|deactivated|"
        r"suspended|closed|terminated|expired|inactive|locked)",
        r"(?:account|mailbox) is not active",
    ),
)
