"""A written report page as a person sees it in Debian's Chromium (headless): every picture
loaded, the text on the screen, a full-page screenshot kept."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var out = {images: [], text: document.body.innerText};
  document.querySelectorAll('img').forEach(function (im) {
    out.images.push({src: im.getAttribute('src'), id: im.id, w: im.naturalWidth,
                     h: im.naturalHeight});
  });
  var pre = document.createElement('pre');
  pre.id = 'image-check';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-quic", "--hide-scrollbars"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is not installed: CI must check the report in a browser (apt-get install chromium)")
    pytest.skip("chromium not installed")


def run_chromium(args: list[str]) -> str:
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                                capture_output=True, text=True, timeout=120)
    return result.stdout


def check_in_browser(page: Path, screenshot: Path) -> dict:
    """``{"images": [every <img> as Chromium loaded it], "text": the page's visible text}``; a
    full-page screenshot is kept at ``screenshot``."""
    probe = page.with_name("_image_check.html")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", CHECK_SCRIPT + "</body>"),
                     encoding="utf-8")
    try:
        dom = run_chromium(["--virtual-time-budget=10000", "--dump-dom", probe.as_uri()])
    finally:
        probe.unlink()
    found = re.search(r'<pre id="image-check">(.*?)</pre>', dom, re.S)
    assert found, f"the check script did not run; chromium printed: {dom[:500]}"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.unlink(missing_ok=True)
    run_chromium(["--window-size=1200,4000", f"--screenshot={screenshot}", page.as_uri()])
    assert screenshot.exists() and screenshot.stat().st_size > 10_000
    return json.loads(html.unescape(found.group(1)))


def assert_report_loads(page: Path, screenshot: Path) -> dict:
    """The report at ``page`` in Chromium: every picture loaded, the confusion matrix drawn."""
    seen = check_in_browser(page, screenshot)
    images = seen["images"]
    assert len(images) == len(re.findall(r"<img ", page.read_text()))
    broken = [im["src"] for im in images if im["w"] <= 0]
    assert not broken, f"images that did not load: {broken}"
    confusion = [im for im in images if im["id"] == "confusion-matrix"]
    assert confusion and confusion[0]["w"] > 300
    return seen
