"""The sections of the studies built on runs: multi-center federation, the attack suite and the
augmentation ablation."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field, field_validator

from privacysf.config.augment import AUGMENTATIONS
from privacysf.config.codec import IMAGE_MODES, CodecConfig, CodecSymmetry, ImageMode, Padding
from privacysf.config.model import ConfigModel

CenterPartition = Literal["iid", "size-skew", "label-skew"]
CENTER_PARTITIONS = get_args(CenterPartition)
"""How ``privacysf federate`` deals one dataset's cases to centers (see ``privacysf.data.centers``)."""
FederationMode = Literal["alone", "pooled", "pooled-noembed", "fedavg-codecs", "unet-fedavg", "unet-pooled"]
FEDERATION_MODES = get_args(FederationMode)
"""Multi-center modes compared on each center's own test set (``docs/multicenter.md`` explains each)."""
KeySetting = Literal["none", "mix", "mix+perm", "shift"]
KEY_SETTINGS = get_args(KeySetting)
"""Key settings the attack suite compares: no key, secret channel mixing, mixing + token permutation,
and a fresh random shift of every code (``key.per_query_shift``, with the circular poly mapper)."""


class FederationConfig(ConfigModel):
    """Multi-center runs (``privacysf federate``): who the centers are and how they collaborate."""

    centers: int = Field(2, ge=2)
    """Centers one dataset is split into, by case; a multi-center task such as ``brain-3c`` names its own."""
    partition: CenterPartition = "iid"
    """``iid`` (cases dealt at random), ``size-skew`` (cases sorted by foreground fraction, dealt in
    contiguous blocks) or ``label-skew`` (sorted by the share of the last class in the foreground)."""
    modes: tuple[FederationMode, ...] = Field(FEDERATION_MODES, min_length=1)
    rounds: int = Field(10, ge=1)
    """Federated-averaging rounds of each shared network (mask codec, image encoder, raw U-Net)."""
    local_epochs: int = Field(1, ge=1)
    """Epochs each center trains per round before the server averages the weights."""
    on_dropout: Literal["continue", "fail"] = "continue"
    """A center that does not answer: ``continue`` with the others while ``min_centers`` remain, or
    ``fail`` the run cleanly (what is already stored is kept either way)."""
    min_centers: int = Field(1, ge=1)
    center_embedding: int = Field(16, ge=1)
    """``mapper.center_embedding`` of the pooled mappers (``pooled``, ``fedavg-codecs``); the
    ``pooled-noembed`` mode is the same mapper without it."""
    round_timeout: float = Field(86400.0, gt=0)
    """Seconds the server waits for replies in one round before counting silent centers as dropped.
    It must cover the slowest round: in simulation the centers train one after another, so a round
    takes the sum of their times. Set it a little above that to notice a dead center sooner."""
    secret_file: str = Field("", max_length=4096)
    """Path, on every center's machine, of the secret the centers share for masked averaging in
    ``fedavg-codecs`` (32 random bytes, mode 0600, made by ``privacysf federation-secret PATH`` and
    copied to the centers out of band). The server never reads it; ``fedavg-codecs`` refuses to run
    without it. "" = none."""


class AttackConfig(ConfigModel):
    """The attack suite (``privacysf attack``): which settings to train and how strong the attacker is."""

    modes: tuple[ImageMode, ...] = IMAGE_MODES
    private_weights: tuple[Annotated[float, Field(ge=0)], ...] = (0.3, 1.0)
    """λ values tried in ``private`` mode (each is one point of the privacy–utility curve)."""
    keys: tuple[KeySetting, ...] = ("none", "mix", "mix+perm")
    leaked_pairs: tuple[Annotated[int, Field(ge=0)], ...] = (10, 100, 0)
    """k of the inversion attacks: pairs leaked from the center's training + validation data (0 = all)."""
    public_dataset: str = ""
    """Public data for the shadow attack: a built-in dataset of the same modality, ``leaked-subjects``
    (the non-query subjects of the victim's own dataset) or "" for the dataset's default."""
    attacker_steps: int = Field(300, ge=1)
    """Optimiser steps of every attacker decoder (batch 8) except the inversion curve below."""
    decoder_width: int = Field(0, ge=0)
    """Width of every attacker decoder (0 = the centers' own ``codec.width``). A decoder step at 128²
    costs about 1.5 s at width 32 on two CPU cores and a quarter of that at 16."""
    curve_steps: tuple[Annotated[int, Field(ge=1)], ...] = (100, 300, 1000, 3000)
    """The image inversion from the most leaked pairs is trained this long and scored at each step
    count: its figure is a curve, not one budget, and the table shows its best point."""
    seeds: tuple[Annotated[int, Field(ge=0)], ...] = Field((0,), min_length=1)
    """Each seed is one split and one training of every setting (``data.seed`` and ``train.seed``);
    intervals pool the attacked queries of all seeds. On ``brain-3subjects`` seeds 0, 1 and 5 hold out
    ICBM152, the ITK T1 and Colin27 in turn."""
    candidates: int = Field(50, ge=2)
    """Re-identification: candidate images a code is matched against."""
    bootstrap: int = Field(1000, ge=1)
    """Bootstrap resamples for the membership-inference AUC interval."""


class AblationConfig(ConfigModel):
    """The augmentation study (``privacysf ablate``): policies × centers × training shares × seeds.

    For each training share and seed (one split, ``data.seed`` = ``train.seed``), one center is
    trained per equivariance weight, padding and symmetry (:meth:`centers`), the server's mapper is
    retrained on its codes once per policy, and the raw U-Net (with its own image-space augmentation,
    ``train.augment``) is trained on the same slices. Every Dice change is paired within a seed, so
    the intervals are over seeds.
    """

    policies: tuple[str, ...] = Field(AUGMENTATIONS, min_length=1)
    """Server-side policies tried beside "none": each a ``+``-joined set of augmentations switched on
    together at probability 0.5 (``flip``, ``flip+shift``, …)."""
    fractions: tuple[Annotated[float, Field(gt=0, le=1)], ...] | None = Field(None, min_length=1)
    """Shares of the training slices kept, each a ``data.train_fraction``; unset: that one alone."""
    seeds: tuple[Annotated[int, Field(ge=0)], ...] | None = Field(None, min_length=1)
    """Each one split and one training of everything (``data.seed`` and ``train.seed``); intervals
    need at least two. Unset: ``data.seed`` and ``train.seed`` as configured, one cell."""
    equivariance: tuple[Annotated[float, Field(ge=0)], ...] | None = Field(None, min_length=1)
    """``codec.equivariance`` weights of the centers compared; the first is the reference every Dice
    change is measured against (with the "none" policy and the first ``padding``). Unset: the
    configured ``codec.equivariance`` alone."""
    padding: tuple[Padding, ...] | None = Field(None, min_length=1)
    """``codec.padding`` of the centers compared, one center per weight × padding (:meth:`centers`).
    Unset: the configured ``codec.padding`` alone."""
    symmetry: tuple[CodecSymmetry, ...] | None = Field(None, min_length=1)
    """``codec.symmetry`` of the centers compared, one center per weight × padding × symmetry.
    Unset: the configured ``codec.symmetry`` alone."""
    views: tuple[Annotated[int, Field(ge=1)], ...] | None = Field(None, min_length=1)
    """``codec.upload_views`` compared for each center and policy: the center is trained once and the
    mapper retrained on the pairs of that many views of each training slice. Rows at the first count
    keep the policy's name (the first is the reference); the others add ", N views" (", N affine
    views" with ``codec.view_augmentation=affine``). Unset: the configured ``codec.upload_views``
    alone."""
    max_shifts: tuple[Annotated[int, Field(ge=1)], ...] | None = Field(None, min_length=1)
    """``augment.max_shift`` compared for every row whose policy shifts: the mapper is retrained once
    per reach (whole tokens per axis). Rows at the first reach keep their names (the "default" row
    too, so it is the configured default at that reach); the others add ", shifts up to K". On a
    circular center every reach is an exact transform; half the token grid's shorter side reaches
    every cyclic position, and a longer reach is refused. Unset: the configured
    ``augment.max_shift`` alone."""
    compare_unet: bool = True
    """Also train the raw U-Net on each share and seed: the gap the augmentation should narrow."""

    @field_validator("policies")
    @classmethod
    def _known_augmentations(cls, policies: tuple[str, ...]) -> tuple[str, ...]:
        for policy in policies:
            unknown = [name for name in policy.split("+") if name not in AUGMENTATIONS]
            if unknown or not policy:
                raise ValueError(
                    f"policy {policy!r}: {', '.join(unknown) or 'empty'} is not one of "
                    f"{', '.join(AUGMENTATIONS)} (join several with +)"
                )
        return policies

    @field_validator("equivariance", "padding", "symmetry", "views", "max_shifts")
    @classmethod
    def _each_center_once(cls, values: tuple | None) -> tuple | None:
        """A repeated entry would train the same center (or mapper) twice, the second's scores over
        the first's."""
        if values is not None and len(set(values)) < len(values):
            raise ValueError(f"{list(values)} lists an entry twice; list each setting once")
        return values

    def upload_views(self, codec: CodecConfig) -> list[tuple[str, int]]:
        """Each count of uploaded views compared, the reference first, with the suffix of its rows'
        names ("" for the first)."""
        counts = self.views or (codec.upload_views,)
        kind = "" if codec.view_augmentation == "flips" else f" {codec.view_augmentation}"
        return [
            ("" if i == 0 else f", {views}{kind} {'view' if views == 1 else 'views'}", views)
            for i, views in enumerate(counts)
        ]

    def centers(self, codec: CodecConfig) -> list[tuple[str, list[str]]]:
        """Each center compared, the reference first: its name in ``ablation.json`` and its overrides.
        An unset axis keeps ``codec``'s value, so ``--set codec.padding=circular`` is what a study
        without ``ablation.padding`` trains.

        A center is named by its weight, then each setting that is not the default ("0",
        "1, circular", "0, circular, flips"), so tables of studies made before an axis existed still
        read."""
        return [
            (
                ", ".join([f"{weight:g}"] + [v for v in (padding, symmetry) if v not in ("zeros", "none")]),
                [f"codec.equivariance={weight}", f"codec.padding={padding}", f"codec.symmetry={symmetry}"],
            )
            for weight in self.equivariance or (codec.equivariance,)
            for padding in self.padding or (codec.padding,)
            for symmetry in self.symmetry or (codec.symmetry,)
        ]
