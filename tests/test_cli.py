"""The CLI through Typer's runner: what an operator sees, including every kind of mistake."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import CliProject, SmtpSink, one_line_error
from digest.cli import app

runner = CliRunner()


Project = CliProject


@pytest.fixture
def project(tmp_path: Path, smtp_sink: SmtpSink) -> Project:
    p = Project(tmp_path, smtp_sink.port)
    p.run("init")
    return p


def test_commands_refuse_a_database_without_schema_and_name_the_fix(tmp_path: Path) -> None:
    p = Project(tmp_path, 2525)
    assert "digest init" in one_line_error(p.run("status", code=1))


def test_a_bad_config_value_is_one_line_with_exit_2(tmp_path: Path) -> None:
    p = Project(tmp_path, 2525)
    p.config.write_text(p.config.read_text().replace('timezone = "UTC"', 'timezone = "Nowhere/Land"'))
    line = one_line_error(p.run("status", code=2))
    assert "Nowhere/Land" in line and "timezone" in line


def test_init_twice_is_harmless_and_both_say_the_schema_is_up_to_date(project: Project) -> None:
    again = project.run("init")
    assert "1 new" not in again and "schema: up to date" in again
    assert "schema: up to date" in project.run("migrate")


@pytest.mark.parametrize(
    "args",
    [
        ("send", "nolist"),
        ("preview", "nolist"),
        ("send-test", "nolist", "--to", "a@example.com"),
        ("subscribers", "add", "a@example.com", "--list", "nolist"),
        ("subscribers", "list", "--list", "nolist"),
        ("status", "nolist"),
    ],
)
def test_an_unknown_list_is_a_one_line_usage_error(project: Project, args: tuple[str, ...]) -> None:
    line = one_line_error(project.run(*args, code=2))
    assert "nolist" in line and "demo" in line


@pytest.mark.parametrize(
    "address",
    [
        "not-an-email",
        "a@b@example.com",
        "evil@example.com, victim@example.net",
        "x\r\nBcc: y@example.com",
        "",
    ],
)
def test_a_malformed_address_is_refused_with_exit_2(project: Project, address: str) -> None:
    one_line_error(project.run("subscribers", "add", address, "--list", "demo", code=2))
    one_line_error(project.run("send-test", "demo", "--to", address, code=2))


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("tick", "--once", "--now", "yesterday"), "ISO"),
        (("subscribers", "add", "a@example.com", "--list", "demo", "--cadence", "hourly"), "cadence"),
        (("subscribers", "add", "a@example.com", "--list", "demo", "--cadence", "daily"), "--hour"),
        (
            ("subscribers", "add", "a@example.com", "--list", "demo", "--cadence", "daily", "--hour", "25"),
            "0-23",
        ),
        (("subscribers", "add", "a@example.com", "--list", "demo", "--weekday", "funday"), "weekday"),
        (
            (
                "subscribers",
                "add",
                "a@example.com",
                "--list",
                "demo",
                "--cadence",
                "daily",
                "--hour",
                "7",
                "--timezone",
                "Mars/Base",
            ),
            "time zone",
        ),
        (("subscribers", "import", "missing.csv", "--list", "demo"), "no such file"),
        (("subscribers", "show", "nobody@example.com"), "no reader"),
        (("ingest", "--source", "nope"), "no source"),
    ],
)
def test_bad_arguments_get_one_line_saying_what_is_wrong(
    project: Project, args: tuple[str, ...], words: str
) -> None:
    assert words in one_line_error(project.run(*args, code=2))


def test_send_delivers_once_and_status_reports_it(project: Project, smtp_sink: SmtpSink) -> None:
    project.run("subscribers", "add", "ann@example.com", "--list", "demo", "--confirmed")
    assert "1 sent" in project.run("send", "demo")
    assert "nothing was due" in project.run("send", "demo")
    assert len(smtp_sink.to("ann@example.com")) == 1
    assert "digest/sent: 1" in project.run("status")


def test_pending_reader_is_shown_with_consent_and_events(project: Project) -> None:
    project.run(
        "subscribers",
        "add",
        "ann@example.com",
        "--list",
        "demo",
        "--cadence",
        "daily",
        "--hour",
        "7",
        "--timezone",
        "Europe/Berlin",
    )
    shown = project.run("subscribers", "show", "ann@example.com")
    assert "pending" in shown and "subscribed" in shown and "Europe/Berlin" in shown


def test_confirmed_reader_shows_next_digest_in_utc_and_local_time(project: Project) -> None:
    project.run(
        "subscribers",
        "add",
        "ann@example.com",
        "--list",
        "demo",
        "--confirmed",
        "--cadence",
        "daily",
        "--hour",
        "7",
        "--timezone",
        "Asia/Kolkata",
    )
    shown = project.run("subscribers", "show", "ann@example.com")
    assert "01:30 UTC" in shown and "07:00 IST" in shown


def test_preview_writes_the_html_and_sends_nothing(
    project: Project, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    out = tmp_path / "preview.html"
    said = project.run("preview", "demo", "--out", str(out))
    assert "HTML written" in said
    assert "repatriation" in out.read_text()
    assert smtp_sink.messages == []


def test_send_test_reaches_any_address(project: Project, smtp_sink: SmtpSink) -> None:
    project.run("send-test", "demo", "--to", "tester@example.org")
    assert len(smtp_sink.to("tester@example.org")) == 1


def test_import_is_a_dry_run_until_apply_and_reports_bad_rows_by_line(project: Project) -> None:
    rows = ["email,name,timezone,cadence,send_hour"]
    rows += [f"reader{i}@example.com,Reader {i},,," for i in range(20)]
    rows[5] = "not-an-email,Broken,,,"
    rows[8] = '"evil@example.com, victim@example.net",Injector,,,'
    rows[12] = "tz@example.com,Zed,Mars/Base,daily,7"
    f = project.dir / "readers.csv"
    f.write_text("\n".join(rows) + "\n")
    dry = project.run("subscribers", "import", str(f), "--list", "demo", "--confirmed")
    assert "dry run" in dry and "17 new" in dry
    assert "reader1@example.com" not in project.run("subscribers", "list")
    applied = project.run("subscribers", "import", str(f), "--list", "demo", "--confirmed", "--apply")
    for line in ("line 6", "line 9", "line 13"):
        assert line in applied
    assert "17 new" in applied and "3 bad" in applied
    again = project.run("subscribers", "import", str(f), "--list", "demo", "--confirmed", "--apply")
    assert "0 new" in again and "17 unchanged" in again
    exported = list(csv.DictReader(io.StringIO(project.run("subscribers", "export", "--list", "demo"))))
    emails = {r["email"] for r in exported}
    assert len(emails) == 17 and "victim@example.net" not in " ".join(emails)
    assert all(r["status"] == "confirmed" for r in exported)


def test_import_without_an_email_column_is_refused(project: Project) -> None:
    f = project.dir / "bad.csv"
    f.write_text("name\nAnn\n")
    assert "email" in one_line_error(project.run("subscribers", "import", str(f), "--list", "demo", code=1))


def test_a_broken_source_is_reported_and_the_exit_code_says_so(tmp_path: Path) -> None:
    p = Project(tmp_path, 2525)
    p.config.write_text(
        p.config.read_text().replace(f'path = "{tmp_path}/seeds"', f'path = "{tmp_path}/gone"')
    )
    p.run("migrate")
    said = p.run("ingest", code=1)
    assert "seeds" in said and "gone" in said
    assert "failed to ingest: seeds" in p.run("init", code=1)


def test_every_command_has_an_example_in_its_help() -> None:
    for command in (
        "init",
        "migrate",
        "ingest",
        "preview",
        "send-test",
        "send",
        "tick",
        "worker",
        "status",
        "run",
    ):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Example" in result.stdout, command


def test_a_tick_far_ahead_says_which_slots_it_moved(project: Project) -> None:
    project.run("subscribers", "add", "erin@example.com", "--list", "demo", "--confirmed")
    said = project.run("tick", "--once", "--now", "2099-01-01T07:30:00Z")
    assert "list demo: 0 composed, 0 skipped (nothing new), 1 missed slot(s)" in said, said
    assert "moved to the next slot" in said


def test_import_reports_a_repeated_address_with_other_values(project: Project) -> None:
    f = project.dir / "twice.csv"
    f.write_text(
        "email,name\nfrank@example.com,Frank\nfrank@example.com,Franklin\n"
        "gina@example.com,Gina\ngina@example.com,Gina\n"
    )
    said = project.run("subscribers", "import", str(f), "--list", "demo", "--confirmed", "--apply")
    assert "line 3: repeats frank@example.com from line 2 with other values" in said, said
    assert "2 new, 0 updated, 1 unchanged, 1 bad row(s)" in said, said
