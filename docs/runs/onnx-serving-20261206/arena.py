"""ONNX Runtime's CPU memory arena on and off, for four sessions of the default mapper on a 256²
image's 64×64-token grid: resident memory they add after one query of 1 and of 32 codes each, and
the median map time of one session at batch 1 (15 runs) and 32 (5 runs). One thread; each setting
runs in its own process, twice, alternating.

Usage: PYTHONPATH=src .venv/bin/python docs/runs/onnx-serving-20261206/arena.py OUT.json
"""

import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, statistics, sys, time
import onnxruntime, psutil, torch
from privacysf.config import MapperConfig
from privacysf.nets.mappers import build_mapper
from privacysf.nets.onnx_runtime import _export
torch.set_num_threads(1)
torch.manual_seed(0)
exported = _export(build_mapper(MapperConfig(), (64, 64), 4, 4).eval(), torch.zeros(2, 4096, 4), "")
options = onnxruntime.SessionOptions()
options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = 1, 1, 3
options.add_session_config_entry("session.intra_op.allow_spinning", "0")
options.enable_cpu_mem_arena = sys.argv[1] == "on"
before = psutil.Process().memory_info().rss
sessions = [onnxruntime.InferenceSession(exported, options, providers=["CPUExecutionProvider"]) for _ in range(4)]
name = sessions[0].get_inputs()[0].name
for batch in (1, 32):
    for session in sessions:
        session.run(None, {name: torch.rand(batch, 4096, 4).numpy()})
result = {"MiB added by 4 sessions": round((psutil.Process().memory_info().rss - before) / 2**20, 1)}
for batch, runs in ((1, 15), (32, 5)):
    codes, times = torch.rand(batch, 4096, 4).numpy(), []
    for _ in range(runs):
        start = time.perf_counter()
        sessions[0].run(None, {name: codes})
        times.append(time.perf_counter() - start)
    result[f"map ms, batch {batch}"] = round(1000 * statistics.median(times), 2)
print(json.dumps(result))
"""

results: dict[str, list] = {"on": [], "off": []}
for _ in range(2):
    for arena in results:
        out = subprocess.run([sys.executable, "-c", CHILD, arena], check=True, capture_output=True, text=True)
        results[arena].append(json.loads(out.stdout.strip().splitlines()[-1]))
print(json.dumps(results, indent=1))
Path(sys.argv[1]).write_text(json.dumps(results, indent=1) + "\n")
