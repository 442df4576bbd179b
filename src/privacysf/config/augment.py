"""The server's augmentations of code pairs (``augment``), and the rules that tie them to the mapper,
the codec and DP-SGD: :func:`dp_conflicts` and :func:`permutation_conflicts`, used by the config and
the server alike."""

from __future__ import annotations

from pydantic import Field

from privacysf.config.codec import CodecConfig
from privacysf.config.mapper import MapperConfig
from privacysf.config.model import ConfigModel, Probability

ORDER_AUGMENTATIONS = ("reverse", "flip", "shift", "splice", "cutmix")
"""Augmentations that rely on knowing which token sits where: meaningless under a secret permutation."""
AUGMENTATIONS = (*ORDER_AUGMENTATIONS, "mixup", "token_dropout", "span_mask", "noise")
"""The server-side code augmentations, each a probability field of :class:`AugmentConfig`."""


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
