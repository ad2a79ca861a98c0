"""VCD, Visual Contrastive Decoding (Leng et al., CVPR 2024): a baseline that contrasts the image
with a distorted copy of itself.

Cited by the paper's section titles ("Visual Uncertainty Amplifies Hallucinations", "Visual
Contrastive Decoding", "Adaptive Plausibility Constraints"; its equation numbers were not checked
against the paper's text, which this repository does not hold). At every decoding step, with
l(x, v) the next-token logits given the image v and l(x, v′) those given v′, the image under
diffusion-style forward noise (the noise schedule and its step are :mod:`adapt.noise`'s, applied to
the processor's normalized pixel tensor as the public code does)::

    p_vcd(y | x, v, v′) = softmax[(1 + α)·l(x, v) − α·l(x, v′)]

restricted by the adaptive plausibility constraint::

    V_head = {y : p(y | x, v) ≥ β · max_w p(w | x, v)}, p_vcd(y) = 0 for y ∉ V_head,

computed on the *original* image's distribution (the public code's ``cutoff = log β + max l``,
the same set). Public defaults: α = 1, β = 0.1, noise step 500 of 1 000 (:class:`VCDConfig`).

**Greedy by default.** The original samples from p_vcd (temperature 1, no top-k / top-p). Here the
token is argmax p_vcd unless ``sample=True``, so VCD is compared with greedy on equal terms: the
difference is the contrast alone, not sampling noise. Greedy also makes the plausibility cutoff
matter less: it only changes the answer where the contrast lifts a token that the original image
finds implausible above every plausible one (the cutoff exists to stop exactly that); under
sampling it also removes the long tail the contrast would otherwise give mass to. With ``sample``,
each answer draws from its own generator (seeded from ``seed`` and the image), so a batch gives
the rows their single runs' answers.

**One forward per step.** The original and the noised image are rows of the same batch (two KV
caches, one model call): rows 0…N−1 see v, rows N…2N−1 see v′. A :class:`VCDLogitsProcessor` in
transformers' own ``generate`` computes each pair's contrast and gives both rows of the pair the
same scores (under sampling: the drawn token only), so the pair stays on one sequence.

The noise ε is drawn per answer from a generator seeded with ``seed`` and a checksum of the image's
pixels: reproducible, and independent of which other images share the batch.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from ..noise import DEFAULT_STEP, NUM_STEPS, forward_noise
from .base import Answer, Method, register


@dataclass
class VCDConfig:
    alpha: float = 1.0  # contrast strength α
    beta: float = 0.1  # adaptive plausibility β (0 keeps every token)
    noise_step: int = DEFAULT_STEP  # forward-noise step of v′ (of adapt.noise.NUM_STEPS)
    sample: bool = False  # draw from p_vcd (the original) instead of taking its argmax
    seed: int = 0  # noise (and sampling) seed; each answer's generator also folds in its image

    def validate(self) -> "VCDConfig":
        if self.alpha < 0:
            raise ValueError(f"VCD alpha must be ≥ 0, got {self.alpha}")
        if not 0 <= self.beta <= 1:
            raise ValueError(f"VCD beta must be in 0 … 1, got {self.beta}")
        if not 0 <= self.noise_step < NUM_STEPS:
            raise ValueError(f"VCD noise_step must be in 0 … {NUM_STEPS - 1}, got {self.noise_step}")
        return self


def plausible(logits: torch.Tensor, beta: float) -> torch.Tensor:
    """The adaptive plausibility set: ``p ≥ β·max p`` under ``logits`` (``[..., V]``), as a mask.
    Tokens already at −inf (masked by another processor) are never plausible."""
    finite = torch.isfinite(logits)
    if beta <= 0:
        return finite
    # p_y / p_max = exp(l_y − l_max): the ratio test needs no softmax
    return finite & (logits >= logits.max(-1, keepdim=True).values + math.log(beta))


def contrast(logits: torch.Tensor, noised: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """(1 + α)·l − α·l′ on the plausible set of ``logits``, −inf elsewhere."""
    keep = plausible(logits, beta)
    # written as l + α(l − l′) so α = 0 returns l exactly
    out = logits + alpha * (logits - noised)
    return out.masked_fill(~keep, float("-inf"))


class VCDLogitsProcessor(LogitsProcessor):
    """Scores for a batch laid out as [N rows on v, N rows on v′]: each pair gets the contrast of its
    two rows, written to both rows so they pick the same token. With ``generators`` (one per pair:
    ``torch.Generator`` objects, or seeds) the token is drawn from softmax(contrast) and only it is left
    finite. Seeds become generators at the first call, on the device of the scores (where the LM head
    put them; with ``device_map`` over several GPUs that need not be the first parameter's)."""

    def __init__(self, n: int, alpha: float, beta: float, generators: list[torch.Generator | int] | None = None):
        self.n, self.alpha, self.beta, self.generators = n, alpha, beta, generators

    def _generators(self, device: torch.device) -> list[torch.Generator]:
        gens = self.generators
        if any(isinstance(g, int) for g in gens):
            gens = self.generators = [torch.Generator(device=device).manual_seed(g) if isinstance(g, int) else g
                                      for g in gens]
        return gens

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        n = self.n
        if scores.shape[0] != 2 * n:
            raise ValueError(f"VCD expects {2 * n} rows (original, noised), got {scores.shape[0]}")
        cd = contrast(scores[:n].float(), scores[n:].float(), self.alpha, self.beta)
        if self.generators is not None:
            probs = torch.softmax(cd, -1)
            picks = torch.stack([torch.multinomial(probs[i], 1, generator=g)[0]
                                 for i, g in enumerate(self._generators(probs.device))])
            cd = torch.full_like(cd, float("-inf")).scatter(-1, picks[:, None], 0.0)
        return torch.cat([cd, cd]).to(scores.dtype)


def image_seed(image, seed: int) -> int:
    """An answer's seed: the configured one folded with a checksum of the image's pixels."""
    return (seed * 1_000_003 + zlib.crc32(image.convert("RGB").tobytes())) % (2 ** 63)


def noise_pixels(inputs: dict, n: int, seeds: list[int], step: int) -> torch.Tensor:
    """``inputs["pixel_values"]`` of a batch of 2n images with images n…2n−1 under forward noise, image
    n + i drawn with ``seeds[i]``. LLaVA gives one tensor per image (dim 0); Qwen2.5-VL concatenates
    the images' patches, t·h·w rows each (``image_grid_thw``)."""
    pv = inputs["pixel_values"]
    if "image_grid_thw" in inputs:
        sizes = [int(s) for s in inputs["image_grid_thw"].prod(-1)]
    else:
        sizes = [1] * pv.shape[0]
    if len(sizes) != 2 * n or sum(sizes) != pv.shape[0]:
        raise ValueError("VCD: cannot split pixel_values into one chunk per image")
    chunks = list(torch.split(pv, sizes))
    for i in range(n):
        g = torch.Generator().manual_seed(seeds[i])
        chunks[n + i] = forward_noise(chunks[n + i], step, g)
    return torch.cat(chunks)


DESCRIPTION = "VCD: logits contrasted with the noised image's, (1+α)·l(v) − α·l(v′), plausibility β (greedy)"


@register("vcd", DESCRIPTION)
class VCD(Method):
    name = "vcd"
    description = DESCRIPTION

    def __init__(self, cfg: VCDConfig | None = None):
        self.cfg = (cfg or VCDConfig()).validate()

    def _answer_group(self, backbone, images, questions, max_new_tokens, **generate_kwargs):
        cfg, n = self.cfg, len(images)
        prepared = backbone.prepare_batch(list(images) * 2, list(questions) * 2)
        seeds = [image_seed(im, cfg.seed) for im in images]
        prepared.inputs["pixel_values"] = noise_pixels(prepared.inputs, n, seeds, cfg.noise_step)
        # sampling seeds offset so sampling and noise draws differ; generators made on the scores' device
        gens = [s + 1 for s in seeds] if cfg.sample else None
        procs = LogitsProcessorList([VCDLogitsProcessor(n, cfg.alpha, cfg.beta, gens)])
        extra = generate_kwargs.pop("logits_processor", None)
        if extra:
            procs = LogitsProcessorList([*extra, *procs])
        out = backbone.generate_batch(prepared, max_new_tokens=max_new_tokens, capture=False, logits_processor=procs,
                                      **generate_kwargs)
        answers = []
        for g, twin in zip(out[:n], out[n:]):
            if g.token_ids != twin.token_ids:  # the processor ties the pair; anything else is a bug
                raise RuntimeError("VCD: the original and noised rows diverged")
            g.seconds *= 2  # generate_batch shares the time over 2n rows; n answers were made
            answers.append(Answer(g.text, g.token_ids, {"tokens": len(g.token_ids)}, g))
        return answers

    def config_dict(self) -> dict:
        return asdict(self.cfg)
