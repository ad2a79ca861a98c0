"""Attention-Supervised Inference (paper Sec. 4.2): AMC (Eq. 10), triggers, the readings of Eq. 11
as operators, and the per-row policy that the attention hook points call.

``amc.py``: Eq. 10 and the anchor weights w; ``triggers.py``: when a (step, layer) is steered;
``operators.py``: how it is steered; ``policy.py``: the state that ties them together.
"""

from .amc import amc, steering_weights
from .operators import OPERATOR_INFO, apply_operator
from .policy import ASIPolicy, References, references_from_maps, second_pass_applies, stack_references
from .triggers import fire

__all__ = ["amc", "steering_weights", "ASIPolicy", "References", "references_from_maps", "second_pass_applies", "stack_references", "OPERATOR_INFO", "apply_operator", "fire"]
