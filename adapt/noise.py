"""Diffusion-style forward noise, the "distorted image" of VCD and the rejected side of VAG-DPO.

x_t = √ᾱ_t · x₀ + √(1 − ᾱ_t) · ε,  ε ~ N(0, I),  ᾱ_t = ∏_{s ≤ t} (1 − β_s),
β_s = sigmoid(linspace(−6, 6, T))_s · (5e−3 − 1e−5) + 1e−5,  T = 1 000 (VCD's public schedule).

VCD applies it to the processor's *normalized* pixel tensor (:func:`forward_noise`); a saved
preference image must be an image, so :func:`noised_image` applies it to the pixels scaled to the
same spread (CLIP's mean and std) and clips back to 0…255 — the one departure, needed to store it.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

NUM_STEPS = 1000
DEFAULT_STEP = 500  # VCD's published scripts and the paper's VAG-DPO default
# CLIP's normalisation: the scale at which VCD's noise meets LLaVA's (and Qwen2.5-VL's) inputs
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def alpha_bar(step: int, num_steps: int = NUM_STEPS) -> float:
    """ᾱ_t of the sigmoid schedule at ``step`` (0-based, as VCD indexes it)."""
    if not 0 <= step < num_steps:
        raise ValueError(f"noise step must be in 0 … {num_steps - 1}, got {step}")
    betas = torch.sigmoid(torch.linspace(-6, 6, num_steps, dtype=torch.float64)) * (5e-3 - 1e-5) + 1e-5
    return float(torch.cumprod(1 - betas, 0)[step])


def forward_noise(x: torch.Tensor, step: int = DEFAULT_STEP, generator: torch.Generator | None = None,
                  num_steps: int = NUM_STEPS) -> torch.Tensor:
    """x_t for a tensor ``x`` (any shape, e.g. normalized ``pixel_values``); ε drawn with ``generator``."""
    ab = alpha_bar(step, num_steps)
    eps = torch.randn(x.shape, generator=generator, dtype=torch.float32, device="cpu").to(x.device)
    return (ab ** 0.5 * x.float() + (1 - ab) ** 0.5 * eps).to(x.dtype)


def noised_image(image: Image.Image, step: int = DEFAULT_STEP, seed: int = 0,
                 num_steps: int = NUM_STEPS) -> Image.Image:
    """``image`` under forward noise at ``step``, in CLIP-normalized units, clipped back to an RGB image."""
    x = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    mean, std = np.asarray(CLIP_MEAN, np.float32), np.asarray(CLIP_STD, np.float32)
    g = torch.Generator().manual_seed(seed)
    xt = forward_noise(torch.from_numpy((x - mean) / std), step, g, num_steps).numpy()
    return Image.fromarray(np.clip((xt * std + mean) * 255.0 + 0.5, 0, 255).astype(np.uint8))
