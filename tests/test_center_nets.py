"""The center's networks: a token's code depends on its neighbourhood, not on the rest of the slice."""

import json

import numpy as np
import pytest
import torch

from privacysf.center import image_encoder
from privacysf.center.codecs import MaskCodec, build_image_encoder, codec_signature
from privacysf.center.image_encoder import IMAGE_MODES, class_loss_weights
from privacysf.center.pipeline import IMAGE_ENCODER, MASK_CODEC
from privacysf.common.torchutil import load_checkpoint, save_checkpoint
from privacysf.config import CodecConfig, ExperimentConfig
from privacysf.data.prepare import prepare
from privacysf.errors import ConfigError
from privacysf.nets.conv import LEAKY_SLOPE, ConvEncoder, WrappedConv2d, wrap
from privacysf.nets.flips import FlipEncoder
from privacysf.nets.grid import GridUNetMapper
from privacysf.nets.inference import InplaceActivation
from privacysf.workflows.fit import reload_center

SIZE = 128
FAR = slice(96, 128)
"""Pixels far from the top-left quarter where the two slices differ (beyond the encoders' reach)."""


def _two_slices() -> tuple[torch.Tensor, torch.Tensor]:
    """Air everywhere but a small or a large bright square in the top-left quarter (a small head at
    the top of a scan against a large one in its middle)."""
    small, large = torch.zeros(2, 1, 1, SIZE, SIZE)
    small[..., 20:28, 20:28] = 1.0
    large[..., 4:60, 4:60] = 1.0
    return small, large


def _far_tokens(code: torch.Tensor, downsample: int) -> torch.Tensor:
    far = slice(FAR.start // downsample, FAR.stop // downsample)
    return code[..., far, far]


def test_codes_of_air_far_from_the_body_do_not_depend_on_the_body_with_the_default_norm():
    """Fails with ``codec.norm=instance``: per-slice statistics move every token of the slice."""
    for norm, same in (("batch", True), ("instance", False)):
        cfg = CodecConfig(norm=norm)
        torch.manual_seed(0)
        encoder = build_image_encoder(cfg).eval()
        torch.manual_seed(0)
        codec = MaskCodec(2, cfg).eval()
        small, large = _two_slices()
        with torch.no_grad():
            images = [_far_tokens(encoder(x), cfg.downsample) for x in (small, large)]
            masks = [_far_tokens(codec.encode(x[:, 0].long()), cfg.downsample) for x in (small, large)]
            decoded = [codec.decode(codec.encode(x[:, 0].long()))[..., FAR, FAR] for x in (small, large)]
        for a, b in (images, masks, decoded):
            assert torch.allclose(a, b, atol=1e-5) is same, norm
    assert CodecConfig().norm == "batch"


def _save_run(folder, cfg: ExperimentConfig, predates: tuple[str, ...] = ()) -> None:
    """A run folder of fresh center networks, as saved before the ``codec`` settings ``predates``
    existed (not in its config.json nor in its checkpoints' signatures)."""
    saved = cfg.to_dict()
    for name in predates:
        del saved["codec"][name]
    (folder / "config.json").write_text(json.dumps(saved))
    (folder / "data.json").write_text(json.dumps({"classes": ["background", "brain"]}))
    for path, part, net in (
        (MASK_CODEC, "mask-codec", MaskCodec(2, cfg.codec)),
        (IMAGE_ENCODER, "image-encoder", build_image_encoder(cfg.codec)),
    ):
        signature = codec_signature(cfg, 2, part)
        for name in predates:
            signature.pop(name)
        save_checkpoint(folder / path, {"signature": signature, "model": net.state_dict()})


def test_a_run_folder_saved_before_the_norm_setting_reloads_with_instance_norm(tmp_path):
    """Fails without the migration in ``reload_center``: its checkpoints' signature would not match."""
    _save_run(tmp_path, ExperimentConfig().override(["codec.norm=instance", "codec.width=8"]), ("norm",))
    loaded, center = reload_center(tmp_path, "cpu")
    assert loaded.codec.norm == "instance"
    assert any(isinstance(m, torch.nn.InstanceNorm2d) for m in center.mask_codec.modules())


@pytest.mark.parametrize("width", [16, 32])
def test_a_run_folder_saved_before_the_mask_decoder_width_reloads_with_a_full_width_decoder(tmp_path, width):
    """Fails without the migration in ``ExperimentConfig.load_run``: the default narrower decoder would
    not match its checkpoint's signature (and could not take its weights)."""
    before = ExperimentConfig().override([f"codec.width={width}", f"codec.mask_decoder_width={width}"])
    _save_run(tmp_path, before, ("mask_decoder_width",))
    loaded, center = reload_center(tmp_path, "cpu")
    assert loaded.codec.top_decoder_width == width
    assert center.mask_codec.decoder.net[-1].in_channels == width
    assert CodecConfig(width=width).top_decoder_width == width // 2  # the migration is needed at all


def test_a_reloaded_batch_norm_run_segments_with_its_norms_folded(tmp_path):
    """Fails if ``reload_center`` (what ``privacysf segment`` and the service client load) stops
    serving the center: its networks would still hold their batch norms."""
    _save_run(tmp_path, ExperimentConfig().override(["codec.norm=batch", "codec.width=8"]))
    _, center = reload_center(tmp_path, "cpu")
    for net in (center.mask_codec, center.image_encoder):
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


@pytest.mark.parametrize("padding", ["zeros", "circular"])
def test_a_reloaded_run_serves_its_encoders_with_the_padding_it_trained_with(tmp_path, padding):
    """A run saved before ``codec.padding`` (zeros, no signature entry) reloads as it was; a circular
    run keeps circular padding through the served copy's batch-norm folding."""
    cfg = ExperimentConfig().override([f"codec.padding={padding}", "codec.width=8"])
    _save_run(tmp_path, cfg, ("padding",) if padding == "zeros" else ())
    loaded, center = reload_center(tmp_path, "cpu")
    assert loaded.codec.padding == padding
    for encoder in (center.image_encoder, center.mask_codec.encoder):
        modes = {
            m.padding_mode for m in encoder.modules() if isinstance(m, torch.nn.Conv2d) and any(m.padding)
        }
        assert modes == {padding}


@pytest.mark.parametrize("symmetry", ["none", "flips"])
def test_a_reloaded_run_serves_the_encoders_of_its_symmetry(tmp_path, symmetry):
    """A run saved before ``codec.symmetry`` (no config or signature entry) reloads with plain
    encoders; a flips run reloads flip-equivariant ones, whose weights a plain encoder cannot take."""
    cfg = ExperimentConfig().override([f"codec.symmetry={symmetry}", "codec.width=8"])
    _save_run(tmp_path, cfg, ("symmetry",) if symmetry == "none" else ())
    loaded, center = reload_center(tmp_path, "cpu")
    assert loaded.codec.symmetry == symmetry
    for encoder in (center.image_encoder, center.mask_codec.encoder):
        assert isinstance(encoder, FlipEncoder if symmetry == "flips" else ConvEncoder)


@pytest.mark.parametrize("upsampling", ["transposed", "subpixel"])
@pytest.mark.parametrize("downsample", [2, 4, 8])
def test_a_mask_decoder_runs_at_full_resolution_only_with_transposed_upsampling(upsampling, downsample):
    """Fails if ``subpixel`` keeps a layer at full resolution (the cost it exists to remove) or stops
    decoding full-resolution logits of every class, at any depth (at 2 its only stage is removed)."""
    codec = MaskCodec(3, CodecConfig(mask_upsampling=upsampling, downsample=downsample)).eval()
    sides: list[int] = []
    for m in codec.decoder.modules():
        if not list(m.children()) and not isinstance(m, torch.nn.PixelShuffle):
            m.register_forward_hook(lambda _m, _x, out: sides.append(out.shape[-1]))
    with torch.no_grad():
        logits = codec.decode(codec.encode(torch.zeros(2, SIZE, SIZE, dtype=torch.long)))
    assert logits.shape == (2, 3, SIZE, SIZE)
    assert max(sides) == (SIZE if upsampling == "transposed" else SIZE // 2)


@pytest.mark.parametrize("upsampling", ["transposed", "subpixel"])
def test_a_reloaded_run_decodes_masks_with_the_upsampling_it_trained_with(tmp_path, upsampling):
    """A run saved before ``codec.mask_upsampling`` (no config or signature entry) reloads with the
    transposed convolution it trained; a subpixel run reloads a pixel shuffle, and its checkpoint's
    signature refuses a decoder of the other kind."""
    cfg = ExperimentConfig().override([f"codec.mask_upsampling={upsampling}", "codec.width=8"])
    _save_run(tmp_path, cfg, ("mask_upsampling",) if upsampling == "transposed" else ())
    loaded, center = reload_center(tmp_path, "cpu")
    assert loaded.codec.mask_upsampling == upsampling
    shuffles = [m for m in center.mask_codec.decoder.modules() if isinstance(m, torch.nn.PixelShuffle)]
    assert len(shuffles) == (upsampling == "subpixel")
    other = cfg.override(
        [f"codec.mask_upsampling={'transposed' if upsampling == 'subpixel' else 'subpixel'}"]
    )
    with pytest.raises(ConfigError, match="mask_upsampling: checkpoint"):
        load_checkpoint(tmp_path / MASK_CODEC, codec_signature(other, 2, "mask-codec"))


@pytest.mark.parametrize(("kernel", "stride"), [(3, 1), (3, 2), (5, 1)])
def test_a_wrapped_convolution_is_torchs_circular_one_in_the_inputs_layout(kernel, stride):
    """Values and gradients as torch's ``padding_mode="circular"``, and a channels-last input stays
    channels-last (torch's own circular padding returns a contiguous tensor, the slow layout there)."""
    torch.manual_seed(0)
    reference = torch.nn.Conv2d(3, 4, kernel, stride, kernel // 2, padding_mode="circular")
    wrapped = WrappedConv2d(torch.nn.Conv2d(3, 4, kernel, stride, kernel // 2))
    wrapped.load_state_dict(reference.state_dict())
    x = torch.rand(2, 3, 16, 12).contiguous(memory_format=torch.channels_last).requires_grad_()
    out, expected = wrapped(x), reference(x)
    torch.testing.assert_close(out, expected)
    assert wrap(x, kernel // 2, kernel // 2).is_contiguous(memory_format=torch.channels_last)
    grads = torch.autograd.grad(out.square().sum(), (x, wrapped.weight))
    expected_grads = torch.autograd.grad(expected.square().sum(), (x, reference.weight))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("activation", ["prelu", "relu", "leakyrelu"])
def test_a_reloaded_run_serves_its_networks_with_the_activation_it_trained_with(tmp_path, activation):
    """A run saved before ``codec.activation`` (PReLU, no config or signature entry) reloads with
    PReLU: fails if the default changes without a migration in ``ExperimentConfig.load_run`` (as
    ``codec.norm``'s has). The others keep no PReLU anywhere through the served copy."""
    cfg = ExperimentConfig().override([f"codec.activation={activation}", "codec.width=8"])
    _save_run(tmp_path, cfg, ("activation",) if activation == "prelu" else ())
    loaded, center = reload_center(tmp_path, "cpu")
    assert loaded.codec.activation == activation
    kinds = {torch.nn.PReLU: "prelu", torch.nn.ReLU: "relu", torch.nn.LeakyReLU: "leakyrelu"}

    def stands_for(m: torch.nn.Module) -> type:  # served copies compute their activations in place
        return m.replaces if isinstance(m, InplaceActivation) else type(m)

    for net in (center.image_encoder, center.mask_codec.encoder, center.mask_codec.decoder):
        assert {kinds[stands_for(m)] for m in net.modules() if stands_for(m) in kinds} == {activation}
        leaky = [m for m in net.modules() if stands_for(m) is torch.nn.LeakyReLU]
        assert {m.slope if isinstance(m, InplaceActivation) else m.negative_slope for m in leaky} <= {
            LEAKY_SLOPE
        }


def test_an_image_encoder_checkpoint_records_its_task_head_and_auto_follows_the_classes():
    """Resuming or reloading a ``linear``-head encoder as a ``mapper``-head one must be refused by the
    signature (the head's weights would not fit), while checkpoints from before ``codec.task_head``
    (no entry) still match a ``mapper`` head; ``auto`` is ``linear`` for one foreground class and
    ``mapper`` for more; the mask codec does not depend on the head."""
    heads = ("auto", "mapper", "narrow", "linear")
    cfgs = {h: ExperimentConfig().override([f"codec.task_head={h}"]) for h in heads}
    for classes in (2, 6):
        encoder = {h: json.dumps(codec_signature(cfg, classes, "image-encoder")) for h, cfg in cfgs.items()}
        assert len({encoder[h] for h in ("mapper", "narrow", "linear")}) == 3
        assert encoder["auto"] == encoder["linear" if classes == 2 else "mapper"]
        assert codec_signature(cfgs["mapper"], classes, "image-encoder")["task_head"] is None
        codecs = {json.dumps(codec_signature(cfg, classes, "mask-codec")) for cfg in cfgs.values()}
        assert len(codecs) == 1


def test_a_binary_run_folder_saved_before_the_task_head_setting_reloads_as_trained(tmp_path):
    """Fails without the migration in ``ExperimentConfig.load_run``: ``auto`` would make a binary
    run's head ``linear``, which its image encoder's checkpoint (no entry: ``mapper``) does not match."""
    _save_run(
        tmp_path, ExperimentConfig().override(["codec.task_head=mapper", "codec.width=8"]), ("task_head",)
    )
    loaded, _ = reload_center(tmp_path, "cpu")
    assert loaded.codec.task_head == "mapper"


@pytest.mark.parametrize(
    ("classes", "head"), [(2, torch.nn.Linear), (3, GridUNetMapper), (6, GridUNetMapper)]
)
def test_the_task_objective_trains_the_head_its_classes_choose(classes, head):
    """The head the image encoder trains with is the one its checkpoint's signature names: ``auto``
    resolved with the mask codec's classes, for ``task`` and ``private`` modes alike."""
    for mode in ("task", "private"):
        cfg = ExperimentConfig().override([f"codec.image_mode={mode}", "codec.width=8"])
        codec = MaskCodec(classes, cfg.codec)
        masks = np.arange(classes).repeat(2).reshape(1, 1, -1)  # every class present
        objective = IMAGE_MODES[mode](cfg, build_image_encoder(cfg.codec), codec, torch.device("cpu"), masks)
        assert isinstance(objective.head, head)
        named = codec_signature(cfg, classes, "image-encoder")["task_head"]
        assert named == ("linear" if head is torch.nn.Linear else None)


def test_an_autoencoder_checkpoint_names_no_task_head():
    cfg = ExperimentConfig().override(["codec.image_mode=autoencoder"])
    assert codec_signature(cfg, 2, "image-encoder")["task_head"] is None
    assert codec_signature(cfg.override(["codec.image_mode=task"]), 2, "image-parts")["task_head"] == "linear"


def test_balanced_loss_weights_are_one_over_the_root_of_each_share_with_mean_one():
    masks = np.zeros((1, 10, 10), np.int64)
    masks[0, :2] = 1  # 20 %
    masks[0, 2, :5] = 2  # 5 %
    weights = class_loss_weights(masks, 4).numpy()  # class 3 absent: the rarest one's weight
    expected = np.array([0.75, 0.20, 0.05, 0.05]) ** -0.5
    np.testing.assert_allclose(weights, expected / expected.mean(), rtol=1e-6)
    assert weights.mean() == pytest.approx(1.0)
    assert class_loss_weights(np.zeros((1, 4, 4), np.int64), 3).tolist() == [1.0, 1.0, 1.0]
    assert class_loss_weights(np.zeros((0, 4, 4), np.int64), 3).tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("mode", ["task", "private"])
def test_a_balanced_task_loss_weighs_a_missed_small_class_more(mode):
    """The same prediction, which misses the small class, costs more once classes are weighted; the
    checkpoint names the setting, so an encoder trained without it is not resumed with it."""
    masks = np.zeros((2, 32, 32), np.int64)
    masks[:, 4:28, 4:28] = 1
    masks[:, 10:14, 10:14] = 2
    cfgs = {
        w: ExperimentConfig().override([f"codec.image_mode={mode}", f"codec.task_class_weights={w}"])
        for w in ("none", "balanced")
    }
    logits = torch.zeros(2, 3, 32, 32)
    logits[:, 1, 4:28, 4:28] = 5.0  # body everywhere it and the lesion are, no lesion
    labels = torch.from_numpy(masks)[:, None]
    losses = {}
    for weights, cfg in cfgs.items():
        codec = MaskCodec(3, cfg.codec)
        objective = IMAGE_MODES[mode](cfg, build_image_encoder(cfg.codec), codec, torch.device("cpu"), masks)
        losses[weights] = float(objective.seg_loss(logits, labels))
    assert losses["balanced"] > 1.2 * losses["none"]
    signatures = {
        w: codec_signature(cfg, 3, "image-encoder")["task_class_weights"] for w, cfg in cfgs.items()
    }
    assert signatures == {"none": None, "balanced": "balanced"}
    assert codec_signature(cfgs["balanced"], 3, "mask-codec")["task_class_weights"] is None


def test_training_a_balanced_encoder_weighs_the_classes_of_its_training_masks(monkeypatch):
    """Fails if the training masks do not reach the objective (its weights would be unweighted)."""
    cfg = ExperimentConfig().override(
        [
            "data.dataset=phantom",
            "data.size=32",
            "data.phantom_cases=6",
            "train.epochs=1",
            "train.progress=false",
            "codec.width=8",
            "codec.task_class_weights=balanced",
        ]
    )
    data = prepare(cfg.data)
    seen = []

    def recorded(masks, num_classes):
        seen.append(masks)
        return class_loss_weights(masks, num_classes)

    monkeypatch.setattr(image_encoder, "class_loss_weights", recorded)
    codec = MaskCodec(data.info.num_classes, cfg.codec)
    image_encoder.train_image_encoder(cfg, data.train, data.val, codec, torch.device("cpu"), None)
    assert len(seen) == 1 and seen[0] is data.train.masks


@pytest.mark.parametrize("weighting", ["none", "balanced"])
def test_the_loss_weighs_classes_as_the_setting_and_the_checkpoint_say(weighting):
    """Unweighted by default; the objective's loss and the checkpoint's signature follow the setting,
    for ``task`` and ``private`` alike, and an autoencoder's checkpoint names none."""
    assert ExperimentConfig().codec.task_class_weights == "none"
    masks = np.arange(3).repeat(3).reshape(1, 1, -1)
    for mode in ("task", "private"):
        cfg = ExperimentConfig().override(
            [f"codec.image_mode={mode}", f"codec.task_class_weights={weighting}"]
        )
        codec = MaskCodec(3, cfg.codec)
        objective = IMAGE_MODES[mode](cfg, build_image_encoder(cfg.codec), codec, torch.device("cpu"), masks)
        assert (objective.seg_loss.cross_entropy.weight is None) == (weighting == "none")
        named = codec_signature(cfg, 3, "image-encoder")["task_class_weights"]
        assert named == (None if weighting == "none" else weighting)
    autoencoder = ExperimentConfig().override(
        ["codec.image_mode=autoencoder", f"codec.task_class_weights={weighting}"]
    )
    assert codec_signature(autoencoder, 3, "image-encoder")["task_class_weights"] is None
