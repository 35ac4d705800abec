"""Config: TOML plus environment overrides, validated once with errors that name the key."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from digest.config import load_config, parse_duration
from digest.errors import ConfigError

MINIMAL = """
[[sources]]
name = "seeds"
kind = "directory"
path = "seeds"

[[lists]]
slug = "demo"
name = "Demo"
sources = ["seeds"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "digest.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("2w", 1209600), (45, 45), ("1.5h", 5400)],
)
def test_durations_are_read_in_operator_units(text: str | int, expected: int) -> None:
    assert parse_duration(text) == timedelta(seconds=expected)


def test_without_any_config_file_the_embedded_default_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, environ={})
    assert [s.name for s in cfg.sources] == ["seeds"]
    assert [lst.slug for lst in cfg.lists] == ["demo"]
    assert cfg.capture.enabled and cfg.relays == []
    assert cfg.database.url.startswith("sqlite:///")


def test_environment_overrides_any_key_so_secrets_stay_out_of_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '\n[smtp]\nhost = "relay.example.com"\nusername = "digest"\n')
    cfg = load_config(
        path,
        environ={
            "DIGEST_SMTP__PASSWORD": "s3cret",
            "DIGEST_SMTP__PORT": "465",
            "DIGEST_SMTP__SECURITY": "tls",
            "DIGEST_WEB__SECRET_KEYS": "new-key,old-key",
        },
    )
    assert cfg.smtp.password == "s3cret" and cfg.smtp.port == 465 and cfg.smtp.security == "tls"
    assert cfg.web.keys == ["new-key", "old-key"]
    assert cfg.relays[0].host == "relay.example.com"


def test_config_path_comes_from_the_environment_when_not_given(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '\n[sender]\ndomain = "news.example.com"\n')
    assert load_config(None, environ={"DIGEST_CONFIG": str(path)}).sender.domain == "news.example.com"


@pytest.mark.parametrize(
    ("snippet", "words"),
    [
        ('[smtp]\nport = "lots"\n', ["smtp.port", "'lots'"]),
        ('[smtp]\nsecurity = "maybe"\n', ["smtp.security", "'maybe'", "starttls"]),
        ('[delivery]\nlease = "soon"\n', ["delivery.lease", "'soon'", "duration"]),
        ('[web]\nbase_url = "http://news.example.com"\n', ["web.base_url", "https"]),
        ('[branding]\naccent = "red"\n', ["branding.accent", "hex"]),
        ('[database]\nurl = "mysql://x"\n', ["database.url", "sqlite"]),
        ("[smtp]\nhots = 1\n", ["unknown key", "smtp.hots"]),
        ('[smtp]\nusername = "u"\nsecurity = "none"\n', ["AUTH", "TLS"]),
    ],
)
def test_a_bad_value_names_the_key_the_value_and_what_was_expected(
    tmp_path: Path, snippet: str, words: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, MINIMAL + "\n" + snippet), environ={})
    message = str(info.value)
    for word in words:
        assert word in message, message
    assert "\n" not in message


def test_a_list_with_an_unknown_time_zone_or_cron_is_refused(tmp_path: Path) -> None:
    bad_tz = MINIMAL.replace('sources = ["seeds"]', 'sources = ["seeds"]\ntimezone = "Mars/Olympus"')
    with pytest.raises(ConfigError, match=r"lists\.0\.timezone.*Mars/Olympus.*IANA"):
        load_config(write(tmp_path, bad_tz), environ={})
    bad_cron = MINIMAL.replace('sources = ["seeds"]', 'sources = ["seeds"]\nschedule = "0 25 * * *"')
    with pytest.raises(ConfigError, match=r"lists\.0\.schedule.*hour"):
        load_config(write(tmp_path, bad_cron), environ={})


def test_a_list_naming_an_unknown_source_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown source"):
        load_config(write(tmp_path, MINIMAL.replace('sources = ["seeds"]', 'sources = ["nope"]')), environ={})


def test_one_relay_and_a_relay_list_at_once_is_a_config_error(tmp_path: Path) -> None:
    text = MINIMAL + '\n[smtp]\nhost = "a.example.com"\n\n[[smtp.relays]]\nhost = "b.example.com"\n'
    with pytest.raises(ConfigError, match="one or the other"):
        load_config(write(tmp_path, text), environ={})


def test_a_missing_or_broken_file_is_reported_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[smtp\n"), environ={})


def test_single_secret_key_is_accepted_beside_the_rotation_list(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL + '\n[web]\nsecret_key = "only-key"\n'), environ={})
    assert cfg.web.keys == ["only-key"]


def test_the_example_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    example = Path(__file__).resolve().parents[1] / "config.example.toml"
    cfg = load_config(example, environ={})
    assert cfg.lists and cfg.sources


@pytest.mark.parametrize(
    ("environ", "words"),
    [
        ({"DIGEST_SMTP__HOTS": "x"}, ["environment variable DIGEST_SMTP__HOTS", "smtp.hots", "did you mean smtp.host?"]),
        ({"DIGEST_SMPT__HOST": "x"}, ["environment variable DIGEST_SMPT__HOST", "did you mean smtp?"]),
        ({"DIGEST_SMTP__PORT": "lots"}, ["DIGEST_SMTP__PORT", "'lots'", "expected a whole number"]),
        ({"DIGEST_WEB__PORT": "-3"}, ["DIGEST_WEB__PORT", "expected a number at least 0"]),
        ({"DIGEST_CAPTURE__ENABLED": "maybe"}, ["DIGEST_CAPTURE__ENABLED", "expected true or false"]),
    ],
)
def test_a_bad_environment_override_names_the_variable_not_the_file(
    tmp_path: Path, environ: dict[str, str], words: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, MINIMAL), environ=environ)
    message = str(info.value)
    for word in words:
        assert word in message, message
    assert "digest.toml" not in message and "Input should" not in message


def test_an_unknown_key_in_the_file_suggests_the_nearest(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'smtp.hots' \(did you mean smtp.host\?\)"):
        load_config(write(tmp_path, MINIMAL + "\n[smtp]\nhots = 1\n"), environ={})


def test_a_postgresql_url_without_its_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from digest import store

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "psycopg" else real(name))
    with pytest.raises(ConfigError, match=r"pip install 'digest\[postgres\]'"):
        store.Database("postgresql://postgres@127.0.0.1/x")

