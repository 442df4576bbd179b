"""Inference copies of the center's networks answer as the trained networks do, without their batch norms."""

from typing import TypeVar

import numpy as np
import pytest
import torch
from monai.networks.blocks import ResidualUnit
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from privacysf.center.codecs import MaskCodec, build_image_encoder, encode_images, token_grid
from privacysf.center.pipeline import Center
from privacysf.config import CodecConfig, ExperimentConfig
from privacysf.exchange import finer_dtypes
from privacysf.nets.inference import InplaceActivation, ResidualSum, inference_copy
from privacysf.workflows.inprocess import untrained_pipeline

SIZE = 64
M = TypeVar("M", bound=nn.Module)


def _with_statistics(net: M) -> M:
    """``net`` after a few training-mode passes, so its batch norms hold statistics and affine
    parameters far from the identity a fresh one starts at (a fold of an identity proves nothing)."""
    torch.manual_seed(0)
    for norm in (m for m in net.modules() if isinstance(m, _BatchNorm)):  # 2-D, and flips' per-field 3-D
        nn.init.uniform_(norm.weight, 0.5, 1.5)
        nn.init.uniform_(norm.bias, -0.3, 0.3)
    for prelu in (m for m in net.modules() if isinstance(m, nn.PReLU)):  # each its own learned slope
        nn.init.uniform_(prelu.weight, 0.05, 0.6)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            if isinstance(net, MaskCodec):
                net.decode(net.encode(torch.randint(0, 3, (4, SIZE, SIZE))))
            else:
                net(torch.rand(4, 1, SIZE, SIZE) * 2 - 0.5)
    return net.eval()


def _norms(net: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in net.modules())


@pytest.mark.parametrize("padding", ["zeros", "circular"])
@pytest.mark.parametrize("activation", ["prelu", "relu", "leakyrelu"])
def test_the_copy_folds_every_batch_norm_and_answers_as_the_network_does(activation, padding):
    """Fails if a transposed convolution is folded as a plain one, a norm is left out of the fold, or
    an activation is replaced by one of another slope."""
    cfg = CodecConfig(norm="batch", activation=activation, padding=padding)
    encoder = _with_statistics(build_image_encoder(cfg))
    codec = _with_statistics(MaskCodec(3, cfg))
    images = torch.rand(2, 1, SIZE, SIZE)
    labels = torch.randint(0, 3, (2, SIZE, SIZE))
    served_encoder, served_codec = inference_copy(encoder), inference_copy(codec)
    assert _norms(served_encoder) == _norms(served_codec) == 0
    replaced = (nn.PReLU, ResidualUnit)  # computed in place by the copy
    assert not [m for m in [*served_encoder.modules(), *served_codec.modules()] if isinstance(m, replaced)]
    assert not [m for m in [*served_encoder.modules(), *served_codec.modules()] if m.training]  # whole eval
    assert served_codec.decoder.net[1].conv.unit0.conv.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        code = codec.encode(labels)
        pairs = [
            (encoder(images), served_encoder(images)),
            (code, served_codec.encode(labels)),
            (codec.decode(code), served_codec.decode(code)),
        ]
    for trained, served in pairs:
        assert torch.allclose(trained, served, atol=1e-4, rtol=1e-4)
        assert trained.abs().max() > 0.05  # not an all-zero answer that any copy would match


def test_an_inplace_activation_answers_as_the_one_it_replaces_and_spares_inputs_that_need_gradients():
    prelu = nn.PReLU()
    nn.init.constant_(prelu.weight, 0.3)
    x = torch.randn(2, 4, 8, 8)
    expected = prelu(x).detach()
    inplace = InplaceActivation.of(prelu)
    assert inplace is not None and InplaceActivation.of(nn.PReLU(4)) is None  # a slope per channel
    with torch.no_grad():
        written = x.clone()
        assert inplace(written).data_ptr() == written.data_ptr()  # in place: no new map
        assert torch.equal(written, expected)
    leaf = x.clone().requires_grad_()
    assert torch.equal(inplace(leaf).detach(), expected) and torch.equal(leaf.detach(), x)


def test_a_residual_sum_adds_into_the_convolutions_output_and_spares_inputs_that_need_gradients():
    torch.manual_seed(0)
    unit = ResidualUnit(2, 4, 4, subunits=2).eval()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        expected = unit(x)
        outputs = []
        hook = unit.conv.register_forward_hook(lambda _module, _inputs, out: outputs.append(out.data_ptr()))
        summed = ResidualSum(unit)(x)
        hook.remove()
    assert torch.equal(summed, expected) and summed.data_ptr() == outputs[0]  # no new map
    leaf = x.clone().requires_grad_()
    ResidualSum(unit)(leaf).sum().backward()
    assert leaf.grad is not None and torch.equal(leaf.detach(), x)


def test_the_trained_network_is_left_as_it_was():
    """Fails if the fold works on the network itself: the center could neither train nor save it."""
    codec = _with_statistics(MaskCodec(3, CodecConfig(norm="batch")))
    before = {k: v.clone() for k, v in codec.state_dict().items()}
    inference_copy(codec)
    assert _norms(codec) > 0
    assert all(torch.equal(before[k], v) for k, v in codec.state_dict().items())


def test_a_network_with_instance_norm_is_copied_unchanged():
    codec = MaskCodec(3, CodecConfig(norm="instance"))
    served = inference_copy(codec)
    assert [type(m) for m in served.modules()] == [type(m) for m in codec.modules()]
    assert not served.training


def test_a_served_center_decodes_every_empty_mask_empty():
    """The empty-mask guard holds for the decoder that serves, over every wire dtype."""
    cfg = ExperimentConfig().override([f"data.size={SIZE}", "codec.norm=batch"])
    center = Center(
        cfg,
        _with_statistics(MaskCodec(3, cfg.codec)),
        _with_statistics(build_image_encoder(cfg.codec)),
        token_grid(SIZE, cfg.codec),
        torch.device("cpu"),
    )
    offset = center.mask_codec.logit_offset.clone()
    served = center.serving()
    assert _norms(served.mask_codec) == 0
    assert torch.equal(center.mask_codec.logit_offset, offset)  # the guard raised the copy's only
    empty = np.zeros((2, SIZE, SIZE), np.int64)
    for dtype in finer_dtypes(cfg.codec.wire_dtype):
        assert not served.decode_message(served.mask_message(empty, dtype)).any(), dtype


def test_a_flip_symmetric_center_is_served_and_answers_as_trained():
    """``codec.symmetry=flips``: its encoders' field norms cannot fold, but the served copy (channels
    last) must still run and answer as the trained networks, codes flipping with the image."""
    cfg = CodecConfig(symmetry="flips", padding="circular")
    encoder = _with_statistics(build_image_encoder(cfg))
    codec = _with_statistics(MaskCodec(3, cfg))
    served_encoder, served_codec = inference_copy(encoder), inference_copy(codec)
    images, labels = torch.rand(2, 1, SIZE, SIZE), torch.randint(0, 3, (2, SIZE, SIZE))
    with torch.no_grad():
        served_code = served_encoder(images.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(served_code, encoder(images), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(served_codec.encode(labels), codec.encode(labels), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(
            served_encoder(images.flip(-1)), served_code.flip(-1), atol=1e-5, rtol=1e-4
        )
    assert served_code.abs().max() > 0.05


def test_a_served_query_switches_no_network_and_a_training_one_answers_in_eval_mode(monkeypatch):
    """A query on served networks walks no module's ``train``: ``eval()`` on each of its three networks
    cost about 0.9 ms of a 256² query. A network left training is still run in eval mode (its batch
    norms read their running statistics). Fails if encode, map or decode call ``eval()`` whatever the
    mode, or if the check that skips it skips a training network too."""
    center, server = untrained_pipeline(ExperimentConfig(), 3, SIZE)
    images = np.random.default_rng(0).standard_normal((2, 1, SIZE, SIZE)).astype(np.float32)
    expected = center.decode_message(server.map(center.image_message(images)))
    walked = []
    original = nn.Module.train
    monkeypatch.setattr(nn.Module, "train", lambda m, mode=True: walked.append(m) or original(m, mode))
    assert np.array_equal(center.decode_message(server.map(center.image_message(images))), expected)
    assert walked == []

    trained = _with_statistics(build_image_encoder(CodecConfig(norm="batch")))
    reference = encode_images(trained, images, torch.device("cpu"))
    trained.train()
    assert np.array_equal(encode_images(trained, images, torch.device("cpu")), reference)
    assert not trained.training
