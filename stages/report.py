"""Write a static review site of a dataset's edits: index of videos x edits, one page per edit.

DIR is a DVC data folder (`render/<video>/<edit>/`, `evaluate/<video>/<edit>/`) or a `dva batch`
output folder (`results/<video>/<edit>/`). The site in OUT opens from disk (no server, no network):
each page shows the side-by-side video, the contact sheet, the metrics, per-frame plots and the
lineage of what produced it. `--screenshot` also saves a PNG of the index taken by headless Chromium.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import typer

from pipeline.core.atomic import atomic_output_file
from pipeline.core.errors import DvaError
from pipeline.report.site import write_site

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
INSTALL_HINT = "apt-get install -y chromium"
SCREENSHOT_SIZE = (1280, 900)
SCREENSHOT_TIMEOUT_S = 120


def find_browser() -> str:
    """The headless-capable Chromium on PATH, or a one-line error saying how to install it."""
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    raise DvaError(f"--screenshot needs Chromium, which is not installed (Debian: `{INSTALL_HINT}`)")


def screenshot(page: Path, out: Path, size: tuple[int, int] = SCREENSHOT_SIZE) -> Path:
    """A PNG of `page` as headless Chromium draws it at `size` (written atomically)."""
    browser = find_browser()
    with atomic_output_file(Path(out)) as temporary, tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--allow-file-access-from-files", f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
             f"--screenshot={temporary}", Path(page).resolve().as_uri()],
            check=False, capture_output=True, text=True, timeout=SCREENSHOT_TIMEOUT_S)
        if done.returncode != 0 or not Path(temporary).is_file():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise DvaError(f"{page}: Chromium could not take the screenshot ({last})")
    return Path(out)


def cli(
    root: Path = typer.Argument(Path("data"), help="DVC data folder or `dva batch` output folder."),
    out: Path = typer.Option(Path("report"), "--out", help="Site folder (replaced when complete)."),
    screenshot_file: Path = typer.Option(None, "--screenshot", help="Also save a PNG of the index (needs Chromium)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    index = write_site(root, out, progress=not quiet)
    if screenshot_file is not None:
        screenshot(index, screenshot_file)
    if not quiet:
        typer.echo(f"{index}" + (f" (screenshot {screenshot_file})" if screenshot_file else ""))
