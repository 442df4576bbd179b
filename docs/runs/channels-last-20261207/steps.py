"""Training steps of the four networks of a dsb-nuclei-shaped run (binary, 128², batch 8, two threads),
in PyTorch's default layout and channels-last, interleaved in one process: how much of the training
time a layout change could still take off, for Privacy-SF's stages and for the raw U-Net alike.

The steps are simplified: random inputs at the run's shapes, the codec step without code noise, the
image-encoder step with its Dice-CE term only, through a frozen decoder left in training mode. Each
printed ratio is the median of the per-step ratios, paired within each repetition.

    PYTHONPATH=src .venv/bin/python docs/runs/channels-last-20261207/steps.py
"""

import statistics
import time

import torch
from monai.losses import DiceCELoss

from privacysf.center.codecs import MaskCodec, build_image_encoder
from privacysf.config import ExperimentConfig, UNetConfig
from privacysf.exchange import grid_to_tokens, tokens_to_grid
from privacysf.exchange.rounding import wire_rounding
from privacysf.nets.mappers import build_mapper
from privacysf.nets.unet import build_unet

torch.set_num_threads(2)
cfg = ExperimentConfig()
K, size, grid = 2, 128, (32, 32)
g = torch.Generator().manual_seed(0)
x = torch.randn(8, 1, size, size, generator=g)
y = (torch.rand(8, size, size, generator=g) > 0.7).long()
codes_in = torch.rand(8, 1024, 4, generator=g) * 2 - 1
codes_out = torch.rand(8, 1024, 4, generator=g) * 2 - 1
dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)


def layout(module, cl):
    return module.to(memory_format=torch.channels_last) if cl else module


def steps(cl: bool) -> dict:
    torch.manual_seed(0)
    fmt = torch.channels_last if cl else torch.contiguous_format
    unet = layout(build_unet(UNetConfig(), K), cl)
    codec = layout(MaskCodec(K, cfg.codec), cl)
    frozen = layout(MaskCodec(K, cfg.codec), cl).requires_grad_(False)
    encoder = layout(build_image_encoder(cfg.codec), cl)
    head = torch.nn.Linear(4, 4)
    mapper = layout(build_mapper(cfg.mapper, grid, 4, 4), cl)
    xs = x.contiguous(memory_format=fmt)

    def train(params, loss_fn):
        opt = torch.optim.Adam(params, lr=1e-3)

        def run():
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            opt.step()

        return run

    def codec_loss():
        code = wire_rounding(codec.encoder(codec.inputs(y).contiguous(memory_format=fmt)), "uint4")
        return dice_ce(codec.decode(code), y[:, None])

    def encoder_loss():
        tokens = head(grid_to_tokens(wire_rounding(encoder(xs), "uint4")))
        return dice_ce(frozen.decode(tokens_to_grid(tokens, grid)), y[:, None])

    return {
        "raw U-Net": train(unet.parameters(), lambda: dice_ce(unet(xs), y[:, None])),
        "mask codec": train(codec.parameters(), codec_loss),
        "image encoder (task, linear head)": train([*encoder.parameters(), *head.parameters()], encoder_loss),
        "server mapper": train(
            mapper.parameters(), lambda: torch.nn.functional.mse_loss(mapper(codes_in), codes_out)
        ),
    }


runs = {False: steps(False), True: steps(True)}
times = {(cl, name): [] for cl in runs for name in runs[cl]}
for repeat in range(12):
    for name in runs[False]:
        for cl in (False, True):
            start = time.perf_counter()
            runs[cl][name]()
            times[cl, name].append((time.perf_counter() - start) * 1000)
print(f"{'network':36s} {'default ms':>10s} {'channels-last ms':>17s} {'ratio':>6s}")
for name in runs[False]:
    a, b = times[False, name][2:], times[True, name][2:]  # two warm-up steps
    ratio = statistics.median(q / p for p, q in zip(a, b, strict=True))
    print(f"{name:36s} {statistics.median(a):10.1f} {statistics.median(b):17.1f} {ratio:6.3f}")
