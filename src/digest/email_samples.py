"""Sample editions, confirmations and welcomes: what template checks render when an operator
changes a template."""

from __future__ import annotations

from datetime import UTC, date, datetime

from digest.views import ArticleView, Branding, ConfirmView, EditionView, WelcomeList, WelcomeView

_SAMPLE_BASE = "https://news.example.com"


def sample_edition(count: int, *, full: bool = True) -> EditionView:
    """A made-up edition for checking templates at start and measuring premailer's growth."""
    return EditionView(
        list_slug="sample",
        list_name="Sample Weekly",
        list_description="A sample list used to check the templates" if full else "",
        language="en",
        direction="ltr",
        edition_date=date(2026, 1, 5),
        articles=[
            ArticleView(
                title=f"Sample headline number {n} about the harbour",
                url=f"{_SAMPLE_BASE}/articles/{n}",
                source="Sample Gazette",
                published_at=datetime(2026, 1, 5, 6, 0, tzinfo=UTC),
                summary="A sample summary of a story, one sentence long." if full or n % 2 else "",
                image_url=f"{_SAMPLE_BASE}/static/sample-{n}.jpg" if full or n % 2 else None,
                author="Sam Ple" if full else None,
                direction="rtl" if full and n == 1 else "",
            )
            for n in range(count)
        ],
        more_count=3 if full else 0,
        archive_url=f"{_SAMPLE_BASE}/archive/sample",
        more_url=f"{_SAMPLE_BASE}/archive/sample/1/stories" if full else "",
        composed_at=datetime(2026, 1, 5, 7, 0, tzinfo=UTC) if full else None,
        web_url=f"{_SAMPLE_BASE}/editions/1",
        base_url=_SAMPLE_BASE,
        postal_address="Sample Street 1\n1000 Sample Town",
        contact=f"{_SAMPLE_BASE}/contact" if full else "editor@news.example.com",
        branding=Branding(
            logo_url=f"{_SAMPLE_BASE}/static/logo.png" if full else None,
            footer_text="Sample footer text." if full else "",
        ),
    )


def sample_editions() -> list[EditionView]:
    return [sample_edition(2), sample_edition(2, full=False), sample_edition(0, full=False)]


def sample_confirmation() -> ConfirmView:
    return ConfirmView(
        list_names=["Sample Weekly", "Sample Daily", "Sample Sport"],
        confirm_url=f"{_SAMPLE_BASE}/confirm/sample",
        base_url=_SAMPLE_BASE,
        postal_address="Sample Street 1\n1000 Sample Town",
        sender_name="Sample News",
    )


def sample_welcomes() -> list[WelcomeView]:
    """A named reader of two lists, one of which has sent before, and a reader without a name."""
    first = datetime(2026, 1, 6, 7, 0, tzinfo=UTC)
    weekly = WelcomeList(
        "Sample Weekly",
        "A sample list",
        "every Monday at 07:00 (UTC)",
        first,
        f"{_SAMPLE_BASE}/archive/sample/1",
    )
    daily = WelcomeList("Sample Daily", "", "every day at 07:00 (UTC)", None, None)
    return [
        WelcomeView(
            "Sam Ple", "Europe/Berlin", [weekly, daily], _SAMPLE_BASE, "Sample Street 1", "Sample News"
        ),
        WelcomeView("", "UTC", [daily], _SAMPLE_BASE, "Sample Street 1\n1000 Sample Town", "Sample News"),
    ]
