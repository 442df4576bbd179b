"""Encrypted queries through the service: the center registers public evaluation keys once, sends CKKS
ciphertexts of its codes, and decrypts replies that match the same model on plain codes.

What goes over the wire is recorded: the keys carry no form of the secret key, every mapping request
is ciphertext, and the keys are sent once however many images are segmented. Refusals (no keys, keys
of another center, a model that is not a poly mapper, corrupt or mislabelled keys, too many codes)
are 4xx answers that say what to do.
"""

import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest
from fitkit import TINY_POLY, fit_run
from keykit import ckks_secret_forms
from servicekit import LoopbackServer, RecordingTransport

from privacysf.center.client import ServiceClient
from privacysf.center.encryption import QueryEncryption
from privacysf.cli import main
from privacysf.config import MapperConfig
from privacysf.data.phantom import phantom_case
from privacysf.data.prepare import prepare
from privacysf.errors import ServiceError
from privacysf.exchange.encrypted import CkksParameters, EncryptedCodes, EvaluationKeys, is_encrypted
from privacysf.server import MappingServer
from privacysf.server.service import create_app
from privacysf.server.settings import ServiceConfig
from privacysf.server.tables import ModelRow
from privacysf.workflows.fit import reload_center
from privacysf.workflows.remote import segment_remote, upload_run

FIT = [*TINY_POLY, "train.epochs=2", "train.threads=1", "encryption.enabled=true"]
POLY = {"kind": "poly", "poly_width": 8}
MAX_ENCRYPTED = 3


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return fit_run(tmp_path_factory, FIT)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    cfg = ServiceConfig(
        store=tmp_path_factory.mktemp("svc") / "store",
        poll_seconds=0.05,
        max_encrypted_codes=MAX_ENCRYPTED,
        max_keys_per_center=1,
    )
    app = create_app(cfg)
    server = LoopbackServer(app).start()
    yield app.state.store, server.url
    server.stop()


def _trained_model(client: ServiceClient, run_dir, mapper: dict) -> int:
    dataset = upload_run(client, run_dir, "phantom")
    job = client.wait_job(
        client.start_job([dataset["id"]], train={"epochs": 2}, mapper=mapper)["id"], poll=0.1
    )
    assert job["status"] == "done", job
    return job["model_id"]


def _nifti(tmp_path, seed: int):
    case = phantom_case(np.random.default_rng(seed), 32, "scan")
    path = tmp_path / f"scan{seed}.nii.gz"
    nib.save(nib.Nifti1Image(case.image.astype(np.float32), np.eye(4)), str(path))
    return path


def test_encrypted_queries_through_the_service_match_the_model_on_plain_codes(run_dir, service, tmp_path):
    store, url = service
    _, token = store.create_center("encrypting-center")
    recorder = RecordingTransport()
    client = ServiceClient(url, token, transport=recorder)
    model_id = _trained_model(client, run_dir, POLY)
    for seed in (1, 2):  # two images: the keys go once
        out = segment_remote(
            client, model_id, run_dir, _nifti(tmp_path, seed), tmp_path / f"mask{seed}.nii.gz"
        )
        assert nib.load(str(out)).shape == (32, 32, 1)

    cfg, center = reload_center(run_dir)
    assert center.encryption is not None
    puts = [(path, body) for method, path, _, body in recorder.sent if method == "PUT"]
    assert [path for path, _ in puts] == [f"/keys/{center.encryption.key_id}"]
    assert EvaluationKeys.decode(puts[0][1]).key_id == center.encryption.key_id
    maps = [body for _, path, _, body in recorder.sent if path.endswith("/map")]
    assert len(maps) == 2 and all(is_encrypted(body) for body in maps)  # one request per image slice
    assert all(len(EncryptedCodes.decode(body).ciphertexts) == 1 for body in maps)
    wire = b"".join(body for *_, body in recorder.sent)
    assert not [name for name, form in ckks_secret_forms(center.encryption).items() if form in wire]
    assert not list(store.files.root.rglob("*ckks*"))

    # what the center decrypts is what the same model gives on plain codes
    images = prepare(cfg.data).test.images[:3]
    encrypted = center.segment(client.mapper(model_id), images)
    row = store.visible_row(ModelRow, store.authenticate(token), model_id)
    plain_mapper = MappingServer(MapperConfig(**row.mapper), cfg.augment, cfg.train)
    plain_mapper.load(store.files.model(row.file), tuple(row.grid), row.in_channels, row.out_channels)
    plain = dataclasses.replace(center, encryption=None).segment(plain_mapper, images)
    assert (encrypted == plain).mean() > 0.995
    assert [keys["key_id"] for keys in client.evaluation_keys()] == [center.encryption.key_id]
    client.close()


def test_encrypted_queries_are_refused_with_what_to_do(run_dir, service):
    store, url = service
    _, token = store.create_center("refused-center")
    client = ServiceClient(url, token)
    poly = _trained_model(client, run_dir, POLY)
    _, center = reload_center(run_dir)
    assert center.encryption is not None
    query = center.query_message(prepare(center.cfg.data).test.images[:1])
    with pytest.raises(ServiceError, match="404: no evaluation keys .*PUT /keys/"):
        client.map(poly, query)
    keys = center.encryption.evaluation_keys().encode()
    with pytest.raises(ServiceError, match="400: .*sent as other"):
        client._request("PUT", "/keys/other", content=keys)
    with pytest.raises(ServiceError, match="400"):
        client._request("PUT", f"/keys/{center.encryption.key_id}", content=keys[: len(keys) // 2])
    foreign = EvaluationKeys.decode(keys)
    unsupported = dataclasses.replace(foreign, params=CkksParameters(32768, (60,) * 8, 60)).encode()
    with pytest.raises(ServiceError, match="400: .*unsupported CKKS setting"):
        client._request("PUT", f"/keys/{center.encryption.key_id}", content=unsupported)
    assert client.evaluation_keys() == []
    client.put_keys(keys)
    client.put_keys(keys)  # the same id again replaces, and stays within the quota
    other_keys = QueryEncryption.create(center.encryption.grid, 3).evaluation_keys().encode()
    with pytest.raises(ServiceError, match="429: .*replace them"):
        client.put_keys(other_keys)
    for broken in (b"PSFE" + bytes(20), query[:-10], query + b"\0"):
        with pytest.raises(ServiceError, match="400: "):
            client._request("POST", f"/models/{poly}/map", content=broken)
    assert is_encrypted(client.map(poly, query))
    too_many = center.query_message(prepare(center.cfg.data).train.images[: MAX_ENCRYPTED + 1])
    with pytest.raises(ServiceError, match=f"413: .*at most {MAX_ENCRYPTED}"):
        client.map(poly, too_many)
    unet = _trained_model(client, run_dir, {})
    with pytest.raises(
        ServiceError, match="400: encrypted queries need a mapper trained with mapper.kind=poly"
    ):
        client.map(unet, query)
    # another center's model cannot use these keys, even with the key id in hand
    _, other_token = store.create_center("other-center")
    other = ServiceClient(url, other_token)
    other_model = _trained_model(other, run_dir, POLY)
    with pytest.raises(ServiceError, match="404: no evaluation keys"):
        other.map(other_model, query)
    with pytest.raises(ServiceError, match="404"):
        other.map(poly, query)
    client.close()
    other.close()


def test_the_cli_trains_a_poly_mapper_and_segments_through_it(
    run_dir, service, tmp_path, monkeypatch, capsys
):
    store, url = service
    _, token = store.create_center("cli-encrypting-center")
    monkeypatch.setenv("PRIVACYSF_PROFILE", str(tmp_path / "login.json"))
    assert main(["center", "login", url, token]) == 0
    assert main(["center", "upload", str(run_dir), "--name", "phantom"]) == 0
    dataset_id = int(capsys.readouterr().out.split("dataset ")[1].split()[0])
    train = ["center", "train", str(dataset_id), "--epochs", "2", "--mapper", "kind=poly"]
    assert main([*train, "--mapper", "poly_width=8", "--wait"]) == 0
    job = json.loads(capsys.readouterr().out.split("queued\n", 1)[1])
    assert job["status"] == "done"
    assert store.visible_row(ModelRow, store.authenticate(token), job["model_id"]).mapper["kind"] == "poly"
    output = tmp_path / "mask.nii.gz"
    image = str(_nifti(tmp_path, 3))
    assert main(["center", "segment", str(run_dir), str(job["model_id"]), image, str(output)]) == 0
    assert nib.load(str(output)).shape == (32, 32, 1)
    assert main(["center", "train", str(dataset_id), "--mapper", "kind"]) == 2
    assert "--mapper takes KEY=VALUE" in capsys.readouterr().err
