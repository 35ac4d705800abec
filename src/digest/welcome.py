"""The welcome mail a reader gets right after confirming.

It says what they signed up for, when their first digest is due in their own time zone, how to
change that, and, for a public list that has sent before, links the latest edition's web copy.
It is transactional mail like the confirmation (ahead of digests, no List-Unsubscribe), queued in
the transaction that confirms, so a confirmation is never recorded without its welcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from digest import bootstrap, messages, readers, rendering, schedule, views
from digest.models import MailingList, Subscriber, Subscription
from digest.store import compose as compose_store
from digest.store import reports as reports_store


async def queue_welcome(
    app: bootstrap.App,
    s: AsyncSession,
    reader: Subscriber,
    confirmed: Sequence[tuple[Subscription, MailingList]],
    now: datetime,
    *,
    sender: str,
) -> int | None:
    """Queue one welcome for the lists just confirmed; None when the reader may not be mailed."""
    if not confirmed or reader.status != "active":
        return None
    first_sub = confirmed[0][0]
    zone = first_sub.timezone or confirmed[0][1].timezone
    lists = []
    for sub, lst in confirmed:
        expr, tz = readers.reader_schedule(sub, lst)
        latest = await reports_store.latest_sent_edition(s, lst.id) if lst.public else None
        lists.append(
            views.WelcomeList(
                name=lst.name,
                description=lst.description,
                schedule=schedule.describe_schedule(expr, tz),
                first_at=sub.next_due_at,
                latest_url=f"{app.base_url}/archive/{lst.slug}/{latest.id}" if latest else None,
            )
        )
    rendered = rendering.render_welcome(
        app.templates,
        views.WelcomeView(
            reader_name=reader.name,
            zone=zone,
            lists=lists,
            base_url=app.base_url,
            postal_address=app.cfg.sender.postal_address,
            sender_name=sender,
        ),
    )
    return await compose_store.insert_transactional(
        s,
        # Its token fills the preferences link: the page shows every list of the reader.
        subscription_id=first_sub.id,
        address=reader.email,
        message_id=messages.new_message_id(app.cfg.sender.domain),
        subject=rendered.subject,
        html=rendered.html,
        text=rendered.text,
        now=now,
    )
