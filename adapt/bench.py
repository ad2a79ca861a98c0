"""Benchmarks that print ratios measured side by side in one run (never timed tests).

``python -m adapt.bench method``: one description (128 new tokens, forced to full length so every
mode writes the same number of tokens) of the embedded model, timed with stock SDPA greedy, greedy
with capture on, and one-pass ADAPT-TF with its defaults (bias maps cached, as in any run after
the first per question), interleaved over several scenes; the last line reads
``method adapt-tf/greedy: 1.12x`` (ADAPT-TF over stock SDPA greedy).

``python -m adapt.bench methods``: every registered method (variants of ADAPT-TF left out, ``adapt-tf``
itself kept) on the same descriptions of the embedded model, one answer at a time, interleaved
over scenes; one line per method (seconds and tokens per answer, ratio to ``greedy`` per answer
and per token) and a last line ``methods vs greedy: adapt-tf 1.12x, ...`` (paper Table 2b's
per-answer ratios, measured side by side in one run) and the peak memory of one answer's tensors per
method (after the timed runs; see ``_peak_memory``). Each method ends its answer where it ends it
(the paper times real answers; tokens per answer are printed beside the seconds). ``--forced``
makes every answer ``--tokens`` long (``min_new_tokens``) instead; past its natural end the model
writes degenerate text, in which OPERA's over-trust pattern keeps firing rollbacks, so forced
lengths measure that loop rather than OPERA on real answers.

``python -m adapt.bench export``: ``export-anchors``'s whole path (parquet in → batched anchor-only run →
enhancement → parquet out) on world scenes against stock-SDPA greedy decoding of K tokens of the same
images, interleaved, at batch 1 / 8 / 32 on the embedded model; one line per batch (images/s, seconds
per 1 000 images, ratio) and a last line ``export per image vs K-step greedy: 1.05x (80.0 images/s,
batch 32)`` (at ``export-anchors``' default batch).

``python -m adapt.bench overhead``: time to generate N tokens with stock SDPA, with capture on,
and with capture + the ASI policy steering every step at every layer, as ratios over stock, on the tiny
configs and on a mid-size random LLaVA (576 image tokens, hidden 1024, 12 layers). On a GPU,
``--device cuda --dtype bfloat16 --configs mid,llava7b`` adds a random model of LLaVA-1.5-7B's
shape (CLIP-L/336 tower, 32 layers of hidden 4096, 576 image tokens).

The three modes run on one model (same weights): stock switches the decoder to transformers'
own SDPA, the other two use the registered function with a recorder active.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image

from .hooks import ATTN_IMPL, AttentionRecorder
from .backbones import LlavaBackbone
from .testing import tiny_llava

CONFIGS = {
    "tiny": dict(hidden=64, layers=2, heads=4, kv_heads=2, image_size=32, patch=8),
    "mid": dict(hidden=1024, layers=12, heads=16, kv_heads=4, image_size=336, patch=14, vision_hidden=64,
                intermediate=2816),
    "llava7b": dict(hidden=4096, layers=32, heads=32, kv_heads=32, intermediate=11008, image_size=336, patch=14,
                    vision_hidden=1024, vision_layers=24, vision_heads=16, vision_intermediate=4096,
                    vocab_words=32064),
}


def every_step_policy(num_layers: int, n: int, layers: list[int] | None = None):
    """The real ASI policy (default operator) steering every (layer, step) of ``layers`` (all by default):
    references given, so it steers from step 0, trigger ``always``. The worst case for the hot path."""
    from .config import ASIConfig
    from .steering import ASIPolicy, References

    w = torch.linspace(0.05, 1.0, n)[None]
    refs = References(w, torch.full((num_layers, 1), 0.5 / n), torch.full((num_layers, 1), 0.9),
                      torch.full((num_layers, 1, n), 0.9 / n))
    return ASIPolicy(num_layers, list(range(num_layers)) if layers is None else layers, ASIConfig(trigger="always"),
                     0, refs=refs)


MODES = ("stock", "capture", "capture+steer")


def _time_generate(bb, prepared, tokens, mode):
    kw = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    bb.model.set_attn_implementation({"text_config": "sdpa" if mode == "stock" else ATTN_IMPL})
    sync = torch.cuda.synchronize if bb.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    with torch.inference_mode():
        if mode == "stock":
            bb.model.generate(**prepared.inputs, **kw)
        else:
            policy = every_step_policy(bb.num_layers, prepared.span.n) if mode == "capture+steer" else None
            with AttentionRecorder(prepared.span, bb.num_layers, policy=policy, max_steps=tokens):
                bb.model.generate(**prepared.inputs, **kw)
    sync()
    return time.perf_counter() - t0


def overhead(name: str, tokens: int, repeats: int, device: str = "cpu", dtype=torch.float32) -> dict[str, float]:
    cfg = CONFIGS[name]
    bb = LlavaBackbone(*tiny_llava(**cfg, dtype=dtype, device=device), name)
    img = Image.fromarray((np.random.default_rng(0).random((cfg["image_size"],) * 2 + (3,)) * 255).astype("uint8"))
    prepared = bb.prepare(img, "describe the image in detail")
    times = {mode: [] for mode in MODES}
    for mode in MODES:  # warm-up
        _time_generate(bb, prepared, min(tokens, 4), mode)
    for _ in range(repeats):  # interleaved, so drift of the machine hits every mode alike
        for mode in MODES:
            times[mode].append(_time_generate(bb, prepared, tokens, mode))
    med = {mode: statistics.median(t) for mode, t in times.items()}
    print(f"{name} on {device} ({str(dtype).removeprefix('torch.')}): {prepared.span.n} image tokens, "
          f"{bb.num_layers} layers, hidden {bb.text_config.hidden_size}, {tokens} new tokens, median of {repeats}: "
          + ", ".join(f"{m} {t:.3f}s ({tokens / t:.0f} tok/s)" for m, t in med.items()), flush=True)
    del bb
    if device != "cpu":
        torch.cuda.empty_cache()
    return {m: med[m] / med["stock"] for m in MODES[1:]}


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


def _interleaved(bb, images, methods: dict, tokens: int, repeats: int, kw: dict,
                 clock: str = "wall") -> dict[str, list[tuple]]:
    """Each method's (seconds, answer) per description, after one warm-up answer each (which also
    fills the bias-map cache); interleaved, so drift of the machine hits every method alike.
    ``clock="process"``: this process's CPU time instead of the wall clock (on a CPU shared with other
    work, the time spent waiting for a core is left out)."""
    now = CLOCKS[clock]
    from .world import DEFAULT_DESCRIBE_PROMPT

    for m in methods.values():
        m.answer(bb, images[0], DEFAULT_DESCRIBE_PROMPT, tokens, **kw)
    runs = {name: [] for name in methods}
    for _ in range(repeats):
        for im in images:
            for name, m in methods.items():
                t0 = now()
                a = m.answer(bb, im, DEFAULT_DESCRIBE_PROMPT, tokens, **kw)
                runs[name].append((now() - t0, a))
    return runs


class _Compiled:
    """A method answered with the steered row's math compiled (:func:`adapt.hooks.compile_writes`)."""

    def __init__(self, method):
        self.method = method

    def answer(self, *args, **kwargs):
        from .hooks import compile_writes

        compile_writes(True)
        try:
            return self.method.answer(*args, **kwargs)
        finally:
            compile_writes(False)


def method_overhead(tokens: int, repeats: int, scenes: int, clock: str = "wall",
                    compiled: bool = False) -> dict[str, float]:
    """Per-answer seconds of stock greedy, greedy with capture and ADAPT-TF on the embedded model (and
    ``compiled``: ADAPT-TF with the steered row's math through ``torch.compile``, compiled in the warm-up)."""
    import tempfile

    from .anchor import BiasCache
    from .backbones import load_backbone
    from .config import AdaptConfig
    from .methods import AdaptTF, Greedy
    from .world import make_split

    bb = load_backbone("embedded")
    images = [s.image() for s in make_split("validation", scenes, seed=7)]
    cfg = AdaptConfig()
    methods = {"stock greedy": Greedy(capture=False), "greedy with capture": Greedy(),
               "adapt-tf": AdaptTF(cfg, BiasCache(tempfile.mkdtemp(prefix="adapt-bench-")))}
    if compiled:
        methods["adapt-tf compiled"] = _Compiled(methods["adapt-tf"])
    runs = _interleaved(bb, images, methods, tokens, repeats, dict(min_new_tokens=tokens), clock)
    fired = sum(a.info["fired"] for _, a in runs["adapt-tf"])
    monitored = sum(a.info["monitored"] for _, a in runs["adapt-tf"])
    med = {name: statistics.median(t for t, _ in r) for name, r in runs.items()}
    print(f"embedded model, {tokens} new tokens, {scenes} scenes x {repeats}, median per answer ({clock} clock): "
          + ", ".join(f"{n} {t * 1000:.1f} ms" for n, t in med.items())
          + f"; ADAPT-TF ({cfg.asi.operator}, trigger {cfg.asi.trigger}, layers {cfg.asi.layers}) fired on "
          f"{fired / max(monitored, 1):.0%} of monitored pairs", flush=True)
    out = {"capture/greedy": med["greedy with capture"] / med["stock greedy"],
           "adapt-tf/greedy-capture": med["adapt-tf"] / med["greedy with capture"]}
    if compiled:
        out["adapt-tf compiled/greedy"] = med["adapt-tf compiled"] / med["stock greedy"]
    out["adapt-tf/greedy"] = med["adapt-tf"] / med["stock greedy"]
    return out


def _peak_memory(run) -> float:
    """Peak memory of the tensors ``run()`` makes, in MiB: CUDA's allocator peak on a GPU; on the CPU the
    live bytes of every storage an aten op returns, followed with a dispatch mode (a storage is released
    with the first tensor that held it; weights and inputs made before are not counted). Run after the
    timed runs: it slows the answer down."""
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - start) / 2 ** 20

    class Live(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.live, self.peak, self.seen = 0, 0, set()

        def _free(self, key, nbytes):
            self.seen.discard(key)
            self.live -= nbytes

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                    st = t.untyped_storage()
                    key = st.data_ptr()
                    if key and key not in self.seen:
                        self.seen.add(key)
                        self.live += st.nbytes()
                        self.peak = max(self.peak, self.live)
                        weakref.finalize(t, self._free, key, st.nbytes())
            return out

    mode = Live()
    with mode:
        run()
    return mode.peak / 2 ** 20


def bench_methods(names: list[str] | None, tokens: int, repeats: int, scenes: int, forced: bool = False,
                  seed: int = 7, clock: str = "wall") -> dict[str, dict[str, float]]:
    """Seconds and tokens per answer of each method on the embedded model's descriptions, and the
    ratio of its seconds to ``greedy``'s (the registry's greedy: capture on, what every steered
    method is compared with in the evaluation tables)."""
    import tempfile

    from .anchor import BiasCache
    from .backbones import load_backbone
    from .config import AdaptConfig
    from .methods import NAMES, describe, get_method
    from .world import make_split

    if names is None:  # the variants of ADAPT-TF are readings of one method: time adapt-tf alone
        names = [n for n in NAMES if ":" not in n]
    if "greedy" not in names:
        names = ["greedy", *names]
    bb = load_backbone("embedded")
    images = [s.image() for s in make_split("validation", scenes, seed=seed)]
    cache = BiasCache(tempfile.mkdtemp(prefix="adapt-bench-"))
    methods = {n: get_method(n, AdaptConfig(), cache) for n in names}
    runs = _interleaved(bb, images, methods, tokens, repeats, dict(min_new_tokens=tokens) if forced else {}, clock)
    secs = {n: [t for t, _ in r] for n, r in runs.items()}
    toks = {n: [len(a.token_ids) for _, a in r] for n, r in runs.items()}
    ref = statistics.mean(secs["greedy"])
    ref_tok = sum(secs["greedy"]) / max(sum(toks["greedy"]), 1)
    from .world import DEFAULT_DESCRIBE_PROMPT

    kw = dict(min_new_tokens=tokens) if forced else {}
    peak = {n: _peak_memory(lambda: m.answer(bb, images[0], DEFAULT_DESCRIBE_PROMPT, tokens, **kw))
            for n, m in methods.items()}
    out = {n: {"seconds": statistics.mean(secs[n]), "tokens": statistics.mean(toks[n]),
               "ratio": statistics.mean(secs[n]) / ref, "peak_mib": peak[n],
               "ratio_per_token": sum(secs[n]) / max(sum(toks[n]), 1) / ref_tok} for n in methods}
    print(f"embedded model, {scenes} scenes x {repeats}, one answer at a time, "
          + (f"{tokens} new tokens each (forced)" if forced else f"up to {tokens} new tokens (each ends its answer)")
          + f", {torch.get_num_threads()} thread(s); mean per answer ({clock} clock):", flush=True)
    lines = describe()
    for n, r in out.items():
        print(f"  {n:<12} {r['seconds'] * 1000:8.1f} ms/answer  {r['tokens']:6.1f} tokens/answer  "
              f"{r['ratio']:5.2f}x greedy ({r['ratio_per_token']:5.2f}x per token)  peak {r['peak_mib']:6.1f} MiB   "
              f"{lines.get(n, methods[n].description)}",
              flush=True)
    return out


def bench_ops(tokens: int = 3) -> dict[str, float]:
    """Extra aten ops per (layer, decoding step) over stock SDPA, and SDPA calls handed a mask tensor.

    A random LLaVA of 32 decoder layers and 576 image tokens (hidden 64: the op count does not depend on
    the width) decodes ``tokens`` and ``tokens + 1`` tokens forced; the difference of the two runs' op
    counts is one decoding step. Counted with a ``TorchDispatchMode`` (every aten op that reaches a
    kernel), so the numbers are the same on every run and every machine. Modes: stock SDPA; capture
    (the recorder on, no policy); ADAPT-TF steered: the one-pass policy (default operator) with
    references given, trigger ``always`` on every layer, so every (layer, step) is read and steered.
    SDPA calls given a mask tensor are counted over the capture and steered runs and a lean run (ASI
    monitoring layer 0 only, so the other layers' decoding steps are handed to SDPA): with a batch of
    one, stock SDPA passes no mask anywhere."""
    from torch.overrides import TorchFunctionMode
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += 1
            return func(*args, **(kwargs or {}))

    class MaskedSDPA(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.calls = self.masked = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.nn.functional.scaled_dot_product_attention:
                self.calls += 1
                mask = kwargs.get("attn_mask", args[3] if len(args) > 3 else None)
                self.masked += mask is not None
            return func(*args, **kwargs)

    layers = 32
    bb = LlavaBackbone(*tiny_llava(hidden=64, layers=layers, heads=4, kv_heads=2, image_size=336, patch=14,
                                   vision_hidden=32), "ops")
    img = Image.fromarray((np.random.default_rng(0).random((336, 336, 3)) * 255).astype("uint8"))
    prepared = bb.prepare(img, "describe the image in detail")
    n = prepared.span.n
    sdpa = MaskedSDPA()

    def count(mode: str, new: int) -> int:
        bb.model.set_attn_implementation({"text_config": "sdpa" if mode == "stock" else ATTN_IMPL})
        kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False)
        ops = Ops()
        with torch.inference_mode():
            if mode == "stock":
                with ops:
                    bb.model.generate(**prepared.inputs, **kw)
            else:
                pol = None if mode == "capture" else every_step_policy(layers, n, None if mode == "steered" else [0])
                rec = AttentionRecorder(prepared.span, layers, policy=pol, lean=True)
                with rec, sdpa, ops:
                    bb.model.generate(**prepared.inputs, **kw)
        return ops.count

    per_step = {m: count(m, tokens + 1) - count(m, tokens) for m in ("stock", "capture", "steered")}
    count("lean", tokens)
    bb.model.set_attn_implementation({"text_config": ATTN_IMPL})
    extra = {m: (per_step[m] - per_step["stock"]) / layers for m in ("capture", "steered")}
    print(f"tiny LLaVA, {layers} layers, {n} image tokens, batch 1: aten ops per decoding step: "
          + ", ".join(f"{m} {c}" for m, c in per_step.items())
          + f" (per layer over stock: capture +{extra['capture']:.1f}, steered +{extra['steered']:.1f}); "
          f"SDPA calls in the capture, steered and lean runs: {sdpa.calls}", flush=True)
    return {"capture": extra["capture"], "steered": extra["steered"], "masked": sdpa.masked}


def bench_export(images: int, repeats: int, batches: list[int], workers: int) -> dict[int, dict]:
    """Images/s of ``export-anchors``'s whole path (parquet in → decode → batched anchor-only run →
    enhancement, PNG encoding → parquet out) against K-token stock-SDPA greedy decoding of the same
    images (decoded from the same parquet, same batches), interleaved, on the embedded model."""
    import io
    import shutil
    import tempfile
    from pathlib import Path

    from datasets import Dataset, Features, Image as ImageF, Value

    from .anchor import BiasCache
    from .backbones import load_backbone
    from .config import AdaptConfig
    from .export import ExportOptions, export_dataset, open_source
    from .world import DEFAULT_DESCRIBE_PROMPT, make_split

    bb = load_backbone("embedded")
    cfg = AdaptConfig()
    k = cfg.anchor.k
    work = Path(tempfile.mkdtemp(prefix="adapt-bench-export-"))
    rows = []
    for i, scene in enumerate(make_split("validation", images, seed=11)):
        buf = io.BytesIO()
        scene.image().save(buf, format="PNG")
        rows.append({"id": f"s{i:05d}", "image": {"bytes": buf.getvalue(), "path": None},
                     "question": DEFAULT_DESCRIBE_PROMPT})
    features = Features({"id": Value("string"), "image": ImageF(), "question": Value("string")})
    (work / "in" / "data").mkdir(parents=True)
    Dataset.from_list(rows, features=features).to_parquet(str(work / "in" / "data" / "train-00000-of-00001.parquet"))
    cache = BiasCache(work / "cache")

    def export(batch: int) -> tuple[float, float]:
        out = work / "out"
        shutil.rmtree(out, ignore_errors=True)
        t0, c0 = time.perf_counter(), time.process_time()
        export_dataset(bb, open_source(work / "in"), out, cfg, cache, ExportOptions(batch_size=batch, workers=workers))
        return time.perf_counter() - t0, time.process_time() - c0

    def greedy(batch: int) -> tuple[float, float]:
        bb.model.set_attn_implementation({"text_config": "sdpa"})
        t0, c0 = time.perf_counter(), time.process_time()
        src = open_source(work / "in")
        pending = []
        with torch.inference_mode():
            for row in src.rows():
                pending.append((Image.open(io.BytesIO(row.image)).convert("RGB"), row.question))
                if len(pending) == batch or row.index == images - 1:
                    prepared = bb.prepare_batch([im for im, _ in pending], [q for _, q in pending])
                    bb.model.generate(**prepared.inputs, max_new_tokens=k, min_new_tokens=k, do_sample=False)
                    pending = []
        seconds = time.perf_counter() - t0, time.process_time() - c0
        bb.model.set_attn_implementation({"text_config": ATTN_IMPL})
        return seconds

    export(batches[0])  # warm-up; fills the bias-map cache, as any run after the first per question
    times = {b: {"export": [], "greedy": []} for b in batches}
    for r in range(repeats):
        for b in batches:  # each side first every other repeat: drift of the machine hits both alike
            for side in ("greedy", "export") if r % 2 == 0 else ("export", "greedy"):
                times[b][side].append((greedy if side == "greedy" else export)(b))
    shutil.rmtree(work, ignore_errors=True)
    out = {}
    # the best of the interleaved repeats, for both sides alike: on a machine shared with other jobs it is
    # the run least slowed by them; the CPU seconds of all threads are printed beside (the work per image)
    print(f"embedded model, {images} world scenes (96x96 PNG in parquet), K = {k}, best of {repeats} interleaved "
          f"repeats, {torch.get_num_threads()} torch thread(s), {workers} worker thread(s):", flush=True)
    for b in batches:
        (e, ec), (g, gc) = (min(times[b][side]) for side in ("export", "greedy"))
        out[b] = {"ratio": e / g, "cpu_ratio": ec / gc, "images_per_s": images / e, "greedy_images_per_s": images / g}
        print(f"  batch {b:>3}: export {images / e:7.1f} images/s ({e / images * 1000:6.1f} s per 1 000 images), "
              f"K-step greedy {images / g:7.1f} images/s: {e / g:.2f}x wall, {ec / gc:.2f}x CPU seconds", flush=True)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m adapt.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    o = sub.add_parser("overhead", help="capture / steering overhead over stock SDPA")
    o.add_argument("--tokens", type=int, default=32)
    o.add_argument("--repeats", type=int, default=5)
    o.add_argument("--configs", default="tiny,mid")
    o.add_argument("--threads", type=int, default=2)
    o.add_argument("--device", default="cpu", help="cpu or cuda")
    o.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    m = sub.add_parser("method", help="ADAPT-TF's time per answer over greedy on the embedded model")
    m.add_argument("--tokens", type=int, default=128)
    m.add_argument("--repeats", type=int, default=3)
    m.add_argument("--scenes", type=int, default=8)
    m.add_argument("--threads", type=int, default=1)
    m.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="process: this process's CPU time")
    m.add_argument("--compile", action="store_true", help="also ADAPT-TF with the steered row's math through "
                                                          "torch.compile (needs a C compiler)")
    ms = sub.add_parser("methods", help="every registered method's time per answer over greedy, side by side")
    ms.add_argument("--methods", default=None, help="comma-separated names (default: every registered method, "
                                                    "ADAPT-TF's variants left out)")
    ms.add_argument("--tokens", type=int, default=128)
    ms.add_argument("--repeats", type=int, default=2)
    ms.add_argument("--scenes", type=int, default=6)
    ms.add_argument("--forced", action="store_true", help="every answer --tokens long (min_new_tokens)")
    ms.add_argument("--threads", type=int, default=1)
    ms.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="process: this process's CPU time")
    op = sub.add_parser("ops", help="extra aten ops per (layer, step) over stock SDPA; SDPA calls with a mask")
    op.add_argument("--threads", type=int, default=1)
    ex = sub.add_parser("export", help="export-anchors' images/s against K-step greedy of the same images")
    ex.add_argument("--images", type=int, default=128)
    ex.add_argument("--repeats", type=int, default=8)
    ex.add_argument("--batches", default="1,8,32", help="batch sizes to time")
    ex.add_argument("--batch-size", type=int, default=32, help="the batch of the headline line (export-anchors' "
                                                                "default)")
    ex.add_argument("--workers", type=int, default=2, help="decoding / encoding threads beside the model")
    ex.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.what == "export":
        batches = sorted({int(b) for b in args.batches.split(",") if b.strip()} | {args.batch_size})
        r = bench_export(args.images, args.repeats, batches, args.workers)[args.batch_size]
        print(f"export per image vs K-step greedy: {r['ratio']:.2f}x ({r['images_per_s']:.1f} images/s, "
              f"batch {args.batch_size})")
        return
    if args.what == "ops":
        r = bench_ops()
        print(f"ops per layer-step vs stock: capture +{r['capture']:.0f}, adapt-tf steered +{r['steered']:.0f}; "
              f"handed-off SDPA calls with a dense mask: {r['masked']}")
        return
    if args.what == "methods":
        from .methods import NAMES

        names = [n.strip() for n in args.methods.split(",") if n.strip()] if args.methods else None
        unknown = [n for n in names or [] if n not in NAMES]
        if unknown:
            p.error(f"unknown method(s) {unknown}; available: {', '.join(NAMES)}")
        out = bench_methods(names, args.tokens, args.repeats, args.scenes, args.forced, clock=args.clock)
        print("methods vs greedy: " + ", ".join(f"{n} {r['ratio']:.2f}x" for n, r in out.items() if n != "greedy"))
        return
    if args.what == "method":
        ratios = method_overhead(args.tokens, args.repeats, args.scenes, args.clock, args.compile)
        for name, value in ratios.items():
            print(f"method {name}: {value:.2f}x")
        return
    unknown = [c for c in args.configs.split(",") if c not in CONFIGS]
    if unknown:
        p.error(f"unknown config(s) {unknown}; available: {', '.join(CONFIGS)}")
    dtype = getattr(torch, args.dtype)
    ratios = {name: overhead(name, args.tokens, args.repeats, args.device, dtype) for name in args.configs.split(",")}
    for name, r in ratios.items():
        for mode, value in r.items():
            print(f"overhead {name} {mode}: {value:.2f}x")


if __name__ == "__main__":
    main()
