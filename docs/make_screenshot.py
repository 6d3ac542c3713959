"""Regenerate docs/app.png: the demo app after a text search, with a picked result's heatmaps.

    softclip demo --no-launch && python docs/make_screenshot.py [--demo-dir DIR]

Needs Debian's Chromium at /usr/bin/chromium and the playwright Python package (no browser download).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright

from softclip.app.app import build_app, serve
from softclip.app.browser import launch_chromium
from softclip.app.demo import default_folder, served_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-dir", type=Path, default=default_folder())
    parser.add_argument("--query", default="a red circle and a blue star")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "app.png")
    args = parser.parse_args()
    demo = args.demo_dir
    app = serve(build_app(demo / "index", served_checkpoint(demo), demo / "export"), port=7861, block=False)
    try:
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(120_000)
            page.goto(app.local_url)
            page.locator("#query textarea").fill(args.query)
            page.locator("#search").click()
            page.locator("#results img").first.wait_for()
            page.locator("#results img").first.click()
            page.locator("#heatmaps img").nth(2).wait_for()
            page.wait_for_timeout(1500)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
    finally:
        app.close()
    print(args.out)


if __name__ == "__main__":
    main()
