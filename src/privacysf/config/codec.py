"""The center's networks (``codec``): the mask codec and the image encoder, which stay in the hospital."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, Field, ValidationInfo, field_validator

from privacysf.config.model import ConfigModel, Probability


def _power_of_two(value: int) -> int:
    if value < 2 or value & (value - 1):
        raise ValueError("must be 2, 4, 8, … (each halving of the image side is one stride-2 stage)")
    return value


ImageMode = Literal["autoencoder", "task", "private"]
IMAGE_MODES = get_args(ImageMode)
"""Image-encoder training modes; each has an objective in ``privacysf.center.image_encoder.IMAGE_MODES``."""
WireDtype = Literal["float32", "float16", "int8", "uint4", "uint2"]
WIRE_DTYPE_NAMES = get_args(WireDtype)
"""Value types of codes on the wire, finest first (``privacysf.exchange.wire.WIRE_DTYPES`` says how
each stores a code number)."""
WireCompression = Literal["none", "deflate"]
WIRE_COMPRESSION_NAMES = get_args(WireCompression)
"""Lossless codings of a message's values on the wire (``codec.wire_compression``)."""
CodecNorm = Literal["batch", "instance"]
Padding = Literal["zeros", "circular"]
"""Border rules of convolutions: ``circular`` wraps around, so whole-token cyclic shifts commute."""
CodecSymmetry = Literal["none", "flips"]
"""What the center's encoders are built to commute with (``codec.symmetry``)."""
TaskHeadNetwork = Literal["mapper", "narrow", "linear"]
"""The networks a ``task``-mode head can be (:func:`privacysf.nets.mappers.build_task_head`)."""
TaskHead = Literal["auto", TaskHeadNetwork]
"""``codec.task_head``: a head network, or ``auto`` to choose one by the number of classes."""
TaskClassWeights = Literal["none", "balanced"]
"""``codec.task_class_weights``: how the classes weigh in the loss a ``task`` encoder trains with."""
ViewAugmentation = Literal["flips", "affine"]
"""How the center draws the extra views it uploads (``codec.view_augmentation``)."""
FLIPS = 4
"""The flips of a 2-D map (none, left-right, up-down, both): a flip-equivariant layer's channels come
in fields of this many, one per flip."""
MaskUpsampling = Literal["transposed", "subpixel"]
"""How the mask decoder reaches full resolution from half (``codec.mask_upsampling``)."""
CodecActivation = Literal["prelu", "relu", "leakyrelu"]
"""Nonlinearities of the center's convolutional networks (``codec.activation``): MONAI's PReLU, with one
learned slope per block, ReLU, or a leaky ReLU whose slope stays at PReLU's starting 0.25."""


class CodecConfig(ConfigModel):
    """Center-side networks: the mask codec and the image encoder (both stay in the hospital)."""

    downsample: Annotated[int, AfterValidator(_power_of_two)] = 4
    """Image side / token-grid side: 128² images give a 32×32 grid of 1024 tokens."""
    image_channels: int = Field(4, ge=1)
    """Values per image-code token."""
    mask_channels: int = Field(4, ge=1)
    """Values per mask-code token."""
    width: int = Field(16, ge=1)
    """Feature width of the first encoder stage (doubles at each downsampling). 16 costs a third of 32
    per training step and a quarter of its arithmetic; over eleven fits made at both widths the 3-D
    Dice moved by +0.000 on average (``docs/method.md``). Raise it where the mask codec's ceiling
    (``tools/codec_ceiling.py``) limits Dice."""
    mask_decoder_width: int | None = Field(None, ge=1)
    """Width of the mask decoder's last stage, the one at full image resolution (the stages before it
    keep ``width``'s rule); unset: half of ``width`` but not below 8 (:attr:`top_decoder_width`). That
    stage is most of the decoder's arithmetic, and the decoder runs in every mask-codec and
    image-encoder training step and in every query's decode; before this setting it was ``width``.
    ``mask_upsampling=subpixel`` has no such stage and refuses the setting.
    docs/results.md ("A narrower mask decoder") has what 8 against 16, at ``width`` 16, saved and
    cost. The floor: at ``width`` 8, a 4-wide stage left a small instance-norm test codec's empty
    masks decoding foreground over more than a quarter of the image (``tests/test_codec_wire.py``)."""
    mask_upsampling: MaskUpsampling = "transposed"
    """How the mask decoder's last stage reaches full resolution. ``transposed``: a transposed
    convolution to full resolution, a residual unit there (``mask_decoder_width`` wide) and a 1×1
    convolution to the class logits. ``subpixel``: a 1×1 convolution at half resolution to four logits
    per class, one for each pixel of its 2×2 block (``torch.nn.PixelShuffle``), so no layer runs at
    full resolution. That stage was about a third of a 128² mask-codec training step on the CPU, and a
    256² query's decode took 7.3 ms instead of 9.5. ``subpixel`` was measured and not adopted: over
    nine pairs of the published bench it changed 3-D Dice by −0.033 on average, by −0.011 on
    icbm152-tissue, −0.090 on colin27-brain and +0.003 on dsb-nuclei (means of three seeds), and the
    codec's training seconds did not visibly fall (docs/results.md, "A sub-pixel mask decoder")."""

    @field_validator("mask_upsampling")
    @classmethod
    def _subpixel_has_no_top_stage(cls, upsampling: str, info: ValidationInfo) -> str:
        """``mask_decoder_width`` is the width of the stage that ``subpixel`` removes."""
        if upsampling == "subpixel" and info.data.get("mask_decoder_width") is not None:
            raise ValueError(
                "codec.mask_decoder_width sets the full-resolution stage that codec.mask_upsampling="
                "subpixel does not have; leave mask_decoder_width unset or use mask_upsampling=transposed"
            )
        return upsampling

    norm: CodecNorm = "batch"
    """Normalisation inside both center networks. ``batch`` (statistics of the training slices, fixed
    once trained) keeps a token's features independent of the rest of its slice; ``instance`` (per
    slice, MONAI's U-Net default; every run before this setting) made codes of slices unlike the
    training ones decode foreground in the air: on Colin27 seed 0, trained on middle slices and tested
    on the top ones, the mask codec's 3-D test ceiling was 0.81 with ``instance`` and 0.99 with
    ``batch``, and Privacy-SF's Dice 0.24 and 0.88 (``docs/results.md``)."""
    activation: CodecActivation = "prelu"
    """Nonlinearity of every block of the center's networks (mask codec, image encoder, and the
    ``autoencoder`` and ``private`` modes' decoders). ``prelu`` is MONAI's default. ``relu`` and
    ``leakyrelu`` (slope fixed at 0.25) skip the reduction PReLU's backward pass makes for its slope
    (a 128² mask-codec training step took 0.81 of the time with ReLU; the leaky ReLU's backward pass
    costs what ReLU's does) but were measured and not adopted: over nine paired fits ReLU left the CT
    mask codec's ceiling at 0.57-0.75 (−0.274 3-D Dice on CT, −0.087 over the nine); the leaky ReLU
    changed Dice by −0.004 but CT's by −0.012, the fits' training time did not visibly fall, and a
    256² query took 0.94 of the time (docs/results.md, "Cheaper center activations"). A checkpoint
    records it unless it is ``prelu``, so run folders saved before the setting load as they were."""
    padding: Padding = "zeros"
    """Border rule of both center encoders' convolutions. ``circular`` wraps them around the image, so
    the code of an image shifted cyclically by whole tokens is exactly the shifted code, and the
    server's ``augment.shift`` trains on true pairs (its error is 8-30 % with ``zeros``). The decoders
    keep zeros: the server never transforms what they read back. docs/results.md ("Circular
    padding") has what it changes."""
    symmetry: CodecSymmetry = "none"
    """``flips`` builds both center encoders from group convolutions over the four flips of a map,
    with a flip-invariant head (:mod:`privacysf.nets.flips`), so the code of an image flipped
    left-right, up-down or both is exactly the code grid flipped the same way, and the server's
    ``augment.flip`` and ``augment.reverse`` train on true pairs (flip errors of 33-67 % and half-turn
    errors of 37-80 % with ``none``). The decoders are unchanged. Needs ``width`` divisible by 4;
    docs/results.md ("Flip-equivariant centers") has what it changes."""

    @field_validator("symmetry")
    @classmethod
    def _fields_fill_the_width(cls, symmetry: str, info: ValidationInfo) -> str:
        """A flip-equivariant layer's channels come in fields of :data:`FLIPS`, one per flip."""
        width = info.data.get("width")
        if symmetry == "flips" and width is not None and width % FLIPS:
            raise ValueError(f"codec.symmetry=flips needs codec.width divisible by {FLIPS}, got {width}")
        return symmetry

    code_noise: float = Field(0.1, ge=0)
    """Gaussian noise on mask codes while the codec trains, so its decoder tolerates mapping errors."""
    mask_steps: int = Field(12, ge=0)
    """Optimiser steps per epoch of the mask codec, each on ``train.batch_size`` training masks drawn
    with replacement and reshaped (flips, right-angle turns, a random affine; with ``train.augment``).
    The codec sees masks only, so it can learn from shapes no image has to match; and a set of 10
    slices would give it 2 steps an epoch (int8 test ceiling on totalseg-mr, 30 epochs: 0.529 with
    one pass per epoch, 0.969 with 40 such steps). 0: one pass over the training masks per epoch.
    12 halves the codec's training time against the 24 of earlier versions; its ceiling drops by
    about 0.01 and Privacy-SF's Dice does not (docs/results.md, "Lighter training")."""
    mask_epochs: int | None = Field(None, ge=1)
    """Epochs of the mask codec, at most ``train.epochs`` (unset: ``train.epochs``). Its learning rate
    follows its own cosine schedule over them, so fewer epochs anneal sooner rather than stop
    mid-schedule. 20 took 0.69 of the codec's time over nine fits without moving the mean Dice, but
    cost the CT codec 0.03-0.07 of its ceiling (docs/results.md, "Fewer mask-codec epochs"). A
    federated round trains ``federation.local_epochs`` (set as ``train.epochs``), so there it only
    lowers a larger number."""
    balance_classes: bool = True
    """Draw the mask codec's label maps so that each class, and "no foreground", is drawn about
    equally often (with ``mask_steps``), so a class on few slices is not left out of the code."""
    paste_shapes: Probability = 0.5
    """Share of the mask codec's drawn label maps (with ``mask_steps`` and ``train.augment``) given 1-3
    random ellipses of random classes, a few pixels and up: shapes the training slices lack."""
    image_mode: ImageMode = "task"
    """How the image encoder is trained: ``autoencoder`` (image decoder), ``task`` (mask-code head) or
    ``private`` (``task`` plus an in-the-loop attacker decoder whose reconstruction it must spoil)."""
    task_head: TaskHead = "auto"
    """The head that predicts mask codes from image codes while a ``task`` or ``private`` encoder
    trains (it stays in the center): ``mapper``, a network of the server mapper's kind and widths;
    ``narrow``, the same at a quarter of each width, rounded down to a multiple of 8 and at least 8;
    ``linear``, one linear map per token, so the encoder alone must make its code predict the mask
    code; ``auto`` (current), ``linear`` for one foreground class and ``mapper`` for more
    (:meth:`task_head_for`). On binary sets the linear head changed 3-D Dice by +0.017 [−0.010,
    +0.043] over nine pairs (largest where the mapper-shaped head's run was weak) but −0.024 [−0.074,
    +0.026] over six seeds of the cross-subject brain-3subjects, and cut the training time to 0.78;
    on CT's five foreground classes it lost 0.138 and ``narrow`` 0.053 (docs/results.md, "Lighter
    task heads")."""
    task_class_weights: TaskClassWeights = "none"
    """Class weights of the Dice-CE loss a ``task`` or ``private`` encoder trains with: ``none``
    (current), every class alike; ``balanced``, each class weighted by one over the square root of
    its share of the training pixels, scaled to mean 1
    (:func:`privacysf.center.image_encoder.class_loss_weights`). Unweighted, a phantom's lesions
    (a few per cent of the pixels) were left out for the first epochs of some encoders. ``balanced``
    shortened that and changed 3-D Dice by +0.001 [−0.010, +0.012] over twelve pairs on four sets
    (+0.000 on the nine multi-class ones), but on the binary brain-3subjects it raised the strongest
    image inversion from SSIM 0.728 to 0.759 and re-identification from 0.44 to 0.73, against an
    unweighted run at the same commit, so it is not the default (docs/results.md, "Class-balanced
    task loss"). Try it where an encoder leaves a small class out."""
    private_weight: float = Field(1.0, ge=0)
    """λ of ``private`` mode: weight of the adversarial reconstruction penalty (more privacy, less Dice)."""
    equivariance: float = Field(0.0, ge=0)
    """Weight of a penalty that makes both center encoders commute with the server's code transforms
    (flips, turns, whole-token shifts, splices, mixes; ``privacysf.center.equivariance``): the squared
    error of one transform drawn per step over the squared distance between the batch's slices'
    codes. 0 (off) keeps the encoders as they were; the
    measured errors and Dice are in docs/results.md ("Server-side code augmentation")."""
    upload_views: int = Field(1, ge=1)
    """Views of each training slice whose code pairs the center uploads: the slice and
    ``upload_views - 1`` augmented copies (``view_augmentation``;
    :func:`privacysf.data.loader.augmented_views`), drawn once. Each is encoded by the center, so
    every extra pair is a true pair, under any key. Validation pairs stay one per slice. The upload
    and the mapper's epochs grow with it. 1 (off): at a quarter of the data, beside the default shift,
    4 flipped views changed 3-D Dice by +0.006 on dsb-nuclei, −0.015 on icbm152-tissue and −0.082 on
    totalseg-ct, and 4 ``affine`` views by −0.000, −0.005 and −0.073; only the nuclei's +0.006 has
    its interval above 0 (docs/results.md, "Augmented views from the center"). DP training refuses
    it."""
    view_augmentation: ViewAugmentation = "flips"
    """What makes the copies of ``upload_views``: ``flips``, the raw U-Net's own image-space
    augmentation (flips, intensity jitter), for images without an orientation such as nuclei;
    ``affine``, a small rotation, scaling and shift with the same jitter and no flips, so a copy keeps
    the anatomy's orientation."""
    wire_dtype: WireDtype = "uint4"
    """dtype of codes on the wire: ``float32``, ``float16``, or one of 255, 16 or 4 evenly spaced values
    in [-1, 1] (the codes' range): ``int8``, ``uint4`` and ``uint2``, the last two packed two and four
    to a byte. The mask codec, and in ``task`` and ``private`` modes the image encoder, train through
    this rounding (an ``autoencoder`` encoder does not). ``uint4`` halves int8's bytes at no
    measured cost in Dice; ``uint2`` halves them again and cost 0.011 on average, up to 0.04 on
    icbm152-tissue (docs/results.md, "Packed 4- and 2-bit codes")."""
    wire_compression: WireCompression = "deflate"
    """Lossless coding of the values a center sends: ``deflate`` (zlib) wherever it makes a message
    smaller, which the server's reply then copies, or ``none``. It changes no value, so no Dice: the
    codes' background tokens repeat, and the median 256² query of a trained codec took 12-46 % of its
    plain ``uint4`` bytes (docs/results.md, "Deflated codes"). A message's length then depends on its
    image, which an observer of the encrypted connection sees and the server learns nothing new from.
    A server before wire format version 2 refuses deflated codes; the service client then resends
    them plain."""

    def task_head_for(self, num_classes: int) -> TaskHeadNetwork:
        """The task head a center with ``num_classes`` label classes (background included) trains:
        ``task_head``, with ``auto`` resolved by the classes."""
        if self.task_head == "auto":
            return "linear" if num_classes <= 2 else "mapper"
        return self.task_head

    @property
    def top_decoder_width(self) -> int:
        """The mask decoder's full-resolution width: ``mask_decoder_width``, or half of ``width`` but
        not below 8 (nor above ``width``)."""
        return self.mask_decoder_width or min(self.width, max(self.width // 2, 8))
