"""Every hyperparameter of the method, with the paper's defaults, in one place (DESIGN.md §3–5)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


class ConfigError(ValueError):
    """An invalid configuration value."""


@dataclass
class AnchorConfig:
    """Visual anchor (paper Sec. 4.1, Eq. 1–9)."""

    # early generated tokens whose attention forms A_l: the paper's K, which the validation sweep on
    # the world (assets/results/sweep) also chose (K 3 / 10 / 20, tried on every layer, did worse).
    k: int = 5
    r_c: float = 0.25  # high-frequency band: radius > r_c · r_max (Eq. 1)
    rho_shallow: float = 0.8  # layer-wise reference ρ̄_l, linear from shallow to deep (Eq. 2)
    rho_deep: float = 0.2
    w_spec: float = 0.4  # ω in Eq. 6
    w_smooth: float = 0.3
    w_focus: float = 0.3
    w_border: float = 0.0  # optional prior of the public code: penalise mass on the border
    w_depth: float = 0.0  # optional prior of the public code: favour deeper layers
    temperature: float = 0.1  # λ = softmax(MM(c) / T); T = 0.1 is the public code's exp(10·c)
    target_entropy: str = "query"  # "query": rule on the question; "model": prefill attention entropy
    h_broad: float = 0.85  # H*(q) for open descriptions
    h_focused: float = 0.6  # H*(q) for pointed questions (one object, colour, count, position, yes/no)
    num_noise: int = 4  # M noise images for the bias map (Eq. 7)
    noise_seed: int = 0
    eps_s: float | None = None  # smoothing in D = N(1/(B+ε_s)); None → mean of B (Eq. 8)
    debias: bool = True
    # which λ fuses the noise images' per-layer maps into B: "image" (the image's own λ, so D corrects
    # the sinks of the layers the anchor is made of) or "noise" (each noise image's own λ, Eq. 7 read
    # literally; black/white fields put λ ≈ 0.9 on a layer the image's λ barely uses)
    bias_lambda: str = "image"
    # "paper": Eq. 1–6 and the noise-image bias map; "authors": the public code's five fixed-weight
    # criteria and border halving instead of noise images (DESIGN §8)
    fusion: str = "paper"


OPERATORS = ("logprior", "logprior-image", "mass-aware", "hhi", "quality", "image-boost")
TRIGGERS = ("amc", "mass", "amc+mass", "always")


@dataclass
class ASIConfig:
    """Attention-Supervised Inference (paper Sec. 4.2, Eq. 10–11): trigger, operator, strength.

    ``operator`` names the reading of Eq. 11 (:mod:`adapt.steering.operators`): ``logprior`` adds
    α·log(w + ε) to the image logits and re-normalises over all keys (the paper's text; the image
    mass falls); ``logprior-image`` re-normalises within the image keys (mass kept; the authors'
    Eq. 11 function); ``mass-aware`` moves attention toward the anchor within the image and restores
    a fraction γ of the drop from the layer's anchor-phase mass; ``hhi`` and ``quality`` are the
    authors' running modes; ``image-boost`` adds a constant to every image logit (no anchor
    direction: PAI-like, not ADAPT). ``trigger`` names when a (step, layer) is steered
    (:mod:`adapt.steering.triggers`).
    """

    enabled: bool = True
    # The defaults are the validation sweep's pick (assets/results/sweep: 233 settings on 1 000 scenes,
    # the rule in adapt.eval.sweep.select): mass-aware on layer 0, fired by the mass ratio. The paper's
    # reading (logprior, relative AMC, α 0.5, all layers) is `adapt-tf:paper`; on the same scenes the
    # logprior operator changed CHAIR_i by +0.4 % … +31 % whatever its trigger, α and layers.
    operator: str = "mass-aware"
    trigger: str = "mass"
    # AMC trigger: AMC < τ · S_ref,l (relative) or n_img · AMC < τ (absolute: n_img · AMC is 1 for
    # uniform attention on a flat anchor, whatever the grid).
    tau: float = 0.6
    mode: str = "relative"  # "relative" | "absolute" (AMC trigger only)
    # mass trigger: image mass M_t < mass_tau · M_ref,l (M_ref,l: the layer's anchor-phase mean)
    mass_tau: float = 0.8
    # steering strength in α·log(w + ε) (logprior, logprior-image, mass-aware's direction); the paper's
    # 0.5, here the direction of the mass-aware reading
    alpha: float = 0.5
    eps: float = 1e-3
    # mass-aware: multiple of the drop M_ref,l − M_t given back; above 1 the layer gets more image
    # attention than in its anchor phase (the sweep: γ 1.5 beat 1.0 and 2.0)
    gamma: float = 1.5
    k1: float = 0.4  # hhi: blend weight k1·(1 − HHI_t / HHI_anchor), the authors' code
    quality_percentile: float = 40.0  # quality: patches below this percentile of the anchor are zeroed
    boost: float = 0.5  # image-boost: added to every image-key logit
    # S_ref and M_ref without step 0 (the prefill's last row: its AMC is ≈ 0.4x the other anchor steps)
    ref_skip_step0: bool = False
    # a second pass steered from step 0 with the first pass's anchor and references: the only way
    # ASI can act on answers shorter than K (yes/no questions)
    # "off" | "short" (rows whose answer ended within the anchor phase) | "pointed" (those and every
    # question that is not an open description) | "all"
    second_pass: str = "off"
    # "all" (the paper) | "top:N" (N highest λ) | "from:i" | comma-separated indices. The sweep chose
    # layer 0 alone on the embedded model (steering the top-λ layers, which sit mid-depth, changed
    # little; every layer cost recall): a choice for this model, to be swept again on another.
    layers: str = "0"


ENHANCE_MODES = ("paper", "background", "blur", "luminance")


@dataclass
class EnhanceConfig:
    """Anchor-guided visual enhancement (paper Sec. 4.1.4)."""

    # ADAPT-TF answers on the enhanced image (the paper's ADAPT-TF does). Off by default: on the
    # validation sweep the embedded model misreads faded shapes (CHAIR_i 0.06 -> 0.29 with a
    # gentle fade, worse with the paper's); the image is still made, shown and exported.
    enabled: bool = False
    # what a low-anchor pixel fades toward (ENHANCE_MODES, adapt.enhance.fade_target): "paper" fades
    # toward white, as Sec. 4.1.4 does, which changes the colours the world's descriptions name; the
    # others keep hue
    mode: str = "paper"
    keep_percentile: float = 50.0  # binary mask: anchor above this percentile is kept as is
    floor: float = 0.35  # weight of the original image where the anchor is lowest
    mask_strength: float = 0.3  # how much the binary mask adds to the soft fade
    blur: float = 0.6  # Gaussian blur of the upsampled anchor, in grid cells


@dataclass
class AdaptConfig:
    anchor: AnchorConfig = field(default_factory=AnchorConfig)
    asi: ASIConfig = field(default_factory=ASIConfig)
    enhance: EnhanceConfig = field(default_factory=EnhanceConfig)
    max_new_tokens: int = 96

    def __post_init__(self):
        self.validate()

    def validate(self) -> "AdaptConfig":
        a, s, e = self.anchor, self.asi, self.enhance
        checks = [
            (a.k >= 1, "anchor.k must be ≥ 1"),
            (0 < a.r_c < 1, "anchor.r_c must be in (0, 1)"),
            (min(a.w_spec, a.w_smooth, a.w_focus, a.w_border, a.w_depth) >= 0, "fusion weights must be ≥ 0"),
            (a.temperature > 0, "anchor.temperature must be > 0"),
            (a.target_entropy in ("query", "model"), "anchor.target_entropy must be 'query' or 'model'"),
            (a.bias_lambda in ("image", "noise"), "anchor.bias_lambda must be 'image' or 'noise'"),
            (a.fusion in ("paper", "authors"), "anchor.fusion must be 'paper' or 'authors'"),
            (0 <= a.h_broad <= 1 and 0 <= a.h_focused <= 1, "target entropies must be in [0, 1]"),
            (0 <= a.num_noise <= 16, "anchor.num_noise must be in 0..16"),
            (s.tau >= 0, "asi.tau must be ≥ 0"),
            (s.alpha >= 0, "asi.alpha must be ≥ 0"),
            (s.eps > 0, "asi.eps must be > 0"),
            (s.mode in ("relative", "absolute"), "asi.mode must be 'relative' or 'absolute'"),
            (s.operator in OPERATORS, f"asi.operator must be one of {', '.join(OPERATORS)}"),
            (s.trigger in TRIGGERS, f"asi.trigger must be one of {', '.join(TRIGGERS)}"),
            (s.mass_tau >= 0 and s.gamma >= 0 and 0 <= s.k1 <= 1, "asi.mass_tau, asi.gamma must be ≥ 0, asi.k1 in [0, 1]"),
            (0 <= s.quality_percentile < 100, "asi.quality_percentile must be in [0, 100)"),
            (s.second_pass in ("off", "short", "pointed", "all"),
             "asi.second_pass must be 'off', 'short', 'pointed' or 'all'"),
            (0 <= e.keep_percentile <= 100, "enhance.keep_percentile must be in [0, 100]"),
            (e.mode in ENHANCE_MODES, f"enhance.mode must be one of {', '.join(ENHANCE_MODES)}"),
            (0 <= e.floor <= 1 and 0 <= e.mask_strength <= 1, "enhance.floor/mask_strength must be in [0, 1]"),
            (1 <= self.max_new_tokens <= 2048, "max_new_tokens must be in 1..2048"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        parse_layers(s.layers, None)  # syntax only: the model's depth is checked at run time
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "AdaptConfig":
        d = dict(d or {})
        parts = {}
        for name, sub in (("anchor", AnchorConfig), ("asi", ASIConfig), ("enhance", EnhanceConfig)):
            parts[name] = _build(sub, d.pop(name, {}) or {})
        unknown = set(d) - {"max_new_tokens"}
        if unknown:
            raise ConfigError(f"unknown config keys: {sorted(unknown)}")
        return cls(**parts, **d)

    def replace(self, **dotted: Any) -> "AdaptConfig":
        """A copy with ``section.name=value`` overrides, e.g. ``replace(**{"asi.tau": 0.5})``."""
        d = self.to_dict()
        for key, value in dotted.items():
            section, _, name = key.rpartition(".")
            target = d[section] if section else d
            if name not in target:
                raise ConfigError(f"unknown config key '{key}'")
            target[name] = value
        return AdaptConfig.from_dict(d)


def _build(cls, values: dict):
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    return cls(**values)


def parse_layers(spec: str, num_layers: int | None, lam=None) -> list[int]:
    """Which decoder layers ASI monitors and steers: ``all``, ``top:N`` (highest λ), ``from:i``, ``0,3,5``.

    ``num_layers=None`` checks the syntax only (the model's depth is known at run time)."""
    spec = (spec or "all").strip()
    depth = num_layers if num_layers is not None else 0
    try:
        if spec == "all":
            return list(range(depth))
        if spec.startswith("top:"):
            n = int(spec[4:])
            if n < 1:
                raise ValueError
            if lam is None:
                return list(range(depth))
            order = sorted(range(depth), key=lambda i: -float(lam[i]))
            return sorted(order[:n])
        if spec.startswith("from:"):
            start = int(spec[5:])
            if start < 0:
                raise ValueError
            return list(range(start, depth))
        layers = sorted({int(x) for x in spec.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(f"asi.layers '{spec}' is not 'all', 'top:N', 'from:i' or a list of indices ≥ 0") from None
    if any(i < 0 for i in layers):
        raise ConfigError(f"asi.layers {layers}: layer indices must be ≥ 0")
    if num_layers is not None and any(i >= num_layers for i in layers):
        raise ConfigError(f"asi.layers {layers}: the model has {num_layers} decoder layers (0..{num_layers - 1})")
    return layers
