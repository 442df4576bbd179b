"""Image-code messages (up) of fitted runs with a key on their trained center, deflated and plain.

    PYTHONPATH=src .venv/bin/python docs/runs/deflate-20261206/keyed_upload.py RUN [RUN ...]

The key is fixed bytes (0..31); the mapper is not retrained, so only the upload is measured. Each
test slice is one message; the median lengths are printed.
"""

import dataclasses
import statistics
import sys
from pathlib import Path

from privacysf.center.keys import CenterKey
from privacysf.center.pipeline import keyed_transform
from privacysf.data.prepare import prepare
from privacysf.workflows.fit import reload_center

SETTINGS = {
    "plain codes": [],
    "keyed, mixing": ["key.enabled=true"],
    "keyed, mixing and token order": [
        "key.enabled=true",
        "key.permute_tokens=true",
        "augment.shift=0",
        "mapper.kind=transformer",
    ],
}

for run in map(Path, sys.argv[1:]):
    cfg, center = reload_center(run, "cpu")
    images = prepare(cfg.data).test.images
    out = {}
    for name, overrides in SETTINGS.items():
        keyed = cfg.override(overrides)
        key = keyed_transform(keyed, CenterKey(bytes(range(32)))) if overrides else None
        sizes = {}
        for compression in ("deflate", "none"):
            sent = dataclasses.replace(
                center, cfg=keyed.override([f"codec.wire_compression={compression}"]), key=key
            )
            sizes[compression] = statistics.median_low(len(sent.image_message(im[None])) for im in images)
        out[name] = f"{sizes['deflate']}/{sizes['none']} = {sizes['deflate'] / sizes['none']:.2f}"
    print(cfg.data.dataset, cfg.data.size, "image code up, median deflated/plain:", out)
