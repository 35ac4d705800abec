"""The operator commands of issue 8 through Typer's runner: lists, sources, editions, erasure, JSON."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import CliProject, SmtpSink, one_line_error

Project = CliProject


@pytest.fixture
def project(tmp_path: Path, smtp_sink: SmtpSink) -> Project:
    p = Project(tmp_path, smtp_sink.port)
    p.run("init")
    for name in ("ann", "bob", "cleo"):
        p.run("subscribers", "add", f"{name}@example.com", "--list", "demo", "--confirmed", "--name", name)
    return p


def test_an_edition_answers_who_got_it_and_who_bounced(project: Project, smtp_sink: SmtpSink) -> None:
    smtp_sink.reply_for = lambda address, n: "550 5.1.1 no such user" if address.startswith("bob") else None
    project.run("send", "demo")
    editions = project.json("editions", "list")
    assert isinstance(editions, list) and editions
    shown = project.json("editions", "show", str(editions[0]["id"]), "--recipients")
    assert isinstance(shown, dict)
    assert shown["deliveries"] == {"sent": 2, "failed": 1}
    assert shown["errors"][0]["code"] == 550 and "5.1.1" in shown["errors"][0]["reply"]
    who = {r["address"]: r["status"] for r in shown["recipients"]}
    assert who == {"ann@example.com": "sent", "bob@example.com": "failed", "cleo@example.com": "sent"}
    assert shown["articles"]
    text = project.run("editions", "show", str(editions[0]["id"]))
    assert "errors by reply" in text and "5.1.1" in text


def test_status_reports_counts_rate_and_queue_as_json(project: Project) -> None:
    project.run("send", "demo")
    status = project.json("status")
    assert isinstance(status, dict)
    assert status["sent_last_minute"] == 3 and status["queue_depth"] == 0
    assert status["editions"][0]["deliveries"] == {"sent": 3}
    assert "3 in the last minute" in project.run("status")


def test_send_prints_plain_progress_lines_when_not_on_a_terminal(project: Project) -> None:
    output = project.run("send", "demo")
    assert "progress: sent" in output and "delivered: 3 sent" in output


def test_lists_show_readers_by_status_and_cadence_and_the_next_digest(project: Project) -> None:
    project.run("subscribers", "add", "dan@example.com", "--list", "demo")
    shown = project.json("lists", "show", "demo")
    assert isinstance(shown, dict)
    assert shown["readers"] == {"confirmed": 3, "pending": 1}
    assert shown["confirmed_by_cadence"] == {"default": 3}
    assert shown["next_due_at"] is not None and shown["last_edition"] is None
    project.run("send", "demo")
    listed = project.json("lists", "list")
    assert isinstance(listed, list) and listed[0]["last_edition"]["deliveries"] == {"sent": 3}
    assert "demo" in project.run("lists", "list")


def test_a_lists_last_edition_counts_its_own_deliveries_not_a_later_test_send(project: Project) -> None:
    project.run("send", "demo")
    project.run("send-test", "demo", "--to", "zed@example.com")
    shown = project.json("lists", "show", "demo")
    assert isinstance(shown, dict)
    assert shown["last_edition"]["deliveries"] == {"sent": 3}
    assert "sent 3" in project.run("lists", "show", "demo")


def test_sources_check_shows_what_would_be_ingested_and_stores_nothing(project: Project) -> None:
    before = project.json("sources", "list")
    checked = project.json("sources", "check", "seeds")
    assert isinstance(checked, dict) and checked["articles"]
    assert project.json("sources", "list") == before
    assert "nothing was stored" in project.run("sources", "check", "seeds")


def test_a_broken_source_is_reported_by_check_as_one_line(project: Project) -> None:
    project.config.write_text(
        project.config.read_text().replace(str(project.dir / "seeds"), "/nonexistent/x")
    )
    line = one_line_error(project.run("sources", "check", "seeds", code=1))
    assert "seeds" in line


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("sources", "check", "nosource"), "nosource"),
        (("lists", "show", "nolist"), "nolist"),
        (("editions", "show", "999"), "999"),
        (("editions", "list", "--list", "nolist"), "nolist"),
        (("subscribers", "remove", "nobody@example.com", "--yes"), "nobody@example.com"),
        (("subscribers", "remove", "ann@example.com"), "--yes"),
        (("subscribers", "remove", "not-an-address", "--yes"), "not-an-address"),
    ],
)
def test_unknown_names_are_one_line_usage_errors(
    project: Project, args: tuple[str, ...], needle: str
) -> None:
    assert needle in one_line_error(project.run(*args, code=2))


def test_erasure_keeps_only_a_hash_and_refuses_operator_re_adds(project: Project) -> None:
    project.run("send", "demo")
    said = project.run("subscribers", "remove", "Ann@Example.com", "--yes")
    assert "erased" in said and "erased-" in said
    exported = project.run("subscribers", "export")
    assert "ann@example.com" not in exported.lower() and "ann," not in exported
    line = one_line_error(project.run("subscribers", "show", "ann@example.com", code=2))
    assert "no reader" in line
    line = one_line_error(project.run("subscribers", "add", "ann@example.com", "--list", "demo", code=2))
    assert "erased" in line
    assert "already erased" in one_line_error(
        project.run("subscribers", "remove", "ann@example.com", "--yes", code=2)
    )
    import sqlite3

    with sqlite3.connect(project.dir / "digest.db") as conn:
        for table, column in (("subscribers", "email"), ("deliveries", "address"), ("events", "detail")):
            rows = conn.execute(f"SELECT {column} FROM {table}").fetchall()
            assert not any("ann" in str(r[0]).lower() for r in rows), (table, rows)
        status, name = conn.execute(
            "SELECT status, name FROM subscribers WHERE email LIKE 'erased-%'"
        ).fetchone()
        assert (status, name) == ("suppressed", "")


def test_prune_with_nothing_old_deletes_nothing(project: Project) -> None:
    project.run("send", "demo")
    report = project.json("prune")
    assert isinstance(report, dict) and report["deliveries_deleted"] == 0 and report["events_deleted"] == 0
