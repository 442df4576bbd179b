"""Where a dsb-nuclei mask-codec epoch goes (seed 0 of the published bench, 128², batch 8, two
threads): drawing and reshaping the epoch's label maps, the training steps, and validation.

    PYTHONPATH=src .venv/bin/python docs/runs/channels-last-20261207/codec_epoch.py
"""

import statistics
import time

import torch
from monai.losses import DiceCELoss

from privacysf.center.codecs import (
    MaskCodec,
    codec_batches,
    decode_masks,
    encode_masks,
    through_wire,
    token_grid,
)
from privacysf.config import ExperimentConfig
from privacysf.data.prepare import prepare
from privacysf.exchange.rounding import wire_rounding
from privacysf.metrics import validation_dice

torch.set_num_threads(2)
cfg = ExperimentConfig.load("docs/benchmarks/runs/20261206-222406-privacysf-task-dsb-nuclei/config.json")
data = prepare(cfg.data)
K, device = data.info.num_classes, torch.device("cpu")
draw = codec_batches(cfg, data.train, K, device)
start = time.perf_counter()
epochs = [list(draw(epoch)) for epoch in range(3)]
drawing = (time.perf_counter() - start) / 3

codec = MaskCodec(K, cfg.codec)
loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
optimizer = torch.optim.Adam(codec.parameters(), lr=cfg.train.lr)
codec.train()
steps = []
for y in epochs[0] * 2:
    start = time.perf_counter()
    optimizer.zero_grad()
    sent = wire_rounding(codec.encoder(codec.inputs(y)), cfg.codec.wire_dtype)
    loss = loss_fn(codec.decode(sent + cfg.codec.code_noise * torch.randn_like(sent)), y[:, None])
    loss.backward()
    optimizer.step()
    steps.append(time.perf_counter() - start)
step = statistics.median(steps[2:])

grid = token_grid(cfg.data.size, cfg.codec)
start = time.perf_counter()
with torch.no_grad():
    for _ in range(3):
        tokens = through_wire(encode_masks(codec, data.val.masks, device), grid, "mask", cfg.codec.wire_dtype)
        validation_dice(decode_masks(codec, tokens, grid, device), data.val.masks, K)
validation = (time.perf_counter() - start) / 3

epoch = drawing + step * len(epochs[0]) + validation
print(f"batches per epoch: {len(epochs[0])}")
print(f"drawing and reshaping label maps: {drawing:.3f} s an epoch ({drawing / epoch:.0%})")
print(
    f"training steps: {step * 1000:.0f} ms median, {step * len(epochs[0]):.2f} s an epoch ({step * len(epochs[0]) / epoch:.0%})"
)
print(f"validation ({len(data.val.masks)} slices): {validation:.3f} s ({validation / epoch:.0%})")
print(f"epoch: {epoch:.2f} s (the published run: 1.751 s an epoch)")
