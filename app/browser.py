"""Debian's Chromium, headless, the one browser the browser test and ``docs/make_screenshot.py`` drive.

Playwright is asked for ``/usr/bin/chromium`` and never downloads a browser of its own; the flags keep the
browser from calling any host (updates, sync) so a page's own requests are the only traffic.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def launch_chromium(playwright: Any) -> Any:
    """A headless Chromium from a running ``sync_playwright()`` context."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
