"""Raising an operator alert: the one call a detector makes where it finds trouble.

The circuit breaker (delivery), complaint rates and policy rejections (bounces) call `raise_alert`
beside the log line they write; they neither know nor import how alerts are sent. A process that
sends alerts installs a sink for as long as it runs (`alerts.watching` installs the Notifier's
queue); with none installed an alert goes nowhere and the detector's log line is the record.

A leaf like models and errors, so any module may raise an alert without importing the sending.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

log = logging.getLogger("digest.alerting")


@dataclass(frozen=True)
class Alert:
    # edition_paused, relay_policy, complaint_rate, complaint_warning, source_failing, queue_age,
    # operator, test
    kind: str
    title: str
    detail: str
    at: datetime
    subject: str = ""  # what the alert is about when one kind has several (a source's name)

    @property
    def key(self) -> str:
        return f"alert:{self.kind}:{self.subject}" if self.subject else f"alert:{self.kind}"


# Takes the alert and returns at once: detectors call it inside their transactions.
Sink = Callable[[Alert], None]

# Process-wide rather than a context variable: the worker, inbox and scheduler tasks started before
# a sink was installed must reach it too.
_sinks: list[Sink] = []


def raise_alert(alert: Alert) -> None:
    """Hand the alert to every installed sink. Never raises: trouble in the sending must not undo
    what the detector is doing (pausing an edition, recording a bounce)."""
    for sink in tuple(_sinks):
        try:
            sink(alert)
        except Exception:
            log.exception("handing the %s alert to its sink failed", alert.kind)


@contextlib.contextmanager
def installed(sink: Sink) -> Iterator[None]:
    """While inside, every alert raised in this process also goes to `sink`."""
    _sinks.append(sink)
    try:
        yield
    finally:
        _sinks.remove(sink)
