"""The equivariance measure: zero for an encoder that commutes with every transform by construction,
large where it cannot, on real (phantom) slices."""

import pytest
import torch
from torch import nn

from privacysf.center.codecs import MaskCodec, build_image_encoder, equivariance_penalty
from privacysf.center.equivariance import EquivariancePenalty, equivariance_error, measure, transforms
from privacysf.config import CodecConfig, DataConfig, ExperimentConfig
from privacysf.data.prepare import prepare

DOWNSAMPLE = 4


@pytest.fixture(scope="module")
def slices():
    return prepare(DataConfig(dataset="phantom", size=32, phantom_cases=6)).train


class PositionBias(nn.Module):
    """Average pooling (commutes with all of them) plus a fixed code per token position (does not)."""

    def __init__(self, grid: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(DOWNSAMPLE)
        self.bias = torch.linspace(-1, 1, grid * grid).reshape(1, 1, grid, grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) + self.bias


def test_pooling_commutes_with_every_transform(slices):
    images = torch.from_numpy(slices.images)
    for t in transforms((8, 8), DOWNSAMPLE):
        error = equivariance_error(nn.AvgPool2d(DOWNSAMPLE), images, t)
        assert error["relative"] < 1e-6, t.name


def test_a_fixed_code_per_position_breaks_every_reordering_but_not_a_splice_or_mix(slices):
    images = torch.from_numpy(slices.images)
    errors = {
        t.name: equivariance_error(PositionBias(8), images, t)["relative"]
        for t in transforms((8, 8), DOWNSAMPLE)
    }
    assert errors["none (reference)"] < 1e-6
    assert errors["mixup, weight 0.5"] < 1e-6  # a fixed bias survives a convex mix
    assert errors["splice a quarter of the tokens"] < 1e-6  # and keeps every token in its place
    assert errors["cutmix the central box (a quarter)"] < 1e-6
    for name in ("flip left-right", "flip up-down", "reverse (180° turn)", "90° turn", "shift 1 token(s)"):
        assert errors[name] > 0.1, name


def test_measure_reports_every_transform_with_the_codec_ceiling_first(slices):
    torch.manual_seed(0)
    codec = MaskCodec(int(slices.masks.max()) + 1, CodecConfig(width=4, downsample=DOWNSAMPLE))
    rows = measure(nn.AvgPool2d(DOWNSAMPLE), codec, slices.images, slices.masks, DOWNSAMPLE)
    names = [r.transform for r in rows]
    assert names[0] == "none (reference)" and "splice a quarter of the tokens" in names
    assert rows[0].image_relative < 1e-6 and rows[0].mask_relative < 1e-6
    assert 0 <= rows[0].decoded_dice <= 1
    mix = next(r for r in rows if r.server_option == "mixup")
    assert mix.decoded_dice is None and mix.mask_relative > 1e-3  # tanh does not commute with mixing


@pytest.mark.parametrize("padding", ["zeros", "circular"])
def test_circular_padding_makes_both_encoders_commute_with_whole_token_shifts(slices, padding):
    """``codec.padding=circular``: the code of a cyclically shifted image (or mask) is the shifted code,
    to float rounding, so the server's ``shift`` trains on true pairs. Zero padding misses it by
    more than 1 % at the borders; so does circular padding if ``ConvEncoder`` stops setting it."""
    torch.manual_seed(0)
    cfg = CodecConfig(width=4, downsample=DOWNSAMPLE, padding=padding)
    classes = int(slices.masks.max()) + 1
    rows = measure(
        build_image_encoder(cfg).eval(),
        MaskCodec(classes, cfg).eval(),
        slices.images,
        slices.masks,
        DOWNSAMPLE,
    )
    shifts = [r for r in rows if r.server_option == "shift"]
    assert len(shifts) == 2
    for row in shifts:
        if padding == "circular":
            assert row.image_relative < 1e-5 and row.mask_relative < 1e-5, row
        else:
            assert row.image_relative > 0.01 and row.mask_relative > 0.01, row


@pytest.mark.parametrize(
    ("padding", "norm"), [("zeros", "batch"), ("circular", "batch"), ("zeros", "instance")]
)
def test_flip_symmetric_centers_commute_with_flips_and_the_half_turn(slices, padding, norm):
    """``codec.symmetry=flips``: the code of a flipped (or half-turned) image or mask is the flipped
    code, to float rounding, with batch statistics that differ per field. Fails if a strided layer
    reads an odd window (a kernel-3 stride-2 convolution samples a flipped map off by one pixel) or
    the head stops pooling over the four flips; a 90° turn stays far from exact (not in the group)."""
    torch.manual_seed(0)
    cfg = CodecConfig(width=8, downsample=DOWNSAMPLE, padding=padding, norm=norm, symmetry="flips")
    classes = int(slices.masks.max()) + 1
    encoder, codec = build_image_encoder(cfg), MaskCodec(classes, cfg)
    with torch.no_grad():  # training-mode passes: running statistics away from their start
        encoder(torch.from_numpy(slices.images))
        codec.encode(torch.from_numpy(slices.masks).long())
    rows = {
        r.transform: r for r in measure(encoder.eval(), codec.eval(), slices.images, slices.masks, DOWNSAMPLE)
    }
    exact = ["flip left-right", "flip up-down", "reverse (180° turn)"]
    if padding == "circular":
        exact += [name for name in rows if name.startswith("shift")]
    for name in exact:
        assert rows[name].image_relative < 1e-5 and rows[name].mask_relative < 1e-5, rows[name]
    assert rows["90° turn"].image_relative > 0.01 and rows["90° turn"].mask_relative > 0.01


def test_the_penalty_makes_an_encoder_commute_with_the_transforms(slices):
    """Two copies of one conv encoder fitted to a target that is not flip-equivariant (the image moved
    3 pixels right, then pooled), one with the penalty: the penalised one ends with a far smaller flip
    error, also against the distance between slices (it did not just collapse its codes)."""
    images = torch.from_numpy(slices.images)
    target = nn.AvgPool2d(DOWNSAMPLE)(images.roll(3, dims=-1)).repeat(1, 2, 1, 1)
    flip = next(t for t in transforms((8, 8), DOWNSAMPLE) if t.name == "flip left-right")
    penalty = EquivariancePenalty(1.0, (8, 8), DOWNSAMPLE, seed=0)
    errors = {}
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        encoder = nn.Sequential(nn.Conv2d(1, 2, 7, padding=3), nn.AvgPool2d(DOWNSAMPLE))
        optimiser = torch.optim.Adam(encoder.parameters(), lr=1e-2)
        for _ in range(60):
            optimiser.zero_grad()
            loss = (encoder(images) - target).pow(2).mean() + weight * penalty(encoder, images)
            loss.backward()
            optimiser.step()
        errors[weight] = equivariance_error(encoder, images, flip)
    assert errors[1.0]["relative"] < 0.5 * errors[0.0]["relative"]
    assert errors[1.0]["vs_other_slice"] < 0.5 * errors[0.0]["vs_other_slice"]


def test_the_penalty_is_off_by_default():
    assert equivariance_penalty(ExperimentConfig()) is None
    on = equivariance_penalty(ExperimentConfig().override(["codec.equivariance=0.5"]))
    assert on is not None and on.weight == 0.5 and "90° turn" in [t.name for t in on.choices]
