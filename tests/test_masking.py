"""Masked FedAvg of codecs: fixed point modulo 2^32, pads from the federation secret, the secret file."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from privacysf.center.aggregation import SECRET_BYTES, FederationSecret, mask_weights, unmask
from privacysf.center.codecs import MaskCodec
from privacysf.cli import main
from privacysf.config import CodecConfig, FederationConfig
from privacysf.errors import ConfigError, FederationError
from privacysf.exchange import flower, masking

RUN_ID = 7
COUNTS = (3, 5, 11)
"""Training slices of three centers: unequal, so a plain mean differs from the weighted one."""


def test_fixed_point_sums_are_exact_within_the_range_and_refuse_values_outside_it():
    rng = np.random.default_rng(0)
    centers = 4
    share = masking.LIMIT / centers
    values = [rng.uniform(-share, share, 1000) for _ in range(centers)]
    values[0][:2] = (share - 2**-19, -share + 2**-19)  # the edges of a center's share
    records = [ArrayRecord({"w": Array(masking.to_fixed(v, centers, "w"))}) for v in values]
    total = masking.from_fixed(masking.sum_records(records)["w"].numpy())
    assert np.abs(total - np.sum(values, axis=0)).max() <= centers * 2**-21  # rounding only
    with pytest.raises(FederationError, match=r"w holds 512.0 .* outside ±512.0 .* shared by 4 centers"):
        masking.to_fixed(np.array([0.5, -share]), centers, "w")
    with pytest.raises(FederationError, match="'w' is float32, expected uint32"):
        masking.sum_records([ArrayRecord({"w": Array(np.zeros(3, np.float32))})])


def _codec_states() -> list[dict[str, torch.Tensor]]:
    """Three centers' mask codecs (a real state dict each), from different seeds."""
    states = []
    for seed in range(3):
        torch.manual_seed(seed)
        states.append(MaskCodec(2, CodecConfig(width=8)).state_dict())
    return states


def _uploads(states, secret: FederationSecret, round_: int = 2) -> list[RecordDict]:
    """What each center sends in one masked round (as ``masked_reply`` builds it)."""
    task = flower.config_record({"round": round_, "centers": len(states)})
    return [
        RecordDict(
            {
                **mask_weights({"model": state}, n, task, secret, RUN_ID),
                "metrics": MetricRecord({"num-examples": n}),
            }
        )
        for state, n in zip(states, COUNTS[: len(states)], strict=True)
    ]


def test_masked_fedavg_unmasks_to_the_weighted_average_and_the_server_sum_alone_is_noise():
    secret = FederationSecret(bytes(range(SECRET_BYTES)))
    states = _codec_states()
    total = masking.sum_uploads(_uploads(states, secret), 2)
    assert (total.examples, len(total.nonces)) == (sum(COUNTS), 3)
    message = RecordDict(total.records("weights"))
    averaged = unmask(message, "weights", secret, RUN_ID)
    assert averaged is not None
    again = unmask(RecordDict(total.records("weights")), "weights", FederationSecret(secret.secret), RUN_ID)
    assert again is not None
    for name, state in states[0].items():
        expected = sum(n * s[name].double() for s, n in zip(states, COUNTS, strict=True)) / sum(COUNTS)
        got = averaged["model"][name]
        assert got.dtype == torch.float32 and got.shape == state.shape
        assert float((got.double() - expected).abs().max()) <= 3 * 2**-20, name
        assert torch.equal(got, again["model"][name])  # the same bits whoever unmasks
    # what the server holds, read as it would without the pads: nowhere near the average (a uniform
    # value in ±2048 / 19 lands within 0.1 of a given one with chance 0.1 %)
    server_view = {name: masking.from_fixed(a.numpy()) / total.examples for name, a in total.arrays.items()}
    true = flower.weights_record(averaged)
    distances = np.concatenate([np.abs(v - true[name].numpy()).ravel() for name, v in server_view.items()])
    assert np.mean(distances > 0.1) > 0.99
    # another secret, or the right one in another run, unmasks to noise
    weight = "decoder.net.0.weight"
    for other, run in ((FederationSecret(bytes(SECRET_BYTES)), RUN_ID), (secret, RUN_ID + 1)):
        wrong = unmask(message, "weights", other, run)
        assert wrong is not None
        assert float((wrong["model"][weight] - averaged["model"][weight]).abs().mean()) > 0.1


def test_pads_are_fresh_per_upload_so_two_uploads_of_the_same_weights_differ():
    secret = FederationSecret(bytes(range(SECRET_BYTES)))
    state = _codec_states()[:1]
    first, second = _uploads(state, secret), _uploads(state, secret)
    a, b = (u[0].array_records["weights"]["model/decoder.net.0.weight"].numpy() for u in (first, second))
    assert np.mean(a == b) < 0.01
    assert first[0].config_records["mask"]["nonce"] != second[0].config_records["mask"]["nonce"]


def test_the_secret_file_is_private_by_its_own_mode_and_never_overwritten(tmp_path, capsys):
    path = tmp_path / "centers" / "federation.secret"
    previous = os.umask(0o000)
    try:
        assert main(["federation-secret", str(path)]) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    secret = path.read_bytes()
    assert len(secret) == SECRET_BYTES and secret != bytes(SECRET_BYTES)
    assert FederationSecret.load(FederationConfig(secret_file=str(path))).secret == secret
    assert main(["federation-secret", str(path)]) == 2
    assert "already exists; a federation secret is never overwritten" in capsys.readouterr().err
    assert path.read_bytes() == secret
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others .*chmod 600"):
        FederationSecret.load(FederationConfig(secret_file=str(path)))
    short = tmp_path / "short"
    short.write_bytes(b"x" * 16)
    short.chmod(0o600)
    with pytest.raises(ConfigError, match="holds 16 bytes, expected 32"):
        FederationSecret.load(FederationConfig(secret_file=str(short)))


def test_fedavg_codecs_refuses_to_run_without_a_federation_secret(tmp_path, capsys):
    base = ["federate", "--dataset", "phantom", "--modes", "fedavg-codecs", "--set", f"output_dir={tmp_path}"]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "`privacysf federation-secret PATH`" in err and "federation.secret_file=PATH" in err
    assert main([*base, "--set", f"federation.secret_file={tmp_path / 'nope'}"]) == 2
    assert "does not exist here" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before any run folder or training
