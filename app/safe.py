"""The one way a string the app did not write itself reaches the page.

Every string from a trace file, an upload, a job's files or a visitor is hostile: a trace can name
its compared method ``<img src=x onerror=...>``. Each kind of output renders text its own way, so
there is one function per kind; every figure and view passes such strings through the one for
where they go, and nowhere else escapes by hand:

- :func:`html` — inside ``gr.HTML`` or the figures page, as element text or a quoted attribute.
- :func:`md` — inside ``gr.Markdown`` (the summary, status lines, notes): no tag, no link or
  image, no code span can start in it, and it stays on its line.
- :func:`md_code` — shown as code: a backtick span whose fence no backtick inside can close
  (a code span shows its characters as they are: no tag, link or reference is read in it).
- :func:`tags` — plotly titles, legend names and hover text (plotly reads a few tags and links),
  and ``gr.Error`` messages (its toast renders HTML; API clients read the rest as written).

Component labels, ``gr.HighlightedText``, text boxes, dropdowns and table cells of type "str"
are drawn as plain text by the browser: they take the string as it is (escaping would show
``&lt;``).
"""

from __future__ import annotations

import html as _html
import re

# characters that open Markdown structure inline: links and images ([ ]), code (`), escapes (\),
# raw HTML (< > &) and emphasis (* _ ~); written as character references, which Markdown shows but
# never parses
_MD = {ord("&"): "&amp;", ord("<"): "&lt;", ord(">"): "&gt;", ord("["): "&#91;", ord("]"): "&#93;",
       ord("`"): "&#96;", ord("\\"): "&#92;", ord("*"): "&#42;", ord("_"): "&#95;", ord("~"): "&#126;",
       ord("\n"): " ", ord("\r"): " ", 0: None}
_LINE = {ord("\n"): " ", ord("\r"): " ", 0: None}
_TAGS = {ord("&"): "&amp;", ord("<"): "&lt;", ord(">"): "&gt;"}


def html(value) -> str:
    """``value`` as HTML element text or a quoted attribute value (both quote kinds escaped)."""
    return _html.escape(str(value), quote=True)


def md(value) -> str:
    """``value`` as inline Markdown text that renders as exactly its characters, on one line (a
    bare ``scheme://`` is not turned into a link either)."""
    return str(value).translate(_MD).replace("://", "&#58;//")


def md_code(value) -> str:
    """``value`` as inline code in Markdown, on one line: fenced by one backtick more than its
    longest run of them, padded with a space where it starts or ends with one (CommonMark takes
    one space off each side again)."""
    s = str(value).translate(_LINE)
    if not s.strip():
        return md(s)
    fence = "`" * (1 + max((len(r) for r in re.findall("`+", s)), default=0))
    pad = " " if s[0] == "`" or s[-1] == "`" else ""
    return f"{fence}{pad}{s}{pad}{fence}"


def tags(value) -> str:
    """``value`` with only ``& < >`` escaped: for plotly text (titles, trace names, hover
    templates) and ``gr.Error`` messages, which read tags but not Markdown."""
    return str(value).translate(_TAGS)
