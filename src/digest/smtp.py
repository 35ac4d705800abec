"""The SMTP edge: reused aiosmtplib connections that send exactly the bytes they are given.

Security is enforced, never negotiated down: `starttls` fails when the server does not offer
STARTTLS (aiosmtplib's default would silently send in plaintext), `tls` is implicit TLS, and AUTH
is only attempted over TLS. Each outcome says what the ledger must record:

    sent      2xx to the final dot
    deferred  4xx, 421, or a connection problem before the message was handed over
    failed    5xx
    unknown   no answer after the message was handed over: it may have arrived, do not resend
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Literal

import aiosmtplib

from digest.config import RelayConfig

Verdict = Literal["sent", "deferred", "failed", "unknown"]


@dataclass(frozen=True)
class SendOutcome:
    verdict: Verdict
    code: int | None
    reply: str
    relay: str


def _reply_text(message: str) -> str:
    return " ".join(message.split())[:500]


class SmtpConnection:
    """One connection to one relay, reconnected as needed, at most max_per_connection messages."""

    def __init__(self, relay: RelayConfig) -> None:
        self.relay = relay
        self.name = f"{relay.host}:{relay.port}"
        self._smtp: aiosmtplib.SMTP | None = None
        self._sent_on_connection = 0

    def _client(self) -> aiosmtplib.SMTP:
        r = self.relay
        context: ssl.SSLContext | None = None
        if r.security != "none":
            context = (
                ssl.create_default_context(cafile=r.ca_file) if r.ca_file else ssl.create_default_context()
            )
        return aiosmtplib.SMTP(
            hostname=r.host,
            port=r.port,
            use_tls=r.security == "tls",
            start_tls=r.security == "starttls",
            validate_certs=True,
            tls_context=context,
            local_hostname=r.helo_name,
            timeout=r.timeout.total_seconds(),
        )

    async def _connected(self) -> aiosmtplib.SMTP:
        if self._smtp is not None and (
            not self._smtp.is_connected or self._sent_on_connection >= self.relay.max_per_connection
        ):
            await self.close()
        if self._smtp is None:
            smtp = self._client()
            await smtp.connect()
            if self.relay.username:
                await smtp.login(self.relay.username, self.relay.password or "")
            self._smtp, self._sent_on_connection = smtp, 0
        return self._smtp

    async def send(self, env_from: str, rcpt: str, data: bytes) -> SendOutcome:
        """Send one message to one recipient and say what happened."""
        try:
            smtp = await self._connected()
        except aiosmtplib.SMTPResponseException as exc:
            await self.close()
            return SendOutcome("deferred", exc.code, _reply_text(exc.message), self.name)
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            await self.close()
            return SendOutcome("deferred", None, f"cannot connect to {self.name}: {exc}", self.name)
        utf8 = not rcpt.isascii()
        if utf8 and not smtp.supports_extension("smtputf8"):
            # Nothing was sent: the address itself is what this relay cannot take.
            return SendOutcome(
                "failed",
                None,
                f"{self.name} does not offer SMTPUTF8, which the non-ASCII address {rcpt} needs",
                self.name,
            )
        encoding = "utf-8" if utf8 else "ascii"
        try:
            await smtp.mail(env_from, options=["SMTPUTF8"] if utf8 else None, encoding=encoding)
            code, message = await self._rcpt(smtp, rcpt, encoding)
            if code >= 300:
                await self._reset(smtp)
                return SendOutcome("deferred" if code < 500 else "failed", code, message, self.name)
        except aiosmtplib.SMTPResponseException as exc:
            await self._after_refusal(exc.code)
            verdict: Verdict = "failed" if exc.code >= 500 else "deferred"
            return SendOutcome(verdict, exc.code, _reply_text(exc.message), self.name)
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            await self.close()
            return SendOutcome(
                "deferred", None, f"connection to {self.name} lost before DATA: {exc}", self.name
            )
        try:
            response = await smtp.data(data, timeout=max(self.relay.timeout.total_seconds(), 1.0))
        except aiosmtplib.SMTPResponseException as exc:
            await self._after_refusal(exc.code)
            verdict = "failed" if exc.code >= 500 else "deferred"
            return SendOutcome(verdict, exc.code, _reply_text(exc.message), self.name)
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            await self.close()
            return SendOutcome(
                "unknown", None, f"no reply from {self.name} after the message was sent: {exc}", self.name
            )
        self._sent_on_connection += 1
        return SendOutcome("sent", response.code, _reply_text(response.message), self.name)

    async def _rcpt(self, smtp: aiosmtplib.SMTP, rcpt: str, encoding: str) -> tuple[int, str]:
        try:
            response = await smtp.rcpt(rcpt, encoding=encoding)
        except aiosmtplib.SMTPRecipientRefused as exc:
            # 552 at RCPT means "too much" (RFC 5321 4.5.3.1.10): retry like 452.
            code = 452 if exc.code == 552 else exc.code
            return code, _reply_text(exc.message)
        return response.code, _reply_text(response.message)

    async def _reset(self, smtp: aiosmtplib.SMTP) -> None:
        try:
            await smtp.rset()
        except (TimeoutError, aiosmtplib.SMTPException, OSError):
            await self.close()

    async def _after_refusal(self, code: int) -> None:
        if code == 421 or self._smtp is None or not self._smtp.is_connected:
            await self.close()
        else:
            await self._reset(self._smtp)

    async def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        try:
            if smtp.is_connected:
                await smtp.quit()
        except (TimeoutError, aiosmtplib.SMTPException, OSError):
            smtp.close()


async def probe_relay(relay: RelayConfig) -> str:
    """Connect, EHLO (and STARTTLS/TLS as configured), then QUIT; returns the server's greeting."""
    conn = SmtpConnection(relay)
    try:
        smtp = await conn._connected()
        return _reply_text(smtp.last_ehlo_response.message if smtp.last_ehlo_response else "")
    finally:
        await conn.close()
