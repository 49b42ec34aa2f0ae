"""The HTML report in headless Chromium (Debian's /usr/bin/chromium, never a downloaded browser):
no console errors, and the loss-curve image is visible."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from smoltune.report.html import render_html
from smoltune.report.markdown import LOSS_CURVE, render_report
from smoltune.report.plots import loss_curve_png
from tests.report.test_report import make_summary

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def test_report_html_renders_in_chromium(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: `make test` installs Debian's chromium package")
    summary = make_summary()
    page_html = render_html(
        render_report(summary, []), {LOSS_CURVE: loss_curve_png({"r1": summary["train"]["losses"]})}, "r1"
    )
    report = tmp_path / "report.html"
    report.write_text(page_html)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(report.as_uri())
        image = page.locator("img[alt='Loss curve']")
        assert image.is_visible()
        assert page.evaluate("document.querySelector(\"img[alt='Loss curve']\").naturalWidth") > 100
        assert page.locator("table").count() >= 4
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert errors == []
