"""Write the review site of a dataset's edits: an index of videos x edits and one page per edit.

The site is static and self-contained: every page is plain HTML with its CSS inline and its plots as
inline SVG, and each edit's media (side-by-side video, contact sheet, thumbnail) sit in the page's own
folder, linked by relative paths, so the folder opens from disk, can be zipped or served as it is, and
needs no network. It reads two layouts: a DVC data folder (`render/<video>/<edit>/` and
`evaluate/<video>/<edit>/`) and a `dva batch` output folder (`results/<video>/<edit>/`, whose lineage
record leads back to the evaluate folder in `work/`). Missing pieces are said on the page.
"""

from __future__ import annotations

import html
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import cv2
import numpy as np
import pandas as pd

from pipeline.core.atomic import atomic_output_dir
from pipeline.core.errors import InputError
from pipeline.core.progress import progress_bar
from pipeline.report.plots import line_plot
from pipeline.runs.artifacts import CONTACT_SHEET_FILE, SIDE_BY_SIDE_FILE, VIDEO_FILE
from pipeline.runs.audit import find_record
from pipeline.runs.lineage import read_lineage
from pipeline.video.video_io import iter_frames, probe

METRICS_FILE = "metrics.json"
THUMBNAIL_FILE = "thumbnail.png"
PAGE_FILE = "index.html"
THUMBNAIL_WIDTH = 360
MAX_LINEAGE_RECORDS = 32  # a chain is about ten records (publish back to extract); this only bounds a loop
# Titles of the per-frame tables evaluate writes; any other CSV with a `frame` column is plotted under its name.
PLOT_TITLES = {
    "identity.csv": "Identity cosine to the source video, per frame",
    "landmarks.csv": "Landmark error to the codes each frame was decoded with (fraction of the crop)",
}
# The identity metrics evaluate computes for each of these decodes, shown side by side.
DECODES = ("reconstruction", "edit", "baseline")
METRIC_LABELS = {
    "tl_id": "TL-ID (local temporal identity consistency)",
    "tg_id": "TG-ID (global temporal identity consistency)",
    "id_sim_source": "identity cosine to the source video",
    "background_psnr": "background PSNR, mean (dB)",
    "background_psnr_min": "background PSNR, worst frame (dB)",
    "code_cosine_to_source": "edited identity code vs the source's (cosine)",
    "edit_error": "landmark error of the edit",
    "reconstruction_error": "landmark error of the reconstruction",
    "error_ratio": "landmark error ratio, edit / reconstruction",
    "reid_rate": "re-identification rate (frames still the source person)",
}
# Index columns: (heading, section, key) of metrics.json.
HEADLINE = (
    ("TL-ID", "edit", "tl_id"),
    ("TG-ID", "edit", "tg_id"),
    ("TL-ID per-frame baseline", "baseline", "tl_id"),
    ("identity to source", "edit", "id_sim_source"),
    ("background PSNR (dB)", "edit", "background_psnr"),
    ("landmark error ratio", "landmarks", "error_ratio"),
)


@dataclass
class EditOutputs:
    """What exists of one edit of one video: its rendered media and its evaluation, either possibly missing."""

    video: str
    edit: str
    media: Path | None  # folder with side_by_side.mp4 / contact_sheet.png
    evaluate: Path | None  # folder with metrics.json (and the per-frame CSVs in a DVC layout)
    lineage_roots: list[Path] = field(default_factory=list)  # folders whose lineage records start the walk


def _subfolders(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith(".")) \
        if folder.is_dir() else []


def _batch_evaluate_folder(result: Path) -> Path | None:
    """The evaluate folder a published batch result took its metrics from, via the publish lineage record."""
    record = read_lineage(result)
    for entry in (record or {}).get("inputs", []):
        if Path(entry["path"]).name == METRICS_FILE:
            folder = Path(os.path.normpath(result.resolve() / entry["path"])).parent
            if (folder / METRICS_FILE).is_file():
                return folder
    return result if (result / METRICS_FILE).is_file() else None


def discover(root: Path) -> list[EditOutputs]:
    """Every video x edit under a DVC data folder or a `dva batch` output folder, sorted by video then edit."""
    root = Path(root)
    if (root / "results").is_dir():
        found = []
        for video in _subfolders(root / "results"):
            for result in _subfolders(video):
                evaluate = _batch_evaluate_folder(result)
                found.append(EditOutputs(video.name, result.name, result, evaluate,
                                         [result] + ([evaluate] if evaluate else [])))
        return found
    if (root / "render").is_dir() or (root / "evaluate").is_dir():
        names = {(video.name, edit.name) for stage in ("render", "evaluate")
                 for video in _subfolders(root / stage) for edit in _subfolders(video)}
        found = []
        for video, edit in sorted(names):
            render, evaluate = root / "render" / video / edit, root / "evaluate" / video / edit
            media = render if render.is_dir() else None
            evaluated = evaluate if (evaluate / METRICS_FILE).is_file() else None
            found.append(EditOutputs(video, edit, media, evaluated, [path for path in (media, evaluated) if path]))
        return found
    raise InputError(root, "holds neither render/ and evaluate/ (a DVC data folder) nor results/ (a `dva batch` "
                           "output folder)")


def lineage_chain(starts: list[Path]) -> list[dict]:
    """The lineage records behind `starts`, nearest first: each with its folder; inputs are followed, not hashed."""
    queue, seen, chain = [Path(path).resolve() for path in starts], set(), []
    while queue and len(chain) < MAX_LINEAGE_RECORDS:
        folder = queue.pop(0)
        if folder in seen:
            continue
        seen.add(folder)
        record = read_lineage(folder)
        if record is None:
            continue
        chain.append(record | {"folder": folder})
        # Weight files are followed too: the autoencoder's own record names its training run.
        followed = record.get("inputs", []) + [item for item in (record.get("weights") or {}).values() if item["path"]]
        for entry in followed:
            owner = find_record(Path(os.path.normpath(folder / entry["path"])))
            if owner is not None and owner not in seen:
                queue.append(owner)
    return chain


def write_thumbnail(media: Path, out: Path) -> bool:
    """A PNG of the side-by-side video's middle frame (else the contact sheet), THUMBNAIL_WIDTH wide."""
    video, sheet = media / SIDE_BY_SIDE_FILE, media / CONTACT_SHEET_FILE
    image = None
    if video.is_file():
        middle = probe(video).frame_count // 2
        for index, frame in enumerate(iter_frames(video, max_frames=middle + 1)):
            if index == middle:
                image = cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR)
    elif sheet.is_file():
        image = cv2.imread(str(sheet))
    if image is None:
        return False
    height, width = image.shape[:2]
    size = (THUMBNAIL_WIDTH, max(1, round(height * THUMBNAIL_WIDTH / width)))
    return bool(cv2.imwrite(str(out), cv2.resize(image, size, interpolation=cv2.INTER_AREA)))


def _number(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return html.escape(str(value))
    if isinstance(value, float) and not math.isfinite(value):
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def _flatten(prefix: str, value: object) -> list[tuple[str, object]]:
    if isinstance(value, dict):
        return [row for key, item in value.items() for row in _flatten(f"{prefix}.{key}" if prefix else key, item)]
    return [(prefix, value)]


def metrics_tables(metrics: dict) -> str:
    """The identity metrics of reconstruction / edit / baseline side by side, then every other figure.

    Anything evaluate adds later (per-track figures, new sections) lands in the second table by its key.
    """
    decodes = [name for name in DECODES if isinstance(metrics.get(name), dict)]
    shared = [key for key in ("tl_id", "tg_id", "id_sim_source") if any(key in metrics[name] for name in decodes)]
    rows = "".join(
        f"<tr><th>{html.escape(METRIC_LABELS.get(key, key))}</th>"
        + "".join(f"<td>{_number(metrics[name].get(key, '-'))}</td>" for name in decodes) + "</tr>"
        for key in shared)
    head = "".join(f"<th>{name}</th>" for name in decodes)
    identity = (f'<table class="metrics"><tr><th>identity</th>{head}</tr>{rows}</table>' if shared else "")
    rest = [(key, value) for key, value in _flatten("", {k: v for k, v in metrics.items() if k != "tracks"})
            if not (key.split(".")[0] in decodes and key.count(".") == 1 and key.split(".")[1] in shared)]
    other = "".join(
        f"<tr><th>{html.escape(key)}</th><td>{html.escape(METRIC_LABELS.get(key.rsplit('.', 1)[-1], ''))}</td>"
        f"<td>{_number(value)}</td></tr>" for key, value in rest)
    return (identity + track_table(metrics.get("tracks") or [])
            + f'<table class="metrics"><tr><th>figure</th><th>meaning</th><th>value</th></tr>{other}</table>')


TRACK_FIGURES = ("tl_id", "tg_id", "id_sim_source", "reid_rate")


def track_table(tracks: list[dict]) -> str:
    """One row per face track (evaluate's `tracks`): its frames and the edit's figures; empty for one face."""
    if len(tracks) < 2:
        return ""
    head = "".join(f"<th>{html.escape(METRIC_LABELS.get(key, key))}</th>" for key in TRACK_FIGURES)
    rows = "".join(
        f"<tr><th>{_number(entry.get('track'))}</th><td>{_number(entry.get('frames'))}</td>"
        f"<td>{'yes' if entry.get('edited', True) else 'no'}</td>"
        + "".join(f"<td>{_number(entry.get('edit', {}).get(key, '-'))}</td>" for key in TRACK_FIGURES) + "</tr>"
        for entry in tracks)
    return (f'<table class="metrics"><tr><th>track</th><th>frames</th><th>edited</th>{head}</tr>{rows}</table>')


def frame_plots(evaluate: Path) -> list[str]:
    """One SVG per per-frame CSV (a `frame` column) in the evaluate folder, the known ones first."""
    files = sorted(evaluate.glob("*.csv"), key=lambda path: (path.name not in PLOT_TITLES, path.name))
    plots = []
    for path in files:
        table = pd.read_csv(path)
        if "frame" not in table.columns:
            continue
        if "track" in table.columns:  # several faces: each frame's mean over them
            table = table.drop(columns="track").groupby("frame", as_index=False).mean(numeric_only=True)
        numeric = [name for name in table.columns if name != "frame" and pd.api.types.is_numeric_dtype(table[name])]
        series = {name: table[name].to_numpy(dtype=np.float64).tolist() for name in numeric}
        plots.append(line_plot(PLOT_TITLES.get(path.name, path.name), table["frame"].tolist(), series))
    return plots


def _relative(path: Path, root: Path) -> str:
    relative = os.path.relpath(path, root.resolve())
    return relative if not relative.startswith("..") else str(path)


def lineage_table(chain: list[dict], root: Path) -> str:
    """What produced the edit: per record the stage, run, time, code version, weights and parameters."""
    if not chain:
        return '<p class="missing">No lineage record found beside these outputs.</p>'
    rows = []
    for record in chain:
        code = record.get("code") or {}
        revision = (code.get("git_revision") or "unknown")[:12] + (" (uncommitted changes)" if code.get("dirty") else "")
        weights = "<br>".join(f"{html.escape(role)}: <code>{html.escape((item.get('sha256') or '')[:16])}</code>"
                              for role, item in (record.get("weights") or {}).items()) or "-"
        params = html.escape(json.dumps(record.get("params", {}), indent=1, sort_keys=True))
        rows.append(
            f"<tr><td>{html.escape(str(record.get('stage', '?')))}</td>"
            f"<td><code>{html.escape(_relative(record['folder'], root))}</code></td>"
            f"<td>{html.escape(str(record.get('run_id', '-')))}<br>{html.escape(str(record.get('created', '')))}</td>"
            f"<td><code>{html.escape(revision)}</code></td><td>{weights}</td>"
            f"<td><details><summary>params</summary><pre>{params}</pre></details></td></tr>")
    return ('<table class="lineage"><tr><th>stage</th><th>folder</th><th>run</th><th>code</th><th>weights (sha256)</th>'
            "<th>parameters</th></tr>" + "".join(rows) + "</table>")


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; background: #fff; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; font-size: 14px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img.thumb { display: block; width: 240px; height: auto; }
video, img.sheet { max-width: 100%; height: auto; border: 1px solid #ccc; }
.missing { color: #a33; font-style: italic; }
.plot-title { font-size: 13px; font-weight: 600; }
.tick { font-size: 11px; fill: #444; }
pre { font-size: 12px; max-width: 48em; overflow-x: auto; }
"""


def _document(title: str, body: str) -> str:
    # The empty icon stops the browser asking for a favicon the site does not have.
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


def _metrics(entry: EditOutputs) -> dict | None:
    if entry.evaluate is None:
        return None
    return json.loads((entry.evaluate / METRICS_FILE).read_text())


def edit_page(entry: EditOutputs, page_dir: Path, root: Path) -> dict | None:
    """Write one edit's page and media into `page_dir`; returns its metrics (None when not evaluated)."""
    title = f"{entry.video} / {entry.edit}"
    body = [f'<p><a href="../../{PAGE_FILE}">&larr; all edits</a></p><h1>{html.escape(title)}</h1>']
    media = entry.media
    if media is not None and (media / SIDE_BY_SIDE_FILE).is_file():
        shutil.copyfile(media / SIDE_BY_SIDE_FILE, page_dir / SIDE_BY_SIDE_FILE)
        body.append("<h2>Source, reconstruction, edit</h2>"
                    f'<video controls loop muted preload="auto" src="{SIDE_BY_SIDE_FILE}"></video>')
    else:
        body.append('<p class="missing">Not rendered: no side-by-side video for this edit (run `dva render`).</p>')
    if media is not None and (media / CONTACT_SHEET_FILE).is_file():
        shutil.copyfile(media / CONTACT_SHEET_FILE, page_dir / CONTACT_SHEET_FILE)
        body.append("<h2>Contact sheet</h2><p>Rows: source crop, reconstruction, edit.</p>"
                    f'<img class="sheet" src="{CONTACT_SHEET_FILE}" alt="contact sheet of {html.escape(title)}">')
    if media is not None and (media / VIDEO_FILE).is_file():
        body.append(f"<p>Edited video: <code>{html.escape(_relative((media / VIDEO_FILE).resolve(), root))}</code></p>")
    metrics = _metrics(entry)
    body.append("<h2>Metrics</h2>")
    if metrics is None:
        body.append('<p class="missing">Not evaluated: no metrics for this edit (run `dva evaluate`).</p>')
    else:
        body.append(metrics_tables(metrics))
        plots = frame_plots(entry.evaluate)
        body.append("<h2>Per frame</h2>" + "".join(f"<div>{plot}</div>" for plot in plots) if plots else
                    '<p class="missing">No per-frame tables beside these metrics.</p>')
    body.append("<h2>Lineage</h2>" + lineage_table(lineage_chain(entry.lineage_roots), root))
    (page_dir / PAGE_FILE).write_text(_document(title, "\n".join(body)))
    return metrics


def index_page(rows: list[tuple[EditOutputs, dict | None, bool]], root: Path) -> str:
    """The index: one row per video x edit with its thumbnail and headline metrics, linking to its page."""
    head = "".join(f"<th>{html.escape(heading)}</th>" for heading, _, _ in HEADLINE)
    lines = []
    for entry, metrics, thumbnail in rows:
        link = f"{quote(entry.video)}/{quote(entry.edit)}/{PAGE_FILE}"
        image = (f'<img class="thumb" src="{quote(entry.video)}/{quote(entry.edit)}/{THUMBNAIL_FILE}" '
                 f'alt="{html.escape(entry.video)} / {html.escape(entry.edit)}">' if thumbnail
                 else '<span class="missing">not rendered</span>')
        if metrics is None:
            cells = f'<td colspan="{len(HEADLINE)}" class="missing">not evaluated</td>'
        else:
            cells = "".join(f'<td class="num">{_number((metrics.get(section) or {}).get(key, "-"))}</td>'
                            for _, section, key in HEADLINE)
        lines.append(f'<tr><td><a href="{link}">{html.escape(entry.video)}</a></td>'
                     f'<td><a href="{link}">{html.escape(entry.edit)}</a></td><td><a href="{link}">{image}</a></td>'
                     f"{cells}</tr>")
    body = (f"<h1>Edits of {html.escape(str(root))}</h1>"
            f"<p>{len(rows)} edit(s). TL-ID / TG-ID: identity consistency over time (1 = the same identity in "
            "every frame); the per-frame baseline applies the same edit to each frame's own identity.</p>"
            f"<table><tr><th>video</th><th>edit</th><th>side by side</th>{head}</tr>{''.join(lines)}</table>")
    return _document(f"dva report: {root}", body)


def write_site(root: Path, out: Path, progress: bool = True) -> Path:
    """Write the review site of every edit under `root` into `out` (replaced when complete); returns its index."""
    root, out = Path(root), Path(out)
    entries = discover(root)
    if not entries:
        raise InputError(root, "no edits found (nothing under render/, evaluate/ or results/)")
    with atomic_output_dir(out) as work:
        rows = []
        for entry in progress_bar(entries, enabled=progress, desc="report"):
            page_dir = work / entry.video / entry.edit
            page_dir.mkdir(parents=True)
            metrics = edit_page(entry, page_dir, root)
            thumbnail = entry.media is not None and write_thumbnail(entry.media, page_dir / THUMBNAIL_FILE)
            rows.append((entry, metrics, thumbnail))
        (work / PAGE_FILE).write_text(index_page(rows, root))
    return out / PAGE_FILE
