"""Device selection, seeding and checkpoint I/O shared by every trained network (torch only)."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from privacysf.common.runs import atomic_write
from privacysf.errors import ConfigError

M = TypeVar("M", bound=torch.nn.Module)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device cuda was requested but no CUDA device is available; use --device cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def seed_everything(seed: int, threads: int | None = None) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)


def evaluating(module: M) -> M:
    """``module`` in eval mode, switched only where its root is training.

    ``Module.eval()`` walks and sets every submodule: 0.2-0.4 ms for each of the center's networks and
    the mapper, about 0.9 ms of a 256², batch-1 query that calls it on three networks, for nothing
    once they are served (always in eval mode). The root's flag says the whole network's here: this
    project's networks switch mode only whole (:func:`privacysf.common.training.fit`)."""
    if module.training:
        module.eval()
    return module


def apply_in_batches(
    fn: Callable[[torch.Tensor], Any], array: np.ndarray, device: torch.device, batch_size: int = 32
) -> Any:
    """``fn`` over ``array`` in mini-batches on ``device``, concatenated on the CPU (no gradients).

    ``fn`` returns a tensor, or a list of tensors (a multi-scale encoder): then each is concatenated
    on its own and the list is returned.
    """
    with torch.no_grad():
        parts = [
            fn(torch.from_numpy(np.ascontiguousarray(array[i : i + batch_size])).to(device))
            for i in range(0, len(array), batch_size)
        ]
    if isinstance(parts[0], (list, tuple)):
        return [torch.cat([t.cpu() for t in column]) for column in zip(*parts, strict=True)]
    return torch.cat([t.cpu() for t in parts])


def class_labels(logits: torch.Tensor) -> torch.Tensor:
    """Each pixel's class: the index of its largest logit along dim 1 (the first one on ties).

    ``max(1).indices`` gives ``argmax(1)``'s labels, but torch's CPU argmax over the channel axis of an
    (N, C, H, W) tensor is several times slower (on one thread, 32 × 4 × 128² logits took 142 ms
    against 18 ms here; the argmax was an eighth of decoding that batch of mask codes)."""
    return logits.max(1).indices


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """Load a checkpoint and refuse it when it was made for another configuration.

    ``expected`` holds the settings that shape the network (sizes, classes, mode); a checkpoint that
    disagrees would load into the wrong architecture or silently mean something else.
    """
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist; train first or pass the right run folder")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}); is it complete?"
        ) from None
    saved = state.get("signature", {})
    differences = {k: (saved.get(k), v) for k, v in expected.items() if saved.get(k) != v}
    if differences:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs run {b!r}" for k, (a, b) in differences.items())
        raise ConfigError(f"checkpoint {path} was made for another configuration ({detail})")
    return state
