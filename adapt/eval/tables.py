"""The tables of a multi-method evaluation: results like paper Table 1 and cost like its Table 2b.

:func:`results_table`: methods as rows, the task's figures as columns, and for each comparison the
task computed against its first method (the world: CHAIR_i change and POPE accuracy differences,
paired bootstrap) the value with its 95 % interval. :func:`efficiency_table`: mean seconds per
answer and the ratio to greedy, measured in the same run on the same items, with tokens per answer
beside it (a method that writes less is not faster). :class:`TimedMethod` measures them for any task.

:func:`figures_table` / :func:`csv_table` are the transposed long form (one row per figure) that
``summary.md`` / ``summary.csv`` keep.
"""

from __future__ import annotations

import csv
import io
import time

COST_KEYS = ("seconds_per_answer", "tokens_per_answer", "answers")


class TimedMethod:
    """A method seen through a stopwatch: every ``answer_batch`` call's answers, seconds and tokens,
    by the call's ``max_new_tokens``. A task's long-form answers (its largest budget: descriptions,
    captions) are what :func:`efficiency_table` times, as the paper times descriptions; a task with
    only short answers (POPE) is timed on those."""

    def __init__(self, method):
        self.method = method
        self.name = method.name
        self.description = method.description
        self.calls: dict[int, list[float]] = {}  # max_new_tokens -> [answers, seconds, tokens]

    def answer_batch(self, backbone, images, questions, max_new_tokens, **kw):
        t0 = time.perf_counter()
        answers = self.method.answer_batch(backbone, images, questions, max_new_tokens, **kw)
        acc = self.calls.setdefault(int(max_new_tokens), [0, 0.0, 0])
        acc[0] += len(answers)
        acc[1] += time.perf_counter() - t0
        acc[2] += sum(len(a.token_ids) for a in answers)
        return answers

    def answer(self, backbone, image, question, max_new_tokens, **kw):
        return self.answer_batch(backbone, [image], [question], max_new_tokens, **kw)[0]

    def config_dict(self) -> dict:
        return self.method.config_dict()

    def take(self) -> dict | None:
        """The long-form calls since the last ``take``: ``{answers, seconds, tokens}``, then reset."""
        if not self.calls:
            return None
        answers, seconds, tokens = self.calls[max(self.calls)]
        self.calls = {}
        return {"answers": int(answers), "seconds": round(seconds, 6), "tokens": int(tokens)}


def cost_figures(records: list[dict]) -> dict:
    """``seconds_per_answer`` / ``tokens_per_answer`` from records carrying a ``cost`` share each."""
    costs = [r["cost"] for r in records if isinstance(r.get("cost"), dict)]
    answers = sum(c["answers"] for c in costs)
    if not answers:
        return {}
    return {"seconds_per_answer": sum(c["seconds"] for c in costs) / answers,
            "tokens_per_answer": sum(c["tokens"] for c in costs) / answers, "answers": int(round(answers))}


def _fmt(v, digits: int = 4) -> str:
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return "" if v is None else str(v)


def _comparisons(summary: dict) -> list[str]:
    """The keys ``<figure>_vs_<method>`` that come with a ``_ci_low`` / ``_ci_high`` pair."""
    keys = {k for s in summary.values() for k in s if "_vs_" in k and not k.endswith(("_ci_low", "_ci_high"))}
    return sorted(k for k in keys if any(k + "_ci_low" in s for s in summary.values()))


def _with_ci(s: dict, key: str) -> str:
    if s.get(key) is None:
        return ""
    v, lo, hi = s[key], s.get(key + "_ci_low"), s.get(key + "_ci_high")
    if key.startswith("chair_i_change"):  # relative change
        return f"{v:+.1%}" + (f" [{lo:+.1%}, {hi:+.1%}]" if None not in (lo, hi) else "")
    ci = f" [{100 * lo:+.1f}, {100 * hi:+.1f}]" if None not in (lo, hi) else ""
    return f"{100 * v:+.1f}{ci} pts"  # accuracy difference in points


def _label(key: str) -> str:
    figure, _, base = key.partition("_vs_")
    figure = figure.replace("chair_i_change", "CHAIR_i").replace("_acc_diff", " acc").replace("pope_", "POPE ")
    return f"{figure} vs {base} (95 % CI)"


def results_table(summary: dict, keys: tuple[str, ...] = ()) -> str:
    """Paper Table 1's layout in Markdown: one row per method, the figures ``keys`` (default: every
    number) as columns, then each comparison against the first method with its interval."""
    methods = list(summary)
    keys = [k for k in (keys or sorted({k for s in summary.values() for k, v in s.items()
                                        if isinstance(v, (int, float))}))
            if k not in COST_KEYS and "_vs_" not in k and any(summary[m].get(k) is not None for m in methods)]
    comps = _comparisons(summary)
    head = ["method", *keys, *(_label(k) for k in comps)]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for m in methods:
        cells = [m, *(_fmt(summary[m].get(k)) for k in keys), *(_with_ci(summary[m], k) for k in comps)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def baseline_of(methods: list[str]) -> str | None:
    for name in ("greedy", "greedy:sdpa"):
        if name in methods:
            return name
    return methods[0] if methods else None


def efficiency_table(summary: dict) -> str:
    """Paper Table 2b's layout: seconds per answer, its ratio to greedy (else the first method) and
    tokens per answer, for the methods that were timed."""
    timed = [m for m in summary if summary[m].get("seconds_per_answer")]
    base = baseline_of(timed)
    if base is None:
        return ""
    ref = summary[base]["seconds_per_answer"]
    lines = [f"| method | seconds / answer | × {base} | tokens / answer | answers |", "|---|---|---|---|---|"]
    for m in timed:
        s = summary[m]
        lines.append(f"| {m} | {s['seconds_per_answer']:.4f} | {s['seconds_per_answer'] / ref:.2f}× | "
                     f"{s.get('tokens_per_answer', 0):.1f} | {s.get('answers', '')} |")
    return "\n".join(lines) + "\n"


def ratio_line(summary: dict) -> str:
    """``methods vs greedy: adapt-tf 1.12x, vcd 2.10x`` from a summary with timings."""
    timed = [m for m in summary if summary[m].get("seconds_per_answer")]
    base = baseline_of(timed)
    if base is None or len(timed) < 2:
        return ""
    ref = summary[base]["seconds_per_answer"]
    return f"methods vs {base}: " + ", ".join(f"{m} {summary[m]['seconds_per_answer'] / ref:.2f}x"
                                             for m in timed if m != base)


def _rows(summary: dict, keys: tuple[str, ...]) -> list[tuple[str, list]]:
    methods = list(summary)
    keys = keys or tuple(sorted({k for s in summary.values() for k, v in s.items() if isinstance(v, (int, float))}))
    # comparisons against the first method (the world's CHAIR_i change and its CI) follow the figures
    keys = (*keys, *sorted({k for s in summary.values() for k in s if "_vs_" in k and k not in keys}))
    return [(k, [summary[m].get(k) for m in methods]) for k in keys
            if any(summary[m].get(k) is not None for m in methods)]


def figures_table(summary: dict, keys: tuple[str, ...] = ()) -> str:
    """The summary as a Markdown table: one row per figure, one column per method."""
    methods = list(summary)
    lines = ["| metric | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    lines += [f"| {k} | " + " | ".join(_fmt(v) for v in vals) + " |" for k, vals in _rows(summary, keys)]
    return "\n".join(lines) + "\n"


def csv_table(summary: dict, keys: tuple[str, ...] = ()) -> str:
    """The summary as CSV: ``metric,<method>,...``."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["metric", *summary])
    for k, vals in _rows(summary, keys):
        w.writerow([k, *(_fmt(v) for v in vals)])
    return buf.getvalue()


def print_tables(summary: dict, keys: tuple[str, ...] = ()) -> None:
    """Both tables on standard output, as ``eval`` shows them."""
    print(results_table(summary, keys))
    eff = efficiency_table(summary)
    if eff:
        print(eff)
        print(ratio_line(summary))


def write_tables(run_dir, summary: dict, keys: tuple[str, ...] = ()) -> dict[str, str]:
    """``table.md`` (results, the figures ``keys``), ``efficiency.md`` (cost), ``summary.md`` /
    ``summary.csv`` (every figure, long form) and ``summary.png`` (:mod:`adapt.eval.plots`) in
    ``run_dir``; returns the two tables' text."""
    from pathlib import Path

    run_dir = Path(run_dir)
    tables = {"results": results_table(summary, keys), "efficiency": efficiency_table(summary)}
    (run_dir / "table.md").write_text(tables["results"], encoding="utf-8")
    (run_dir / "efficiency.md").write_text(tables["efficiency"] + ratio_line(summary) + "\n", encoding="utf-8")
    (run_dir / "summary.md").write_text(figures_table(summary), encoding="utf-8")  # every figure
    (run_dir / "summary.csv").write_text(csv_table(summary), encoding="utf-8")
    from .plots import summary_plot

    summary_plot(summary, keys or tuple(k for k, _ in _rows(summary, ())), run_dir / "summary.png")
    return tables
