"""What operators see without reading the code: Prometheus metrics and structured logs.

Metrics are read from the database at scrape time (through `digest.reports`), so any `digest web`
process answers for every worker and scheduler (nothing lives in one process's memory). All are
gauges over the current rows or a recent window, because pruning makes all-time counters impossible:

    digest_readers{status}                     readers by global status
    digest_subscriptions{list,status}          subscriptions by list and status
    digest_deliveries{kind,status}             the ledger by kind and status
    digest_sent_last_minute                    messages a relay accepted in the last 60 s
    digest_send_rate_per_second                the same, per second
    digest_smtp_replies_last_hour{relay,class} replies by class (2xx, 4xx, 5xx, none) and relay
    digest_queue_depth                         pending, sending and deferred deliveries
    digest_queue_oldest_age_seconds            how long the oldest due delivery has waited
    digest_source_failing{source}              1 when the last fetch failed
    digest_source_last_success_age_seconds{source}
    digest_bounces_last_day{class}             bounces, delays and complaints by class
    digest_topic_readers{list,topic}           confirmed readers who get a topic (all-topic readers too)

Logs are JSON lines when stderr is not a terminal (journald, Docker, a log shipper), with the
list, edition and delivery ids lifted out of the message where it names them.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from digest import bootstrap, reports

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def reply_class(code: int | None) -> str:
    return f"{code // 100}xx" if code else "none"


def bounce_class(kind: str, klass: str | None) -> str:
    return {"complained": "complaint", "policy_rejection": "policy", "delivery_delayed": "delayed"}.get(
        kind, klass or "unknown"
    )


def families(snap: reports.Metrics) -> Iterator[Metric]:
    g = GaugeMetricFamily("digest_readers", "Readers by global status", labels=["status"])
    for status in ("active", "bounced", "complained", "suppressed"):
        g.add_metric([status], snap.readers.get(status, 0))
    yield g
    g = GaugeMetricFamily(
        "digest_subscriptions", "Subscriptions by list and status", labels=["list", "status"]
    )
    for slug, readers in sorted(snap.subscriptions.items()):
        for status, n in sorted(readers.by_status.items()):
            g.add_metric([slug, status], n)
    yield g
    g = GaugeMetricFamily(
        "digest_topic_readers", "Confirmed readers who get a topic", labels=["list", "topic"]
    )
    for slug, topic, n in snap.topic_readers:
        g.add_metric([slug, topic], n)
    yield g
    g = GaugeMetricFamily("digest_deliveries", "Deliveries by kind and status", labels=["kind", "status"])
    for (kind, status), n in sorted(snap.deliveries.items()):
        g.add_metric([kind, status], n)
    yield g
    yield CounterMetricFamily(
        "digest_lease_renewal_failures",
        "Times a worker could not renew its delivery leases (the database was away)",
        value=snap.lease_renewal_failures,
    )
    yield GaugeMetricFamily(
        "digest_sent_last_minute",
        "Messages accepted by a relay in the last minute",
        value=snap.queue.sent_last_minute,
    )
    yield GaugeMetricFamily(
        "digest_send_rate_per_second",
        "Messages accepted per second (last minute)",
        value=snap.queue.sent_last_minute / 60,
    )
    g = GaugeMetricFamily(
        "digest_smtp_replies_last_hour",
        "SMTP replies in the last hour by relay and class",
        labels=["relay", "class"],
    )
    per: dict[tuple[str, str], int] = {}
    for relay, code, n in snap.replies:
        per[(relay, reply_class(code))] = per.get((relay, reply_class(code)), 0) + n
    for (relay, klass), n in sorted(per.items()):
        g.add_metric([relay, klass], n)
    yield g
    yield GaugeMetricFamily(
        "digest_queue_depth", "Pending, sending and deferred deliveries", value=snap.queue.depth
    )
    yield GaugeMetricFamily(
        "digest_queue_oldest_age_seconds",
        "How long the oldest due delivery has waited",
        value=snap.queue.oldest_wait_seconds,
    )
    g = GaugeMetricFamily("digest_source_failing", "1 when the source's last fetch failed", labels=["source"])
    age = GaugeMetricFamily(
        "digest_source_last_success_age_seconds",
        "Seconds since the source was last fetched",
        labels=["source"],
    )
    for src in snap.sources:
        g.add_metric([src.name], 0 if src.last_error is None else 1)
        if src.last_success_at is not None:
            age.add_metric([src.name], max((snap.now - src.last_success_at).total_seconds(), 0.0))
    yield g
    yield age
    g = GaugeMetricFamily(
        "digest_bounces_last_day", "Bounces, delays and complaints in the last day", labels=["class"]
    )
    per_class: dict[str, int] = {}
    for kind, bclass, n in snap.bounces:
        label = bounce_class(kind, bclass)
        per_class[label] = per_class.get(label, 0) + n
    for label, n in sorted(per_class.items()):
        g.add_metric([label], n)
    yield g


class _Fixed(Collector):
    def __init__(self, metrics: Iterable[Metric]) -> None:
        self.metrics = list(metrics)

    def collect(self) -> Iterable[Metric]:
        return self.metrics


async def render_metrics(app: bootstrap.App, now: datetime | None = None) -> bytes:
    """The Prometheus text exposition of the database's current state."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families(await reports.metrics(app, now or datetime.now(UTC)))))
    return generate_latest(registry)


# ---------------------------------------------------------------- structured logs

_IDS = {
    "edition_id": re.compile(r"\bedition (\d+)\b"),
    "delivery_id": re.compile(r"\bdelivery (\d+)\b"),
    "list": re.compile(r"\blist ([a-z0-9][a-z0-9-]*)\b"),
    "source": re.compile(r"\bsource ([\w.-]+)"),
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, ids, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        for key, pattern in _IDS.items():
            given = getattr(record, key, None)
            if given is not None:
                out[key] = given
            elif m := pattern.search(message):
                out[key] = int(m.group(1)) if m.group(1).isdigit() else m.group(1)
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(json_lines: bool | None = None, level: int = logging.INFO) -> None:
    """JSON lines when stderr is not a terminal (or when asked), readable lines on a terminal."""
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter()
        if json_lines
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, logging.StreamHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # aiosmtpd logs every SMTP command of the capture server at INFO; alembic, APScheduler and
    # uvicorn narrate their start-up, httpx every request. Their warnings still come through.
    chatty_libraries = ("mail.log", "alembic", "apscheduler", "uvicorn", "httpx", "httpcore", "aiosqlite")
    for chatty in chatty_libraries:
        logging.getLogger(chatty).setLevel(logging.WARNING)
