"""`digest doctor`: check an installation end to end and say what to fix.

Checks, in order: the config, the database and its schema, the templates, every relay (a real
EHLO, STARTTLS or TLS and certificate validation, not only a TCP connect), the DKIM key and the
DNS record to publish, the alignment of the From, DKIM and bounce domains, the public URL, the
postal address, the operator token and alerts. Nothing here needs the internet except the relays
themselves; DNS records are printed to publish, not looked up.

A `fail` makes the command exit 1; `warn` is worth fixing but the service works.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import aiosmtplib

from digest import bootstrap, messages, rendering
from digest.config import Config, RelayConfig
from digest.dkim_sign import load_key, public_record
from digest.errors import DigestError
from digest.store import migrate
from digest.store import reports as reports_store

Level = Literal["ok", "warn", "fail"]
PROBE_TIMEOUT = 15.0

# Public suffixes with a second level, for the organisational domain without a download of the
# Public Suffix List (doctor works offline); other names use their last two labels.
_SECOND_LEVEL = {"co", "com", "net", "org", "gov", "ac", "edu", "ltd", "plc", "ne", "or", "gv"}


@dataclass(frozen=True)
class Finding:
    level: Level
    check: str
    message: str
    fix: str = ""


def organisational_domain(domain: str) -> str:
    labels = domain.lower().strip(".").split(".")
    if len(labels) >= 3 and labels[-2] in _SECOND_LEVEL and len(labels[-1]) == 2:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def _domain_of(address: str) -> str:
    return messages.address_of(address).rpartition("@")[2].lower()


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")


async def probe(relay: RelayConfig) -> Finding:
    """One relay: connect, EHLO, STARTTLS or TLS with certificate validation, AUTH if configured."""
    from digest.smtp import probe_relay

    name = f"smtp {relay.host}:{relay.port}"
    try:
        greeting = await asyncio.wait_for(
            probe_relay(relay), timeout=min(relay.timeout.total_seconds(), PROBE_TIMEOUT)
        )
    except (ssl.SSLCertVerificationError, aiosmtplib.SMTPConnectError) as exc:
        cause = exc.__cause__ or exc.__context__ or exc
        if isinstance(exc, ssl.SSLCertVerificationError) or isinstance(cause, ssl.SSLCertVerificationError):
            reason = getattr(cause, "verify_message", None) or str(cause)
            return Finding(
                "fail",
                name,
                f"TLS certificate not accepted: {reason}",
                "renew the relay's certificate, or set ca_file to the CA that signed it",
            )
        return Finding(
            "fail", name, f"cannot connect: {exc}", "check host, port and firewall; is the relay up?"
        )
    except TimeoutError:
        return Finding("fail", name, "no answer within the timeout", "check host, port and firewall")
    except aiosmtplib.SMTPAuthenticationError as exc:
        return Finding(
            "fail", name, f"login refused: {exc.code} {exc.message}", "check username and password"
        )
    except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
        text = str(exc)
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate" in text.lower():
            return Finding(
                "fail",
                name,
                f"TLS certificate not accepted: {text}",
                "renew the relay's certificate, or set ca_file to the CA that signed it",
            )
        return Finding(
            "fail", name, f"{type(exc).__name__}: {text}", "check host, port, security and the relay"
        )
    tls = {"none": "no TLS", "starttls": "STARTTLS, certificate valid", "tls": "TLS, certificate valid"}
    if relay.security == "none" and not _is_loopback(relay.host):
        return Finding(
            "warn",
            name,
            f"reachable but unencrypted ({greeting.splitlines()[0][:60] if greeting else 'EHLO ok'})",
            'set security = "starttls" (or "tls"): mail and passwords cross the network in clear',
        )
    return Finding("ok", name, f"EHLO accepted, {tls[relay.security]}")


async def _database(cfg: Config) -> list[Finding]:
    database = bootstrap.open_database(cfg)
    try:
        async with database.read() as s:
            await reports_store.ping(s)
        try:
            await migrate.check_schema(database)
        except DigestError as exc:
            return [Finding("fail", "database", str(exc), "run `digest migrate` (after a backup)")]
        return [Finding("ok", "database", f"reachable; schema at {migrate.head_revision()}")]
    except Exception as exc:
        return [
            Finding(
                "fail",
                "database",
                f"cannot open {cfg.database.url}: {type(exc).__name__}: {exc}"[:300],
                "check [database] url and that the server is running",
            )
        ]
    finally:
        await database.close()


def _templates(cfg: Config) -> list[Finding]:
    directory = bootstrap.templates_dir(cfg)
    try:
        rendering.Templates(directory)
    except DigestError as exc:
        return [Finding("fail", "templates", str(exc), "fix the template named above")]
    missing = [
        f"{lst.slug}: {lst.template}"
        for lst in cfg.lists
        if not (directory / "email" / lst.template).is_dir()
    ]
    if missing:
        return [
            Finding(
                "fail",
                "templates",
                f"list template folder missing ({', '.join(missing)})",
                f"create it under {directory / 'email'} or set the list's template",
            )
        ]
    return [Finding("ok", "templates", f"{directory / 'email'} renders")]


def _dkim(cfg: Config) -> tuple[list[Finding], str | None]:
    d = cfg.dkim
    if not (d.domain or d.selector or d.key_path):
        return [
            Finding(
                "warn",
                "dkim",
                "digest does not sign mail",
                "sign at your relay (e.g. OpenDKIM with Postfix, best at volume) or set [dkim] domain, "
                "selector and key_path",
            )
        ], None
    if not (d.domain and d.selector and d.key_path):
        return [Finding("fail", "dkim", "[dkim] needs domain, selector and key_path together")], None
    path = Path(d.key_path)
    try:
        key = load_key(d.domain, d.selector, path if path.is_absolute() else cfg.base_dir / path)
    except DigestError as exc:
        return [Finding("fail", "dkim", str(exc), "openssl genrsa -out dkim.pem 2048")], None
    record = public_record(key)
    return [
        Finding("ok", "dkim", f"{key.bits}-bit key; publish TXT at {d.selector}._domainkey.{d.domain}"),
        Finding("ok", "dns", f'{d.selector}._domainkey.{d.domain} TXT "{record}"'),
    ], d.domain


def _alignment(cfg: Config, dkim_domain: str | None) -> list[Finding]:
    froms = {cfg.sender.from_, *(lst.from_ for lst in cfg.lists if lst.from_)}
    bounce = (cfg.bounce.domain or cfg.sender.domain).lower()
    found: list[Finding] = []
    for address in sorted(froms):
        domain = _domain_of(address)
        org = organisational_domain(domain)
        problems = []
        if organisational_domain(bounce) != org:
            problems.append(f"bounce domain {bounce} (SPF alignment)")
        if dkim_domain and organisational_domain(dkim_domain) != org:
            problems.append(f"DKIM d={dkim_domain}")
        if problems:
            found.append(
                Finding(
                    "fail",
                    "alignment",
                    f"From {domain} is not aligned with {' and '.join(problems)}",
                    f"use addresses under {org} for [sender] from, [bounce] domain and [dkim] domain: DMARC "
                    "rejects or junks unaligned mail",
                )
            )
        else:
            found.append(
                Finding(
                    "ok",
                    "alignment",
                    f"From {domain}, bounces {bounce}"
                    + (f", DKIM d={dkim_domain}" if dkim_domain else "")
                    + f" share {org}",
                )
            )
    org = organisational_domain(_domain_of(cfg.sender.from_))
    found.append(
        Finding("ok", "dns", f'{bounce} TXT "v=spf1 a:<your relay> -all" (SPF for the bounce domain)')
    )
    found.append(
        Finding(
            "ok", "dns", f'_dmarc.{org} TXT "v=DMARC1; p=quarantine; rua=mailto:dmarc@{org}; adkim=r; aspf=r"'
        )
    )
    return found


def _web(cfg: Config) -> list[Finding]:
    found = []
    parts = urlsplit(cfg.web.base_url)
    if parts.scheme != "https":
        found.append(
            Finding(
                "warn",
                "web",
                f"base_url {cfg.web.base_url} is not https (allowed only on loopback)",
                'serve digest behind a TLS reverse proxy and set base_url = "https://..." '
                "before readers use it",
            )
        )
    else:
        found.append(Finding("ok", "web", f"base_url {cfg.web.base_url}"))
    if not cfg.web.keys:
        found.append(
            Finding(
                "warn",
                "web",
                "no [web] secret_keys: a key generated in the database signs links",
                "set secret_keys so you can rotate keys (the first signs, all verify)",
            )
        )
    if not cfg.api.token:
        found.append(
            Finding("warn", "api", "no [api] token: the operator API and /admin are off", "set [api] token")
        )
    return found


def _sender(cfg: Config) -> list[Finding]:
    postal = cfg.sender.postal_address.strip()
    if not postal or postal.startswith("Set [sender]"):
        return [
            Finding(
                "fail",
                "sender",
                "no postal address: bulk mail must carry one (CAN-SPAM, CASL)",
                "set [sender] postal_address",
            )
        ]
    return [Finding("ok", "sender", f"From {cfg.sender.from_}; postal address set")]


def _alerts(cfg: Config) -> list[Finding]:
    if not (cfg.alerts.email or cfg.alerts.webhook):
        return [
            Finding(
                "warn",
                "alerts",
                "nobody is told when an edition pauses or the queue stalls",
                "set [alerts] email and/or webhook",
            )
        ]
    return [
        Finding("ok", "alerts", "to " + " and ".join(x for x in (cfg.alerts.email, cfg.alerts.webhook) if x))
    ]


async def run_checks(cfg: Config) -> list[Finding]:
    """Every check, in the order an operator fixes things."""
    found = [Finding("ok", "config", str(cfg.path) if cfg.path else "built-in defaults")]
    found += await _database(cfg)
    found += _templates(cfg)
    if cfg.relays:
        found += await asyncio.gather(*(probe(r) for r in cfg.relays))
    elif cfg.capture.enabled:
        found.append(
            Finding(
                "warn",
                "smtp",
                f"no relay: mail goes to the capture server ({cfg.capture.directory})",
                "configure [smtp] host (or [[smtp.relays]]) to send for real",
            )
        )
        found.append(
            await probe(cfg.capture.relay)
            if _capture_up(cfg)
            else Finding("ok", "smtp", "the capture server starts with `digest run`")
        )
    else:
        found.append(Finding("fail", "smtp", "no mail route", "configure [smtp] host or enable [capture]"))
    dkim_findings, dkim_domain = _dkim(cfg)
    found += dkim_findings
    found += _alignment(cfg, dkim_domain)
    found += _web(cfg)
    found += _sender(cfg)
    found += _alerts(cfg)
    return found


def _capture_up(cfg: Config) -> bool:
    from digest import capture

    return capture.is_listening(cfg.capture.host, cfg.capture.port)
