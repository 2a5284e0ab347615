"""Open the comparison page in headless Chromium: no console errors, the figure drawn
with both runs' curves, both runs' verdicts on the page.

Needs Debian's ``chromium`` and ``chromium-driver`` packages and the ``selenium`` Python
package, as ``test_report_browser.py`` (whose driver it uses); a missing browser fails
the test, it is never skipped. Set ``AE4AD_SCREENSHOT_DIR`` to keep a full-page
screenshot of the page there.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from study.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root
from tests.helpers.synthetic import make_synthetic_run  # noqa: E402
from tests.study.test_report_browser import _driver, _full_page_png  # noqa: E402


def test_compare_page_renders_in_chromium(tmp_path):
    common = dict(latent_dims=(1, 2, 4, 8, 16, 32, 64), examples=False, scores=False)
    a = make_synthetic_run(tmp_path / "latent", datasets=("phantom-k6",), seeds=(0, 1), **common)
    b = make_synthetic_run(
        tmp_path / "entropy", datasets=("phantom-k6", "BraTS"), seeds=(0, 1, 2), seed=5, **common
    )
    out = tmp_path / "compare.html"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0

    driver = _driver(tmp_path / "chromium-profile")
    try:
        driver.set_page_load_timeout(120)
        driver.get(out.as_uri())
        deadline = time.monotonic() + 120
        drawn = 0
        while time.monotonic() < deadline and not drawn:
            drawn = driver.execute_script(
                "return document.querySelectorAll('.js-plotly-plot svg.main-svg').length"
            )
            time.sleep(0.5)
        assert drawn, "the figure was not drawn"
        curves = driver.execute_script(
            "const gd = document.querySelector('.js-plotly-plot');"
            "return gd.data.filter(t => t.mode === 'lines+markers')"
            ".map(t => [t.name, t.xaxis || 'x', t.y.filter(v => v !== null).length]);"
        )
        assert sorted(c[:2] for c in curves) == [
            ["entropy", "x"], ["entropy", "x2"], ["latent", "x"],
        ]  # fmt: skip
        assert all(n == 7 for *_, n in curves)
        # every curve is drawn as an SVG path in the plot
        paths = driver.execute_script(
            "return document.querySelectorAll('.js-plotly-plot .scatterlayer .trace').length"
        )
        assert paths >= 3
        body = driver.find_element("tag name", "body").text
        assert "Verdicts side by side" in body
        rows = driver.execute_script(
            "return [...document.querySelectorAll('#verdicts tbody tr')]"
            ".map(r => r.innerText.replace(/\\s+/g, ' '))"
        )
        assert len(rows) == 3
        assert any("latent" in r and "SUPPORTED" in r for r in rows)
        assert sum("entropy" in r for r in rows) == 2
        errors = [
            e
            for e in driver.get_log("browser")
            if e.get("level") == "SEVERE" or "error" in str(e.get("type", "")).lower()
        ]
        assert errors == [], errors

        shot = tmp_path / "compare.png"
        _full_page_png(driver, shot)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
        out_dir = os.environ.get("AE4AD_SCREENSHOT_DIR")
        if out_dir:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(out_dir) / "compare.png")
    finally:
        driver.quit()
