"""The app driven the way users drive it: gradio_client against a running ``python -m app``.

A tiny random LLaVA stands in for the embedded model (the model's quality is not under test
here; every endpoint, every error path and the admin gate are).
"""

import json
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402

from app_helpers import free_port, start_server, stop_server, synthetic_trace, tiny_model_dir  # noqa: E402

TOKEN = "test-admin-token-123"
# K, τ, α, ω_spec, ω_smooth, ω_focus, M, enhanced, max new tokens, ASI layers
KNOBS = [5, 0.6, 0.5, 0.4, 0.3, 0.3, 2, True, 8, "all"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("app-files")
    rng = np.random.RandomState(0)
    Image.fromarray((rng.rand(40, 52, 3) * 255).astype("uint8")).save(d / "a.png")
    Image.fromarray((rng.rand(30, 30, 3) * 255).astype("uint8")).save(d / "b.jpg")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with zipfile.ZipFile(d / "batch.zip", "w") as z:
        z.write(d / "a.png", "folder/inzip.png")
        z.writestr("broken.jpg", b"garbage")
        z.writestr("readme.txt", "not an image")
    synthetic_trace().save(d / "synthetic-trace.zip")
    (d / "not-a-trace.zip").write_bytes(b"PK\x03\x04 nope")
    return d


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny-llava") / "model")


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_dir):
    d = tmp_path_factory.mktemp("app-server")
    port = free_port()
    env = {"ADAPT_MODEL": model_dir, "ADAPT_ADMIN_TOKEN": TOKEN,
           "ADAPT_JOBS_DIR": str(d / "jobs"), "ADAPT_CACHE": str(d / "cache"), "ADAPT_APP_SCRATCH": str(d / "scratch")}
    proc = start_server(env, port, log_path=d / "server.log")
    yield {"url": f"http://127.0.0.1:{port}/", "jobs": d / "jobs", "log": d / "server.log"}
    stop_server(proc)
    log = (d / "server.log").read_text(errors="replace")
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]


@pytest.fixture(scope="module")
def client(server):
    return Client(server["url"], verbose=False)


def _error(fn):
    with pytest.raises(Exception) as info:
        fn()
    return str(info.value)


def test_api_lists_the_endpoints(client):
    names = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert {"/inspect", "/open_trace", "/export", "/admin_start", "/admin_jobs", "/admin_job",
            "/admin_cancel", "/admin_resume"} <= names


def test_inspect_returns_every_view(client, model_dir, files):
    out = client.predict(handle_file(str(files / "a.png")), "describe the image", model_dir, *KNOBS,
                         api_name="/inspect")
    (summary, hl_u, hl_s, align, step, layer, step_u, step_s, amc, signals, maps, enhanced, criteria, layers,
     trace_dl) = out
    assert "grid 4×4" in summary and "3 layers" in summary
    # no ground truth for an upload: the legend offers "not verified" only, never "in the image"
    assert list(hl_u["color_map"]) == list(hl_s["color_map"]) == ["object (not verified: no ground truth)"]
    hl_u, hl_s = hl_u["value"], hl_s["value"]
    assert hl_u and hl_s and all("token" in t for t in hl_u)
    assert "<table>" in align and "ADAPT-TF" in align
    assert step["maximum"] >= 1 and layer["choices"][0][0] == "mean"
    assert Path(step_u["value"]).exists() and "step 0" in step_u["label"]
    for fig in (amc, signals, criteria):
        assert fig["type"] == "plotly" and json.loads(fig["plot"])["data"]
    # titles are drawn into the tiles (under the image, with the colour scale), not laid over them
    assert len(maps) == 4 and len(layers) == 3 and all(m["caption"] is None for m in maps + layers)
    for tile in (maps[0], layers[0]):
        w, h = Image.open(tile["image"]).size
        assert h >= round(w * 40 / 52) + 30  # the 52×40 image plus the strip under it
    assert Path(enhanced).exists()
    from adapt.trace import Trace

    trace = Trace.load(trace_dl["value"])
    assert trace.grid == (4, 4) and trace.steered is not None and len(trace.unsteered.tokens) <= 8


def test_inspect_compares_with_a_chosen_method(client, model_dir, files):
    """The comparison method is the last input: "pai" puts PAI's answer beside ADAPT-TF (named in
    the token table and the answer box); operator and trigger knobs reach the saved trace."""
    from adapt.trace import Trace

    knobs = KNOBS + ["logprior", "amc", 0.8, 1.5]
    out = client.predict(handle_file(str(files / "a.png")), "describe the image", model_dir, *knobs, "pai",
                         api_name="/inspect")
    hl_u, align, trace_dl = out[1], out[3], out[-1]
    assert "<th class='run'>pai</th>" in align and "<th class='run'>greedy</th>" not in align
    trace = Trace.load(trace_dl["value"])
    assert trace.meta["compare"] == "pai"
    assert (trace.config["asi"]["operator"], trace.config["asi"]["trigger"]) == ("logprior", "amc")
    assert "".join(t["token"] for t in hl_u["value"]).replace(" ", "") == trace.unsteered.text.replace(" ", "")
    msg = _error(lambda: client.predict(handle_file(str(files / "a.png")), "describe", model_dir, *knobs, "beam",
                                        api_name="/inspect"))
    assert "unknown comparison method 'beam'" in msg and "pai" in msg and "Traceback" not in msg
    bad = list(knobs)
    bad[11] = "sometimes"
    msg = _error(lambda: client.predict(handle_file(str(files / "a.png")), "describe", model_dir, *bad, "greedy",
                                        api_name="/inspect"))
    assert "asi.trigger must be one of amc, mass" in msg


@pytest.mark.parametrize("case", ["no image", "empty question", "corrupt image", "missing model", "folder",
                                  "etc", "passwd", "hub id", "bad number", "negative weight", "bad layers",
                                  "huge image"])
def test_inspect_errors_are_readable(client, model_dir, files, tmp_path, case):
    img, q, bb, knobs = handle_file(str(files / "a.png")), "describe", model_dir, list(KNOBS)
    # a model the server does not offer: one line that names the choices, whatever the name is
    refused = "is not offered on this server; choose one of: "
    expect = {"no image": "Upload an image", "empty question": "type a question",
              "corrupt image": "not a readable image", "missing model": refused, "folder": refused, "etc": refused,
              "passwd": refused, "hub id": refused, "bad number": "abc", "negative weight": "must be ≥ 0",
              "bad layers": "asi.layers", "huge image": "too large"}[case]
    if case == "no image":
        img = None
    elif case == "empty question":
        q = "  "
    elif case == "corrupt image":
        img = handle_file(str(files / "corrupt.png"))
    elif case == "missing model":
        bb = str(tmp_path / "no-such-model")
    elif case == "folder":
        bb = str(tmp_path)
    elif case == "etc":
        bb = "/etc"
    elif case == "passwd":
        bb = "../../etc/passwd"
    elif case == "hub id":
        bb = "llava-hf/llava-1.5-7b-hf"
    elif case == "bad number":
        knobs[1] = "abc"
    elif case == "negative weight":
        knobs[3] = -1
    elif case == "bad layers":
        knobs[9] = "top:x"
    elif case == "huge image":
        Image.new("RGB", (9000, 5000), (255, 255, 255)).save(tmp_path / "huge.png", optimize=False)
        img = handle_file(str(tmp_path / "huge.png"))
    msg = _error(lambda: client.predict(img, q, bb, *knobs, api_name="/inspect"))
    assert expect.lower() in msg.lower(), msg
    assert "Traceback" not in msg and "File \"" not in msg and "verbose error reporting" not in msg


def test_models_not_offered_are_refused_alike_by_every_endpoint(client, model_dir, files, tmp_path):
    """/inspect and /export refuse a path or hub id the operator did not offer with the same line
    whether it exists (a folder, a file) or not: the server's files cannot be probed."""
    (tmp_path / "file.txt").write_text("x")
    img = handle_file(str(files / "a.png"))
    lines = set()
    for name in (str(tmp_path), str(tmp_path / "file.txt"), str(tmp_path / "missing"), "/etc", "org/some-model"):
        for call in (lambda: client.predict(img, "describe", name, *KNOBS, api_name="/inspect"),
                     lambda: client.predict([img], "describe", "", name, *KNOBS, api_name="/export")):
            lines.add(_error(call).replace(name, "NAME"))
    assert len(lines) == 1, lines
    assert "is not offered on this server; choose one of: " in lines.pop()


def test_open_trace_without_the_model(client, files):
    out = client.predict(handle_file(str(files / "synthetic-trace.zip")), api_name="/open_trace")
    summary, hl_u = out[0], out[1]["value"]
    assert set(out[1]["color_map"]) == {"hallucinated", "in the image"}  # the trace has ground truth
    image, question = out[15], out[16]  # the trace's inputs go back into the input boxes
    assert question == "describe the image in detail." and Image.open(image).size == (96, 96)
    assert "synthetic" in summary and "Greedy hallucinates:** `moon`" in summary
    assert any(t["class_or_confidence"] == "hallucinated" and t["token"].strip() == "moon" for t in hl_u)
    msg = _error(lambda: client.predict(handle_file(str(files / "not-a-trace.zip")), api_name="/open_trace"))
    assert "not a readable trace" in msg


def test_export_reports_and_skips_bad_files(client, model_dir, files):
    status, zpath, report, previews = client.predict(
        [handle_file(str(files / "a.png")), handle_file(str(files / "b.jpg")),
         handle_file(str(files / "corrupt.png")), handle_file(str(files / "batch.zip"))],
        "describe the image", "b.jpg: what colour is it?", model_dir, *KNOBS, api_name="/export")
    rows = {r[0]: r for r in report["data"]}
    assert {k: v[2] for k, v in rows.items()} == {"a.png": "ok", "b.jpg": "ok", "inzip.png": "ok",
                                                  "corrupt.png": "skipped", "broken.jpg": "skipped",
                                                  "readme.txt": "skipped"}
    assert rows["b.jpg"][1] == "what colour is it?"
    assert "3 of 6 exported" in status and len(previews) == 3
    with zipfile.ZipFile(zpath) as z:
        names = z.namelist()
        manifest = [json.loads(x) for x in z.read("anchor-export/manifest.jsonl").decode().splitlines()]
    assert sum(n.startswith("anchor-export/images/") for n in names) == 3
    assert sorted(m["status"] for m in manifest) == ["error"] * 3 + ["ok"] * 3
    msg = _error(lambda: client.predict([], "q", "", model_dir, *KNOBS, api_name="/export"))
    assert "Upload images" in msg


def _wait_status(client, job_id, statuses, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.predict(TOKEN, job_id, api_name="/admin_job")
        if job["status"] in statuses:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} stuck in {job['status']}: {job['log_tail']}")


def test_admin_refused_without_the_token(client):
    for token in ("", "wrong", TOKEN + "x"):
        msg = _error(lambda: client.predict(token, "selftest", "{}", api_name="/admin_start"))
        assert "refused" in msg
        assert "refused" in _error(lambda: client.predict(token, api_name="/admin_jobs"))


def test_admin_runs_and_cancels_jobs(client, server):
    out = client.predict(TOKEN, "selftest", json.dumps({"items": 4, "delay": 0.1}), api_name="/admin_start")
    job_id = out[2]["value"]
    job = _wait_status(client, job_id, ("finished", "failed"))
    assert job["status"] == "finished", job
    assert job["summary"] == {"demo": {"score": 1.0, "n": 4}} and job["progress"]["done"] == 4
    # outputs persist on disk; the job list (what a reloaded page shows) still has it
    assert (server["jobs"] / job_id / "out" / "items-demo.jsonl").exists()
    assert job_id in [j["id"] for j in client.predict(TOKEN, api_name="/admin_jobs")]
    # a long job can be cancelled
    out = client.predict(TOKEN, "selftest", json.dumps({"items": 100, "delay": 0.5}), api_name="/admin_start")
    long_id = out[2]["value"]
    _wait_status(client, long_id, ("running",))
    client.predict(TOKEN, long_id, api_name="/admin_cancel")
    assert _wait_status(client, long_id, ("cancelled",))["status"] == "cancelled"
    # bad parameters are refused with a message
    assert "must be" in _error(lambda: client.predict(TOKEN, "selftest", '{"items": "many"}',
                                                     api_name="/admin_start"))
    assert "unknown job kind 'nope'" in _error(lambda: client.predict(TOKEN, "nope", "{}", api_name="/admin_start"))
    assert "not valid JSON" in _error(lambda: client.predict(TOKEN, "selftest", "{", api_name="/admin_start"))


def test_admin_task_and_training_jobs_refuse_bad_paths(client, server, tmp_path):
    """A benchmark task or training job with a path the server does not have is refused with the
    reason before anything starts; nothing is left in the jobs folder."""
    before = {p.name for p in server["jobs"].iterdir()}
    missing = str(tmp_path / "coco_pope_adversarial.json")
    msg = _error(lambda: client.predict(TOKEN, "eval-task", json.dumps({"task": "pope", "questions": missing,
                                                                        "images": str(tmp_path)}),
                                        api_name="/admin_start"))
    assert f"questions: '{missing}' does not exist on the server" in msg
    msg = _error(lambda: client.predict(TOKEN, "eval-task", json.dumps({"task": "chair-coco"}),
                                        api_name="/admin_start"))
    assert "task chair-coco needs 'annotations'" in msg
    msg = _error(lambda: client.predict(TOKEN, "train-vag-dpo", json.dumps({"data": f"rlhf-v:{missing}"}),
                                        api_name="/admin_start"))
    assert "does not exist on the server" in msg and "Traceback" not in msg
    assert {p.name for p in server["jobs"].iterdir()} == before
    # a finished job has nothing to resume; a job of a kind that cannot resume says so
    out = client.predict(TOKEN, "selftest", json.dumps({"items": 1, "delay": 0}), api_name="/admin_start")
    job_id = out[2]["value"]
    _wait_status(client, job_id, ("finished",))
    assert "cannot be resumed" in _error(lambda: client.predict(TOKEN, job_id, api_name="/admin_resume"))


def test_no_admin_without_the_secret(model_dir, tmp_path):
    """Without ADAPT_ADMIN_TOKEN the admin tab and its API do not exist."""
    from app import build_app

    demo = build_app(model=model_dir, admin_token="", warm=False)
    demo.launch(prevent_thread_lock=True, server_port=free_port(), server_name="127.0.0.1", quiet=True)
    try:
        url = demo.local_url
        c = Client(url, verbose=False)
        names = set(c.view_api(return_format="dict", print_info=False)["named_endpoints"])
        assert "/inspect" in names and not any(n.startswith("/admin") for n in names)
        with pytest.raises(Exception):
            c.predict(TOKEN, "selftest", "{}", api_name="/admin_start")
        config = json.loads(urllib.request.urlopen(url + "config").read())
        labels = [c.get("props", {}).get("label") for c in config["components"]]
        assert "Admin token" not in labels and "Inspect" in labels
    finally:
        demo.close()


def test_starts_without_the_embedded_model(monkeypatch):
    """A missing default model is a notice on the page, not a crash."""
    from app.models import model_notice

    import adapt.backbones as bb

    monkeypatch.setattr(bb, "EMBEDDED_DIR", Path("/nonexistent/embedded"))
    assert "embedded model is not installed" in model_notice("embedded")
    assert "missing" in model_notice("/nonexistent/model")
    assert model_notice("some-org/some-hub-model") == ""
