"""Benchmarks that print ratios measured side by side in one run (never timed tests).

``python -m adapt.bench overhead``: time to generate N tokens with stock SDPA, with capture on,
and with capture + a bias on every step at every layer, as ratios over stock, on the tiny
configs and on a mid-size random LLaVA (576 image tokens, hidden 1024, 12 layers).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image

from .attention import AttentionRecorder
from .backbones import LlavaBackbone
from .testing import tiny_llava

CONFIGS = {
    "tiny": dict(hidden=64, layers=2, heads=4, kv_heads=2, image_size=32, patch=8),
    "mid": dict(hidden=1024, layers=12, heads=16, kv_heads=4, image_size=336, patch=14, vision_hidden=64,
                intermediate=2816),
}


class EveryStepBias:
    """Steers every (step, layer): the worst case for the hot path."""

    def __init__(self, n: int):
        self.bias = 0.5 * torch.log(torch.linspace(1e-3, 1.0, n))[None]

    def __call__(self, layer, step, attn):
        return self.bias


def _time_generate(bb, prepared, tokens, mode):
    kw = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    t0 = time.perf_counter()
    with torch.inference_mode():
        if mode == "stock":
            bb.model.generate(**prepared.inputs, **kw)
        else:
            policy = EveryStepBias(prepared.span.n) if mode == "capture+steer" else None
            with AttentionRecorder(prepared.span, bb.num_layers, policy=policy):
                bb.model.generate(**prepared.inputs, **kw)
    return time.perf_counter() - t0


def overhead(name: str, tokens: int, repeats: int) -> dict[str, float]:
    cfg = CONFIGS[name]
    ours = LlavaBackbone(*tiny_llava(**cfg, attn="adapt"), name)
    stock = LlavaBackbone(*tiny_llava(**cfg, attn="sdpa"), name)
    img = Image.fromarray((np.random.default_rng(0).random((cfg["image_size"],) * 2 + (3,)) * 255).astype("uint8"))
    prepared = ours.prepare(img, "describe the image in detail")
    runs = {"stock": (stock, []), "capture": (ours, []), "capture+steer": (ours, [])}
    for mode, (bb, _) in runs.items():  # warm-up
        _time_generate(bb, prepared, min(tokens, 4), mode)
    for _ in range(repeats):  # interleaved, so drift of the machine hits every mode alike
        for mode, (bb, times) in runs.items():
            times.append(_time_generate(bb, prepared, tokens, mode))
    med = {mode: statistics.median(times) for mode, (_, times) in runs.items()}
    print(f"{name}: {prepared.span.n} image tokens, {ours.num_layers} layers, hidden "
          f"{ours.text_config.hidden_size}, {tokens} new tokens, median of {repeats}: "
          + ", ".join(f"{m} {t:.3f}s ({tokens / t:.0f} tok/s)" for m, t in med.items()))
    return {m: med[m] / med["stock"] for m in ("capture", "capture+steer")}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m adapt.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    o = sub.add_parser("overhead", help="capture / steering overhead over stock SDPA")
    o.add_argument("--tokens", type=int, default=32)
    o.add_argument("--repeats", type=int, default=5)
    o.add_argument("--configs", default="tiny,mid")
    o.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ratios = {name: overhead(name, args.tokens, args.repeats) for name in args.configs.split(",")}
    for name, r in ratios.items():
        for mode, value in r.items():
            print(f"overhead {name} {mode}: {value:.2f}x")


if __name__ == "__main__":
    main()
