"""Every figure of one trace in one zip, for the user who asks for it (an offline HTML page + PNGs)."""

from __future__ import annotations

import io
import re
import zipfile

import numpy as np
from PIL import Image

from .. import safe
from .answers import ALIGN_CSS, alignment_html, run_label, summary_markdown
from .charts import amc_figure, criteria_figure, signals_figure
from .overlays import anchor_gallery, display_image, layer_gallery


def figures_zip(trace, path) -> None:
    """One zip: ``figures.html`` (a summary, both answers, every chart interactive, every overlay;
    plotly.js beside it, so it works offline) and PNGs of every overlay."""
    base = display_image(trace.image, side=448)
    tiles = [(f"layer_{i:02d}.png", img, cap) for i, (img, cap) in enumerate(layer_gallery(trace, base))]
    anchors = [(cap.split(" (")[0].replace(" ", "_").replace("Ā", "A") + ".png", img, cap)
               for img, cap in anchor_gallery(trace, base)]
    figs = [criteria_figure(trace), amc_figure(trace), signals_figure(trace)]
    charts = "".join(f"<div class='chart'>{fig.to_html(full_html=False, include_plotlyjs=False)}</div>" for fig in figs)

    def gallery(items):
        return "<div class='tiles'>" + "".join(
            f"<figure><img src='{name}' alt='{safe.html(cap)}'></figure>" for name, _, cap in items) + "</div>"

    answers = "".join(
        f"<p><b>{safe.html(label)}:</b> {safe.html(a.text)}</p>"
        for label, a in ((run_label(trace, "unsteered"), trace.unsteered), ("ADAPT-TF", trace.steered)) if a is not None)
    enhanced = ("<h3>Anchor-guided image</h3><div class='tiles'><figure><img src='enhanced_image.png' "
                "alt='anchor-guided image' width='288'></figure></div>") if trace.enhanced_image is not None else ""
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>ADAPT figures</title>"
            "<script src='plotly.min.js'></script>"
            f"<style>{PAGE_CSS}{ALIGN_CSS}</style></head><body>"
            f"<h2>{safe.html(trace.question)}</h2><div class='summary'>{_markdown_html(summary_markdown(trace))}</div>"
            f"{answers}<h3>Token-aligned answers</h3>{alignment_html(trace)}<h3>Charts</h3>{charts}"
            f"<h3>Anchor: bias map, debiasing mask, fused map, debiased anchor</h3>{gallery(anchors)}"
            f"<h3>Early-step attention per layer (A_l) with λ</h3>{gallery(tiles)}{enhanced}</body></html>")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("figures.html", page)
        z.writestr("plotly.min.js", _plotly_js())
        for name, img, _ in tiles + anchors:
            z.writestr(name, _png(img))
        if trace.enhanced_image is not None:
            z.writestr("enhanced_image.png", _png(np.asarray(trace.enhanced_image)))


PAGE_CSS = """
body {font-family: system-ui, sans-serif; margin: 16px auto; max-width: 1100px; color: #222;}
.chart {margin: 18px 0 28px 0;}
.tiles {display: flex; flex-wrap: wrap; gap: 10px;}
.tiles figure {margin: 0;}
.summary {line-height: 1.5;}
"""


_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)")


def _markdown_html(text: str) -> str:
    """The summary's bit of Markdown (bold, code, italics, hard line breaks) as HTML. Its text
    from the trace is already escaped (:func:`app.safe.md`); code spans (:func:`app.safe.md_code`)
    hold it as it is, so they are set aside, escaped here and put back last."""
    spans = []

    def keep(m):
        body = m.group(2)
        if len(body) > 1 and body[0] == " " and body[-1] == " " and body.strip():
            body = body[1:-1]
        spans.append(f"<code>{safe.html(body)}</code>")
        return f"\0{len(spans) - 1}\0"  # md() and md_code() drop NUL: no text can forge one

    out = _CODE_SPAN.sub(keep, text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    out = re.sub(r"(?<![*\w])\*(?!\s)(.+?)\*(?!\w)", r"<i>\1</i>", out)
    out = re.sub("\0(\\d+)\0", lambda m: spans[int(m.group(1))], out)
    return out.replace("  \n", "<br>")


_PLOTLY_JS: bytes | None = None


def _plotly_js() -> bytes:
    global _PLOTLY_JS
    if _PLOTLY_JS is None:
        from plotly.offline import get_plotlyjs

        _PLOTLY_JS = get_plotlyjs().encode()
    return _PLOTLY_JS


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
