"""DKIM signing (STANDARDS F) verified offline with dkimpy against the published record."""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import dkim
import pytest

from conftest import SmtpSink, write_config
from digest import bootstrap, compose, delivery, readers, sources, store
from digest.config import load_config
from digest.dkim_sign import DkimKey, load_key, public_record
from digest.errors import ConfigError
from digest.store import migrate

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def make_key(path: Path, bits: int = 2048) -> Path:
    path.write_bytes(subprocess.run(["openssl", "genrsa", str(bits)], capture_output=True, check=True).stdout)
    return path


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_key(tmp_path_factory.mktemp("dkim") / "dkim.pem")


@pytest.fixture
async def signed_mail(
    tmp_path: Path, smtp_sink: SmtpSink, key_file: Path
) -> AsyncIterator[tuple[bytes, str]]:
    key = key_file
    extra = f'\n[dkim]\ndomain = "news.example.com"\nselector = "d2026"\nkey_path = "{key}"\n'
    cfg = load_config(
        write_config(
            tmp_path, database_url=f"sqlite:///{tmp_path}/d.db", smtp_port=smtp_sink.port, extra=extra
        ),
        environ={},
    )
    migrate.migrate(store.resolve_url(cfg.database.url, cfg.base_dir))
    app = await bootstrap.open_app(cfg)
    try:
        await sources.ingest_sources(app, NOW)
        lst = await bootstrap.get_list(app, "demo")
        async with app.db.write() as s:
            await readers.add_subscription(
                s, lst, "ann@example.com", readers.ReaderPrefs(), confirmed=True, now=NOW
            )
        await compose.compose(app, lst, NOW, manual=True)
        assert (await delivery.deliver_due(app, lambda: NOW)).sent == 1
        record = public_record(load_key("news.example.com", "d2026", key))
        yield smtp_sink.to("ann@example.com")[0].data, record
    finally:
        await app.db.close()


def verify(raw: bytes, record: str) -> bool:
    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"d2026._domainkey.news.example.com."
        return record.encode()

    return bool(dkim.DKIM(raw).verify(dnsfunc=dns))


def test_the_bytes_the_server_received_verify_against_the_published_record(
    signed_mail: tuple[bytes, str],
) -> None:
    raw, record = signed_mail
    assert verify(raw, record)


def test_the_signature_is_relaxed_relaxed_rsa_sha256_without_a_length_tag(
    signed_mail: tuple[bytes, str],
) -> None:
    raw, _ = signed_mail
    header = raw.split(b"\r\n\r\n", 1)[0].decode()
    sig = re.search(r"DKIM-Signature:(.*?)(?=\r\n\S)", header, re.S)
    assert sig
    tags = {
        k.strip(): v.strip()
        for k, _, v in (t.partition("=") for t in re.sub(r"\s+", "", sig.group(1)).split(";"))
    }
    assert tags["c"] == "relaxed/relaxed" and tags["a"] == "rsa-sha256" and "l" not in tags
    assert tags["d"] == "news.example.com"
    signed = tags["h"].lower().split(":")
    for name in (
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "list-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "feedback-id",
    ):
        assert name in signed
    for name in ("from", "subject", "list-unsubscribe", "list-unsubscribe-post"):
        assert signed.count(name) == 2, f"{name} is not over-signed"


def test_a_second_list_unsubscribe_added_in_transit_breaks_the_signature(
    signed_mail: tuple[bytes, str],
) -> None:
    raw, record = signed_mail
    head, body = raw.split(b"\r\n\r\n", 1)
    forged = head + b"\r\nList-Unsubscribe: <https://evil.example/u>" + b"\r\n\r\n" + body
    assert not verify(forged, record)


def test_any_change_to_a_signed_header_breaks_the_signature(signed_mail: tuple[bytes, str]) -> None:
    raw, record = signed_mail
    assert not verify(raw.replace(b"Subject: Demo Digest", b"Subject: Demo Digesx"), record)


def test_a_short_or_missing_key_stops_the_service_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="1024 bits"):
        load_key("news.example.com", "s", make_key(tmp_path / "short.pem", 1024))
    with pytest.raises(ConfigError, match="cannot read"):
        load_key("news.example.com", "s", tmp_path / "missing.pem")


@pytest.fixture
def signing_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the thread each DKIM signature is made in."""
    threads: list[str] = []
    real = DkimKey.sign

    def sign(self: DkimKey, message: bytes) -> bytes:
        threads.append(threading.current_thread().name)
        return real(self, message)

    monkeypatch.setattr(DkimKey, "sign", sign)
    return threads


def test_signing_runs_off_the_event_loop(signing_threads: list[str], signed_mail: tuple[bytes, str]) -> None:
    raw, record = signed_mail
    assert verify(raw, record)
    assert len(signing_threads) == 1 and signing_threads[0] != threading.main_thread().name
