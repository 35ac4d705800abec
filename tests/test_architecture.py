"""The import direction of STYLE.md, kept true by a test: the pure core stays pure."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "digest"
PURE = ["schedule", "selection", "rendering", "messages", "tokens", "extract", "inbound"]
EDGES = ["store/__init__", "ingest", "smtp", "capture"]
LEAVES = ["models", "config", "errors"]
IO_LIBRARIES = {
    "sqlalchemy",
    "aiosmtplib",
    "httpx",
    "aiosqlite",
    "psycopg",
    "socket",
    "aiosmtpd",
    "fastapi",
    "os",
}
CLOCK_CALLS = {
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("datetime", "today"),
    ("date", "today"),
    ("time", "time"),
    ("time", "monotonic"),
    ("time", "gmtime"),
    ("time", "localtime"),
}


def imports_of(module: str) -> set[str]:
    """What a module imports; for a package (web), what any of its modules imports."""
    package = PACKAGE / module
    files = sorted(package.glob("*.py")) if package.is_dir() else [PACKAGE / f"{module}.py"]
    found: set[str] = set()
    for node in (node for file in files for node in ast.walk(ast.parse(file.read_text()))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            if node.module == "digest":
                found.update(f"digest.{alias.name}" for alias in node.names)
    return found


def digest_imports(module: str) -> set[str]:
    return {name.split(".")[1] for name in imports_of(module) if name.startswith("digest.")}


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_touch_no_database_socket_or_environment(module: str) -> None:
    roots = {name.split(".")[0] for name in imports_of(module)}
    assert not roots & IO_LIBRARIES, f"{module} imports {roots & IO_LIBRARIES}"


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_never_read_the_clock(module: str) -> None:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = (
                owner.id
                if isinstance(owner, ast.Name)
                else owner.attr
                if isinstance(owner, ast.Attribute)
                else ""
            )
            assert (name, node.func.attr) not in CLOCK_CALLS, f"{module} calls {name}.{node.func.attr}()"


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_depend_only_on_pure_modules_and_leaves(module: str) -> None:
    assert digest_imports(module) <= set(PURE) | set(LEAVES), digest_imports(module)


@pytest.mark.parametrize("module", EDGES)
def test_edges_never_import_the_pipeline_or_the_front_ends(module: str) -> None:
    assert not digest_imports(module) & {"pipeline", "cli", "web", "scheduler", "service"}


@pytest.mark.parametrize("module", ["web", "scheduler", "compose", "readers", "service", "delivery"])
def test_nothing_but_the_entry_point_imports_the_cli(module: str) -> None:
    assert "cli" not in digest_imports(module)


def test_web_and_scheduler_do_not_import_each_other() -> None:
    assert "scheduler" not in digest_imports("web")
    assert "web" not in digest_imports("scheduler")


@pytest.mark.parametrize("module", LEAVES)
def test_leaves_import_no_other_part_of_digest(module: str) -> None:
    allowed = {"errors"} | ({"schedule"} if module == "config" else set())
    assert digest_imports(module) <= allowed
