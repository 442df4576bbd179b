"""Federated averaging of batch-norm networks: weights are shared, statistics stay at the center."""

import numpy as np
import pytest
import torch
from torch import nn

from privacysf.center.codecs import MaskCodec
from privacysf.center.norm_statistics import (
    load_shared_state,
    recalibrate_norms,
    shared_state,
    statistics_keys,
)
from privacysf.common.torchutil import apply_in_batches
from privacysf.config import CodecConfig
from privacysf.errors import FederationError


def test_a_center_shares_every_weight_of_its_codec_and_none_of_its_statistics():
    codec = MaskCodec(3, CodecConfig(width=8))
    state, shared = codec.state_dict(), shared_state(codec)
    local = statistics_keys(codec)
    assert local and all(
        k.rsplit(".", 1)[1] in {"running_mean", "running_var", "num_batches_tracked"} for k in local
    )
    assert set(shared) == set(state) - local
    assert {name for name, _ in codec.named_parameters()} <= set(shared)
    assert "logit_offset" in shared


def test_averaged_weights_load_beside_the_centers_own_statistics_and_nothing_else_may_be_missing():
    torch.manual_seed(0)
    mine, other = MaskCodec(2, CodecConfig(width=8)), MaskCodec(2, CodecConfig(width=8))
    norm = next(m for m in mine.modules() if isinstance(m, nn.BatchNorm2d))
    norm.running_mean.fill_(0.5)
    load_shared_state(mine, shared_state(other))
    assert torch.equal(norm.running_mean, torch.full_like(norm.running_mean, 0.5))
    assert torch.equal(mine.decoder.net[0].weight, other.decoder.net[0].weight)
    incomplete = shared_state(other)
    del incomplete["decoder.net.0.weight"]
    with pytest.raises(FederationError, match="decoder.net.0.weight"):
        load_shared_state(mine, incomplete)


def test_recalibration_gives_the_statistics_of_all_the_local_data_for_the_loaded_weights():
    """Fails if the statistics were a running average (momentum kept) instead of the plain one."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    data = np.random.default_rng(0).normal(2.0, 3.0, (72, 1, 8, 8)).astype(np.float32)
    recalibrate_norms(net, lambda: apply_in_batches(net, data, torch.device("cpu"), batch_size=8))
    features = net[0](torch.from_numpy(data)).detach()
    norm = net[1]
    torch.testing.assert_close(norm.running_mean, features.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-4)
    # per batch unbiased variances averaged, as batch norm keeps them: close to the overall variance
    torch.testing.assert_close(norm.running_var, features.var(dim=(0, 2, 3)), rtol=0.05, atol=1e-3)
    assert not net.training and norm.momentum == 0.1
