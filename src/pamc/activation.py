"""BoostLU: amplify the positive part of a class activation map before pooling.

Models trained with partial labels attend to the right regions but with smaller positive
attributions than full-label models (Kim et al., CVPR 2023); BoostLU(x) = alpha*x for x > 0 and
x otherwise restores that scale.  Applied to the CAM *before* global average pooling it is not a
monotone function of the logit, so even inference-only boosting changes per-class rankings.
"""
from __future__ import annotations

import torch
from torch import nn

from .errors import PamcError


def check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not alpha >= 1.0:  # also rejects NaN
        raise PamcError(f"BoostLU alpha must be >= 1 (got {alpha}); alpha = 1 disables boosting")
    return alpha


def boostlu(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha*x where x > 0, x elsewhere; the gradient is alpha where x > 0 and 1 elsewhere."""
    alpha = check_alpha(alpha)
    if alpha == 1.0:
        return x
    return torch.where(x > 0, x * alpha, x)


class BoostLU(nn.Module):
    def __init__(self, alpha: float = 5.0):
        super().__init__()
        self.alpha = check_alpha(alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return boostlu(x, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
