"""Hostile trace files (issue 20, items 1 and 2): markup in every string field of trace.json never
reaches the page as markup (the Inspect views, the status line, the charts, the figures download),
and bombs, NaN maps, shapes that disagree with the grid, missing keys and wrong types are refused
in one line, with the memory of loading any of them bounded.

The page itself (Chromium) is checked in test_hostile_traces_browser.py."""

import sys
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hostile_corpus as H  # noqa: E402

PEAK_MB = 256  # what loading any trace file may add to the process (issue 20)


# ------------------------------------------------------------------------------ markup check
# what the app's own HTML is made of; anything else came from a file
TAGS = {"div", "table", "tr", "th", "td", "span", "em", "b", "i", "strong", "code", "p", "br", "h2", "h3", "figure",
        "img", "style", "script", "meta", "html", "head", "body", "title"}
ATTRS = {"class", "title", "src", "alt", "width", "id", "style", "charset", "type"}


class _Elements(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self._in: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def markup_problems(html: str, scripts: int = 0) -> list[str]:
    """What in ``html`` is not the app's own markup: unknown elements, event handlers or links,
    images of anything but the bundle's own files, more scripts than ``scripts``."""
    p = _Elements()
    p.feed(html)
    p.close()
    problems = []
    n_scripts = 0
    for tag, attrs in p.found:
        if tag not in TAGS:
            problems.append(f"element <{tag}>")
        for k, v in attrs.items():
            if k not in ATTRS or k.startswith("on"):
                problems.append(f"attribute {k}= on <{tag}>")
            if "javascript:" in (v or "").lower():
                problems.append(f"javascript: in {k}= of <{tag}>")
        if tag == "img" and not (attrs.get("src") or "").endswith(".png"):
            problems.append(f"<img src={attrs.get('src')!r}>")
        n_scripts += tag == "script"
    if n_scripts > scripts:
        problems.append(f"{n_scripts} <script> elements (expected {scripts})")
    return problems


def markdown_html(text: str) -> str:
    """Markdown as a CommonMark renderer with raw HTML on makes it (what gr.Markdown builds on)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": True}).render(text or "")


def plot_strings(fig) -> list[str]:
    out = []

    def walk(x):
        if isinstance(x, str):
            out.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(fig.to_plotly_json())
    return out


def plot_problems(fig) -> list[str]:
    """Markup in a plotly figure's text: plotly reads <a href>, <b>, <span style> and friends."""
    return [s[:80] for s in plot_strings(fig) if any(t in s for t in ("<img", "<script", "<svg", "<b>bold", "<a "))]


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return H.base_trace().save(tmp_path_factory.mktemp("hostile") / "base.zip")


@pytest.fixture(scope="module")
def tab():
    """The Inspect tab of an app that loads no model: ``tab.opened`` is what the open-trace
    endpoint and the page's Show trace button call."""
    import gradio as gr

    from app.ui.inspect import InspectTab
    from app.ui.state import App

    with gr.Blocks():
        return InspectTab(App(warm=False))


def open_in_app(tab, path):
    """(status line, outputs) as the page gets them: the page event reports errors in the status."""
    from app.ui.errors import esc, message, status_line

    try:
        out = tab.opened(str(path))
    except Exception as exc:
        return status_line(esc(message(exc, "opened"))), None
    return out[0], out


def check_views(out, bundle_dir=None) -> list[str]:
    """Markup problems of every HTML / Markdown / plot output of an opened trace (and of its
    figures download when ``bundle_dir`` is given)."""
    from app import figures as F
    from app.analysis import answer_note

    status, trace, summary, _, _, align = out[:6]
    problems = [f"status: {p}" for p in markup_problems(markdown_html(status))]
    problems += [f"answer note: {p}" for p in markup_problems(markdown_html(answer_note(trace)))]
    problems += [f"summary: {p}" for p in markup_problems(markdown_html(summary))]
    problems += [f"token table: {p}" for p in markup_problems(align)]
    for name, fig in (("amc", out[10]), ("signals", out[11]), ("criteria", out[14])):
        problems += [f"{name} plot: {p}" for p in plot_problems(fig)]
    if bundle_dir is not None:
        path = Path(bundle_dir) / "figures.zip"
        F.figures_zip(trace, path)
        with zipfile.ZipFile(path) as z:
            page = z.read("figures.html").decode()
        problems += [f"figures.html: {p}" for p in markup_problems(page, scripts=4)]  # plotly.js + 3 charts
    return problems


# ------------------------------------------------------------------------------- 1. markup
def test_markup_in_every_string_field_stays_text(base, tab, tmp_path):
    """One trace per string field (and dict key) of trace.json with the payload in it: opened as
    the app opens it, no element, handler or link of the payload in any view, the status line or
    the figures download; a field that makes the trace unreadable gets the one-line refusal."""
    cases = H.payload_traces(base, tmp_path / "fields")
    assert len(cases) > 50
    problems, shown = [], 0
    for field, path in cases:
        status, out = open_in_app(tab, path)
        if out is None:
            assert "is not a readable trace" in status and "\n" not in status.strip(), (field, status)
            problems += [f"{field}: refusal: {p}" for p in markup_problems(markdown_html(status))]
            continue
        shown += 1
        problems += [f"{field}: {p}" for p in check_views(out, tmp_path if field == "meta/compare" else None)]
    assert not problems, problems[:20]
    assert shown > 30  # most fields are shown, not just refused


def test_payload_everywhere_at_once_reads_as_its_own_text(base, tab, tmp_path):
    """All string values carry the payload at once: every view, the plots and the figures page are
    free of its markup, and where a field is shown its payload is there, character for character."""
    path = H.all_fields_trace(base, tmp_path / "all.zip")
    status, out = open_in_app(tab, path)
    assert out is not None, status
    assert not check_views(out, tmp_path)
    # the compared method's name (issue 20: it ran script from the token table) is in the table as text
    p = _Elements()
    p.feed(out[5])
    assert any(H.PAYLOAD in t for t in p.text)
    md = _Elements()
    md.feed(markdown_html(out[2]))
    shown = "".join(md.text)
    assert H.PAYLOAD in shown and "[click](javascript:" in shown  # the link shows as its characters
    names = [s for s in plot_strings(out[10]) if "&lt;img src=x" in s]
    assert names  # the legend names the method, escaped for plotly


def test_escaping_helper_per_output_kind():
    from app import safe

    s = "<img src=x onerror=alert(1)>\"' [a](javascript:x) ![i](y) `c` \\ https://evil.example\nline"
    assert "<" not in safe.html(s) and '"' not in safe.html(s) and "'" not in safe.html(s)
    out = safe.md(s)
    assert not set("<>[]`\\\n") & set(out) and "://" not in out
    # Markdown renders it as exactly its characters (newline folded), with no element from it
    rendered = markdown_html(out)
    assert not markup_problems(rendered)
    parser = _Elements()
    parser.feed(rendered)
    assert "".join(parser.text).strip() == s.replace("\n", " ")
    code = markdown_html(f"x {safe.md_code(s)} y")
    assert "<code>" in code and not markup_problems(code)
    assert safe.tags("<b>x</b> & y") == "&lt;b&gt;x&lt;/b&gt; &amp; y"


def test_admin_job_view_escapes_job_text(tmp_path):
    """A job's files are as hostile as a trace: names in its JSONL rows and log reach the plots
    and the job's Markdown line as text."""
    from app import figures as F

    rows = {f"items-{H.PAYLOAD}": [{"score": 1.0, H.PAYLOAD: 2.0}, {"score": 0.5, H.PAYLOAD: 1.0}]}
    for metric in ("score", H.PAYLOAD):
        assert not plot_problems(F.running_metric_figure(rows, metric))
    log = [{"step": 1, "loss": 0.5, "stage": H.PAYLOAD}, {"step": 2, "loss": 0.4, "stage": H.PAYLOAD}]
    assert not plot_problems(F.training_figure(log))


# ------------------------------------------------------------------------------- 2. bounded
def test_hostile_files_are_refused_in_one_line(base, tab, tmp_path):
    """NaN / inf maps, shapes that disagree with the grid, missing keys, wrong types, broken zips:
    each refused by Trace.load with one line (a ValueError), shown escaped in the status line."""
    from adapt.trace import Trace

    for name, path in H.broken(base, tmp_path).items():
        with pytest.raises(ValueError) as info:
            Trace.load(path)
        msg = str(info.value)
        assert msg and "\n" not in msg and len(msg) < 400, (name, msg)
        status, out = open_in_app(tab, path)
        assert out is None and "is not a readable trace" in status, (name, status)
        assert not markup_problems(markdown_html(status)), (name, status)
        shown = _Elements()
        shown.feed(markdown_html(status))
        assert msg[:100] in "".join(shown.text), (name, msg)  # escaped once: reads as Trace.load wrote it


def test_grid_mismatch_is_refused_not_shown_as_another_map(base, tmp_path):
    """Issue 20: a trace whose grid disagrees with its maps opened as ✅ and showed a different map."""
    from adapt.trace import Trace

    path = H.with_doc(base, tmp_path / "g.zip", lambda d: d.__setitem__("grid", [4, 16]))
    with pytest.raises(ValueError, match=r"shape \(4, 8, 8\).*grid 4×16"):
        Trace.load(path)


def test_limits_follow_the_trace_and_a_hard_ceiling(base, tmp_path):
    """The real trace loads with its arrays intact; the same trace is refused once its arrays
    exceed the ceiling, or its images the pixel limit (the limits are a parameter of load)."""
    from adapt.trace import Trace, TraceLimits

    src = H.base_trace()
    back = Trace.load(base)
    np.testing.assert_array_equal(back.unsteered.maps, src.unsteered.maps)
    np.testing.assert_array_equal(back.anchor, src.anchor)
    assert back.grid == src.grid and back.meta == src.meta and back.image.size == src.image.size
    with pytest.raises(ValueError, match="more than the 1000 bytes"):
        Trace.load(base, TraceLimits(max_array_bytes=1000))
    with pytest.raises(ValueError, match=r"96×96 pixels"):
        Trace.load(base, TraceLimits(max_image_pixels=96 * 95))
    with pytest.raises(ValueError, match="4 steps"):
        Trace.load(base, TraceLimits(max_steps=3))
    # a trace with the sizes of a real checkpoint's (LLaVA-1.5: 24×24 grid, 32 layers) loads
    from app_helpers import synthetic_trace

    big = synthetic_trace(layers=32, grid=(24, 24), steps=16).save(tmp_path / "llava-sized.zip")
    assert Trace.load(big).unsteered.maps.shape == (16, 32, 576)


@pytest.fixture(scope="module")
def bomb_files(base, tmp_path_factory):
    return H.bombs(base, tmp_path_factory.mktemp("bombs"))


def test_bombs_are_refused_before_they_are_unpacked(bomb_files):
    """Each bomb (a few hundred KB that unpack to GBs) is refused by Trace.load in a fresh
    interpreter, adding at most 256 MB to its peak memory, in well under a second."""
    results = {name: H.peak_load(path) for name, path in bomb_files.items()}
    for name, (mb, seconds, outcome) in results.items():
        assert outcome.startswith("refused:"), (name, outcome)
        assert mb <= PEAK_MB, (name, mb, outcome)
        assert seconds < 2.0, (name, seconds)
    assert all(Path(p).stat().st_size < 3_000_000 for p in bomb_files.values())
