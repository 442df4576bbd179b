"""CPU time of one mapping request with the default mapper, by batch size (what ``map_seconds`` and
the client's ``MAP_BATCH_CODES`` are sized from).

The mapper is freshly initialised (its cost per code does not depend on training) for the default
codec's codes: a 32×32 token grid (128-pixel slices, downsampling 4), 4 values per token, int8. It is a
tool, not a bench job: it times the mapper in-process (no service around it), once, to size two
settings, and its useful batches cost minutes of CPU each.

    .venv/bin/python tools/bench_map_cost.py --codes 256 1024
"""

from __future__ import annotations

import argparse
import time

import torch

from privacysf.benchmark.service_process import codes
from privacysf.config import AugmentConfig, MapperConfig, TrainConfig
from privacysf.server.mapping import MappingServer

GRID, CHANNELS = (32, 32), 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--codes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the service's default: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    server = MappingServer(MapperConfig(), AugmentConfig(), TrainConfig(device="cpu", progress=False))
    server.initialise(GRID, CHANNELS, CHANNELS)
    for n in args.codes:
        body = codes(n, "image", CHANNELS, grid=GRID)
        start = time.process_time()
        server.map(body)
        print(f"{n} codes ({len(body) / 2**20:.1f} MiB): {time.process_time() - start:.1f} s CPU")


if __name__ == "__main__":
    main()
