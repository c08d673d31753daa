"""Pictures and the one-page HTML report of a generation run."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from see3d_core.images import to_uint8


def image_grid(rows: Sequence[Sequence[np.ndarray]], gap: int = 2, row_labels: Sequence[str] | None = None,
               label_width: int = 220) -> np.ndarray:
    """Rows of same-sized RGB images in [0, 1] as one picture with white gaps; with
    `row_labels`, a white column of `label_width` pixels on the left names each row."""
    h, w = rows[0][0].shape[:2]
    cols = max(len(r) for r in rows)
    left = label_width if row_labels else 0
    grid = np.ones((len(rows) * (h + gap) - gap, left + cols * (w + gap) - gap, 3), np.float32)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            grid[r * (h + gap): r * (h + gap) + h, left + c * (w + gap): left + c * (w + gap) + w] = img[..., :3]
    if row_labels:
        if len(row_labels) != len(rows):
            raise ValueError(f"row_labels: {len(row_labels)} labels for {len(rows)} rows")
        canvas = to_uint8(grid)
        for r, label in enumerate(row_labels):
            for k, line in enumerate(label.split("\n")):
                cv2.putText(canvas, line, (6, r * (h + gap) + h // 2 + 16 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        grid = canvas.astype(np.float32) / 255.0
    return grid


PIXEL_COLUMNS = {"known_psnr": "known: output vs truth", "condition_known_psnr": "known: condition vs truth",
                 "known_vs_condition_psnr": "known: output vs condition", "hole_psnr": "holes: output vs truth",
                 "hole_fraction": "hole fraction"}


def _cell(value) -> str:
    return f"<td>{value:.4f}</td>" if isinstance(value, (int, float)) else f"<td>{html.escape(str(value if value is not None else '-'))}</td>"


def _pixel_table(metrics: dict) -> str:
    """Known-pixel fidelity and hole quality (stages whose values carry `hole_psnr`)."""
    rows = [f"<tr><td>{html.escape(method)}</td><td>{html.escape(stage)}</td>" + "".join(_cell(values.get(k)) for k in PIXEL_COLUMNS) + "</tr>"
            for method, stages in metrics.get("methods", {}).items() for stage, values in stages.items() if "hole_psnr" in values]
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(c)}{' (dB)' if k != 'hole_fraction' else ''}</th>" for k, c in PIXEL_COLUMNS.items())
    return f"<h3>Known and hole pixels</h3><table><tr><th>method</th><th>views</th>{head}</tr>" + "".join(rows) + "</table>"


def _metric_table(metrics: dict) -> str:
    rows = []
    for method, stages in metrics.get("methods", {}).items():
        for stage, values in stages.items():
            if "hole_psnr" in values:
                continue
            cells = "".join(
                f"<td>{values[k]:.4f}</td>" if isinstance(values.get(k), (int, float)) else f"<td>{html.escape(str(values.get(k, '-')))}</td>"
                for k in ("psnr", "ssim", "lpips")
            )
            rows.append(f"<tr><td>{html.escape(method)}</td><td>{html.escape(stage)}</td>{cells}</tr>")
    if not rows:
        return ""
    return ("<table><tr><th>method</th><th>views</th><th>PSNR (dB)</th><th>SSIM</th><th>LPIPS</th></tr>"
            + "".join(rows) + "</table>")


def write_html_report(out: str | os.PathLike, title: str, sections: Sequence[tuple[str, str]], metrics: dict | None = None,
                      video: str | None = None, notes: Sequence[str] = ()) -> Path:
    """A single self-contained page `report.html` under `out` that shows pictures by relative
    path (`sections` are (caption, relative PNG path)), the metrics table and the video."""
    out = Path(out)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}img,video{max-width:100%;"
             "image-rendering:pixelated}table{border-collapse:collapse}td,th{border:1px solid #999;padding:4px 8px}"
             "</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    if metrics:
        parts.append("<h2>Metrics against the scene's true views</h2>" + _metric_table(metrics) + _pixel_table(metrics))
    for caption, rel in sections:
        parts.append(f"<h2>{html.escape(caption)}</h2><img src='{html.escape(rel)}' alt='{html.escape(caption)}'>")
    if video:
        parts.append(f"<h2>Fly-through</h2><video src='{html.escape(video)}' controls loop autoplay muted></video>")
    if metrics:
        parts.append("<h2>metrics.json</h2><pre>" + html.escape(json.dumps(metrics, indent=1)) + "</pre>")
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts))
    return path
