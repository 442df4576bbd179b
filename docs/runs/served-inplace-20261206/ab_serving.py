"""In-process A/B of the served center networks: inference_copy before 9b064aa (batch norms folded,
channels-last) against after it (+ 1x1 convolutions as matrix products, activations in place).
(the 1x1-as-matrix-product part of 9b064aa was later dropped; "after" is the current code). Untrained networks at the defaults, one thread, interleaved, medians; labels compared for equality."""
import importlib.util, json, statistics, sys, time
from dataclasses import replace
import numpy as np, torch
from privacysf.benchmark.jobs import CLASSES_FOR_SIZES
from privacysf.config import ExperimentConfig
from privacysf.nets.inference import inference_copy as after
from privacysf.workflows.inprocess import untrained_pipeline
spec = importlib.util.spec_from_file_location("inference_before", sys.argv[1])
before_mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(before_mod)
torch.set_num_threads(1)
rows = []
for size in (256, 128):
    center, server = untrained_pipeline(ExperimentConfig(), CLASSES_FOR_SIZES, size, served=False)
    server.prepare_for_serving()  # the mapper as it serves; the center's networks as trained, copied below
    for batch in (1, 32):
        images = np.random.default_rng(0).standard_normal((batch, 1, size, size)).astype(np.float32)
        A = replace(center, mask_codec=before_mod.inference_copy(center.mask_codec), image_encoder=before_mod.inference_copy(center.image_encoder))
        B = replace(center, mask_codec=after(center.mask_codec), image_encoder=after(center.image_encoder))
        up = A.image_message(images); down = server.map(up)
        same = (B.image_message(images) == up, bool(np.array_equal(A.decode_message(down), B.decode_message(down))))
        ts = {k: [] for k in ("encode before", "encode after", "decode before", "decode after")}
        with torch.inference_mode():
            for _ in range(31 if batch == 1 else 7):
                for name, c in (("before", A), ("after", B)):
                    t = time.perf_counter(); c.image_message(images); ts[f"encode {name}"].append(time.perf_counter() - t)
                    t = time.perf_counter(); c.decode_message(down); ts[f"decode {name}"].append(time.perf_counter() - t)
        row = {"size": size, "batch": batch, "same message, same labels": same}
        row |= {k: round(statistics.median(v) * 1e3, 2) for k, v in ts.items()}
        for stage in ("encode", "decode"):
            row[f"{stage} after/before"] = round(statistics.median(a / b for a, b in zip(ts[f"{stage} after"], ts[f"{stage} before"])), 3)
        row["encode+decode after/before"] = round(statistics.median((a + c) / (b + d) for a, b, c, d in zip(ts["encode after"], ts["encode before"], ts["decode after"], ts["decode before"])), 3)
        print(json.dumps(row), flush=True)
        rows.append(row)
json.dump(rows, open(sys.argv[2], "w"), indent=1)
