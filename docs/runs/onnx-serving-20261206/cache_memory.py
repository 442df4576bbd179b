"""Resident memory a service's model cache adds for 4 loaded default mappers (64×64-token grid, a 256²
image's), torch alone against torch plus the ONNX Runtime session: each runtime in a fresh process,
RSS after the imports and after the loads and one query of 1 and of 32 codes to each (the kept
exports already on disk).

Usage: PYTHONPATH=src .venv/bin/python docs/runs/onnx-serving-20261206/cache_memory.py OUT.json
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys
from pathlib import Path
from types import SimpleNamespace
import psutil, torch
from privacysf.config import MapperConfig
from privacysf.server.serving import ModelCache
from privacysf.server.tables import ModelRow
import onnxruntime, onnxscript  # imported in both, so the difference is the loaded models
torch.set_num_threads(1)
folder, runtime = Path(sys.argv[1]), sys.argv[2]
store = SimpleNamespace(files=SimpleNamespace(model=lambda name: folder / name),
                        cfg=SimpleNamespace(model_cache=4, mapper_runtime=runtime))
cache = ModelCache(store)
before = psutil.Process().memory_info().rss
for i in range(4):
    row = ModelRow(id=i, file=f"m{i}.pt", grid=[64, 64], in_channels=4, out_channels=4,
                   mapper=MapperConfig().model_dump())
    for batch in (1, 32):  # one query, then a batch: what a service sees
        cache.get(row).predict_tokens(torch.rand(batch, 4096, 4))
print(json.dumps({"MiB added by 4 models": round((psutil.Process().memory_info().rss - before) / 2**20, 1)}))
"""

with tempfile.TemporaryDirectory() as tmp:
    folder = Path(tmp)
    setup = (
        "import sys, torch; from pathlib import Path\n"
        "from privacysf.config import AugmentConfig, MapperConfig, TrainConfig\n"
        "from privacysf.server.mapping import MappingServer\n"
        "for i in range(4):\n"
        "    s = MappingServer(MapperConfig(runtime='onnxruntime'), AugmentConfig(), TrainConfig(device='cpu'))\n"
        "    torch.manual_seed(i); s.initialise((64, 64), 4, 4); s.save(Path(sys.argv[1]) / f'm{i}.pt')\n"
        "    s.load(Path(sys.argv[1]) / f'm{i}.pt', (64, 64), 4, 4)  # keeps the export\n"
    )
    subprocess.run([sys.executable, "-c", setup, tmp], check=True)
    results = {}
    for runtime in ("torch", "onnxruntime"):
        out = subprocess.run([sys.executable, "-c", CHILD, tmp, runtime], check=True, capture_output=True, text=True)
        results[runtime] = json.loads(out.stdout.strip().splitlines()[-1])
print(json.dumps(results, indent=1))
Path(sys.argv[1]).write_text(json.dumps(results, indent=1) + "\n")
