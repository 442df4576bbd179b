"""The center's side of the service: the CLI walkthrough, and what actually goes over the wire.

A recording httpx transport keeps every byte the center's client sends while it uploads a run's data
and segments an image through the server; none of it may contain the raw images, masks or any weight
of the center's networks (decoders included), and every binary body must parse as wire messages.
"""

import json

import nibabel as nib
import numpy as np
import pytest
from fitkit import TINY_FIT, fit_run
from keykit import as_read
from servicekit import LoopbackServer, RecordingTransport

from privacysf.center.client import ServiceClient
from privacysf.center.pipeline import load_center
from privacysf.cli import main
from privacysf.data.phantom import phantom_case
from privacysf.data.prepare import prepare
from privacysf.exchange import decode_codes, split_messages
from privacysf.server.service import create_app
from privacysf.server.settings import ServiceConfig
from privacysf.workflows.fit import reload_center
from privacysf.workflows.remote import dataset_bundle, segment_remote, upload_run

FIT = [*TINY_FIT, "train.epochs=1", "train.threads=1", "mapper.width=8"]
JOB = ["--epochs", "2"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return fit_run(tmp_path_factory, FIT)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    app = create_app(ServiceConfig(store=tmp_path_factory.mktemp("svc") / "store", poll_seconds=0.05))
    server = LoopbackServer(app).start()
    yield app.state.store, server.url
    server.stop()


@pytest.fixture()
def scan(tmp_path):
    case = phantom_case(np.random.default_rng(7), 48, "scan")
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(case.image.astype(np.float32), np.eye(4)), str(path))
    return path, case.image


def test_cli_walkthrough_login_upload_train_segment(run_dir, service, scan, tmp_path, monkeypatch, capsys):
    store, url = service
    _, token = store.create_center("cli-center")
    monkeypatch.setenv("PRIVACYSF_PROFILE", str(tmp_path / "login.json"))
    assert main(["center", "login", url, token]) == 0
    assert oct((tmp_path / "login.json").stat().st_mode & 0o777) == "0o600"
    assert main(["center", "upload", str(run_dir), "--name", "phantom"]) == 0
    dataset_id = int(capsys.readouterr().out.split("dataset ")[1].split()[0])
    assert main(["center", "train", str(dataset_id), *JOB, "--wait"]) == 0
    job = json.loads(capsys.readouterr().out.split("queued\n", 1)[1])
    assert job["status"] == "done"
    assert main(["center", "status", str(job["id"]), "--log"]) == 0
    assert "done: best val score" in capsys.readouterr().out
    output = tmp_path / "mask.nii.gz"
    assert main(["center", "segment", str(run_dir), str(job["model_id"]), str(scan[0]), str(output)]) == 0
    assert nib.load(str(output)).shape == (48, 48, 1)
    assert main(["center", "segment", str(run_dir), "999", str(scan[0]), str(output)]) == 2
    assert "model 999 does not exist" in capsys.readouterr().err


def _windows(array: np.ndarray, dtypes, distinct: int = 4, width: int = 48) -> list[bytes]:
    """Middle byte windows of the array's rows in each dtype it could be sent as, keeping only windows
    of ``distinct`` values or more (a run of zeros would also match a code and prove nothing)."""
    found = []
    for dtype in dtypes:
        for row in array.reshape(-1, array.shape[-1]):
            raw = np.ascontiguousarray(row.astype(dtype)).tobytes()
            window = raw[len(raw) // 2 - width // 2 : len(raw) // 2 + width // 2]
            if np.unique(np.frombuffer(window, dtype)).size >= distinct:
                found.append(window)
    return found


def test_a_center_sends_codes_only(run_dir, service, scan, tmp_path):
    store, url = service
    _, token = store.create_center("recorded-center")
    recorder = RecordingTransport()
    client = ServiceClient(url, token, transport=recorder)
    dataset = upload_run(client, run_dir, "phantom")
    job = client.wait_job(client.start_job([dataset["id"]], train={"epochs": 2})["id"], poll=0.1)
    segment_remote(client, job["model_id"], run_dir, scan[0], tmp_path / "mask.nii.gz")

    cfg, center = reload_center(run_dir)
    data = prepare(cfg.data)
    secrets = {
        "scan": _windows(scan[1][..., 0], ["<f4", "<f8", "<f2", "<i2", "u1"]),
        "images": _windows(data.train.images[:, 0], ["<f4", "<f8", "<f2"]),
        "masks": _windows(data.train.masks, ["<i8", "<i4", "<i2", "u1"], distinct=2),
    }
    trained = load_center(cfg, data.info.num_classes, run_dir, center.device)  # as saved, not folded
    for name, parts in [
        ("mask codec", (center.mask_codec, trained.mask_codec)),
        ("image encoder", (center.image_encoder, trained.image_encoder)),
    ]:
        tensors = [
            t for m in parts for t in m.state_dict().values() if t.numel() >= 16 and t.is_floating_point()
        ]
        secrets[name] = [t.flatten()[:12].numpy().astype("<f4").tobytes() for t in tensors]
        secrets[name] += [t.flatten()[:12].numpy().astype("<f2").tobytes() for t in tensors]
    assert all(len(windows) > 5 for windows in secrets.values()), {k: len(v) for k, v in secrets.items()}

    wire = b"".join(as_read(body) for *_, body in recorder.sent)  # deflated codes as they are read
    for name, windows in secrets.items():
        leaked = [w for w in windows if w in wire]
        assert not leaked, f"{len(leaked)} byte windows of the center's {name} were sent"

    binary = [(path, body) for method, path, kind, body in recorder.sent if body and "json" not in kind]
    assert [path for path, _ in binary] == ["/datasets", f"/models/{job['model_id']}/map"]
    assert binary[0][1] == dataset_bundle(run_dir)
    for message in split_messages(binary[0][1], 4):
        decode_codes(message)
    assert decode_codes(binary[1][1], expect_kind="image").shape[0] == 1
    jsons = [json.loads(body) for _, _, kind, body in recorder.sent if "json" in kind]
    assert jsons == [{"datasets": [dataset["id"]], "name": "mapper", "train": {"epochs": 2}}]
    client.close()
