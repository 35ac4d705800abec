"""The import direction, kept as data: every module with the modules it may import.

A new import between two modules that the table does not allow fails here, so a sideways arrow in
the middle tier fails as surely as one in the pure core. Packages (`store`, `web`, `cli`) count
as one module each: their rooms import one another freely, and the package's row says what the
package as a whole may reach.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "digest"

LEAVES = {"errors", "models", "config", "alerting"}
PURE = {
    "schedule",
    "selection",
    "views",
    "palette",
    "display_text",
    "email_samples",
    "personal",
    "rendering",
    "messages",
    "tokens",
    "extract",
    "source_items",
    "feeds",
    "article_files",
    "inbound",
    "inbound_mail",
    "inbound_dsn",
    "inbound_feedback",
    "bounce_rules",
    "bounce_reasons",
    "topic_rules",
    "same_story",
}
EDGES = {"store", "ingest", "smtp", "capture", "dkim_sign", "previews"}
FRONTS = {"cli", "web", "scheduler", "service", "__main__"}

ALLOWED: dict[str, set[str]] = {
    # leaves
    "errors": set(),
    "models": set(),
    "config": {"errors", "schedule"},
    "alerting": set(),
    # the pure core: no I/O, no clock
    "schedule": set(),
    "selection": set(),
    "tokens": set(),
    "extract": set(),
    "palette": set(),
    "display_text": set(),
    "views": {"display_text", "palette"},
    "email_samples": {"views"},
    "personal": {"display_text"},
    "rendering": {"errors", "views", "palette", "display_text", "email_samples", "personal"},
    "messages": {"rendering"},
    "source_items": {"extract", "models"},
    "feeds": {"errors", "extract", "models", "source_items"},
    "article_files": {"extract", "source_items"},
    "inbound": {"inbound_dsn", "inbound_feedback", "inbound_mail", "tokens"},
    "inbound_mail": {"bounce_rules"},
    "inbound_dsn": {"bounce_rules", "inbound_mail"},
    "inbound_feedback": {"bounce_rules", "inbound_mail", "tokens"},
    "bounce_rules": {"bounce_reasons"},
    "bounce_reasons": set(),
    "topic_rules": set(),
    "same_story": set(),
    # edges: the database, feeds, SMTP, the capture server, DKIM keys, the browser
    "store": {"errors", "models"},
    "ingest": {"article_files", "errors", "feeds", "models", "source_items"},
    "smtp": {"config"},
    "capture": {"errors"},
    "dkim_sign": {"errors"},
    "previews": set(),
    # domain operations, lowest first
    "bootstrap": {"config", "errors", "models", "rendering", "store"},
    "readers": {"bootstrap", "errors", "models", "schedule", "store", "tokens"},
    "signup_form": {"errors", "models", "readers", "schedule"},
    "welcome": {"bootstrap", "messages", "models", "readers", "rendering", "schedule", "store", "views"},
    "signup": {
        "alerting",
        "bootstrap",
        "messages",
        "models",
        "readers",
        "rendering",
        "signup_form",
        "store",
        "views",
        "welcome",
    },
    "preferences": {"bootstrap", "models", "readers", "schedule", "signup", "signup_form", "store", "topics"},
    "topics": {"bootstrap", "config", "errors", "models", "store", "topic_rules"},
    "sources": {"bootstrap", "errors", "ingest", "store", "topics"},
    "stories": {"bootstrap", "display_text", "models", "store", "tokens"},
    "compose": {
        "bootstrap",
        "errors",
        "messages",
        "models",
        "personal",
        "readers",
        "rendering",
        "same_story",
        "schedule",
        "selection",
        "stories",
        "store",
        "tokens",
        "views",
    },
    "editions": {"bootstrap", "errors", "models", "store"},
    "relays": {"config", "smtp"},
    "assembly": {"config", "dkim_sign", "messages", "models", "personal", "store", "tokens"},
    "outcomes": {"alerting", "bounce_rules", "config", "models", "smtp", "store"},
    "delivery": {
        "alerting",
        "assembly",
        "bootstrap",
        "models",
        "outcomes",
        "relays",
        "smtp",
        "store",
    },
    "bounce_outcomes": {"config", "inbound", "store"},
    "complaints": {"alerting", "bounce_outcomes", "bounce_rules", "models", "readers", "store"},
    "bounces": {
        "alerting",
        "bootstrap",
        "bounce_outcomes",
        "bounce_rules",
        "complaints",
        "inbound",
        "models",
        "readers",
        "store",
    },
    "bounce_mailboxes": {"bootstrap", "bounce_outcomes", "bounces", "errors", "inbound", "store"},
    "bounce_listener": {"bootstrap", "bounce_outcomes", "bounces", "errors"},
    "bounce_admin": {"bootstrap", "errors", "models", "readers", "store"},
    "readers_io": {"bootstrap", "errors", "models", "readers", "schedule", "signup", "store", "topics"},
    "retention": {"bootstrap", "errors", "messages", "models", "readers", "store"},
    "alerts": {"alerting", "bootstrap", "config", "messages", "smtp", "store"},
    "reports": {"bootstrap", "models", "readers", "store"},
    "observability": {"bootstrap", "reports"},
    "doctor": {
        "bootstrap",
        "capture",
        "config",
        "delivery",
        "dkim_sign",
        "errors",
        "messages",
        "rendering",
        "smtp",
        "store",
    },
    # front ends
    "web": {
        "bootstrap",
        "errors",
        "extract",
        "models",
        "observability",
        "personal",
        "preferences",
        "readers",
        "readers_io",
        "rendering",
        "reports",
        "retention",
        "schedule",
        "signup",
        "signup_form",
        "source_items",
        "stories",
        "store",
        "tokens",
        "topics",
    },
    "scheduler": {"alerts", "bootstrap", "bounces", "compose", "retention", "signup", "sources", "store"},
    "service": {
        "alerts",
        "bootstrap",
        "bounce_listener",
        "bounces",
        "capture",
        "delivery",
        "errors",
        "models",
        "scheduler",
        "web",
    },
    "cli": {
        "alerting",
        "alerts",
        "bootstrap",
        "bounce_admin",
        "bounce_mailboxes",
        "bounce_outcomes",
        "bounces",
        "capture",
        "compose",
        "config",
        "delivery",
        "doctor",
        "editions",
        "errors",
        "ingest",
        "observability",
        "previews",
        "readers",
        "readers_io",
        "rendering",
        "reports",
        "retention",
        "schedule",
        "service",
        "signup",
        "sources",
        "store",
        "topics",
    },
    "__main__": {"cli"},
}

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
# What a module outside the store may take from sqlalchemy: the session type it is handed and the
# exceptions it must recognise; never statements, tables or engines.
SQLALCHEMY_OUTSIDE_STORE = {"sqlalchemy.ext.asyncio.AsyncSession", "sqlalchemy.exc"}


def unit_of(path: Path) -> str:
    """The table row a file belongs to: its top-level module, or its package."""
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def files_of(unit: str) -> list[Path]:
    package = PACKAGE / unit
    return sorted(package.rglob("*.py")) if package.is_dir() else [PACKAGE / f"{unit}.py"]


def units() -> set[str]:
    found = {unit_of(p) for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts}
    return found - {"__init__"}


def imported_names(path: Path) -> set[str]:
    """Every dotted name a file imports, with `from a import b` giving `a.b`."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def digest_imports(unit: str) -> set[str]:
    found: set[str] = set()
    for path in files_of(unit):
        for name in imported_names(path):
            parts = name.split(".")
            if parts[0] == "digest" and len(parts) > 1 and parts[1] in units():
                found.add(parts[1])
    return found - {unit}


def test_every_module_has_a_row_in_the_table() -> None:
    assert units() == set(ALLOWED), (
        f"missing rows: {sorted(units() - set(ALLOWED))}; stale rows: {sorted(set(ALLOWED) - units())}"
    )
    named = set().union(*ALLOWED.values())
    assert named <= units(), f"the table allows modules that do not exist: {sorted(named - units())}"


@pytest.mark.parametrize("unit", sorted(ALLOWED))
def test_module_imports_only_what_the_table_allows(unit: str) -> None:
    extra = digest_imports(unit) - ALLOWED[unit]
    assert not extra, f"{unit} imports {sorted(extra)}, which the table does not allow"


@pytest.mark.parametrize("unit", sorted(PURE))
def test_pure_modules_touch_no_database_socket_or_environment(unit: str) -> None:
    roots = {name.split(".")[0] for path in files_of(unit) for name in imported_names(path)}
    assert not roots & IO_LIBRARIES, f"{unit} imports {roots & IO_LIBRARIES}"


@pytest.mark.parametrize("unit", sorted(PURE))
def test_pure_modules_never_read_the_clock(unit: str) -> None:
    for path in files_of(unit):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value
                name = (
                    owner.id
                    if isinstance(owner, ast.Name)
                    else owner.attr
                    if isinstance(owner, ast.Attribute)
                    else ""
                )
                assert (name, node.func.attr) not in CLOCK_CALLS, f"{unit} calls {name}.{node.func.attr}()"


def test_layers_point_one_way() -> None:
    """Leaves and the pure core reach nothing above them; edges never reach the domain or the fronts."""
    for unit in LEAVES | PURE:
        assert ALLOWED[unit] <= LEAVES | PURE, unit
    for unit in EDGES:
        assert ALLOWED[unit] <= LEAVES | PURE, unit
    for unit, allowed in ALLOWED.items():
        if unit not in FRONTS:
            assert not allowed & FRONTS, f"{unit} may import a front end: {allowed & FRONTS}"
    assert "cli" not in set().union(*(ALLOWED[u] for u in ALLOWED if u != "__main__"))
    assert "scheduler" not in ALLOWED["web"] and "web" not in ALLOWED["scheduler"]


def test_only_the_store_uses_sqlalchemy_beyond_sessions_and_exceptions() -> None:
    for path in PACKAGE.rglob("*.py"):
        if unit_of(path) in {"store", "models"} or "migrations" in path.parts:
            continue
        for name in imported_names(path):
            if name.split(".")[0] != "sqlalchemy" or name in {"sqlalchemy", "sqlalchemy.ext.asyncio"}:
                continue
            assert any(
                name == allowed or name.startswith(allowed + ".") for allowed in SQLALCHEMY_OUTSIDE_STORE
            ), f"{path.relative_to(PACKAGE)} imports {name}"
