"""Build the server's mapping network from its config: one place that knows every mapper kind."""

from __future__ import annotations

import torch
from torch import nn

from privacysf.config import MapperConfig, TaskHeadNetwork
from privacysf.nets.grid import GridUNetMapper
from privacysf.nets.polynomial import PolynomialMapper
from privacysf.nets.sequence import SequenceMapper
from privacysf.nets.transformer import PooledTokenTransformer, TokenTransformer


class CenterEmbedded(nn.Module):
    """A mapper told which center a code came from: a learned vector per center joins every token.

    Centers with their own codecs send codes in unrelated code spaces; the same token values can mean
    different things at two centers. Appending the center's embedding to each input token lets the
    first layer add a per-center offset to every hidden feature, so one mapper can serve all centers.
    """

    def __init__(self, mapper: nn.Module, centers: int, size: int) -> None:
        super().__init__()
        self.mapper = mapper
        self.embedding = nn.Embedding(centers, size)

    def forward(self, tokens: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
        extra = self.embedding(centers)[:, None, :].expand(-1, tokens.shape[1], -1)
        return self.mapper(torch.cat([tokens, extra], dim=2))


def build_mapper(
    cfg: MapperConfig, grid: tuple[int, int], in_channels: int, out_channels: int, centers: int = 0
) -> nn.Module:
    """The configured mapper, wrapped in :class:`CenterEmbedded` when it serves ``centers`` > 0 centers
    and ``cfg.center_embedding`` is on."""
    if cfg.center_embedding and centers:
        inner = build_mapper(cfg, grid, in_channels + cfg.center_embedding, out_channels)
        return CenterEmbedded(inner, centers, cfg.center_embedding)
    if cfg.kind == "transformer":
        tokens = grid[0] * grid[1]
        if cfg.latents:
            return PooledTokenTransformer(
                in_channels,
                out_channels,
                tokens,
                cfg.latents,
                cfg.width,
                cfg.depth,
                cfg.heads,
                cfg.token_channels,
            )
        return TokenTransformer(in_channels, out_channels, tokens, cfg.width, cfg.depth, cfg.heads)
    if cfg.kind == "poly":
        return PolynomialMapper(in_channels, out_channels, grid, cfg.poly_width, cfg.kernel, cfg.padding)
    if cfg.kind == "unet":
        return GridUNetMapper(
            in_channels,
            out_channels,
            grid,
            cfg.grid_channels,
            cfg.res_units,
            cfg.use_position,
            cfg.activation,
        )
    return SequenceMapper(
        in_channels, out_channels, grid, cfg.width, cfg.cycles, cfg.kernel, cfg.use_position, cfg.activation
    )


def build_task_head(
    cfg: MapperConfig, head: TaskHeadNetwork, grid: tuple[int, int], in_channels: int, out_channels: int
) -> nn.Module:
    """The center's ``task``-mode head (``codec.task_head_for``), which predicts mask codes from image codes
    while the image encoder trains.

    ``mapper`` is a network of the mapper's own kind, so the code is shaped for what will map it;
    ``narrow`` keeps that kind at a quarter of its widths; ``linear`` maps each token alone. The
    center's head always sees its tokens in raster order (a secret order is applied after), so an
    order-blind transformer mapper gets the default kind's head instead.
    """
    if head == "linear":
        return nn.Linear(in_channels, out_channels)
    if head not in ("mapper", "narrow"):
        raise ValueError(
            f"task head {head!r} is not a head network; resolve it with CodecConfig.task_head_for"
        )
    if cfg.order_blind:
        cfg = cfg.updated(kind=MapperConfig.model_fields["kind"].default)
    if head == "narrow":
        cfg = cfg.updated(
            grid_channels=tuple(_quarter(w) for w in cfg.grid_channels),
            width=_quarter(cfg.width),
            poly_width=max(1, cfg.poly_width // 4),
        )
    return build_mapper(cfg, grid, in_channels, out_channels)


def _quarter(width: int) -> int:
    """A quarter of a mapper width, rounded down to a multiple of 8 (GroupNorm's groups), at least 8."""
    return max(8, width // 32 * 8)
