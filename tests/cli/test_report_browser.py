"""Open the report of a tiny `cellvi run` in headless Chromium: images load, no console errors, not blank."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

SCREENSHOT = Path(os.environ.get("CELLVI_SCREENSHOT_DIR", "/tmp")) / "cellvi_report_screenshot.png"


def _driver():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if not (chromium and chromedriver):
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium and chromium-driver (see .ci/run)")
        pytest.skip("chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1366,2600",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(chromedriver), options=opts)


def test_report_renders_in_a_real_browser(tiny_run):
    from PIL import Image

    driver = _driver()
    try:
        driver.get((tiny_run / "report.html").resolve().as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])"
        )
        sections = driver.execute_script("return Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        driver.save_screenshot(str(SCREENSHOT))
    finally:
        driver.quit()
    assert len(images) >= 4, images  # UMAPs, training curves, PAGA, dot plot
    assert all(done and w > 0 and h > 0 for _, done, w, h in images), images
    assert errors == [], errors
    assert "Marker genes" in sections and "Run summary" in sections
    pixels = np.asarray(Image.open(SCREENSHOT).convert("L"), dtype=np.float64)
    assert pixels.std() > 10, f"screenshot looks blank (pixel SD {pixels.std():.1f})"
