"""Every hyperparameter of the preference-tuning stage (VAG-DPO, paper Sec. 4.3, Eq. 12, and plain DPO).

Where the paper gives a value it is the default and says so; where it gives none (its public code
has no training code, only β = 0.1), the default is ours and the comment says why.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace

from ..config import ENHANCE_MODES

OBJECTIVES = ("vag-dpo", "dpo")
IMAGE_SIDES = ("original", "enhanced", "noise")

# the Llama-style decoder's projections; the vision tower and projector are left out, as LLaVA's
# own LoRA recipes do (the tower is frozen in LLaVA's training too)
DEFAULT_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


class TrainError(ValueError):
    """A training run that cannot start as asked (bad data, bad option): the CLI prints one line."""


@dataclass
class TrainConfig:
    """The preference-tuning recipe.

    Eq. 12: L = −log σ(β·[(log π_θ(y_w|x, v_w) − log π_ref(y_w|x, v_w)) − (log π_θ(y_l|x, v_l) −
    log π_ref(y_l|x, v_l))]). ``objective="vag-dpo"`` sets v_w = the anchor-guided image and v_l = the
    noise image; ``"dpo"`` uses the original image on both sides. ``chosen_image`` /
    ``rejected_image`` override the sides (the pair-construction ablation)."""

    objective: str = "vag-dpo"
    beta: float = 0.1                      # paper (and the authors' code constant)
    noise_step: int = 500                  # paper: diffusion-style forward noise, step 500 of 1 000 (VCD's)
    chosen_image: str | None = None        # None: the objective's own (enhanced for vag-dpo, original for dpo)
    rejected_image: str | None = None      # None: noise for vag-dpo, original for dpo
    # how v_w fades low-anchor regions (adapt.enhance.MODES): the paper's fade toward white changes the
    # colours the world's descriptions name; "background", "blur" and "luminance" keep hue
    enhance_mode: str = "paper"
    # optimisation: not in the paper; the values the validation sweep picked for the embedded model
    lr: float = 1e-5
    steps: int = 200
    batch: int = 8                         # pairs per process per micro-step
    grad_accum: int = 1
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1              # cosine decay to this share of lr
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    # parameter-efficient tuning (peft); full tuning trains projector + decoder, the tower stays frozen
    lora: bool = True
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0              # 0: the 1-vs-2-process check and resume are exact
    target_modules: str = DEFAULT_TARGETS
    # departures, off by default: a per-token SFT term on the chosen answer (the DESIGN §8 trial used 1;
    # the shipped model's recipe passes --sft-weight 1)
    sft_weight: float = 0.0
    reference: str = "precomputed"         # "precomputed": log π_ref once, stored with the pairs; "live"
    # bookkeeping
    log_every: int = 1
    save_every: int = 50
    keep_checkpoints: int = 2
    mixed_precision: str = "no"            # no | bf16 | fp16 (accelerate)
    gradient_checkpointing: bool = False   # for 7B-class models
    eval_scenes: int = 0                   # world validation scenes scored after training (0: none)

    def sides(self) -> tuple[str, str]:
        """(v_w, v_l): which image the chosen and the rejected answer are scored on."""
        default = ("enhanced", "noise") if self.objective == "vag-dpo" else ("original", "original")
        return (self.chosen_image or default[0], self.rejected_image or default[1])

    def validate(self) -> "TrainConfig":
        if self.objective not in OBJECTIVES:
            raise TrainError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.enhance_mode not in ENHANCE_MODES:
            raise TrainError(f"enhance_mode must be one of {', '.join(ENHANCE_MODES)}, got {self.enhance_mode!r}")
        for side in self.sides():
            if side not in IMAGE_SIDES:
                raise TrainError(f"an image side is one of {', '.join(IMAGE_SIDES)}, got {side!r}")
        checks = [(self.beta > 0, "--beta must be > 0"), (self.lr > 0, "--lr must be > 0"),
                  (self.steps >= 1, "--steps must be at least 1"), (self.batch >= 1, "--batch must be at least 1"),
                  (self.grad_accum >= 1, "--grad-accum must be at least 1"),
                  (0 <= self.noise_step < 1000, "--noise-step must be in 0 … 999"),
                  (self.sft_weight >= 0, "--sft-weight must be >= 0"), (self.save_every >= 1, "--save-every must be >= 1"),
                  (self.reference in ("precomputed", "live"), "--reference is precomputed or live"),
                  (self.mixed_precision in ("no", "bf16", "fp16"), "--mixed-precision is no, bf16 or fp16"),
                  (self.lora_r >= 1, "--lora-r must be at least 1"), (self.log_every >= 1, "--log-every must be >= 1")]
        for ok, msg in checks:
            if not ok:
                raise TrainError(msg)
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise TrainError(f"unknown training settings: {', '.join(sorted(unknown))}")
        return cls(**d)

    def replace(self, **kw) -> "TrainConfig":
        return replace(self, **kw)

    def fingerprint(self) -> str:
        """What a resumed run must share with the checkpoint (everything but bookkeeping)."""
        d = self.to_dict()
        for k in ("log_every", "save_every", "keep_checkpoints", "eval_scenes", "steps"):
            d.pop(k)
        return json.dumps(d, sort_keys=True)


__all__ = ["TrainConfig", "TrainError", "OBJECTIVES", "IMAGE_SIDES", "DEFAULT_TARGETS"]
