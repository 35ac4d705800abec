"""The built wheel works like a real tool: installed into a fresh venv and started from an empty
directory, the embedded default finds its templates and sample articles, mails a test digest and
serves.

The wheel is built from a copy of the checkout (no `build/` left behind). Its dependencies come
from this test run's own environment through a `.pth` line, so the test needs no index beyond
the one that installed the test extras; the wheel's own `digest` package still wins, because a
venv's site-packages comes before any path a `.pth` adds.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import urllib.request
import zipfile
from pathlib import Path

import pytest

from conftest import free_port, wait_healthy

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    tree = work / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, tree / name)
    shutil.copytree(ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"), str(tree)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (work / "dist").glob("digest-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
    )
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "digest_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return wheel.parent.parent


def _names(wheel_dir: Path) -> set[str]:
    (wheel,) = (wheel_dir / "dist").glob("digest-*.whl")
    with zipfile.ZipFile(wheel) as zipped:
        return set(zipped.namelist())


def test_the_wheel_carries_templates_sample_articles_and_the_licence(installed: Path) -> None:
    names = _names(installed)
    assert "digest/defaults/templates/email/digest/body.html" in names
    assert "digest/defaults/templates/web/subscribe.html" in names
    assert any(n.startswith("digest/defaults/seeds/") for n in names)
    licence = next(n for n in names if n.endswith("licenses/LICENSE"))
    with zipfile.ZipFile(next((installed / "dist").glob("*.whl"))) as zipped:
        assert zipped.read(licence).startswith(b"GNU AFFERO GENERAL PUBLIC LICENSE")


def test_from_an_empty_directory_init_send_test_and_run_work(installed: Path, tmp_path: Path) -> None:
    digest = installed / "venv" / "bin" / "digest"
    web_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGEST_")}
    env |= {
        "DIGEST_CAPTURE__PORT": str(free_port()),
        "DIGEST_WEB__PORT": str(web_port),
        "DIGEST_WEB__BASE_URL": f"http://127.0.0.1:{web_port}",
    }

    def run(*args: str, codes: tuple[int, ...] = (0,)) -> str:
        done = subprocess.run(
            [str(digest), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode in codes, done.stdout + done.stderr
        return done.stdout

    assert "4 new" in run("init")
    # doctor names the templates it renders: the wheel's, not the checkout's
    checked = run("doctor", "--json", codes=(0, 1))
    assert "site-packages/digest/defaults/templates" in checked and str(ROOT) not in checked
    run("send-test", "demo", "--to", "newcomer@example.com")
    (eml,) = (tmp_path / "captured-mail").glob("*.eml")
    assert "multipart/alternative" in eml.read_text()

    service = subprocess.Popen(
        [str(digest), "run"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wait_healthy(web_port, service)
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/", timeout=5) as page:
            assert page.status == 200
    finally:
        service.send_signal(signal.SIGTERM)
        output, _ = service.communicate(timeout=60)
    assert service.returncode == 0, output
