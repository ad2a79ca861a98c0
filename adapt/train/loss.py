"""The preference objective (paper Eq. 12) and the answer log-probabilities it is made of."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE = -100


@dataclass
class DPOOutput:
    """Per-pair terms of Eq. 12 (tensors of shape ``[B]``) and their batch mean ``loss``."""

    loss: torch.Tensor
    losses: torch.Tensor
    chosen_rewards: torch.Tensor    # β·(log π_θ(y_w|x,v_w) − log π_ref(y_w|x,v_w))
    rejected_rewards: torch.Tensor  # β·(log π_θ(y_l|x,v_l) − log π_ref(y_l|x,v_l))

    @property
    def margins(self) -> torch.Tensor:
        return self.chosen_rewards - self.rejected_rewards

    @property
    def accuracies(self) -> torch.Tensor:
        """1 where the chosen answer's implicit reward beats the rejected one's."""
        return (self.chosen_rewards > self.rejected_rewards).float()


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1) -> DPOOutput:
    """Eq. 12: L = −log σ(β·[(log π_θ(y_w|x,v_w) − log π_ref(y_w|x,v_w)) − (log π_θ(y_l|x,v_l) −
    log π_ref(y_l|x,v_l))]), averaged over the batch.

    Every argument is a ``[B]`` tensor of *summed* answer-token log-probabilities; VAG-DPO and plain
    DPO differ only in the images (v_w, v_l) those sums were computed on. The reference terms carry
    no gradient."""
    chosen = beta * (policy_chosen - ref_chosen.detach())
    rejected = beta * (policy_rejected - ref_rejected.detach())
    # logsigmoid, not log(sigmoid): finite for margins far below zero
    losses = -F.logsigmoid(chosen - rejected)
    return DPOOutput(loss=losses.mean(), losses=losses, chosen_rewards=chosen.detach(), rejected_rewards=rejected.detach())


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of log π(token) over the labelled tokens of each row, and their count.

    ``logits[B, L, V]`` from a causal LM over ``input_ids``; ``labels[B, L]`` holds the answer tokens
    and ``-100`` on the prompt, the image tokens and the padding (masked out of Eq. 12's sums). The
    logit at position t predicts the token at t + 1."""
    logits = logits[:, :-1].float()
    target = labels[:, 1:]
    mask = target != IGNORE
    safe = torch.where(mask, target, torch.zeros_like(target))
    # log_softmax then gather, in one pass; float32 so sums of ~100 tokens stay exact enough
    token_logp = torch.gather(logits.log_softmax(-1), 2, safe.unsqueeze(-1)).squeeze(-1)
    return (token_logp * mask).sum(-1), mask.sum(-1)
