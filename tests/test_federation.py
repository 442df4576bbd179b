"""Multi-center runs: center partitions, the pooled mapper's center embedding, and the Flower app in
simulation and as real SuperLink/SuperNode processes on loopback (with a center dropping out)."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import torch
from flowerkit import Deployment

from privacysf.cli import main
from privacysf.config import ExperimentConfig, MapperConfig
from privacysf.data.centers import MULTI_CENTER_TASKS, partition_cases
from privacysf.data.phantom import phantom_cases
from privacysf.data.registry import REGISTRY
from privacysf.errors import ConfigError, FederationError, PrivacySFError
from privacysf.exchange import CodeBatch, decode_codes, encode_codes, split_messages
from privacysf.server import MappingServer
from privacysf.server.federation import Federation, Member
from privacysf.workflows.federate import run_federate

TINY = [
    "data.dataset=phantom",
    "data.size=32",
    "data.phantom_cases=12",
    "train.epochs=1",
    "train.progress=false",
    "train.threads=1",
    "train.device=cpu",
    "codec.width=8",
    "mapper.width=16",
    "unet.channels=[8,16,32,64]",
    "federation.rounds=1",
    "federation.round_timeout=300",  # only a hung center waits this long; slow CI machines start Ray late
]


def tiny(tmp_path, *extra: str) -> ExperimentConfig:
    return ExperimentConfig().override([*TINY, f"output_dir={tmp_path / 'runs'}", *extra])


def test_cases_are_dealt_to_centers_whole_iid_or_skewed_by_size():
    cases = phantom_cases(12, 32, 0)
    iid = partition_cases(cases, 3, "iid", 0)
    assert sorted(c.case_id for group in iid for c in group) == sorted(c.case_id for c in cases)
    assert [len(g) for g in iid] == [4, 4, 4]
    skewed = partition_cases(cases, 2, "size-skew", 0)
    small, large = ([float((c.mask > 0).mean()) for c in g] for g in skewed)
    assert max(small) <= min(large)
    with pytest.raises(ConfigError, match="cannot be dealt to 13 centers"):
        partition_cases(cases, 13, "iid", 0)


def test_brain_3c_centers_are_three_distinct_built_in_sources_with_the_same_classes():
    names = MULTI_CENTER_TASKS["brain-3c"]
    assert names == ("icbm152-brain", "colin27-brain", "itk-t1-brain")
    assert {REGISTRY[n].class_names for n in names} == {("background", "brain")}


def test_federate_refuses_a_single_center_with_a_clear_message(capsys):
    assert main(["federate", "--dataset", "phantom", "--centers", "1"]) == 2
    assert (
        "privacysf: error: invalid configuration: federation.centers must be greater than or equal to 2"
        in capsys.readouterr().err
    )


def _center_codes(sign: float, n: int, seed: int) -> tuple[bytes, bytes, bytes, bytes]:
    """Codes of a center whose mask code is ``sign`` × its image code: two centers disagree."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-0.8, 0.8, (n, 16, 2)).astype(np.float32)
    messages = []
    for part in (x[: n - 8], x[n - 8 :]):
        messages += [
            encode_codes(CodeBatch(part, (4, 4), "image"), "float32"),
            encode_codes(CodeBatch(sign * part, (4, 4), "mask"), "float32"),
        ]
    return messages[0], messages[1], messages[2], messages[3]


def _pooled_error(embedding: int) -> float:
    torch.manual_seed(0)
    cfg = ExperimentConfig().override(["train.epochs=12", "train.progress=false", "train.batch_size=16"])
    server = MappingServer(cfg.mapper.updated(width=16, center_embedding=embedding), cfg.augment, cfg.train)
    uploads = [_center_codes(1.0, 40, 0), _center_codes(-1.0, 40, 1)]
    server.fit_pooled(uploads)
    errors = []
    for center, upload in enumerate(uploads):
        mapped = decode_codes(server.map(upload[2], "float32", center=center if embedding else None))
        errors.append(float(np.mean((mapped.tokens - decode_codes(upload[3]).tokens) ** 2)))
    return float(np.mean(errors))


def test_a_center_embedding_lets_one_mapper_serve_centers_whose_code_spaces_disagree():
    with_embedding, without = _pooled_error(8), _pooled_error(0)
    assert with_embedding < 0.5 * without
    server = MappingServer(
        MapperConfig(width=16, center_embedding=8), ExperimentConfig().augment, ExperimentConfig().train
    )
    server.initialise((4, 4), 2, 2, centers=2)
    with pytest.raises(ConfigError, match="serves 2 centers"):
        server.map(_center_codes(1.0, 9, 0)[2])


def test_a_dropout_fails_the_run_cleanly_when_configured_and_keeps_what_is_stored(tmp_path):
    cfg = ExperimentConfig().override(["federation.on_dropout=fail"])
    folder = tmp_path / "server"
    stored = folder / "codes" / "local-a.psfc"
    stored.parent.mkdir(parents=True)
    stored.write_bytes(b"PSFC-bundle")
    federation = Federation(None, cfg, folder, 2, [Member(1, 0, "a"), Member(2, 1, "b")])
    with pytest.raises(FederationError, match="center 'b' dropped out in unet round 2"):
        federation.drop(federation.members[1], "unet", 2, "no reply in time")
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "failed" and status["dropped"][0]["center"] == "b"
    assert stored.read_bytes() == b"PSFC-bundle"


def _check_run(run_dir, metrics, modes, centers=("phantom-c0", "phantom-c1")):
    assert metrics["status"] == "finished"
    for mode in modes:
        assert set(metrics["dice"][mode]) == {*centers, "mean"}
        assert all(0.0 <= v <= 1.0 for v in metrics["dice"][mode].values())
    for name in ("config.json", "metrics.json", "report.md", "figures/dice_per_center.png"):
        assert (run_dir / name).is_file()
    # the server's folder holds codes, mappers and averaged weights only: no image, mask or decoder
    server_files = {
        p.relative_to(run_dir / "server").parts[0] for p in (run_dir / "server").rglob("*") if p.is_file()
    }
    assert server_files <= {"codes", "mappers", "fedavg", "status.json"}


def test_simulation_runs_every_mode_on_each_centers_test_set(tmp_path):
    run_dir, metrics = run_federate(tiny(tmp_path))
    modes = ExperimentConfig().federation.modes
    _check_run(run_dir, metrics, modes)
    traffic = metrics["traffic"]
    for phase in ("codes-local", "mask_codec", "image_encoder", "codes-shared", "unet"):
        assert traffic[phase]["bytes_up_per_center_per_round"] > 0
    # a code bundle up is small; a U-Net's weights up are what FedAvg of the raw network costs
    assert (
        traffic["codes-local"]["bytes_up_per_center_per_round"]
        < traffic["unet"]["bytes_up_per_center_per_round"]
    )
    bundle = (run_dir / "server" / "codes" / "local-phantom-c0.psfc").read_bytes()
    assert len(split_messages(bundle, 5)) == 5


@pytest.fixture
def deployment(tmp_path):
    flower = Deployment(tmp_path)
    try:
        flower.start_superlink()
        for partition in range(2):
            flower.start_supernode(partition, 2)
        yield flower
    finally:
        flower.stop()


def test_a_superlink_and_two_supernodes_run_a_job_to_the_end_when_one_center_drops_out(tmp_path, deployment):
    """Real processes on loopback: codes from both centers, then FedAvg of the U-Net, during which
    center 1's SuperNode is killed; the run finishes with center 0 and keeps what it stored."""
    cfg = tiny(
        tmp_path,
        'federation.modes=["pooled","unet-fedavg"]',
        "federation.rounds=2",
        "federation.round_timeout=30",
        "federation.on_dropout=continue",
    )
    outcome = {}

    def run() -> None:
        try:
            outcome["result"] = run_federate(cfg, f"127.0.0.1:{deployment.port}")
        except PrivacySFError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    checkpoint = None
    deadline = time.monotonic() + 240
    while checkpoint is None and time.monotonic() < deadline:
        found = list((tmp_path / "runs").glob("*/server/fedavg/unet.pt"))
        checkpoint = found[0] if found else None
        time.sleep(0.2)
    assert checkpoint is not None, deployment.log("superlink")
    deployment.kill("supernode-1")
    thread.join(300)
    assert "error" not in outcome, outcome.get("error")
    run_dir, metrics = outcome["result"]
    assert metrics["engine"].startswith("flower deployment")
    _check_run(run_dir, metrics, ["pooled"])
    assert [d["center"] for d in metrics["dropped"]] == ["phantom-c1"]
    assert metrics["dropped"][0]["phase"] == "unet" and metrics["dropped"][0]["round"] == 2
    assert set(metrics["dice"]["unet-fedavg"]) == {"phantom-c0", "mean"}
    assert torch.load(checkpoint, weights_only=True)["round"] == 2
    bundle = run_dir / "server" / "codes" / "local-phantom-c1.psfc"  # stored before the dropout
    assert len(split_messages(bundle.read_bytes(), 5)) == 5
    assert (run_dir / "centers" / "1" / "local" / "center" / "mask_codec.pt").is_file()
