"""Time of one image-encoder training step per ``codec.task_head``, beside a raw U-Net step.

A step is what ``train_image_encoder`` runs per batch: the task objective's loss (encoder, head,
frozen mask codec's encode and decode, Dice-CE), its backward pass and an Adam update of the encoder
and head; the raw U-Net's is its Dice-CE step with its update. Networks are freshly initialised (the
arithmetic does not depend on the weights), on random images and label maps. The calls take turns
within each repetition (:func:`privacysf.benchmark.latency.interleaved_times`), and the table gives
each step's median and the median of its per-repetition ratio to the U-Net's step.

    PYTHONPATH=src .venv/bin/python tools/task_step_time.py --out docs/benchmarks/task_step_time.md
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from monai.losses import DiceCELoss

from privacysf.benchmark.latency import interleaved_times
from privacysf.center.codecs import MaskCodec, build_image_encoder
from privacysf.center.image_encoder import TaskObjective
from privacysf.common.markdown import Markdown
from privacysf.config import ExperimentConfig, TaskHeadNetwork
from privacysf.nets.unet import build_unet

HEADS: tuple[TaskHeadNetwork, ...] = ("mapper", "narrow", "linear")


def _step(params: list[torch.Tensor], loss: Callable[[], torch.Tensor]) -> Callable[[], None]:
    optimiser = torch.optim.Adam(params, lr=1e-4)

    def step() -> None:
        optimiser.zero_grad()
        loss().backward()
        optimiser.step()

    return step


def steps(size: int, batch: int, classes: int) -> dict[str, Callable[[], None]]:
    """One training step per task head, and the raw U-Net's, on the same random batch."""
    torch.manual_seed(0)
    x = torch.randn(batch, 1, size, size)
    y = torch.randint(0, classes, (batch, size, size))
    calls: dict[str, Callable[[], None]] = {}
    for head in HEADS:
        cfg = ExperimentConfig().override([f"data.size={size}", f"codec.task_head={head}"])
        encoder = build_image_encoder(cfg.codec)
        codec = MaskCodec(classes, cfg.codec)
        objective = TaskObjective(cfg, encoder, codec, torch.device("cpu"), y.numpy())
        params = [*encoder.parameters(), *objective.head.parameters()]
        calls[f"task head {head}"] = _step(params, lambda o=objective: o.loss(x, y))
    unet, dice_ce = build_unet(ExperimentConfig().unet, classes), DiceCELoss(to_onehot_y=True, softmax=True)
    calls["raw U-Net"] = _step(list(unet.parameters()), lambda: dice_ce(unet(x), y[:, None]))
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batch", type=int, default=ExperimentConfig().train.batch_size)
    parser.add_argument("--classes", type=int, default=4, help="label classes, background included")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the table here (markdown) as well as printing it")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    md = Markdown().paragraph(
        f"Training step of the image encoder (`task` mode) per `codec.task_head`, batch {args.batch}, "
        f"{args.classes} classes, {args.threads} thread(s), {args.repeats} interleaved repetitions "
        "after 3 warm-up ones: median ms, and the median per-repetition ratio to the raw U-Net's step."
    )
    rows = []
    for size in args.sizes:
        times = interleaved_times(steps(size, args.batch, args.classes), torch.device("cpu"), args.repeats, 3)
        unet = times.pop("raw U-Net")
        for name, values in times.items():
            ratio = statistics.median(v / u for v, u in zip(values, unet, strict=True))
            rows.append([f"{size}²", name, f"{statistics.median(values):.0f}", f"{ratio:.2f}"])
        rows.append([f"{size}²", "raw U-Net", f"{statistics.median(unet):.0f}", "1.00"])
    md.table(["size", "step", "median ms", "× raw U-Net step"], rows)
    print(md.text())
    if args.out:
        md.write(args.out)


if __name__ == "__main__":
    main()
