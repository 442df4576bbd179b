"""Bytes per single-slice query of fitted runs, deflated and plain: every test slice is one query.

    PYTHONPATH=src .venv/bin/python docs/runs/deflate-20261206/payload_table.py OUT.json RUN [RUN ...]

Each run's center and mapper are reloaded; every test slice is sent as one query with
``codec.wire_compression`` = deflate and = none. Dice needs no rerun: the values are the same bytes.
"""

import dataclasses
import json
import sys
from pathlib import Path

from privacysf.data.prepare import prepare
from privacysf.workflows.fit import reload
from privacysf.workflows.inprocess import payload_bytes

rows = []
for run in map(Path, sys.argv[2:]):
    cfg, center, server = reload(run, "cpu")
    images = prepare(cfg.data).test.images
    row = {"run": str(run), "dataset": cfg.data.dataset, "size": cfg.data.size, "seed": cfg.data.seed}
    for compression in ("deflate", "none"):
        sent = dataclasses.replace(center, cfg=cfg.override([f"codec.wire_compression={compression}"]))
        row[compression] = payload_bytes(sent, server, images)
    row["uint8_image_bytes"] = cfg.data.size**2
    rows.append(row)
    d = row["deflate"]
    print(
        f"{row['dataset']} {row['size']}² seed {row['seed']}: deflated median {d['total']} B "
        f"({d['total'] / row['uint8_image_bytes']:.3f} of uint8), max {d['total_max']} B, "
        f"plain {row['none']['total']} B, {d['queries']} queries",
        flush=True,
    )
Path(sys.argv[1]).write_text(json.dumps(rows, indent=1))
