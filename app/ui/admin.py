"""The Admin tab (only with an operator's secret): start, watch and cancel background jobs.

Page events report errors in the tab's status line; the ``/admin_*`` API endpoints raise them.
"""

from __future__ import annotations

import json
import time
import zipfile

import gradio as gr

from .. import figures as F
from .. import safe
from ..jobs import KINDS, JobRunner
from ..names import scrub, shown_path
from ..scratch import scratch_dir
from .errors import UserError, esc, friendly, reporting
from .state import App

JOB_HEADERS = ["job", "kind", "status", "progress", "created", "seconds", "message"]
ITEM_COLUMNS = ("index", "id", "is_trap", "truth", "description", "mentioned", "hallucinated", "status", "error",
                "output", "seconds")


# ----------------------------------------------------------------------------------- tables
def job_rows(runner: JobRunner) -> list[list]:
    rows = []
    for j in runner.list()[:200]:
        p = runner.progress(j.id)
        prog = f"{p.get('done', 0)}/{p['total']}" if p.get("total") else ""
        if p.get("stage"):
            prog = f"{prog} {p['stage']}".strip()
        dur = j.duration
        rows.append([j.id, j.kind, j.status, prog, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.created)),
                     None if dur is None else round(dur, 1), scrub(j.message, runner.root)])
    return rows


def summary_table(summary) -> tuple[list[str], list[list]]:
    """``summary.json`` as a table: one row per metric, one column per method (few columns, so
    the headers keep their words)."""
    if not isinstance(summary, dict) or not summary:
        return ["result"], []
    if all(isinstance(v, dict) for v in summary.values()):
        methods = list(summary)
        metrics = list(dict.fromkeys(k for v in summary.values() for k in v))
        return ["metric", *methods], [[m, *(_fmt(summary[name].get(m)) for name in methods)] for m in metrics]
    return ["key", "value"], [[k, _fmt(v)] for k, v in summary.items()]


def items_table(rows_by_file: dict, n: int = 15) -> tuple[list[str], list[list]]:
    """The newest ``n`` rows of every JSONL file, a few readable columns each; the first column
    names the method for ``items-<method>.jsonl`` files, the file otherwise."""
    tagged = [(name, i, r) for name, rows in rows_by_file.items() for i, r in enumerate(rows[-n:])]
    if not tagged:
        return ["item"], []
    present = [c for c in ITEM_COLUMNS if any(c in r for _, _, r in tagged)]
    if not present:
        present = list(dict.fromkeys(k for _, _, r in tagged for k in r))[:8]
    tagged.sort(key=lambda t: -t[1])
    by_method = all(name.split("/")[-1].startswith("items-") for name in rows_by_file)
    out = []
    for name, _, r in tagged[: 3 * n]:
        cells = []
        for c in present:
            v = r.get(c, "")
            if isinstance(v, list):
                v = ", ".join(map(str, v))
            elif isinstance(v, float):
                v = round(v, 3)
            elif isinstance(v, dict):
                v = json.dumps(v)
            v = str(v) if not isinstance(v, (int, float)) else v
            cells.append(v[:160] if isinstance(v, str) else v)
        out.append([name.replace("items-", "") if by_method else name] + cells)
    return ["method" if by_method else "file"] + present, out


def tuned_note(runner: JobRunner, job) -> str:
    """Where a finished training job's model is offered (the Inspect tab's backbone box)."""
    from ..trainjob import JOB_PREFIX, tuned_models

    if job.status != "finished" or not job.kind.startswith("train-"):
        return ""
    for label, value in tuned_models(runner):
        if value == JOB_PREFIX + job.id:
            return (f"  \nTuned model: **{esc(label)}** in the Inspect tab's backbone box (reload the page), "
                    "to compare with its base on the same image.")
    return ""


def _fmt(v):
    if isinstance(v, float):
        return round(v, 4)
    if isinstance(v, (dict, list)):
        return json.dumps(v)[:200]
    return v


# -------------------------------------------------------------------------------------- tab
class AdminTab:
    """Layout (``__init__`` builds the ``gr.Tab``) and events (:meth:`wire`)."""

    def __init__(self, app: App):
        self.app = app
        self.runner = app.runner
        kinds = sorted(KINDS)
        first = "world-eval" if "world-eval" in KINDS else kinds[0]
        with gr.Tab("Admin", id="admin") as self.tab:
            gr.Markdown("Background jobs: benchmarks and batch exports run as separate processes; they keep running "
                        "when this page is closed, and their outputs stay on the server under "
                        f"{safe.md_code(shown_path(self.runner.root))}.")
            with gr.Row():
                self.token = gr.Textbox(label="Admin token", type="password", scale=3, elem_id="adapt-admin-token")
                self.unlock = gr.Button("Unlock", scale=1, elem_id="adapt-admin-unlock")
            self.status = gr.Markdown(elem_id="adapt-admin-status")
            with gr.Column(visible=False) as self.panel:
                with gr.Row(equal_height=False):
                    with gr.Column(scale=1):
                        # any value reaches the runner, whose refusal names the kinds (Gradio's own
                        # check would log a traceback and answer in its words)
                        self.kind = gr.Dropdown(kinds, value=first, label="Job kind", allow_custom_value=True)
                        self.params = gr.Code(json.dumps(KINDS[first].defaults(), indent=1), language="json",
                                              label="Parameters (JSON)", lines=8)
                        self.start = gr.Button("Start job", variant="primary", elem_id="adapt-admin-start")
                    with gr.Column(scale=1):
                        self.kind_help = gr.Markdown(KINDS[first].help_markdown())
                self.jobs_df = gr.Dataframe(headers=JOB_HEADERS, label="Jobs (newest first)", interactive=False,
                                            wrap=True, max_height=300)
                with gr.Row():
                    self.job_sel = gr.Dropdown([], label="Job", allow_custom_value=True, scale=3)
                    self.cancel = gr.Button("Cancel job", variant="stop", scale=1)
                    self.resume = gr.Button("Resume job", scale=1, elem_id="adapt-admin-resume")
                    self.zip_btn = gr.Button("Zip outputs", scale=1)
                    self.zip_dl = gr.DownloadButton("Download outputs", value=None, interactive=False, scale=1)
                self.job_info = gr.Markdown()
                self.metric = gr.Dropdown([], label="Metric (running mean over items)", allow_custom_value=True)
                self.metric_plot = gr.Plot(label="Live metrics")
                # a row of its own: beside the plot the headers were squeezed to a letter per line
                self.results_df = gr.Dataframe(label="Results (summary.json): one row per metric", interactive=False,
                                               wrap=False, elem_id="adapt-admin-results")
                self.items_df = gr.Dataframe(label="Latest items (JSONL rows, newest first)", interactive=False,
                                             wrap=True, max_height=320)
                self.log = gr.Textbox(label="Log (tail)", lines=14, max_lines=14, autoscroll=True, interactive=False)
            self.timer = gr.Timer(2.0, active=False)
            self.api_start = gr.Button(visible=False)
            self.api_cancel = gr.Button(visible=False)
            self.api_resume = gr.Button(visible=False)
            self.api_outputs = gr.Button(visible=False)

    @property
    def detail_outs(self) -> list:
        return [self.job_info, self.log, self.metric_plot, self.results_df, self.metric, self.items_df]

    # ------------------------------------------------------------------------------------ work
    def detail(self, job_id, metric_name) -> tuple:
        runner = self.runner
        if not job_id:
            return ("*No job selected.*", "", None, gr.Dataframe(value=[], headers=["result"]),
                    gr.Dropdown(choices=[], value=None), gr.Dataframe(value=[], headers=["item"]))
        job = runner.get(job_id)
        p = runner.progress(job_id)
        done, total = p.get("done"), p.get("total")
        bar = ""
        if total:
            frac = max(0.0, min(1.0, float(done or 0) / float(total)))
            bar = (f" · **{esc(done)}/{esc(total)}** ({frac:.0%})"
                   + (f" · {esc(p['stage'])}" if p.get("stage") else ""))
        command = scrub(" ".join(job.argv[2:]), runner.out_dir(job_id), runner.root)[:400]
        info = (f"**{esc(job.id)}** · {safe.md_code(job.kind)} · **{esc(job.status)}**{bar}"
                + (f" · {job.duration:.0f} s" if job.duration is not None else "")
                + (f"  \n{esc(scrub(job.message, runner.root))}" if job.message else "")
                + f"  \n{safe.md_code(command)}")
        info += tuned_note(runner, job)
        rows = runner.rows(job_id)
        keys = F.numeric_keys(rows)
        if metric_name not in keys:
            metric_name = F.default_metric(keys)
        train_log = rows.get("train_log") or []
        training = F.is_training_log(train_log)
        if training:  # per step, not a running mean over items (the metric box has no say in it)
            fig = F.training_figure(train_log)
        else:
            fig = F.running_metric_figure(rows, metric_name) if rows else None
        headers, table = summary_table(runner.summary(job_id))
        # results name files by where they were written (a tuned model's folder): not the server's layout
        table = [[scrub(c, runner.out_dir(job_id), runner.root) if isinstance(c, str) else c for c in row]
                 for row in table]
        item_headers, item_rows = items_table(rows)
        return (info, runner.log_tail(job_id, 12_000), fig, gr.Dataframe(value=table, headers=headers),
                gr.Dropdown(choices=keys, value=metric_name, visible=not training),
                gr.Dataframe(value=item_rows, headers=item_headers))

    def unlocked(self, tok):
        self.app.check_admin(tok)
        rows = job_rows(self.runner)
        ids = [r[0] for r in rows]
        sel = ids[0] if ids else None
        return ("", gr.Column(visible=True), gr.Timer(active=True), rows, gr.Dropdown(choices=ids, value=sel),
                *self.detail(sel, None))

    def started(self, tok, kind_name, params_text):
        self.app.check_admin(tok)
        try:
            p = json.loads(params_text or "{}")
        except json.JSONDecodeError as exc:
            raise UserError(f"Parameters are not valid JSON: {exc}") from None
        if not isinstance(p, dict):
            raise UserError("Parameters must be a JSON object.")
        job = self.runner.submit(kind_name, p)
        rows = job_rows(self.runner)
        return (f"Started **{esc(job.id)}** ({esc(job.status)}).", rows,
                gr.Dropdown(choices=[r[0] for r in rows], value=job.id),
                *self.detail(job.id, None))

    def cancelled(self, tok, job_id):
        self.app.check_admin(tok)
        if not job_id:
            raise UserError("Select a job first.")
        job = self.runner.cancel(job_id)
        return f"**{esc(job.id)}** is {esc(job.status)}.", job_rows(self.runner), *self.detail(job_id, None)

    def resumed(self, tok, job_id):
        self.app.check_admin(tok)
        if not job_id:
            raise UserError("Select a job first.")
        job = self.runner.resume(job_id)
        return f"**{esc(job.id)}** is {esc(job.status)} again (resumed in its own folder).", job_rows(self.runner), \
            *self.detail(job_id, None)

    def zipped(self, tok, job_id):
        self.app.check_admin(tok)
        if not job_id:
            raise UserError("Select a job first.")
        runner = self.runner
        runner.get(job_id)
        path = scratch_dir("job") / f"{job_id}.zip"
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for f in runner.files(job_id):
                z.write(f, f.relative_to(runner.out_dir(job_id)))
            if runner.log_path(job_id).exists():
                z.write(runner.log_path(job_id), "log.txt")
        return "", gr.DownloadButton(value=str(path), interactive=True)

    def one_job(self, tok, job_id, metric_name=None):
        self.app.check_admin(tok)
        return ("", *self.detail(job_id, metric_name))

    def tick(self, tok, job_id, metric_name):
        if not self.app.token_ok(tok):
            return (gr.Timer(active=False), gr.skip(), gr.skip(), *([gr.skip()] * len(self.detail_outs)))
        rows = job_rows(self.runner)
        ids = [r[0] for r in rows]
        sel = job_id if job_id in ids else (ids[0] if ids else None)
        return (gr.skip(), rows, gr.Dropdown(choices=ids, value=sel), *self.detail(sel, metric_name))

    def kind_changed(self, kind_name):
        k = KINDS.get(kind_name)
        if k is None:
            return gr.skip(), gr.skip()
        return json.dumps(k.defaults(), indent=1), k.help_markdown()

    # ---------------------------------------------------------------------------------- events
    def wire(self) -> None:
        detail = self.detail_outs
        priv = dict(api_visibility="private")
        watch = dict(priv, concurrency_id="admin", concurrency_limit=4)
        unlock_outs = [self.status, self.panel, self.timer, self.jobs_df, self.job_sel, *detail]
        for trigger in (self.unlock.click, self.token.submit):
            trigger(reporting(self.unlocked, len(unlock_outs) - 1), [self.token], unlock_outs, **priv)
        self.kind.change(self.kind_changed, [self.kind], [self.params, self.kind_help], **priv, queue=False)
        start_ins, start_outs = [self.token, self.kind, self.params], [self.status, self.jobs_df, self.job_sel, *detail]
        self.start.click(reporting(self.started, len(start_outs) - 1), start_ins, start_outs, **priv)
        self.api_start.click(friendly(self.started), start_ins, start_outs, api_name="admin_start")
        cancel_ins, cancel_outs = [self.token, self.job_sel], [self.status, self.jobs_df, *detail]
        self.cancel.click(reporting(self.cancelled, len(cancel_outs) - 1), cancel_ins, cancel_outs, **priv)
        self.api_cancel.click(friendly(self.cancelled), cancel_ins, cancel_outs, api_name="admin_cancel")
        self.resume.click(reporting(self.resumed, len(cancel_outs) - 1), cancel_ins, cancel_outs, **priv)
        self.api_resume.click(friendly(self.resumed), cancel_ins, cancel_outs, api_name="admin_resume")
        zip_outs = [self.status, self.zip_dl]
        self.zip_btn.click(reporting(self.zipped, 1), cancel_ins, zip_outs, **priv)
        self.api_outputs.click(friendly(self.zipped), cancel_ins, zip_outs, api_name="admin_outputs")
        job_outs = [self.status, *detail]
        for trigger in (self.job_sel.input, self.metric.input):
            trigger(reporting(self.one_job, len(detail)), [self.token, self.job_sel, self.metric], job_outs, **watch)
        def tick(*args):
            try:
                return self.tick(*args)
            except Exception:  # a job record gone between two ticks: the next tick shows the list again
                return (gr.skip(),) * (3 + len(detail))

        self.timer.tick(tick, [self.token, self.job_sel, self.metric],
                        [self.timer, self.jobs_df, self.job_sel, *detail], show_progress="hidden", **watch)

        app = self.app

        def admin_jobs(token: str) -> list:
            """Every job with its progress (needs the admin token)."""
            app.check_admin(token)
            return [j.to_dict() | {"progress": app.runner.progress(j.id)} for j in app.runner.list()]

        def admin_job(token: str, job_id: str) -> dict:
            """One job: record, progress, summary and the tail of its log (needs the admin token)."""
            app.check_admin(token)
            job = app.runner.get(job_id)
            return job.to_dict() | {"progress": app.runner.progress(job_id), "summary": app.runner.summary(job_id),
                                    "log_tail": app.runner.log_tail(job_id, 4000)}

        with self.tab:
            gr.api(friendly(admin_jobs), api_name="admin_jobs")
            gr.api(friendly(admin_job), api_name="admin_job")
