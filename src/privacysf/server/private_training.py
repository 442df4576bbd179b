"""DP-SGD for the server's mapper (Opacus): what its weights can reveal of any one training pair.

With ``mapper.dp_noise`` = σ > 0 the mapper trains on Poisson-sampled batches (each pair joins each
step with probability q = batch size / pairs), every pair's gradient is clipped to ``mapper.dp_clip``
and Gaussian noise of std σ·clip is added to each batch's sum (Opacus's ``GradSampleModule`` and
``DPOptimizer``); Opacus's RDP accountant turns (σ, q, steps) into the (ε, δ) spent. Each step is
counted, including a draw that came out empty (it is then skipped: there is nothing to average).

What it covers: the training pairs, against anyone holding the mapper (membership inference, and any
other attack on the weights). What it does not: the validation pairs, whose scores pick the epoch kept
(early stopping), and anything the codes themselves show to whoever receives them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.accountants import RDPAccountant
from opacus.optimizers import DPOptimizer

from privacysf.config import MapperConfig


@dataclass
class PrivateTraining:
    """One mapper's DP-SGD run: its settings, the steps taken so far and the budget they spent."""

    noise: float
    clip: float
    delta: float
    batch_size: int
    pairs: int
    steps: int = 0

    @classmethod
    def from_config(cls, cfg: MapperConfig, batch_size: int, pairs: int) -> PrivateTraining:
        return cls(cfg.dp_noise, cfg.dp_clip, cfg.dp_delta, min(batch_size, pairs), pairs)

    @property
    def sample_rate(self) -> float:
        return self.batch_size / self.pairs

    def draws(self, steps: int, seed: int) -> Iterator[np.ndarray]:
        """``steps`` Poisson batches of pair indices; empty draws are counted and not yielded."""
        rng = np.random.default_rng(seed)
        for _ in range(steps):
            self.steps += 1
            chosen = np.flatnonzero(rng.random(self.pairs) < self.sample_rate)
            if len(chosen):
                yield chosen

    def attach(self, model: torch.nn.Module) -> GradSampleModule:
        """Per-pair gradients for ``model`` (hooks on its own layers, so it trains as itself)."""
        return GradSampleModule(model, loss_reduction="mean")

    def wrap(self, optimizer: torch.optim.Optimizer) -> DPOptimizer:
        return DPOptimizer(
            optimizer,
            noise_multiplier=self.noise,
            max_grad_norm=self.clip,
            expected_batch_size=self.batch_size,
            loss_reduction="mean",
        )

    def spent(self) -> dict[str, float]:
        """(ε, δ) of the steps taken, with the settings behind it, as published in metrics files."""
        accountant = RDPAccountant()
        accountant.history = [(self.noise, self.sample_rate, self.steps)]
        return {
            "epsilon": float(accountant.get_epsilon(self.delta)) if self.steps else 0.0,
            "delta": self.delta,
            "noise_multiplier": self.noise,
            "max_grad_norm": self.clip,
            "sample_rate": self.sample_rate,
            "steps": self.steps,
        }
