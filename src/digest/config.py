"""Configuration: one TOML file plus `DIGEST_<SECTION>__<KEY>` environment overrides, read once.

The file is `--config PATH`, else `$DIGEST_CONFIG`, else `./digest.toml`; with none of them the
embedded default runs from any directory (SQLite in the working directory, the sample articles
shipped in `digest/defaults/seeds/` as a source, a demo list and the capture SMTP server). Every
value is validated here; a bad one raises ConfigError naming the TOML key, the value and what was
expected, so the service never starts half-configured.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from digest.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> timedelta:
    """`90s`, `30m`, `12h`, `7d`, `2w`, or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=float(value))
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    raise ValueError("a duration such as 90s, 30m, 12h or 7d")


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def _string_list(value: object) -> object:
    # Environment overrides arrive as strings; accept JSON arrays or comma-separated values.
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


StrList = Annotated[list[str], BeforeValidator(_string_list)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class DatabaseConfig(_Section):
    url: str = "sqlite:///digest.db"

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        if not (v.startswith("sqlite:///") or v.startswith(("postgresql://", "postgres://"))):
            raise ValueError("sqlite:///PATH or postgresql://USER@HOST/DB")
        return v


Security = Literal["none", "starttls", "tls"]


class RelayConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=587, ge=1, le=65535)
    security: Security = "starttls"
    username: str | None = None
    password: str | None = None
    concurrency: int = Field(default=4, ge=1, le=256)
    rate: float = Field(default=0.0, ge=0.0)  # messages per second; 0 means no limit
    max_per_connection: int = Field(default=100, ge=1)
    timeout: Duration = timedelta(seconds=60)
    helo_name: str | None = None
    ca_file: str | None = None

    @model_validator(mode="after")
    def _auth_needs_tls(self) -> RelayConfig:
        if self.username and self.security == "none":
            raise ValueError('username is set but security is "none": AUTH is only sent over TLS')
        return self


class SmtpConfig(RelayConfig):
    relays: list[RelayConfig] = Field(default_factory=list)


class DeliveryConfig(_Section):
    lease: Duration = timedelta(seconds=60)
    lifetime: Duration = timedelta(hours=48)
    batch_size: int = Field(default=100, ge=1, le=10_000)
    retry_base: Duration = timedelta(minutes=5)  # first retry after a 4xx; doubles each time
    # How long a stopping worker (SIGTERM) waits for the messages in flight before leaving them to
    # their lease.
    stop_timeout: Duration = timedelta(seconds=10)
    # Static caps in messages per second per recipient domain, for direct-to-MX setups,
    # e.g. domain_rates = { "gmail.com" = 5, "yahoo.com" = 2 }; a relay does this itself otherwise.
    domain_rates: dict[str, float] = Field(default_factory=dict)


class CaptureConfig(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=2525, ge=0, le=65535)
    directory: str = "captured-mail"

    @property
    def relay(self) -> RelayConfig:
        """The capture server as a relay: plaintext on this machine, two connections are plenty."""
        return RelayConfig(host=self.host, port=self.port, security="none", concurrency=2)


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class WebConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    base_url: str = "http://127.0.0.1:8000"
    secret_keys: StrList = Field(default_factory=list)
    secret_key: str | None = None  # a single key; kept for configs written before key rotation
    trusted_proxies: StrList = Field(default_factory=list)
    signup_per_minute: int = Field(default=5, ge=0)  # per client IP; 0 turns the limit off
    signup_per_hour: int = Field(default=20, ge=0)
    confirmations_per_hour: int = Field(default=1000, ge=1)  # global budget, with an alert
    # What the delivery loop inside `digest web` sends: "transactional" (confirmation and welcome
    # mail, so signups never wait for a worker) or "all" (when no separate worker runs).
    deliver: Literal["transactional", "all"] = "transactional"

    @field_validator("base_url")
    @classmethod
    def _https_unless_loopback(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("an absolute http(s) URL")
        if parts.scheme != "https" and not _is_loopback(parts.hostname):
            raise ValueError("https (plain http is only allowed on a loopback host)")
        return v.rstrip("/")

    @property
    def keys(self) -> list[str]:
        return [*self.secret_keys, *([self.secret_key] if self.secret_key else [])]


class ApiConfig(_Section):
    token: str | None = None


class SchedulerConfig(_Section):
    catch_up: Duration = timedelta(hours=12)
    tick: Duration = timedelta(seconds=60)


class SenderConfig(_Section):
    from_: str = Field(default="Digest <digest@digest.localhost>", alias="from")
    reply_to: str | None = None
    postal_address: str = "Set [sender] postal_address in digest.toml"
    domain: str = "digest.localhost"


class BounceConfig(_Section):
    domain: str | None = None
    listen: str | None = None
    soft_score: float = Field(default=0.5, gt=0)  # per soft bounce, at most once a day
    score_limit: float = Field(default=5.0, gt=0)  # suppressed above this
    quiet: Duration = timedelta(days=7)  # the score resets after this long without bounces
    complaint_warn: float = Field(default=0.001, ge=0, le=1)
    complaint_pause: float = Field(default=0.003, ge=0, le=1)
    raw_retention: Duration = timedelta(days=30)  # raw bounce messages are trimmed after this
    processed_folder: str | None = None  # Maildir++ folder for processed bounces; None: cur/ + Seen

    @model_validator(mode="after")
    def _thresholds(self) -> BounceConfig:
        if self.complaint_warn > self.complaint_pause:
            raise ValueError("complaint_warn is above complaint_pause")
        return self


class DkimConfig(_Section):
    domain: str | None = None
    selector: str | None = None
    key_path: str | None = None


class BrandingConfig(_Section):
    accent: str = "#1a56db"
    logo_url: str | None = None
    footer_text: str = ""

    @field_validator("accent")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not re.fullmatch(r"#[0-9a-fA-F]{6}", v):
            raise ValueError("a 6-digit hex colour such as #1a56db")
        return v


class TemplatesConfig(_Section):
    directory: str | None = None


class SourceConfig(_Section):
    name: str = Field(min_length=1, max_length=100)
    # What readers see as the story's source; a feed's own title when not set, never the name.
    title: str | None = Field(default=None, max_length=200)
    kind: Literal["feed", "directory", "api"]
    url: str | None = None
    path: str | None = None
    interval: Duration = timedelta(minutes=30)
    # Fetch limits: a feed larger than max_bytes, or slower than timeout, is refused for this fetch.
    max_bytes: int = Field(default=5_000_000, ge=1_000, le=500_000_000)
    timeout: Duration = timedelta(seconds=20)

    @model_validator(mode="after")
    def _location(self) -> SourceConfig:
        if self.kind == "feed" and not (self.url or self.path):
            raise ValueError(f"source {self.name!r} of kind feed needs url (or path)")
        if self.kind == "directory" and not self.path:
            raise ValueError(f"source {self.name!r} of kind directory needs path")
        return self

    @property
    def location(self) -> str:
        return self.url or self.path or ""


class TopicConfig(_Section):
    """A subject readers of a list may choose: an article matches it by its source, its feed's own
    categories, or a keyword or phrase in its title and summary (whole words, case and accents
    ignored). `rest` makes it the "everything else" topic: the articles that match no other."""

    slug: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    name: str = Field(min_length=1, max_length=100)
    description: str = Field(default="", max_length=300)
    sources: list[str] = Field(default_factory=list)
    categories: list[str] = Field(default_factory=list)
    keywords: list[str] = Field(default_factory=list)
    rest: bool = False

    @model_validator(mode="after")
    def _has_rule(self) -> TopicConfig:
        if self.rest and (self.sources or self.categories or self.keywords):
            raise ValueError(
                f"topic {self.slug!r} is the rest topic: it takes no sources, categories or keywords"
            )
        if not self.rest and not (self.sources or self.categories or self.keywords):
            raise ValueError(f"topic {self.slug!r} needs sources, categories or keywords (or rest = true)")
        return self


class ListConfig(_Section):
    slug: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    name: str = Field(min_length=1)
    description: str = ""
    sources: list[str] = Field(min_length=1)
    schedule: str = "0 7 * * *"
    timezone: str = "UTC"
    min_articles: int = Field(default=1, ge=1)
    max_articles: int = Field(default=10, ge=1, le=100)
    max_age: Duration = timedelta(days=7)
    template: str = "digest"
    from_: str | None = Field(default=None, alias="from")
    reply_to: str | None = None
    public: bool = True
    language: str = "en"
    topics: list[TopicConfig] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("an IANA time zone such as Europe/Berlin") from None
        return v

    @field_validator("max_age")
    @classmethod
    def _age(cls, v: timedelta) -> timedelta:
        # Stored in whole seconds in a 32-bit column; ten years is more than any digest looks back.
        if not timedelta(minutes=1) <= v <= timedelta(days=3650):
            raise ValueError("a duration between 1m and 3650d")
        return v

    @field_validator("schedule")
    @classmethod
    def _cron(cls, v: str) -> str:
        from digest.schedule import parse_cron

        parse_cron(v)
        return v

    @model_validator(mode="after")
    def _min_le_max(self) -> ListConfig:
        if self.min_articles > self.max_articles:
            raise ValueError("min_articles is larger than max_articles")
        return self

    @model_validator(mode="after")
    def _topics(self) -> ListConfig:
        slugs = [t.slug for t in self.topics]
        doubled = sorted({s for s in slugs if slugs.count(s) > 1})
        if doubled:
            raise ValueError(f"topic {doubled[0]!r} is declared twice")
        if sum(t.rest for t in self.topics) > 1:
            raise ValueError("only one topic may be the rest topic (rest = true)")
        for topic in self.topics:
            unknown = [name for name in topic.sources if name not in self.sources]
            if unknown:
                raise ValueError(
                    f"topic {topic.slug!r} names source {unknown[0]!r}, which the list does not have"
                )
        return self


class RetentionConfig(_Section):
    """How long history is kept (`digest prune`, and the scheduler once a day)."""

    deliveries: Duration = timedelta(days=400)  # finished deliveries (the per-recipient ledger)
    events: Duration = timedelta(days=400)  # readers' audit events (suppressions and erasures stay)
    raw_bounces: Duration = timedelta(days=30)  # raw bounce messages inside events
    edition_bodies: Duration = timedelta(days=90)  # finished editions' rendered HTML and text
    batch_size: int = Field(default=2000, ge=1, le=100_000)  # rows per transaction


class AlertsConfig(_Section):
    """Where operators hear about trouble; at most one alert of a kind per window."""

    email: str | None = None
    webhook: str | None = None
    window: Duration = timedelta(hours=1)
    source_failing_after: Duration = timedelta(hours=6)
    queue_age: Duration = timedelta(hours=1)

    @field_validator("webhook")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^\s/]+", v):
            raise ValueError("an http(s) URL")
        return v


class Config(_Section):
    database: DatabaseConfig = DatabaseConfig()
    smtp: SmtpConfig = SmtpConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    capture: CaptureConfig = CaptureConfig()
    web: WebConfig = WebConfig()
    api: ApiConfig = ApiConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    sender: SenderConfig = SenderConfig()
    bounce: BounceConfig = BounceConfig()
    dkim: DkimConfig = DkimConfig()
    branding: BrandingConfig = BrandingConfig()
    templates: TemplatesConfig = TemplatesConfig()
    retention: RetentionConfig = RetentionConfig()
    alerts: AlertsConfig = AlertsConfig()
    sources: list[SourceConfig] = Field(default_factory=list)
    lists: list[ListConfig] = Field(default_factory=list)
    path: Path | None = Field(default=None, exclude=True)

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        names = [s.name for s in self.sources]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {', '.join(sorted(dupes))}")
        slugs = [lst.slug for lst in self.lists]
        if len(set(slugs)) != len(slugs):
            raise ValueError("list slugs must be unique")
        for lst in self.lists:
            unknown = [s for s in lst.sources if s not in names]
            if unknown:
                raise ValueError(f"list {lst.slug!r} names unknown source(s): {', '.join(unknown)}")
        if self.smtp.relays and "host" in self.smtp.model_fields_set:
            raise ValueError("[smtp] host and [[smtp.relays]] are both set; use one or the other")
        return self

    @property
    def relays(self) -> list[RelayConfig]:
        """The configured relays, in failover order; empty when mail goes to the capture server."""
        if self.smtp.relays:
            return list(self.smtp.relays)
        if "host" in self.smtp.model_fields_set:
            return [self.smtp]
        return []

    @property
    def mail_relays(self) -> list[RelayConfig]:
        """Where mail goes, in failover order: the configured relays, else the capture server."""
        return self.relays or [self.capture.relay]

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    def list_by_slug(self, slug: str) -> ListConfig | None:
        return next((lst for lst in self.lists if lst.slug == slug), None)


# The sample articles travel inside the package, so the embedded default works from any directory.
SAMPLE_ARTICLES = Path(__file__).parent / "defaults" / "seeds"

# The first digest a newcomer sees should be a whole one: the sample stories go back to 2024, so
# the demo list looks back ten years, and its footer carries an address of the sample town.
EMBEDDED_DEFAULT: dict[str, Any] = {
    "sender": {"postal_address": "Demo Digest, 1 Harbour Street, Kingsport"},
    "sources": [{"name": "seeds", "kind": "directory", "path": str(SAMPLE_ARTICLES), "interval": "10m"}],
    "lists": [
        {
            "slug": "demo",
            "name": "Demo Digest",
            "description": "A demonstration list fed by the sample articles shipped with digest.",
            "sources": ["seeds"],
            "schedule": "0 7 * * *",
            "timezone": "UTC",
            "max_age": "3650d",
        }
    ],
}


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith("DIGEST_") or "__" not in name:
            continue
        section, _, key = name[len("DIGEST_") :].partition("__")
        out.setdefault(section.lower(), {})[key.lower()] = value
    return out


# What pydantic's error types expect, in the words an operator would use.
_EXPECTED = {
    "int_parsing": "a whole number",
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "text (in quotes)",
    "list_type": "a list",
    "dict_type": "a table",
    "model_type": "a table",
    "missing": "a value (it is required)",
}


def _expected(error: Any) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in _EXPECTED:
        return _EXPECTED[kind]
    if kind == "literal_error":
        return f"one of {ctx.get('expected', '')}".replace("'", '"')
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "greater_than": ("more than", "gt"),
        "less_than_equal": ("at most", "le"),
        "less_than": ("less than", "lt"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        return f"a number {words} {ctx.get(key)}"
    return str(error["msg"]).removeprefix("Input should be ").removeprefix("Value error, ")


def _section_keys(section: str) -> list[str]:
    field = Config.model_fields.get(section)
    model = field.annotation if field else None
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _describe(err: ValidationError, origin: str, from_env: Mapping[tuple[str, str], str]) -> str:
    first = err.errors()[0]
    parts = [str(p) for p in first["loc"] if not str(p).startswith("function-")]
    loc = ".".join(parts)
    env_name = next(
        (name for (sec, key), name in from_env.items() if [sec, key][: len(parts)] == parts[:2]), None
    )
    if env_name:
        origin = f"environment variable {env_name}"
    if first["type"] == "extra_forbidden":
        known = (
            _section_keys(parts[0])
            if len(parts) == 2
            else list(Config.model_fields)
            if len(parts) == 1
            else []
        )
        near = difflib.get_close_matches(parts[-1], known, n=1)
        hint = f" (did you mean {'.'.join([*parts[:-1], near[0]])}?)" if near else ""
        return f"{origin}: unknown key {loc!r}{hint}"
    value = first.get("input")
    shown = "" if isinstance(value, dict | list) or value is None else f" = {value!r}"
    where = f"key {loc!r}{shown}" if loc else "config"
    if first["type"] == "value_error":
        return f"{origin}: {where}: {str(first['msg']).removeprefix('Value error, ')}"
    return f"{origin}: {where}: expected {_expected(first)}"


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read, merge and validate the configuration (file, then environment)."""
    env = os.environ if environ is None else environ
    chosen = Path(path) if path else Path(env["DIGEST_CONFIG"]) if env.get("DIGEST_CONFIG") else None
    data: dict[str, Any]
    if chosen is None and Path("digest.toml").exists():
        chosen = Path("digest.toml")
    if chosen is None:
        data = json.loads(json.dumps(EMBEDDED_DEFAULT))
        origin = "built-in defaults"
    else:
        try:
            data = tomllib.loads(chosen.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {chosen} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {chosen} is not valid TOML: {exc}") from None
        origin = str(chosen)
    from_env: dict[tuple[str, str], str] = {}
    for section, values in _env_overrides(env).items():
        target = data.setdefault(section, {})
        if not isinstance(target, dict):
            raise ConfigError(f"DIGEST_{section.upper()}__*: [{section}] is not a table")
        target.update(values)
        from_env.update({(section, key): f"DIGEST_{section.upper()}__{key.upper()}" for key in values})
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin, from_env)) from None
    resolved = chosen.resolve() if chosen else None
    return cfg.model_copy(update={"path": resolved})
