"""Batch-norm statistics in federated averaging: kept at the center, recomputed for averaged weights.

The center networks normalise with batch norm (``codec.norm``), whose running means and variances are
statistics of a center's own training slices. Federated averaging (``fedavg-codecs``) therefore shares
only the weights (:func:`shared_state`); a center that loads averaged weights recomputes the
statistics for them on its own data (:func:`recalibrate_norms`), as statistics of other weights would
not fit them. Nothing about the center's data distribution goes into the masked sums, and the step
counters and variances, which grow with training, cannot overflow their fixed-point range.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from privacysf.errors import FederationError

STATISTICS = ("running_mean", "running_var", "num_batches_tracked")


def _norms(module: nn.Module) -> dict[str, _BatchNorm]:
    return {name: m for name, m in module.named_modules() if isinstance(m, _BatchNorm)}


def statistics_keys(module: nn.Module) -> set[str]:
    """The state-dict keys of ``module``'s batch-norm statistics."""
    return {f"{name}.{key}" if name else key for name in _norms(module) for key in STATISTICS}


def shared_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """What a center sends for averaging: ``module``'s state without its batch-norm statistics."""
    local = statistics_keys(module)
    return {k: v for k, v in module.state_dict().items() if k not in local}


def load_shared_state(module: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load averaged weights, keeping ``module``'s own statistics; anything else missing is an error."""
    missing, unexpected = module.load_state_dict(state, strict=False)
    wrong = sorted(set(missing) - statistics_keys(module)) + sorted(unexpected)
    if wrong:
        raise FederationError(f"averaged weights do not fit this network ({', '.join(wrong[:5])})")
    return module


def recalibrate_norms(module: nn.Module, run: Callable[[], object]) -> nn.Module:
    """Recompute every batch norm's statistics as the plain average over the forward passes ``run()``
    makes over local training data (no gradients, weights untouched), and leave ``module`` in eval mode.
    """
    norms = list(_norms(module).values())
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches of run()
    module.train()
    with torch.no_grad():
        run()
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    return module.eval()
