"""A loss of your own: a function (outputs, targets, **settings) -> a scalar tensor. On
classification, outputs are logits (batch, classes) and targets are class indices (batch,)."""

import torch
import torch.nn.functional as F


def focal_loss(outputs: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (Lin et al., 2017): cross-entropy scaled down on examples already right,
    by (1 - p_true)^gamma; gamma=0 is plain cross-entropy."""
    log_p = F.log_softmax(outputs, dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)
    return (-((1 - log_p.exp()) ** gamma) * log_p).mean()


focal_loss.tasks = ("classification",)  # trainlab refuses it on other tasks
