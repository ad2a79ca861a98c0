"""ADAPT's training stage: VAG-DPO (paper Sec. 4.3, Eq. 12) and a plain-DPO baseline.

``config`` (every hyperparameter), ``loss`` (Eq. 12), ``data`` (RLAIF-V / RLHF-V from a local path),
``pairs`` (the anchor-guided and noise images, built once), ``world_pairs`` (the world's own set),
``trainer`` (the loop on accelerate), ``cli`` (``python -m adapt train``).
"""

from .config import TrainConfig, TrainError
from .loss import dpo_loss, sequence_logps

__all__ = ["TrainConfig", "TrainError", "dpo_loss", "sequence_logps"]
