"""Subscription tokens and VERP return paths (STANDARDS items 14, 25, 29)."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from digest.tokens import new_subscription_token, parse_verp, verp_address

KEY = "test-secret-key-0123456789abcdef"
OLD_KEY = "old-secret-key-fedcba9876543210"
DOMAIN = "bounce.example.com"
URL_SAFE = re.compile(r"[A-Za-z0-9_-]+")


def test_subscription_token_is_url_safe_and_long() -> None:
    token = new_subscription_token()
    assert URL_SAFE.fullmatch(token)
    assert len(token) >= 43


def test_ten_thousand_subscription_tokens_are_unique() -> None:
    tokens = {new_subscription_token() for _ in range(10_000)}
    assert len(tokens) == 10_000
    assert all(URL_SAFE.fullmatch(t) and len(t) >= 43 for t in tokens)


@pytest.mark.parametrize("delivery_id", [0, 1, 17, 2**31 - 1, 10**15])
def test_verp_address_round_trips(delivery_id: int) -> None:
    address = verp_address(delivery_id, KEY, DOMAIN)
    assert re.fullmatch(r"bounces\+\d+\.[0-9a-f]{10}@bounce\.example\.com", address)
    assert parse_verp(address, [KEY]) == delivery_id
    assert parse_verp(f"<{address}>", [KEY]) == delivery_id


@given(delivery_id=st.integers(min_value=0, max_value=10**18))
def test_any_delivery_id_round_trips(delivery_id: int) -> None:
    assert parse_verp(verp_address(delivery_id, KEY, DOMAIN), [KEY]) == delivery_id


def test_every_one_character_change_to_the_hmac_is_rejected() -> None:
    address = verp_address(42, KEY, DOMAIN)
    local, domain = address.split("@")
    prefix, mac = local.rsplit(".", 1)
    for i, ch in enumerate(mac):
        for other in "0123456789abcdef":
            if other != ch:
                tampered = f"{prefix}.{mac[:i]}{other}{mac[i + 1 :]}@{domain}"
                assert parse_verp(tampered, [KEY]) is None, tampered


def test_a_changed_delivery_id_is_rejected() -> None:
    mac = verp_address(42, KEY, DOMAIN).split(".", 1)[1]
    assert parse_verp(f"bounces+43.{mac}", [KEY]) is None


def test_an_unknown_key_is_rejected() -> None:
    assert parse_verp(verp_address(42, "someone-elses-key", DOMAIN), [KEY]) is None
    assert parse_verp(verp_address(42, KEY, DOMAIN), []) is None


def test_an_upper_cased_address_still_parses() -> None:
    """Some MTAs fold the case of the local part."""
    address = verp_address(42, KEY, DOMAIN)
    assert parse_verp(address.upper(), [KEY]) == 42
    assert parse_verp(f"<{address.upper()}>", [KEY]) == 42


def test_a_rotated_key_list_still_verifies_old_addresses() -> None:
    old = verp_address(42, OLD_KEY, DOMAIN)
    new = verp_address(43, KEY, DOMAIN)
    assert parse_verp(old, [KEY, OLD_KEY]) == 42
    assert parse_verp(new, [KEY, OLD_KEY]) == 43
    assert parse_verp(old, [KEY]) is None


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        " ",
        "<>",
        "@",
        "bounces",
        "bounces+@bounce.example.com",
        "bounces+42@bounce.example.com",
        "bounces+42.@bounce.example.com",
        "bounces+42.zzzzzzzzzz@bounce.example.com",
        "bounces+42.0123456789",
        "bounces+-1.0123456789@bounce.example.com",
        "bounces+42.0123456789a@bounce.example.com",
        "reader@example.org",
        "bounces+reader=example.org@bounce.example.com",
        "\x00bounces+42.0123456789@x",
        "bounces+４２.0123456789@bounce.example.com",
        "MAILER-DAEMON",
    ],
)
def test_garbage_is_rejected(garbage: str) -> None:
    assert parse_verp(garbage, [KEY]) is None


@given(garbage=st.text(max_size=80))
def test_random_text_never_parses_or_raises(garbage: str) -> None:
    assert parse_verp(garbage, [KEY]) is None


@pytest.mark.parametrize("email_address", ["reader@example.org", "Zoë.Ångström+news@exämple.org"])
def test_the_address_never_contains_the_readers_email(email_address: str) -> None:
    """VERP encodes only the delivery id (unlike Postfix's user=domain form)."""
    address = verp_address(42, KEY, DOMAIN)
    encoded = base64.urlsafe_b64encode(email_address.encode()).decode().rstrip("=")
    local = email_address.split("@")[0]
    for form in (email_address, email_address.replace("@", "="), encoded, local):
        assert form.lower() not in address.lower()
