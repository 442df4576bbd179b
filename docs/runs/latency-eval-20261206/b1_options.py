"""One-off, 256² batch 1 on two threads, interleaved: the query at the defaults (mapper in torch and in
ONNX Runtime), with eval() walked on every call as before 96125aa, with the ORT mapper on one thread,
and with the center's encoder in ORT."""
import statistics, sys
import numpy as np, torch
import privacysf.common.torchutil as tu
from privacysf.config import ExperimentConfig, UNetConfig
from privacysf.workflows.inprocess import untrained_pipeline
from privacysf.nets.onnx_runtime import OnnxRuntimeModule
from privacysf.nets.unet import build_unet
from privacysf.common.torchutil import class_labels
from privacysf.benchmark.latency import query_latency, query_stages
torch.set_num_threads(2)
size, batch = int(sys.argv[1]), int(sys.argv[2])
images = np.random.default_rng(0).standard_normal((batch, 1, size, size)).astype(np.float32)
x = torch.from_numpy(images)
tc, ts = untrained_pipeline(ExperimentConfig(), 4, size)
oc, os_ = untrained_pipeline(ExperimentConfig().override(["mapper.runtime=onnxruntime"]), 4, size)
o1c, o1s = untrained_pipeline(ExperimentConfig().override(["mapper.runtime=onnxruntime"]), 4, size)
grid = o1s.signature["grid"]; ch = o1s.signature["in_channels"]
o1s.served = OnnxRuntimeModule(o1s.model.eval(), torch.zeros(2, grid[0] * grid[1], ch), threads=1)
unet = build_unet(UNetConfig(), 4).eval()
def u(): return class_labels(unet(x)).cpu()
pipes = {"torch": query_stages(tc, ts, images), "ort": query_stages(oc, os_, images),
         "ort 1 thread": query_stages(o1c, o1s, images)}
old_eval = lambda m: m.eval()
real = tu.evaluating
walk = query_stages(tc, ts, images)
def walked(fn):
    def call():
        import privacysf.center.codecs as c, privacysf.server.mapping as mp
        c.evaluating = mp.evaluating = old_eval
        try: return fn()
        finally: c.evaluating = mp.evaluating = real
    return call
pipes["torch, eval() each call"] = {k: walked(v) for k, v in walk.items()}
with torch.inference_mode():
    res = query_latency(pipes, {"unet": u}, batch, torch.device("cpu"), 30, 3)
for k, v in res.items():
    print(f"{k:26s} " + " ".join(f"{n}={t:.2f}" for n, t in v.items()))
