"""The server's mapping network (``mapper``): what it is, how it trains and what answers queries with it."""

from __future__ import annotations

import math
from typing import Annotated, Literal, get_args

from pydantic import AfterValidator, Field, ValidationInfo, field_validator

from privacysf.config.codec import Padding
from privacysf.config.model import ConfigModel


def _odd(value: int) -> int:
    if value % 2 == 0:
        raise ValueError("must be odd (a centred kernel)")
    return value


Activation = Literal["gelu", "relu"]
"""Nonlinearities of the server's convolutional mappers: exact GELU, or ReLU, which costs a few
comparisons where GELU evaluates an error function per value."""
MapperRuntime = Literal["torch", "onnxruntime"]
"""What answers queries with a trained mapper: torch, or its ONNX Runtime export (``mapper.runtime``)."""
MAPPER_RUNTIMES = get_args(MapperRuntime)
ONNX_KINDS = ("unet", "cnn")
"""The mapper kinds ONNX Runtime is tested to answer for (without a center embedding)."""
TRANSFORMER_LR = 5e-4
"""Default learning rate of the transformer mapper: at the shared 3e-3 its training diverged on
icbm152-tissue task-mode keyed codes (Dice 0.043); at 5e-4 the same setting reached Dice 0.762
(docs/threat-model.md, attack runs 3 and 4)."""

FORMER_MAPPER_DEFAULTS = {"activation": "gelu", "latents": 0, "token_width": 0}
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
    """Channels per token of the cnn and the full-attention transformer, and of the pooled
    transformer's slots (its tokens: ``token_width``); a multiple of 8 because the cnn normalises in
    groups of 8 (GroupNorm)."""
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
    """Attention heads (``kind=transformer`` only); they split ``width`` evenly, and the pooled
    transformer's token width too."""
    latents: int = Field(64, ge=0)
    """Learned slots through which the transformer's tokens exchange information (``kind=transformer``
    only; :class:`privacysf.nets.transformer.PooledTokenTransformer`), so its cost grows linearly with
    the tokens. 0: every token attends to every other, a cost that grows with their square; it was
    the only form before 2026-12-06, and runs and service models saved before then load with it. On
    keyed codes of six centers, 64 slots passed a rule written before the fits (3-D Dice −0.001
    against full attention at the same 30 epochs, validation code error a little higher) and trained
    in 0.45 of its time at 128² (docs/results.md, "Pooled attention for keyed codes")."""
    token_width: int = Field(64, ge=0, multiple_of=8, validate_default=True)
    """Channels of each token's stream in the pooled transformer (``kind=transformer``, ``latents`` >
    0), while its slots keep ``width``; never more than ``width`` (a narrower mapper stays narrower),
    and 0: ``width``, as before 2026-12-06 (runs and service models saved before the option load with
    it). Almost all of the pooled mapper's arithmetic is per token:
    tokens 64 wide beside slots 128 wide took its GFLOP per 256² image from 2.76 to 1.15, a keyed 256²
    query from 2.3-2.7 × the raw U-Net to 1.5-1.7 ×, and its training to about half the time, and
    passed a rule written before the fits on the six keyed centers of the pooled-attention study
    (docs/results.md, "A narrower token stream")."""
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
    query's code faster at batch 1; its export takes about 3 s, once per model loaded from a file,
    which keeps it beside its checkpoint for later loads (in ``fit``, at every fit). Training is
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

    @field_validator("token_width")
    @classmethod
    def _heads_split_the_tokens(cls, token_width: int, info: ValidationInfo) -> int:
        """Checked where it shapes a network (a pooled transformer), default included: a config that
        sets ``heads`` for another kind, or for full attention, is not refused for a width it never
        uses."""
        kind, latents, width, heads = (info.data.get(k) for k in ("kind", "latents", "width", "heads"))
        if kind != "transformer" or not latents or width is None or heads is None:
            return token_width
        channels = token_channels(token_width, width)
        if channels % heads:
            raise ValueError(
                f"gives the pooled transformer's tokens {channels} channels, which mapper.heads ({heads}) "
                f"does not split evenly; set a multiple of {math.lcm(8, heads)}, or 0 for tokens as wide "
                "as the slots"
            )
        return token_width

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
    def token_channels(self) -> int:
        """Width of the pooled transformer's tokens: ``token_width``, at most ``width`` (0: ``width``)."""
        return token_channels(self.token_width, self.width)

    @property
    def order_blind(self) -> bool:
        """Whether this mapper can learn through a secret permutation of the token positions."""
        return self.kind == "transformer"

    def learning_rate(self, train_lr: float) -> float:
        if self.lr is not None:
            return self.lr
        return TRANSFORMER_LR if self.kind == "transformer" else train_lr


def token_channels(token_width: int, width: int) -> int:
    """See :attr:`MapperConfig.token_channels`."""
    return min(token_width, width) if token_width else width


def exportable(kind: str | None, center_embedding: int | None) -> bool:
    """Whether ONNX Runtime answers for a mapper of ``kind`` (see :data:`ONNX_KINDS`)."""
    return kind in ONNX_KINDS and not center_embedding
