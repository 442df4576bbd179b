"""Image-code message sizes (up) of fitted runs with a key applied to their trained center, deflated and plain.

    PYTHONPATH=src .venv/bin/python docs/runs/deflate-20261206/keyed_upload.py RUN [RUN ...]

The key is fixed bytes (0..31); the mapper is not retrained, so only the upload is measured.
"""

import dataclasses
import statistics
import sys
from pathlib import Path

from privacysf.center.keys import CenterKey
from privacysf.center.pipeline import keyed_transform
from privacysf.data.prepare import prepare
from privacysf.workflows.fit import reload_center

for run in map(Path, sys.argv[1:]):
    cfg, center = reload_center(run, "cpu")
    images = prepare(cfg.data).test.images
    out = {}
    for name, sets in (
        ("plain codes", []),
        ("keyed, mix only", ["key.enabled=true"]),
        (
            "keyed, mix+permute",
            ["key.enabled=true", "key.permute_tokens=true", "augment.shift=0", "mapper.kind=transformer"],
        ),
    ):
        c2 = cfg.override(sets)
        cen = dataclasses.replace(
            center, cfg=c2, key=keyed_transform(c2, CenterKey(bytes(range(32)))) if sets else None
        )
        sizes = {}
        for comp in ("deflate", "none"):
            c3 = c2.override([f"codec.wire_compression={comp}"])
            cc = dataclasses.replace(cen, cfg=c3)
            sizes[comp] = statistics.median_low(len(cc.image_message(im[None])) for im in images)
        out[name] = f"{sizes['deflate']}/{sizes['none']} = {sizes['deflate'] / sizes['none']:.2f}"
    print(cfg.data.dataset, cfg.data.size, "image code up, median deflated/plain:", out)
