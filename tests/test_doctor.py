"""`digest doctor` against real servers: a plain relay, STARTTLS with good, self-signed and expired
certificates (made with openssl), an unreachable port, a DKIM key and misaligned domains."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from typer.testing import CliRunner

from conftest import SmtpSink, free_port, write_config
from digest.cli import app

runner = CliRunner()
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")


def doctor(config: Path, code: int) -> str:
    result = runner.invoke(app, ["--config", str(config), "doctor"])
    output = result.stdout + result.stderr
    assert result.exit_code == code, output
    assert "Traceback" not in output
    return output


def cert(directory: Path, *, expired: bool) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1: valid for a day, or one that expired in 2020."""
    key, crt = directory / "key.pem", directory / "cert.pem"
    subject = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    if not expired:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", crt,
             "-days", "1", *subject],
            check=True, capture_output=True,
        )  # fmt: skip
        return key, crt
    (directory / "index.txt").touch()
    (directory / "serial").write_text("01\n")
    cnf = directory / "ca.cnf"
    cnf.write_text(
        "[ca]\ndefault_ca=d\n[d]\ndatabase=index.txt\nserial=serial\nnew_certs_dir=.\ndefault_md=sha256\n"
        "policy=p\ncopy_extensions=copy\n[p]\ncommonName=supplied\n"
    )
    csr = directory / "req.csr"
    subprocess.run(
        ["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, *subject],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        ["openssl", "ca", "-batch", "-selfsign", "-keyfile", key, "-in", csr, "-out", crt, "-config", cnf,
         "-startdate", "20200101000000Z", "-enddate", "20200102000000Z"],
        check=True, capture_output=True, cwd=directory,
    )  # fmt: skip
    return key, crt


class _Accept:
    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        return "250 OK"


@pytest.fixture
def tls_relay(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[int, Path]]:
    certs = tmp_path / "certs"
    certs.mkdir()
    key, crt = cert(certs, expired=request.param == "expired")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(crt, key)
    port = free_port()
    controller = Controller(_Accept(), hostname="127.0.0.1", port=port, tls_context=context)
    controller.start()
    try:
        yield port, crt
    finally:
        controller.stop()


def config_for(tmp_path: Path, port: int, extra: str = "") -> Path:
    path = write_config(tmp_path, database_url=f"sqlite:///{tmp_path}/digest.db", smtp_port=port, extra=extra)
    assert runner.invoke(app, ["--config", str(path), "migrate"]).exit_code == 0
    return path


def starttls(path: Path, ca_file: Path | None) -> None:
    text = path.read_text().replace('security = "none"', 'security = "starttls"')
    if ca_file:
        text = text.replace('security = "starttls"', f'security = "starttls"\nca_file = "{ca_file}"')
    path.write_text(text)


def test_a_working_setup_passes_with_warnings_and_exit_0(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    output = doctor(config_for(tmp_path, smtp_sink.port), 0)
    assert f"ok  smtp 127.0.0.1:{smtp_sink.port}: EHLO accepted" in output
    assert "warn  dkim" in output and "warn  alerts" in output and "0 failure(s)" in output
    assert "_dmarc.example.com" in output


def test_an_unreachable_relay_fails_naming_smtp(tmp_path: Path) -> None:
    output = doctor(config_for(tmp_path, free_port()), 1)
    assert "fail  smtp 127.0.0.1" in output and "fix:" in output


@needs_openssl
@pytest.mark.parametrize("tls_relay", ["valid"], indirect=True)
def test_starttls_with_a_trusted_certificate_passes(tmp_path: Path, tls_relay: tuple[int, Path]) -> None:
    port, crt = tls_relay
    path = config_for(tmp_path, port)
    starttls(path, crt)
    assert "STARTTLS, certificate valid" in doctor(path, 0)


@needs_openssl
@pytest.mark.parametrize("tls_relay", ["valid"], indirect=True)
def test_a_self_signed_certificate_fails_the_tls_check(tmp_path: Path, tls_relay: tuple[int, Path]) -> None:
    port, _ = tls_relay
    path = config_for(tmp_path, port)
    starttls(path, None)
    output = doctor(path, 1)
    assert "TLS certificate not accepted" in output and "self" in output.lower()


@needs_openssl
@pytest.mark.parametrize("tls_relay", ["expired"], indirect=True)
def test_an_expired_certificate_fails_the_tls_check(tmp_path: Path, tls_relay: tuple[int, Path]) -> None:
    port, crt = tls_relay
    path = config_for(tmp_path, port)
    starttls(path, crt)
    output = doctor(path, 1)
    assert "TLS certificate not accepted" in output and "expired" in output


@needs_openssl
def test_a_dkim_key_prints_the_record_and_misaligned_domains_fail(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    key = tmp_path / "dkim.pem"
    subprocess.run(["openssl", "genrsa", "-out", key, "2048"], check=True, capture_output=True)
    aligned = f'[dkim]\ndomain = "example.com"\nselector = "s1"\nkey_path = "{key}"\n'
    output = doctor(config_for(tmp_path, smtp_sink.port, aligned), 0)
    assert 's1._domainkey.example.com TXT "v=DKIM1; k=rsa; p=' in output
    path = tmp_path / "digest.toml"
    path.write_text(path.read_text().replace('domain = "example.com"', 'domain = "other.org"'))
    output = doctor(path, 1)
    assert "fail  alignment" in output and "other.org" in output


def test_missing_postal_address_and_schema_fail(tmp_path: Path, smtp_sink: SmtpSink) -> None:
    path = write_config(tmp_path, database_url=f"sqlite:///{tmp_path}/digest.db", smtp_port=smtp_sink.port)
    path.write_text(path.read_text().replace('postal_address = "1 Example Street, Springfield"\n', ""))
    output = doctor(path, 1)
    assert "fail  sender" in output and "fail  database" in output and "digest init" in output


def test_a_bad_config_is_a_failure_not_a_crash(tmp_path: Path) -> None:
    path = write_config(tmp_path, database_url=f"sqlite:///{tmp_path}/digest.db", smtp_port=25)
    path.write_text(path.read_text().replace('timezone = "UTC"', 'timezone = "Nowhere/Land"'))
    output = doctor(path, 1)
    assert "fail  config" in output and "Nowhere/Land" in output
