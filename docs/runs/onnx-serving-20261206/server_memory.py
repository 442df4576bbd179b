"""Resident memory of a server process that has loaded one default mapper (64×64-token grid, a 256²
image's) and answered one query: in torch, in ONNX Runtime exporting it, and in ONNX Runtime reading
the export kept by an earlier process (a restarted service). Each case in a fresh process that first
imports the service app, as ``privacysf server serve`` does; 3 rounds, medians.

Usage: PYTHONPATH=src .venv/bin/python docs/runs/onnx-serving-20261206/server_memory.py OUT.json
"""

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys
from pathlib import Path
from types import SimpleNamespace
import psutil, torch
import privacysf.server.service.app  # noqa: F401  (what `serve` imports)
from privacysf.config import MapperConfig
from privacysf.server.serving import ModelCache
from privacysf.server.tables import ModelRow
torch.set_num_threads(1)
folder, runtime = Path(sys.argv[1]), sys.argv[2]
store = SimpleNamespace(files=SimpleNamespace(model=lambda name: folder / name),
                        cfg=SimpleNamespace(model_cache=4, mapper_runtime=runtime))
row = ModelRow(id=1, file="m.pt", grid=[64, 64], in_channels=4, out_channels=4, mapper=MapperConfig().model_dump())
served = ModelCache(store).get(row)
served.predict_tokens(torch.rand(1, 4096, 4))
print(json.dumps({"MiB": round(psutil.Process().memory_info().rss / 2**20), "reused": bool(served.served and served.served.reused)}))
"""

SAVE = (
    "import sys, torch; from pathlib import Path\n"
    "from privacysf.config import AugmentConfig, MapperConfig, TrainConfig\n"
    "from privacysf.server.mapping import MappingServer\n"
    "s = MappingServer(MapperConfig(), AugmentConfig(), TrainConfig(device='cpu'))\n"
    "torch.manual_seed(0); s.initialise((64, 64), 4, 4); s.save(Path(sys.argv[1]) / 'm.pt')\n"
)


def child(folder: str, runtime: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, folder, runtime], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


cases: dict[str, list[int]] = {"torch": [], "onnxruntime, exporting": [], "onnxruntime, kept export": []}
for _ in range(3):
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([sys.executable, "-c", SAVE, folder], check=True)
        cases["torch"].append(child(folder, "torch")["MiB"])
        exporting = child(folder, "onnxruntime")
        assert not exporting["reused"]
        cases["onnxruntime, exporting"].append(exporting["MiB"])
        kept = child(folder, "onnxruntime")
        assert kept["reused"]
        cases["onnxruntime, kept export"].append(kept["MiB"])
results = {case: {"median MiB": statistics.median(v), "rounds": v} for case, v in cases.items()}
print(json.dumps(results, indent=1))
Path(sys.argv[1]).write_text(json.dumps(results, indent=1) + "\n")
