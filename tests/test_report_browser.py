"""The report of a trained checkpoint in a real browser (headless Chromium, no new Python
dependencies): every image loads, the page raises no script or console errors and fits a
laptop-wide window; a screenshot is saved beside it (``report/summary.png``) and, when
``CONVLSTM_ARTIFACTS`` names a folder, copied there for CI to keep."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from convlstm.config import Config, apply_overrides
from convlstm.evaluation import evaluate_checkpoint
from convlstm.training import train

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
LAPTOP = (1366, 768)  # a common laptop screen, in CSS pixels

# Injected first into a copy of the page: collects script errors, resources that failed to load
# and console.error calls.
_COLLECT = (
    "<script>window.__errors=[];"
    "window.addEventListener('error',function(e){var t=e.target;window.__errors.push("
    "t&&t!==window&&t.tagName?'failed to load '+t.tagName+' '+(t.alt||''):String(e.message))},"
    "true);"
    "var ce=console.error;console.error=function(){"
    "window.__errors.push(Array.prototype.join.call(arguments,' '));ce.apply(console,arguments)};"
    "</script>"
)
# Injected last: after loading, writes what it found into the DOM, which --dump-dom prints.
_REPORT = (
    "<script>window.addEventListener('load',function(){"
    "var images=[].slice.call(document.images).map(function(i){"
    "return {alt:i.alt,width:i.naturalWidth,height:i.naturalHeight}});"
    "var out=document.createElement('pre');out.id='probe';out.textContent=JSON.stringify({"
    "images:images,errors:window.__errors,width:document.documentElement.scrollWidth,"
    "height:document.documentElement.scrollHeight});document.body.appendChild(out)})"
    "</script>"
)


def _browser() -> str:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    pytest.skip(
        "no Chromium here (none of " + ", ".join(BROWSERS) + " on PATH); .ci/run installs the "
        "Debian package 'chromium' where apt-get exists"
    )


def _chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        browser,
        "--headless",
        "--no-sandbox",  # CI containers run as root
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report folder of a tiny trained run, with event thresholds (an events table and a
    CSI curve) and two animated samples."""
    run = tmp_path_factory.mktemp("browser") / "run"
    config = apply_overrides(
        Config(),
        [
            "model.hidden_channels=[4]",
            "data.input_len=3",
            "data.horizon=3",
            "data.train_samples=8",
            "data.val_samples=4",
            "optim.batch_size=4",
            "optim.epochs=1",
            "run.progress=false",
            "run.eval_samples=0",
            "run.precision=fp32",
            "run.device=cpu",
        ],
    )
    result = train(config, run)
    evaluate_checkpoint(
        result.best_checkpoint,
        "moving_mnist",
        run / "report",
        num_samples=4,
        num_gifs=2,
        thresholds=[0.5],
        progress=False,
    )
    return run / "report"


@pytest.mark.usefixtures("one_thread")
def test_report_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    browser = _browser()
    page = (report / "summary.html").read_text(encoding="utf-8")
    assert "<link" not in page and 'src="data:image/' in page  # one self-contained file
    probe = tmp_path / "probe.html"
    probe.write_text(
        page.replace("<head>", "<head>" + _COLLECT, 1).replace("</body>", _REPORT + "</body>"),
        encoding="utf-8",
    )
    width, height = LAPTOP
    done = _chromium(
        browser,
        tmp_path / "profile",
        f"--window-size={width},{height}",
        "--dump-dom",
        probe.as_uri(),
    )
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the page's check did not run; DOM: {done.stdout[-1000:]}"
    state = json.loads(html.unescape(found.group(1)))

    figures = sorted((report / "curves").iterdir()) + sorted((report / "samples").iterdir())
    assert len(state["images"]) == len(figures) == 7  # 5 curves (csi too) and 2 animations
    for image, path in zip(state["images"], figures, strict=True):
        expected = Image.open(path).size
        assert (image["width"], image["height"]) == expected, (image, path.name)
    assert state["errors"] == []
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []
    assert state["width"] <= width, "the page is wider than a laptop screen"

    shot = report / "summary.png"
    _chromium(
        browser,
        tmp_path / "profile",
        f"--window-size={width},{state['height']}",
        "--hide-scrollbars",
        f"--screenshot={shot}",
        (report / "summary.html").as_uri(),
    )
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.size == (width, state["height"])
        colours = image.convert("L").getextrema()
    assert colours[0] < 100 < colours[1]  # drawn, not a blank page
    if artifacts := os.environ.get("CONVLSTM_ARTIFACTS"):
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts) / "report-summary.png")
