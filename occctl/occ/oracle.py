"""The oracle's applied MTP term: lambda = lambda_plus * c / (v^2 + eps) from the exact gradients, applied so that the
MTP gradient the step receives is lambda * g_MTP(+1), the quantity the slope was measured for.

The slope c / v^2 is measured on the MTP loss at lambda = +1. The regimes scale the *advantage* (as the authors'
code does); for lambda > 0 that is the same as scaling the loss, but for lambda < 0 the clipped, dual-clipped
surrogate of the flipped advantage clips other tokens, so its gradient is not lambda * g_MTP(+1). How a negative
lambda is applied (``mtp.occ.oracle_negative``):

* ``loss_scale``: lambda times the +1 loss, so the applied gradient is exactly lambda * g_MTP(+1);
* ``advantage`` (default, so earlier oracle runs reproduce): the advantage scaled by lambda inside the surrogate,
  the regimes' arithmetic (not a ceiling where c < 0);
* ``flip``: the surrogate at lambda = -1 (its own clipping), scaled by |lambda|.
"""

from __future__ import annotations

from typing import Callable

import torch

NEGATIVE_MODES = ("loss_scale", "advantage", "flip")


def oracle_mtp_term(
    lam: float,
    unit_loss: torch.Tensor,  # scalar: the MTP loss at lambda = +1 (with grad)
    loss_at: Callable[[float], torch.Tensor],  # lambda -> the regime's MTP loss with the advantage scaled by it
    negative: str = "advantage",
) -> torch.Tensor:  # scalar
    """The MTP term to add to the RL loss for the oracle's ``lam`` (see the module doc for ``negative``)."""
    if negative not in NEGATIVE_MODES:
        raise ValueError(f"unknown oracle_negative {negative!r}; expected one of {NEGATIVE_MODES}")
    if negative == "advantage":
        return loss_at(lam)  # the regimes' own arithmetic, bit for bit
    if lam >= 0 or negative == "loss_scale":
        return lam * unit_loss
    return abs(lam) * loss_at(-1.0)
