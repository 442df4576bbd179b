import timeit, torch
from privacysf.config import ExperimentConfig
from privacysf.workflows.inprocess import untrained_pipeline
torch.set_num_threads(2)
center, server = untrained_pipeline(ExperimentConfig(), 4, 256)
for name, m in [("mapper", server.model), ("encoder", center.image_encoder), ("codec", center.mask_codec)]:
    n = sum(1 for _ in m.modules())
    print(name, n, "modules", f"{timeit.timeit(m.eval, number=200)/200*1000:.3f} ms per eval()")
