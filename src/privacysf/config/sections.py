"""The sections every run uses: data, training, networks, the key and the server's augmentations.

Each option set is a ``Literal`` (the one list of allowed names; the tuples exported beside some are
read from it) and each rule sits in the section it concerns. Rules across sections are in
:mod:`privacysf.config.experiment`; the rule between a token permutation and the server's mapper and
augmentations is :func:`permutation_conflicts`, used by the config and the server alike.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, Field, ValidationInfo, field_validator

from privacysf.config.model import ConfigModel


def _odd(value: int) -> int:
    if value % 2 == 0:
        raise ValueError("must be odd (a centred kernel)")
    return value


def _device(name: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise ValueError("must be auto, cpu, cuda or cuda:N")
    return name


def _power_of_two(value: int) -> int:
    if value < 2 or value & (value - 1):
        raise ValueError("must be 2, 4, 8, … (each halving of the image side is one stride-2 stage)")
    return value


Probability = Annotated[float, Field(ge=0, le=1)]
ImageMode = Literal["autoencoder", "task", "private"]
IMAGE_MODES = get_args(ImageMode)
"""Image-encoder training modes; each has an objective in ``privacysf.center.image_encoder.IMAGE_MODES``."""
WireDtype = Literal["float32", "float16", "int8", "uint4", "uint2"]
WIRE_DTYPE_NAMES = get_args(WireDtype)
"""Value types of codes on the wire, finest first (``privacysf.exchange.wire.WIRE_DTYPES`` says how
each stores a code number)."""
CodecNorm = Literal["batch", "instance"]
Padding = Literal["zeros", "circular"]
"""Border rules of convolutions: ``circular`` wraps around, so whole-token cyclic shifts commute."""
CodecSymmetry = Literal["none", "flips"]
"""What the center's encoders are built to commute with (``codec.symmetry``)."""
TaskHeadNetwork = Literal["mapper", "narrow", "linear"]
"""The networks a ``task``-mode head can be (:func:`privacysf.nets.mappers.build_task_head`)."""
TaskHead = Literal["auto", TaskHeadNetwork]
"""``codec.task_head``: a head network, or ``auto`` to choose one by the number of classes."""
ViewAugmentation = Literal["flips", "affine"]
"""How the center draws the extra views it uploads (``codec.view_augmentation``)."""
FLIPS = 4
"""The flips of a 2-D map (none, left-right, up-down, both): a flip-equivariant layer's channels come
in fields of this many, one per flip."""
Activation = Literal["gelu", "relu"]
"""Nonlinearities of the server's convolutional mappers: exact GELU, or ReLU, which costs a few
comparisons where GELU evaluates an error function per value."""
CodecActivation = Literal["prelu", "relu", "leakyrelu"]
"""Nonlinearities of the center's convolutional networks (``codec.activation``): MONAI's PReLU, with one
learned slope per block, ReLU, or a leaky ReLU whose slope stays at PReLU's starting 0.25."""
MapperRuntime = Literal["torch", "onnxruntime"]
"""What answers queries with a trained mapper: torch, or its ONNX Runtime export (``mapper.runtime``)."""
MAPPER_RUNTIMES = get_args(MapperRuntime)
ONNX_KINDS = ("unet", "cnn")
"""The mapper kinds ONNX Runtime is tested to answer for (without a center embedding)."""
ORDER_AUGMENTATIONS = ("reverse", "flip", "shift", "splice", "cutmix")
"""Augmentations that rely on knowing which token sits where: meaningless under a secret permutation."""
AUGMENTATIONS = (*ORDER_AUGMENTATIONS, "mixup", "token_dropout", "span_mask", "noise")
"""The server-side code augmentations, each a probability field of :class:`AugmentConfig`."""
TRANSFORMER_LR = 5e-4
"""Default learning rate of the transformer mapper: at the shared 3e-3 its training diverged on
icbm152-tissue task-mode keyed codes (Dice 0.043); at 5e-4 the same setting reached Dice 0.762
(docs/threat-model.md, attack runs 3 and 4)."""


class DataConfig(ConfigModel):
    """Which data to load and how to turn it into 2-D training slices."""

    dataset: str = "phantom"
    """A built-in dataset name (``privacysf data list``) or a folder in MSD/nnU-Net or plain layout."""
    layout: Literal["auto", "msd", "plain"] = "auto"
    """Folder layout: ``auto``, ``msd`` (imagesTr/labelsTr/dataset.json) or ``plain`` (images/masks)."""
    axis: int = Field(2, ge=0, le=2)
    """Array axis along which 3-D volumes are sliced (arrays are in x, y, z order)."""
    size: int = Field(128, gt=0)
    """Working size: every slice is resized to ``size``×``size`` (masks by nearest neighbour)."""
    normalization: Literal["auto", "mr", "ct", "minmax"] = "auto"
    """``auto`` (from the dataset's modality), ``mr`` (percentile clip + z-score), ``ct`` (HU window)
    or ``minmax``."""
    ct_window: tuple[float, float] = (-160.0, 240.0)
    """Hounsfield units kept by ``ct`` normalisation (clipped, scaled to [0, 1]): window 400, level 40."""
    num_classes: int | None = Field(None, ge=2)
    """Number of classes including background; read from dataset.json or the registry when unset."""
    drop_empty: bool = True
    """Drop slices whose mask shows no foreground, inside each split once it is made.

    Slabs (fewer than 3 cases) are cut over all slices first: cut over the few labelled slices of a
    small lesion, their guard gaps would swallow whole splits. Dropping in validation and test too
    makes their 2-D scores foreground-only: under the empty-mask rule an empty slice scores Dice 1
    when nothing is predicted and 0 for any predicted pixel, so a split of mostly empty slices would
    score a network that finds nothing highly, and early stopping on it would reward predicting
    nothing. The price is that false positives on empty slices go unscored; ``false`` keeps every
    slice in every split (scores then mix both). A split whose slices show no foreground at all keeps
    its empty slices rather than vanish, and a ``DataWarning`` says so."""
    val_fraction: float = 0.15
    """Share of the cases held out for validation: every network early-stops on it, so never 0."""
    test_fraction: float = 0.2
    """Share of the cases held out for the test scores, so never 0."""
    seed: int = Field(0, ge=0)
    """Seed of the split. A case split is a function of (case ids, fractions, seed) only; a slab split
    (fewer than 3 cases) also of which slices show which class, since its slabs are placed so that
    every split holds every class the data allows."""
    train_fraction: float = Field(1.0, gt=0, le=1)
    """Share of the training slices kept, drawn with ``seed`` after the split (validation and test
    untouched): for learning curves and for measuring how cost grows with the dataset's size."""
    phantom_cases: int = Field(60, ge=3)
    """Number of cases the synthetic ``phantom`` dataset generates (at least one per split)."""

    @field_validator("ct_window")
    @classmethod
    def _window_is_an_interval(cls, window: tuple[float, float]) -> tuple[float, float]:
        if window[0] >= window[1]:
            raise ValueError("must be [low, high] with low < high")
        return window

    @field_validator("val_fraction", "test_fraction")
    @classmethod
    def _split_is_not_empty(cls, fraction: float, info: ValidationInfo) -> float:
        if not 0 < fraction < 1:
            raise ValueError(
                "must lie in (0, 1), 0 excluded: every network early-stops on the validation split "
                "and is scored on the test split, so neither may be empty"
            )
        if info.field_name == "test_fraction" and fraction + info.data.get("val_fraction", 0) >= 1:
            raise ValueError("plus data.val_fraction must stay below 1, leaving cases to train on")
        return fraction


class TrainConfig(ConfigModel):
    """Optimisation settings shared by every trained network of a run."""

    epochs: int = Field(30, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(3e-3, gt=0)
    min_steps: int = Field(12, ge=1)
    """Fewest optimiser steps in an epoch of the image encoder, the server mapper and the raw U-Net: a
    set with fewer than ``min_steps`` batches is passed over several times an epoch, so early stopping
    (``patience`` epochs) never ends a few-slice run after a handful of steps (16 slices, batch 8:
    2 steps an epoch otherwise). Sets of ``min_steps × batch_size`` slices or more keep one pass."""
    patience: int = Field(10, ge=1)
    """Early stopping: epochs without a better validation score before stopping, counted once some
    epoch has beaten the first (a run stuck at its first score, e.g. 0 on a rare class, goes on). The
    mask codec is never stopped early: it trains its whole schedule (``codec.mask_epochs``)."""
    augment: bool = True
    """Random flips and intensity jitter of raw images (only ever on the center / raw baseline)."""
    device: Annotated[str, AfterValidator(_device)] = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda`` (``cuda:N`` for one of several GPUs)."""
    seed: int = Field(0, ge=0)
    threads: int | None = Field(None, ge=1)
    """CPU threads for torch; ``None`` keeps torch's default."""
    progress: bool = True
    """Per-epoch progress bars; each trained network's one-line summary prints either way."""


class UNetConfig(ConfigModel):
    """The raw-image MONAI U-Net, the privacy-agnostic upper bound."""

    channels: tuple[Annotated[int, Field(ge=1)], ...] = Field((16, 32, 64, 128), min_length=2)
    strides: tuple[Annotated[int, Field(ge=1)], ...] = (2, 2, 2)
    """One stride per step down, so one fewer than ``channels``."""
    num_res_units: int = Field(2, ge=0)

    @field_validator("strides")
    @classmethod
    def _one_stride_per_step(cls, strides: tuple[int, ...], info: ValidationInfo) -> tuple[int, ...]:
        channels = info.data.get("channels")
        if channels is not None and len(strides) != len(channels) - 1:
            raise ValueError(f"must hold one stride fewer than unet.channels ({len(channels)} values)")
        return strides


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
    docs/results.md ("A narrower mask decoder") has what 8 against 16, at ``width`` 16, saved and
    cost. The floor: at ``width`` 8, a 4-wide stage left a small instance-norm test codec's empty
    masks decoding foreground over more than a quarter of the image (``tests/test_codec_wire.py``)."""
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


class KeyConfig(ConfigModel):
    """The center's secret keyed transform of its codes (the key itself never leaves the center)."""

    enabled: bool = False
    mix_channels: bool = True
    """Multiply every token by a secret orthogonal matrix (separately for image and mask codes)."""
    permute_tokens: bool = False
    """Shuffle token positions with a secret permutation; needs an order-blind mapper (transformer)."""
    per_query_shift: bool = False
    """Roll every code that leaves the center by a fresh random shift of whole tokens (a training
    pair's image and mask code by the same one; a query's reply rolled back), drawn from the operating
    system's CSPRNG and never kept, so no two codes the server holds share an alignment. Works with
    or without ``enabled``; needs a mapper that commutes with such shifts (``mapper.kind=poly`` with
    ``mapper.padding=circular``). docs/threat-model.md says what it does and does not hide."""


class EncryptionConfig(ConfigModel):
    """Encrypted queries: the server maps CKKS ciphertexts of image codes it cannot read.

    The center keeps the CKKS secret key (``center/ckks_key.json``, owner-only) and sends the server
    public evaluation keys once; every query's image code then goes as ciphertexts, and the mask code
    comes back as ciphertexts only the center can decrypt. Needs ``mapper.kind=poly`` (a mapper made
    of convolutions and a square, which is what ciphertexts allow) and a power-of-two token grid.
    Training codes are still uploaded in plain form (docs/threat-model.md says what that leaves open).
    """

    enabled: bool = False


FORMER_MAPPER_DEFAULTS = {"activation": "gelu"}
"""Mapper settings whose default changed after they were introduced, with the value a saved config
or service job that does not name them was trained with."""


class MapperConfig(ConfigModel):
    """The server's mapping network over the token sequence.

    ``unet`` (the default) folds the sequence back into its token grid and runs a U-Net there: its
    cost is linear in the tokens and every token is within reach of every other. ``cnn`` is the
    residual dilated 1-D CNN over the sequence that came before it (about 5× the arithmetic at 128²,
    6× at 256²). Both rely on raster token order. ``transformer`` has learned position embeddings, so
    a fixed secret permutation of the tokens costs it nothing. ``poly`` (convolution, square,
    convolution over the token grid) is the one a server can evaluate on CKKS-encrypted codes
    (``encryption.enabled``); it also runs on plain codes.
    """

    kind: Literal["unet", "cnn", "transformer", "poly"] = "unet"
    width: int = Field(128, ge=8, multiple_of=8)
    """Channels per token of the cnn and the transformer; a multiple of 8 because the cnn normalises
    in groups of 8 (GroupNorm)."""
    cycles: int = Field(2, ge=1)
    """Repeats of the dilation cycle 1, 2, 4, …, grid width (the last reaches the token one row up)."""
    kernel: Annotated[int, Field(ge=1), AfterValidator(_odd)] = 3
    """Taps of each 1-D convolution of the cnn, side of both 2-D convolutions of poly; odd, so the
    window is centred on its token."""
    use_position: bool = True
    """Append each token's (row, column) on the grid, so the mapper knows where a token sits (cnn,
    unet)."""
    grid_channels: tuple[Annotated[int, Field(ge=8, le=512, multiple_of=8)], ...] = Field(
        (32, 64, 128), min_length=1, max_length=8
    )
    """Widths of the unet's levels (``kind=unet`` only): the full token grid first, then each halving
    of its side; halvings past the last entry keep its width, so each level costs at most a quarter of
    the one above. Multiples of 8 (GroupNorm in groups of 8). With ``(16, 32, 64, 128)`` a 256² query
    took 0.8 of the default's time (its map 0.4-0.6), within the raw U-Net's, but lost 0.011 of 3-D
    Dice over nine paired fits (docs/results.md, "A narrower grid mapper")."""
    activation: Activation = "relu"
    """Nonlinearity of the unet's and the cnn's blocks, and of the center's ``task`` head built like
    them. ``relu`` (current) matched exact GELU (the default before 2026-12-05) in Dice and took
    0.90-0.99 of its map time at 256², batch 1, and 0.92 at batch 32, over three runs (docs/results.md,
    "Lighter mappers and the mapper in ONNX Runtime"). A unet or cnn checkpoint records it unless it
    is ``gelu``; run folders and service jobs saved before the option existed load as ``gelu``
    (:data:`FORMER_MAPPER_DEFAULTS`)."""
    padding: Padding = "zeros"
    """How the poly mapper's convolutions pad the token grid (``kind=poly`` only): ``circular`` makes it
    commute exactly with whole-token cyclic shifts (``key.per_query_shift``)."""
    poly_width: int = Field(32, ge=1)
    """Channels between the poly mapper's two convolutions (``kind=poly`` only). Encrypted, its cost
    grows linearly with it: each 4 channels at 128² are one ciphertext to rotate ``4·kernel²`` times."""
    res_units: int = Field(1, ge=0, le=4)
    """Residual blocks per level of the unet on each way (``kind=unet`` only). 1 trains and answers
    at about 2.6 × the speed of the 2 of earlier versions, whose Dice it matches (docs/results.md,
    "Lighter training"); the center's ``task``-mode head is built the same way, so it gets lighter too."""
    depth: int = Field(2, ge=1)
    """Transformer layers (``kind=transformer`` only)."""
    heads: int = Field(4, ge=1)
    """Attention heads (``kind=transformer`` only); they split ``width`` evenly."""
    center_embedding: int = Field(0, ge=0)
    """Size of a learned per-center vector appended to every input token when one mapper serves
    several centers whose codecs differ (0 = off: the mapper cannot tell the code spaces apart)."""
    lr: float | None = Field(None, gt=0)
    """Learning rate of the mapper; unset: ``train.lr`` for the unet and cnn, :data:`TRANSFORMER_LR` for the
    transformer (attention needs a smaller step than the convolutions)."""
    dp_noise: float = Field(0.0, ge=0)
    """DP-SGD noise multiplier σ of the mapper's training (0 = off): each pair's gradient is clipped
    to ``dp_clip`` and Gaussian noise of std σ·``dp_clip`` joins each batch's sum (Opacus), batches
    are Poisson draws, and the (ε, ``dp_delta``) the training spent is reported. It bounds what the
    mapper's weights reveal of any one training pair (membership), not what the codes themselves show."""
    dp_clip: float = Field(1.0, gt=0)
    """Largest L2 norm of one pair's gradient under DP-SGD (``dp_noise`` > 0)."""
    dp_delta: float = Field(1e-5, gt=0, lt=1)
    """δ of the (ε, δ) guarantee reported under DP-SGD; keep it below 1 / the number of training pairs."""
    runtime: MapperRuntime = "torch"
    """What answers queries on the CPU once the mapper is trained or loaded: torch, or the same weights
    exported to ONNX Runtime (``kind`` unet or cnn, no center embedding). ONNX Runtime maps a 256²
    query's code faster at batch 1 but costs a few seconds of export per loaded model; training is
    torch's either way, and checkpoints are the same (docs/results.md, "Lighter mappers and the
    mapper in ONNX Runtime"). ``privacysf fit`` and in-process servers honour it; ``segment`` uses the
    run's saved value unless ``--mapper-runtime`` says otherwise, and the service uses its own
    ``ServiceConfig.mapper_runtime`` for every model it can export. Needs ``pip install
    'privacysf[onnx]'``."""

    @field_validator("runtime")
    @classmethod
    def _runtime_serves_this_mapper(cls, runtime: str, info: ValidationInfo) -> str:
        if runtime == "onnxruntime" and not exportable(
            info.data.get("kind"), info.data.get("center_embedding")
        ):
            raise ValueError(
                f"onnxruntime serves the {' and '.join(ONNX_KINDS)} mappers without a center embedding; "
                "use mapper.runtime=torch for this mapper"
            )
        return runtime

    @field_validator("heads")
    @classmethod
    def _heads_split_the_width(cls, heads: int, info: ValidationInfo) -> int:
        width = info.data.get("width")
        if width is not None and width % heads:
            raise ValueError(f"must divide mapper.width ({width}): each head takes an equal share")
        return heads

    @classmethod
    def saved(cls, values: dict) -> MapperConfig:
        """The mapper a stored settings dict describes, with :data:`FORMER_MAPPER_DEFAULTS` for the
        settings it predates (a service job or model recorded by an earlier version)."""
        return cls(**{**FORMER_MAPPER_DEFAULTS, **values})

    @property
    def exportable(self) -> bool:
        """Whether ``runtime=onnxruntime`` can answer for this mapper."""
        return exportable(self.kind, self.center_embedding)

    @property
    def order_blind(self) -> bool:
        """Whether this mapper can learn through a secret permutation of the token positions."""
        return self.kind == "transformer"

    def learning_rate(self, train_lr: float) -> float:
        if self.lr is not None:
            return self.lr
        return TRANSFORMER_LR if self.kind == "transformer" else train_lr


def exportable(kind: str | None, center_embedding: int | None) -> bool:
    """Whether ONNX Runtime answers for a mapper of ``kind`` (see :data:`ONNX_KINDS`)."""
    return kind in ONNX_KINDS and not center_embedding


class AugmentConfig(ConfigModel):
    """Server-side augmentation of code pairs; each value is the probability per batch (0 = off).

    Image and mask codes are always transformed together, except the input-only ``token_dropout``
    and ``noise``. A bare section switches everything off, as a service job (whose settings carry no
    augmentation) trains; a run's config starts from :meth:`recommended` instead.
    """

    reverse: Probability = 0.0
    """Reverse the token order of both codes (a 180° turn of the token grid)."""
    flip: Probability = 0.0
    """Flip the token grid of both codes left-right or up-down (true pairs with
    ``codec.symmetry=flips``, near-useless even then: docs/results.md, "Flip-equivariant centers")."""
    shift: Probability = 0.0
    """Cyclic shift of both token grids by up to ``max_shift`` whole tokens per axis."""
    max_shift: int = Field(2, ge=0)
    splice: Probability = 0.0
    """Cut a contiguous token segment from another pair and splice it into both codes."""
    cutmix: Probability = 0.0
    """Paste a box of tokens (1/4 to 1/2 of each side) from another pair into both codes."""
    mixup: Probability = 0.0
    """Convex mix of two pairs, both codes with the same weight ~ Beta(alpha, alpha)."""
    mixup_alpha: float = Field(0.4, gt=0)
    token_dropout: Probability = 0.0
    """Zero 10% of the input tokens (image code only)."""
    span_mask: Probability = 0.0
    """Zero one contiguous span of 10-25 % of the input tokens in scan order (image code only)."""
    noise: Probability = 0.0
    """Gaussian noise (std 0.05) on the input code only."""

    @classmethod
    def recommended(cls) -> AugmentConfig:
        """What a run augments unless told otherwise (``ExperimentConfig.augment``): the whole-token
        ``shift``, whose mean change in 3-D Dice was positive on every dataset of the three-seed
        studies with full training data, and +0.018 [0.006, 0.030] over nine pairs at today's
        defaults (docs/results.md, "The whole-token shift on by default"). Everything else stays off:
        flips and turns hurt, span masks hurt nuclei, and cutmix, splices and mixes added nothing
        measurable to the shift.
        A secret token permutation (``key.permute_tokens``) hides the order a shift needs, so such a
        run sets ``augment.shift=0``."""
        return cls(shift=0.5)

    def order_dependent(self) -> list[str]:
        """The switched-on augmentations that need to know which token sits where."""
        return [name for name in ORDER_AUGMENTATIONS if getattr(self, name) > 0]


def dp_conflicts(mapper: MapperConfig, augment: AugmentConfig, codec: CodecConfig) -> list[str]:
    """Why DP-SGD's accounting would not hold for the mapper with these augmentations: ``mixup`` and
    ``splice``/``cutmix`` build each training pair from two, and uploaded views make one slice
    several pairs, so one slice's influence is no longer one gradient."""
    if mapper.dp_noise <= 0:
        return []
    problems = []
    if mixed := [name for name in ("mixup", "splice", "cutmix") if getattr(augment, name) > 0]:
        problems.append(f"mapper.dp_noise needs augment.{'/'.join(mixed)} = 0 (they mix two pairs into one)")
    if codec.upload_views > 1:
        problems.append(
            f"mapper.dp_noise needs codec.upload_views=1 (DP-SGD counts each pair once, and "
            f"{codec.upload_views} views make each slice {codec.upload_views} pairs)"
        )
    return problems


def permutation_conflicts(mapper: MapperConfig, augment: AugmentConfig) -> list[str]:
    """Why a server with these settings cannot train on codes whose token order is a center's secret.

    The one statement of the rule: the config refuses ``key.permute_tokens`` with these problems, and
    the server refuses a keyed upload with them, so the two can never disagree.
    """
    problems = []
    if not mapper.order_blind:
        problems.append(
            f"a secret token permutation needs mapper.kind=transformer (the {mapper.kind} mapper "
            "relies on token order)"
        )
    if order_dependent := augment.order_dependent():
        problems.append(
            f"augment.{'/'.join(order_dependent)} need the token order, which a secret permutation "
            "hides from the server: set them to 0"
        )
    return problems
