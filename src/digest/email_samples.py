"""Sample editions and confirmations: what template checks render when an operator changes a template."""

from __future__ import annotations

from datetime import UTC, date, datetime

from digest.views import ArticleView, Branding, ConfirmView, EditionView

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
            )
            for n in range(count)
        ],
        more_count=3 if full else 0,
        archive_url=f"{_SAMPLE_BASE}/archive/sample",
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
