"""Which articles a digest holds (pure).

Candidates arrive newest first. A digest holds at most `max_articles` of them; the rest are not
carried into later digests (the reader's watermark moves past them) but the digest says how many
more there were and links to the archive. Below `min_articles` no digest is sent at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Selection(Generic[T]):
    chosen: tuple[T, ...]
    more: int  # new stories left out of this digest

    @property
    def empty(self) -> bool:
        return not self.chosen


def select_articles(candidates: Sequence[T], min_articles: int, max_articles: int) -> Selection[T]:
    """The newest `max_articles` candidates, or nothing when there are fewer than `min_articles`."""
    if len(candidates) < max(min_articles, 1):
        return Selection((), 0)
    chosen = tuple(candidates[:max_articles])
    return Selection(chosen, len(candidates) - len(chosen))
