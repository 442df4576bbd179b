"""Center workflows against the service: encode and upload a run's data, segment through a model.

The run folder's center models (written by ``privacysf fit``) encode the data here, on the center;
only the resulting code messages go to :class:`~privacysf.center.client.ServiceClient`.
"""

from __future__ import annotations

from pathlib import Path

from privacysf.center.client import ServiceClient
from privacysf.center.pipeline import upload_messages
from privacysf.common.torchutil import seed_everything
from privacysf.data.prepare import prepare
from privacysf.workflows.fit import reload_center
from privacysf.workflows.segment import segment_file


def dataset_bundle(run_dir: Path, device: str | None = None) -> bytes:
    """The run's train and validation splits as codes: four wire messages back to back."""
    cfg, center = reload_center(run_dir, device)
    seed_everything(cfg.train.seed, cfg.train.threads)
    data = prepare(cfg.data)
    return b"".join(upload_messages(center, data.train, data.val))


def upload_run(client: ServiceClient, run_dir: Path, name: str, device: str | None = None) -> dict:
    return client.upload_dataset(name, dataset_bundle(run_dir, device))


def segment_remote(
    client: ServiceClient, model_id: int, run_dir: Path, image: Path, output: Path, device: str | None = None
) -> Path:
    """``privacysf segment`` with the mapping done by the service's model ``model_id``."""
    return segment_file(run_dir, image, output, device, client.mapper(model_id))
