"""The wire's rounding as a differentiable torch op, so networks can train on codes as they are sent.

:func:`encode_codes` and :func:`decode_codes` define what a code becomes on the wire; a codec that is
only ever trained and validated on float codes learns nothing about that rounding (an int8 step of
1/127 can tip an empty mask's code into one that decodes foreground). :func:`wire_rounding` gives the
exact values the wire would give back, from the wire's own constants, with a straight-through gradient
(Bengio et al., 2013): the rounding's true gradient is zero almost everywhere, so training passes the
gradient through as if the rounding were the identity.
"""

from __future__ import annotations

import torch

from privacysf.errors import WireFormatError
from privacysf.exchange.wire import WIRE_DTYPES


def _as_sent(code: torch.Tensor, dtype: str) -> torch.Tensor:
    """``code`` (float32) after :func:`encode_codes` then :func:`decode_codes` in ``dtype``."""
    if dtype not in WIRE_DTYPES:
        raise WireFormatError(f"wire dtype {dtype!r} is not one of {sorted(WIRE_DTYPES)}")
    return WIRE_DTYPES[dtype].as_sent(code.float())


class _StraightThrough(torch.autograd.Function):
    """Forward: the values as sent; backward: the gradient unchanged."""

    @staticmethod
    def forward(ctx, code: torch.Tensor, dtype: str) -> torch.Tensor:
        return _as_sent(code, dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def wire_rounding(code: torch.Tensor, dtype: str) -> torch.Tensor:
    """What ``code`` becomes after a trip over the wire in ``dtype``; differentiable (straight through)."""
    result: torch.Tensor = _StraightThrough.apply(code, dtype)
    return result
