"""Latency of one full analysis as the app serves it (anchor, both answers, every figure).

    python -m app.bench                 # embedded model, example scenes, bias map cached
    python -m app.bench --model DIR --repeats 10

Two measurements per image, after a warm-up call that loads the model and fills the bias-map
cache for the question:

* ``in-process``: :func:`app.analysis.analyse` + every figure of the Inspect tab + the trace file
  (exactly what the Inspect handler computes);
* ``end-to-end``: the ``/inspect`` endpoint of the app launched on a local port, called through
  ``gradio_client`` (adds the queue, serialisation of every output, image encoding, HTTP).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time


def _images(n: int):
    from .examples import load_presets

    presets = load_presets()
    if presets:
        return [(e["path"], e["question"]) for e in presets[:n]]
    import tempfile

    from adapt.world.datasets import make_split
    from adapt.world.language import DEFAULT_DESCRIBE_PROMPT

    d = tempfile.mkdtemp(prefix="adapt-bench-")
    out = []
    for s in make_split("test", 2 * n)[1::2][:n]:
        p = os.path.join(d, f"scene-{s.seed}.png")
        s.image().save(p)
        out.append((p, DEFAULT_DESCRIBE_PROMPT))
    return out


def main(argv=None) -> int:
    from adapt.argtypes import int_range, out_file, positive_int, threads

    ap = argparse.ArgumentParser(prog="python -m app.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--images", type=positive_int, default=3)
    ap.add_argument("--repeats", type=positive_int, default=5, help="timed calls per image")
    ap.add_argument("--threads", type=threads, default=None,
                    help="torch threads (default: the app's policy, 1 for small models)")
    ap.add_argument("--max-new-tokens", type=int_range(1, 2048), default=None, help="default: the config's value")
    ap.add_argument("--no-server", action="store_true", help="skip the end-to-end measurement")
    ap.add_argument("--json", default=None, type=out_file, help="also write the results here")
    args = ap.parse_args(argv)

    from adapt.backbones import load_backbone
    from adapt.images import load_image
    from adapt.threads import use_threads

    from .analysis import analyse
    from .knobs import Knobs
    from .ui.views import render, save_trace

    knobs = Knobs.defaults()
    if args.max_new_tokens:
        knobs.max_new_tokens = args.max_new_tokens
    t0 = time.perf_counter()
    bb = load_backbone(args.model)
    threads = use_threads(bb, args.threads)  # what the app uses for this model
    print(f"model {bb.name}: {bb.num_layers} layers, loaded in {time.perf_counter() - t0:.2f} s; "
          f"torch threads {threads}", file=sys.stderr)
    items = _images(args.images)

    def full(path, question):
        img = load_image(path)
        a = time.perf_counter()
        trace = analyse(bb, img, question, knobs)
        b = time.perf_counter()
        render(trace)
        save_trace(trace)
        c = time.perf_counter()
        return trace, b - a, c - b

    results = {"model": bb.name, "threads": threads, "max_new_tokens": knobs.max_new_tokens}
    for path, q in items:  # warm-up: bias map per question, lazy imports
        full(path, q)
    totals, figs, tokens = [], [], []
    for _ in range(args.repeats):
        for path, q in items:
            trace, t_an, t_fig = full(path, q)
            assert trace.bias_cache_hit or trace.bias is None
            totals.append(t_an + t_fig)
            figs.append(t_fig)
            tokens.append(len(trace.unsteered.tokens) + (len(trace.steered.tokens) if trace.steered else 0))
    results["in_process"] = _stats(totals) | {"figures_median_s": round(statistics.median(figs), 3),
                                               "tokens_per_call_mean": round(statistics.mean(tokens), 1)}
    print(f"in-process  (analysis + every figure): median {results['in_process']['median_s']:.3f} s, "
          f"p90 {results['in_process']['p90_s']:.3f} s, max {results['in_process']['max_s']:.3f} s "
          f"(figures {results['in_process']['figures_median_s']:.3f} s; "
          f"{results['in_process']['tokens_per_call_mean']:.0f} tokens per call, both answers)")

    if not args.no_server:
        results["end_to_end"] = _server(args.model, items, knobs, args.repeats)
        e = results["end_to_end"]
        print(f"end-to-end  (/inspect through gradio_client): median {e['median_s']:.3f} s, "
              f"p90 {e['p90_s']:.3f} s, max {e['max_s']:.3f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


def _server(model, items, knobs, repeats):
    from gradio_client import Client, handle_file

    from . import build_app

    demo = build_app(model=model, admin_token="", warm=False)
    demo.launch(prevent_thread_lock=True, server_port=_free_port(), server_name="127.0.0.1", quiet=True)
    try:
        client = Client(demo.local_url, verbose=False, download_files=False)
        k = knobs
        values = [k.k, k.tau, k.alpha, k.w_spec, k.w_smooth, k.w_focus, k.num_noise, k.enhance, k.max_new_tokens,
                  k.asi_layers]
        for path, q in items:
            client.predict(handle_file(path), q, model, *values, api_name="/inspect")
        times = []
        for _ in range(repeats):
            for path, q in items:
                a = time.perf_counter()
                client.predict(handle_file(path), q, model, *values, api_name="/inspect")
                times.append(time.perf_counter() - a)
        return _stats(times)
    finally:
        demo.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stats(xs):
    xs = sorted(xs)
    return {"n": len(xs), "median_s": round(statistics.median(xs), 3),
            "p90_s": round(xs[min(len(xs) - 1, int(0.9 * len(xs)))], 3), "max_s": round(xs[-1], 3),
            "mean_s": round(statistics.mean(xs), 3)}


if __name__ == "__main__":
    raise SystemExit(main())
