"""Per-frame line plots as inline SVG: no plotting library and no script, so a page opens from disk anywhere."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

# Colour-blind-safe (Okabe-Ito), in series order.
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
WIDTH, HEIGHT = 720, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 44, 36  # title and legend above the plot, frame axis below


def _label(value: float) -> str:
    return f"{value:.4g}"


def line_plot(title: str, frames: Sequence[float], series: Mapping[str, Sequence[float]]) -> str:
    """An SVG plot of each series against the frame index; NaN values (frames without a face) break the line."""
    finite = [value for values in series.values() for value in values if math.isfinite(value)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if high == low:  # a flat series still needs a visible axis span
        low, high = low - 0.5, high + 0.5
    first, last = (min(frames), max(frames)) if len(frames) else (0, 1)
    span = (last - first) or 1
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(frame: float) -> float:
        return LEFT + (frame - first) / span * plot_width

    def y(value: float) -> float:
        return TOP + (high - value) / (high - low) * plot_height

    parts = [
        (f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
         f'height="{HEIGHT}" role="img" aria-label="{html.escape(title)}">'),
        f'<text x="{LEFT}" y="16" class="plot-title">{html.escape(title)}</text>',
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_width}" height="{plot_height}" fill="none" stroke="#bbb"/>',
    ]
    for value in (low, (low + high) / 2, high):
        parts.append(f'<text x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end" class="tick">{_label(value)}</text>')
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}" stroke="#eee"/>')
    for frame in (first, last):
        parts.append(f'<text x="{x(frame):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle" class="tick">'
                     f'{_label(frame)}</text>')
    parts.append(f'<text x="{LEFT + plot_width / 2}" y="{HEIGHT - 6}" text-anchor="middle" class="tick">frame</text>')
    for index, (name, values) in enumerate(series.items()):
        colour = COLOURS[index % len(COLOURS)]
        runs: list[list[str]] = [[]]
        for frame, value in zip(frames, values):
            if math.isfinite(value):
                runs[-1].append(f"{x(frame):.1f},{y(value):.1f}")
            elif runs[-1]:
                runs.append([])
        for points in runs:
            if len(points) == 1:
                cx, cy = points[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{colour}"/>')
            elif points:
                parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{" ".join(points)}"/>')
        legend_x = LEFT + index * 150
        parts.append(f'<rect x="{legend_x}" y="{TOP - 16}" width="10" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{legend_x + 14}" y="{TOP - 7}" class="tick">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
