"""The service's bound on what one training job holds in memory (``max_job_training_bytes``).

A job holds all its codes at once as float32. Deflated uploads made a dataset cheap to send and dear
to hold: half a megabyte of deflated codes can announce half a gibibyte of values. Before this bound a
job could also name any number of datasets. Each check here fails when its guard is removed: the
header check in ``check_dataset_stream``, the bound the upload passes it, the one ``POST /jobs``
passes the store, and the worker's check when it loads a job.
"""

import io

import httpx
import numpy as np
import pytest
from servicekit import LoopbackServer, bundle, sha, stored_dataset

from privacysf.errors import ConfigError, PayloadTooLargeError, WireFormatError
from privacysf.exchange import CodeBatch, check_dataset_stream, encode_codes, split_dataset
from privacysf.exchange.wire import encode_header, read_header, split_messages
from privacysf.server.jobs import training_messages
from privacysf.server.service import create_app
from privacysf.server.settings import ServiceConfig
from privacysf.server.store import Store

SMALL = bundle(n_train=8, n_val=2)
SMALL_BYTES = split_dataset(SMALL).layout.training_bytes
LIMIT = SMALL_BYTES * 3 // 2
"""Room for one small dataset, not for two."""
SETTINGS = {"train": {"epochs": 1}, "mapper": {}}


def test_the_training_size_counts_every_value_as_float32():
    layout = split_dataset(SMALL).layout
    rows, columns = layout.space.grid
    values_per_pair = rows * columns * (layout.space.image_channels + layout.space.mask_channels)
    assert 4 * 10 * values_per_pair == SMALL_BYTES


def test_a_dataset_past_the_bound_is_refused_from_its_headers_before_it_is_inflated():
    """The last message announces more codes than fit and carries a body that is no deflate stream:
    the refusal is 413 from its header, not the error inflating the body would give."""
    parts = split_messages(SMALL, 4)
    header = read_header(parts[3])
    shape = (header.shape[0] * 16, *header.shape[1:])
    garbage = b"\x00 not a deflate stream " * 8
    hostile = encode_header("mask", header.dtype, shape, header.grid, header.scan, garbage) + garbage
    with pytest.raises(WireFormatError, match="corrupt deflated body"):
        check_dataset_stream(io.BytesIO(b"".join([*parts[:3], hostile])))  # what inflating it says
    upload = b"".join([*parts[:3], hostile])
    layout = split_dataset(SMALL).layout
    assert check_dataset_stream(io.BytesIO(SMALL), max_training_bytes=SMALL_BYTES) == layout
    with pytest.raises(PayloadTooLargeError, match=f"past {LIMIT} bytes as float32"):
        check_dataset_stream(io.BytesIO(upload), max_training_bytes=LIMIT)


class Service:
    def __init__(self, root):
        self.cfg = ServiceConfig(store=root / "store", max_job_training_bytes=LIMIT, poll_seconds=0.05)
        app = create_app(self.cfg)
        self.store = app.state.store
        token = self.store.create_center("hospital")[1]
        self.server = LoopbackServer(app).start()
        self.http = httpx.Client(
            base_url=self.server.url, timeout=60, headers={"Authorization": f"Bearer {token}"}
        )

    def upload(self, payload: bytes) -> httpx.Response:
        headers = {"X-Content-SHA256": sha(payload)}
        return self.http.post("/datasets", params={"name": "codes"}, content=payload, headers=headers)

    def queue(self, datasets: list[int]) -> httpx.Response:
        return self.http.post("/jobs", json={"datasets": datasets, "train": {"epochs": 1}})

    def close(self) -> None:
        self.http.close()
        self.server.stop()


@pytest.fixture
def service(tmp_path):
    service = Service(tmp_path)
    yield service
    service.close()


def test_the_service_refuses_an_upload_no_job_could_hold_and_keeps_nothing(service):
    large = bundle(n_train=16, n_val=2)
    reply = service.upload(large)
    assert reply.status_code == 413, reply.text
    assert "as float32, the most this server lets one training job hold" in reply.json()["detail"]
    assert service.http.get("/datasets").json() == []
    assert list((service.cfg.store / "datasets").iterdir()) == []
    assert service.upload(SMALL).status_code == 201


def test_the_service_refuses_a_job_whose_datasets_together_pass_the_bound(service):
    first, second = (service.upload(bundle(n_train=8, n_val=2, seed=s)).json()["id"] for s in (0, 9))
    reply = service.queue([first, second])
    assert reply.status_code == 400, reply.text
    detail = reply.json()["detail"]
    assert f"datasets [{first}, {second}]" in detail and f"limit of {LIMIT} for one job" in detail
    assert service.http.get("/jobs").json() == []
    assert service.queue([first]).status_code == 201


def test_a_worker_with_a_lower_bound_fails_a_job_queued_under_a_higher_one(tmp_path):
    """The worker says its own bound is the lower one; a center queuing one dataset stored under a
    higher bound is told to upload it again in parts, not to name fewer datasets."""
    store = Store(ServiceConfig(store=tmp_path / "store"))
    caller = store.authenticate(store.create_center("hospital")[1])
    dataset = stored_dataset(store, caller, SMALL).id
    job = store.create_job(caller, "mapper", [dataset], SETTINGS)
    assert len(training_messages(store, job.id)) == 4
    store.cfg.max_job_training_bytes = SMALL_BYTES - 1
    worker_advice = "raise the worker's --max-job-training-mb"
    with pytest.raises(ConfigError, match=f"take {SMALL_BYTES} bytes.*{worker_advice}"):
        training_messages(store, job.id)
    with pytest.raises(ConfigError, match="upload its codes again as several smaller datasets"):
        store.create_job(caller, "mapper", [dataset], SETTINGS, max_training_bytes=SMALL_BYTES - 1)


@pytest.mark.parametrize("compression", ["none", "deflate"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "int8", "uint4", "uint2"])
def test_the_upload_check_and_the_stored_row_count_a_dataset_alike(tmp_path, dtype, compression):
    """The job check reads the database row, the upload check sums the headers: in every dtype, plain
    or deflated, a dataset passes both at exactly its size and is refused by the upload at one byte
    less."""
    counts = (5, 5, 3, 3)
    payload = b"".join(
        encode_codes(background_codes(n, kind, seed=i), dtype, compression)
        for i, (n, kind) in enumerate(zip(counts, ("image", "mask", "image", "mask"), strict=True))
    )
    store = Store(ServiceConfig(store=tmp_path / "store"))
    caller = store.authenticate(store.create_center("hospital")[1])
    row = stored_dataset(store, caller, payload)
    size = row.training_bytes
    assert size == 4 * 8 * 16 * 8  # 8 pairs of 16 tokens, 4 + 4 channels, as float32
    assert check_dataset_stream(io.BytesIO(payload), max_training_bytes=size).train_count == 5
    with pytest.raises(PayloadTooLargeError, match="as float32"):
        check_dataset_stream(io.BytesIO(payload), max_training_bytes=size - 1)


def background_codes(n: int, kind: str, seed: int) -> CodeBatch:
    """Mostly zero codes (so deflating shortens them) with a few values in every wire dtype's range."""
    tokens = np.zeros((n, 16, 4), np.float32)
    tokens[:, :2] = np.random.default_rng(seed).choice([-1.0, 0.5, 1.0], (n, 2, 4))
    return CodeBatch(tokens, (4, 4), kind)
