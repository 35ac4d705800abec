"""Topics: readers get only the subjects they chose, grouped, with real SQLite and PostgreSQL, a real
SMTP server and the CLI; and the matching rules as a pure function beside them."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from conftest import CliProject, SmtpSink, write_config
from digest import bootstrap, compose, delivery, readers, sources, store, topic_rules, topics
from digest.config import ListConfig, load_config
from digest.errors import UsageError
from digest.models import Edition, Event, Subscription
from digest.store import migrate

NOW = datetime(2027, 5, 4, 9, 0, tzinfo=UTC)

TOPICS = (
    '[[lists.topics]]\nslug = "transport"\nname = "Transport"\ndescription = "Ferries, buses"\n'
    'keywords = ["ferry", "bus", "sailings"]\n\n'
    '[[lists.topics]]\nslug = "local"\nname = "Local life"\nkeywords = ["market hall", "library"]\n\n'
    '[[lists.topics]]\nslug = "sport"\nname = "Sport"\nkeywords = ["rugby", "regatta"]\n'
    'categories = ["Sport"]\n\n'
    '[[lists.topics]]\nslug = "politics"\nname = "Politics"\nkeywords = ["budget", "rates rise"]\n'
)
LIST = (
    '[[lists]]\nslug = "demo"\nname = "Harbour Digest"\nsources = ["seeds"]\n'
    'schedule = "0 7 * * *"\ntimezone = "UTC"\nmax_articles = 20\nmax_age = "30d"\n\n'
)

STORIES = {
    "ferry": ("Harbour ferry timetable extended into winter", "The ferry keeps its Tuesday sailings.", ""),
    "bus": ("Night bus route 12 to return in spring", "The night bus returns in March.", ""),
    "market": ("Victorian market hall reopens", "Forty stalls opened on Saturday.", ""),
    "rugby": ("Harbour club wins regional cup", "The club beat the visitors 21-17.", "Sport"),
    "budget": ("Council sets budget", "Councillors fund road repairs and the library.", ""),
}


def write_stories(
    seeds: Path,
    stories: dict[str, tuple[str, str, str]],
    when: datetime = NOW,
    site: str = "harbour.example.org",
) -> None:
    for slug, (title, text, category) in stories.items():
        tags = f"tags: [{category}]\n" if category else ""
        (seeds / f"{slug}.md").write_text(
            f"---\ntitle: {title}\ndate: {when:%Y-%m-%dT%H:%M:%SZ}\nurl: https://{site}/{slug}\n"
            f"{tags}---\n{text}\n"
        )


async def open_project(
    directory: Path, url: str, smtp_port: int | None, topics_toml: str = TOPICS
) -> bootstrap.App:
    path = write_config(directory, database_url=url, smtp_port=smtp_port, lists=LIST + topics_toml)
    for seed in (directory / "seeds").iterdir():
        seed.unlink()
    write_stories(directory / "seeds", STORIES)
    cfg = load_config(path, environ={})
    migrate.migrate(store.resolve_url(cfg.database.url, cfg.base_dir))
    return await bootstrap.open_app(cfg)


@pytest.fixture
async def project(tmp_path: Path, database_url: str, smtp_sink: SmtpSink) -> AsyncIterator[bootstrap.App]:
    app = await open_project(tmp_path, database_url, smtp_sink.port)
    try:
        await sources.ingest_sources(app, NOW)
        yield app
    finally:
        await app.db.close()


async def add_reader(app: bootstrap.App, address: str, choice: str | None) -> int:
    lst = await bootstrap.get_list(app, "demo")
    lst_cfg = topics.list_config(app, "demo")
    assert lst_cfg is not None
    prefs = readers.ReaderPrefs(topics=topics.parse_choice(lst_cfg, choice))
    async with app.db.write() as s:
        added = await readers.add_subscription(s, lst, address, prefs, confirmed=True, now=NOW)
    return added.subscription_id


def text_of(sink: SmtpSink, address: str) -> list[str]:
    out = []
    for m in sink.to(address):
        msg = email.message_from_bytes(m.data, policy=email.policy.default)
        part = msg.get_body(("plain",))
        assert part is not None
        out.append(part.get_content())
    return out


async def send(app: bootstrap.App, at: datetime = NOW) -> compose.ComposeReport:
    lst = await bootstrap.get_list(app, "demo")
    report = await compose.compose(app, lst, at, manual=True)
    await delivery.deliver_due(app, lambda: at)
    return report


# ---------------------------------------------------------------- the rules, pure


def rule(slug: str, **kw: list[str]) -> topic_rules.TopicRule:
    return topic_rules.compile_rule(slug, **kw)


def test_keywords_match_whole_words_ignoring_case_and_accents() -> None:
    food = [rule("food", keywords=["café", "bus"])]
    assert topic_rules.match(food, [], [], "New CAFE opens", "") == ["food"]
    assert topic_rules.match(food, [], [], "Un café à Paris", "") == ["food"]
    assert topic_rules.match(food, [], [], "Business as usual", "") == []
    assert topic_rules.match(food, [], [], "Omnibus bill passes", "") == []
    assert topic_rules.match(food, [], [], "Two buses collide", "") == ["food"]


def test_a_keyword_with_a_space_is_a_phrase_in_order_with_any_punctuation_between() -> None:
    local = [rule("local", keywords=["market hall"])]
    assert topic_rules.match(local, [], [], "The Market-Hall reopens", "") == ["local"]
    assert topic_rules.match(local, [], [], "Hall of the market", "") == []


def test_the_title_decides_when_it_names_a_topic_and_the_summary_only_otherwise() -> None:
    rules = [rule("local", keywords=["library"]), rule("politics", keywords=["budget"])]
    assert topic_rules.match(rules, [], [], "Council sets budget", "Money for the library.") == ["politics"]
    assert topic_rules.match(rules, [], [], "Council meets", "Money for the library.") == ["local"]


def test_sources_and_feed_categories_match_whatever_the_words() -> None:
    rules = [rule("sport", categories=["Sport"]), rule("wire", sources=["wire"])]
    assert topic_rules.match(rules, ["wire"], ["SPORT"], "Anything", "") == ["sport", "wire"]


def test_the_rest_topic_takes_only_articles_that_match_no_other() -> None:
    rules = [rule("sport", keywords=["rugby"]), topic_rules.compile_rule("other", rest=True)]
    assert topic_rules.match(rules, [], [], "Rugby final", "") == ["sport"]
    assert topic_rules.match(rules, [], [], "Weather turns", "") == ["other"]


def test_a_list_refuses_a_topic_declared_twice_or_naming_a_source_it_does_not_have() -> None:
    base = {"slug": "demo", "name": "Demo", "sources": ["seeds"]}
    with pytest.raises(ValidationError, match="declared twice"):
        ListConfig.model_validate({**base, "topics": [{"slug": "a", "name": "A", "keywords": ["x"]}] * 2})
    with pytest.raises(ValidationError, match="does not have"):
        ListConfig.model_validate({**base, "topics": [{"slug": "a", "name": "A", "sources": ["wire"]}]})
    with pytest.raises(ValidationError, match="needs sources, categories or keywords"):
        ListConfig.model_validate({**base, "topics": [{"slug": "a", "name": "A"}]})


def test_an_unknown_topic_in_a_choice_names_the_topics_the_list_offers() -> None:
    lst = ListConfig.model_validate(
        {
            "slug": "demo",
            "name": "Demo",
            "sources": ["seeds"],
            "topics": [{"slug": "a", "name": "A", "keywords": ["x"]}],
        }
    )
    with pytest.raises(UsageError, match="no topic 'b' \\(its topics: a\\)"):
        topics.parse_choice(lst, "b")
    assert topics.parse_choice(lst, "a") is None  # every topic
    assert topics.parse_choice(lst, "") is None


# ---------------------------------------------------------------- with a database and a mail server


async def test_a_reader_with_two_topics_gets_only_those_grouped_under_their_headings(
    project: bootstrap.App, smtp_sink: SmtpSink
) -> None:
    await add_reader(project, "ann@example.com", "transport,local")
    await add_reader(project, "bob@example.com", None)
    await send(project)
    [ann] = text_of(smtp_sink, "ann@example.com")
    [bob] = text_of(smtp_sink, "bob@example.com")
    for slug in ("ferry", "bus", "market"):
        assert STORIES[slug][0] in ann
    for slug in ("rugby", "budget"):  # the budget story mentions the library only in its text
        assert STORIES[slug][0] not in ann
    assert ann.index("== Transport ==") < ann.index(STORIES["ferry"][0]) < ann.index("== Local life ==")
    assert ann.index("== Local life ==") < ann.index(STORIES["market"][0])
    assert "== Sport ==" not in ann
    for title, _, _ in STORIES.values():
        assert bob.count(title) == 1


async def test_a_reader_with_one_topic_gets_no_headings(project: bootstrap.App, smtp_sink: SmtpSink) -> None:
    await add_reader(project, "cy@example.com", "sport")
    await send(project)
    [cy] = text_of(smtp_sink, "cy@example.com")
    assert STORIES["rugby"][0] in cy  # matched by its feed category
    assert "== " not in cy


async def test_readers_with_the_same_choice_share_one_edition_and_choices_drafting_the_same_share_it_too(
    project: bootstrap.App, smtp_sink: SmtpSink
) -> None:
    await add_reader(project, "a1@example.com", "transport,local")
    await add_reader(project, "a2@example.com", "local,transport")
    await add_reader(project, "b1@example.com", "politics")
    report = await send(project)
    assert report.deliveries == 3
    assert report.renders == 2
    async with project.db.read() as s:
        editions = (await s.execute(select(Edition).order_by(Edition.id))).scalars().all()
    assert [e.topics for e in editions] == ["local,transport", "politics"]


async def test_a_reader_whose_topics_had_nothing_new_gets_no_digest_and_their_watermark_moves(
    project: bootstrap.App, smtp_sink: SmtpSink
) -> None:
    sub_id = await add_reader(project, "ann@example.com", "politics")
    await send(project)
    assert len(text_of(smtp_sink, "ann@example.com")) == 1
    write_stories(project.cfg.base_dir / "seeds", {"tram": ("Tram line opens", "A ferry link too.", "")}, NOW)
    await sources.ingest_sources(project, NOW + timedelta(hours=1))
    async with project.db.read() as s:
        before = await s.get(Subscription, sub_id)
        assert before is not None
        due_at, mark = NOW + timedelta(days=1), before.watermark
    lst = await bootstrap.get_list(project, "demo")
    report = await compose.compose(project, lst, due_at, manual=False)
    assert report.deliveries == 0 and report.skipped == 1
    async with project.db.read() as s:
        after = await s.get(Subscription, sub_id)
        assert after is not None
        assert after.watermark > mark
        skipped = (await s.execute(select(Event).where(Event.kind == "skipped"))).scalars().all()
    assert len(skipped) == 1
    assert len(text_of(smtp_sink, "ann@example.com")) == 1


async def test_changing_topics_changes_the_next_digest_and_is_recorded(
    project: bootstrap.App, smtp_sink: SmtpSink
) -> None:
    sub_id = await add_reader(project, "ann@example.com", "sport")
    lst_cfg = topics.list_config(project, "demo")
    assert lst_cfg is not None
    await topics.choose(project, sub_id, lst_cfg, ["politics"], NOW, "preferences")
    await send(project)
    [ann] = text_of(smtp_sink, "ann@example.com")
    assert STORIES["budget"][0] in ann and STORIES["rugby"][0] not in ann
    async with project.db.read() as s:
        chosen = (await s.execute(select(Event).where(Event.kind == "topics_chosen"))).scalars().all()
    assert [e.detail["topics"] for e in chosen] == [["politics"]]


async def test_a_removed_topic_leaves_readers_choices_with_an_event_and_a_renamed_one_keeps_them(
    tmp_path: Path, database_url: str, smtp_sink: SmtpSink
) -> None:
    app = await open_project(tmp_path, database_url, smtp_sink.port)
    try:
        await add_reader(app, "ann@example.com", "sport,politics")
        await add_reader(app, "bob@example.com", "sport")
    finally:
        await app.db.close()
    renamed = TOPICS.replace('name = "Politics"', 'name = "Council"')
    without_sport = "\n\n".join(t for t in renamed.split("\n\n") if 'slug = "sport"' not in t)
    app = await open_project(tmp_path, database_url, smtp_sink.port, without_sport)
    try:
        async with app.db.read() as s:
            subs = {sub.id: sub.topics for sub in (await s.execute(select(Subscription))).scalars().all()}
            removed = (await s.execute(select(Event).where(Event.kind == "topic_removed"))).scalars().all()
        assert sorted(subs.values(), key=str) == [None, "politics"]  # bob had only sport: every topic now
        assert len(removed) == 2
        lst = await bootstrap.get_list(app, "demo")
        from digest import reports

        report = await reports.list_report(app, lst)
        assert [(t.slug, t.name) for t in report.topics] == [
            ("transport", "Transport"),
            ("local", "Local life"),
            ("politics", "Council"),
        ]
    finally:
        await app.db.close()


async def test_rematch_shows_what_a_rule_change_would_do_and_applies_only_when_asked(
    tmp_path: Path, database_url: str, smtp_sink: SmtpSink
) -> None:
    app = await open_project(tmp_path, database_url, smtp_sink.port)
    try:
        await sources.ingest_sources(app, NOW)
    finally:
        await app.db.close()
    narrower = TOPICS.replace('["ferry", "bus", "sailings"]', '["ferry", "sailings"]')
    app = await open_project(tmp_path, database_url, smtp_sink.port, narrower)
    try:
        lst = await bootstrap.get_list(app, "demo")
        dry = await topics.rematch(app, lst, NOW, apply=False)
        assert dry.articles == len(STORIES) and not dry.applied
        assert [slug for _, slug in dry.removed] == ["transport"] and dry.added == []
        assert (await topics.rematch(app, lst, NOW, apply=False)).removed == dry.removed  # nothing stored
        applied = await topics.rematch(app, lst, NOW, apply=True)
        assert applied.removed == dry.removed
        assert (await topics.rematch(app, lst, NOW, apply=False)).removed == []
        await add_reader(app, "ann@example.com", "transport")
        await send(app)
        [ann] = text_of(smtp_sink, "ann@example.com")
        assert STORIES["ferry"][0] in ann and STORIES["bus"][0] not in ann
    finally:
        await app.db.close()


def test_the_cli_adds_a_reader_with_topics_and_lists_show_counts_readers_per_topic(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    project = CliProject(tmp_path, smtp_sink.port)
    text = project.config.read_text()
    project.config.write_text(text.replace('max_age = "3650d"\n', 'max_age = "3650d"\n\n' + TOPICS))
    project.run("init")
    project.run(
        "subscribers",
        "add",
        "ann@example.com",
        "--list",
        "demo",
        "--confirmed",
        "--topics",
        "transport,local",
    )
    project.run("subscribers", "add", "bob@example.com", "--list", "demo", "--confirmed")
    out = project.run(
        "subscribers", "add", "cy@example.com", "--list", "demo", "--confirmed", "--topics", "weather", code=2
    )
    assert "no topic 'weather'" in out
    info = project.json("lists", "show", "demo")
    assert isinstance(info, dict)
    counts = {t["slug"]: t["readers"] for t in info["topics"]}
    assert counts == {"transport": 2, "local": 2, "sport": 1, "politics": 1}


async def test_the_html_part_groups_stories_under_topic_headings(
    project: bootstrap.App, smtp_sink: SmtpSink
) -> None:
    await add_reader(project, "ann@example.com", "transport,local")
    await send(project)
    [msg] = [
        email.message_from_bytes(m.data, policy=email.policy.default) for m in smtp_sink.to("ann@example.com")
    ]
    html = msg.get_body(("html",))
    assert html is not None
    body = str(html.get_content())

    def card(slug: str) -> int:
        return body.index(f">{STORIES[slug][0]}</a>")

    assert body.index(">Transport<") < card("ferry") < body.index(">Local life<") < card("market")


async def test_n_more_counts_only_the_readers_topics_and_its_page_lists_exactly_those(
    tmp_path: Path, database_url: str, smtp_sink: SmtpSink
) -> None:
    app = await open_project(tmp_path, database_url, smtp_sink.port)
    try:
        extra = {f"bus{n}": (f"Bus route {n} changes", f"Route {n} runs later.", "") for n in range(4)}
        write_stories(app.cfg.base_dir / "seeds", extra, NOW - timedelta(hours=1))
        await sources.ingest_sources(app, NOW)
        async with app.db.write() as s:
            lst_row = await bootstrap.get_list(app, "demo")
            lst_row.max_articles = 2
            s.add(lst_row)
        await add_reader(app, "ann@example.com", "transport")
        await send(app)
        [text] = text_of(smtp_sink, "ann@example.com")
        # transport: the ferry, the night bus and four bus routes; two shown, four more.
        assert "And 4 more new stories" in text
        more = re.search(r"See all 6: (\S+)", text)
        assert more
        from httpx import ASGITransport, AsyncClient

        from digest.web import create_app

        asgi = create_app(app, purge_every=None)
        async with AsyncClient(transport=ASGITransport(app=asgi), base_url=app.base_url) as c:
            page = (await c.get(more.group(1).removeprefix(app.base_url))).text
        titles = [t for t, _, _ in [*STORIES.values(), *extra.values()] if t in page]
        assert sorted(titles) == sorted(
            [STORIES["ferry"][0], STORIES["bus"][0], *(t for t, _, _ in extra.values())]
        )
    finally:
        await app.db.close()


async def test_a_csv_import_takes_a_topics_column_and_refuses_a_topic_the_list_lacks(
    project: bootstrap.App,
) -> None:
    import io

    from digest import readers_io

    lst = await bootstrap.get_list(project, "demo")
    handle = io.StringIO(
        "email,topics\nann@example.com,transport local\nbob@example.com,\ncy@example.com,weather\n"
    )
    report = await readers_io.import_csv(project, lst, handle, confirmed=True, apply=True, now=NOW)
    assert report.added == 2
    assert [line for line, _ in report.bad] == [4] and "no topic 'weather'" in report.bad[0][1]
    rows = {r["email"]: r["topics"] for r in await readers_io.export_rows(project, lst.id)}
    assert rows == {"ann@example.com": "local,transport", "bob@example.com": ""}


async def test_preview_as_a_reader_and_metrics_show_their_topics(project: bootstrap.App) -> None:
    from digest import observability

    await add_reader(project, "ann@example.com", "politics")
    await add_reader(project, "bob@example.com", None)
    lst = await bootstrap.get_list(project, "demo")
    _, rendered = await compose.preview(project, lst, NOW, "ann@example.com")
    assert STORIES["budget"][0] in rendered.text and STORIES["ferry"][0] not in rendered.text
    metrics = (await observability.render_metrics(project, NOW)).decode()
    assert 'digest_topic_readers{list="demo",topic="politics"} 2.0' in metrics
    assert 'digest_topic_readers{list="demo",topic="sport"} 1.0' in metrics


async def test_one_story_from_three_sources_shows_once_with_also_reported_by(
    tmp_path: Path, database_url: str, smtp_sink: SmtpSink
) -> None:
    wire, gazette = tmp_path / "wire", tmp_path / "gazette"
    wire.mkdir()
    gazette.mkdir()
    extra = "".join(
        f'\n[[sources]]\nname = "{d.name}"\nkind = "directory"\npath = "{d}"\n' for d in (wire, gazette)
    )
    lists = LIST.replace('sources = ["seeds"]', 'sources = ["seeds", "wire", "gazette"]') + TOPICS
    path = write_config(
        tmp_path, database_url=database_url, smtp_port=smtp_sink.port, lists=lists, extra=extra
    )
    for seed in (tmp_path / "seeds").iterdir():
        seed.unlink()
    ferry = "The harbour ferry will keep its Tuesday and Thursday sailings through the winter after a council vote."
    write_stories(tmp_path / "seeds", {"ferry": ("Harbour ferry timetable extended into winter", ferry, "")})
    write_stories(wire, {"ferry": (
        "Ferry sailings to continue through winter, council decides",
        "Tuesday and Thursday harbour ferry sailings will continue through the winter, the council decided in a vote.",
        "",
    )}, site="wire.example.com")  # fmt: skip
    write_stories(gazette, {"bus": STORIES["bus"]})
    cfg = load_config(path, environ={})
    migrate.migrate(store.resolve_url(cfg.database.url, cfg.base_dir))
    app = await bootstrap.open_app(cfg)
    try:
        await sources.ingest_sources(app, NOW)
        await add_reader(app, "ann@example.com", None)
        await send(app)
        [text] = text_of(smtp_sink, "ann@example.com")
        shown = [t for t in ("Harbour ferry timetable", "Ferry sailings to continue") if t in text]
        assert len(shown) == 1
        assert "Also reported by:" in text and STORIES["bus"][0] in text
        [msg] = [
            email.message_from_bytes(m.data, policy=email.policy.default)
            for m in smtp_sink.to("ann@example.com")
        ]
        html = msg.get_body(("html",))
        assert html is not None and "Also reported by:" in str(html.get_content())
    finally:
        await app.db.close()
