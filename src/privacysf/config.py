"""One typed configuration object for every run, saved beside its results.

Every command builds an :class:`ExperimentConfig` from defaults, an optional JSON/YAML file and
``--set section.key=value`` overrides, then writes it into the run folder, so a result can always be
traced back to exactly what produced it. Unknown keys are errors rather than silently ignored, because
a typo in a privacy or size setting would otherwise produce a run that looks valid but is not.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from privacysf.errors import ConfigError

IMAGE_MODES = ("autoencoder", "task", "private")
"""Image-encoder training modes; each has an objective in ``privacysf.center.codecs.IMAGE_MODES``."""
AUGMENTATIONS = ("reverse", "flip", "shift", "splice", "mixup", "token_dropout", "noise")
"""The server-side code augmentations, each a probability field of :class:`AugmentConfig`."""
ORDER_AUGMENTATIONS = ("reverse", "flip", "shift", "splice")
"""Augmentations that rely on knowing which token sits where: meaningless under a secret permutation."""
MAPPER_KINDS = ("cnn", "transformer")
ORDER_BLIND_MAPPERS = ("transformer",)
"""Mapper kinds that can learn through a secret permutation of the token positions."""
TRANSFORMER_LR = 5e-4
"""Default learning rate of the transformer mapper: at the shared 3e-3 its training diverged on
icbm152-tissue task-mode keyed codes (Dice 0.043); at 5e-4 the same setting reached Dice 0.762
(docs/threat-model.md, attack runs 3 and 4)."""
CENTER_PARTITIONS = ("iid", "size-skew", "label-skew")
"""How ``privacysf federate`` deals one dataset's cases to centers (see ``privacysf.data.centers``)."""
FEDERATION_MODES = ("alone", "pooled", "pooled-noembed", "fedavg-codecs", "unet-fedavg", "unet-pooled")
"""Multi-center modes compared on each center's own test set (``docs/multicenter.md`` explains each)."""
ON_DROPOUT = ("continue", "fail")
WIRE_DTYPE_NAMES = ("float32", "float16", "int8")
"""Value types of codes on the wire (``privacysf.exchange.wire`` maps each to its numpy dtype)."""


@dataclass
class DataConfig:
    """Which data to load and how to turn it into 2-D training slices."""

    dataset: str = "phantom"
    """A built-in dataset name (``privacysf data list``) or a folder in MSD/nnU-Net or plain layout."""
    layout: str = "auto"
    """Folder layout: ``auto``, ``msd`` (imagesTr/labelsTr/dataset.json) or ``plain`` (images/masks)."""
    axis: int = 2
    """Array axis along which 3-D volumes are sliced (arrays are in x, y, z order)."""
    size: int = 128
    """Working size: every slice is resized to ``size``×``size`` (masks by nearest neighbour)."""
    normalization: str = "auto"
    """``auto`` (from the dataset's modality), ``mr`` (percentile clip + z-score), ``ct`` (HU window)
    or ``minmax``."""
    ct_window: tuple[float, float] = (-160.0, 240.0)
    num_classes: int | None = None
    """Number of classes including background; read from dataset.json or the registry when unset."""
    drop_empty: bool = True
    """Drop slices whose mask has no foreground (they still count for nothing in a 2-D Dice)."""
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    seed: int = 0
    """Seed of the case split; the split is a function of (case ids, fractions, seed) only."""
    train_fraction: float = 1.0
    """Share of the training slices kept, drawn with ``seed`` after the split (validation and test
    untouched): for learning curves and for measuring how cost grows with the dataset's size."""
    phantom_cases: int = 60
    """Number of cases the synthetic ``phantom`` dataset generates."""


@dataclass
class TrainConfig:
    """Optimisation settings shared by every trained network of a run."""

    epochs: int = 30
    batch_size: int = 8
    lr: float = 3e-3
    patience: int = 10
    """Early stopping: epochs without a better validation score before stopping."""
    augment: bool = True
    """Random flips and intensity jitter of raw images (only ever on the center / raw baseline)."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    seed: int = 0
    threads: int | None = None
    """CPU threads for torch; ``None`` keeps torch's default."""
    progress: bool = True


@dataclass
class UNetConfig:
    """The raw-image MONAI U-Net, the privacy-agnostic upper bound."""

    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 2


@dataclass
class CodecConfig:
    """Center-side networks: the mask codec and the image encoder (both stay in the hospital)."""

    downsample: int = 4
    """Image side / token-grid side: 128² images give a 32×32 grid of 1024 tokens."""
    image_channels: int = 4
    """Values per image-code token."""
    mask_channels: int = 4
    """Values per mask-code token."""
    width: int = 32
    """Feature width of the first encoder stage (doubles at each downsampling)."""
    code_noise: float = 0.1
    """Gaussian noise on mask codes while the codec trains, so its decoder tolerates mapping errors."""
    image_mode: str = "task"
    """How the image encoder is trained: ``autoencoder`` (image decoder), ``task`` (mask-code head) or
    ``private`` (``task`` plus an in-the-loop attacker decoder whose reconstruction it must spoil)."""
    private_weight: float = 1.0
    """λ of ``private`` mode: weight of the adversarial reconstruction penalty (more privacy, less Dice)."""
    wire_dtype: str = "int8"
    """dtype of codes on the wire: ``float32``, ``float16`` or ``int8`` (codes are bounded in [-1, 1])."""


@dataclass
class KeyConfig:
    """The center's secret keyed transform of its codes (the key itself never leaves the center)."""

    enabled: bool = False
    mix_channels: bool = True
    """Multiply every token by a secret orthogonal matrix (separately for image and mask codes)."""
    permute_tokens: bool = False
    """Shuffle token positions with a secret permutation; needs an order-blind mapper (transformer)."""


@dataclass
class MapperConfig:
    """The server's mapping network over the token sequence.

    ``cnn`` is a residual dilated 1-D CNN (it relies on raster token order); ``transformer`` has
    learned position embeddings, so a fixed secret permutation of the tokens costs it nothing.
    """

    kind: str = "cnn"
    width: int = 128
    cycles: int = 2
    """Repeats of the dilation cycle 1, 2, 4, …, grid width (the last reaches the token one row up)."""
    kernel: int = 3
    use_position: bool = True
    """Append each token's (row, column) on the grid, so the mapper knows where a token sits."""
    depth: int = 2
    """Transformer layers (``kind=transformer`` only)."""
    heads: int = 4
    """Attention heads (``kind=transformer`` only)."""
    center_embedding: int = 0
    """Size of a learned per-center vector appended to every input token when one mapper serves
    several centers whose codecs differ (0 = off: the mapper cannot tell the code spaces apart)."""
    lr: float | None = None
    """Learning rate of the mapper; unset: ``train.lr`` for the cnn, :data:`TRANSFORMER_LR` for the
    transformer (attention needs a smaller step than the convolutions)."""

    def learning_rate(self, train_lr: float) -> float:
        if self.lr is not None:
            return self.lr
        return TRANSFORMER_LR if self.kind == "transformer" else train_lr


@dataclass
class AugmentConfig:
    """Server-side augmentation of code pairs; each value is the probability per batch (0 = off).

    Image and mask codes are always transformed together, except the input-only ``token_dropout``
    and ``noise``. All are off by default: the ablation in docs/results.md found none that helps
    on both datasets it was run on.
    """

    reverse: float = 0.0
    """Reverse the token order of both codes (a 180° turn of the token grid)."""
    flip: float = 0.0
    """Flip the token grid of both codes left-right or up-down."""
    shift: float = 0.0
    """Cyclic shift of both token grids by up to ``max_shift`` whole tokens per axis."""
    max_shift: int = 2
    splice: float = 0.0
    """Cut a contiguous token segment from another pair and splice it into both codes."""
    mixup: float = 0.0
    """Convex mix of two pairs, both codes with the same weight ~ Beta(alpha, alpha)."""
    mixup_alpha: float = 0.4
    token_dropout: float = 0.0
    """Zero 10% of the input tokens (image code only)."""
    noise: float = 0.0
    """Gaussian noise (std 0.05) on the input code only."""


@dataclass
class FederationConfig:
    """Multi-center runs (``privacysf federate``): who the centers are and how they collaborate."""

    centers: int = 2
    """Centers one dataset is split into, by case; a multi-center task such as ``brain-3c`` names its own."""
    partition: str = "iid"
    """``iid`` (cases dealt at random), ``size-skew`` (cases sorted by foreground fraction, dealt in
    contiguous blocks) or ``label-skew`` (sorted by the share of the last class in the foreground)."""
    modes: tuple[str, ...] = FEDERATION_MODES
    rounds: int = 10
    """Federated-averaging rounds of each shared network (mask codec, image encoder, raw U-Net)."""
    local_epochs: int = 1
    """Epochs each center trains per round before the server averages the weights."""
    on_dropout: str = "continue"
    """A center that does not answer: ``continue`` with the others while ``min_centers`` remain, or
    ``fail`` the run cleanly (what is already stored is kept either way)."""
    min_centers: int = 1
    center_embedding: int = 16
    """``mapper.center_embedding`` of the pooled mappers (``pooled``, ``fedavg-codecs``); the
    ``pooled-noembed`` mode is the same mapper without it."""
    round_timeout: float = 86400.0
    """Seconds the server waits for replies in one round before counting silent centers as dropped.
    It must cover the slowest round: in simulation the centers train one after another, so a round
    takes the sum of their times. Set it a little above that to notice a dead center sooner."""


KEY_SETTINGS = ("none", "mix", "mix+perm")
"""Key settings the attack suite compares: no key, secret channel mixing, mixing + token permutation."""


@dataclass
class AttackConfig:
    """The attack suite (``privacysf attack``): which settings to train and how strong the attacker is."""

    modes: tuple[str, ...] = ("autoencoder", "task", "private")
    private_weights: tuple[float, ...] = (0.3, 1.0)
    """λ values tried in ``private`` mode (each is one point of the privacy–utility curve)."""
    keys: tuple[str, ...] = KEY_SETTINGS
    leaked_pairs: tuple[int, ...] = (10, 100, 0)
    """k of the inversion attacks: pairs leaked from the center's training + validation data (0 = all)."""
    public_dataset: str = ""
    """Public data for the shadow attack: a built-in dataset of the same modality, ``leaked-subjects``
    (the non-query subjects of the victim's own dataset) or "" for the dataset's default."""
    attacker_steps: int = 300
    """Optimiser steps of every attacker decoder (batch 8) except the inversion curve below."""
    decoder_width: int = 0
    """Width of every attacker decoder (0 = the centers' own ``codec.width``). A decoder step at 128²
    costs about 1.5 s at width 32 on two CPU cores and a quarter of that at 16."""
    curve_steps: tuple[int, ...] = (100, 300, 1000, 3000)
    """The image inversion from the most leaked pairs is trained this long and scored at each step
    count: its figure is a curve, not one budget, and the table shows its best point."""
    seeds: tuple[int, ...] = (0,)
    """Each seed is one split and one training of every setting (``data.seed`` and ``train.seed``);
    intervals pool the attacked queries of all seeds. On ``brain-3subjects`` seeds 0, 1 and 5 hold out
    ICBM152, the ITK T1 and Colin27 in turn."""
    candidates: int = 50
    """Re-identification: candidate images a code is matched against."""
    bootstrap: int = 1000
    """Bootstrap resamples for the membership-inference AUC interval."""


@dataclass
class ExperimentConfig:
    """Everything a run needs; written to ``config.json`` in its run folder."""

    name: str = "run"
    output_dir: str = "runs"
    compare_unet: bool = True
    """``privacysf fit`` also trains the raw U-Net on the same split and budget, for the report."""
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    key: KeyConfig = field(default_factory=KeyConfig)
    mapper: MapperConfig = field(default_factory=MapperConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        from privacysf.common.runs import write_json

        write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ExperimentConfig:
        cfg = _build(cls, values, "config")
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Refuse values that would only fail (or silently mislead) minutes into training."""
        d, t, c, m, a, k = self.data, self.train, self.codec, self.mapper, self.augment, self.key
        checks = [
            (d.size > 0, "data.size must be positive"),
            (d.axis in (0, 1, 2), "data.axis must be 0, 1 or 2"),
            (0 < d.train_fraction <= 1, "data.train_fraction must lie in (0, 1]"),
            (d.layout in ("auto", "msd", "plain"), "data.layout must be auto, msd or plain"),
            (
                d.normalization in ("auto", "mr", "ct", "minmax"),
                "data.normalization must be auto, mr, ct or minmax",
            ),
            (len(d.ct_window) == 2 and d.ct_window[0] < d.ct_window[1], "data.ct_window must be [low, high]"),
            (
                t.epochs >= 1 and t.batch_size >= 1 and t.patience >= 1,
                "train.epochs, batch_size, patience >= 1",
            ),
            (t.lr > 0, "train.lr must be positive"),
            (
                c.downsample >= 2 and c.downsample & (c.downsample - 1) == 0,
                "codec.downsample must be 2, 4, 8, …",
            ),
            (d.size % c.downsample == 0, f"data.size {d.size} must be a multiple of codec.downsample"),
            (d.size % 2 ** len(self.unet.strides) == 0, "data.size must be divisible by the U-Net's strides"),
            (min(c.image_channels, c.mask_channels, c.width) >= 1, "codec channels and width must be >= 1"),
            (c.image_mode in IMAGE_MODES, f"codec.image_mode must be one of {IMAGE_MODES}"),
            (c.wire_dtype in WIRE_DTYPE_NAMES, f"codec.wire_dtype must be one of {WIRE_DTYPE_NAMES}"),
            (m.width >= 8 and m.width % 8 == 0, "mapper.width must be a positive multiple of 8 (GroupNorm)"),
            (m.kernel >= 1 and m.kernel % 2 == 1, "mapper.kernel must be odd"),
            (m.cycles >= 1, "mapper.cycles must be >= 1"),
            (m.kind in MAPPER_KINDS, f"mapper.kind must be one of {MAPPER_KINDS}"),
            (m.depth >= 1 and m.heads >= 1 and m.width % m.heads == 0, "mapper.width must split into heads"),
            (c.private_weight >= 0, "codec.private_weight must be >= 0"),
            (
                set(self.attack.modes) <= set(IMAGE_MODES) and set(self.attack.keys) <= set(KEY_SETTINGS),
                f"attack.modes must be among {IMAGE_MODES} and attack.keys among {KEY_SETTINGS}",
            ),
            (
                all(k >= 0 for k in self.attack.leaked_pairs)
                and min(self.attack.private_weights, default=0) >= 0,
                "attack.leaked_pairs and attack.private_weights must be >= 0",
            ),
            (
                self.attack.attacker_steps >= 1 and self.attack.candidates >= 2,
                "attack.attacker_steps >= 1 and attack.candidates >= 2",
            ),
            (
                len(self.attack.seeds) >= 1
                and all(s >= 1 for s in self.attack.curve_steps)
                and self.attack.decoder_width >= 0,
                "attack.seeds needs a seed, attack.curve_steps positive counts, attack.decoder_width >= 0",
            ),
            (
                not (k.enabled and k.permute_tokens) or m.kind in ORDER_BLIND_MAPPERS,
                "key.permute_tokens needs mapper.kind=transformer (the cnn mapper relies on token order)",
            ),
            (
                not (k.enabled and k.permute_tokens) or all(getattr(a, n) == 0 for n in ORDER_AUGMENTATIONS),
                f"augment.{'/'.join(ORDER_AUGMENTATIONS)} need the token order, which a secret "
                "permutation hides from the server: set them to 0 with key.permute_tokens",
            ),
            (
                all(0 <= getattr(a, n) <= 1 for n in AUGMENTATIONS),
                "augment.* probabilities must lie in [0, 1]",
            ),
            (a.max_shift >= 0 and a.mixup_alpha > 0, "augment.max_shift >= 0 and mixup_alpha > 0"),
            (m.center_embedding >= 0, "mapper.center_embedding must be >= 0"),
            (m.lr is None or m.lr > 0, "mapper.lr must be positive (or unset: train.lr / TRANSFORMER_LR)"),
            (self.federation.centers >= 2, "federation.centers must be >= 2"),
            (
                self.federation.partition in CENTER_PARTITIONS,
                f"federation.partition must be one of {CENTER_PARTITIONS}",
            ),
            (
                len(self.federation.modes) >= 1 and set(self.federation.modes) <= set(FEDERATION_MODES),
                f"federation.modes must be among {FEDERATION_MODES}",
            ),
            (
                min(self.federation.rounds, self.federation.local_epochs, self.federation.min_centers) >= 1,
                "federation.rounds, local_epochs and min_centers must be >= 1",
            ),
            (self.federation.on_dropout in ON_DROPOUT, f"federation.on_dropout must be one of {ON_DROPOUT}"),
            (
                self.federation.round_timeout > 0 and self.federation.center_embedding >= 1,
                "federation.round_timeout must be positive and federation.center_embedding >= 1",
            ),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ConfigError("invalid configuration: " + "; ".join(problems))

    @classmethod
    def load(cls, path: str | Path) -> ExperimentConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass an existing JSON or YAML file")
        try:
            text = path.read_text()
            values = yaml.safe_load(text) if path.suffix in {".yaml", ".yml"} else json.loads(text)
        except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid JSON/YAML: {exc}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
        return cls.from_dict(values)

    def override(self, assignments: list[str]) -> ExperimentConfig:
        """Apply ``section.key=value`` strings (values parsed as YAML scalars/lists)."""
        values = self.to_dict()
        for assignment in assignments:
            key, sep, raw = assignment.partition("=")
            if not sep:
                raise ConfigError(f"--set {assignment!r}: expected section.key=value")
            target = values
            parts = key.strip().split(".")
            for part in parts[:-1]:
                if not isinstance(target.get(part), dict):
                    raise ConfigError(f"--set {assignment!r}: no config section {part!r}")
                target = target[part]
            if parts[-1] not in target:
                raise ConfigError(f"--set {assignment!r}: unknown key {key!r}")
            target[parts[-1]] = yaml.safe_load(raw)
        return ExperimentConfig.from_dict(values)


def _build(kind: Any, value: Any, where: str) -> Any:
    """Recursively turn plain JSON values into the annotated dataclass/tuple types, checking keys."""
    origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        hints = typing.get_type_hints(kind)
        names = {f.name for f in dataclasses.fields(kind)}
        unknown = set(value) - names
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; valid keys are {sorted(names)}")
        return kind(**{k: _build(hints[k], v, f"{where}.{k}") for k, v in value.items()})
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        return _build(next(o for o in options if o is not type(None)), value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        args = typing.get_args(kind)
        item = args[0]
        return tuple(_build(item, v, where) for v in value)
    if kind is float:
        try:  # YAML reads "1e-3" (no dot) as a string
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where} must be a number, got {value!r}") from None
    if kind in (int, str, bool) and not isinstance(value, kind):
        raise ConfigError(f"{where} must be of type {kind.__name__}, got {value!r}")
    if kind is int and isinstance(value, bool):
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    return value
