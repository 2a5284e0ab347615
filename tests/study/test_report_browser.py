"""Open the report in headless Chromium: no console errors, every figure drawn.

Needs Debian's ``chromium`` and ``chromium-driver`` packages
(``apt-get install -y chromium chromium-driver``) and the ``selenium`` Python package (the
``test`` extra). A missing browser fails the test with that message; it is never skipped.
Set ``AE4AD_SCREENSHOT_DIR`` to keep a full-page screenshot of the report there.
"""

from __future__ import annotations

import base64
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from study.report import write_report

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
from tests.helpers.synthetic import make_synthetic_run  # noqa: E402

CHROMIUM = os.environ.get("AE4AD_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("AE4AD_CHROMEDRIVER", "/usr/bin/chromedriver")
INSTALL_HINT = (
    "install Debian's browser and driver: `apt-get update && apt-get install -y chromium "
    "chromium-driver`, and `pip install selenium` (in the project's `test` extra)"
)


def _driver(profile_dir: Path):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail(f"selenium is not installed: {INSTALL_HINT}")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (Path(path).is_file() and os.access(path, os.X_OK)):
            pytest.fail(f"{path} not found: {INSTALL_HINT}")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile_dir}",
        "--window-size=1400,1000",
        "--hide-scrollbars",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _full_page_png(driver, path: Path) -> None:
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics["cssContentSize"]
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        },
    )
    path.write_bytes(base64.b64decode(shot["data"]))


def test_report_renders_in_chromium(tmp_path):
    run = make_synthetic_run(
        tmp_path / "browser",
        datasets=("phantom-k6", "RSNA"),
        models=("ae", "vae"),
        latent_dims=(1, 2, 4, 8, 16, 32, 64),
        seeds=(0, 1, 2),
        optuna_db=True,
        extra_statuses={"early-stopped": 2, "errored": 1},
    )
    report = write_report(run, n_boot=300, n_sim=2000)
    html = report.read_text(encoding="utf-8")
    n_figures = html.count('class="plotly-graph-div"')
    assert n_figures >= 9

    driver = _driver(tmp_path / "chromium-profile")
    try:
        driver.set_page_load_timeout(120)
        driver.get(report.as_uri())
        deadline = time.monotonic() + 120
        drawn = 0
        while time.monotonic() < deadline:
            drawn = driver.execute_script(
                "return document.querySelectorAll('.js-plotly-plot').length"
            )
            if drawn == n_figures:
                break
            time.sleep(0.5)
        assert drawn == n_figures, f"{drawn} of {n_figures} figures drawn"
        without_svg = driver.execute_script(
            "return [...document.querySelectorAll('.js-plotly-plot')]"
            ".filter(d => !d.querySelector('svg.main-svg')).map(d => d.id)"
        )
        assert without_svg == []
        declared = driver.execute_script(
            "return document.querySelector('meta[name=ae4ad-figures]').content"
        )
        assert int(declared) == n_figures

        # the entropy dropdown: every button's update applies without error and moves x
        result = driver.execute_script(
            """
            const gd = [...document.querySelectorAll('.js-plotly-plot')]
              .find(d => d.layout.updatemenus && d.layout.updatemenus.length);
            const buttons = gd.layout.updatemenus[0].buttons;
            const before = Array.from(gd.data[0].x);
            const last = buttons[buttons.length - 1];
            return Plotly.update(gd, last.args[0], last.args[1]).then(() => [
              buttons.length, JSON.stringify(before) !== JSON.stringify(Array.from(gd.data[0].x)),
              gd.layout.xaxis.title.text]);
            """
        )
        n_buttons, moved, x_title = result
        assert n_buttons == 5 and moved
        assert x_title == "intrinsic dimension of the latents (dimensions)"

        body = driver.find_element("tag name", "body").text
        assert "Verdicts" in body
        assert "phantom-k6/ae: supported: inverted U: over- and under-capacity drops" in body
        assert "Partial results" not in body

        errors = [
            e
            for e in driver.get_log("browser")
            if e.get("level") == "SEVERE" or "error" in str(e.get("type", "")).lower()
        ]
        assert errors == [], errors

        shot = tmp_path / "report.png"
        _full_page_png(driver, shot)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
        out_dir = os.environ.get("AE4AD_SCREENSHOT_DIR")
        if out_dir:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(out_dir) / "report.png")
    finally:
        driver.quit()
