"""What a signup form or JSON body says, cleaned and checked before anything is stored."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from zoneinfo import ZoneInfo

from digest import readers, schedule
from digest.errors import AddressError, UsageError
from digest.models import topic_choice

MAX_LISTS = 20


NAME_MAX = 200


TEXT_MAX = 500


_BIDI_CONTROLS = {*range(0x202A, 0x202F), *range(0x2066, 0x206A)}


_CONTROL_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp", "Co", "Cn"})


_TRUE = frozenset({"1", "true", "on", "yes", "y"})


def clean_text(value: str, max_len: int = TEXT_MAX) -> str:
    """One safe line: control, surrogate, separator and bidi-override characters dropped, spaces collapsed."""
    kept = (
        " " if unicodedata.category(ch) in _CONTROL_CATEGORIES else ch
        for ch in value
        if ord(ch) not in _BIDI_CONTROLS
    )
    return " ".join("".join(kept).split())[:max_len]


def clean_name(value: str) -> str:
    return clean_text(value, NAME_MAX)


def truthy(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value == 1
    return isinstance(value, str) and value.strip().lower() in _TRUE


@dataclass(frozen=True)
class Signup:
    """A validated signup request: who, which lists, how often, and the consent record."""

    address: str
    lists: tuple[str, ...]
    prefs: readers.ReaderPrefs
    consent: readers.Consent
    topics: Mapping[str, str | None] = field(default_factory=dict)  # list slug → topic choice (absent: all)


class SignupInvalid(UsageError):
    """A signup request has fields a reader must fix; `fields` maps each to its message."""

    def __init__(self, fields: Mapping[str, str]) -> None:
        self.fields = dict(fields)
        super().__init__("; ".join(f"{k}: {v}" for k, v in self.fields.items()))


def _int_field(value: object, low: int, high: int, names: Sequence[str] = ()) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        text = value.strip().lower()
        if text[:3] in names:
            return names.index(text[:3])
        text = text.split(":")[0]
        if not text.isdigit() or len(text) > 3:
            raise ValueError
        number = int(text)
    else:
        raise ValueError
    if not low <= number <= high:
        raise ValueError
    return number


def _str_field(value: object, max_len: int = TEXT_MAX) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TypeError
    return clean_text(value, max_len)


def parse_signup(
    fields: Mapping[str, object],
    known_lists: Sequence[str],
    consent: readers.Consent,
    *,
    require_list: bool = True,
    offered_topics: Mapping[str, Sequence[str]] | None = None,
) -> Signup:
    """Validate raw form or JSON fields; SignupInvalid names every field that needs fixing."""
    errors: dict[str, str] = {}
    address = ""
    raw_email = fields.get("email")
    if not isinstance(raw_email, str) or not raw_email.strip():
        errors["email"] = "Enter your email address."
    elif any(unicodedata.category(ch) in ("Cs", "Cc") for ch in raw_email.strip()):
        errors["email"] = "Enter a single email address, such as ann@example.com."
    else:
        try:
            address, _ = readers.normalize_address(raw_email)
        except AddressError:
            errors["email"] = "Enter a valid email address, such as ann@example.com."
    name = ""
    try:
        name = clean_name(_str_field(fields.get("name"), 1000))
    except TypeError:
        errors["name"] = "The name must be text."
    raw_lists = fields.get("list")
    if raw_lists is None:
        raw_lists = fields.get("lists")
    if isinstance(raw_lists, str):
        raw_lists = [raw_lists]
    slugs: list[str] = []
    if not isinstance(raw_lists, list) or not all(isinstance(x, str) for x in raw_lists):
        errors["list"] = "Choose at least one list."
    else:
        for slug in raw_lists:
            if slug not in known_lists:
                errors["list"] = "Choose lists from this page."
            elif slug not in slugs:
                slugs.append(slug)
        if not slugs and require_list and "list" not in errors:
            errors["list"] = "Choose at least one list."
        if len(slugs) > MAX_LISTS:
            errors["list"] = f"Choose at most {MAX_LISTS} lists."
    cadence = fields.get("cadence") or "default"
    if cadence not in ("default", "daily", "weekly"):
        errors["cadence"] = "Choose how often: as the list sends, daily or weekly."
        cadence = "default"
    weekday = send_hour = None
    try:
        weekday = _int_field(fields.get("weekday"), 0, 6, schedule.WEEKDAYS)
    except (ValueError, TypeError):
        errors["weekday"] = "Choose a day of the week."
    try:
        send_hour = _int_field(fields.get("send_hour"), 0, 23)
    except (ValueError, TypeError):
        errors["send_hour"] = "Choose an hour from 0 to 23."
    timezone = None
    try:
        tz_text = _str_field(fields.get("timezone"), 64)
    except TypeError:
        tz_text = ""
        errors["timezone"] = "Enter a time zone such as Europe/Berlin."
    if tz_text:
        if valid_zone(tz_text):
            timezone = tz_text
        else:
            errors["timezone"] = "Enter a time zone such as Europe/Berlin."
    if cadence != "default" and send_hour is None and "send_hour" not in errors:
        errors["send_hour"] = "Choose the hour your digest should arrive."
    if cadence == "weekly" and weekday is None and "weekday" not in errors:
        errors["weekday"] = "Choose the day your weekly digest should arrive."
    if not truthy(fields.get("consent")):
        errors["consent"] = "Tick the box to agree, or we cannot send you anything."
    topics: dict[str, str | None] = {}
    try:
        topics = parse_topics(fields.get("topics"), slugs, offered_topics or {})
    except ValueError as exc:
        errors["topics"] = str(exc)
    if errors:
        raise SignupInvalid(errors)
    if cadence == "default":
        send_hour = weekday = None
    elif cadence == "daily":
        weekday = None
    prefs = readers.ReaderPrefs(
        name=name, cadence=cadence, weekday=weekday, send_hour=send_hour, timezone=timezone
    )
    return Signup(address, tuple(slugs), readers.validate_prefs(prefs), consent, topics)


def parse_topics(
    raw: object, lists: Sequence[str], offered: Mapping[str, Sequence[str]]
) -> dict[str, str | None]:
    """Each chosen list's topic choice, from `topics`: absent (every topic), or a list (or
    comma-separated text) of topic slugs, or of `list/topic` where the form names the list. A list
    none of whose topics is named gets every topic; naming all of them is every topic too. A name
    no chosen list offers is a ValueError a reader can act on."""
    if raw is None or raw == "" or raw == []:
        return {}
    if isinstance(raw, str):
        raw = raw.split(",")
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw) or len(raw) > 200:
        raise ValueError("Choose topics from this page.")
    named: dict[str, set[str]] = {slug: set() for slug in lists}
    for entry in (x.strip() for x in raw):
        if not entry:
            continue
        in_list, _, topic = entry.rpartition("/")
        targets = [in_list] if in_list else [slug for slug in lists if entry in offered.get(slug, ())]
        if not targets or any(topic not in offered.get(t, ()) for t in targets):
            raise ValueError(f"Choose topics the list offers ({_offer(lists, offered)}).")
        for t in targets:
            if t in named:  # ticked under a list the reader did not choose: nothing to keep
                named[t].add(topic)
    return {slug: topic_choice(chosen, offered.get(slug, ())) for slug, chosen in named.items() if chosen}


def _offer(lists: Sequence[str], offered: Mapping[str, Sequence[str]]) -> str:
    return "; ".join(f"{slug}: {', '.join(offered[slug])}" for slug in lists if offered.get(slug)) or "none"


@lru_cache(maxsize=1024)
def valid_zone(name: str) -> bool:
    if not re.fullmatch(r"[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*", name) or len(name) > 64:
        return False
    try:
        ZoneInfo(name)
    except (KeyError, ValueError, OSError):
        return False
    return True
