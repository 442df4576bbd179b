"""Build the server's mapping network from its config: one place that knows every mapper kind."""

from __future__ import annotations

from torch import nn

from privacysf.config import MapperConfig
from privacysf.nets.sequence import SequenceMapper
from privacysf.nets.transformer import TokenTransformer

ORDER_BLIND = {"cnn": False, "transformer": True}
"""Whether a mapper kind can learn through a secret permutation of the token positions."""


def build_mapper(cfg: MapperConfig, grid: tuple[int, int], in_channels: int, out_channels: int) -> nn.Module:
    if cfg.kind == "transformer":
        return TokenTransformer(in_channels, out_channels, grid[0] * grid[1], cfg.width, cfg.depth, cfg.heads)
    return SequenceMapper(
        in_channels, out_channels, grid, cfg.width, cfg.cycles, cfg.kernel, cfg.use_position
    )
