"""When ASI steers a (step, layer): the triggers, each on ``[B]`` tensors (one decision per row).

* ``amc`` (the paper): S_AMC < τ · S_ref,l (``mode="relative"``), or n_img · S_AMC < τ
  (``mode="absolute"``: n_img · AMC is 1 for uniform attention on a flat anchor on any grid, so one τ
  transfers between backbones).
* ``mass``: the image mass M_t < mass_tau · M_ref,l, M_ref,l the layer's anchor-phase mean. AMC is
  invariant to scaling the attention and cannot see the mass drop that signal 3 of the paper names.
* ``amc+mass``: both at once (the most selective).
* ``always``: every monitored (step, layer) after the anchor phase.
"""

from __future__ import annotations

import torch

from ..config import ASIConfig


def amc_low(score: torch.Tensor, s_ref: torch.Tensor, n_img: int, cfg: ASIConfig) -> torch.Tensor:
    if cfg.mode == "absolute":
        return score * n_img < cfg.tau
    return score < cfg.tau * s_ref


def mass_low(mass: torch.Tensor, m_ref: torch.Tensor, cfg: ASIConfig) -> torch.Tensor:
    return mass < cfg.mass_tau * m_ref


def fire(cfg: ASIConfig, score: torch.Tensor, mass: torch.Tensor, s_ref: torch.Tensor, m_ref: torch.Tensor,
         n_img: int) -> torch.Tensor:
    """``[B]`` bool: which rows are steered at this (step, layer)."""
    if cfg.trigger == "always":
        return torch.ones_like(score, dtype=torch.bool)
    if cfg.trigger == "amc":
        return amc_low(score, s_ref, n_img, cfg)
    if cfg.trigger == "mass":
        return mass_low(mass, m_ref, cfg)
    if cfg.trigger == "amc+mass":
        return amc_low(score, s_ref, n_img, cfg) & mass_low(mass, m_ref, cfg)
    raise ValueError(f"unknown trigger {cfg.trigger!r}")


def thresholds(cfg: ASIConfig, s_ref: torch.Tensor, m_ref: torch.Tensor, n_img: int) -> tuple:
    """The per-row thresholds of the AMC and mass tests (computed once per layer, not per step)."""
    amc_thr = torch.full_like(s_ref, cfg.tau / n_img) if cfg.mode == "absolute" else cfg.tau * s_ref
    return amc_thr, cfg.mass_tau * m_ref


def fire_rows(cfg: ASIConfig, score: torch.Tensor | None, mass: torch.Tensor, amc_thr: torch.Tensor,
              mass_thr: torch.Tensor, ones: torch.Tensor) -> torch.Tensor:
    """:func:`fire` with the thresholds precomputed: the same decisions in one or two ops, in a new
    tensor (``ones``, the layer's all-true decision, for ``always``: never to be written to)."""
    if cfg.trigger == "always":
        return ones
    if cfg.trigger == "amc":
        return score < amc_thr
    if cfg.trigger == "mass":
        return mass < mass_thr
    if cfg.trigger == "amc+mass":
        return (score < amc_thr) & (mass < mass_thr)
    raise ValueError(f"unknown trigger {cfg.trigger!r}")
