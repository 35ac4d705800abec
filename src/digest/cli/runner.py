"""Running one command: the config named by --config, and the App opened around its coroutine,
with failures turned into an `error:` line and an exit code."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import typer

from digest import bootstrap
from digest.cli.output import fail
from digest.config import Config, load_config
from digest.errors import DigestError

T = TypeVar("T")


@dataclass
class _Invocation:
    config_path: Path | None = None
    config: Config | None = None  # loaded by the first command that needs it


_current = _Invocation()


def start(config_path: Path | None) -> None:
    """Called for every invocation: tests run many in one process, each with its own --config."""
    _current.config_path = config_path
    _current.config = None


def config_path() -> Path | None:
    return _current.config_path


def config() -> Config:
    if _current.config is None:
        try:
            _current.config = load_config(_current.config_path)
        except DigestError as exc:
            fail(exc)
    return _current.config


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        return asyncio.run(coro_fn())
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except Exception as exc:
        fail(exc)


def with_app(fn: Callable[[bootstrap.App], Awaitable[T]]) -> T:
    async def go() -> T:
        application = await bootstrap.open_app(config())
        try:
            return await fn(application)
        finally:
            await application.db.close()

    return run(go)


def setup_logging() -> None:
    """JSON lines when stderr is not a terminal (journald, Docker), readable lines on a terminal."""
    # Imported here: short commands need not load the metrics code.
    from digest import observability

    observability.setup_logging()


def serve(
    *, web: bool = False, scheduler: bool = False, worker: bool = False, inbox: bool | None = None
) -> None:
    """Run long-running parts until SIGTERM: logging for a service manager, signals caught early."""
    from digest import service

    setup_logging()
    service.catch_stop_while_starting()
    with_app(
        lambda application: service.run_all(
            application, web=web, scheduler=scheduler, worker=worker, inbox=inbox
        )
    )
