"""Which of a list's topics an article belongs to (pure).

A topic matches an article by any of three rules: one of the article's sources is among the
topic's `sources`; one of the feed's own categories (tags) equals one of the topic's `categories`;
or one of its `keywords` occurs in the title or summary. The headline says what a story is about:
when any topic's keyword is in the title, only title keywords count, so a budget story whose text
mentions the library in passing is not a library story; the summary decides only for a title that
names no topic. Keywords and categories are compared
after folding case and accents ("Café" finds "cafe", "ÉTÉ" finds "été") and keywords match whole
words only ("bus" is not found in "business" or "omnibus"); a keyword with a space is a phrase,
its words in that order with any spacing or punctuation between them ("market hall" finds
"market-hall" and "Market  Hall"). A simple plural or possessive counts as the word itself
("ferries" does not, "buses" and "bus's" do), so an editor lists the singular.

An article may match several topics. The rest topic (`rest = true`), if the list has one, takes
the articles that match no other topic.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def fold(text: str) -> str:
    """Lower case without accents, for comparisons: "Émile ZOLA" → "emile zola"."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


_WORD = r"[^\W_]"  # a letter or digit in any script


def _phrase_pattern(keyword: str) -> str | None:
    words = re.findall(rf"{_WORD}+", fold(keyword))
    if not words:
        return None
    body = r"[\W_]+".join(re.escape(w) for w in words)
    # Whole words: no letter or digit right before; after, only a plural or possessive ending.
    return rf"(?<!{_WORD}){body}(?:'s|’s|es|s)?(?!{_WORD})"


@dataclass(frozen=True)
class TopicRule:
    """One topic's rules, compiled once per list."""

    slug: str
    sources: frozenset[str]
    categories: frozenset[str]
    keywords: re.Pattern[str] | None
    rest: bool = False

    def listed(self, sources: frozenset[str], categories: Iterable[str]) -> bool:
        """Matched by the operator's mapping: one of its sources or the feed's categories."""
        if self.rest:
            return False
        if self.sources and not self.sources.isdisjoint(sources):
            return True
        return bool(self.categories) and not self.categories.isdisjoint(fold(c).strip() for c in categories)

    def mentioned(self, folded_text: str) -> bool:
        return not self.rest and self.keywords is not None and self.keywords.search(folded_text) is not None


def compile_rule(
    slug: str,
    *,
    sources: Iterable[str] = (),
    categories: Iterable[str] = (),
    keywords: Iterable[str] = (),
    rest: bool = False,
) -> TopicRule:
    patterns = [p for p in (_phrase_pattern(k) for k in keywords) if p]
    return TopicRule(
        slug=slug,
        sources=frozenset(sources),
        categories=frozenset(fold(c).strip() for c in categories if c.strip()),
        keywords=re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None,
        rest=rest,
    )


def match(
    rules: Sequence[TopicRule], sources: Iterable[str], categories: Iterable[str], title: str, summary: str
) -> list[str]:
    """The slugs of the topics an article belongs to, in the list's order."""
    source_set, category_list = frozenset(sources), list(categories)
    headline = fold(title)
    by_title = {r.slug for r in rules if r.mentioned(headline)}
    by_text = by_title or {r.slug for r in rules if r.mentioned(fold(summary))}
    found = [r.slug for r in rules if r.slug in by_text or r.listed(source_set, category_list)]
    if not found:
        found = [r.slug for r in rules if r.rest]
    return found
