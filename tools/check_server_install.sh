#!/usr/bin/env bash
# `pip install privacysf[server]` alone, in a fresh virtual environment: the server (service app,
# store, mapper, Flower server app and its CLI commands) must install, import and answer requests,
# and no image reader nor any other center-side package may come along.
#
# Usage: tools/check_server_install.sh [python]   (run from anywhere; takes a few minutes)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${1:-python3}"
WORK="$(mktemp -d -t psf-server-install-XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

"$PYTHON" -m venv "$WORK/venv"
BIN="$WORK/venv/bin"
# torch first, as the Makefile does: the CPU build on disk, never a CUDA wheel from the index
"$BIN/pip" install --quiet torch==2.13.0
"$BIN/pip" install --quiet "$REPO[server]"

cd "$WORK"  # away from the repository, so only the installed package can be imported
"$BIN/privacysf" server create-center probe --store "$WORK/store" >/dev/null
"$BIN/python" - "$WORK/store" <<'PY'
import asyncio
import hashlib
import importlib.util
import sys
from pathlib import Path

import httpx
import numpy as np
import psycopg  # noqa: F401  (the PostgreSQL driver: several job workers share one database)
import torch

import privacysf.server.federation  # noqa: F401  (the Flower server app)
from privacysf.config import AugmentConfig, MapperConfig, TrainConfig
from privacysf.exchange import CodeBatch, encode_codes
from privacysf.server.mapping import MappingServer
from privacysf.server.service.app import create_app
from privacysf.server.serving import ModelCache
from privacysf.server.settings import ServiceConfig
from privacysf.server.tables import ModelRow

CENTER_ONLY = ["nibabel", "SimpleITK", "pydicom", "tifffile", "PIL"]
CENTER_ALSO = ["monai", "skimage", "nilearn", "matplotlib", "scipy"]

installed = [name for name in CENTER_ONLY + CENTER_ALSO if importlib.util.find_spec(name) is not None]
assert not installed, f"the server install brought center-side packages: {installed}"
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(CENTER_ONLY + CENTER_ALSO))
assert not loaded, f"the server imported {loaded}"

app = create_app(ServiceConfig(store=Path(sys.argv[1])))
_, token = app.state.store.create_center("hospital")
auth = {"Authorization": f"Bearer {token}"}


def codes(n: int, kind: str) -> bytes:
    tokens = np.random.default_rng(n).uniform(-1, 1, (n, 16, 4)).astype(np.float32)
    return encode_codes(CodeBatch(tokens, (4, 4), kind), "int8")


async def requests() -> None:
    body = codes(8, "image") + codes(8, "mask") + codes(2, "image") + codes(2, "mask")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://server") as client:
        assert (await client.get("/health")).json() == {"status": "ok"}
        headers = {**auth, "X-Content-SHA256": hashlib.sha256(body).hexdigest()}
        uploaded = await client.post("/datasets", params={"name": "probe"}, content=body, headers=headers)
        assert uploaded.status_code == 201, uploaded.text
        listed = (await client.get("/datasets", headers=auth)).json()
        assert [d["train_count"] for d in listed] == [8], listed


asyncio.run(requests())

# the service's default mapper runtime: a stored model is exported to ONNX Runtime (which needs the
# exporter's packages too), answers as torch does, and keeps its export beside the model file
stored = MappingServer(MapperConfig(), AugmentConfig(), TrainConfig(device="cpu"))
stored.initialise((4, 4), 4, 4)
stored.save(app.state.store.files.model("probe.pt"))
row = ModelRow(id=1, file="probe.pt", grid=[4, 4], in_channels=4, out_channels=4, mapper=MapperConfig().model_dump())
served = ModelCache(app.state.store).get(row)
assert served.served is not None and app.state.store.files.model("probe.onnx").is_file()
tokens = torch.rand(3, 16, 4) * 2 - 1
torch.testing.assert_close(served.predict_tokens(tokens), stored.predict_tokens(tokens), rtol=1e-3, atol=1e-4)
print("server install: imports, serves requests, maps in ONNX Runtime, and holds none of", ", ".join(CENTER_ONLY + CENTER_ALSO))
PY
