"""The review site (`dva report`) over real render and evaluate outputs of the micro model, and its check in
headless Chromium: no console errors, every image and video loads, the video has a duration, the page is not blank.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest

from pipeline.report.site import PAGE_FILE, write_site
from pipeline.runs.artifacts import CONTACT_SHEET_FILE, SIDE_BY_SIDE_FILE
from stages.edit import edit_videos
from stages.evaluate import evaluate_edit
from stages.render import render_video

EDITS = {
    "anon": {"kind": "reference", "away": True, "strength": 1.0},
    "zero": {"kind": "reference", "away": True, "strength": 0.0},
}
INSTALL = "apt-get install -y chromium chromium-driver && pip install selenium"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# A page with nothing drawn has one colour (std 0); text, a thumbnail table and plots give tens of grey levels.
MIN_SCREENSHOT_STD = 5.0
MEDIA_WAIT_S = 20  # a busy 2-core machine loads a 24-frame clip in well under a second


@pytest.fixture(scope="module")
def dataset(micro_model, micro_inversion, sample_run, tmp_path_factory) -> Path:
    """A DVC-layout data folder: both edits rendered, only `anon` evaluated (the missing piece to report)."""
    root = tmp_path_factory.mktemp("report") / "data"
    params = micro_model.settings(edits=EDITS)
    edits = {name: root / "edit" / "sample" / name for name in EDITS}
    # One decoding pass for both edits (the costly part), then each is rendered.
    edit_videos(edits, params, micro_model.checkpoint, sample_run.align, sample_run.encode, micro_inversion,
                progress=False)
    for name, edit in edits.items():
        render_video(sample_run.extract, sample_run.align, micro_inversion, edit, root / "render" / "sample" / name,
                     params.render, progress=False)
    evaluate_edit(sample_run.align, sample_run.encode, micro_inversion, root / "edit" / "sample" / "anon",
                  root / "render" / "sample" / "anon", root / "evaluate" / "sample" / "anon", params.encode,
                  progress=False)
    return root


@pytest.fixture(scope="module")
def site(dataset, tmp_path_factory) -> Path:
    return write_site(dataset, tmp_path_factory.mktemp("site") / "report", progress=False).parent


class _References(HTMLParser):
    def __init__(self):
        super().__init__()
        self.references: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.references += [value for name, value in attrs if name in ("src", "href") and value]


def _references(page: Path) -> list[str]:
    parser = _References()
    parser.feed(page.read_text())
    return parser.references


def test_every_reference_is_a_file_inside_the_site(site):
    pages = sorted(site.rglob("*.html"))
    assert len(pages) == 3  # the index and one page per edit
    for page in pages:
        for reference in _references(page):
            if reference == "data:,":  # the empty favicon
                continue
            assert not urlparse(reference).scheme, f"{page}: external reference {reference}"
            target = (page.parent / unquote(reference)).resolve()
            assert target.is_file() and target.is_relative_to(site.resolve()), f"{page}: {reference} does not resolve"


def test_pages_show_metrics_plots_lineage_and_say_what_is_missing(site, dataset):
    metrics = json.loads((dataset / "evaluate" / "sample" / "anon" / "metrics.json").read_text())
    anon = (site / "sample" / "anon" / PAGE_FILE).read_text()
    assert f"{metrics['edit']['tl_id']:.4f}" in anon and f"{metrics['baseline']['tg_id']:.4f}" in anon
    assert f"{metrics['landmarks']['error_ratio']:.4f}" in anon
    assert anon.count("<svg") == 2  # identity.csv and landmarks.csv
    for stage in ("render", "evaluate", "edit", "invert", "encode", "align", "extract", "train"):
        assert f"<tr><td>{stage}</td>" in anon, stage
    assert "autoencoder" in anon  # the model's hash, from the edit's record
    zero = (site / "sample" / "zero" / PAGE_FILE).read_text()
    assert "Not evaluated" in zero and "<svg" not in zero and SIDE_BY_SIDE_FILE in zero
    index = (site / PAGE_FILE).read_text()
    assert "not evaluated" in index and f"{metrics['edit']['tg_id']:.4f}" in index


def test_batch_output_folder_reports_its_published_results(dataset, tmp_path):
    from workflows.flows import Artifact, publish

    out = tmp_path / "batch"
    render = Artifact("render", "k1", str(dataset / "render" / "sample" / "anon"), "test")
    evaluate = Artifact("evaluate", "k2", str(dataset / "evaluate" / "sample" / "anon"), "test")
    publish(out, "sample", "anon", render, evaluate, run_id="test")
    page = (write_site(out, out / "report", progress=False).parent / "sample" / "anon" / PAGE_FILE).read_text()
    assert page.count("<svg") == 2 and "<tr><td>publish</td>" in page and "<tr><td>evaluate</td>" in page


def test_a_folder_without_edits_is_a_one_line_error(dva_executable, tmp_path):
    done = subprocess.run([dva_executable, "report", str(tmp_path), "--out", str(tmp_path / "site"), "--quiet"],
                          check=False, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: {tmp_path}: holds neither") and len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "site").exists()


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason=f"selenium is not installed ({INSTALL})")
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip(f"headless Chromium and its driver are not installed (Debian: {INSTALL})")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900", "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # the local driver: no download
    yield driver
    driver.quit()


MEDIA_STATE = """
return {
  images: Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth]),
  videos: Array.from(document.querySelectorAll('video')).map(
    v => [v.getAttribute('src'), v.readyState, v.duration, v.videoWidth, v.error && v.error.message]),
};
"""


def _load(browser, page: Path) -> dict:
    """Open `page` and wait until every image is complete and every video has decoded a frame."""
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(page.resolve().as_uri())

    def settled(driver):
        state = driver.execute_script(MEDIA_STATE)
        loading = [image for image in state["images"] if not image[1]]
        waiting = [video for video in state["videos"] if video[1] < 2 and not video[4]]  # 2: HAVE_CURRENT_DATA
        return state if not loading and not waiting else False

    return WebDriverWait(browser, MEDIA_WAIT_S).until(settled)


def _severe(browser) -> list[dict]:
    return [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def test_index_and_a_video_page_load_in_headless_chromium(browser, site, tmp_path, record_property):
    from PIL import Image

    index = _load(browser, site / PAGE_FILE)
    assert _severe(browser) == []
    assert [image[0] for image in index["images"]] == ["sample/anon/thumbnail.png", "sample/zero/thumbnail.png"]
    assert all(width > 0 for _, _, width in index["images"])
    screenshot = tmp_path / "report_index.png"
    browser.save_screenshot(str(screenshot))
    record_property("screenshot", str(screenshot))
    print(f"index screenshot: {screenshot}")
    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=np.float64)
    assert pixels.std() > MIN_SCREENSHOT_STD, "the index screenshot is blank"

    page = _load(browser, site / "sample" / "anon" / PAGE_FILE)
    assert _severe(browser) == []
    assert [image[0] for image in page["images"]] == [CONTACT_SHEET_FILE] and page["images"][0][2] > 0
    (source, ready, duration, width, error), = page["videos"]
    assert source == SIDE_BY_SIDE_FILE and error is None
    assert ready >= 2 and duration > 0 and width > 0  # H.264 decoded by the browser's own media stack
    browser.save_screenshot(str(tmp_path / "report_page.png"))
