"""The database tables (SQLAlchemy 2 typed ORM). Alembic migrations in `migrations/` mirror them.

Times are stored as aware UTC datetimes. Status columns are plain strings whose allowed values
are the enums below, so SQLite and PostgreSQL share one schema without native enum types.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC in, aware UTC out, whatever the backend keeps (SQLite keeps naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON()}


# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class SubscriberStatus(enum.StrEnum):
    ACTIVE = "active"  # may receive mail
    BOUNCED = "bounced"  # hard bounce or soft-bounce score over the limit
    COMPLAINED = "complained"  # marked a message as spam (ARF report)
    SUPPRESSED = "suppressed"  # operator or erasure: never mail again


class SubscriptionStatus(enum.StrEnum):
    PENDING = "pending"  # signed up, not yet confirmed: nothing is sent
    CONFIRMED = "confirmed"  # double opt-in done, or added by an operator as confirmed
    UNSUBSCRIBED = "unsubscribed"  # left; kept for the consent record


class Cadence(enum.StrEnum):
    DEFAULT = "default"  # the list's cron schedule
    DAILY = "daily"  # every day at send_hour in the reader's time zone
    WEEKLY = "weekly"  # on weekday at send_hour


class DeliveryKind(enum.StrEnum):
    DIGEST = "digest"
    TEST = "test"  # send-test: moves no watermark, links are inert
    TRANSACTIONAL = "transactional"  # confirmation mail; delivered ahead of digests


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # waiting for a worker
    SENDING = "sending"  # leased by a worker; goes back to pending when the lease expires
    SENT = "sent"  # the server answered 2xx to the final dot
    DEFERRED = "deferred"  # 4xx or connection trouble; retried at next_attempt_at
    FAILED = "failed"  # 5xx, or deferred past the delivery lifetime
    UNKNOWN = "unknown"  # no answer after the final dot: may have arrived, not resent automatically
    SKIPPED = "skipped"  # the reader left or was suppressed before it went out
    CANCELLED = "cancelled"  # an operator cancelled the edition


OUTSTANDING = (DeliveryStatus.PENDING, DeliveryStatus.SENDING, DeliveryStatus.DEFERRED)


class EditionStatus(enum.StrEnum):
    SENDING = "sending"
    PAUSED = "paused"  # a circuit breaker or an operator stopped it; pause_reason says why
    DONE = "done"
    CANCELLED = "cancelled"


class Source(Base):
    __tablename__ = "sources"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    kind: Mapped[str] = mapped_column(String(20))
    location: Mapped[str] = mapped_column(Text)
    interval_seconds: Mapped[int] = mapped_column(Integer)
    etag: Mapped[str | None] = mapped_column(Text)
    last_modified: Mapped[str | None] = mapped_column(Text)
    last_fetched_at: Mapped[datetime | None]
    last_success_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[datetime | None]


class Article(Base):
    __tablename__ = "articles"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    guid: Mapped[str] = mapped_column(Text)
    url: Mapped[str | None] = mapped_column(Text, index=True)  # canonical: for display and links
    title: Mapped[str] = mapped_column(Text)
    author: Mapped[str | None] = mapped_column(Text)
    published_at: Mapped[datetime]
    summary: Mapped[str] = mapped_column(Text)
    content: Mapped[str] = mapped_column(Text)
    image_url: Mapped[str | None] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime]
    # The link with its fragment (or a guid that is a URL): an exact copy of this item in another
    # source has the same one. Neither it nor `url` is unique: two comments on one page differ
    # only by their fragment, and two "Photo" posts share a title and an empty text.
    identity_url: Mapped[str | None] = mapped_column(Text, index=True)
    # The feed's own categories or tags, as given (topics may match them).
    categories: Mapped[list[str] | None] = mapped_column(JSON)


@dataclass(frozen=True)
class NewArticle:
    """An article as ingest or the API hands it over, normalized (canonical URL, sanitized HTML,
    fingerprint) and not stored yet; the store upserts it into Article."""

    guid: str  # the item's identity within its source: its guid, else its link, else a content hash
    url: str | None  # canonical, for display and links
    title: str
    author: str | None
    published_at: datetime
    summary: str
    content_html: str
    image_url: str | None
    fingerprint: str
    # The link (or a guid that is a URL) with its fragment: an exact copy of the item in another
    # source has the same one, and is linked to this article rather than stored again.
    identity_url: str | None = None
    categories: tuple[str, ...] = ()  # the feed's own categories or tags


class ArticleSource(Base):
    """One sighting of an article in one source; `seq` orders sightings in commit order."""

    __tablename__ = "article_sources"
    __table_args__ = (UniqueConstraint("source_id", "guid", name="uq_article_sources_source_guid"),)
    article_id: Mapped[int] = mapped_column(ForeignKey("articles.id", ondelete="CASCADE"), primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id", ondelete="CASCADE"), primary_key=True)
    guid: Mapped[str] = mapped_column(Text)
    seq: Mapped[int] = mapped_column(BigInteger, unique=True)
    ingested_at: Mapped[datetime]


class MailingList(Base):
    __tablename__ = "lists"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    name: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, default="")
    schedule: Mapped[str] = mapped_column(String(100))
    timezone: Mapped[str] = mapped_column(String(64))
    min_articles: Mapped[int] = mapped_column(Integer)
    max_articles: Mapped[int] = mapped_column(Integer)
    max_age_seconds: Mapped[int] = mapped_column(Integer)
    template: Mapped[str] = mapped_column(String(100))
    from_addr: Mapped[str | None] = mapped_column(Text)
    reply_to: Mapped[str | None] = mapped_column(Text)
    public: Mapped[bool] = mapped_column(Boolean, default=True)
    language: Mapped[str] = mapped_column(String(35), default="en")
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class ListSource(Base):
    __tablename__ = "list_sources"
    list_id: Mapped[int] = mapped_column(ForeignKey("lists.id", ondelete="CASCADE"), primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("sources.id", ondelete="CASCADE"), primary_key=True)


class Topic(Base):
    """A subject a list offers its readers, kept in step with the config by (list, slug)."""

    __tablename__ = "topics"
    __table_args__ = (UniqueConstraint("list_id", "slug", name="uq_topics_list_slug"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("lists.id", ondelete="CASCADE"))
    slug: Mapped[str] = mapped_column(String(63))
    name: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, default="")
    position: Mapped[int] = mapped_column(Integer, default=0)
    rest: Mapped[bool] = mapped_column(Boolean, default=False)


class ArticleTopic(Base):
    """An article matched one of a list's topics at ingest (or at `digest topics rematch`)."""

    __tablename__ = "article_topics"
    __table_args__ = (Index("ix_article_topics_topic", "topic_id", "article_id"),)
    article_id: Mapped[int] = mapped_column(ForeignKey("articles.id", ondelete="CASCADE"), primary_key=True)
    topic_id: Mapped[int] = mapped_column(ForeignKey("topics.id", ondelete="CASCADE"), primary_key=True)


class Subscriber(Base):
    __tablename__ = "subscribers"
    __table_args__ = (Index("ix_subscribers_status", "status"),)  # readers by status, for /metrics
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email: Mapped[str] = mapped_column(String(254))
    email_key: Mapped[str] = mapped_column(String(254), unique=True)  # casefolded, for lookups
    name: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(20), default=SubscriberStatus.ACTIVE)
    bounce_score: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Subscription(Base):
    __tablename__ = "subscriptions"
    __table_args__ = (
        UniqueConstraint("subscriber_id", "list_id", name="uq_subscriptions_reader_list"),
        Index("ix_subscriptions_due", "status", "next_due_at"),
        # reader counts by list for /metrics, status and the admin page read this index, not the rows
        Index("ix_subscriptions_list", "list_id", "status", "cadence"),
        Index("ix_subscriptions_topics", "list_id", "status", "topics"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    list_id: Mapped[int] = mapped_column(ForeignKey("lists.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(20), default=SubscriptionStatus.PENDING)
    cadence: Mapped[str] = mapped_column(String(10), default=Cadence.DEFAULT)
    weekday: Mapped[int | None] = mapped_column(Integer)  # 0 = Monday
    send_hour: Mapped[int | None] = mapped_column(Integer)
    timezone: Mapped[str | None] = mapped_column(String(64))
    watermark: Mapped[int] = mapped_column(BigInteger, default=0)
    next_due_at: Mapped[datetime | None]
    last_digest_at: Mapped[datetime | None]
    token: Mapped[str] = mapped_column(String(64), unique=True)
    signup_at: Mapped[datetime]
    signup_ip: Mapped[str | None] = mapped_column(String(64))
    signup_user_agent: Mapped[str | None] = mapped_column(Text)
    signup_source: Mapped[str | None] = mapped_column(Text)
    signup_referer: Mapped[str | None] = mapped_column(Text)
    consent_text_version: Mapped[str | None] = mapped_column(String(64))
    confirmed_at: Mapped[datetime | None]
    confirm_ip: Mapped[str | None] = mapped_column(String(64))
    confirm_user_agent: Mapped[str | None] = mapped_column(Text)
    unsubscribed_at: Mapped[datetime | None]
    unsubscribe_method: Mapped[str | None] = mapped_column(String(20))
    # The reader's topics: their slugs, sorted and comma-joined; NULL means every topic (those
    # added later included). Readers with the same choice and watermark share an edition.
    topics: Mapped[str | None] = mapped_column(Text)


def topic_choice_key(slugs: Iterable[str] | None) -> str | None:
    """A topic choice as `Subscription.topics` keeps it: sorted, comma-joined slugs (None: every topic)."""
    return None if slugs is None else ",".join(sorted(set(slugs)))


def topic_choice(chosen: Iterable[str], offered: Iterable[str]) -> str | None:
    """The stored choice of `chosen` among a list's `offered` topics: none or all is every topic."""
    picked = set(chosen)
    return None if not picked or picked >= set(offered) else topic_choice_key(picked)


def topic_choice_slugs(key: str | None) -> list[str] | None:
    return None if key is None else [s for s in key.split(",") if s]


class Edition(Base):
    """One rendered digest shared by every reader with the same list and watermark."""

    __tablename__ = "editions"
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("lists.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20), default=DeliveryKind.DIGEST)
    article_ids: Mapped[list[int]] = mapped_column(JSON)
    more_count: Mapped[int] = mapped_column(Integer, default=0)
    subject: Mapped[str] = mapped_column(Text)
    html: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(20), default=EditionStatus.SENDING)
    pause_reason: Mapped[str | None] = mapped_column(Text)
    # The topic choice this edition was composed for (as Subscription.topics); NULL: every topic.
    topics: Mapped[str | None] = mapped_column(Text)


# What a claim takes: pending and deferred rows (deferred ones once their retry time comes).
DUE_STATUSES_SQL = "status IN ('pending', 'deferred')"


class Delivery(Base):
    """One message to one address: the per-recipient ledger."""

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_claim", "status", "next_attempt_at"),
        Index("ix_deliveries_subscription", "subscription_id", "status"),
        Index("ix_deliveries_edition", "edition_id", "status"),
        # The claim's order, over the outstanding rows only: a claim reads its batch off the front
        # of this index, and a row leaves it once sent. The claim names the statuses as literals
        # (DUE_STATUSES_SQL) so that both planners can prove the index covers it.
        Index(
            "ix_deliveries_due",
            "priority",
            "next_attempt_at",
            "id",
            sqlite_where=text(DUE_STATUSES_SQL),
            postgresql_where=text(DUE_STATUSES_SQL),
        ),
        # /metrics and status count deliveries by kind and status, and by recent send or reply
        Index("ix_deliveries_kind_status", "kind", "status"),
        Index("ix_deliveries_sent_at", "sent_at"),
        Index("ix_deliveries_updated_at", "updated_at"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    edition_id: Mapped[int | None] = mapped_column(ForeignKey("editions.id", ondelete="SET NULL"))
    subscription_id: Mapped[int | None] = mapped_column(ForeignKey("subscriptions.id", ondelete="SET NULL"))
    address: Mapped[str] = mapped_column(String(254))
    # Exactly-once guard: one digest per reader per watermark; NULL for test and transactional mail.
    dedupe_key: Mapped[str | None] = mapped_column(String(100), unique=True)
    from_seq: Mapped[int | None] = mapped_column(BigInteger)
    to_seq: Mapped[int | None] = mapped_column(BigInteger)
    priority: Mapped[int] = mapped_column(Integer, default=0)  # lower goes first
    status: Mapped[str] = mapped_column(String(20), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    message_id: Mapped[str] = mapped_column(String(255), unique=True)
    subject: Mapped[str | None] = mapped_column(Text)  # transactional mail carries its own
    body_html: Mapped[str | None] = mapped_column(Text)
    body_text: Mapped[str | None] = mapped_column(Text)
    smtp_code: Mapped[int | None] = mapped_column(Integer)
    smtp_reply: Mapped[str | None] = mapped_column(Text)
    relay: Mapped[str | None] = mapped_column(String(255))
    sent_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Event(Base):
    """Append-only audit trail per reader."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_subscriber", "subscriber_id", "created_at"),
        Index("ix_events_delivery", "delivery_id"),
        # signup's "one confirmation a day per signup" looks up a subscription's events
        Index("ix_events_subscription", "subscription_id", "kind", "created_at"),
        # complaint rates and bounce reports select events by kind; a scan would read every raw bounce
        Index("ix_events_kind", "kind", "created_at"),
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    subscriber_id: Mapped[int | None] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    subscription_id: Mapped[int | None] = mapped_column(ForeignKey("subscriptions.id", ondelete="SET NULL"))
    delivery_id: Mapped[int | None] = mapped_column(ForeignKey("deliveries.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(30))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime]


# Events about mail that came back (bounces at SMTP time or by DSN, policy rejections, delays,
# complaints, automatic mail nobody could read): what bounce reports and metrics count, and whose
# raw message retention trims.
INBOUND_EVENTS = ("bounced", "policy_rejection", "delivery_delayed", "complained", "bounce_unparsed")


class InboundMessage(Base):
    """One message the bounce inbox has dealt with: a second copy (a rerun over a mailbox, an MTA
    sending again) is recognised by its key before anything is parsed."""

    __tablename__ = "inbound_messages"
    # sha256 of the Message-ID (or the bytes) and the address it came to: inbound.inbound_key
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(30))
    created_at: Mapped[datetime]


class MailboxProgress(Base):
    """How far `digest bounces process` has read an mbox file, so a rerun reads only new mail."""

    __tablename__ = "mailbox_progress"
    path: Mapped[str] = mapped_column(String(1000), primary_key=True)
    offset: Mapped[int] = mapped_column(BigInteger)
    # sha256 of the file's first bytes: a rotated or rewritten file is read from its start again
    fingerprint: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime]


class Setting(Base):
    """Values the service generates or learns and shares between processes (a signing key,
    counters, the titles feeds give themselves)."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class SignupLimit(Base):
    """One rate-limit window of one client: every web process counts in the same row, so the
    signup limits hold across processes and restarts."""

    __tablename__ = "signup_limits"
    # HMAC-SHA256 (keyed with the service's secret) of the window length and the client address:
    # the table never holds an address, and an IPv4 address cannot be found by trying them all
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(index=True)
    hits: Mapped[int] = mapped_column(Integer)
