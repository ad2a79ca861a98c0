"""The Inspect tab's method settings and the :class:`adapt.config.AdaptConfig` they stand for."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Knobs:
    """The Inspect tab's method settings, in the order of its inputs (defaults: ``defaults()``)."""

    k: int
    tau: float
    alpha: float
    w_spec: float
    w_smooth: float
    w_focus: float
    num_noise: int
    enhance: bool
    max_new_tokens: int
    asi_layers: str
    # appended after the older knobs so that API clients passing the first ten keep working
    operator: str = ""
    trigger: str = ""
    mass_tau: float | None = None
    gamma: float | None = None

    def __post_init__(self):
        from adapt.config import AdaptConfig

        asi = AdaptConfig().asi
        # an empty value (an old client, a cleared box) is the library's default
        self.operator = self.operator or asi.operator
        self.trigger = self.trigger or asi.trigger
        self.mass_tau = asi.mass_tau if self.mass_tau in (None, "") else self.mass_tau
        self.gamma = asi.gamma if self.gamma in (None, "") else self.gamma

    @classmethod
    def defaults(cls) -> "Knobs":
        from adapt.config import AdaptConfig

        c = AdaptConfig()
        return cls(k=c.anchor.k, tau=c.asi.tau, alpha=c.asi.alpha, w_spec=c.anchor.w_spec,
                   w_smooth=c.anchor.w_smooth, w_focus=c.anchor.w_focus, num_noise=c.anchor.num_noise,
                   enhance=c.enhance.enabled, max_new_tokens=c.max_new_tokens, asi_layers=c.asi.layers,
                   operator=c.asi.operator, trigger=c.asi.trigger, mass_tau=c.asi.mass_tau, gamma=c.asi.gamma)

    @classmethod
    def from_config(cls, config: dict | None) -> "Knobs":
        """The knobs a saved trace was made with (its ``config`` dict); defaults where it is silent."""
        d = cls.defaults()
        if not isinstance(config, dict):
            return d
        anchor, asi, enh = (config.get(k) if isinstance(config.get(k), dict) else {} for k in ("anchor", "asi", "enhance"))
        layers = asi.get("layers", d.asi_layers)
        return cls(k=anchor.get("k", d.k), tau=asi.get("tau", d.tau), alpha=asi.get("alpha", d.alpha),
                   w_spec=anchor.get("w_spec", d.w_spec), w_smooth=anchor.get("w_smooth", d.w_smooth),
                   w_focus=anchor.get("w_focus", d.w_focus),
                   # the tab has one input for both: M = 0 is "no debiasing"
                   num_noise=0 if anchor.get("debias") is False else anchor.get("num_noise", d.num_noise),
                   enhance=bool(enh.get("enabled", d.enhance)),
                   max_new_tokens=config.get("max_new_tokens", d.max_new_tokens),
                   asi_layers=layers if isinstance(layers, str) else ",".join(map(str, layers)),
                   operator=asi.get("operator", d.operator), trigger=asi.get("trigger", d.trigger),
                   mass_tau=asi.get("mass_tau", d.mass_tau), gamma=asi.get("gamma", d.gamma))

    def values(self) -> list:
        """The values in the order of the tab's inputs."""
        return [self.k, self.tau, self.alpha, self.w_spec, self.w_smooth, self.w_focus, self.num_noise, self.enhance,
                self.max_new_tokens, self.asi_layers, self.operator, self.trigger, self.mass_tau, self.gamma]

    def config(self):
        """The :class:`adapt.config.AdaptConfig` of these knobs (raises ConfigError when invalid)."""
        from adapt.config import AdaptConfig, ConfigError

        def num(v, name, typ):
            try:
                return typ(v)
            except (TypeError, ValueError):
                raise ConfigError(f"{name} must be a number, got {v!r}") from None

        return AdaptConfig().replace(**{
            "anchor.k": num(self.k, "K", int),
            "asi.tau": num(self.tau, "τ", float),
            "asi.alpha": num(self.alpha, "α", float),
            "anchor.w_spec": num(self.w_spec, "ω_spec", float),
            "anchor.w_smooth": num(self.w_smooth, "ω_smooth", float),
            "anchor.w_focus": num(self.w_focus, "ω_focus", float),
            "anchor.num_noise": num(self.num_noise, "noise images", int),
            "anchor.debias": num(self.num_noise, "noise images", int) > 0,
            "enhance.enabled": bool(self.enhance),
            "max_new_tokens": num(self.max_new_tokens, "max new tokens", int),
            # an emptied box means "the default", not "every layer"
            "asi.layers": (self.asi_layers or "").strip() or AdaptConfig().asi.layers,
            "asi.operator": str(self.operator).strip(),
            "asi.trigger": str(self.trigger).strip(),
            "asi.mass_tau": num(self.mass_tau, "mass τ", float),
            "asi.gamma": num(self.gamma, "γ", float),
        })
