"""The evaluation page: one self-contained HTML file (inline CSS, figures embedded as base64 PNG, no script,
no external asset) that ``python -m training evaluate`` writes for every task.

Every page opens with what the numbers are: AI output, not for diagnosis, and — when the evaluation data or
the training data are synthetic photographs — a statement saying so (:func:`training.data.is_synthetic_folder`).
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from training.data import SYNTHETIC_MARKERS, is_synthetic_folder
from training.report import history_figure

__all__ = ["AI_NOTICE", "SYNTHETIC_DATA_NOTICE", "SYNTHETIC_MARKERS", "SYNTHETIC_TRAINING_NOTICE", "Page",
           "format_metric", "format_value", "is_synthetic_folder", "png_src", "training_curves"]

#: The banner of every page.
AI_NOTICE = "AI output from a research model, not for diagnosis."
SYNTHETIC_DATA_NOTICE = ("The evaluation data are synthetic fundus photographs made by Fovea's generator "
                         "(datasets.synthetic): these results describe the model on synthetic images only and say "
                         "nothing about its performance on real patients.")
SYNTHETIC_TRAINING_NOTICE = "The model was trained on synthetic fundus photographs."
#: Suffixes of the bootstrap interval keys of :mod:`training.metrics` (``<metric>_ci95_low`` / ``_high``).
CI_LOW, CI_HIGH = "_ci95_low", "_ci95_high"
#: Grid verdicts shown in green.
GOOD_MARKS = ("hit", "correct")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5rem auto;max-width:1200px;
color:#1b1f24;padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2rem;margin-top:2rem}
.notice{border-left:5px solid #cf222e;background:#fff5f5;padding:.6rem 1rem;margin:.8rem 0}
.notice p{margin:.2rem 0}.meta{color:#57606a;font-size:.9rem}.meta code{font-size:.85rem}
table{border-collapse:collapse;margin:.6rem 0}td,th{border:1px solid #d0d7de;padding:.25rem .6rem;text-align:right}
th{background:#f6f8fa}td:first-child,th:first-child{text-align:left}
figure{display:inline-block;margin:.5rem 1rem .5rem 0;vertical-align:top}
figure img{max-width:100%;border:1px solid #d0d7de}figcaption{font-size:.85rem;color:#57606a;max-width:560px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:.8rem}
.grid figure{margin:0}.grid img{width:100%}
.hit{color:#1a7f37;font-weight:600}.miss{color:#cf222e;font-weight:600}
pre{background:#f6f8fa;padding:.6rem;overflow:auto;font-size:.8rem}
"""


def format_value(value: float) -> str:
    """A number as the page shows it: Python integers as integers, other numbers to 4 decimals, NaN as
    ``n/a``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    v = float(value)
    return "n/a" if math.isnan(v) else f"{v:.4f}"


def is_count(key: str) -> bool:
    """Whether metric ``key`` counts images or lesions (``n``, ``pointing_game_n``, ``ungradable``)."""
    return key in ("n", "ungradable") or key.endswith("_n")


def format_metric(key: str, value: float) -> str:
    """A metric as its table shows it: counts as integers, the rest by :func:`format_value`."""
    v = float(value)
    return str(int(v)) if is_count(key) and v.is_integer() else format_value(v)


def png_src(png: bytes) -> str:
    """A ``data:`` URL embedding PNG bytes."""
    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("not a PNG image")
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


@dataclass
class Page:
    """An evaluation page under construction: add sections, figures, tables and grids in order, then
    :meth:`write`. All text is HTML-escaped; ``label`` raw HTML is never accepted."""

    title: str
    synthetic_data: bool
    synthetic_training: bool
    meta: Sequence[tuple[str, str]] = ()
    _body: list[str] = field(default_factory=list, init=False, repr=False)

    def section(self, heading: str, intro: str | None = None) -> None:
        """Start a section with a ``heading`` and an optional paragraph."""
        self._body.append(f"<h2>{_e(heading)}</h2>")
        if intro:
            self.paragraph(intro)

    def paragraph(self, text: str) -> None:
        self._body.append(f"<p>{_e(text)}</p>")

    def figure(self, png: bytes, *, name: str, caption: str) -> None:
        """An embedded PNG; ``name`` is its ``data-figure`` attribute (stable, for tests and scripts)."""
        self._body.append(f'<figure data-figure="{_e(name)}"><img src="{png_src(png)}" alt="{_e(caption)}">'
                          f"<figcaption>{_e(caption)}</figcaption></figure>")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[object]], *, name: str) -> None:
        """A plain table; numbers are shown with :func:`format_value`."""
        head = "".join(f"<th>{_e(h)}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{_e(format_value(c) if isinstance(c, (int, float)) else c)}</td>"
                                        for c in row) + "</tr>" for row in rows)
        self._body.append(f'<table data-table="{_e(name)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
                          "</table>")

    def metrics_table(self, metrics: Mapping[str, float], labels: Mapping[str, str] | None = None, *,
                      name: str = "metrics") -> None:
        """One row per metric (interval keys fold into their metric's row as ``[low, high]``), in ``labels``
        order first, then the rest alphabetically."""
        labels = labels or {}
        keys = [k for k in metrics if not (k.endswith(CI_LOW) or k.endswith(CI_HIGH))]
        keys = [k for k in labels if k in keys] + sorted(k for k in keys if k not in labels)
        rows = []
        for k in keys:
            low, high = metrics.get(k + CI_LOW), metrics.get(k + CI_HIGH)
            ci = f"[{format_value(low)}, {format_value(high)}]" if low is not None and high is not None else ""
            rows.append((labels.get(k, k), k, format_metric(k, metrics[k]), ci))
        self.table(("metric", "key", "value", "95 % interval"), rows, name=name)

    def grid(self, items: Sequence[tuple[bytes, str, str | None]], *, name: str) -> None:
        """A grid of embedded PNGs with captions; the optional third element is a verdict word appended to the
        caption (``hit``/``correct`` in green, anything else in red; always as text, never by colour alone)."""
        cells = []
        for png, caption, mark in items:
            css = "hit" if mark in GOOD_MARKS else "miss"
            tag = f' <span class="{css}">{_e(mark)}</span>' if mark else ""
            cells.append(f'<figure><img src="{png_src(png)}" alt="{_e(caption)}"><figcaption>{_e(caption)}{tag}'
                         f"</figcaption></figure>")
        self._body.append(f'<div class="grid" data-grid="{_e(name)}">{"".join(cells)}</div>')

    def json_block(self, metrics: Mapping[str, float]) -> None:
        """The metrics exactly as ``evaluate`` printed them."""
        text = json.dumps(dict(metrics), indent=2)
        self._body.append(f'<details open><summary>metrics JSON</summary><pre data-json="metrics">{_e(text)}</pre>'
                          "</details>")

    def render(self) -> str:
        """The whole page as an HTML string."""
        notices = [AI_NOTICE]
        if self.synthetic_data:
            notices.append(SYNTHETIC_DATA_NOTICE)
        if self.synthetic_training:
            notices.append(SYNTHETIC_TRAINING_NOTICE)
        meta = "".join(f"<div>{_e(k)}: <code>{_e(v)}</code></div>" for k, v in self.meta)
        notice = "".join(f"<p>{_e(n)}</p>" for n in notices)
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(self.title)}</title>'
                f"<style>{_CSS}</style></head><body><h1>{_e(self.title)}</h1>"
                f'<div class="notice" data-notice="use">{notice}</div><div class="meta">{meta}</div>'
                + "\n".join(self._body) + "</body></html>\n")

    def write(self, directory: Path) -> Path:
        """Write ``index.html`` into ``directory`` (created); return its path."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "index.html"
        path.write_text(self.render(), encoding="utf-8")
        return path


def training_curves(page: Page, ck: Mapping[str, object], curves: Sequence[tuple[str, str]], *, caption: str) -> None:
    """The report's "Training curves" section: the checkpoint ``ck``'s history drawn with ``curves``
    (:func:`training.report.history_figure`), or a line saying it holds none."""
    history = json.loads(str(ck.get("history", "[]")))
    page.section("Training curves")
    if history:
        page.figure(history_figure(history, curves), name="history", caption=caption)
    else:
        page.paragraph("The checkpoint holds no training history.")
