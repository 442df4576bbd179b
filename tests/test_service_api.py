"""The service's HTTP API in process: authorisation, uploads, jobs, models, and refusals of bad input.

Every refusal must be a 4xx whose ``detail`` says what was wrong, and the service must keep serving
afterwards; a failed upload must leave neither a database row nor a file.
"""

import struct
import time

import httpx
import numpy as np
import pytest
from pgkit import fresh_database
from servicekit import GRID, TINY_MAPPER, TINY_TRAIN, LoopbackServer, bundle, codes, sha

from privacysf.center import client as client_module
from privacysf.center.client import ServiceClient
from privacysf.exchange import CodeBatch, decode_codes, encode_codes
from privacysf.server.service import create_app
from privacysf.server.settings import ServiceConfig
from privacysf.server.tables import DatasetRow, ModelRow

UPLOAD_LIMIT = 64 * 1024
MAP_LIMIT = 16 * 1024
MAP_CODES = 100


class Api:
    """A started service with two centers, A and B, and a small helper per request kind."""

    def __init__(self, root, db_url: str | None = None):
        self.cfg = ServiceConfig(
            store=root / "store",
            db_url=db_url,
            max_upload_bytes=UPLOAD_LIMIT,
            max_map_bytes=MAP_LIMIT,
            max_map_codes=MAP_CODES,
            map_seconds=0.0,  # past at once: a batch of more than 64 codes is cut off after its first 64
            poll_seconds=0.05,
        )
        self.postgres = db_url is not None
        self.app = create_app(self.cfg)
        self.store = self.app.state.store
        self.token_ids, self.tokens = {}, {}
        for name in ("A", "B"):
            self.token_ids[name], self.tokens[name] = self.store.create_center(name)
        self.server = LoopbackServer(self.app).start()
        self.client = httpx.Client(base_url=self.server.url, timeout=60)

    def auth(self, center: str) -> dict:
        return {"Authorization": f"Bearer {self.tokens[center]}"}

    def upload(self, center: str, payload: bytes, checksum: str | None = None, name: str = "codes"):
        headers = {**self.auth(center), "X-Content-SHA256": checksum or sha(payload)}
        return self.client.post("/datasets", params={"name": name}, content=payload, headers=headers)

    def train(self, center: str, datasets: list[int], **body):
        body = {"datasets": datasets, "train": TINY_TRAIN, "mapper": TINY_MAPPER, **body}
        return self.client.post("/jobs", json=body, headers=self.auth(center))

    def wait(self, center: str, job_id: int) -> dict:
        for _ in range(600):
            job = self.client.get(f"/jobs/{job_id}", headers=self.auth(center)).json()
            if job["status"] in ("done", "failed"):
                return job
            time.sleep(0.05)
        raise TimeoutError(job)

    def map(self, center: str, model_id: int, payload: bytes, **params):
        return self.client.post(
            f"/models/{model_id}/map", content=payload, params=params, headers=self.auth(center)
        )


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api(request, tmp_path_factory):
    """The service on SQLite (the default) and on PostgreSQL: every test of this file runs on both."""
    db_url = (
        fresh_database(request.getfixturevalue("postgres_server")) if request.param == "postgresql" else None
    )
    api = Api(tmp_path_factory.mktemp("service"), db_url)
    assert api.store.engine.dialect.name == request.param
    dataset = api.upload("A", bundle()).json()
    job = api.wait("A", api.train("A", [dataset["id"]]).json()["id"])
    assert job["status"] == "done", job
    api.dataset_id, api.job_id, api.model_id = dataset["id"], job["id"], job["model_id"]
    yield api
    api.client.close()
    api.server.stop()


def refused(response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    assert words in str(response.json()["detail"])


def test_only_health_answers_without_a_token(api):
    assert api.client.get("/health").json() == {"status": "ok"}
    for method, path in [
        ("GET", "/ready"),
        ("GET", "/openapi.json"),
        ("GET", "/me"),
        ("POST", "/datasets?name=x"),
        ("GET", "/datasets"),
        ("GET", f"/datasets/{api.dataset_id}"),
        ("DELETE", f"/datasets/{api.dataset_id}"),
        ("POST", "/jobs"),
        ("GET", "/jobs"),
        ("GET", f"/jobs/{api.job_id}"),
        ("GET", f"/jobs/{api.job_id}/log"),
        ("GET", "/models"),
        ("GET", f"/models/{api.model_id}"),
        ("POST", f"/models/{api.model_id}/map"),
    ]:
        for headers in ({}, {"Authorization": "Bearer psf_not-a-token"}, {"Authorization": "Basic eDp5"}):
            response = api.client.request(method, path, headers={**headers, "X-Content-SHA256": "0" * 64})
            assert response.status_code == 401, (method, path, headers, response.text)
            assert "token" in response.json()["detail"]
    assert api.client.get("/docs").status_code == 404


def test_ready_me_and_the_openapi_description(api):
    assert api.client.get("/ready", headers=api.auth("A")).json() == {
        "database": True,
        "store": True,
        "job_runner": True,
    }
    assert api.client.get("/me", headers=api.auth("B")).json()["name"] == "B"
    paths = api.client.get("/openapi.json", headers=api.auth("A")).json()["paths"]
    assert "/models/{model_id}/map" in paths and "/datasets" in paths


def test_a_revoked_token_is_refused_and_a_new_one_works(api):
    token_id, token = api.store.create_token("B")
    headers = {"Authorization": f"Bearer {token}"}
    assert api.client.get("/me", headers=headers).status_code == 200
    api.store.revoke_token(token_id)
    refused(api.client.get("/me", headers=headers), 401, "revoked")
    assert api.client.get("/me", headers=api.auth("B")).status_code == 200  # B's other token still works


def test_upload_train_and_map_through_the_api(api):
    dataset = api.client.get(f"/datasets/{api.dataset_id}", headers=api.auth("A")).json()
    assert dataset["grid"] == list(GRID) and (dataset["train_count"], dataset["val_count"]) == (16, 4)
    assert dataset["sha256"] == sha(bundle())
    log = [
        line["message"] for line in api.client.get(f"/jobs/{api.job_id}/log", headers=api.auth("A")).json()
    ]
    assert log[0].startswith("queued") and any(m.startswith("epoch 1:") for m in log) and "done" in log[-1]
    reply = api.map("A", api.model_id, codes(5, "image", seed=9))
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/octet-stream"
    mapped = decode_codes(reply.content, expect_kind="mask")
    assert mapped.shape == (5, 16, 4) and mapped.wire_dtype == "int8"
    assert decode_codes(
        api.map("A", api.model_id, codes(2, "image"), dtype="float32").content
    ).wire_dtype == ("float32")
    second = api.wait("A", api.train("A", [api.dataset_id]).json()["id"])
    versions = {m["id"]: m["version"] for m in api.client.get("/models", headers=api.auth("A")).json()}
    assert versions[api.model_id] == 1 and versions[second["model_id"]] == 2


def test_a_center_sees_and_uses_only_its_own_data_and_models(api):
    b = api.auth("B")
    assert api.client.get("/datasets", headers=b).json() == []
    assert api.client.get("/jobs", headers=b).json() == []
    assert api.client.get("/models", headers=b).json() == []
    refused(api.client.get(f"/datasets/{api.dataset_id}", headers=b), 404, "another center")
    refused(api.train("B", [api.dataset_id]), 404, "another center")
    refused(api.client.get(f"/jobs/{api.job_id}", headers=b), 404, "another center")
    refused(api.client.get(f"/jobs/{api.job_id}/log", headers=b), 404, "another center")
    refused(api.client.get(f"/models/{api.model_id}", headers=b), 404, "took no part")
    refused(api.map("B", api.model_id, codes(1, "image")), 404, "took no part")


def _with_header(message: bytes, **changes) -> bytes:
    """``message`` with header fields replaced (the prefix's length updated to match)."""
    import json

    length = struct.unpack_from("<I", message, 6)[0]
    header = json.loads(message[10 : 10 + length])
    new = json.dumps({**header, **changes}).encode()
    return message[:6] + struct.pack("<I", len(new)) + new + message[10 + length :]


def _nan_codes(kind: str) -> bytes:
    tokens = np.zeros((2, 16, 4), np.float32)
    tokens[1, 3, 2] = np.nan
    return encode_codes(CodeBatch(tokens, GRID, kind), "float16")


GOOD = bundle()
BAD_UPLOADS = {
    "checksum mismatch": (GOOD, sha(b"other"), 400, "SHA-256"),
    "bad checksum format": (GOOD, "xyz", 400, "64 hex digits"),
    "truncated body": (GOOD[:-7], None, 400, "truncated"),
    "extra bytes": (GOOD + b"\0\0", None, 400, "follow the last"),
    "three messages": (GOOD[: GOOD.rindex(b"PSFC")], None, 400, "ends before message 4"),
    "oversized body": (GOOD + bytes(UPLOAD_LIMIT), None, 413, "limit"),
    "not codes": (b"GIF89a" + bytes(100), None, 400, "not a Privacy-SF code message"),
    "wrong version": (GOOD[:4] + struct.pack("<H", 7) + GOOD[6:], None, 400, "version 7"),
    "wrong dtype": (_with_header(codes(16, "image")) + GOOD[len(codes(16, "image")) :], None, 400, None),
    "NaN values": (
        _nan_codes("image") + _nan_codes("mask") + codes(1, "image") + codes(1, "mask"),
        None,
        400,
        "NaN",
    ),
    "mask where image expected": (
        codes(2, "mask") + codes(2, "mask") + codes(1, "image") + codes(1, "mask"),
        None,
        400,
        "expected image codes",
    ),
    "unpaired counts": (
        codes(3, "image") + codes(2, "mask") + codes(1, "image") + codes(1, "mask"),
        None,
        400,
        "pair up",
    ),
    "two grids": (
        codes(2, "image") + codes(2, "mask", grid=(2, 8)) + codes(1, "image") + codes(1, "mask"),
        None,
        400,
        "one grid",
    ),
    "two scan orders": (
        codes(2, "image") + codes(2, "mask") + codes(1, "image", scan="keyed") + codes(1, "mask"),
        None,
        400,
        "scan order",
    ),
}
BAD_UPLOADS["wrong dtype"] = (
    _with_header(codes(16, "image"), dtype="float64") + GOOD[len(codes(16, "image")) :],
    None,
    400,
    "float64",
)


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_uploads_are_refused_and_leave_no_trace(api, case):
    payload, checksum, status, words = BAD_UPLOADS[case]
    before = sorted(p.name for p in (api.cfg.store / "datasets").iterdir())
    response = api.upload("B", payload, checksum)
    refused(response, status, words)
    assert api.client.get("/datasets", headers=api.auth("B")).json() == []
    assert sorted(p.name for p in (api.cfg.store / "datasets").iterdir()) == before
    assert api.client.get("/health").status_code == 200


def test_bad_upload_requests_are_refused(api):
    refused(api.client.post("/datasets?name=x", content=GOOD, headers=api.auth("B")), 422, "")
    checksum = {"X-Content-SHA256": sha(GOOD), **api.auth("B")}
    refused(api.client.post("/datasets?name=../../etc", content=GOOD, headers=checksum), 422, "")


@pytest.mark.parametrize(
    ("payload", "status", "words"),
    [
        (codes(2, "image", channels=8), 400, "this model takes 16 tokens of 4 values"),
        (codes(2, "image", grid=(2, 8)), 400, "2x8 token grid"),
        (codes(2, "mask"), 400, "expected image codes"),
        (_nan_codes("image"), 400, "NaN"),
        (codes(2, "image")[:-1], 400, "header announces"),
        (b"", 400, "too short"),
        (codes(2, "image")[:4] + struct.pack("<H", 3) + codes(2, "image")[6:], 400, "version 3"),
        (codes(MAP_LIMIT // 64 + 1, "image", dtype="float32"), 413, "limit"),
        (codes(MAP_CODES + 1, "image"), 413, "split the batch"),
        (codes(65, "image"), 413, "send at most 64 codes per request"),
    ],
    ids=[
        "channels",
        "grid",
        "kind",
        "nan",
        "truncated",
        "empty",
        "version",
        "oversized",
        "too many codes",
        "past the time limit",
    ],
)
def test_bad_mapping_requests_are_refused_and_serving_goes_on(api, payload, status, words):
    refused(api.map("A", api.model_id, payload), status, words)
    assert api.map("A", api.model_id, codes(1, "image")).status_code == 200


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"train": {"epochs": 0}}, "epochs"),
        ({"mapper": {"kernel": 4}}, "kernel"),
        ({"mapper": {"width": 12}}, "width"),
        ({"train": {"lr": "NaN"}}, "lr"),
        ({"datasets": []}, "datasets"),
        ({"datasets": [2**40]}, "datasets"),
        ({"device": "cuda"}, "device"),
    ],
)
def test_bad_job_settings_are_refused_with_the_field_named(api, change, where):
    body = {"datasets": [api.dataset_id], **change}
    response = api.client.post("/jobs", json=body, headers=api.auth("A"))
    assert response.status_code == 422
    assert where in str(response.json()["detail"])


@pytest.mark.parametrize(
    ("other", "difference"),
    [({"grid": (2, 8)}, "grid 2x8"), ({"scan": "keyed"}, "keyed scan")],
    ids=["grid", "scan order"],
)
def test_a_job_mixing_code_spaces_is_refused_before_it_is_queued(api, other, difference):
    second = api.upload("A", bundle(**other), name="other-space").json()
    jobs_before = api.client.get("/jobs", headers=api.auth("A")).json()
    response = api.train("A", [api.dataset_id, second["id"]])
    refused(response, 400, "different code spaces")
    assert difference in response.json()["detail"]
    assert api.client.get("/jobs", headers=api.auth("A")).json() == jobs_before


def test_keyed_uploads_train_an_order_blind_mapper_and_map_keyed_codes(api):
    """A permuted (keyed) dataset needs ``mapper.kind=transformer``; the default unet is refused with the
    reason."""
    keyed = api.upload("A", bundle(scan="keyed"), name="keyed").json()
    assert api.wait("A", api.train("A", [keyed["id"]]).json()["id"])["error"].count("transformer") == 1
    transformer = {**TINY_MAPPER, "kind": "transformer", "width": 16, "depth": 1, "heads": 2}
    for latents, token_width in ((0, 0), (4, 8)):  # full attention; pooled through 4 slots, narrow tokens
        job = api.train(
            "A", [keyed["id"]], mapper={**transformer, "latents": latents, "token_width": token_width}
        )
        job = api.wait("A", job.json()["id"])
        assert job["status"] == "done", job
        center = api.store.authenticate(api.tokens["A"])
        stored = api.store.visible_row(ModelRow, center, job["model_id"]).mapper
        assert (stored["latents"], stored["token_width"]) == (latents, token_width)
        mapped = decode_codes(api.map("A", job["model_id"], codes(3, "image", scan="keyed")).content)
        assert mapped.shape == (3, 16, 4) and mapped.scan == "keyed"
    for too_much in ({"latents": 2048}, {"token_width": 1024}):
        assert api.train("A", [keyed["id"]], mapper={**transformer, **too_much}).status_code == 422
    # heads that do not split the tokens' width: refused on submission, not failed in the worker
    refused = api.train("A", [keyed["id"]], mapper={**transformer, "heads": 3, "token_width": 8, "width": 24})
    assert refused.status_code == 422 and "mapper.heads (3)" in refused.text


def test_the_client_maps_a_batch_over_the_cap_in_parts(api, monkeypatch):
    """A batch bigger than the server's cap on codes per request maps in several requests, in order."""
    monkeypatch.setattr(client_module, "MAP_BATCH_CODES", 3)
    sent = []
    transport = httpx.HTTPTransport()
    recording = httpx.MockTransport(lambda request: sent.append(request) or transport.handle_request(request))
    client = ServiceClient(api.server.url, api.tokens["A"], transport=recording)
    payload = codes(8, "image", seed=4)
    whole = decode_codes(api.map("A", api.model_id, payload).content)
    parts = decode_codes(client.map(api.model_id, payload))
    client.close()
    transport.close()
    assert [decode_codes(r.content).shape[0] for r in sent] == [3, 3, 2]
    assert parts.shape == whole.shape and parts.wire_dtype == whole.wire_dtype
    np.testing.assert_allclose(parts.tokens, whole.tokens, atol=1e-3)


def test_the_service_really_runs_on_its_database(api):
    """PostgreSQL runs keep their rows in the server, SQLite runs in the store folder's file."""
    with api.store.engine.connect() as connection:
        version = connection.exec_driver_sql(
            "SELECT version()" if api.postgres else "SELECT sqlite_version()"
        )
        assert ("PostgreSQL" in version.scalar()) == api.postgres
        jobs = connection.exec_driver_sql("SELECT count(*) FROM jobs WHERE status = 'done'").scalar()
    assert jobs >= 1
    assert (api.cfg.store / "service.db").exists() != api.postgres


def test_a_center_deletes_its_dataset_and_keeps_the_models_trained_on_it(api):
    """The codes' file goes at once; the dataset is no longer listed, fetched or trained on; another
    center cannot delete it; the model trained on it stays the center's."""
    dataset = api.upload("A", bundle(seed=5)).json()
    job = api.wait("A", api.train("A", [dataset["id"]]).json()["id"])
    assert job["status"] == "done", job
    row = api.store.visible_row(DatasetRow, api.store.authenticate(api.tokens["A"]), dataset["id"])
    file = api.store.files.dataset(row.file)
    assert file.exists()
    path = f"/datasets/{dataset['id']}"
    refused(api.client.delete(path, headers=api.auth("B")), 404, "belongs to another center")
    client = ServiceClient(api.server.url, api.tokens["A"])
    client.delete_dataset(dataset["id"])
    assert not file.exists()
    assert dataset["id"] not in [d["id"] for d in client.datasets()]
    refused(api.client.get(path, headers=api.auth("A")), 404, "does not exist")
    refused(api.train("A", [dataset["id"]]), 404, "does not exist")
    refused(api.client.delete(path, headers=api.auth("A")), 404, "does not exist")
    model = api.client.get(f"/models/{job['model_id']}", headers=api.auth("A"))
    assert model.status_code == 200, model.text
    assert api.dataset_id in [d["id"] for d in client.datasets()]  # the others stay
    client.http.close()
