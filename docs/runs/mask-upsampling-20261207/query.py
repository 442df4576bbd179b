"""256² queries on two threads, interleaved in one process: the mask decoder's two upsamplings, with
the mapper in torch and in ONNX Runtime, beside the raw U-Net (untrained networks).

    PYTHONPATH=src .venv/bin/python docs/runs/mask-upsampling-20261207/query.py BATCH
"""

import sys

import numpy as np
import torch

from privacysf.benchmark.latency import query_latency, query_stages
from privacysf.common.torchutil import class_labels
from privacysf.config import ExperimentConfig, UNetConfig
from privacysf.nets.unet import build_unet
from privacysf.workflows.inprocess import untrained_pipeline

torch.set_num_threads(2)
size, batch = 256, int(sys.argv[1])
images = np.random.default_rng(0).standard_normal((batch, 1, size, size)).astype(np.float32)
x = torch.from_numpy(images)
pipes = {}
for upsampling in ("transposed", "subpixel"):
    for runtime in ("torch", "onnxruntime"):
        cfg = ExperimentConfig().override(
            [f"codec.mask_upsampling={upsampling}", f"mapper.runtime={runtime}"]
        )
        pipes[f"{upsampling}, mapper in {runtime}"] = query_stages(*untrained_pipeline(cfg, 4, size), images)
unet = build_unet(UNetConfig(), 4).eval()
with torch.inference_mode():
    res = query_latency(
        pipes, {"unet": lambda: class_labels(unet(x)).cpu()}, batch, torch.device("cpu"), 30, 3
    )
for name, times in res.items():
    print(f"{name:36s} " + " ".join(f"{n}={t:.2f}" for n, t in times.items()))
