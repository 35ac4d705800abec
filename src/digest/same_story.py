"""One story reported by several sources, shown once (pure).

A wire story rewritten by two outlets, or the same lede under another headline, should reach the
reader once, with "Also reported by" naming the other sources. Exact duplicates are already stored
once; this finds near-duplicates across sources, among one digest's candidates.

The decision, and why:
- Written here, not taken from a MinHash/SimHash library (datasketch and the like). Those
  estimate Jaccard similarity so that millions of documents can be bucketed; one digest holds tens
  to a few hundred candidates, where the exact measure costs nothing and has no hashing error, so
  a threshold means the same thing on every run. Nor do they help with what decides a merge here:
  weighting distinctive words and vetoing stories whose facts disagree.
- Words: casefolded, accents stripped (so "Straße"/"Strasse" and "aérien"/"aerien" meet),
  function words of English, German and French dropped, light suffix stemming ("sailings" and
  "sail", "decided" and "decides"). A distinctive word (held by at most a tenth of the
  candidates, and never fewer than `_MIN_DISTINCTIVE_CAP`) weighs 1; a commoner one fades as in
  IDF. Not plain IDF: it would count a story's own copies against it, so the more outlets carry
  a story the less alike its reports would look. Words of the title weigh `TITLE_WEIGHT` times
  more than words of the summary.
- Two stories match when their weighted cosine similarity reaches `THRESHOLD`, they share at
  least `MIN_SHARED` distinctive words, and no veto applies. A veto is a disagreement in the facts
  that rewrites keep: different numbers (route 12 and route 15, 21-17 and 14-3, 2026 and 2027),
  different weekdays or months, different outcomes ("approved" and "delayed", "reopens" and
  "closes", "rose" and "fell": `_OUTCOME_WORDS`), or named people and places of which the two
  have none in common. Similarity alone cannot tell those apart: a reversal or a follow-up
  repeats most of the first report's words.
- False merges are worse than missed ones: a group grows only when every member matches every
  other member (complete linkage), never holds two stories of one source, and never spans more
  than `window` between its stories.
- Candidate pairs come from an inverted index of distinctive words, so only pairs that could reach
  `MIN_SHARED` are scored: exact (it finds every pair the full comparison would) and far below
  n² on a large window.
- Only stories published within `window` of each other (36 hours unless the caller says) can
  merge: rewrites of one report come within hours, while a follow-up (the verdict after the
  trial, the clean-up after the spill) comes a day or more later and repeats most of the first
  report's words, which is the false merge the words alone cannot rule out.

Measured with `python bench/same_story_precision.py`: on the 85 pairs the thresholds and vetoes
were chosen on (tests/fixtures/stories/pairs.jsonl) precision 1.000, recall 0.971; on 16 pairs
written afterwards (held_out.jsonl) precision 0.667, recall 1.000: three different stories of one
subject that repeat the first report's words (a spill and its clean-up; a strike called and
ended; funding found and costs overrun) still merge when published within the window. Those
are the limit of comparing words, and the reason for the short window.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from itertools import combinations

THRESHOLD = 0.6
MIN_SHARED = 3
TITLE_WEIGHT = 1.5
DEFAULT_WINDOW = timedelta(hours=36)
_MIN_DISTINCTIVE_CAP = 5


@dataclass(frozen=True)
class Candidate:
    id: int
    source: str
    title: str
    summary: str  # the summary or first paragraph
    published: datetime  # aware UTC
    url: str = ""


@dataclass(frozen=True)
class StoryGroup:
    """One story: the earliest report, and the reports of other sources after it."""

    primary: int
    also: tuple[int, ...] = ()

    @property
    def ids(self) -> tuple[int, ...]:
        return (self.primary, *self.also)


@dataclass(frozen=True)
class Profile:
    """What comparing a story needs, read once from its text."""

    title_terms: frozenset[str]
    terms: frozenset[str]  # title and summary
    numbers: frozenset[str]
    days: frozenset[str]
    months: frozenset[str]
    names: frozenset[str]
    outcomes: frozenset[tuple[str, str]]  # (dimension, outcome): ("decision", "yes")


@dataclass(frozen=True)
class Match:
    score: float
    shared: int  # distinctive words both stories hold
    veto: str  # why the facts disagree, or ""

    @property
    def same(self) -> bool:
        return not self.veto and self.score >= THRESHOLD and self.shared >= MIN_SHARED


# Function words and reporting filler: they say nothing about which story it is.
_STOPWORDS = frozenset(
    {
        "a", "about", "above", "after", "again", "against", "all", "also", "am", "an", "and", "any",
        "are", "as", "at", "be", "because", "been", "before", "being", "below", "between", "both",
        "but", "by", "can", "could", "did", "do", "does", "doing", "down", "during", "each", "few",
        "for", "from", "further", "had", "has", "have", "having", "he", "her", "here", "hers", "him",
        "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just", "me", "more",
        "most", "my", "no", "nor", "not", "now", "of", "off", "on", "once", "only", "or", "other",
        "our", "out", "over", "own", "same", "she", "should", "so", "some", "such", "than", "that",
        "the", "their", "them", "then", "there", "these", "they", "this", "those", "through", "to",
        "too", "under", "until", "up", "very", "was", "we", "were", "what", "when", "where", "which",
        "while", "who", "whom", "why", "will", "with", "would", "you", "your", "said", "says", "say",
        "told", "according", "announced", "added", "new", "latest", "week", "weekend", "today",
        "yesterday", "tonight", "morning", "afternoon", "evening", "night", "last", "next", "year",
        "years", "day", "days", "time", "early", "late", "mr", "mrs", "ms", "dr", "per", "cent",
        "percent", "it's", "one", "two", "first", "der", "die", "das", "den", "dem", "des", "ein",
        "eine", "einen", "einem", "einer", "eines", "und", "oder", "aber", "nicht", "ist", "sind",
        "war", "hat", "haben", "wird", "werden", "wurde", "soll", "sollen", "seien", "sei", "mit",
        "von", "vom", "zu", "zum", "zur", "bis", "nach", "auf", "aus", "bei", "fur", "uber", "unter",
        "im", "als", "auch", "noch", "wieder", "sich", "damit", "dann", "ab", "ihr", "ihre", "sein",
        "seine", "le", "la", "les", "l", "un", "une", "du", "de", "d", "et", "ou", "mais", "ne", "pas",
        "est", "sont", "au", "aux", "avec", "pour", "par", "sur", "dans", "en", "ses", "son", "sa",
        "ce", "cette", "qui", "que", "selon", "depuis", "apres", "avant", "plus"
    }
)  # fmt: skip

_WEEKDAYS = {
    "monday": "mon", "tuesday": "tue", "wednesday": "wed", "thursday": "thu", "friday": "fri",
    "saturday": "sat", "sunday": "sun",
    "montag": "mon", "dienstag": "tue", "mittwoch": "wed", "donnerstag": "thu", "freitag": "fri",
    "samstag": "sat", "sonnabend": "sat", "sonntag": "sun",
    "lundi": "mon", "mardi": "tue", "mercredi": "wed", "jeudi": "thu", "vendredi": "fri",
    "samedi": "sat", "dimanche": "sun",
}  # fmt: skip

# English, German and French, accents folded.
_MONTH_NAMES = (
    "january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
    "november", "december", "januar", "februar", "marz", "april", "mai", "juni", "juli", "august",
    "september", "oktober", "november", "dezember", "janvier", "fevrier", "mars", "avril", "mai",
    "juin", "juillet", "aout", "septembre", "octobre", "novembre", "decembre",
)  # fmt: skip
_MONTHS = {name: f"m{i % 12 + 1}" for i, name in enumerate(_MONTH_NAMES)}
# "May" and "march" are words as well as months; only a capitalised one counts as a month.
_AMBIGUOUS_MONTHS = frozenset({"may", "march", "mars"})

_SMALL_NUMBERS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
    "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
    "twenty",
)  # fmt: skip
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(_SMALL_NUMBERS)} | {
    "thirty": "30",
    "forty": "40",
    "fifty": "50",
    "sixty": "60",
    "hundred": "100",
}
# "One" and "two" are too often not a quantity ("one of the", "two-thirds") to make a fact.
_WEAK_NUMBER_WORDS = frozenset({"zero", "one", "two"})
_ORDINALS = {
    w: f"{i + 1}th"
    for i, w in enumerate(
        ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")
    )
}

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_SCORE = re.compile(r"\b(\d+)\s*[-–]\s*(\d+)\b")
_SENTENCE_END = re.compile(r"[.!?:;]\s*$")


def fold(text: str) -> str:
    """Casefolded, accents stripped: "Straße" → "strasse", "Médiathèque" → "mediatheque"."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def stem(word: str) -> str:
    """A light, conservative stem: plurals, possessives, -ed and -ing, a final e."""
    for apostrophe in ("'s", "’s"):
        word = word.removesuffix(apostrophe)
    if len(word) > 4 and word.endswith("ies"):
        word = word[:-3] + "y"
    elif len(word) > 4 and word.endswith(("sses", "shes", "ches", "xes", "zes")):
        word = word[:-2]
    elif len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    if len(word) > 5 and word.endswith("ing"):
        word = _undouble(word[:-3])
    elif len(word) > 4 and word.endswith("ied"):
        word = word[:-3] + "y"
    elif len(word) > 4 and word.endswith("ed"):
        word = _undouble(word[:-2])
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]
    return word


def _undouble(word: str) -> str:
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "lsz":
        return word[:-1]
    return word


# What happened, in words rewrites keep and a different story changes: "approved" and "delayed",
# "reopens" and "closes", "rose" and "fell". Within one dimension, two stories that both say what
# happened and share no outcome are two stories. Synonyms share a class so that rewrites agree.
# An entry with "_" is a phrase ("green_light"), found in the folded text as written.
_OUTCOME_WORDS = {
    "decision": {
        "yes": "approve approved approves backs backed accept accepted agree agreed grant granted "
        "endorse endorsed adopt adopted green_light go-ahead go_ahead",
        "no": "reject rejected rejects refuse refused refuses oppose opposed opposes block blocked "
        "blocks veto vetoed turn_down turns_down turned_down throw_out thrown_out threw_out",
        "later": "delay delayed delays postpone postponed postpones defer deferred defers shelve shelved",
        "off": "cancel cancelled cancels scrap scrapped scraps axe axed abandon abandoned",
    },
    "state": {
        "open": "open opens opened reopen reopens reopened resume resumes resumed "
        "ouvre rouvre rouvrira offnet eroffnet",
        "shut": "close closes closed closure shut shuts suspend suspended suspends halt halted halts "
        "ferme fermee schliesst geschlossen",
    },
    "direction": {
        "up": "rise rises rose risen increase increased increases gain gained gains grow grew grows "
        "climb climbed jump jumped soar soared surge surged",
        "down": "fall falls fell fallen drop dropped drops decline declined declines slump slumped "
        "plunge plunged cut cuts slash slashed",
        "same": "unchanged steady",
    },
    "justice": {
        "arrested": "arrest arrested arrests",
        "charged": "charged accused",
        "convicted": "jailed sentenced convicted guilty",
        "cleared": "cleared acquitted",
    },
    "office": {
        "in": "appoint appointed appoints hire hired hires elected",
        "out": "resign resigned resigns quit quits sacked ousted",
    },
    "result": {
        "won": "win wins won beat beats",
        "lost": "lose loses lost",
    },
}
_OUTCOME_ENTRIES = [
    (entry, (dimension, outcome))
    for dimension, outcomes in _OUTCOME_WORDS.items()
    for outcome, entries in outcomes.items()
    for entry in entries.split()
]
_OUTCOMES = {stem(entry): found for entry, found in _OUTCOME_ENTRIES if entry.isalpha()}
_OUTCOME_PHRASES = [
    (re.compile(rf"\b{re.escape(entry.replace('_', ' '))}\b"), found)
    for entry, found in _OUTCOME_ENTRIES
    if not entry.isalpha()
]


def content_words(text: str) -> list[str]:
    """The stemmed content words of `text`, in order."""
    words = (stem(w) for w in _WORD.findall(fold(text)))
    return [w for w in words if len(w) > 1 and w not in _STOPWORDS and not w.isdigit()]


def _numbers(text: str) -> set[str]:
    found = {f"{a}-{b}" for a, b in _SCORE.findall(text)}
    bare = _SCORE.sub(" ", text)
    found |= {n.replace(",", "") for n in _NUMBER.findall(bare)}
    for word in _WORD.findall(fold(bare)):
        if word in _NUMBER_WORDS and word not in _WEAK_NUMBER_WORDS:
            found.add(_NUMBER_WORDS[word])
        elif word in _ORDINALS:
            found.add(_ORDINALS[word])
    return found


def _names(text: str) -> set[str]:
    """Capitalised words inside a sentence: people, places, organisations.

    The first word of a sentence and words in all capitals tell nothing; German capitalises every
    noun, which only makes names agree more often, never disagree."""
    found: set[str] = set()
    for m in _WORD.finditer(text):
        word = m[0]
        if not word[0].isupper() or word.isupper() or not text[: m.start()].strip():
            continue
        if _SENTENCE_END.search(text[: m.start()]):
            continue
        folded = fold(word)
        if folded in _STOPWORDS or folded in _WEEKDAYS or folded in _MONTHS:
            continue
        found.add(stem(folded))
    return found


@lru_cache(maxsize=8192)  # a tick drafts the same stories for many watermarks and topic choices
def profile(title: str, summary: str) -> Profile:
    text = f"{title}. {summary}"
    words = _WORD.findall(text)
    folded = [fold(w) for w in words]
    folded_text = fold(text)
    months = {
        _MONTHS[f]
        for w, f in zip(words, folded, strict=True)
        if f in _MONTHS and (f not in _AMBIGUOUS_MONTHS or w[0].isupper())
    }
    return Profile(
        title_terms=frozenset(content_words(title)),
        terms=frozenset(content_words(title) + content_words(summary)),
        numbers=frozenset(_numbers(text)),
        days=frozenset(_WEEKDAYS[f] for f in folded if f in _WEEKDAYS),
        months=frozenset(months),
        # Titles are often in title case, so only the summary's capitals are names.
        names=frozenset(_names(summary)),
        outcomes=frozenset(
            [_OUTCOMES[w] for w in (stem(f) for f in folded) if w in _OUTCOMES]
            + [outcome for pattern, outcome in _OUTCOME_PHRASES if pattern.search(folded_text)]
        ),
    )


@dataclass(frozen=True)
class Vocabulary:
    """How many of the candidates hold each word."""

    frequency: Mapping[str, int]
    size: int

    @classmethod
    def of(cls, profiles: Iterable[Profile]) -> Vocabulary:
        counts: Counter[str] = Counter()
        size = 0
        for p in profiles:
            counts.update(p.terms)
            size += 1
        return cls(dict(counts), size)

    def weight(self, term: str) -> float:
        """1 for a distinctive word; less, as in IDF, for a word more of the candidates hold.

        Plain IDF would count a story's own copies against it: the more outlets carry a story,
        the commoner its words would look, and the less its reports would seem alike."""
        df = max(self.frequency.get(term, 0), 1)
        cap = self.distinctive_cap
        if df <= cap:
            return 1.0
        return math.log(1 + self.size / df) / math.log(1 + self.size / cap)

    @property
    def distinctive_cap(self) -> int:
        return max(_MIN_DISTINCTIVE_CAP, self.size // 10)

    def is_distinctive(self, term: str) -> bool:
        return self.frequency.get(term, 0) <= self.distinctive_cap


def _weights(p: Profile, vocabulary: Vocabulary) -> dict[str, float]:
    return {t: vocabulary.weight(t) * (TITLE_WEIGHT if t in p.title_terms else 1.0) for t in p.terms}


def _veto(a: Profile, b: Profile) -> str:
    for kind, x, y in (
        ("numbers", a.numbers, b.numbers),
        ("weekdays", a.days, b.days),
        ("months", a.months, b.months),
    ):
        if x and y and not x & y:
            return f"different {kind}: {sorted(x)} and {sorted(y)}"
    scores_a = {n for n in a.numbers if "-" in n}
    scores_b = {n for n in b.numbers if "-" in n}
    if scores_a and scores_b and scores_a != scores_b:
        return f"different scores: {sorted(scores_a)} and {sorted(scores_b)}"
    for dimension in _OUTCOME_WORDS:
        said_a = {o for d, o in a.outcomes if d == dimension}
        said_b = {o for d, o in b.outcomes if d == dimension}
        if said_a and said_b and not said_a & said_b:
            return f"different outcomes ({dimension}): {sorted(said_a)} and {sorted(said_b)}"
    if a.names and b.names and not a.names & b.names:
        return f"different names: {sorted(a.names)} and {sorted(b.names)}"
    return ""


def compare(a: Profile, b: Profile, vocabulary: Vocabulary) -> Match:
    """How alike two stories are, among the candidates `vocabulary` counts."""
    wa, wb = _weights(a, vocabulary), _weights(b, vocabulary)
    shared = sorted(a.terms & b.terms)
    # fsum: the same score whatever order the words come in, so grouping never depends on it.
    dot = math.fsum(wa[t] * wb[t] for t in shared)
    norm = math.sqrt(math.fsum(w * w for w in wa.values()) * math.fsum(w * w for w in wb.values()))
    score = dot / norm if norm else 0.0
    distinctive = sum(1 for t in shared if vocabulary.is_distinctive(t))
    return Match(score, distinctive, _veto(a, b))


def candidate_pairs(profiles: Sequence[Profile], vocabulary: Vocabulary) -> list[tuple[int, int]]:
    """Index pairs (i < j) sharing at least `MIN_SHARED` distinctive words: the only ones that can match."""
    postings: defaultdict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(profiles):
        for term in p.terms:
            if vocabulary.is_distinctive(term):
                postings[term].append(i)
    together: Counter[tuple[int, int]] = Counter()
    for holders in postings.values():
        together.update(combinations(holders, 2))
    return sorted(pair for pair, n in together.items() if n >= MIN_SHARED)


def group_same_stories(
    candidates: Sequence[Candidate], *, window: timedelta = DEFAULT_WINDOW
) -> list[StoryGroup]:
    """Every candidate in exactly one group, the groups in the order their primaries come in `candidates`.

    A primary is the group's earliest story (ties: the first in `candidates`); its `also` are the
    other sources' reports, in the same order."""
    if len({c.source for c in candidates}) < 2:  # one source: nothing to fold
        return [StoryGroup(c.id) for c in candidates]
    profiles = [profile(c.title, c.summary) for c in candidates]
    vocabulary = Vocabulary.of(profiles)
    matches: dict[tuple[int, int], float] = {}
    for i, j in candidate_pairs(profiles, vocabulary):
        a, b = candidates[i], candidates[j]
        if a.source == b.source or abs(a.published - b.published) > window:
            continue
        m = compare(profiles[i], profiles[j], vocabulary)
        if m.same:
            matches[i, j] = m.score

    def key(pair: tuple[int, int]) -> tuple[float, int, int]:
        ids = sorted((candidates[pair[0]].id, candidates[pair[1]].id))
        return (-matches[pair], ids[0], ids[1])

    group_of = list(range(len(candidates)))
    members: dict[int, list[int]] = {i: [i] for i in range(len(candidates))}
    for i, j in sorted(matches, key=key):
        gi, gj = group_of[i], group_of[j]
        if gi == gj:
            continue
        if _can_join(members[gi], members[gj], matches, candidates, window):
            for k in members[gj]:
                group_of[k] = gi
            members[gi] += members.pop(gj)

    def order(i: int) -> tuple[datetime, int]:
        return (candidates[i].published, i)

    groups = [sorted(group, key=order) for group in members.values()]
    groups.sort(key=lambda g: g[0])
    return [StoryGroup(candidates[g[0]].id, tuple(candidates[k].id for k in g[1:])) for g in groups]


def _can_join(
    left: list[int],
    right: list[int],
    matches: Mapping[tuple[int, int], float],
    candidates: Sequence[Candidate],
    window: timedelta,
) -> bool:
    joined = [candidates[k] for k in left + right]
    if len({c.source for c in joined}) < len(joined):
        return False
    if max(c.published for c in joined) - min(c.published for c in joined) > window:
        return False
    return all((min(i, j), max(i, j)) in matches for i in left for j in right)
