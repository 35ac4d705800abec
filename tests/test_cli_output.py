"""What the CLI prints for scripts and pipes: one JSON document per `--json`, whole values when
piped, help that shows config names as written, and `--version`."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from conftest import CliProject, SmtpSink
from digest.cli import app, output

# Commands that show state: each must take --json. A new one without it fails here.
SHOWING = {"list", "show", "report", "status", "doctor", "check"}
SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")
CAROL = "carol.longname-for-a-narrow-column@example.com"


def _commands(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    # Typer ships its own copy of click, so groups are told by having commands, not by class.
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


ALL = dict(_commands(typer.main.get_command(app)))
SHOWN = sorted(path for path in ALL if path[-1] in SHOWING)


@pytest.fixture
def project(tmp_path: Path, smtp_sink: SmtpSink) -> CliProject:
    p = CliProject(tmp_path, smtp_sink.port)
    p.run("init")
    p.run("subscribers", "add", CAROL, "--list", "demo", "--confirmed")
    p.run("send", "demo")
    return p


def _args(path: tuple[str, ...], project: CliProject) -> list[str]:
    extra = {
        ("subscribers", "show"): [CAROL],
        ("lists", "show"): ["demo"],
        ("sources", "check"): ["seeds"],
    }
    if path == ("editions", "show"):
        editions = project.json("editions", "list")
        assert isinstance(editions, list) and editions
        return [str(editions[0]["id"])]
    return extra.get(path, [])


def _keys(value: object) -> Iterator[str]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield key
            yield from _keys(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _keys(inner)


def test_every_command_that_shows_state_takes_json() -> None:
    assert SHOWN, "no list/show/report commands found"
    for path in SHOWN:
        options = {opt for p in ALL[path].params for opt in getattr(p, "opts", [])}
        assert "--json" in options, f"digest {' '.join(path)} has no --json"


def test_each_json_output_is_one_document_with_snake_case_keys(project: CliProject) -> None:
    runner = CliRunner()
    for path in [*SHOWN, ("prune",)]:
        args = ["--config", str(project.config), *path, *_args(path, project), "--json"]
        result = runner.invoke(app, args)
        assert result.exit_code in (0, 1), (path, result.stdout + result.stderr)
        document = json.loads(result.stdout)
        if path[-1] == "list":
            assert isinstance(document, list), path
        # detail of events is free-form data, not a key we chose
        bad = [k for k in _keys(document) if not SNAKE.match(k) and "@" not in k and "." not in k]
        assert not bad, (path, bad)


def test_piped_subscriber_list_keeps_whole_addresses(project: CliProject) -> None:
    listing = project.run("subscribers", "list")
    line = next(x for x in listing.splitlines() if "carol" in x)
    assert line.split("\t")[0] == CAROL
    assert CAROL in project.run(
        "subscribers", "show", CAROL
    )


def test_help_shows_bracketed_config_names_and_no_bool_metavar() -> None:
    runner = CliRunner()
    assert "[bounce]" in runner.invoke(app, ["--help"]).stdout
    added = runner.invoke(app, ["subscribers", "add", "--help"]).stdout
    assert "--confirmed" in added and "<bool>" not in added and "BOOLEAN" not in added


def test_version_prints_the_installed_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and re.match(r"^digest \d+\.\d+", result.stdout)


def test_tables_fit_80_columns_on_a_terminal(project: CliProject, monkeypatch: pytest.MonkeyPatch) -> None:
    screen = io.StringIO()
    monkeypatch.setattr(output, "out", Console(file=screen, width=80, force_terminal=True, color_system=None))
    for args in (["status"], ["subscribers", "list"], ["subscribers", "show", CAROL], ["lists", "show", "demo"]):
        project.run(*args)
    lines = screen.getvalue().splitlines()
    assert any("subject" in line for line in lines)
    assert max(len(line) for line in lines) <= 80, "\n".join(line for line in lines if len(line) > 80)
