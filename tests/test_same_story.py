"""One story reported by several sources is shown once; two different stories never collapse."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from digest.same_story import (
    Candidate,
    StoryGroup,
    Vocabulary,
    candidate_pairs,
    compare,
    content_words,
    group_same_stories,
    profile,
    stem,
)

NOON = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)

FERRY = [
    (
        "Harbour News",
        "Harbour ferry timetable extended into winter",
        "The harbour ferry will keep its Tuesday and Thursday sailings through the winter after a council vote.",
    ),
    (
        "Coast Gazette",
        "Ferry sailings to continue through winter, council decides",
        "Tuesday and Thursday harbour ferry sailings will continue through the winter, the council decided in a vote.",
    ),
    (
        "Bay Radio",
        "Council keeps winter ferry timetable",
        "After a vote, the council will keep the harbour ferry's Tuesday and Thursday sailings running through winter.",
    ),
]
OTHERS = [
    (
        "Transport Desk",
        "Night bus route 12 to return in spring",
        "The night bus on route 12 returns in March, the transport authority said, after a trial last year.",
    ),
    (
        "Heritage Post",
        "Victorian market hall reopens after restoration",
        "The market hall reopened on Saturday with forty stalls after two years of restoration work.",
    ),
    (
        "Sport Desk",
        "Harbour rugby club wins regional cup",
        "The harbour rugby club beat the visitors 21-17 in the regional cup final on Sunday afternoon.",
    ),
    (
        "Rowing News",
        "Rowing regatta draws record entries",
        "The autumn rowing regatta drew a record 140 crews to the harbour this weekend.",
    ),
    (
        "Council Notes",
        "Council sets budget with rates rise of three percent",
        "Councillors approved a rates rise of three percent to fund road repairs and the library.",
    ),
]


def candidates_of(
    rows: list[tuple[str, str, str]], first_id: int = 1, published: datetime = NOON
) -> list[Candidate]:
    return [
        Candidate(first_id + n, source, title, summary, published, f"https://example.org/{first_id + n}")
        for n, (source, title, summary) in enumerate(rows)
    ]


def groups_as_sets(groups: list[StoryGroup]) -> set[frozenset[int]]:
    return {frozenset(g.ids) for g in groups}


def test_the_ferry_story_from_three_sources_is_shown_once_and_the_rest_stay_apart() -> None:
    stories = candidates_of(FERRY + OTHERS)

    groups = group_same_stories(stories)

    assert groups[0] == StoryGroup(1, (2, 3))
    assert [g.ids for g in groups[1:]] == [(4,), (5,), (6,), (7,), (8,)]


def test_the_earliest_report_leads_and_the_others_follow_in_time_order() -> None:
    harbour, coast, bay = candidates_of(FERRY)
    stories = [
        replace(harbour, published=NOON + timedelta(hours=5)),
        replace(coast, published=NOON + timedelta(hours=1)),
        replace(bay, published=NOON + timedelta(hours=3)),
    ]

    assert group_same_stories(stories) == [StoryGroup(2, (3, 1))]


def test_equal_times_leave_the_first_candidate_as_primary() -> None:
    stories = candidates_of(FERRY)

    assert group_same_stories(stories[::-1])[0].primary == 3


def test_two_reports_from_one_source_are_never_merged() -> None:
    (_, title_a, summary_a), (_, title_b, summary_b), bay = FERRY
    stories = candidates_of([("Harbour News", title_a, summary_a), ("Harbour News", title_b, summary_b), bay])

    groups = group_same_stories(stories)

    assert len(groups) == 2
    assert all(len({stories[i - 1].source for i in g.ids}) == len(g.ids) for g in groups)


def test_reports_further_apart_than_the_window_stay_apart() -> None:
    harbour, coast = candidates_of(FERRY[:2])
    later = replace(coast, published=NOON + timedelta(days=4))

    assert groups_as_sets(group_same_stories([harbour, later])) == {frozenset({1}), frozenset({2})}
    assert group_same_stories([harbour, later], window=timedelta(days=5)) == [StoryGroup(1, (2,))]


def test_different_route_numbers_keep_otherwise_alike_stories_apart() -> None:
    stories = candidates_of(
        [
            (
                "Transport Desk",
                "Night bus route 12 to return in spring",
                "The night bus on route 12 returns in spring, the transport authority said after a trial.",
            ),
            (
                "City News",
                "Night bus route 15 to return in spring",
                "The night bus on route 15 returns in spring, the transport authority said after a trial.",
            ),
        ]
    )
    a, b = (profile(s.title, s.summary) for s in stories)

    match = compare(a, b, Vocabulary.of([a, b]))

    assert match.score > 0.9
    assert match.veto.startswith("different numbers")
    assert len(group_same_stories(stories)) == 2


def test_different_match_scores_veto_a_merge() -> None:
    final = profile("Harbour rugby club wins cup", "The harbour rugby club won the cup 21-17 on Sunday.")
    semi = profile("Harbour rugby club wins cup", "The harbour rugby club won the cup 14-3 on Sunday.")

    assert not compare(final, semi, Vocabulary.of([final, semi])).same


@pytest.mark.parametrize(
    ("word", "stemmed"),
    [
        ("sailings", "sail"),
        ("decided", "decid"),
        ("decides", "decid"),
        ("ferry's", "ferry"),
        ("ferries", "ferry"),
        ("stopped", "stop"),
        ("bus", "bus"),
        ("crisis", "crisis"),
        ("churches", "church"),
        ("news", "new"),
    ],
)
def test_stemming_is_light_and_conservative(word: str, stemmed: str) -> None:
    assert stem(word) == stemmed


def test_accents_and_case_do_not_make_words_differ() -> None:
    assert content_words("Grève des contrôleurs aériens") == content_words("GREVE des controleurs aeriens")


STORIES = Path(__file__).parent / "fixtures" / "stories"
# Different stories of one subject that repeat the first report's words: measured, not wanted.
# Fixing one is welcome; the test then asks for this set to shrink.
KNOWN_FALSE_MERGES = {
    "same river, same town, pollution vs clean-up",
    "French: strike called vs strike ends",
    "same project, funding found vs costs overrun",
}


def load_pairs(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (STORIES / name).read_text().splitlines() if line.strip()]


def grouped_pairs(pairs: list[dict[str, Any]]) -> tuple[int, set[str]]:
    """Group every story of `pairs` as one digest's candidates: (same-story pairs merged, notes of
    different-story pairs merged)."""
    ids: dict[tuple[str, str, str], int] = {}
    for p in pairs:
        for side in ("a", "b"):
            ids.setdefault((p[side]["source"], p[side]["title"], p[side]["summary"]), len(ids))
    stories = [Candidate(i, *key, NOON) for key, i in ids.items()]
    group_of = {i: n for n, g in enumerate(group_same_stories(stories)) for i in g.ids}
    merged, false_merges = 0, set()
    for p in pairs:
        a, b = (ids[p[side]["source"], p[side]["title"], p[side]["summary"]] for side in ("a", "b"))
        if group_of[a] == group_of[b]:
            if p["same"]:
                merged += 1
            else:
                false_merges.add(p["note"])
    return merged, false_merges


def test_the_corpus_has_enough_labelled_pairs_of_each_kind() -> None:
    pairs = load_pairs("pairs.jsonl")
    assert sum(1 for p in pairs if p["same"]) >= 25
    assert sum(1 for p in pairs if not p["same"]) >= 35


def test_no_two_different_stories_of_the_corpus_are_merged_and_most_same_stories_are() -> None:
    pairs = load_pairs("pairs.jsonl")
    same = sum(1 for p in pairs if p["same"])

    merged, false_merges = grouped_pairs(pairs)

    print(
        f"pairs.jsonl grouped: {len(false_merges)} false merges, recall {merged / same:.3f} ({merged} of {same})"
    )
    assert not false_merges
    assert merged / same >= 0.9  # 34 of 35 when written


def test_pairs_written_after_tuning_merge_no_more_different_stories_than_measured() -> None:
    pairs = load_pairs("held_out.jsonl")
    same = sum(1 for p in pairs if p["same"])

    merged, false_merges = grouped_pairs(pairs)

    print(f"held_out.jsonl grouped: false merges {sorted(false_merges)}, recall {merged / same:.3f}")
    assert false_merges <= KNOWN_FALSE_MERGES
    assert merged / same >= 0.8  # 6 of 6 when written


def test_a_large_window_scores_only_pairs_that_share_distinctive_words() -> None:
    rng = random.Random(20261202)
    words = [f"word{n}" for n in range(6000)]
    common = ["council", "police", "harbour", "school", "city"]
    rows = []
    for n in range(1_950):
        title = " ".join(rng.sample(words, 5) + rng.sample(common, 1))
        rows.append((f"source{n % 40}", title, " ".join(rng.sample(words, 14) + rng.sample(common, 2))))
    planted = rows[:50]
    rows += [(f"wire{n}", t, s) for n, (_, t, s) in enumerate(planted)]
    stories = candidates_of(rows)
    profiles = [profile(s.title, s.summary) for s in stories]

    pairs = candidate_pairs(profiles, Vocabulary.of(profiles))
    groups = groups_as_sets(group_same_stories(stories))

    assert len(pairs) < len(stories) * 5  # against ~2,000,000 for every pair
    assert {frozenset({n + 1, 1_951 + n}) for n in range(50)} <= groups


TOPIC_WORDS = ["ferry", "council", "harbour", "winter", "vote", "bus", "route", "market", "hall", "rugby"]
story_rows = st.lists(
    st.tuples(
        st.sampled_from(["North", "South", "East"]),
        st.lists(st.sampled_from(TOPIC_WORDS), min_size=2, max_size=6).map(" ".join),
        st.lists(st.sampled_from([*TOPIC_WORDS, "the", "on", "12", "Tuesday"]), max_size=12).map(" ".join),
        st.integers(min_value=0, max_value=100),
    ),
    max_size=12,
)


def candidates_from(rows: list[tuple[str, str, str, int]]) -> list[Candidate]:
    return [
        Candidate(n, source, title, summary, NOON + timedelta(hours=hours))
        for n, (source, title, summary, hours) in enumerate(rows)
    ]


@settings(max_examples=200, deadline=None)
@given(story_rows, st.randoms(use_true_random=False))
def test_grouping_does_not_depend_on_the_order_of_candidates(
    rows: list[tuple[str, str, str, int]], rnd: random.Random
) -> None:
    stories = candidates_from(rows)
    shuffled = stories[:]
    rnd.shuffle(shuffled)

    assert groups_as_sets(group_same_stories(shuffled)) == groups_as_sets(group_same_stories(stories))


@settings(max_examples=200, deadline=None)
@given(story_rows)
def test_every_candidate_is_in_exactly_one_group_of_distinct_sources_within_the_window(
    rows: list[tuple[str, str, str, int]],
) -> None:
    stories = candidates_from(rows)

    groups = group_same_stories(stories, window=timedelta(hours=48))

    ids = [i for g in groups for i in g.ids]
    assert sorted(ids) == [s.id for s in stories]
    for g in groups:
        members = [stories[i] for i in g.ids]
        assert len({s.source for s in members}) == len(members)
        assert max(s.published for s in members) - min(s.published for s in members) <= timedelta(hours=48)
        assert all(members[0].published <= s.published for s in members)


@settings(max_examples=200, deadline=None)
@given(story_rows)
def test_stories_sharing_no_content_word_are_never_merged(rows: list[tuple[str, str, str, int]]) -> None:
    stories = candidates_from(rows)

    for g in group_same_stories(stories):
        for i in g.ids:
            for j in g.ids:
                a, b = stories[i], stories[j]
                if i != j:
                    assert set(content_words(f"{a.title} {a.summary}")) & set(
                        content_words(f"{b.title} {b.summary}")
                    )
