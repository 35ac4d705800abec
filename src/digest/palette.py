"""Colours for mail and pages: the light and dark palettes, and contrast checked against WCAG 2.1."""

from __future__ import annotations

import re
from dataclasses import dataclass

HEX_COLOUR = re.compile(r"#[0-9A-Fa-f]{6}")


@dataclass(frozen=True)
class Palette:
    """Colours the templates paint with; kept here so their contrast is unit-tested."""

    page: str
    card: str
    text: str
    muted: str
    rule: str
    link: str


# Every text colour reaches 4.5:1 on both page and card (WCAG 2.1 SC 1.4.3).
LIGHT_PALETTE = Palette(
    page="#f3f4f6", card="#ffffff", text="#111827", muted="#4b5563", rule="#e5e7eb", link="#1a56db"
)


DARK_PALETTE = Palette(
    page="#111111", card="#1f2937", text="#f9fafb", muted="#d1d5db", rule="#374151", link="#93c5fd"
)


def contrast_ratio(foreground: str, background: str) -> float:
    """WCAG 2.1 contrast ratio of two #rrggbb colours, from 1.0 to 21.0."""
    lighter, darker = sorted((_luminance(foreground), _luminance(background)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def _luminance(colour: str) -> float:
    if not HEX_COLOUR.fullmatch(colour):
        raise ValueError(f"{colour!r} is not a #rrggbb colour")

    def channel(hex_pair: str) -> float:
        c = int(hex_pair, 16) / 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(colour[i : i + 2]) for i in (1, 3, 5))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def readable_on(background: str) -> str:
    """Button text colour: white or the near-black body text, else pure black, reaching 4.5:1.

    White or black always reaches at least 4.58:1 on any colour (the square root of 21).
    """
    light, dark = LIGHT_PALETTE.card, LIGHT_PALETTE.text
    best = light if contrast_ratio(light, background) >= contrast_ratio(dark, background) else dark
    if contrast_ratio(best, background) >= 4.5:
        return best
    return light if contrast_ratio(light, background) >= contrast_ratio("#000000", background) else "#000000"


def link_colour(accent: str) -> str:
    # An operator's pale accent would make links unreadable; fall back to body text.
    worst_background = min(
        (LIGHT_PALETTE.card, LIGHT_PALETTE.page), key=lambda bg: contrast_ratio(accent, bg)
    )
    return accent if contrast_ratio(accent, worst_background) >= 4.5 else LIGHT_PALETTE.text
