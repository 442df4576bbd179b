"""Seconds to load a stored default mapper for serving, one thread, median of 5 rounds: in torch, in
ONNX Runtime exporting it (no kept export), and in ONNX Runtime reading the export the previous load
kept beside the checkpoint.

Usage: PYTHONPATH=src .venv/bin/python docs/runs/onnx-serving-20261206/load_times.py OUT.json
"""

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from privacysf.config import AugmentConfig, MapperConfig, TrainConfig
from privacysf.server.mapping import MappingServer

torch.set_num_threads(1)
results = {}
for side in (32, 64):  # the token grids of 128² and 256² images
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pt"
        torch.manual_seed(0)
        trained = MappingServer(MapperConfig(), AugmentConfig(), TrainConfig(device="cpu"))
        trained.initialise((side, side), 4, 4)
        trained.save(path)
        seconds: dict[str, list[float]] = {"torch": [], "onnxruntime, exporting": [], "onnxruntime, kept": []}
        for _ in range(5):
            for how in seconds:
                if how == "onnxruntime, exporting":
                    path.with_suffix(".onnx").unlink(missing_ok=True)
                runtime = "torch" if how == "torch" else "onnxruntime"
                server = MappingServer(MapperConfig(runtime=runtime), AugmentConfig(), TrainConfig(device="cpu"))
                start = time.perf_counter()
                server.load(path, (side, side), 4, 4)
                seconds[how].append(time.perf_counter() - start)
                if runtime == "onnxruntime":
                    assert server.served is not None and server.served.reused == (how == "onnxruntime, kept")
        results[f"{side}x{side} tokens"] = {how: round(statistics.median(s), 3) for how, s in seconds.items()}
print(json.dumps(results, indent=1))
Path(sys.argv[1]).write_text(json.dumps(results, indent=1) + "\n")
