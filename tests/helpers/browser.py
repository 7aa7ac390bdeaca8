"""Headless Chromium for the MLflow UI tests (Debian's chromium and chromium-driver; .ci/run installs them)."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest


def chromium_or_skip() -> tuple[str, str]:
    """(browser, driver) paths; skips the test when they are missing, or fails it under ATTN_REQUIRE_CHROMIUM."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    if os.environ.get("ATTN_REQUIRE_CHROMIUM"):
        pytest.fail("ATTN_REQUIRE_CHROMIUM is set but chromium or chromedriver is missing")
    pytest.skip("no Chromium here: install Debian's chromium and chromium-driver (.ci/run does)")


@contextlib.contextmanager
def headless_chromium(profile: Path):
    """A Selenium Chrome driver on headless Chromium with its own profile folder; quit on exit."""
    found = chromium_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1000",
                f"--user-data-dir={profile}"):
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(found[1]), options=options)
    try:
        yield browser
    finally:
        browser.quit()
