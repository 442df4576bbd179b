"""The one training loop: epochs, progress bar, validation, early stopping and checkpoints.

Every network of the project (raw U-Net, mask codec, image encoder, server mapper) trains through
:func:`fit`, so early stopping, checkpointing and progress reporting behave the same everywhere. The
loop only sees callables, which keeps it free of any data handling: the server uses it on codes, the
center on images.

Each call ends with one summary line on standard output, progress bars or not (``train.progress``
only switches the bars off): a quiet run of half an hour still says which stage finished, after how
many epochs and how well.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from privacysf.common.resources import MemoryUse, PeakMemory
from privacysf.common.torchutil import save_checkpoint
from privacysf.config import TrainConfig

EpochHook = Callable[[dict[str, float]], None]


@dataclass
class FitResult:
    best_score: float
    best_epoch: int
    """Index of the best epoch in ``history`` (counted from 0, as its ``epoch`` entries are)."""
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    memory: MemoryUse | None = None
    """Peak memory while this network trained (a published training cost, see ``privacysf bench``)."""
    epochs_run: int = 0
    """Epochs trained by this call (fewer than the history holds when it resumed)."""
    stopped_early: bool = False
    """Whether early stopping ended training before ``train.epochs``."""

    @property
    def epochs_trained(self) -> int:
        """Epochs the network trained in all, resumed ones included (what a report must state)."""
        return len(self.history)

    def outcome(self) -> dict:
        """How training ended, as published in metrics files beside :meth:`cost`."""
        return {
            "epochs_run": self.epochs_trained,
            "stopped_early": self.stopped_early,
            "best_epoch": self.best_epoch,
            "best_val_score": self.best_score,
        }

    def summary(self, desc: str) -> str:
        """The stage's one line: name, epochs trained, best validation score and its epoch, seconds.

        For example ``center mask codec: 12 epochs (early stop), best validation score 0.8662 at
        epoch 3, 53 s``. Epochs are counted from 1 here, as a reader counts them.
        """
        epochs = f"{self.epochs_trained} epoch{'' if self.epochs_trained == 1 else 's'}"
        stop = " (early stop)" if self.stopped_early else ""
        return (
            f"{desc}: {epochs}{stop}, best validation score {self.best_score:.4f} "
            f"at epoch {self.best_epoch + 1}, {self.seconds:.0f} s"
        )

    @property
    def seconds_per_epoch(self) -> float:
        return self.seconds / max(self.epochs_run, 1)

    def cost(self) -> dict:
        """Wall time and peak memory of this training, as published in metrics files."""
        return {
            "seconds": round(self.seconds, 2),
            "epochs": self.epochs_run,
            "seconds_per_epoch": round(self.seconds_per_epoch, 3),
            **(self.memory.to_dict() if self.memory else {}),
        }


def epoch_order(n: int, batch_size: int, min_steps: int, seed: int) -> list[np.ndarray]:
    """An epoch's batches of indices into ``n`` items: one shuffled pass, or as many passes as it
    takes to make ``min_steps`` batches.

    Early stopping counts epochs, so a set of 16 slices (2 batches an epoch) would stop after 20
    optimiser steps without progress; repeating passes within an epoch gives every set at least
    ``min_steps`` steps between two validations. One pass is the order it always was.
    """
    passes = max(1, math.ceil(min_steps / math.ceil(n / batch_size)))
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(n) for _ in range(passes)])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def out_of_patience(epoch: int, best_epoch: int, patience: int) -> bool:
    """Whether training stops after ``epoch``: ``patience`` epochs without a better validation score,
    counted only once some epoch has beaten the first.

    A network that has not yet found a rare class scores 0 on it epoch after epoch (the raw U-Net on a
    liver lesion on 3 % of the slices scored 0 for 11 epochs and was stopped, keeping a net that
    predicts no lesion). Its first epoch is then "best" only because nothing has been learnt, and
    stopping there keeps that nothing; so a run whose first score was never beaten goes on to
    ``train.epochs``.
    """
    return best_epoch > 0 and epoch - best_epoch >= patience


def fit(
    model: torch.nn.Module,
    batches: Callable[[int], Iterable[Any]],
    step: Callable[[Any], torch.Tensor],
    validate: Callable[[], float],
    cfg: TrainConfig,
    desc: str,
    checkpoint: Path | None = None,
    signature: dict[str, Any] | None = None,
    modules: dict[str, torch.nn.Module] | None = None,
    resume: Path | None = None,
    on_epoch: EpochHook | None = None,
    wrap_optimizer: Callable[[torch.optim.Optimizer], torch.optim.Optimizer] | None = None,
) -> FitResult:
    """Train ``model`` and leave it holding the weights of its best validation epoch.

    ``batches(epoch)`` yields training batches, ``step(batch)`` returns the loss to minimise,
    ``validate()`` returns a score where higher is better. ``modules`` are extra trained parts (an
    auxiliary decoder or head) saved and restored with the model.

    ``resume`` is a file holding the loop's whole state (weights, optimiser, schedule, best so far),
    rewritten after every epoch: when it exists at the start, training continues after the epoch it
    records, so a process killed mid-training loses at most one epoch. ``on_epoch`` receives each
    epoch's history record (progress reporting for callers such as the service's job runner, whose
    output is its job log) before that rewrite, so a process killed between the two reports the epoch
    twice instead of never, and the rewrite happens even when the hook raises. Without a hook one
    summary line is printed when training ends, with or without progress bars. ``wrap_optimizer``
    turns the Adam optimiser into another that steps it (DP-SGD's clipping and noise,
    ``privacysf.server.private_training``).
    """
    parts = {"model": model, **(modules or {})}
    params = [p for m in parts.values() for p in m.parameters()]
    optimizer: torch.optim.Optimizer = torch.optim.Adam(params, lr=cfg.lr)
    if wrap_optimizer is not None:
        optimizer = wrap_optimizer(optimizer)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs, 1))
    best_score, best_epoch, best_state = -math.inf, -1, None
    history: list[dict[str, float]] = []
    first = 0
    if resume is not None and resume.is_file():
        state = torch.load(resume, map_location="cpu", weights_only=True)
        for k, m in parts.items():
            m.load_state_dict(state["parts"][k])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        best_score, best_epoch, best_state = state["best_score"], state["best_epoch"], state["best_state"]
        history, first = state["history"], state["epoch"] + 1
        if out_of_patience(state["epoch"], best_epoch, cfg.patience):  # it had already stopped early
            first = cfg.epochs
    epochs_before = len(history)
    start = time.perf_counter()
    with PeakMemory(next((p.device for p in params), None)) as peak:
        bar = tqdm(range(first, cfg.epochs), desc=desc, disable=not cfg.progress, leave=False, unit="epoch")
        for epoch in bar:
            for m in parts.values():
                m.train()
            losses = []
            for batch in batches(epoch):
                optimizer.zero_grad(set_to_none=True)
                loss = step(batch)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
            scheduler.step()
            for m in parts.values():
                m.eval()
            with torch.no_grad():
                score = float(validate())
            train_loss = sum(losses) / max(len(losses), 1)
            history.append({"epoch": epoch, "train_loss": train_loss, "val_score": score})
            if score > best_score:
                best_score, best_epoch = score, epoch
                best_state = {k: copy.deepcopy(m.state_dict()) for k, m in parts.items()}
                if checkpoint is not None:
                    save_checkpoint(checkpoint, {"signature": signature or {}, "epoch": epoch, **best_state})
            try:  # reported before the resume file records the epoch: a kill in between repeats it
                if on_epoch is not None:
                    on_epoch(history[-1])
            finally:  # and a hook that leaves training (a stopping worker, a cancel) keeps the epoch
                if resume is not None:
                    loop_state = {
                        "parts": {k: m.state_dict() for k, m in parts.items()},
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "best_score": best_score,
                        "best_epoch": best_epoch,
                        "best_state": best_state,
                        "history": history,
                        "epoch": epoch,
                    }
                    save_checkpoint(resume, loop_state)
            bar.set_postfix(loss=f"{train_loss:.4f}", val=f"{score:.4f}", best=f"{best_score:.4f}")
            if out_of_patience(epoch, best_epoch, cfg.patience):
                break
        bar.close()
        seconds = time.perf_counter() - start
    if best_state is not None:
        for k, m in parts.items():
            m.load_state_dict(best_state[k])
    for m in parts.values():
        m.eval()
    stopped_early = bool(history) and history[-1]["epoch"] < cfg.epochs - 1
    result = FitResult(
        best_score, best_epoch, history, seconds, peak.result, len(history) - epochs_before, stopped_early
    )
    if on_epoch is None:  # a caller with a hook reports progress itself (the job runner: its job log)
        tqdm.write(result.summary(desc), file=sys.stdout)
        sys.stdout.flush()  # a run piped to a log file shows each stage as it ends
    return result
