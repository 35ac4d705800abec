"""digest.reports after a real send: what the admin page, `digest status` and /metrics are shown."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import CliProject, SmtpSink
from digest import bootstrap, reports
from digest.config import load_config


@pytest.fixture
def project(tmp_path: Path, smtp_sink: SmtpSink) -> CliProject:
    """Ann and Cleo got the demo digest; Bob's mailbox does not exist; Dan has not confirmed (he was
    mailed a confirmation, as every reader an operator adds unconfirmed is)."""
    project = CliProject(tmp_path, smtp_sink.port)
    project.run("init")
    for name in ("ann", "bob", "cleo"):
        project.run("subscribers", "add", f"{name}@example.com", "--list", "demo", "--confirmed")
    project.run("subscribers", "add", "dan@example.com", "--list", "demo")
    smtp_sink.reply_for = lambda address, n: "550 5.1.1 no such user" if address.startswith("bob") else None
    project.run("send", "demo")
    return project


@pytest.fixture
async def sent(project: CliProject) -> AsyncIterator[bootstrap.App]:
    app = await bootstrap.open_app(load_config(project.config))
    try:
        yield app
    finally:
        await app.db.close()


async def test_the_admin_overview_shows_lists_editions_sends_per_hour_and_bounces(
    sent: bootstrap.App,
) -> None:
    now = datetime.now(UTC)
    overview = await reports.admin_overview(sent, now)
    assert [(x.slug, x.readers.by_status) for x in overview.lists] == [
        ("demo", {"confirmed": 3, "pending": 1})
    ]
    assert [e.deliveries for e in overview.editions] == [{"sent": 2, "failed": 1}]
    hours = overview.sends_per_hour
    assert len(hours) == 24 and hours[-1].hour == now.replace(minute=0, second=0, microsecond=0)
    assert all(b.hour - a.hour == timedelta(hours=1) for a, b in itertools.pairwise(hours))
    assert sum(h.sent for h in hours) == 3  # two digests and Dan's confirmation
    assert [(e.kind, e.address) for e in overview.events] == [("bounced", "bob@example.com")]
    assert overview.queue.depth == 0 and overview.queue.sent_last_minute == 3


async def test_sends_older_than_the_chart_are_not_counted(sent: bootstrap.App) -> None:
    overview = await reports.admin_overview(sent, datetime.now(UTC) + timedelta(hours=30), hours=24)
    assert sum(h.sent for h in overview.sends_per_hour) == 0
    assert overview.queue.sent_last_minute == 0


async def test_status_and_metrics_count_the_same_ledger(sent: bootstrap.App) -> None:
    now = datetime.now(UTC)
    status = await reports.status(sent, now)
    metrics = await reports.metrics(sent, now)
    assert (
        status.deliveries
        == metrics.deliveries
        == {
            ("digest", "sent"): 2,
            ("digest", "failed"): 1,
            ("transactional", "sent"): 1,
        }
    )
    assert status.queue == metrics.queue
    assert metrics.subscriptions["demo"].confirmed_by_cadence == {"default": 3}
    assert [s.name for s in metrics.sources] == ["seeds"]


async def test_an_unknown_edition_or_reader_has_no_report(sent: bootstrap.App) -> None:
    assert await reports.edition_report(sent, 999, recipients=False) is None
    assert await reports.reader_report(sent, "nobody@example.com") is None
