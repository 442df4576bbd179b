"""The mask codec as sent: trained through the wire's rounding, and empty masks that stay empty."""

from dataclasses import replace

import numpy as np
import pytest
import torch

import privacysf.center.codecs as codecs
import privacysf.center.image_encoder as image_encoder
from privacysf.center.codecs import MaskCodec, build_image_encoder, token_grid, train_mask_codec
from privacysf.center.keys import CenterKey
from privacysf.center.pipeline import Center, guard_empty_masks, keyed_transform, mask_ceiling
from privacysf.common.torchutil import seed_everything
from privacysf.config import ExperimentConfig
from privacysf.data.prepare import prepare
from privacysf.data.preprocess import SliceSet
from privacysf.exchange import WIRE_DTYPES, CodeBatch, decode_codes, encode_codes, finer_dtypes
from privacysf.exchange.rounding import wire_rounding
from privacysf.exchange.wire import INT8_SCALE
from privacysf.metrics import score_classes, segmentation_scores
from privacysf.workflows.fit_report import ceiling_section

SIZE = 64
SETTINGS = [
    "data.dataset=phantom",
    f"data.size={SIZE}",
    "data.phantom_cases=24",
    "train.epochs=6",
    "train.progress=false",
    "train.threads=2",
    "codec.width=8",
    "codec.downsample=4",
    "codec.image_channels=4",
    "codec.mask_channels=4",
    "codec.wire_dtype=int8",
    # an instance-norm codec decodes some empty masks' codes as foreground: the case the guard is for
    # (the batch-norm default decodes them empty on its own, so its guard would have nothing to do)
    "codec.norm=instance",
]
CPU = torch.device("cpu")


def test_wire_rounding_gives_what_the_wire_gives_back_and_passes_gradients_straight():
    rng = np.random.default_rng(0)
    values = rng.uniform(-1.2, 1.2, (40, 16, 4)).astype(np.float32)
    values[0, :, 0] = (np.arange(16) - 8 + 0.5) / INT8_SCALE  # halfway between two int8 steps
    values[1, :, 0] = (np.arange(16) + 0.5) / 7.5 - 1  # ... between uint4 levels
    values[2, :, 0] = (np.arange(16) % 4 + 0.5) / 1.5 - 1  # ... between uint2 levels
    code = torch.from_numpy(values).requires_grad_()
    for dtype in WIRE_DTYPES:
        sent = decode_codes(encode_codes(CodeBatch(values, (4, 4), "mask"), dtype)).tokens
        rounded = wire_rounding(code, dtype)
        np.testing.assert_array_equal(rounded.detach().numpy(), sent)
        (grad,) = torch.autograd.grad(rounded.sum(), code)
        np.testing.assert_array_equal(grad.numpy(), np.ones_like(values))


def _with_empty_slices(part: SliceSet) -> SliceSet:
    """The slices and as many all-background ones, as in scans where most slices hold no label."""
    return SliceSet.concatenate([part, replace(part, masks=np.zeros_like(part.masks))], SIZE)


@pytest.fixture(scope="module")
def trained():
    """A tiny codec trained on the phantom with empty slices, before its empty-mask guard."""
    cfg = ExperimentConfig().override(SETTINGS)
    seed_everything(0, 2)
    data = prepare(cfg.data)
    data = replace(data, **{s: _with_empty_slices(getattr(data, s)) for s in ("train", "val", "test")})
    codec, _ = train_mask_codec(cfg, data.train, data.val, data.info.num_classes, CPU, None)
    return cfg, data, codec.state_dict()


def _center(trained, key: CenterKey | None = None) -> Center:
    cfg, data, state = trained
    codec = MaskCodec(data.info.num_classes, cfg.codec)
    codec.load_state_dict(state)
    transform = keyed_transform(cfg.override(["key.enabled=true"]), key) if key else None
    grid = token_grid(SIZE, cfg.codec)
    return Center(cfg, codec.eval(), build_image_encoder(cfg.codec), grid, CPU, transform)


def _empty_slices_with_foreground(center: Center, masks: np.ndarray, dtype: str) -> int:
    empty = masks.reshape(len(masks), -1).max(axis=1) == 0
    decoded = center.decode_message(center.mask_message(masks[empty], dtype))
    return int((decoded.reshape(len(decoded), -1).max(axis=1) > 0).sum())


@pytest.mark.parametrize("key", [None, CenterKey(bytes(range(32)))], ids=["plain", "keyed"])
def test_guarded_codec_decodes_every_empty_mask_empty_in_its_wire_dtype_and_finer_ones(trained, key):
    cfg, data, _ = trained
    center = _center(trained, key)
    k = data.info.num_classes
    masks = np.concatenate([data.val.masks, data.test.masks])
    before = {dtype: _empty_slices_with_foreground(center, masks, dtype) for dtype in WIRE_DTYPES}
    labelled = data.val.masks[data.val.masks.reshape(len(data.val.masks), -1).max(axis=1) > 0]
    labelled_before = mask_ceiling(center, labelled, k)
    raised = guard_empty_masks(center)
    assert finer_dtypes("int8") == ("float32", "float16", "int8")
    for dtype in finer_dtypes("int8"):
        assert _empty_slices_with_foreground(center, masks, dtype) == 0, (dtype, before)
    # only where the empty code decoded foreground is background raised, so labelled masks keep their Dice
    assert 0 < raised["pixels_raised"] < SIZE * SIZE / 4
    assert mask_ceiling(center, labelled, k) > labelled_before - 0.01
    ceilings = {dtype: mask_ceiling(center, data.test.masks, k, dtype) for dtype in WIRE_DTYPES}
    assert abs(ceilings["int8"] - ceilings["float32"]) < 0.01, ceilings
    assert guard_empty_masks(center)["pixels_raised"] == 0  # run again (as on loading): nothing to do


def test_the_guard_covers_the_coarsest_dtype_when_the_center_sends_in_it(trained):
    """A center configured for 2-bit codes guards them too (this int8-trained codec needs raises there)."""
    cfg, data, _ = trained
    center = replace(_center(trained), cfg=cfg.override(["codec.wire_dtype=uint2"]))
    masks = np.concatenate([data.val.masks, data.test.masks])
    assert _empty_slices_with_foreground(center, masks, "uint2") > 0
    guard_empty_masks(center)
    for dtype in WIRE_DTYPES:
        assert _empty_slices_with_foreground(center, masks, dtype) == 0, dtype


def test_guard_travels_with_the_codec_weights(trained):
    cfg, data, state = trained
    center = _center(trained)
    guard_empty_masks(center)
    loaded = MaskCodec(data.info.num_classes, cfg.codec)
    loaded.load_state_dict(center.mask_codec.state_dict())
    torch.testing.assert_close(loaded.logit_offset, center.mask_codec.logit_offset)
    old = {name: value for name, value in state.items() if name != "logit_offset"}
    loaded.load_state_dict(old)  # a codec saved before the guard existed loads with a zero offset
    assert not loaded.logit_offset.any()


def test_mask_codec_trains_and_validates_on_codes_rounded_to_the_wire_dtype(monkeypatch):
    cfg = ExperimentConfig().override([*SETTINGS, "train.epochs=1", "data.phantom_cases=6"])
    data = prepare(cfg.data)
    seen: dict[str, list[str]] = {"train": [], "validate": []}
    through_wire = codecs.through_wire

    def rounding(code, dtype):
        seen["train"].append(dtype)
        return wire_rounding(code, dtype)

    def wire(tokens, grid, kind, dtype):
        seen["validate"].append(dtype)
        return through_wire(tokens, grid, kind, dtype)

    monkeypatch.setattr(codecs, "wire_rounding", rounding)
    monkeypatch.setattr(codecs, "through_wire", wire)
    train_mask_codec(cfg, data.train, data.val, data.info.num_classes, CPU, None)
    assert seen["train"] and set(seen["train"]) == {"int8"}
    assert seen["validate"] and set(seen["validate"]) == {"int8"}


def test_task_mode_trains_the_image_encoder_on_codes_as_they_travel(monkeypatch):
    """The image code into the head, the mask code as target and the reply that is decoded: all three
    rounded to the wire dtype, with gradients reaching the encoder through the rounding."""
    cfg = ExperimentConfig().override([*SETTINGS, "codec.wire_dtype=uint2", "data.phantom_cases=6"])
    data = prepare(cfg.data)
    encoder = build_image_encoder(cfg.codec)
    codec = MaskCodec(data.info.num_classes, cfg.codec)
    objective = image_encoder.TaskObjective(cfg, encoder, codec, CPU, data.train.masks)
    seen: list[tuple[int, str]] = []

    def rounding(code, dtype):
        seen.append((code.shape[-1], dtype))
        return wire_rounding(code, dtype)

    monkeypatch.setattr(image_encoder, "wire_rounding", rounding)
    x, y = torch.from_numpy(data.train.images[:4]), torch.from_numpy(data.train.masks[:4])
    objective.loss(x, y).backward()
    image, mask = cfg.codec.image_channels, cfg.codec.mask_channels
    assert sorted(seen) == sorted([(image, "uint2"), (mask, "uint2"), (mask, "uint2")])
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters() if p.requires_grad)
    with torch.no_grad():
        predicted = objective._predict_code(x)
    thirds = predicted.numpy() * 3  # the 2-bit levels are -1, -1/3, 1/3 and 1
    assert np.allclose(thirds, np.round(thirds), atol=1e-5)
    assert set(np.unique(np.round(thirds)).tolist()) <= {-3.0, -1.0, 1.0, 3.0}


def test_report_gives_the_ceiling_per_class_and_wire_dtype_and_flags_absent_classes():
    truth = np.zeros((2, 8, 8), np.int64)
    truth[:, 2:6, 2:6] = 1  # "body" on both slices, "lesion" on none
    decoded = {"float32": truth, "int8": np.where(truth == 1, 1, 2)}  # int8 puts lesion everywhere else
    names = ["background", "body", "lesion"]
    by_dtype = {d: score_classes(segmentation_scores(p, truth, 3), names) for d, p in decoded.items()}
    guard = {"pixels_raised": 3, "largest_raise": 0.5, "val_ceiling_before": 0.5, "val_ceiling_after": 0.9}
    metrics = {
        "privacysf": {
            "wire_dtype": "int8",
            "mask_codec_ceiling_scores_by_wire_dtype": by_dtype,
            "mask_codec_empty_guard": guard,
        }
    }
    text = ceiling_section(metrics).text()
    assert "| class | slice Dice, float32 | slice Dice, int8 | foreground only, int8 |" in text
    assert "| body | 1.000 | 1.000 | 1.000 |" in text
    assert "| lesion (absent from test) | 1.000 | 0.000 | – |" in text
    assert "raised on 3 pixel(s)" in text and "0.500 before, 0.900 after" in text
