"""Test helpers of the app: synthetic traces (no model), a job kind that needs no model, and the
app served as a subprocess for the end-to-end and browser tests."""

from __future__ import annotations

import numpy as np
from PIL import Image


def synthetic_trace(layers: int = 4, grid: tuple[int, int] = (8, 8), steps: int = 0, seed: int = 0,
                    objects: list[str] | None = ("star", "circle"), steered: bool = True):
    """A Trace with plausible shapes: the steered answer names only present objects, the
    unsteered one adds an absent 'moon'."""
    from adapt.trace import AnswerTrace, Trace

    rng = np.random.default_rng(seed)
    h, w = grid
    n = h * w
    yy, xx = np.mgrid[0:h, 0:w]
    blob = np.exp(-((yy - h * 0.3) ** 2 + (xx - w * 0.6) ** 2) / (0.1 * n))
    layer_maps = np.stack([blob * (0.5 + 0.5 * l / max(1, layers - 1)) + rng.random((h, w)) * 0.3
                           for l in range(layers)]).astype(np.float32)
    layer_maps /= layer_maps.sum((1, 2), keepdims=True)
    scores = {k: rng.random(layers).astype(np.float32) for k in ("spec", "smooth", "focus")}
    scores["fused"] = (0.4 * scores["spec"] + 0.3 * scores["smooth"] + 0.3 * scores["focus"]).astype(np.float32)
    lam = np.exp(10 * scores["fused"])
    lam = (lam / lam.sum()).astype(np.float32)
    fused = (layer_maps * lam[:, None, None]).sum(0)
    bias = np.ones((h, w), np.float32)
    bias[0, 0] = 8.0
    bias /= bias.sum()
    mask = 1.0 / (bias + bias.mean())
    mask /= mask.sum()
    anchor = fused * mask
    anchor /= anchor.sum()
    words_u = "the image shows a red star at the top , a blue circle and a yellow moon .".split()
    words_s = "the image shows a red star at the top and a blue circle .".split()

    def answer(words, steer):
        t = min(steps, len(words)) if steps else len(words)
        words = words[:t]
        maps = rng.random((t, layers, n)).astype(np.float32)
        maps /= maps.sum(-1, keepdims=True) * 2
        amc = (0.02 + 0.01 * rng.random((t, layers)) - 0.001 * np.arange(t)[:, None]).astype(np.float32)
        st = np.zeros((t, layers), bool)
        if steer:
            st[t // 2:, ::2] = True
        return AnswerTrace(text=" ".join(words), token_ids=list(range(t)), tokens=words, maps=maps, amc=amc,
                           steered=st, similarity=rng.random((t, layers)).astype(np.float32),
                           change=rng.random((t, layers)).astype(np.float32),
                           mass=rng.random((t, layers)).astype(np.float32), seconds=0.1,
                           image_used="enhanced" if steer else "original")

    img = Image.fromarray((rng.random((96, 96, 3)) * 255).astype("uint8"))
    meta = {"objects": list(objects)} if objects is not None else {}
    return Trace(question="describe the image in detail.", backbone="synthetic", grid=grid,
                 config={"asi": {"tau": 0.6, "mode": "relative"}, "anchor": {"k": 3}}, image=img, enhanced_image=img.copy(),
                 layer_maps=layer_maps, scores=scores, lam=lam, target_entropy=0.85, fused=fused, bias=bias,
                 debias_mask=mask, anchor=anchor, threshold=np.full(layers, 0.012, np.float32),
                 asi_layers=list(range(layers)), unsteered=answer(words_u, False),
                 steered=answer(words_s, True) if steered else None, timings={"total": 0.5}, meta=meta)


# --------------------------------------------------------------------------------------------
# servers for the end-to-end tests
# --------------------------------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_model_dir(path, layers: int = 3) -> str:
    """A random tiny LLaVA saved as a loadable checkpoint folder (no download)."""
    from pathlib import Path

    from adapt.testing import tiny_llava

    path = Path(path)
    if not (path / "config.json").exists():
        model, proc = tiny_llava(layers=layers)
        model.save_pretrained(path)
        proc.save_pretrained(path)
    return str(path)


def start_server(env: dict, port: int, args: tuple = (), log_path=None, timeout: float = 120.0):
    """The app (``python -m app`` through ``tests/app_server.py``, which adds the test job kind) as a
    subprocess on ``port`` (via GRADIO_SERVER_PORT); returns the Popen once the page answers.
    Raises RuntimeError with the log when it does not come up."""
    import os
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    launcher = Path(__file__).resolve().parent / "app_server.py"
    full_env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1",
                    GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **env)
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, str(launcher), *args], cwd=str(root), env=full_env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url + "gradio_api/info", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
    stop_server(proc)
    text = Path(log_path).read_text(errors="replace")[-4000:] if log_path else ""
    raise RuntimeError(f"the app did not start on port {port}:\n{text}")


def stop_server(proc) -> None:
    import os
    import signal
    import subprocess

    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --------------------------------------------------------------------------------------------
# a job kind for the runner's tests: writes fake rows, needs no model
# --------------------------------------------------------------------------------------------
def _selftest_argv(p: dict, out) -> list[str]:
    import sys

    code = ("import json,sys,time,pathlib;o=pathlib.Path(sys.argv[1]);n=int(sys.argv[2]);d=float(sys.argv[3])\n"
            "for i in range(n):\n"
            " time.sleep(d);print('item',i,flush=True)\n"
            " open(o/'items-demo.jsonl','a').write(json.dumps({'i':i,'score':i/max(1,n-1),'ok':i%2==0})+'\\n')\n"
            " (o/'progress.json').write_text(json.dumps({'done':i+1,'total':n,'stage':'demo'}))\n"
            "(o/'summary.json').write_text(json.dumps({'demo':{'score':1.0,'n':n}}))\n")
    return [sys.executable, "-u", "-c", code, str(out), str(p["items"]), str(p["delay"])]


def selftest_kind():
    """The 'selftest' job kind (registered by the tests that use it, never by the app)."""
    from app.jobs import JobKind, Param

    return JobKind(
        name="selftest",
        label="Runner self-test",
        description="Writes a few fake rows (checks the runner, plots and cancel without a model).",
        params=(Param("items", 5, "rows", minimum=1, maximum=1000),
                Param("delay", 0.2, "seconds per row", minimum=0.0, maximum=60.0)),
        build=_selftest_argv,
    )


# --------------------------------------------------------------------------------------------
# a stand-in for `python -m adapt train` that keeps its file contract (tests of the training job
# kinds that must not depend on the trainer itself)
# --------------------------------------------------------------------------------------------
FAKE_TRAIN = r'''
import json, os, signal, sys, time
from pathlib import Path
a = sys.argv[1:]
assert a[0] == "train" and a[1] in ("vag-dpo", "dpo"), a
def opt(name, default=None):
    return a[a.index(name) + 1] if name in a else default
out, steps, delay = Path(opt("--out")), int(opt("--steps", 6)), float(os.environ.get("FAKE_TRAIN_DELAY", "0.05"))
ckpt = out / "checkpoints"
start = 0
if "--resume" in a:
    done = sorted(int(p.name.split("-")[1]) for p in ckpt.glob("step-*"))
    start = done[-1] if done else 0
elif ckpt.exists():
    print("error: already holds a training run; pass --resume", file=sys.stderr); sys.exit(2)
ckpt.mkdir(parents=True, exist_ok=True)
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
log = out / "train_log.jsonl"
keep = [l for l in (log.read_text().splitlines() if log.exists() else []) if json.loads(l)["step"] <= start]
log.write_text("".join(l + "\n" for l in keep))
for step in range(start + 1, steps + 1):
    time.sleep(delay)
    row = {"step": step, "loss": round(0.7 / step, 6), "margin": 0.1 * step, "accuracy": min(1.0, 0.2 * step),
           "lr": 1e-5, "seconds": step * delay}
    with open(log, "a") as f:
        f.write(json.dumps(row) + "\n")
    (out / "progress.json").write_text(json.dumps({"done": step, "total": steps, "stage": "train"}))
    print(f"step {step}", flush=True)
    if stop:
        (ckpt / f"step-{step}").mkdir()
        print(f"stopped at step {step}", flush=True); sys.exit(130)
(ckpt / f"step-{steps}").mkdir(exist_ok=True)
(out / "model").mkdir(exist_ok=True)
(out / "model" / "config.json").write_text("{}")
(out / "summary.json").write_text(json.dumps({"objective": a[1], "steps": steps, "resumed_from": start}))
(out / "progress.json").write_text(json.dumps({"done": steps, "total": steps, "stage": "done"}))
'''


def fake_train_command(tmp_path) -> list[str]:
    """``[python, fake_train.py]``: takes the place of ``python -m adapt`` in the training kinds."""
    import sys

    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    return [sys.executable, "-u", str(script)]
