"""Message assembly for the worker: per-edition templates built once, one reader's bytes per send."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from digest import messages, personal, tokens
from digest.config import Config
from digest.dkim_sign import DkimKey, load_key
from digest.models import DeliveryKind
from digest.store import ledger


def sender_id(domain: str) -> str:
    """Feedback-ID's SenderId: stable, 5-15 characters of [A-Za-z0-9_-]."""
    core = "".join(ch for ch in domain.split(".")[0] if ch.isalnum() or ch in "-_")[:15]
    return core if len(core) >= 5 else (core + "digest")[:15]


class Assembler:
    """Per-edition message templates, built once and reused for every reader of the edition."""

    def __init__(self, cfg: Config, keys: Sequence[str], signer: DkimKey | None = None) -> None:
        self.cfg = cfg
        self.keys = keys
        self.signer = signer
        self.cache: dict[int, messages.MessageTemplate] = {}

    def template(self, c: ledger.Claimed) -> messages.MessageTemplate:
        cfg, e, lst = self.cfg, c.edition, c.mailing_list
        if e is None:
            d = c.delivery  # transactional mail carries its own rendered parts
            return messages.prepare(
                from_addr=cfg.sender.from_,
                subject=d.subject or "",
                text=d.body_text or "",
                html=d.body_html or "",
                reply_to=cfg.sender.reply_to,
                list_unsubscribe_post=False,
                extra=(("Auto-Submitted", "auto-generated"),),
            )
        if e.id in self.cache:
            return self.cache[e.id]
        if lst is None:
            raise LookupError(f"edition {e.id} has no list")
        tpl = messages.prepare(
            from_addr=lst.from_addr or cfg.sender.from_,
            reply_to=lst.reply_to or cfg.sender.reply_to,
            subject=e.subject,
            text=e.text,
            html=e.html,
            list_id=f"{lst.name} <{lst.slug}.{cfg.sender.domain}>",
            feedback_id=f"{e.id}:{lst.slug}:{e.kind}:{sender_id(cfg.sender.domain)}",
            extra=(("Precedence", "bulk"),),
        )
        self.cache[e.id] = tpl
        return tpl

    def message(self, c: ledger.Claimed, base_url: str, now: datetime) -> tuple[str, str, bytes]:
        """(envelope sender, envelope recipient, message bytes) for one claimed delivery; the
        recipient is in its wire form, the same in the envelope and the To header."""
        cfg, d = self.cfg, c.delivery
        bounce_domain = cfg.bounce.domain or cfg.sender.domain
        env_from = tokens.verp_address(d.id, self.keys[0], bounce_domain)
        tpl = self.template(c)
        token = c.subscription.token if c.subscription is not None else tokens.TEST_TOKEN
        unsub = None
        if d.kind != DeliveryKind.TRANSACTIONAL:
            unsub = f"<{base_url}/u/{token}>"
            if cfg.bounce.listen:
                unsub += f", <mailto:unsub+{token}@{bounce_domain}>"
        name = c.subscriber.name if c.subscriber is not None else ""
        if c.edition is not None and c.mailing_list is not None:
            zone = (c.subscription.timezone if c.subscription else None) or c.mailing_list.timezone
            tpl = _for_reader(tpl, name, zone)
        rcpt = messages.wire_address(d.address)
        raw = messages.assemble(
            tpl,
            to=messages.format_address(rcpt, name),
            message_id=d.message_id,
            date=now,
            token=token,
            list_unsubscribe=unsub,
        )
        if self.signer is not None:
            raw = self.signer.sign(raw)
        return env_from, rcpt, raw


def _for_reader(tpl: messages.MessageTemplate, name: str, zone: str) -> messages.MessageTemplate:
    """The edition's parts with this reader's greeting and dates (see `personal`)."""
    text, html = personal.for_reader(tpl.text, tpl.html, name=name, zone=zone)
    return dataclasses.replace(
        tpl,
        text=text,
        html=html,
        text_cte=_still_7bit(tpl.text_cte, text),
        html_cte=_still_7bit(tpl.html_cte, html),
    )


def _still_7bit(cte: str, body: str) -> str:
    # The encoding was chosen for the shared parts; a name can bring the first non-ASCII
    # character (or a long line) into a part that was plain 7-bit until then.
    if cte == "7bit" and not (body.isascii() and all(len(line) <= 76 for line in body.split("\n"))):
        return "quoted-printable"
    return cte


def dkim_key(cfg: Config) -> DkimKey | None:
    """The configured DKIM key, checked at start; None when signing is off."""
    d = cfg.dkim
    if not (d.domain and d.selector and d.key_path):
        return None
    path = Path(d.key_path)
    return load_key(d.domain, d.selector, path if path.is_absolute() else cfg.base_dir / path)
