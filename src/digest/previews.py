"""PNG previews of a digest's HTML in headless Chromium: phone and desktop, light and dark.

For operators (`digest preview LIST --png DIR`) and for the email-quality tests, which save them
to tests/artifacts/ for a person to look at. A browser is not an email client: this shows the
layout, the reflow at 375px and the `prefers-color-scheme: dark` rules (which Apple Mail and
Outlook for macOS/iOS honour), not what Gmail or Outlook for Windows would do.

Playwright is imported only when a preview is asked for, so the service runs without it. It
drives the system's Chromium (Debian's /usr/bin/chromium); nothing is downloaded. The page is
loaded with JavaScript disabled and every request outside the document refused, so rendering
neither runs feed content nor fetches remote images or tracking pixels: every image is drawn
as a plain grey box of its declared size, which shows the layout with images loaded.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from playwright.sync_api import Route

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
)
_TIMEOUT_MS = 30_000
# A 16x9 #9ca3af PNG, scaled by the browser to each image's width (and height, where set).
_PLACEHOLDER_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAABAAAAAJCAIAAAC0SDtlAAAAFElEQVR42mOYs3g9SYhhVMOg0AAAXHoV8PA9Hd0AAAAASUVORK5CYII="
)


@dataclass(frozen=True)
class Viewport:
    name: str
    width: int
    height: int


PHONE = Viewport("phone", 375, 812)
DESKTOP = Viewport("desktop", 800, 1000)
VIEWPORTS = (PHONE, DESKTOP)
SCHEMES: tuple[Literal["light", "dark"], ...] = ("light", "dark")


class PreviewError(RuntimeError):
    """Chromium or Playwright is missing, or the page could not be rendered."""


def render_pngs(html: str, out_dir: Path) -> list[Path]:
    """Full-page PNGs of `html` at 375px and 800px wide, light and dark; returns their paths.

    Files are named `{phone,desktop}-{light,dark}.png` inside `out_dir` (created if needed).
    """
    return render_many({".": html}, out_dir)["."]


def render_many(documents: Mapping[str, str], out_dir: Path) -> dict[str, list[Path]]:
    """`render_pngs` for several documents in one browser session, each in `out_dir/<name>/`.

    Starting Playwright and Chromium costs a couple of seconds; this pays it once.
    """
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise PreviewError("PNG previews need Playwright: pip install playwright") from exc
    if not CHROMIUM.exists():
        raise PreviewError(f"PNG previews need Chromium at {CHROMIUM} (apt-get install chromium)")
    written: dict[str, list[Path]] = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS), headless=True
            )
            try:
                # One page for every shot: a new page costs Chromium most of a second.
                context = browser.new_context(
                    viewport={"width": DESKTOP.width, "height": DESKTOP.height},
                    java_script_enabled=False,
                    device_scale_factor=1,
                )
                page = context.new_page()
                # No network at all: images get the grey box, anything else fails.
                page.route("**/*", _offline)
                for name, html in documents.items():
                    target = out_dir / name
                    target.mkdir(parents=True, exist_ok=True)
                    page.set_content(html, wait_until="load", timeout=_TIMEOUT_MS)
                    paths = written.setdefault(name, [])
                    for viewport in VIEWPORTS:
                        page.set_viewport_size({"width": viewport.width, "height": viewport.height})
                        for scheme in SCHEMES:
                            page.emulate_media(color_scheme=scheme)
                            path = target / f"{viewport.name}-{scheme}.png"
                            page.screenshot(path=str(path), full_page=True, timeout=_TIMEOUT_MS)
                            paths.append(path)
                context.close()
            finally:
                browser.close()
    except PlaywrightError as exc:
        raise PreviewError(f"Chromium could not render the preview: {exc}") from exc
    return written


def _offline(route: Route) -> None:
    if route.request.resource_type == "image":
        route.fulfill(status=200, content_type="image/png", body=_PLACEHOLDER_PNG)
    else:
        route.abort()
