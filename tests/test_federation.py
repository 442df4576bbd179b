"""Multi-center runs: center partitions, the pooled mapper's center embedding, and the Flower app in
simulation and as real SuperLink/SuperNode processes on loopback (with a center dropping out)."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from flowerkit import Deployment
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from keykit import assert_no_secret, ckks_secret_forms, raw_forms

from privacysf.center.aggregation import FederationSecret, mask_weights, unmask
from privacysf.center.codecs import MaskCodec
from privacysf.center.federation import LOCAL_PARTS
from privacysf.center.norm_statistics import statistics_keys
from privacysf.center.pipeline import MASK_CODEC, load_center
from privacysf.cli import main
from privacysf.config import ExperimentConfig, MapperConfig
from privacysf.data.centers import MULTI_CENTER_TASKS, partition_cases, prepare_centers
from privacysf.data.phantom import phantom_cases
from privacysf.data.registry import REGISTRY
from privacysf.errors import ConfigError, FederationError, PrivacySFError
from privacysf.exchange import CodeBatch, decode_codes, encode_codes, flower, masking, split_messages
from privacysf.exchange.encrypted import EncryptedCodes, EvaluationKeys
from privacysf.metrics import mean_dice
from privacysf.server import MappingServer
from privacysf.server import federation as server_federation
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
    """The tiny run, with a federation secret for ``fedavg-codecs`` made as a user would."""
    secret = tmp_path / "federation.secret"
    FederationSecret.create(secret)
    settings = [f"output_dir={tmp_path / 'runs'}", f"federation.secret_file={secret}"]
    return ExperimentConfig().override([*TINY, *settings, *extra])


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


class ScriptedGrid:
    """Stands in for Flower's Grid: each center answers from the test's script, or stays silent."""

    def __init__(self, answer: Callable[[Message], RecordDict | None]) -> None:
        self.answer = answer

    def send_and_receive(self, messages, timeout: float) -> list[Message]:
        return [Message(content, reply_to=m) for m in messages if (content := self.answer(m)) is not None]


@pytest.fixture
def flower_task(monkeypatch):
    """Flower builds messages from the ids of the run it is in; outside a run they are set here."""
    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def test_a_dropout_fails_the_run_cleanly_when_configured_and_keeps_what_is_stored(tmp_path, flower_task):
    """Both centers send codes and a first FedAvg round of the U-Net; center b is silent in round 2. The
    run stops with its message, and the bundles and round 1's average it received stay on disk as they
    came."""
    cfg = ExperimentConfig().override(
        ["federation.on_dropout=fail", "federation.rounds=3", "train.progress=false"]
    )
    bundles = {1: _center_codes(1.0, 20, 0), 2: _center_codes(-1.0, 20, 1)}
    test_codes = encode_codes(CodeBatch(np.zeros((3, 16, 2), np.float32), (4, 4), "image"), "float32")
    weights = {1: torch.full((3,), 1.0), 2: torch.full((3,), 4.0)}

    def answer(message: Message) -> RecordDict | None:
        node = message.metadata.dst_node_id
        metrics = MetricRecord({"num-examples": node})  # center a trained on 1 example, b on 2
        if message.metadata.message_type == flower.LOCAL_CODES:
            codes = {
                **dict(zip(flower.UPLOAD_PARTS, bundles[node], strict=True)),
                flower.TEST_IMAGES: test_codes,
            }
            return RecordDict({"codes": ConfigRecord(codes), "metrics": metrics})
        if node == 2 and message.content.config_records["task"]["round"] == 2:
            return None  # center b's SuperNode is gone
        return RecordDict(
            {"weights": flower.weights_record({"model": {"w": weights[node]}}), "metrics": metrics}
        )

    folder = tmp_path / "server"
    federation = Federation(ScriptedGrid(answer), cfg, folder, 2, [Member(1, 0, "a"), Member(2, 1, "b")])
    federation.collect_codes(flower.LOCAL, lambda m: RecordDict(), flower.LOCAL_CODES)
    with pytest.raises(FederationError, match="center 'b' dropped out in unet round 2"):
        federation.fedavg(flower.UNET_ROUND, "unet")

    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "failed" and "center 'b' dropped out" in status["error"]
    assert status["dropped"] == [{"center": "b", "phase": "unet", "round": 2, "reason": "no reply in time"}]
    assert [(t["phase"], t["round"], sorted(t["centers"])) for t in status["traffic"]] == [
        ("codes-local", 0, ["a", "b"]),
        ("unet", 1, ["a", "b"]),
        ("unet", 2, ["a"]),
    ]
    for node, name in ((1, "a"), (2, "b")):  # each bundle as it arrived, center b's included
        stored = (folder / "codes" / f"local-{name}.psfc").read_bytes()
        assert split_messages(stored, 5) == [*bundles[node], test_codes]
    averaged = torch.load(folder / "fedavg" / "unet.pt", weights_only=True)
    assert averaged["round"] == 1  # the last round every center finished, weighted by examples
    torch.testing.assert_close(averaged["model"]["w"], torch.full((3,), 3.0))  # (1·1 + 2·4) / 3


def test_masked_fedavg_sums_only_the_centers_that_answered_so_a_dropout_still_unmasks(tmp_path, flower_task):
    """Three centers upload masked weights; c is silent in round 2 (``on_dropout=continue``). Each round's
    sum carries exactly the nonces and counts it added: round 1's unmasks, at the centers, to the average
    of all three, round 2's to the average of a and b, with no pad of c's left in it."""
    cfg = ExperimentConfig().override(["federation.rounds=2", "train.progress=false"])
    secret = FederationSecret(bytes(range(32)))
    weights = {1: 1.0, 2: 4.0, 3: -2.0}  # center a trained on 1 example, b on 2, c on 3
    received: dict[tuple[int, int], torch.Tensor] = {}

    def answer(message: Message) -> RecordDict | None:
        node, task = message.metadata.dst_node_id, message.content.config_records["task"]
        round_ = flower.field(task, "round", int)
        if node == 3 and round_ == 2:
            return None
        averaged = unmask(message.content, "weights", secret, message.metadata.run_id)
        if averaged is not None:
            received[(node, round_)] = averaged["model"]["w"]
        state = {"w": torch.full((3,), weights[node] * round_)}
        upload = mask_weights({"model": state}, node, task, secret, message.metadata.run_id)
        return RecordDict({**upload, "metrics": MetricRecord({"num-examples": node})})

    members = [Member(1, 0, "a"), Member(2, 1, "b"), Member(3, 2, "c")]
    federation = Federation(ScriptedGrid(answer), cfg, tmp_path / "server", 3, members)
    total = federation.masked_fedavg(flower.MASK_CODEC_ROUND, "mask_codec")
    assert set(received) == {(1, 2), (2, 2)}
    for node in (1, 2):  # round 1: (1·1 + 2·4 + 3·-2) / 6
        torch.testing.assert_close(received[(node, 2)], torch.full((3,), 0.5))
    assert (total.round, total.examples, len(total.nonces)) == (2, 3, 2)
    averaged = unmask(RecordDict(total.records("w")), "w", secret, 1)
    assert averaged is not None  # round 2: (1·2 + 2·8) / 3
    torch.testing.assert_close(averaged["model"]["w"], torch.full((3,), 6.0))
    stored = torch.load(tmp_path / "server" / "fedavg" / "mask_codec.pt", weights_only=True)
    assert stored["model"]["w"].dtype == torch.uint32 and stored["nonces"] == list(total.nonces)


SHARED_WEIGHTS = {
    "fedavg/mask_codec.pt": "fedavg-codecs",
    "fedavg/image_encoder.pt": "fedavg-codecs",
    "fedavg/unet.pt": "unet-fedavg",
}
"""Averaged weights the server keeps, by the mode that shares them (docs/multicenter.md)."""
MASKED_ON_THE_SERVER = {"fedavg/mask_codec.pt", "fedavg/image_encoder.pt"}
"""``fedavg-codecs`` averages the codecs under masks: the server keeps masked sums (uint32), never the
weights (docs/multicenter.md, "Masked averaging of codecs")."""
IMAGE_READERS_ON_THE_SERVER = {"fedavg/unet.pt"}
"""The one network that reads images documented as shared in the clear: the raw U-Net of
``unet-fedavg``. No mapper or code file may hold one."""


def _tensors(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint, by its path of keys (``model/decoder.net.0.weight``)."""
    found = {}
    for key, value in state.items():
        if isinstance(value, dict):
            found.update(_tensors(value, f"{prefix}{key}/"))
        elif isinstance(value, torch.Tensor):
            found[f"{prefix}{key}"] = value
    return found


def _check_server_folder(server, modes, size=32) -> None:
    """What the server keeps, read from the files: code bundles (tokens, not pixels), mappers, the masked
    codec sums and the U-Net's averaged weights of the modes run; no decoder, an image reader only where
    documented.

    A network that reads an image has a convolution over one input channel; one that writes an image
    has a convolution to one output channel (the masks here have two classes, the codes 4 channels).
    """
    for path in (p for p in server.rglob("*") if p.is_file()):
        name = path.relative_to(server).as_posix()
        if name == "status.json":
            continue
        if path.suffix == ".psfc":
            assert path.parent.name == "codes", name
            batches = [decode_codes(m) for m in split_messages(path.read_bytes(), 5)]
            assert [b.kind for b in batches] == ["image", "mask", "image", "mask", "image"], name
            assert all(b.tokens.shape[1] * 4 <= size * size for b in batches), name  # tokens, not pixels
            continue
        assert path.suffix == ".pt", name
        tensors = _tensors(torch.load(path, weights_only=True))
        if name.startswith("mappers/"):
            assert {k.partition("/")[0] for k in tensors} == {"model"}, name  # the mapper's weights alone
        else:
            assert SHARED_WEIGHTS.get(name) in modes, f"{name} is stored but no mode run shares it"
        masked = {k for k, t in tensors.items() if t.dtype == torch.uint32}
        assert masked == (set(tensors) if name in MASKED_ON_THE_SERVER else set()), name
        tensors = {k: t for k, t in tensors.items() if k not in masked}
        decoders = [k for k, t in tensors.items() if "decoder" in k or (t.ndim == 4 and t.shape[0] == 1)]
        assert not decoders, (name, decoders[:3])
        readers = [k for k, t in tensors.items() if t.ndim == 4 and t.shape[1] == 1]
        assert not readers or name in IMAGE_READERS_ON_THE_SERVER, (name, readers[:3])


def _check_run(run_dir, metrics, modes, centers=("phantom-c0", "phantom-c1")):
    assert metrics["status"] == "finished"
    for mode in modes:
        assert set(metrics["dice"][mode]) == {*centers, "mean"}
        assert all(0.0 <= v <= 1.0 for v in metrics["dice"][mode].values())
    for name in ("config.json", "metrics.json", "report.md", "figures/dice_per_center.png"):
        assert (run_dir / name).is_file()


def test_simulation_runs_every_mode_on_each_centers_test_set(tmp_path):
    run_dir, metrics = run_federate(tiny(tmp_path))
    modes = ExperimentConfig().federation.modes
    _check_run(run_dir, metrics, modes)
    _check_server_folder(run_dir / "server", modes)
    assert {
        p.relative_to(run_dir / "server").as_posix() for p in (run_dir / "server" / "fedavg").iterdir()
    } == set(SHARED_WEIGHTS)
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


@pytest.mark.parametrize("image_mode", ["autoencoder", "private"])
def test_fedavg_codecs_never_sends_an_image_decoder_to_the_server(tmp_path, image_mode):
    """In modes whose encoder trains beside a decoder (an image decoder, or the attacker of ``private``),
    only the encoder is averaged: the decoder stays in each center's folder across rounds."""
    modes = ["fedavg-codecs"]
    cfg = tiny(tmp_path, f"codec.image_mode={image_mode}", f"federation.modes={modes}", "federation.rounds=2")
    run_dir, metrics = run_federate(cfg)
    _check_run(run_dir, metrics, modes)
    _check_server_folder(run_dir / "server", modes)
    masked_sum = torch.load(run_dir / "server" / "fedavg" / "image_encoder.pt", weights_only=True)
    assert set(masked_sum) == {"round", "examples", "nonces", "model"}  # the encoder's part alone
    for center in (run_dir / "centers").iterdir():
        kept = torch.load(center / LOCAL_PARTS, weights_only=True)
        assert any("decoder" in part for part in kept), sorted(kept)


class RecordingGrid:
    """Passes the server's Grid calls through and keeps every reply it receives."""

    def __init__(self, grid, received: list[Message]) -> None:
        self.grid, self.received = grid, received

    def get_node_ids(self):
        return self.grid.get_node_ids()

    def send_and_receive(self, messages, timeout: float) -> list[Message]:
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.received.extend(replies)
        return replies


def _foreground_dice(codec: MaskCodec, code: torch.Tensor, masks: np.ndarray) -> float:
    with torch.no_grad():
        pred = codec.eval().decode(code).argmax(1).numpy()
    return mean_dice(pred, masks, codec.num_classes)


def test_fedavg_codecs_leaves_the_server_only_masked_sums_that_decode_to_noise(tmp_path, monkeypatch):
    """The server of a simulated ``fedavg-codecs`` run receives no byte form of the centers' secret; the
    codec sum it stores, read as it would read it (no pads), loads into a decoder that returns noise,
    while the same file unmasked with the secret is, bit for bit, the codec each center kept."""
    received: list[Message] = []

    class Recorded(Federation):
        def __init__(self, grid, *args) -> None:
            super().__init__(RecordingGrid(grid, received), *args)

    monkeypatch.setattr(server_federation, "Federation", Recorded)
    modes = 'federation.modes=["fedavg-codecs"]'
    training = ["federation.local_epochs=10", "data.phantom_cases=24", "codec.width=16"]  # it decodes
    cfg = tiny(tmp_path, modes, "federation.rounds=2", *training)
    run_dir, metrics = run_federate(cfg)
    _check_run(run_dir, metrics, ["fedavg-codecs"])
    secret = Path(cfg.federation.secret_file).read_bytes()
    server_files = [p.read_bytes() for p in (run_dir / "server").rglob("*") if p.is_file()]
    uploads = [r for r in received if "mask" in r.content.config_records]
    assert len(uploads) == 2 * 2 * 2  # two centers, two rounds, two networks: all masked
    blobs = [part for reply in received for part in flower.serialised_parts(reply)]
    assert_no_secret(blobs + server_files, raw_forms(secret))

    stored = torch.load(run_dir / "server" / "fedavg" / "mask_codec.pt", weights_only=True)
    arrays = flower.weights_record({"model": stored["model"]})
    held = masking.MaskedSum(arrays, stored["round"], stored["examples"], tuple(stored["nonces"]))
    run_id = received[0].metadata.run_id
    unmasked = unmask(RecordDict(held.records("w")), "w", FederationSecret(secret), run_id)
    assert unmasked is not None
    kept = [
        torch.load(center / "shared" / MASK_CODEC, weights_only=True)["model"]
        for center in sorted((run_dir / "centers").iterdir())
    ]
    for name, value in unmasked["model"].items():
        assert all(torch.equal(value, state[name]) for state in kept), name

    # the server's best reading of what it holds: its fixed-point sum over the clear count
    server_view = {
        name: torch.from_numpy(masking.from_fixed(masked.numpy()) / held.examples)
        for name, masked in stored["model"].items()
    }
    distances = torch.cat([(value - kept[0][name]).abs().ravel() for name, value in server_view.items()])
    assert float((distances > 0.1).double().mean()) > 0.99  # nowhere near the average the centers hold
    classes = len(REGISTRY["phantom"].class_names)
    center_codec, server_codec = MaskCodec(classes, cfg.codec), MaskCodec(classes, cfg.codec)
    center_codec.load_state_dict(kept[0])
    # batch-norm statistics never leave a center; the server is given the center's own here
    assert not statistics_keys(center_codec) & set(unmasked["model"])
    server_codec.load_state_dict({**kept[0], **server_view})
    labels = np.stack([c.mask[..., 0] for c in phantom_cases(12, 32, 99)])  # masks neither codec saw
    with torch.no_grad():
        code = center_codec.eval().encode(torch.as_tensor(labels, dtype=torch.long))
    # the floor: one class everywhere (decoders from 40 random sums scored 0.04-0.27 on these codes)
    floor = max(mean_dice(np.full_like(labels, c), labels, classes) for c in range(classes))
    assert _foreground_dice(center_codec, code, labels) > floor + 0.3
    assert _foreground_dice(server_codec, code, labels) < floor + 0.1


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
    _check_server_folder(run_dir / "server", cfg.federation.modes)
    assert [d["center"] for d in metrics["dropped"]] == ["phantom-c1"]
    assert metrics["dropped"][0]["phase"] == "unet" and metrics["dropped"][0]["round"] == 2
    assert set(metrics["dice"]["unet-fedavg"]) == {"phantom-c0", "mean"}
    assert torch.load(checkpoint, weights_only=True)["round"] == 2
    bundle = run_dir / "server" / "codes" / "local-phantom-c1.psfc"  # stored before the dropout
    assert len(split_messages(bundle.read_bytes(), 5)) == 5
    assert (run_dir / "centers" / "1" / "local" / "center" / "mask_codec.pt").is_file()


def test_a_malformed_flower_message_fails_naming_the_field():
    record = ConfigRecord({"round": "two"})
    with pytest.raises(FederationError, match="'round' holds a str, expected int"):
        flower.field(record, "round", int)
    with pytest.raises(FederationError, match="no field 'codes'"):
        flower.field(record, "codes", bytes)
    assert flower.field(MetricRecord({"num-examples": 1}), "seconds", float, 0.0) == 0.0
    assert flower.field(ConfigRecord({"round": 2}), "round", int) == 2


def test_encrypted_queries_through_flower_decrypt_to_the_plaintext_map(tmp_path):
    """With encryption.enabled every center sends its test codes as ciphertexts beside its public
    evaluation keys; the server maps them unread, and what each center decrypts and decodes is what
    the same mapper gives on its plain codes. The pooled mode with a center embedding is refused."""
    modes = ["alone", "fedavg-codecs"]
    settings = ["mapper.kind=poly", "mapper.poly_width=8", "encryption.enabled=true", "train.epochs=3"]
    every_mode = tiny(tmp_path, *settings)
    with pytest.raises(ConfigError, match="drop it: --set 'federation.modes="):
        run_federate(every_mode)
    cfg = every_mode.override([f"federation.modes={modes}"])
    run_dir, metrics = run_federate(cfg)
    _check_run(run_dir, metrics, modes)
    server = run_dir / "server"
    centers = prepare_centers(cfg.data, cfg.federation)
    for index, center_data in enumerate(centers):
        for codecs, mode in ((flower.LOCAL, "alone"), (flower.SHARED, "fedavg-codecs")):
            center = load_center(
                cfg, center_data.data.info.num_classes, run_dir / "centers" / str(index) / codecs, "cpu"
            )
            assert center.encryption is not None
            bundle = (server / "codes" / f"{codecs}-{center_data.name}.psfc").read_bytes()
            parts = split_messages(bundle[: bundle.index(b"PSFE")], 4)
            assert [decode_codes(p).kind for p in parts] == ["image", "mask", "image", "mask"]
            query = EncryptedCodes.decode(bundle[bundle.index(b"PSFE") :], expect_kind="image")
            assert query.key_id == center.encryption.key_id
            assert len(query.ciphertexts) == len(center_data.data.test)
            keys = (server / "keys" / f"{codecs}-{center_data.name}.psfk").read_bytes()
            assert EvaluationKeys.decode(keys).key_id == center.encryption.key_id
            leaked = [n for n, form in ckks_secret_forms(center.encryption).items() if form in keys + bundle]
            assert not leaked
            mapper = MappingServer(cfg.mapper, cfg.augment, cfg.train)
            name = f"alone-{center_data.name}" if mode == "alone" else mode
            mapper.load(server / "mappers" / f"{name}.pt", center.grid, *_channels(cfg))
            plain = dataclasses.replace(center, encryption=None).segment(mapper, center_data.data.test.images)
            decrypted = np.load(run_dir / "centers" / str(index) / "predictions" / f"{mode}.npy")
            assert (decrypted == plain).mean() > 0.995
    assert not list(server.rglob("*ckks*"))


def _channels(cfg: ExperimentConfig) -> tuple[int, int]:
    return cfg.codec.image_channels, cfg.codec.mask_channels
